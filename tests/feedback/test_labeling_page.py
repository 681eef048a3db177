"""The labeling page in a real headless Chromium (Debian's `chromium`, driven by Playwright) on real Serve.

Two annotators label in parallel browser contexts, each six showings (five pairs, one of them a
gold item, and one pair shown again with its sides swapped); the Serve replica is killed while
they label. The answers on disk must be exactly what the scripted people chose, sides resolved.
Set MMRLHF_SCREENSHOT=docs/labeling_page.png to refresh the README's screenshot.
"""

import os
import socket
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import ray
import requests
from ray import serve
from sklearn.datasets import load_digits

from mmrlhf.data.digits import gold_score
from mmrlhf.data.media import encode_png
from mmrlhf.feedback.answers import ANSWERS_DIR, AnswerStore
from mmrlhf.feedback.labeling_app import APP_NAME, build_labeling_app, deploy_labeling, labeling_token
from mmrlhf.feedback.tasks import PromptSamples, load_tasks, task_rows, write_tasks
from tests.feedback.browser import CHROMIUM, label_one

pytestmark = pytest.mark.ray

TOKEN = "test-annotator-token-0123456789"
REFERENCES = {"p0": "four one seven", "p1": "two three", "p2": "five"}
RESPONSES = {"p0": ["four one seven", "four one", "one"], "p1": ["two three", "two"], "p2": ["five", "five five"]}
DIGIT = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "seven": 7}


def digits_image(words: str) -> bytes:
    """The reference's digits as real UCI scans side by side, 8 px -> 64 px high."""
    scans = load_digits()
    glyphs = [scans.images[list(scans.target).index(DIGIT[w])] for w in words.split()]
    strip = (np.hstack(glyphs) * (255 / 16)).astype(np.uint8)
    return encode_png(np.kron(strip, np.ones((8, 8), dtype=np.uint8)))


@pytest.fixture(scope="module")
def page_url(ray_cluster, tmp_path_factory):
    """Five pairs over three prompts, one gold item, served with an annotator token; Serve shut down after."""
    prompts = [PromptSamples(pid, "What number is written?", digits_image(REFERENCES[pid]), RESPONSES[pid],
                             [gold_score(r, REFERENCES[pid]) for r in RESPONSES[pid]]) for pid in REFERENCES]
    rows = task_rows("pairwise", prompts, np.random.default_rng(0), gold_fraction=0.2)
    tasks_dir = write_tasks(tmp_path_factory.mktemp("page") / "tasks", "pairwise", prompts, rows, {})
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = deploy_labeling(build_labeling_app(tasks_dir, TOKEN, repeat_fraction=0.05), "127.0.0.1", port)
    yield url, tasks_dir
    serve.shutdown()


def better(texts: list[str]) -> int:
    """The scripted person's pick: the response nearer the reference (gold score; all prompts' references known)."""
    ref = next(REFERENCES[p] for p, rs in RESPONSES.items() if texts[0] in rs)
    return int(gold_score(texts[1], ref) > gold_score(texts[0], ref))


