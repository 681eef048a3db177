"""Weight slots (`mmrlhf.weight_slots`): a write reaches a reader bit for bit as views of shared
memory, the writer never overwrites a slot a reader still uses (it falls back instead), a reader
never takes bytes that changed under it, and bad use fails with a message that names the slot."""

from __future__ import annotations

import pickle
import uuid

import pytest
import ray
import torch

from mmrlhf.sync import SharedStateDict, WeightPublisher, bind_state_dict, state_dict_hash
from mmrlhf.weight_slots import SHM_DIR, SlotStateDict, SlotWeights, WeightSlots, same_machine
from tests.distributed.test_weight_sync import Tied


@pytest.fixture
def slots():
    writer = WeightSlots(f"mmrlhf-test-{uuid.uuid4().hex[:8]}")
    yield writer
    writer.close()


def read(written: SlotWeights) -> SlotStateDict:
    """What a reader in another process gets: the writer's result pickled and unpickled."""
    return pickle.loads(pickle.dumps(written))


def versions(n: int) -> list[dict[str, torch.Tensor]]:
    return [Tied(seed=10 + i).state_dict() for i in range(n)]


def test_a_read_equals_the_write_as_read_only_views_and_crosses_as_a_few_hundred_bytes(slots):
    weights = versions(1)[0]
    written = slots.write(weights)
    assert len(pickle.dumps(written)) < 2_000
    got = read(written)
    assert isinstance(got, SlotStateDict) and list(got) == list(weights)
    assert {k: v.dtype for k, v in got.items()} == {k: v.dtype for k, v in weights.items()}
    assert state_dict_hash(got) == state_dict_hash(weights)
    assert got["embed.weight"].data_ptr() == got["head.weight"].data_ptr()  # the tied weight once
    assert got["scale"].shape == () and got["positions"].dtype == torch.int64


def test_writes_alternate_slots_and_a_slot_in_use_is_never_overwritten(slots):
    v1, v2, v3 = versions(3)
    replica = Tied(seed=99)
    first = slots.write(v1)
    bind_state_dict(replica, read(first))  # the replica's parameters now are slot 0's bytes
    second = slots.write(v2)
    assert (first.path, second.path) == tuple(str(p) for p in slots.paths)
    held = read(second)  # a second reader holds slot 1 while the replica still holds slot 0
    assert slots.write(v3) is None  # slot 0 is in use: the caller publishes through the object store
    assert state_dict_hash(replica.state_dict()) == state_dict_hash(v1)

    bind_state_dict(replica, held)  # the replica moves on: nothing uses slot 0 any more
    third = slots.write(v3)
    assert third is not None and third.path == first.path
    assert state_dict_hash(read(third)) == state_dict_hash(v3)
    assert state_dict_hash(replica.state_dict()) == state_dict_hash(v2)  # slot 1 left as it was


def test_a_reader_refuses_a_slot_overwritten_before_it_locked_it(slots):
    v1, v2, v3 = versions(3)
    late = pickle.dumps(slots.write(v1))  # in flight while two more versions are written
    slots.write(v2)
    slots.write(v3)
    with pytest.raises(RuntimeError, match=r"-slot0 holds write 3, not write 1: the writer overwrote it"):
        pickle.loads(late)
    assert slots.write(versions(4)[3]) is not None  # the refused read left no lease behind


def test_bad_uses_name_the_slot_and_what_was_expected(slots):
    weights = versions(1)[0]
    written = slots.write(weights)
    elsewhere = SlotWeights(written.path, written.sequence, "another-machine", written.layout)
    with pytest.raises(ValueError, match=r"written on machine another-machine .* only reach readers on the writer's"):
        read(elsewhere)
    with pytest.raises(ValueError, match=r"differ from the first write's layout .*'extra'"):
        slots.write({**weights, "extra": torch.zeros(2)})
    with pytest.raises(FileExistsError):
        WeightSlots(slots.prefix).write(weights)  # another writer under the same name
    slots.close()
    assert not list(SHM_DIR.glob(f"{slots.prefix}-*"))
    gone = SlotWeights(written.path.replace("slot0", "slot1"), 1, written.machine, written.layout)
    with pytest.raises(FileNotFoundError, match=r"weight slot .*-slot1 does not exist"):
        read(gone)


def test_the_publisher_falls_back_to_the_object_store_form_while_both_slots_are_in_use():
    publisher, prefix = WeightPublisher(), f"mmrlhf-test-{uuid.uuid4().hex[:8]}"
    v1, v2, v3 = versions(3)
    assert isinstance(publisher.shareable(v1), SharedStateDict)  # no slots named
    held = [read(publisher.shareable(v, prefix)) for v in (v1, v2)]
    fallback = publisher.shareable(v3, prefix)
    assert isinstance(fallback, SharedStateDict) and state_dict_hash(fallback) == state_dict_hash(v3)
    assert [state_dict_hash(h) for h in held] == [state_dict_hash(v1), state_dict_hash(v2)]
    del held
    assert isinstance(publisher.shareable(v3, prefix), SlotWeights)
    publisher.close()
    assert not list(SHM_DIR.glob(f"{prefix}-*"))


@pytest.mark.ray
def test_actors_of_one_machine_are_on_the_same_machine(ray_cluster):
    actors = [ray.remote(num_cpus=0)(Tied).remote(seed) for seed in (1, 2)]
    try:
        assert same_machine(actors)
        assert not same_machine([])
    finally:
        for actor in actors:
            ray.kill(actor)
