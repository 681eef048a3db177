"""The labeling page on Ray Serve: a thin FastAPI deployment around :class:`LabelingSession`.

Routes (under the application's route prefix, ``/label`` by default):
- GET ``/``: the page, ``static/label.html`` (plain HTML and JS, no build step), its version
  (the first 12 hex digits of the file's SHA-256) written into it;
- GET ``/api/next?annotator=ID``: the annotator's next item (:meth:`LabelingSession.next_item`);
- POST ``/api/answer``: one answer (:class:`AnswerIn`); 200 ``{"saved", "answer_id", "preferred"}``
  once the answer is on disk, 400 naming the bad field;
- GET ``/api/stats``: per-annotator answers, gold accuracy and self-consistency.

Every replica reads and appends to the same answers folder (:mod:`mmrlhf.feedback.answers`) and
keeps no state of its own, so a killed replica loses nothing that was acknowledged and its
replacement carries on where the annotators are. The handlers are ``async`` and do their file
work without awaiting, so one replica handles one answer at a time.

Access (Ray Serve docs, "HTTP guide"): the proxy has no authentication of its own. Bound to
127.0.0.1 the page is reachable only from this machine; on any other host an annotator token
is required (``X-Annotator-Token`` header on every API call, given to the page as
``?token=...`` in its URL) and compared in constant time (``secrets.compare_digest``).
"""

# No `from __future__ import annotations`: FastAPI reads the route's parameter types at runtime
# (see mmrlhf/reward/serve_app.py).
import hashlib
import secrets
import socket
from pathlib import Path
from typing import Optional

from fastapi import FastAPI, Header, HTTPException
from fastapi.responses import HTMLResponse
from pydantic import BaseModel
from ray import serve
from ray.serve import Application

from mmrlhf.feedback.answers import ANSWERS_DIR, AnswerStore, annotator_stats
from mmrlhf.feedback.labeling import LabelingSession
from mmrlhf.feedback.tasks import load_tasks

PAGE = Path(__file__).with_name("static") / "label.html"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
APP_NAME, ROUTE_PREFIX = "labeling", "/label"


def page_html() -> tuple[str, str]:
    """(the page's HTML with its version filled in, the version)."""
    text = PAGE.read_text(encoding="utf-8")
    version = hashlib.sha256(text.encode()).hexdigest()[:12]
    return text.replace("__PAGE_VERSION__", version), version


class AnswerIn(BaseModel):
    """POST /api/answer body; the fields as :meth:`LabelingSession.record` takes them."""

    annotator: str
    item_id: str
    repeat: bool
    shown: list[int]
    seconds: float
    page_version: str
    choice: Optional[str] = None
    ranking: Optional[list[int]] = None
    ratings: Optional[list[int]] = None
    rationale: Optional[str] = None


app = FastAPI(title="mmrlhf labeling page")


@serve.deployment
@serve.ingress(app)
class LabelingDeployment:
    """Serves one tasks folder; ``token`` None leaves the API open (loopback only)."""

    def __init__(self, tasks_dir: str, token: Optional[str], seed: int, repeat_fraction: float) -> None:
        tasks = load_tasks(tasks_dir)
        self.session = LabelingSession(tasks, AnswerStore(Path(tasks_dir) / ANSWERS_DIR), seed, repeat_fraction)
        self.token = token
        self.html, self.version = page_html()

    def _check(self, token: Optional[str]) -> None:
        if self.token is not None and not secrets.compare_digest(token or "", self.token):
            raise HTTPException(status_code=401, detail="missing or wrong annotator token (open the page "
                                "with the ?token=... link you were given)")

    @app.get("/", response_class=HTMLResponse)
    async def page(self) -> str:
        """The labeling page."""
        return self.html

    @app.get("/api/next")
    async def next_item(self, annotator: str, x_annotator_token: Optional[str] = Header(None)) -> dict:
        """The annotator's next item, progress and whether they are done."""
        self._check(x_annotator_token)
        try:
            return self.session.next_item(annotator)
        except ValueError as err:
            raise HTTPException(status_code=400, detail=str(err)) from None

    @app.post("/api/answer")
    async def answer(self, body: AnswerIn, x_annotator_token: Optional[str] = Header(None)) -> dict:
        """Store one answer; returns once it is on disk."""
        self._check(x_annotator_token)
        try:
            saved, stored = self.session.record(body.model_dump())
        except ValueError as err:
            raise HTTPException(status_code=400, detail=str(err)) from None
        return {"saved": saved, "answer_id": stored["answer_id"], "preferred": stored["preferred"]}

    @app.get("/api/stats")
    async def stats(self, x_annotator_token: Optional[str] = Header(None)) -> dict:
        """Per-annotator statistics (:func:`annotator_stats`)."""
        self._check(x_annotator_token)
        return annotator_stats(self.session.store.read())

    def actor_name(self) -> str:
        """This replica's Ray actor name (namespace ``serve``), for fault tests."""
        import ray

        return ray.get_runtime_context().get_actor_name()


def labeling_token(host: str, token: Optional[str]) -> Optional[str]:
    """The annotator token to require: ``token`` if given; a new random one off loopback; else None."""
    if token is not None:
        if len(token) < 16:
            raise ValueError("token: expected at least 16 characters (or leave it out to get a random one)")
        return token
    return None if host in LOOPBACK_HOSTS else secrets.token_urlsafe(24)


def build_labeling_app(tasks_dir: str | Path, token: Optional[str] = None, seed: int = 0,
                       repeat_fraction: float = 0.05, replicas: int = 1, num_cpus: float = 0.25) -> Application:
    """The labeling application for ``tasks_dir`` (checked here: a bad folder fails before Serve starts).

    Raises FileNotFoundError / ValueError as :func:`load_tasks` does, ValueError for replicas < 1.
    """
    load_tasks(tasks_dir)
    if replicas < 1:
        raise ValueError(f"replicas={replicas}, expected at least 1")
    return LabelingDeployment.options(
        num_replicas=replicas, ray_actor_options={"num_cpus": num_cpus},
        logging_config={"enable_access_log": False},
    ).bind(str(tasks_dir), token, seed, repeat_fraction)


def deploy_labeling(app: Application, host: str = "127.0.0.1", port: int = 8000) -> str:
    """Run ``app`` on Serve with an HTTP proxy on ``host:port``; returns the page's base URL.

    Serve's HTTP options are fixed when Serve first starts on a cluster (see
    :func:`mmrlhf.reward.serve_app.deploy_reward`). Blocks until the replicas are running.
    """
    serve.start(proxy_location="HeadOnly", http_options={"host": host, "port": port})
    serve.run(app, name=APP_NAME, route_prefix=ROUTE_PREFIX)
    shown_host = socket.gethostname() if host in ("0.0.0.0", "::") else host  # all interfaces: name one
    return f"http://{shown_host}:{port}{ROUTE_PREFIX}/"
