"""Reward deployment on real Ray Serve: batching, in-place reconfigure, health, HTTP validation,
rule functions by import path beside or instead of the learned model.

The scorer here is a small real class (score = scale * mean pixel / 255 + len(text)) and the rule
functions are in `tests/reward/rule_functions.py`, so the numbers are known by hand; the plumbing
under test is Serve's.
"""

from __future__ import annotations

import base64
import functools
import io
import json
import socket
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import ray.cloudpickle
import requests
import torch
from PIL import Image
from ray import serve

from mmrlhf.config import RewardSourceConfig
from mmrlhf.reward.serve_app import (
    HEALTH_TEXT,
    build_reward_app,
    check_scorer_health,
    decode_image,
    deploy_reward,
)
from mmrlhf.rollout.worker import score_rows, serve_scorer
from tests.reward.rule_functions import PATH

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


def totals(response) -> list[float]:
    """The total scores of a `handle.score` call, as Python floats."""
    return response.result()["total"].tolist()


def no_records(n: int) -> tuple[list[None], list[str]]:
    """References and prompts for n items scored by the learned model alone (which ignores both)."""
    return [None] * n, [""] * n


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

    responses = [handle.score.remote([white], ["x" * i], *no_records(1)) for i in range(8)]  # 8 concurrent callers
    assert [totals(r) for r in responses] == [[pytest.approx(1.0 + i)] for i in range(8)]
    sizes = batch_sizes(tmp_path)
    assert sum(sizes) == 8 and max(sizes) > 1, sizes
    scores = handle.score.remote([white, rgb_black], ["ab", ""], *no_records(2)).result()
    assert list(scores) == ["model", "total", "reward_version"] and scores["model"].dtype == np.float32
    assert scores["reward_version"].tolist() == [1, 1]
    assert scores["total"].tolist() == scores["model"].tolist() == [pytest.approx(3.0), 0.0]
    assert handle.weights_version.remote().result() == 1
    handle.check_health.remote().result()  # raises on an unhealthy replica

    # Redeployed from Python with other batch limits: Serve starts a replica on the new user_config.
    deploy_reward(reward_app(tmp_path, "v2", scale=3.0, version=2))
    assert handle.weights_version.remote().result() == 2
    assert totals(handle.score.remote([white], ["ab"], *no_records(1))) == [pytest.approx(5.0)]
    assert last_load(tmp_path) == ("v2", "init")

    # What Serve calls on the live replica when a declarative update changes only user_config.
    v3 = weights_dir(tmp_path, "v3", scale=5.0)
    handle.reconfigure.remote({"weights_dir": str(v3), "version": 3}).result()
    assert handle.weights_version.remote().result() == 3
    assert totals(handle.score.remote([white], ["ab"], *no_records(1))) == [pytest.approx(7.0)]
    assert last_load(tmp_path) == ("v3", "load_weights")

    with pytest.raises(ValueError, match=r"images\[0\] must be a uint8 ndarray"):
        handle.score.remote([white.astype(np.float32)], ["a"], *no_records(1)).result()
    with pytest.raises(ValueError, match=r"2 images but 1 references"):
        handle.score.remote([white, white], ["a", "b"], [None], ["", ""]).result()


