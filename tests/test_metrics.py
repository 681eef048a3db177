"""Run reporting without Ray: JSONL, TensorBoard events, the RL plot, stage times, reward latency."""

import json
import math

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mmrlhf.metrics import (RLMetricsLogger, StageTimer, log_to_tensorboard, record_reward_latency, rl_plot_path,
                            tensorboard_dir)


def _scalars(run_dir):
    events = EventAccumulator(str(tensorboard_dir(run_dir)))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def _step(step, reward, kl, gold=None):
    metrics = {"rollout/reward": reward, "rollout/kl": kl, "rollout/response_tokens": 4.0,
               "rollout/samples_per_s": 2.5, "sync/seconds": 0.1, "sync/version": float(step + 1),
               "time/step_seconds": 1.0, "step": step}
    return metrics | ({"rollout/gold": gold} if gold is not None else {})


def test_rl_logger_writes_jsonl_tensorboard_and_plot_with_tokens_per_second(tmp_path):
    logger = RLMetricsLogger(tmp_path, steps=2)
    logger.log(0, _step(0, reward=1.0, kl=0.0, gold=0.5))
    logger.log(1, _step(1, reward=2.0, kl=0.1, gold=0.4))
    logger.close()

    lines = [json.loads(x) for x in (tmp_path / "rl" / "metrics.jsonl").read_text().splitlines()]
    assert [m["rollout/reward"] for m in lines] == [1.0, 2.0]
    assert lines[0]["rollout/tokens_per_s"] == 4.0 * 2.5  # mean response tokens x samples per second
    scalars = _scalars(tmp_path)
    assert scalars["rollout/reward"] == [(0, 1.0), (1, 2.0)]
    assert scalars["rollout/gold"][1] == (1, pytest.approx(0.4))
    assert rl_plot_path(tmp_path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_rl_plot_covers_every_step_in_the_log_including_an_earlier_process(tmp_path):
    first = RLMetricsLogger(tmp_path, steps=3)
    first.log(0, _step(0, reward=1.0, kl=0.0))
    first.close()
    resumed = RLMetricsLogger(tmp_path, steps=3, start_step=1)
    resumed.log(1, _step(1, reward=1.5, kl=0.2))
    resumed.close()
    assert [json.loads(x)["step"] for x in (tmp_path / "rl" / "metrics.jsonl").read_text().splitlines()] == [0, 1]
    assert rl_plot_path(tmp_path).exists()


def test_rl_logger_without_steps_writes_no_plot(tmp_path):
    RLMetricsLogger(tmp_path, steps=2).close()
    assert not rl_plot_path(tmp_path).exists()


def test_stage_timer_records_finished_stages_only(tmp_path):
    timer = StageTimer(tmp_path)
    with timer("sft"):
        pass
    with pytest.raises(RuntimeError):
        with timer("rl"):
            raise RuntimeError("stage failed")
    timer.close()
    records = [json.loads(x) for x in (tmp_path / "stages.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in records] == ["sft"]
    assert records[0]["seconds"] >= 0
    assert "stage_seconds/sft" in _scalars(tmp_path) and "stage_seconds/rl" not in _scalars(tmp_path)


def test_reward_latency_wrapper_returns_the_result_and_passes_errors_on():
    score = record_reward_latency(lambda images, texts: [float(len(t)) for t in texts])
    assert score([None, None], ["ab", "c"]) == [2.0, 1.0]

    def failing(images, texts):
        raise ConnectionError("replica gone")

    with pytest.raises(ConnectionError, match="replica gone"):
        record_reward_latency(failing)([], [])


def test_step_whose_scores_were_all_nan_is_logged_without_error(tmp_path):
    logger = RLMetricsLogger(tmp_path, steps=1)
    logger.log(0, _step(0, reward=math.nan, kl=0.0))  # a step whose every score was NaN
    logger.close()
    assert math.isnan(json.loads((tmp_path / "rl" / "metrics.jsonl").read_text())["rollout/reward"])


def test_stage_scalars_by_step_and_texts_reach_tensorboard(tmp_path):
    sft_epochs = [{"train_loss": 2.0, "val_loss": 2.5}, {"train_loss": 1.0, "val_loss": 1.5}]
    log_to_tensorboard(tmp_path, sft_epochs, prefix="sft/")
    log_to_tensorboard(tmp_path, [{"reward/val_accuracy": 0.75, "reward/val_pairs": 12, "note": "skipped"}],
                       {"eval/sft/samples": "| id | response |"})
    scalars = _scalars(tmp_path)
    assert scalars["sft/val_loss"] == [(0, 2.5), (1, 1.5)] and scalars["sft/train_loss"][1] == (1, 1.0)
    assert scalars["reward/val_accuracy"] == [(0, 0.75)] and scalars["reward/val_pairs"] == [(0, 12.0)]
    assert "note" not in scalars
    events = EventAccumulator(str(tensorboard_dir(tmp_path)))
    events.Reload()
    assert events.Tensors("eval/sft/samples/text_summary")[0].tensor_proto.string_val == [b"| id | response |"]
