"""A trial's cost from its architecture's measured parts, the limits, the Pareto front."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from automl.errors import ConfigError
from automl.search.cost import Limits, check_limits, combine, known_cost
from automl.search.leaderboard import COLUMNS, mark_pareto

ENTRY = {"backbone": {"latency_ms": 10.0, "throughput_ips": 300.0, "params": 3_425_834,
                      "tflite_bytes": 13_418_208},
         "features": 1280, "heads": {"0": {"params": 0, "latency_ms": 0.0},
                                     "128": {"params": 152_448, "latency_ms": 0.05}}}


def test_a_trial_cost_adds_the_hidden_head_layer_to_the_backbone_graph() -> None:
    linear, wide = combine(ENTRY, 0), combine(ENTRY, 128)
    assert linear == {"latency_ms": 10.0, "size_mb": 13.418, "params": 3_425_834,
                      "throughput_ips": 300.0}
    assert wide["params"] == 3_425_834 + 152_448
    assert wide["size_mb"] == pytest.approx((13_418_208 + 4 * 152_448) / 1e6, abs=1e-3)
    assert wide["latency_ms"] == pytest.approx(10.05)


def test_a_cost_measured_after_the_trial_is_read_back_from_the_study_measurements() -> None:
    measured = {"efficientnet_lite0@96": ENTRY}
    config = {"backbone": "efficientnet_lite0", "image_size": 96, "head_width": 128}
    assert known_cost(measured, config) == combine(ENTRY, 128)
    assert known_cost(measured, {**config, "head_width": 512}) is None  # width not measured
    assert known_cost(measured, {**config, "image_size": 64}) is None
    assert known_cost({}, config) is None and known_cost(measured, {}) is None


def test_limits_give_optuna_constraints_and_say_what_is_over() -> None:
    cost = {"latency_ms": 12.5, "size_mb": 14.0}
    limits = Limits(max_latency_ms=10.0, max_size_mb=20.0)
    assert limits.constraints(cost) == {"latency_ms": 2.5, "size_mb": -6.0}
    assert limits.violations(cost) == "latency 12.50 ms > --max-latency-ms 10"
    assert Limits(max_size_mb=20.0).violations(cost) == ""
    assert Limits().constraints(cost) == {} and not Limits().any
    assert limits.describe() == "--max-latency-ms 10 --max-size-mb 20"


@pytest.mark.parametrize(("limits", "flag"), [(Limits(max_latency_ms=0.0), "--max-latency-ms 0"),
                                               (Limits(max_size_mb=-3.0), "--max-size-mb -3")])
def test_limits_no_model_can_meet_are_refused(limits: Limits, flag: str) -> None:
    with pytest.raises(ConfigError, match=f"^{flag}: expected a positive number"):
        check_limits(limits)


def test_the_pareto_front_is_the_finished_trials_nothing_beats_on_both() -> None:
    rows = [(0, "COMPLETE", 0.95, 10.0), (1, "COMPLETE", 0.97, 20.0), (2, "COMPLETE", 0.94, 15.0),
            (3, "COMPLETE", 0.97, 25.0), (4, "PRUNED", 0.99, 5.0), (5, "COMPLETE", 0.90, 8.0),
            (6, "INFEASIBLE", math.nan, 3.0)]
    frame = pd.DataFrame([{**dict.fromkeys(COLUMNS), "trial": t, "state": s,
                           "val_accuracy": a, "latency_ms": lat} for t, s, a, lat in rows],
                         columns=COLUMNS)
    front = mark_pareto(frame).set_index("trial")["pareto"]
    # 2 is beaten by 0 (more accurate, faster); 3 by 1 (as accurate, faster); pruned trials and
    # unmeasured ones are never on it
    assert front.to_dict() == {0: True, 1: True, 2: False, 3: False, 4: False, 5: True, 6: False}