def test_reward_refresh_swaps_weights_in_place_while_scoring_no_request_fails_rows_carry_version(
        serve_instance, tmp_path):
    """Issue 17, reward-model refresh during RL: redeploying with only a new user_config (what
    `swap_reward_weights` does) reconfigures the live replica while callers keep scoring."""
    handle = deploy_reward(reward_app(tmp_path, "v1", scale=1.0, version=1))
    replica = handle.replica_id.remote().result()
    score = serve_scorer("reward", timeout_s=60.0, retries=0)  # a failed request would show as version -1
    white = np.full((2, 2), 255, dtype=np.uint8)
    texts, rows = ["ab", "abcd"], [{"prompt": ""}, {"prompt": ""}]
    results, errors, swapped = [], [], threading.Event()

    def rollout_worker():  # scores batches as a rollout worker does, until a few after the swap
        after = 0
        try:
            while after < 5:
                results.append(score_rows(score, [white, white], texts, rows, step=0))
                after += swapped.is_set()
        except Exception as err:  # re-raised below, in the test's thread
            errors.append(err)

    callers = [threading.Thread(target=rollout_worker) for _ in range(3)]
    for caller in callers:
        caller.start()
    while len(results) < 6 and not errors:
        threading.Event().wait(0.05)
    deploy_reward(reward_app(tmp_path, "v2", scale=3.0, version=2))  # the same app, new weights and version
    swapped.set()
    for caller in callers:
        caller.join()
    if errors:
        raise errors[0]

    assert handle.replica_id.remote().result() == replica  # the same replica: swapped in place
    assert last_load(tmp_path) == ("v2", "load_weights")
    versions = [version.tolist() for _, version in results]
    assert {v for row in versions for v in row} == {1, 2}  # -1 would be a failed request
    scale = {1: 1.0, 2: 3.0}
    for source_scores, version in results:  # each row scored by the weights its version names
        assert source_scores["total"].tolist() == [pytest.approx(scale[v] + len(t)) for v, t in zip(version.tolist(), texts)]
    assert versions[-1] == [2, 2]
    assert handle.weights_version.remote().result() == 2


def test_rule_functions_by_import_path_are_served_beside_the_model_one_call_per_batch(serve_instance, tmp_path):
    sources = [RewardSourceConfig("model", 1.0), RewardSourceConfig(f"{PATH}:reference_match", 2.0),
               RewardSourceConfig(f"{PATH}:prompt_words", 0.0)]
    handle = deploy_reward(reward_app(tmp_path, "v1", scale=1.0, version=1, sources=sources,
                                      batch_wait_timeout_s=0.2))
    white, black = np.full((4, 5), 255, dtype=np.uint8), np.zeros((3, 3, 3), dtype=np.uint8)
    # Two callers at once, so their items share a batch and must come back split per caller.
    first = handle.score.remote([white, black], ["ab", ""], ["ab", None], ["what is it", "q"])
    second = handle.score.remote([black], ["abc"], ["xyz"], ["one two"])
    first, second = first.result(), second.result()
    assert list(first) == ["model", "reference_match", "prompt_words", "total", "reward_version"]
    assert max(batch_sizes(tmp_path)) == 3  # both calls in one batch
    np.testing.assert_allclose(first["model"], [3.0, 0.0])              # 255/255 + len("ab"); 0 + 0
    np.testing.assert_array_equal(first["reference_match"], [1.0, np.nan])  # no reference: unscored
    np.testing.assert_array_equal(first["prompt_words"], [3.0, 1.0])         # weight 0: computed only
    np.testing.assert_allclose(first["total"], [3.0 + 2 * 1.0, np.nan])      # never 0 for the unscored
    np.testing.assert_allclose([second[k][0] for k in first], [3.0, 0.0, 2.0, 3.0, 1])
    handle.check_health.remote().result()


def test_rule_function_alone_is_served_without_weights_and_its_failure_reaches_the_caller_as_one_line(
        serve_instance):
    name = f"{PATH}:strict_length"
    handle = deploy_reward(build_reward_app(None, sources=[RewardSourceConfig(name, 1.0)],
                                            ray_actor_options={"num_cpus": 0.5}), name="reward-rules")
    image = np.zeros((2, 2), dtype=np.uint8)
    scores = handle.score.remote([image, image], ["abc", "a"], [None, None], ["q", "q"]).result()
    assert {k: v.tolist() for k, v in scores.items()} == {"strict_length": [3.0, 1.0], "total": [3.0, 1.0],
                                                          "reward_version": [0, 0]}
    handle.check_health.remote().result()  # no learned model to check, and no weights to load
    assert handle.weights_version.remote().result() == 0
    with pytest.raises(ValueError) as info:  # what a rollout worker's call raises: not retried, unwrapped
        serve_scorer("reward-rules", timeout_s=30.0, retries=0)([image], [""], [None], ["q"])
    assert str(info.value) == f"reward source {name!r} raised ValueError on a batch of 1 responses: empty response"


