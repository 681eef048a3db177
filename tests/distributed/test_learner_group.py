"""Learner group on a real local Ray cluster: DeepSpeed ZeRO 1/2/3 over gloo, 2 ranks, real MLP.

Reference: one process, plain `torch.optim.AdamW` on the whole batch. ZeRO changes where state
lives, not the update (Rajbhandari et al. 2020), so every stage must match it.
"""

from __future__ import annotations

import sys
import uuid

import pytest
import ray
import ray.cloudpickle
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmrlhf.learner import LearnerGroup, deepspeed_config, shard_batch
from mmrlhf.learner.worker import block_permutation
from mmrlhf.sync import SharedStateDict, WeightSync, load_state_dict_strict, state_dict_hash
from mmrlhf.weight_slots import SHM_DIR, SlotStateDict, remove_slots

# pytest imports this file as `distributed.test_...`, a name Ray workers can't import; ship the
# functions and classes defined here to the actors by value instead.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = pytest.mark.ray

LR, WEIGHT_DECAY, GRAD_CLIP = 5e-2, 0.01, 0.5
BATCH = 8  # = micro 2 x grad_accum 2 x 2 ranks
IN_DIM, HIDDEN, OUT_DIM = 6, 16, 3


def make_mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(IN_DIM, HIDDEN), nn.Tanh(), nn.Linear(HIDDEN, OUT_DIM))


