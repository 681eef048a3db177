"""The README's "Your own data" walk-through on a small photo-like captioning set, end to end.

data, sft, feedback sample (rankings filled in here, as a person would) and import, then `train`
for reward, rl (2 steps, local Ray) and eval; settings that cannot fit the data or the cluster
are each refused, or warned about, in one line naming the key.
"""

import io
import json
import logging
import re

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageDraw
from transformers import AutoTokenizer

from mmrlhf.cli import main
from mmrlhf.data.schema import PREFERENCE_SCHEMA, read_table, record_references
from mmrlhf.feedback.tasks import load_tasks
from mmrlhf.metrics import tensorboard_dir
from mmrlhf.stages.common import RunPaths
from mmrlhf.stages.data import SPLITS

SCENES = [("red", "boat", "floats on", "calm", "lake", "grey"), ("yellow", "kite", "flies over", "green", "hill", "blue"),
          ("white", "dog", "runs along", "sandy", "beach", "pale"), ("black", "cat", "sleeps beside", "old", "wall", "dark"),
          ("blue", "car", "drives down", "empty", "road", "cloudy"), ("brown", "horse", "stands in", "wide", "field", "bright"),
          ("orange", "bus", "waits at", "busy", "corner", "misty"), ("green", "tent", "sits near", "quiet", "river", "clear"),
          ("pink", "bike", "leans on", "wooden", "fence", "rainy"), ("purple", "bird", "rests on", "tall", "tree", "golden"),
          ("silver", "train", "crosses", "long", "bridge", "stormy"), ("grey", "goat", "climbs", "rocky", "slope", "windy")]
RGB = {"red": (200, 40, 40), "yellow": (230, 210, 50), "white": (240, 240, 240), "black": (20, 20, 20),
       "blue": (40, 60, 200), "brown": (120, 80, 40), "orange": (240, 140, 30), "green": (40, 160, 60),
       "pink": (240, 150, 190), "purple": (130, 50, 160), "silver": (190, 190, 200), "grey": (120, 120, 120)}


def captions(colour, thing, verb, adjective, place, sky) -> list[str]:
    """Two captions of 9-15 words each."""
    return [f"a {colour} {thing} {verb} the {adjective} {place} under a {sky} sky",
            f"there is a {colour} {thing} that {verb} the {place} today"]


def photo_jpeg(index: int, colour: str) -> bytes:
    """A 48x48 photo-like JPEG: sky and ground gradients, sensor noise, one coloured object."""
    rng = np.random.default_rng(index)
    rows = np.linspace(0, 1, 48)[:, None, None]
    sky = (1 - rows) * np.array([110, 160, 230]) + rows * np.array([200, 220, 240])
    ground = (1 - rows) * np.array([70, 120, 50]) + rows * np.array([40, 80, 30])
    pixels = np.where(np.arange(48)[:, None, None] < 28, sky, ground) + rng.normal(0, 12, (48, 48, 3))
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    x, y = 6 + 3 * index % 24, 18 + index % 10
    ImageDraw.Draw(image).ellipse((x, y, x + 16, y + 12), fill=RGB[colour])
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


CAPTIONS_YAML = """run_dir: runs/captions
data: {source: manifest, path: captions.jsonl}
model: {policy: tiny, reward: tiny}
sft: {epochs: 2, batch_size: 8, vision_warmup_epochs: 1, max_new_tokens: 16}
feedback: {n_prompts: 8, samples_per_prompt: 3}
reward: {clip_epochs: 1, epochs: 2, batch_size: 8, max_batch_size: 8}
rl: {algorithm: ppo, steps: 2, prompts_per_step: 2, samples_per_prompt: 2, rollout_workers: 1, learner_ranks: 1,
     ppo_epochs: 1, minibatch_size: 4, max_new_tokens: 16}
eval: {batch_size: 8, max_new_tokens: 16}
resources: {rollout_cpus: 0.25, learner_cpus: 0.25, reward_cpus: 0.25}
"""