def test_clipscore_is_served_from_the_reward_models_joint_embedding_without_its_head(serve_instance, tmp_path):
    from mmrlhf.models import RewardModel, build_reward_preset
    from mmrlhf.reward.scorer import RewardScorer

    model = RewardModel.from_pretrained(build_reward_preset("tiny", tmp_path / "preset"))
    with torch.no_grad():  # a head far from CLIP's logit, so the two sources differ
        model.bias.fill_(5.0)
    weights = model.save_pretrained(tmp_path / "model")
    sources = [RewardSourceConfig("clipscore", 1.0), RewardSourceConfig("model", 0.0)]
    handle = deploy_reward(build_reward_app(weights, sources=sources, ray_actor_options={"num_cpus": 0.5}))
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (16, 16), dtype=np.uint8), rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)]
    texts = ["four one", "seven"]
    scores = handle.score.remote(images, texts, [None, None], ["q", "q"]).result()
    local = RewardScorer.from_pretrained(weights)
    np.testing.assert_allclose(scores["clipscore"], local.clip_score(images, texts), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(scores["model"], local.score(images, texts), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(scores["total"], scores["clipscore"])  # the model's weight is 0
    assert ((0 <= scores["clipscore"]) & (scores["clipscore"] <= 2.5)).all()
    handle.check_health.remote().result()


def test_build_reward_app_refuses_bad_sources_before_anything_is_deployed(tmp_path):
    with pytest.raises(ValueError, match=r"reward source 'tests.reward.nope:f': cannot import 'tests.reward.nope'"):
        build_reward_app(None, sources=[RewardSourceConfig("tests.reward.nope:f", 1.0)])
    with pytest.raises(ValueError, match="weights_dir=None"):
        build_reward_app(None)  # the learned model alone, and no weights for it
    with pytest.raises(ValueError, match="weights are needed exactly when a source is 'model'"):
        build_reward_app(tmp_path, sources=[RewardSourceConfig(f"{PATH}:strict_length", 1.0)])


def test_http_route_rejects_malformed_request_with_4xx(serve_instance, tmp_path):
    port = free_port()
    sources = [RewardSourceConfig("model", 1.0), RewardSourceConfig(f"{PATH}:reference_match", 1.0)]
    app = reward_app(tmp_path, "v1", scale=1.0, version=7, sources=sources)
    deploy_reward(app, route_prefix="/reward", http_host="127.0.0.1", http_port=port)

    def post(items: list[dict]) -> requests.Response:
        url = f"http://127.0.0.1:{port}/reward/score"
        return requests.post(url, json={"items": items}, timeout=30)

    good = {"image_png_base64": png_base64(np.full((4, 4), 255, dtype=np.uint8)), "text": "abc", "reference": "abc"}
    response = post([good, {"image_png_base64": "%%%not base64", "text": "a"}])
    assert response.status_code == 400
    assert "items[1].image_png_base64: not valid base64" in response.json()["detail"]

    not_an_image = base64.b64encode(b"definitely not a png").decode()
    response = post([{"image_png_base64": not_an_image, "text": "a"}])
    assert response.status_code == 400
    assert "items[0].image_png_base64: not a decodable image" in response.json()["detail"]

    response = post([])
    assert response.status_code == 422 and "items" in json.dumps(response.json()["detail"])

    response = post([good, {**good, "reference": None}])
    assert response.status_code == 200
    # 1 + len("abc") + a match; without a reference the total is unscored (null), not 0
    assert response.json() == {"scores": [pytest.approx(5.0), None], "version": 7}


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