def replica_actor_name() -> str:
    """The labeling replica's actor name, asked in another thread: Playwright's sync API runs an
    asyncio loop in this one, where Serve refuses blocking handle calls."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: serve.get_app_handle(APP_NAME).actor_name.remote().result()).result()


def stored(tasks_dir, annotator: str) -> list[tuple]:
    answers = [a for a in AnswerStore(tasks_dir / ANSWERS_DIR).read() if a["annotator"] == annotator]
    return [(a["responses"][a["shown"][0]], a["responses"][a["shown"][1]], a["choice"], a["chosen"], a["rejected"],
             a["rationale"]) for a in answers]


def test_two_annotators_label_through_a_killed_replica_and_every_answer_is_kept(page_url):
    from playwright.sync_api import sync_playwright

    url, tasks_dir = page_url
    assert CHROMIUM, "no chromium executable: install Debian's package (apt-get install -y chromium)"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            pages = {}
            for annotator in ("ann1", "ann2"):  # two people, two browser contexts open at once
                pages[annotator] = browser.new_context(viewport={"width": 1000, "height": 640}).new_page()
                pages[annotator].goto(f"{url}?token={TOKEN}&annotator={annotator}")
            done = {"ann1": [], "ann2": []}
            done["ann1"].append(label_one(pages["ann1"], 0, better, rationale="closest to the digits I read"))
            for n in (1, 2):
                done["ann1"].append(label_one(pages["ann1"], n, better))
                done["ann2"].append(label_one(pages["ann2"], n - 1, better))
            pages["ann1"].keyboard.press("2")  # a choice selected, for the screenshot
            if os.environ.get("MMRLHF_SCREENSHOT"):
                pages["ann1"].screenshot(path=os.environ["MMRLHF_SCREENSHOT"])

            killed = replica_actor_name()
            ray.kill(ray.get_actor(killed, namespace="serve"), no_restart=True)  # while both are labeling
            for n in range(2, 6):
                done["ann2"].append(label_one(pages["ann2"], n, better))
            for n in range(3, 6):
                done["ann1"].append(label_one(pages["ann1"], n, better))
            assert replica_actor_name() != killed  # a new replica took over
        finally:
            browser.close()

    answers = [a for a in AnswerStore(tasks_dir / ANSWERS_DIR).read() if a["annotator"] in done]
    assert len(answers) == 12 and not list((tasks_dir / ANSWERS_DIR).glob(".*"))
    for annotator in ("ann1", "ann2"):
        assert stored(tasks_dir, annotator) == done[annotator]  # exactly those answers, sides resolved
        mine = [a for a in answers if a["annotator"] == annotator]
        (repeat,) = [a for a in mine if a["repeat"]]
        (first,) = [a for a in mine if a["item_id"] == repeat["item_id"] and not a["repeat"]]
        assert repeat["shown"] == first["shown"][::-1] and repeat["chosen"] == first["chosen"]
        (gold,) = [a for a in mine if a["gold_correct"] is not None]
        assert gold["gold_correct"] is True  # the scripted person follows the gold score
        assert all(len(a["page_version"]) == 12 and a["seconds"] > 0 for a in mine)
    known = {r["task_id"]: r["known_better"] for r in load_tasks(tasks_dir).rows}
    assert sum(v is not None for v in known.values()) == 1


def test_api_needs_the_token_and_concurrent_answers_are_all_kept(page_url):
    url, tasks_dir = page_url
    assert requests.get(f"{url}api/next", params={"annotator": "x"}, timeout=60).status_code == 401
    assert requests.get(url, timeout=60).status_code == 200  # the page itself holds nothing secret
    headers = {"X-Annotator-Token": TOKEN}

    def answer(annotator: str, results: list) -> None:
        item = requests.get(f"{url}api/next", params={"annotator": annotator}, headers=headers, timeout=60).json()["item"]
        body = {"annotator": annotator, "item_id": item["item_id"], "repeat": item["repeat"], "shown": item["shown"],
                "choice": "tie", "seconds": 2.0, "page_version": "test"}
        results.append(requests.post(f"{url}api/answer", json=body, headers=headers, timeout=60).json())

    results: list = []
    threads = [threading.Thread(target=answer, args=(f"http{i}", results)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 6 and all(r["saved"] and r["preferred"] == "tie" for r in results)
    kept = {a["annotator"] for a in AnswerStore(tasks_dir / ANSWERS_DIR).read()}
    assert {f"http{i}" for i in range(6)} <= kept
    stats = requests.get(f"{url}api/stats", headers=headers, timeout=60).json()
    assert all(stats[f"http{i}"]["answers"] == 1 for i in range(6))
    bad = requests.post(f"{url}api/answer", headers=headers, timeout=60,
                        json={"annotator": "http0", "item_id": "nope", "repeat": False, "shown": [0, 1],
                              "seconds": 1, "page_version": "t", "choice": "tie"})
    assert bad.status_code == 400 and "item_id 'nope' is not a task" in bad.json()["detail"]


def test_a_token_is_required_off_loopback():
    assert labeling_token("127.0.0.1", None) is None
    assert len(labeling_token("0.0.0.0", None)) >= 24
    with pytest.raises(ValueError, match="at least 16 characters"):
        labeling_token("0.0.0.0", "short")
