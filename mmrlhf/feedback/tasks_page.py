"""Self-contained HTML pages of rows with image thumbnails: comparison tasks and eval review samples.

Images are inlined as ``data:`` URIs, so the one file can be mailed or opened anywhere; every
text is HTML-escaped (responses are model output and may hold markup). :func:`html_page` and
:func:`thumbnail_cell` frame any such page; :func:`tasks_html` is the tasks' one, and
:mod:`mmrlhf.stages.review` the eval samples' one.
"""

from __future__ import annotations

import base64
import html
from typing import Any

_WHAT_TO_FILL = {
    "pairwise": "fill <code>chosen</code> and <code>rejected</code> with the two texts",
    "ranking": "reorder <code>responses</code> best first",
    "rating": "fill <code>rating</code> (1 worst – 5 best)",
}
_STYLE = """body{font-family:sans-serif;margin:1em}table{border-collapse:collapse}
td,th{border:1px solid #ccc;padding:.4em;vertical-align:top;text-align:left}
img{width:128px;image-rendering:pixelated}ol{margin:0;padding-left:1.4em}"""


def html_page(title: str, intro_html: str, headers: list[str], rows_html: str) -> str:
    """A whole page: ``title`` as its title and heading, ``intro_html`` (already HTML) above one
    table with plain-text ``headers`` over ``rows_html`` (``<tr>`` elements)."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>{intro_html}"
            f"<table><tr>{head}</tr>{rows_html}</table></body></html>")


def thumbnail_cell(png: bytes, alt: str) -> str:
    """A ``<td>`` holding the encoded image ``png`` inline, with ``alt`` text (escaped)."""
    return f"<td><img alt='{html.escape(alt)}' src='data:image/png;base64,{base64.b64encode(png).decode()}'></td>"


def tasks_html(kind: str, rows: list[dict[str, Any]], images: dict[str, bytes]) -> str:
    """The page for task rows of ``kind`` (:mod:`mmrlhf.feedback.tasks`), one table row each.

    ``images`` maps each row's ``image`` path to its encoded PNG bytes. Raises KeyError naming
    an image path missing from ``images``.
    """
    intro = (f"<p>In <code>tasks.jsonl</code> (or <code>tasks.parquet</code>): {_WHAT_TO_FILL[kind]}, and "
             f"<code>annotator</code>; then <code>mmrlhf feedback import tasks.jsonl --kind {kind}</code>.</p>")
    return html_page(f"{len(rows)} {kind} tasks", intro, ["task", "image", "prompt", "responses"],
                     "".join(_row_html(kind, row, images) for row in rows))


def _row_html(kind: str, row: dict[str, Any], images: dict[str, bytes]) -> str:
    if row["image"] not in images:
        raise KeyError(f"task {row['task_id']}: image {row['image']!r} not among the images given")
    if kind == "pairwise":
        texts = [row["response_a"], row["response_b"]]
    elif kind == "ranking":
        texts = row["responses"]
    else:
        texts = [row["response"]]
    items = "".join(f"<li>{html.escape(text)}</li>" for text in texts)
    return (f"<tr><td>{html.escape(row['task_id'])}</td>{thumbnail_cell(images[row['image']], row['prompt_id'])}"
            f"<td>{html.escape(row['prompt'])}</td><td><ol type='A'>{items}</ol></td></tr>")
