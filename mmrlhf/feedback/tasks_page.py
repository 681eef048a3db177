"""A self-contained HTML page of comparison tasks: thumbnail, prompt, responses, what to fill in.

Images are inlined as ``data:`` URIs, so the one file can be mailed or opened anywhere; every
text is HTML-escaped (responses are model output and may hold markup).
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


def tasks_html(kind: str, rows: list[dict[str, Any]], images: dict[str, bytes]) -> str:
    """The page for task rows of ``kind`` (:mod:`mmrlhf.feedback.tasks`), one table row each.

    ``images`` maps each row's ``image`` path to its encoded PNG bytes. Raises KeyError naming
    an image path missing from ``images``.
    """
    body = "".join(_row_html(kind, row, images) for row in rows)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>mmrlhf tasks ({kind})</title>"
            f"<style>{_STYLE}</style></head><body><h1>{len(rows)} {kind} tasks</h1>"
            f"<p>In <code>tasks.jsonl</code> (or <code>tasks.parquet</code>): {_WHAT_TO_FILL[kind]}, and "
            "<code>annotator</code>; then <code>mmrlhf feedback import tasks.jsonl --kind "
            f"{kind}</code>.</p><table><tr><th>task</th><th>image</th><th>prompt</th><th>responses</th></tr>"
            f"{body}</table></body></html>")


def _row_html(kind: str, row: dict[str, Any], images: dict[str, bytes]) -> str:
    if row["image"] not in images:
        raise KeyError(f"task {row['task_id']}: image {row['image']!r} not among the images given")
    data = base64.b64encode(images[row["image"]]).decode()
    if kind == "pairwise":
        texts = [row["response_a"], row["response_b"]]
    elif kind == "ranking":
        texts = row["responses"]
    else:
        texts = [row["response"]]
    items = "".join(f"<li>{html.escape(text)}</li>" for text in texts)
    return (f"<tr><td>{html.escape(row['task_id'])}</td><td><img alt='{html.escape(row['prompt_id'])}' "
            f"src='data:image/png;base64,{data}'></td><td>{html.escape(row['prompt'])}</td>"
            f"<td><ol type='A'>{items}</ol></td></tr>")
