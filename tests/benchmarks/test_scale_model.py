"""benchmarks/step_model.py, the scale model's pure part, against cases worked out by hand (no Ray)."""

from __future__ import annotations

import importlib.util
import sys

import pytest

from .conftest import BENCH

_spec = importlib.util.spec_from_file_location("step_model", BENCH / "step_model.py")
step_model = sys.modules.setdefault("step_model", importlib.util.module_from_spec(_spec))  # dataclasses look it up
_spec.loader.exec_module(step_model)
Layout, PhaseRate, Rates = step_model.Layout, step_model.PhaseRate, step_model.Rates

RATES = Rates(
    {"generate": PhaseRate(0.1, 0.01), "score": PhaseRate(0.02, 0.001), "dispatch": PhaseRate(0.03, 0.0),
     "experience": PhaseRate(0.0, 0.002), "update": PhaseRate(0.05, 0.004), "sync": PhaseRate(0.04, 0.0)},
    allreduce_latency_s=0.001, allreduce_s_per_byte=1e-9, collectives=4, grad_bytes=1e6, weight_bytes=2e6,
    remote_s_per_byte=1e-9, remote_call_s=0.01)


def test_one_process_each_on_two_free_cores_runs_uncontended_without_communication():
    # generate 0.1 + 100 x 0.01; score 0.02 + 100 x 0.001; dispatch 0.03; experience 100 x 0.002;
    # update 0.05 + 100 x 0.004; sync 0.04; nothing shares a core, no all-reduce, no remote copy
    p = step_model.predict(RATES, Layout(1, 1, 1, 1, 2.0), 100)
    expected = {"generate": 1.1, "score": 0.12, "dispatch": 0.03, "experience": 0.2, "update": 0.45, "sync": 0.04}
    assert p == pytest.approx(expected | {"step": 1.94})


def test_two_loopback_nodes_sharing_one_free_core_split_the_work_and_pay_contention_and_communication():
    # 2 nodes of 0.5 free cores, one worker and one rank per node: every phase runs at contention
    # max(1, 1 / 0.5) = 2. generate (0.1 + 50 x 0.01) x 2 = 1.2; score (0.02 + 100 x 0.001) x 2 = 0.24;
    # dispatch 0.03 x 2 = 0.06; experience 50 x 0.002 x 2 = 0.2; update (0.05 + 50 x 0.004) x 2
    # + 4 x 0.001 + 2 x 1/2 x 1e6 x 1e-9 = 0.505; sync 0.04 x 2 + 2e6 x 1e-9 = 0.082; then one call
    # across nodes per phase, + 0.01 each
    p = step_model.predict(RATES, Layout(2, 2, 1, 2, 0.5), 100)
    expected = {"generate": 1.21, "score": 0.25, "dispatch": 0.07, "experience": 0.21, "update": 0.515, "sync": 0.092}
    assert p == pytest.approx(expected | {"step": 2.347})


def test_contention_counts_processes_per_node_against_its_cores():
    assert step_model.contention(3, Layout(1, 1, 1, 2, 1.0)) == 2.0  # ceil(3 / 2) = 2 on 1 core
    assert step_model.contention(2, Layout(1, 1, 1, 2, 4.0)) == 1.0  # never faster than a core each


def test_fit_phase_takes_each_step_back_to_one_core_then_fits_a_line():
    # deflated: 4 / 2 = 2, 2 / 1 = 2, 3 / 1 = 3 at 10, 10, 20 items: 1 + 0.1 per item
    rate = step_model.fit_phase([10, 10, 20], [4.0, 2.0, 3.0], [2.0, 1.0, 1.0])
    assert (rate.fixed_s, rate.per_item_s) == pytest.approx((1.0, 0.1))
    assert step_model.fit_phase([0, 0], [1.0, 3.0], [1.0, 1.0]) == PhaseRate(2.0, 0.0)  # one size: the mean


@pytest.mark.parametrize("call, message", [
    (lambda: step_model.fit_phase([1], [1.0], [0.5]), "slowdowns must be >= 1"),
    (lambda: step_model.fit_phase([], [], []), "need equal non-empty lists"),
    (lambda: Layout(0, 1, 1, 1, 1.0), "Layout.workers must be >= 1"),
    (lambda: Layout(1, 1, 1, 1, 0.0), "Layout.cores_per_node must be > 0"),
    (lambda: step_model.predict(RATES, Layout(1, 1, 1, 1, 1.0), 0), "samples must be >= 1"),
    (lambda: Rates({"generate": PhaseRate(0, 0)}, 0, 0, 0, 0, 0, 0), "Rates.phases: expected"),
])
def test_bad_input_is_refused_naming_the_field(call, message):
    with pytest.raises(ValueError, match=message):
        call()
