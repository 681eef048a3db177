"""`SharedStateDict` through a real Ray object store and `bind_state_dict` into a replica: the
worker's weights equal the learner's bit for bit, names and dtypes kept, and nothing is copied
where it need not be (the reader maps the store's bytes, the replica uses them as they are)."""

from __future__ import annotations

import pickle

import pytest
import ray
import torch
from torch import nn

from mmrlhf.sync import SharedStateDict, bind_state_dict, state_dict_hash

pytestmark = pytest.mark.ray


class Tied(nn.Module):
    """Parameters of two dtypes, a tied weight, an int64 buffer and a 0-dim buffer."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.embed = nn.Embedding(50, 8)
        self.head = nn.Linear(8, 50, bias=False)
        self.head.weight = self.embed.weight  # tied: one storage under two names
        self.proj = nn.Linear(8, 8).to(torch.bfloat16)
        self.register_buffer("positions", torch.arange(7))
        self.register_buffer("scale", torch.tensor(0.5))
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen))


def test_shared_state_dict_round_trips_through_the_object_store_mapped_not_copied(ray_cluster):
    learner = Tied(seed=1)
    shared = SharedStateDict.from_state_dict(learner.state_dict())
    assert shared["embed.weight"].data_ptr() == learner.embed.weight.data_ptr()  # built without a copy
    assert shared.nbytes == (50 * 8 * 4 + 8 * 8 * 2 + 8 * 2 + 7 * 8 + 4)  # the tied weight once

    got = ray.get(ray.put(shared))
    assert list(got) == list(learner.state_dict())
    assert {k: v.dtype for k, v in got.items()} == {k: v.dtype for k, v in learner.state_dict().items()}
    assert state_dict_hash(got) == state_dict_hash(learner.state_dict())
    assert got["embed.weight"].data_ptr() == got["head.weight"].data_ptr()  # still one storage
    assert state_dict_hash(pickle.loads(pickle.dumps(shared, protocol=5))) == state_dict_hash(shared)
    mapped = got._entries["embed.weight"][2]
    assert not mapped.flags.writeable  # a view of the store's shared memory, not a private copy


def test_bound_replica_equals_learner_exactly_and_the_next_version_leaves_the_last_untouched(ray_cluster):
    replica = Tied(seed=2)
    versions = [Tied(seed=s) for s in (3, 4)]
    refs = [ray.put(SharedStateDict.from_state_dict(m.state_dict())) for m in versions]
    for model, ref in zip(versions, refs):
        published = ray.get(ref)
        bind_state_dict(replica, published)
        assert state_dict_hash(replica.state_dict()) == state_dict_hash(model.state_dict())
        assert replica.embed.weight.data_ptr() == published["embed.weight"].data_ptr()  # used in place
        assert replica.head.weight is replica.embed.weight  # the tie survives
        assert isinstance(replica.embed.weight, nn.Parameter)
    # binding version 2 rebinds the replica's tensors; it never writes into version 1's bytes
    assert state_dict_hash(ray.get(refs[0])) == state_dict_hash(versions[0].state_dict())


def test_bind_copies_what_it_cannot_share_and_refuses_a_mismatch_changing_nothing():
    replica = Tied(seed=5).to(torch.float32)  # proj in float32 here, bfloat16 in the published weights
    published = SharedStateDict.from_state_dict(Tied(seed=6).state_dict())
    bind_state_dict(replica, published)
    assert replica.proj.weight.dtype == torch.float32
    torch.testing.assert_close(replica.proj.weight, published["proj.weight"].float(), rtol=0, atol=0)
    assert replica.proj.weight.data_ptr() != published["proj.weight"].data_ptr()

    before = state_dict_hash(replica.state_dict())
    bad = {**published, "extra": torch.zeros(1)}
    bad["proj.bias"] = torch.zeros(3)
    with pytest.raises(ValueError, match=r"bind_state_dict into Tied: 0 missing keys \[\], "
                                         r"1 unexpected keys \['extra'\], "
                                         r"1 shape mismatches \['proj.bias: model \(8,\) vs given \(3,\)'\]"):
        bind_state_dict(replica, bad)
    assert state_dict_hash(replica.state_dict()) == before
