"""`init_ray` joins `RAY_ADDRESS` when set and refuses sizing arguments it couldn't honour."""

from __future__ import annotations

import pytest

from mmrlhf.cluster import init_ray


def test_init_ray_refuses_cluster_sizing_when_joining_ray_address(monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    with pytest.raises(ValueError, match="RAY_ADDRESS='10.0.0.1:6379' is set"):
        init_ray(num_cpus=4)
