"""The trial and study records: round trips, defaults, unknown keys, how a trial that raised
ends, and that no other module touches Optuna attributes (or Optuna internals) by key."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from automl.errors import ConfigError, DataError, TrialFailed, WeightsError
from automl.search import record
from automl.search.record import (
    LEGACY_SCHEMA,
    SCHEMA_VERSION,
    StudyRecord,
    TrialRecord,
    classify,
)
from automl.trial.result import TrialResult

ROOT = Path(__file__).resolve().parents[1]
FULL = TrialRecord(
    config={"backbone": "efficientnet_lite0", "image_size": 96, "head_width": 128},
    result={"val_accuracy": 0.9, "val_loss": 0.3, "epochs": 4}, history=[{"epoch": 1}],
    weights="trial_0003/model.weights.h5", stage="hyperband r1", refines=0, start="start point",
    reason="boom", state_detail="INTERRUPTED", host="gpu-1:42",
    cost={"latency_ms": 11.5, "size_mb": 14.0, "params": 3_578_282, "throughput_ips": 440.0},
    worker_memory={"pid": 7, "rss_mb": 500.0, "cache_mb": 12.5}, retry_of=0, kt_trial_id="0003",
    kt_algorithm="hyperband", kt_budget=3, kt_bracket=1, kt_round=0, kt_continues="0001")


def _study() -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(direction="maximize")


def test_a_trial_record_round_trips_through_json_attributes() -> None:
    attrs = FULL.to_attrs()
    assert attrs["schema"] == SCHEMA_VERSION
    assert set(attrs) == set(TrialRecord.keys())  # every field is set in FULL
    assert TrialRecord.from_attrs(json.loads(json.dumps(attrs))) == FULL
    assert TrialRecord.from_attrs(TrialRecord().to_attrs()) == TrialRecord()


def test_missing_fields_get_defaults_and_no_schema_means_version_1() -> None:
    old = TrialRecord.from_attrs({"stage": "screen", "config": {"head_width": 0}})
    assert old.schema == LEGACY_SCHEMA == 1
    assert (old.result, old.history, old.reason, old.host) == ({}, [], "", "")
    assert old.refines is None and old.state_detail is None and old.kt_budget is None
    assert TrialRecord.from_attrs({"result": None}).result == {}  # null: the default too
    assert StudyRecord.from_attrs({}).schema == 1 and StudyRecord.from_attrs({}).data is None


def test_unknown_keys_are_ignored_but_kept_for_the_next_writer() -> None:
    attrs = {"schema": SCHEMA_VERSION + 1, "config": {"head_width": 32}, "cost_usd": 0.02,
             "kind": "ensemble"}
    rec = TrialRecord.from_attrs(attrs)
    assert rec.config == {"head_width": 32} and rec.schema == SCHEMA_VERSION + 1
    assert rec.extra == {"cost_usd": 0.02, "kind": "ensemble"}
    assert rec.to_attrs() == attrs
    assert StudyRecord.from_attrs({"driver": "--driver optuna", "x": 1}).extra == {"x": 1}


def test_a_study_record_round_trips() -> None:
    study = _study()
    meta = {"source": "tiny.npz", "fingerprint": "abc", "seed": 0}
    record.write_study(study, schema=SCHEMA_VERSION, data=meta, class_names=["a", "b"],
                       driver="--driver optuna", artifacts="/r/trials",
                       limits={"max_latency_ms": 20.0})
    rec = StudyRecord.of(study)
    assert rec == StudyRecord(data=meta, class_names=["a", "b"], driver="--driver optuna",
                              artifacts="/r/trials", limits={"max_latency_ms": 20.0})
    assert StudyRecord.from_attrs(rec.to_attrs()) == rec
    with pytest.raises(TypeError, match="no field colour"):
        record.write_study(study, colour="red")


def test_write_sets_only_the_given_fields_as_the_trial_goes() -> None:
    study = _study()
    trial = study.ask()
    record.begin(trial)
    record.write(trial, stage="screen")
    assert trial.user_attrs == {"schema": SCHEMA_VERSION, "stage": "screen"}
    record.write(trial, history=[{"epoch": 1}], host="h:1")
    assert TrialRecord.of(trial) == TrialRecord(stage="screen", history=[{"epoch": 1}],
                                                host="h:1")
    with pytest.raises(TypeError, match="TrialRecord has no field stgae"):
        record.write(trial, stgae="screen")


def test_enqueue_and_retry_copy() -> None:
    study = _study()
    record.enqueue(study, {"x": 1}, TrialRecord(start="start point"))
    queued = study.trials[0]
    assert queued.user_attrs == {"schema": SCHEMA_VERSION, "start": "start point"}
    frozen = optuna.trial.create_trial(
        state=TrialState.FAIL, params={}, distributions={},
        user_attrs={"config": {"a": 1}, "stage": "refine", "refines": 2, "host": "dead:1",
                    "history": [{"epoch": 1}], "schema": 1})
    copy = record.retry_copy(frozen)
    assert copy.user_attrs == {"config": {"a": 1}, "stage": "refine", "refines": 2,
                               "schema": 1, "retry_of": frozen.number}
    assert frozen.user_attrs["host"] == "dead:1"  # the original is untouched


@pytest.mark.parametrize(("exc", "state", "reason", "detail", "stop"), [
    (optuna.TrialPruned("pruned at epoch 3"), TrialState.PRUNED, "", "FAIL", False),
    (KeyboardInterrupt(), TrialState.FAIL, "interrupted by the user (Ctrl-C)", "INTERRUPTED",
     True),
    (ConfigError("bad space"), TrialState.FAIL, "bad space", "FAIL", True),
    (DataError("bad data"), TrialState.FAIL, "bad data", "FAIL", True),
    (WeightsError("no weights"), TrialState.FAIL, "no weights", "FAIL", True),
    (TrialFailed("worker died"), TrialState.FAIL, "worker died", "FAIL", False),
    (MemoryError("out of memory\nat line 3"), TrialState.FAIL, "MemoryError: out of memory",
     "FAIL", False),
    (RuntimeError(), TrialState.FAIL, "RuntimeError", "FAIL", False),
])
def test_how_a_trial_that_raised_ends(exc: BaseException, state: TrialState, reason: str,
                                      detail: str, stop: bool) -> None:
    outcome = classify(exc)
    assert (outcome.state, outcome.reason, outcome.detail, outcome.stop) == (
        state, reason, detail, stop)
    assert outcome.unexpected == (type(exc) in (MemoryError, RuntimeError))


def test_classify_edge_cases() -> None:
    assert classify(SystemExit(1)) is None  # not the trial's: raised as it is
    long = classify(ValueError("x" * 400))
    assert long.reason == "ValueError: " + "x" * 300
    kt = classify(optuna.TrialPruned("p"), prunable=False)  # keras-tuner never prunes
    assert (kt.state, kt.reason, kt.unexpected) == (TrialState.FAIL, "TrialPruned: p", True)


def test_settle_fail_complete_and_left_over(tmp_path: Path) -> None:
    study = _study()
    pruned, failed, done = study.ask(), study.ask(), study.ask()
    record.settle(study, pruned, classify(optuna.TrialPruned()), [{"epoch": 1}])
    record.settle(study, failed, classify(KeyboardInterrupt()), [])
    weights = tmp_path / "trial_0002" / "model.weights.h5"
    result = TrialResult(0.8, 0.4, 0.7, 3, 1, 1.5, 1000, str(weights), "top",
                         history=[{"epoch": 1}, {"epoch": 2}])
    record.complete(study, done, result, tmp_path)
    record.enqueue(study, {}, TrialRecord())
    waiting = study.trials[3]
    record.close_left_over(study, waiting, "the process that enqueued it stopped before it ran")
    t = study.trials
    assert [x.state for x in t] == [TrialState.PRUNED, TrialState.FAIL, TrialState.COMPLETE,
                                    TrialState.FAIL]
    assert TrialRecord.of(t[0]).history == [{"epoch": 1}]
    assert (TrialRecord.of(t[1]).reason, TrialRecord.of(t[1]).state_detail) == (
        "interrupted by the user (Ctrl-C)", "INTERRUPTED")
    rec = TrialRecord.of(t[2])
    assert t[2].value == 0.8 and rec.weights == "trial_0002/model.weights.h5"
    assert "history" not in rec.result and rec.result["val_loss"] == 0.4
    assert len(rec.history) == 2
    assert TrialRecord.of(t[3]).state_detail == "INTERRUPTED"


# ------------------------------------------------------------------------ source checks

#: names through which Optuna's user and system attributes are read or written
_ATTR_NAMES = {"user_attrs", "set_user_attr", "set_trial_user_attr", "system_attrs",
               "set_system_attr", "set_trial_system_attr"}
_SYSTEM_NAMES = {"system_attrs", "set_trial_system_attr"}
#: record.py owns the attributes. heartbeat.py keeps its journal storage's own heartbeat
#: (a system attribute, ``automl:heartbeat``, not a trial record field) and drops it from a
#: retried copy; Optuna's retry lineage is read through Optuna's public static methods.
_ALLOWED = {"automl/search/record.py": _ATTR_NAMES, "automl/search/heartbeat.py": _SYSTEM_NAMES}


def _sources() -> list[Path]:
    return sorted([*(ROOT / "automl").rglob("*.py"), *(ROOT / "benchmarks").rglob("*.py")])


def _names_used(tree: ast.AST) -> list[tuple[int, str]]:
    """Attribute names, keyword names and string constants of ``tree`` with their lines."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            found.append((node.lineno, node.attr))
        elif isinstance(node, ast.keyword) and node.arg is not None:
            found.append((node.value.lineno, node.arg))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            found.append((node.lineno, node.value))
    return found