@pytest.fixture
def captions_dir(tmp_path, monkeypatch):
    """tmp_path as the working folder, holding photos/, captions.jsonl and captions.yaml."""
    (tmp_path / "photos").mkdir()
    rows = []
    for i, scene in enumerate(SCENES):
        (tmp_path / "photos" / f"{i}.jpg").write_bytes(photo_jpeg(i, scene[0]))
        rows.append({"id": f"photo-{i}", "image": f"photos/{i}.jpg", "prompt": "Describe the image.",
                     "reference": captions(*scene)})
    (tmp_path / "captions.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    (tmp_path / "captions.yaml").write_text(CAPTIONS_YAML)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    return tmp_path


def _one_line_error(capsys, argv: list[str], code: int = 1) -> str:
    assert main(argv) == code
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err


@pytest.mark.timeout(1200)
def test_readme_own_data_walkthrough_on_photos(captions_dir, capsys, caplog):
    config = ["--config", "captions.yaml"]
    paths = RunPaths(captions_dir / "runs" / "captions")
    assert all(len(ref.split()) in range(9, 16) for scene in SCENES for ref in captions(*scene))
    with caplog.at_level(logging.WARNING):
        assert main(["data", *config]) == 0
        assert main(["sft", *config]) == 0

        # feedback on the SFT policy's own samples, ranked by a "person" (shortest response first)
        assert main(["feedback", "sample", *config]) == 0
        tasks = load_tasks(paths.root / "feedback" / "tasks")
        filled = captions_dir / "rankings.jsonl"
        filled.write_text("".join(json.dumps(dict(row, responses=sorted(row["responses"], key=len), annotator="ann"))
                                  + "\n" for row in tasks.rows))
        assert main(["feedback", "import", str(filled), "--kind", "ranking", *config]) == 0
        drawn = {row["prompt_id"]: set(row["responses"]) for row in tasks.rows}
        pairs = read_table(paths.pairs, PREFERENCE_SCHEMA).to_pylist()
        assert pairs and all({p["chosen"], p["rejected"]} <= drawn[p["prompt_id"]] for p in pairs)
        policy = json.loads((paths.root / "feedback" / "tasks" / "tasks.json").read_text())["policy"]
        assert (captions_dir / policy).resolve() == paths.sft_policy.resolve()  # the SFT policy drew them
        assert main(["reward", "train", *config]) == 0
        assert re.search(r"reward: held-out pairwise accuracy \d\.\d{3} on \d+ pairs", capsys.readouterr().out)

        # settings that cannot fit: one line each, naming the key, before RL starts its actors
        assert re.fullmatch(r"mmrlhf rl: rl\.prompts_per_step=50 but the feedback split holds \d prompts: set "
                            r"rl\.prompts_per_step to at most \d, or add data\n",
                            _one_line_error(capsys, ["rl", *config, "rl.prompts_per_step=50"]))
        # (a cluster too small for the actors: tests/ops/test_ray_job.py, on a real head)
        capsys.readouterr()
        assert main(["train", *config]) == 0  # data, sft, feedback, reward exist: rl, eval, the table
    out = capsys.readouterr().out
    assert "truncates" not in caplog.text  # every caption fits sft, rl and eval's max_new_tokens
    assert "| exact match (%) |" in out and "warning: these numbers rest on" in out  # a test split of a few images

    rl_steps = [json.loads(line)["step"] for line in paths.rl_metrics.read_text().splitlines()]
    assert rl_steps == [0, 1]
    tokenizer = AutoTokenizer.from_pretrained(paths.sft_policy)
    references = [ref for name in SPLITS for refs in record_references(pq.read_table(paths.split(name)))
                  for ref in refs]
    ids = [i for ref in references for i in tokenizer(ref, add_special_tokens=False)["input_ids"]]
    assert sum(i == tokenizer.unk_token_id for i in ids) / len(ids) < 0.05
    review = paths.eval_dir("rl")
    assert (review / "review.html").exists() and list((review / "images").glob("*.png"))
    assert list(tensorboard_dir(paths.root).glob("events.out.tfevents.*"))

    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert main(["eval", "--policy", "init", *config, "eval.max_new_tokens=8"]) == 0
    assert re.search(r"eval\.max_new_tokens=8 truncates 100% of the test split's references \(longest 1[0-6] "
                     r"tokens with eos\): set eval\.max_new_tokens=1[0-6]", caplog.text)
