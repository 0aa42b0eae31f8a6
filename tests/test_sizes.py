"""Float32 .tflite sizes converted in a background process, and head costs shared by sizes."""

from __future__ import annotations

import os
import time
from pathlib import Path

import optuna
import pytest

from automl.backbones.weights import WeightsResolver
from automl.config import RunConfig, TrialConfig
from automl.data.load import load_data
from automl.search import record
from automl.search.cost import known_cost, measuring_seconds, trial_cost
from automl.search.sizes import BackgroundSizes, fill, missing, unsized
from automl.trial import size_store
from automl.trial.features import FeatureCache
from automl.trial.run import InProcessRunner, SearchContext


@pytest.fixture()
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A machine that has converted nothing yet."""
    monkeypatch.setenv("AUTOML_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def _state(pid: int) -> str:
    """A process's state letter (T: stopped)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def _config(size: int, width: int) -> TrialConfig:
    return TrialConfig("efficientnet_lite0", size, 1.0, width, 0.0, 1e-3, "none")


def test_sizes_arrive_from_a_niced_background_process_while_latency_is_measured(
        home: Path, tiny_npz: Path, tmp_path: Path) -> None:
    """A search without limits: the worker measures latency and looks the size up (blank until
    converted); the background process converts at nice 19, the leaderboard's cost is filled
    in, and the end of the search waits for it (counted as measuring time)."""
    data = load_data(str(tiny_npz))
    n = len(data.class_names)
    assert missing(["efficientnet_lite0"], n) == ["efficientnet_lite0"]
    study = optuna.create_study(direction="maximize")
    sizes = BackgroundSizes.start(["efficientnet_lite0"], 32, n)
    assert sizes is not None and sizes._proc is None  # begun when the first trial has ended
    sizes.begin()
    deadline = time.monotonic() + 30
    while os.getpriority(os.PRIO_PROCESS, sizes._proc.pid) != 19:  # set as the child starts
        assert time.monotonic() < deadline and sizes._proc.is_alive()
        time.sleep(0.05)

    runner = InProcessRunner(SearchContext(data, RunConfig(), WeightsResolver(),
                                           FeatureCache(None, 1 << 26), tmp_path / "trials"))
    with sizes.paused():  # as the driver measures a latency: the converter stops meanwhile
        assert _state(sizes._proc.pid) == "T"
        cost = trial_cost(study, runner, _config(32, 16), convert=False)
    assert _state(sizes._proc.pid) != "T"
    assert cost["latency_ms"] > 0 and cost["size_mb"] is None  # not converted yet
    notes: list[str] = []
    waited = sizes.finish(study, notes.append)
    assert notes == ["waiting for the float32 .tflite size of efficientnet_lite0 (converted in "
                     "the background; at most 600 s)"]
    nbytes = size_store.known_bytes("efficientnet_lite0", n)
    assert sizes.converted == {"efficientnet_lite0": nbytes}  # also sent, not only stored
    entry = record.measured_costs(study)["efficientnet_lite0@32"]
    assert entry["backbone"]["tflite_bytes"] == nbytes
    # float32 weights, BatchNormalization folded into the convolutions: a little under 4 B each
    assert 3.5 * entry["backbone"]["params"] < nbytes < 4.1 * entry["backbone"]["params"]
    filled = known_cost(record.measured_costs(study), _config(32, 16).as_dict())
    assert filled["size_mb"] == pytest.approx((nbytes + 4 * entry["heads"]["16"]["params"]) / 1e6,
                                              abs=1e-3)
    seconds = record.StudyRecord.of(study).size_seconds
    assert seconds["wait"] == pytest.approx(waited) and seconds["cpu"] > 1.0
    assert measuring_seconds(study) == pytest.approx(waited + entry["seconds"])
    assert not sizes._proc.is_alive()
    # converted once per machine: the next search starts nothing
    assert BackgroundSizes.start(["efficientnet_lite0"], 32, n) is None

    # a head width measured at one image size is the same at another: only the backbone part
    # of Lite0 at 48 px is measured, and the size is known now
    other = trial_cost(study, runner, _config(48, 16), convert=False)
    again = record.measured_costs(study)["efficientnet_lite0@48"]
    assert again["heads"]["16"] == entry["heads"]["16"]
    assert other["size_mb"] == filled["size_mb"] and other["latency_ms"] > 0


def test_fill_leaves_unconverted_sizes_blank_and_fills_converted_ones(home: Path) -> None:
    study = optuna.create_study()
    part = {"latency_ms": 5.0, "throughput_ips": 100.0, "params": 1000, "tflite_bytes": None}
    heads = {"0": {"params": 0, "latency_ms": 0.0}}
    record.write_cost(study, "efficientnet_lite1@64", {"backbone": part, "features": 1280,
                                                       "heads": heads, "seconds": 1.0})
    record.write_cost(study, "efficientnet_lite2@64", {"backbone": part, "features": 1408,
                                                       "heads": heads, "seconds": 1.0})
    size_store.remember("efficientnet_lite1", 3, 4_000_000)
    fill(study, 3)
    measured = record.measured_costs(study)
    assert measured["efficientnet_lite1@64"]["backbone"]["tflite_bytes"] == 4_000_000
    assert measured["efficientnet_lite2@64"]["backbone"]["tflite_bytes"] is None
    config = {"backbone": "efficientnet_lite2", "image_size": 64, "head_width": 0}
    assert known_cost(measured, config)["size_mb"] is None
    fill(study, 4)  # another number of classes: another file
    assert record.measured_costs(study)["efficientnet_lite2@64"]["backbone"][
        "tflite_bytes"] is None


def test_a_search_does_not_wait_for_backbones_its_trials_did_not_use(home: Path) -> None:
    study = optuna.create_study()
    sizes = BackgroundSizes.start(["efficientnet_lite0", "efficientnet_lite2"], 32, 3)
    notes: list[str] = []
    assert sizes.finish(study, notes.append) == 0.0 and notes == []
    assert sizes._proc is None  # no trial used a backbone: never begun
    assert record.StudyRecord.of(study).size_seconds == {"wait": 0.0, "cpu": 0.0}


def test_sizes_sent_by_the_process_fill_the_study_when_the_store_cannot_be_written(
        home: Path) -> None:
    study = optuna.create_study()
    part = {"latency_ms": 5.0, "throughput_ips": 100.0, "params": 1000, "tflite_bytes": None}
    record.write_cost(study, "efficientnet_lite1@64", {"backbone": part, "features": 1280,
                                                       "heads": {}, "seconds": 1.0})
    assert unsized(study, 3) == ["efficientnet_lite1"]
    converted = {"efficientnet_lite1": 4_000_000}
    assert unsized(study, 3, converted) == []
    fill(study, 3, converted)
    assert record.measured_costs(study)["efficientnet_lite1@64"]["backbone"][
        "tflite_bytes"] == 4_000_000
    assert size_store.known_bytes("efficientnet_lite1", 3) is None  # nothing was stored


def _remember_many(home: str, first: int) -> None:
    os.environ["AUTOML_HOME"] = home
    for i in range(first, first + 60):
        size_store.remember(f"backbone{i}", 3, i)


def test_two_processes_keeping_sizes_at_once_lose_none(home: Path) -> None:
    """Two search workers on one machine convert at once: the store's read-modify-write is
    locked, so neither overwrites what the other kept."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    procs = [context.Process(target=_remember_many, args=(str(home), first))
             for first in (0, 1000)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=60)
        assert proc.exitcode == 0
    for i in [*range(60), *range(1000, 1060)]:
        assert size_store.known_bytes(f"backbone{i}", 3) == i
