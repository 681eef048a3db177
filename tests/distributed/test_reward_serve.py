"""Reward deployment on real Ray Serve: batching, in-place reconfigure, health, HTTP validation.

The scorer here is a small real class (score = scale * mean pixel / 255 + len(text)), so the
numbers are known by hand; the plumbing under test is Serve's.
"""

from __future__ import annotations

import base64
import functools
import io
import json
import socket
import sys
from pathlib import Path

import numpy as np
import pytest
import ray.cloudpickle
import requests
from PIL import Image
from ray import serve

from mmrlhf.reward.serve_app import (
    HEALTH_TEXT,
    build_reward_app,
    check_scorer_health,
    decode_image,
    deploy_reward,
)

# pytest imports this file as `distributed.test_...`, a name Serve replicas can't import; ship the
# scorer defined here by value instead.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = pytest.mark.ray


class MeanLengthScorer:
    """score = scale * mean(image) / 255 + len(text); `scale` from <weights_dir>/scale.json.

    Appends one JSON line per event to `log_path` ({"batch": n, "texts"} or {"load": dir name,
    "via": "init" or "load_weights"}), so the test can see, from outside the replica, how calls
    were batched and how weights were loaded.
    """

    def __init__(self, weights_dir: str, log_path: str) -> None:
        self.log_path = log_path
        self._load(weights_dir, via="init")

    @classmethod
    def from_user_config(cls, user_config: dict, log_path: str) -> MeanLengthScorer:
        return cls(user_config["weights_dir"], log_path)

    def load_weights(self, weights_dir: str) -> None:
        self._load(weights_dir, via="load_weights")

    def _load(self, weights_dir: str, via: str) -> None:
        self.scale = json.loads((Path(weights_dir) / "scale.json").read_text())["scale"]
        self._log({"load": Path(weights_dir).name, "via": via})

    def score(self, images: list[np.ndarray], texts: list[str]) -> np.ndarray:
        self._log({"batch": len(images), "texts": texts})
        return np.array(
            [self.scale * image.mean() / 255.0 + len(text) for image, text in zip(images, texts)],
            dtype=np.float32,
        )

    def _log(self, event: dict) -> None:
        with open(self.log_path, "a") as f:
            f.write(json.dumps(event) + "\n")


def weights_dir(root: Path, name: str, scale: float) -> Path:
    path = root / name
    path.mkdir()
    (path / "scale.json").write_text(json.dumps({"scale": scale}))
    return path


def reward_app(tmp_path: Path, name: str, scale: float, version: int, **kwargs):
    """The app under test: MeanLengthScorer logging to tmp_path/events.jsonl, 4-item batches."""
    factory = functools.partial(
        MeanLengthScorer.from_user_config, log_path=str(tmp_path / "events.jsonl")
    )
    return build_reward_app(
        weights_dir(tmp_path, name, scale), max_batch_size=4, version=version,
        ray_actor_options={"num_cpus": 0.5}, scorer_factory=factory, **kwargs,
    )


def batch_sizes(tmp_path: Path) -> list[int]:
    """Sizes of the scored batches so far, leaving out Serve's health-check self-tests."""
    return [e["batch"] for e in events(tmp_path) if "batch" in e and e["texts"] != [HEALTH_TEXT]]


def last_load(tmp_path: Path) -> tuple[str, str]:
    """(weights dir name, "init" or "load_weights") of the scorer's latest weight load."""
    return [(e["load"], e["via"]) for e in events(tmp_path) if "load" in e][-1]


def events(tmp_path: Path) -> list[dict]:
    lines = (tmp_path / "events.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def png_base64(image: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def serve_instance(ray_cluster):
    """Serve started by the test (through `deploy_reward`), always shut down after it."""
    yield
    serve.shutdown()


def test_serve_batches_concurrent_calls_and_reconfigures(serve_instance, tmp_path):
    # A long batch wait, so the 8 concurrent calls below surely share batches.
    app = reward_app(tmp_path, "v1", scale=1.0, version=1, batch_wait_timeout_s=0.2)
    handle = deploy_reward(app)
    white = np.full((4, 5), 255, dtype=np.uint8)
    rgb_black = np.zeros((3, 3, 3), dtype=np.uint8)

    responses = [handle.score.remote([white], ["x" * i]) for i in range(8)]  # 8 concurrent callers
    assert [r.result() for r in responses] == [[pytest.approx(1.0 + i)] for i in range(8)]
    sizes = batch_sizes(tmp_path)
    assert sum(sizes) == 8 and max(sizes) > 1, sizes
    scores = handle.score.remote([white, rgb_black], ["ab", ""]).result()
    assert scores == [pytest.approx(3.0), 0.0]
    assert handle.weights_version.remote().result() == 1
    handle.check_health.remote().result()  # raises on an unhealthy replica

    # Redeployed from Python: Serve starts a replica on the new user_config.
    deploy_reward(reward_app(tmp_path, "v2", scale=3.0, version=2))
    assert handle.weights_version.remote().result() == 2
    assert handle.score.remote([white], ["ab"]).result() == [pytest.approx(5.0)]
    assert last_load(tmp_path) == ("v2", "init")

    # What Serve calls on the live replica when a declarative update changes only user_config.
    v3 = weights_dir(tmp_path, "v3", scale=5.0)
    handle.reconfigure.remote({"weights_dir": str(v3), "version": 3}).result()
    assert handle.weights_version.remote().result() == 3
    assert handle.score.remote([white], ["ab"]).result() == [pytest.approx(7.0)]
    assert last_load(tmp_path) == ("v3", "load_weights")

    with pytest.raises(ValueError, match=r"images\[0\] must be a uint8 ndarray"):
        handle.score.remote([white.astype(np.float32)], ["a"]).result()


def test_http_route_rejects_malformed_request_with_4xx(serve_instance, tmp_path):
    port = free_port()
    app = reward_app(tmp_path, "v1", scale=1.0, version=7)
    deploy_reward(app, route_prefix="/reward", http_host="127.0.0.1", http_port=port)

    def post(items: list[dict]) -> requests.Response:
        url = f"http://127.0.0.1:{port}/reward/score"
        return requests.post(url, json={"items": items}, timeout=30)

    good = {"image_png_base64": png_base64(np.full((4, 4), 255, dtype=np.uint8)), "text": "abc"}
    response = post([good, {"image_png_base64": "%%%not base64", "text": "a"}])
    assert response.status_code == 400
    assert "items[1].image_png_base64: not valid base64" in response.json()["detail"]

    not_an_image = base64.b64encode(b"definitely not a png").decode()
    response = post([{"image_png_base64": not_an_image, "text": "a"}])
    assert response.status_code == 400
    assert "items[0].image_png_base64: not a decodable image" in response.json()["detail"]

    response = post([])
    assert response.status_code == 422 and "items" in json.dumps(response.json()["detail"])

    response = post([good])
    assert response.status_code == 200
    assert response.json() == {"scores": [pytest.approx(4.0)], "version": 7}


def test_health_check_fails_on_missing_scorer_or_non_finite_score():
    class NanScorer:
        def score(self, images, texts):
            return np.full(len(images), np.nan, dtype=np.float32)

    with pytest.raises(RuntimeError, match="no scorer loaded"):
        check_scorer_health(None)
    with pytest.raises(RuntimeError, match="not finite|expected one finite float"):
        check_scorer_health(NanScorer())


def test_decode_image_keeps_grey_2d_and_makes_color_rgb():
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4)
    assert np.array_equal(decode_image(png_base64(grey), "items[0]"), grey)
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    assert decode_image(png_base64(rgba), "items[0]").shape == (2, 2, 3)
