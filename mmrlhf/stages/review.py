"""Eval's samples for human review: each image as a file and one self-contained HTML page.

``<eval dir>/images/<n>.png`` holds the n-th sample's image (the record's PNG as stored in the
split), named by the samples' ``image`` column; ``review.html`` shows each sample's thumbnail
beside its prompt, references and response (:func:`mmrlhf.feedback.tasks_page.html_page`).
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from mmrlhf.feedback.tasks_page import html_page, thumbnail_cell

IMAGES_DIR = "images"
REVIEW_HTML = "review.html"


def image_paths(n: int) -> list[str]:
    """The ``image`` column of n review samples: paths relative to the eval folder."""
    return [f"{IMAGES_DIR}/{i}.png" for i in range(n)]


def write_review(out_dir: Path, rows: list[dict[str, Any]], pngs: list[bytes], title: str) -> None:
    """Write each row's image under ``out_dir/images/`` and the page ``out_dir/review.html``.

    rows: review samples with ``id``, ``image`` (from :func:`image_paths`), ``prompt``,
    ``references`` (list of strings), ``response`` and optional ``reward`` / ``gold``; pngs: the
    encoded image of each row. Raises ValueError when the two lists differ in length.
    """
    if len(rows) != len(pngs):
        raise ValueError(f"write_review: {len(rows)} samples but {len(pngs)} images")
    (out_dir / IMAGES_DIR).mkdir(parents=True, exist_ok=True)
    for row, png in zip(rows, pngs):
        (out_dir / row["image"]).write_bytes(png)
    scores = [name for name in ("reward", "gold") if rows and name in rows[0]]
    body = "".join(_row_html(row, png, scores) for row, png in zip(rows, pngs))
    intro = "<p>Greedy responses of the policy on held-out records; images also in <code>images/</code>.</p>"
    page = html_page(title, intro, ["id", "image", "prompt", "references", "response", *scores], body)
    (out_dir / REVIEW_HTML).write_text(page, encoding="utf-8")


def _row_html(row: dict[str, Any], png: bytes, scores: list[str]) -> str:
    refs = "".join(f"<li>{html.escape(ref)}</li>" for ref in row["references"] or [])
    cells = "".join(f"<td>{row[name]:.3f}</td>" for name in scores)
    return (f"<tr><td>{html.escape(str(row['id']))}</td>{thumbnail_cell(png, str(row['id']))}"
            f"<td>{html.escape(row['prompt'])}</td><td><ol>{refs}</ol></td>"
            f"<td>{html.escape(row['response'])}</td>{cells}</tr>")