def mse_loss(model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
    pred = model(batch["x"])  # (B, OUT_DIM)
    return F.mse_loss(pred, batch["y"]), {"test/pred_mean": pred.mean().detach()}


def make_batch(seed: int) -> dict[str, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {
        "x": torch.randn(BATCH, IN_DIM, generator=gen),
        "y": 3.0 * torch.randn(BATCH, OUT_DIM, generator=gen),
    }


def ds_config(stage: int) -> dict:
    cfg = deepspeed_config(
        stage, micro_batch_size=2, grad_accum=2, lr=LR, weight_decay=WEIGHT_DECAY,
        grad_clip=GRAD_CLIP,
    )
    # DeepSpeed keeps parameters under 1e5 elements whole on every rank by default; 0 makes
    # ZeRO-3 partition even this small MLP, so the gather is really exercised.
    cfg["zero_optimization"]["stage3_param_persistence_threshold"] = 0
    return cfg


def reference_step(batch: dict[str, Tensor]) -> tuple[float, dict[str, Tensor]]:
    """(loss before the step, weights after it) for one plain-torch AdamW step on the batch."""
    torch.manual_seed(0)  # LearnerGroup's default seed
    model = make_mlp()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    loss, _ = mse_loss(model, batch)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
    optimizer.step()
    return loss.item(), {k: v.detach().clone() for k, v in model.state_dict().items()}


class PolicyReplica:
    """Stand-in for a rollout worker: a model copy that loads published weights."""

    def __init__(self) -> None:
        torch.manual_seed(123)  # deliberately different from the learner's init
        self.model = make_mlp()
        self.version = 0

    def load_weights(self, version: int, state_dict: dict[str, Tensor]) -> None:
        load_state_dict_strict(self.model, state_dict)
        self.version = version

    def status(self) -> tuple[int, str]:
        return self.version, state_dict_hash(self.model.state_dict())


@pytest.fixture(scope="module")
def zero3_group(ray_cluster):
    with LearnerGroup(2, make_mlp, ds_config(3), cpus_per_rank=1) as group:
        yield group


def test_learner_group_zero_stages_agree(ray_cluster):
    batch = make_batch(seed=1)
    ref_loss, ref_weights = reference_step(batch)
    for stage in (1, 2):
        with LearnerGroup(2, make_mlp, ds_config(stage), cpus_per_rank=1) as group:
            assert [info["zero_stage"] for info in group.rank_info] == [stage, stage]
            metrics = group.train_step(batch, mse_loss)
            weights = ray.get(group.weights())
        assert metrics["learner/loss"] == pytest.approx(ref_loss, rel=1e-5), f"stage {stage}"
        assert metrics["learner/grad_norm"] > GRAD_CLIP, "clipping should be active in this test"
        for name, ref in ref_weights.items():
            msg = f"stage {stage} {name}"
            torch.testing.assert_close(weights[name], ref, rtol=1e-5, atol=1e-6, msg=msg)


def test_published_weights_stay_as_published_after_the_next_step_without_zero3(ray_cluster):
    # Without ZeRO-3 rank 0 hands the object store views of its live weights (no copy): the
    # published version must be the weights at publish time, not whatever a later step makes them.
    with LearnerGroup(2, make_mlp, ds_config(2), cpus_per_rank=1) as group:
        ref = group.weights()
        before = group.param_hash()
        group.train_step(make_batch(seed=5), mse_loss)
        assert group.param_hash() != before
        assert state_dict_hash(ray.get(ref)) == before


def test_zero3_first_step_matches_single_process_adamw(zero3_group):
    batch = make_batch(seed=1)
    ref_loss, ref_weights = reference_step(batch)
    metrics = zero3_group.train_step(batch, mse_loss)
    weights = ray.get(zero3_group.weights())
    assert metrics["learner/loss"] == pytest.approx(ref_loss, rel=1e-5)
    for name, ref in ref_weights.items():
        torch.testing.assert_close(weights[name], ref, rtol=1e-5, atol=1e-6, msg=name)


def test_rank0_gathers_full_weights_under_zero3(zero3_group):
    full_numel = sum(p.numel() for p in make_mlp().parameters())
    for info in zero3_group.rank_info:
        assert info["zero_stage"] == 3 and info["full_numel"] == full_numel
        assert info["local_numel"] < full_numel, f"rank {info['rank']} is not partitioned: {info}"
    weights = ray.get(zero3_group.weights())
    expected = make_mlp().state_dict()
    assert {k: v.shape for k, v in weights.items()} == {k: v.shape for k, v in expected.items()}
    assert all(v.device.type == "cpu" for v in weights.values())
    assert state_dict_hash(weights) == zero3_group.param_hash()


@pytest.mark.parametrize("use_slots", [False, True], ids=["object_store", "weight_slots"])
def test_weights_published_reach_every_worker(zero3_group, use_slots):
    slots = f"mmrlhf-test-{uuid.uuid4().hex[:8]}" if use_slots else None
    replicas = [ray.remote(num_cpus=0.25)(PolicyReplica).remote() for _ in range(2)]
    sync = WeightSync(rollout_workers=replicas, slots=slots)
    try:
        for version in (1, 2, 3):
            zero3_group.train_step(make_batch(seed=10 + version), mse_loss)
            metrics = sync.publish(zero3_group, version=version)
            learner_hash = zero3_group.param_hash()
            assert ray.get([r.status.remote() for r in replicas]) == [(version, learner_hash)] * 2
            assert metrics["sync/version"] == version and metrics["sync/seconds"] > 0
        published = ray.get(sync.transport.latest()[1])
        assert isinstance(published, SharedStateDict if slots is None else SlotStateDict)
        assert len(list(SHM_DIR.glob(f"{slots}-slot*"))) == (0 if slots is None else 2)
        with pytest.raises(ValueError, match="version 3 is not above"):
            sync.publish(zero3_group, version=3)
    finally:
        for replica in replicas:
            ray.kill(replica)
        if slots is not None:
            remove_slots(slots)


def predict(model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
    with torch.no_grad():
        return model(batch["x"])  # (B_rank, OUT_DIM)


def test_call_runs_a_function_on_every_rank_shard_under_zero3(zero3_group):
    batch = make_batch(seed=3)
    per_rank = zero3_group.run("call", batch, fn=predict)
    model = make_mlp()
    model.load_state_dict(ray.get(zero3_group.weights()))
    assert [p.shape for p in per_rank] == [(BATCH // 2, OUT_DIM)] * 2
    torch.testing.assert_close(torch.cat(per_rank), model(batch["x"]).detach())


def gathered_hash(engine, batch: dict[str, Tensor], bucket_bytes: int) -> str | None:
    """`state_dict_hash` of the full weights gathered in buckets of `bucket_bytes` (rank 0; None elsewhere)."""
    from mmrlhf.learner import engine as engine_module

    default, engine_module.GATHER_BUCKET_BYTES = engine_module.GATHER_BUCKET_BYTES, bucket_bytes
    try:
        full = engine_module.gather_full_state_dict(engine)
    finally:
        engine_module.GATHER_BUCKET_BYTES = default
    return state_dict_hash(full) if full else None


def test_zero3_gather_gives_the_same_weights_whatever_the_bucket_size(zero3_group):
    # 1 byte: one collective per parameter; 200 bytes: buckets of 1, 2 and 1 parameters; 1 GiB: one bucket
    hashes = {size: zero3_group.run("call", make_batch(seed=4), fn=gathered_hash, bucket_bytes=size)
              for size in (1, 200, 2**30)}
    assert {size: h[1] for size, h in hashes.items()} == dict.fromkeys(hashes)  # only rank 0 holds weights
    assert {h[0] for h in hashes.values()} == {zero3_group.param_hash()}


def inference_comm_op_state(engine, batch: dict[str, Tensor]) -> list[bool]:
    """[DeepSpeed's shm op built, its inference all-reduce registered] on this rank."""
    import deepspeed.comm.comm as ds_comm
    import torch._ops as torch_ops  # not through the module's `torch`: cloudpickle can't ship `torch.ops`

    return [ds_comm.cdb.shm_comm_op is not None, hasattr(torch_ops.ops.deepspeed, "inference_all_reduce_")]


def test_ranks_do_not_build_deepspeeds_cpu_inference_all_reduce_op(zero3_group):
    # Building it (a ninja JIT compile) cost 40-50 s of start-up on this machine; training never uses it.
    per_rank = zero3_group.run("call", make_batch(seed=4), fn=inference_comm_op_state)
    assert per_rank == [[False, False]] * 2


def failing_on_nan_loss(model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, dict]:
    if torch.isnan(batch["x"]).any():
        raise ValueError("shard holds NaN inputs")
    return mse_loss(model, batch)


@pytest.mark.timeout(120)  # the gloo timeout a hang would hit is 30 minutes
def test_error_on_one_rank_is_raised_at_once_not_after_collective_timeout(ray_cluster):
    batch = make_batch(seed=2)
    batch["x"][-1, 0] = float("nan")  # in rank 1's shard only; rank 0 waits in its all-reduce
    with LearnerGroup(2, make_mlp, ds_config(1), cpus_per_rank=1) as group:
        with pytest.raises(ValueError, match="shard holds NaN inputs"):
            group.train_step(batch, failing_on_nan_loss)


def test_shard_batch_gives_contiguous_blocks_and_names_bad_key():
    batch = {"x": torch.arange(8).reshape(4, 2), "y": torch.arange(4)}
    assert torch.equal(shard_batch(batch, 1, 2)["x"], torch.tensor([[4, 5], [6, 7]]))
    assert torch.equal(shard_batch(batch, 0, 2)["y"], torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="does not split into 3"):
        shard_batch(batch, 0, 3)
    with pytest.raises(ValueError, match="'z'"):
        shard_batch({**batch, "z": torch.zeros(5)}, 0, 2)
    with pytest.raises(TypeError, match="'mask'"):
        shard_batch({**batch, "mask": [1, 0, 1, 1]}, 0, 2)


def test_block_permutation_shuffles_whole_blocks_and_is_randperm_for_block_one():
    order = block_permutation(10, 4, torch.Generator().manual_seed(0)).tolist()
    assert sorted(order) == list(range(10))
    runs, pos = [], 0
    while pos < 10:  # walk the order block by block: each run is [4k, 4k+1, ...] up to the block's end
        start = order[pos]
        length = min(4, 10 - start)
        assert start % 4 == 0 and order[pos:pos + length] == list(range(start, start + length))
        runs.append(start)
        pos += length
    assert sorted(runs) == [0, 4, 8]
    assert torch.equal(block_permutation(7, 1, torch.Generator().manual_seed(5)),
                       torch.randperm(7, generator=torch.Generator().manual_seed(5)))
    with pytest.raises(ValueError, match="block=0"):
        block_permutation(4, 0, torch.Generator())


def test_load_state_dict_strict_names_missing_and_mismatched_keys():
    model = make_mlp()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state.pop("2.bias")
    state["0.weight"] = torch.zeros(HIDDEN + 1, IN_DIM)
    expected = r"1 missing keys \['2.bias'\].*0.weight: model \(16, 6\) vs given \(17, 6\)"
    with pytest.raises(ValueError, match=expected):
        load_state_dict_strict(model, state)


def test_deepspeed_config_rejects_unknown_zero_stage():
    with pytest.raises(ValueError, match="zero_stage=4, allowed 0, 1, 2, 3"):
        deepspeed_config(
            4, micro_batch_size=1, grad_accum=1, lr=1e-3, weight_decay=0.0, grad_clip=1.0
        )
