"""Stage 3, feedback, on the labeling page: ``mmrlhf feedback label`` serves a tasks folder to people.

Starts (or joins, under ``RAY_ADDRESS``) a Ray cluster, runs the labeling application
(:mod:`mmrlhf.feedback.labeling_app`) on Serve, prints the page's link and serves until Ctrl-C,
then prints each annotator's counts, gold accuracy and self-consistency. The answers stay in
``<tasks>/answers/``; ``mmrlhf feedback import <tasks> --kind page`` turns them into
``feedback/pairs.parquet``.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from mmrlhf.cluster import init_ray, shutdown_ray
from mmrlhf.feedback.answers import ANSWERS_DIR, AnswerStore, annotator_stats


def serve_tasks(tasks_dir: str | Path, host: str = "127.0.0.1", port: int = 8000, token: str | None = None,
                seed: int = 0, repeat_fraction: float = 0.05, replicas: int = 1) -> dict[str, dict]:
    """Serve ``tasks_dir`` on the labeling page until Ctrl-C.

    ``host``: 127.0.0.1 unless people on other machines label; then an annotator ``token`` is
    required (a random one when not given, printed in the link). Returns the per-annotator
    statistics (:func:`mmrlhf.feedback.answers.annotator_stats`).
    Raises FileNotFoundError / ValueError for a folder without tasks, before Ray starts.
    """
    from ray import serve

    from mmrlhf.feedback.labeling_app import APP_NAME, build_labeling_app, deploy_labeling, labeling_token

    token = labeling_token(host, token)
    app = build_labeling_app(tasks_dir, token, seed, repeat_fraction, replicas)
    joined = bool(os.environ.get("RAY_ADDRESS"))
    init_ray()
    try:
        url = deploy_labeling(app, host, port)
        link = f"{url}?token={token}" if token else url
        print(f"labeling page: {link}  (add &annotator=<id> per person, or they type it; Ctrl-C stops)", flush=True)
        try:
            threading.Event().wait()  # returns only by KeyboardInterrupt
        except KeyboardInterrupt:
            pass  # Ctrl-C is how a person stops the page: every acknowledged answer is on disk
    finally:
        if joined:
            serve.delete(APP_NAME)  # a shared cluster's other Serve applications stay up
        shutdown_ray(shutdown_serve=not joined)
    stats = annotator_stats(AnswerStore(Path(tasks_dir) / ANSWERS_DIR).read())
    for annotator, s in stats.items():
        print(f"{annotator}: {s['answers']} answers, gold accuracy {_share(s['gold_accuracy'])} over "
              f"{s['gold_items']}, self-consistency {_share(s['self_consistency'])} over {s['repeats']} repeats")
    return stats


def _share(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"