def test_only_the_record_module_touches_optuna_attributes() -> None:
    """No module but record.py reads or writes user (or system) attributes by name: no
    ``.user_attrs``, ``set_user_attr(``, ``user_attrs=`` or ``getattr(x, "user_attrs")``."""
    offenders = []
    for path in _sources():
        rel = path.relative_to(ROOT).as_posix()
        allowed = _ALLOWED.get(rel, set())
        for line, name in _names_used(ast.parse(path.read_text(), rel)):
            if name in _ATTR_NAMES and name not in allowed:
                offenders.append(f"{rel}:{line}: {name}")
    assert offenders == []


def test_optuna_internals_are_used_only_in_optuna_private() -> None:
    """``study._storage``, ``trial._trial_id`` and ``optuna.storages._heartbeat`` go through
    automl/search/optuna_private.py only."""
    offenders = []
    for path in _sources():
        rel = path.relative_to(ROOT).as_posix()
        if rel == "automl/search/optuna_private.py":
            continue
        tree = ast.parse(path.read_text(), rel)
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in ("_storage", "_trial_id"):
                offenders.append(f"{rel}:{node.lineno}: .{node.attr}")
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("optuna") \
                    and any(part.startswith("_") for part in (node.module or "").split(".")):
                offenders.append(f"{rel}:{node.lineno}: from {node.module}")
    assert offenders == []
