"""Trials in a worker process: same results as in-process, pruning, a dying worker, recycling."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import optuna
import pytest
from helpers import csv_rows, image_folder, run_cli_process

from automl.backbones.weights import WeightsResolver
from automl.config import RunConfig, TrialConfig
from automl.data.load import load_data
from automl.errors import TrialFailed
from automl.search.worker import TrialWorker
from automl.trial.features import FeatureCache
from automl.trial.run import SearchContext, run_trial
from automl.trial.trainlog import TrainLog

CONFIG = TrialConfig("efficientnet_lite0", 32, 1.0, 32, 0.1, 3e-3, "none")
RUN = RunConfig(epochs=4, fine_tune_epochs=0, batch_size=64, patience=10)


def _ctx(tiny_npz: Path, tmp: Path) -> SearchContext:
    data = load_data(str(tiny_npz))
    return SearchContext(data, RUN, WeightsResolver(), FeatureCache(tmp / "features", 1 << 28),
                         tmp / "trials")


@pytest.fixture()
def worker(tiny_npz: Path, tmp_path: Path):  # noqa: ANN201 - a TrialWorker
    w = TrialWorker.for_context(_ctx(tiny_npz, tmp_path))
    yield w
    w.stop()


@pytest.mark.slow
def test_a_trial_in_the_worker_equals_the_same_trial_in_process(tiny_npz: Path, tmp_path: Path,
                                                                worker: TrialWorker) -> None:
    here = run_trial(CONFIG, _ctx(tiny_npz, tmp_path / "here"), 3)
    log = TrainLog()
    there = worker.run(CONFIG, RUN, 3, None, log, None)
    assert worker.pid is not None and worker.pid != os.getpid()
    assert (there.val_accuracy, there.val_loss, there.test_accuracy, there.epochs) == (
        here.val_accuracy, here.val_loss, here.test_accuracy, here.epochs)
    assert [r["val_loss"] for r in there.history] == [r["val_loss"] for r in here.history]
    assert log.epochs == there.history and log.seconds > 0
    assert log.heavy  # it extracted the activations: the backbone ran over the images
    assert Path(there.weights_file).is_file() and here.val_accuracy > 0.2  # above chance (0.1)
    assert worker.memory is not None and worker.memory.rss_mb > worker.memory.cache_mb > 0


def test_a_worker_started_early_runs_trials_once_configured(tiny_npz: Path,
                                                            tmp_path: Path) -> None:
    """The search starts its worker before loading the data (TensorFlow's import overlaps it);
    the context follows with the first trial, and the same process runs the trials. One
    stopped before it was ready (no trial to run, or the search failed) is killed at once."""
    import time

    unused = TrialWorker.start_early()
    proc = unused._proc
    start = time.monotonic()
    unused.stop()
    assert not proc.is_alive() and proc.exitcode == -signal.SIGKILL
    assert time.monotonic() - start < 5  # not waited for through its TensorFlow import

    early = TrialWorker.start_early()
    try:
        pid = early._proc.pid
        early.configure(_ctx(tiny_npz, tmp_path))
        result = early.run(CONFIG, RUN, 1, None, TrainLog(), None)
        assert early.last_pid == pid  # (then replaced: the trial extracted, a heavy one)
        assert result.val_accuracy > 0.2  # 10 classes: chance is 0.1
    finally:
        early.stop()


_CTRL_C_AT_START = """
import os, signal, sys, time
from automl.search.worker import TrialWorker, sigint_deferred

held = False
try:
    with sigint_deferred():
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.2)  # delivered here, it would raise here, before the flag
        held = True
except KeyboardInterrupt:
    print("raised after the start" if held else "raised inside")
print("handler restored", signal.getsignal(signal.SIGINT) is signal.default_int_handler)
print("unblocked", signal.SIGINT not in signal.pthread_sigmask(signal.SIG_BLOCK, []))
# this process's first spawn also launches multiprocessing's resource tracker, which unblocks
# SIGINT while it starts: the worker must inherit it blocked all the same
early = TrialWorker.start_early()
os.kill(early._proc.pid, signal.SIGINT)  # mid-start: blocked, then ignored
time.sleep(1.0)
print("worker alive", early._proc.is_alive())
early.stop()
"""


def test_ctrl_c_while_a_worker_starts_is_delivered_after_the_start_not_lost() -> None:
    """Starting a worker writes its setup down a pipe (seconds on a busy machine): a Ctrl-C
    meanwhile stops the search right after, and the starting worker never sees it. (In a fresh
    process: a real main thread with Python's own SIGINT handler, no resource tracker yet.)"""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, "-c", _CTRL_C_AT_START], capture_output=True,
                         text=True, timeout=120, env=env,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert out.stdout.splitlines() == ["raised after the start", "handler restored True",
                                       "unblocked True", "worker alive True"], out.stderr


@pytest.mark.slow
def test_pruning_stops_the_trial_and_the_same_worker_runs_the_next(worker: TrialWorker) -> None:
    seen: list[int] = []

    def prune_at_two(epoch: int, row: dict[str, float]) -> None:
        seen.append(epoch)
        if epoch == 2:
            raise optuna.TrialPruned("pruned at epoch 2")

    worker.run(CONFIG, replace(RUN, epochs=1), 0, None, TrainLog(), None)  # extracts
    log = TrainLog()
    with pytest.raises(optuna.TrialPruned):
        worker.run(CONFIG, RUN, 1, prune_at_two, log, None)  # on the cached activations
    pid = worker.pid
    assert seen == [1, 2] and [r["epoch"] for r in log.epochs] == [1, 2]
    result = worker.run(CONFIG, RUN, 2, None, TrainLog(), None)
    assert worker.pid == pid and result.epochs == RUN.epochs


@pytest.mark.slow
def test_a_killed_worker_fails_only_its_trial(worker: TrialWorker) -> None:
    def kill_worker(epoch: int, row: dict[str, float]) -> None:
        os.kill(worker.pid, signal.SIGKILL)

    log = TrainLog()
    with pytest.raises(TrialFailed) as err:
        worker.run(CONFIG, RUN, 7, kill_worker, log, None)
    assert str(err.value) == ("the trial worker process running trial 7 was killed by SIGKILL "
                              "(out of memory? the system kills the largest process)")
    assert len(log.epochs) == 1  # what it trained before it died is kept
    dead = worker.last_pid
    assert worker.run(CONFIG, RUN, 8, None, TrainLog(), None).epochs == RUN.epochs
    assert worker.last_pid not in (None, dead)  # a new worker ran it


@pytest.mark.slow
def test_a_failing_trial_comes_back_with_its_reason_and_epochs(worker: TrialWorker) -> None:
    log = TrainLog()
    with pytest.raises(TrialFailed, match=r"^the loss became NaN or infinite at epoch 1 \(phase "
                                          r"1\); try a lower learning rate$"):
        worker.run(replace(CONFIG, learning_rate=1e30), RUN, 2, None, log, None)
    assert worker.pid is not None  # a failed trial does not cost the worker


@pytest.mark.slow
def test_worker_is_replaced_after_running_the_backbone_or_once_its_memory_grew(
        worker: TrialWorker) -> None:
    short = replace(RUN, epochs=1)
    worker.run(CONFIG, short, 0, None, TrainLog(), None)
    extracted = worker.last_pid
    # it ran the backbone and no light trial has set the floor yet: replaced, when the next
    # trial starts (a cost measurement may use it first)
    assert worker.started == 1 and worker.pid == extracted
    worker.run(CONFIG, short, 1, None, TrainLog(), None)  # activations from disk: light
    first = worker.pid
    assert first not in (None, extracted) and worker.last_pid == first
    assert worker.started == 2 and worker.floor_mb is not None
    worker.run(CONFIG, short, 2, None, TrainLog(), None)
    assert worker.pid == first and worker.started == 2  # one more trial is not 200 MB more
    worker.max_growth_mb = float("-inf")  # every trial is "too much": replaced after it
    worker.run(CONFIG, short, 3, None, TrainLog(), None)
    assert worker.last_pid == first and worker.started == 2
    assert worker.run(CONFIG, short, 4, None, TrainLog(), None).epochs == 1
    assert worker.last_pid not in (None, first) and worker.started == 3


@pytest.mark.slow
def test_the_search_process_never_imports_tensorflow(tiny_npz: Path, tmp_path: Path) -> None:
    import subprocess
    import sys
    import textwrap

    space = tmp_path / "space.yaml"
    space.write_text("backbone: efficientnet_lite0\nimage_size: 32\nfreeze_depth: 1.0\n"
                     "head_width: 0\ndropout: 0.0\nlearning_rate: 3.0e-3\naugmentation: none\n")
    code = textwrap.dedent(f"""
        import sys
        from automl.cli import main
        code = main(["search", "--space", {str(space)!r}, "--data", {str(tiny_npz)!r},
                     "--results", {str(tmp_path / "results")!r}, "--trials", "2",
                     "--epochs", "2", "--quiet"])
        print("exit", code, "tensorflow imported:", "tensorflow" in sys.modules)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=600)
    assert out.stdout.splitlines()[-1] == "exit 0 tensorflow imported: False", out.stderr[-2000:]
    board = csv_rows(tmp_path / "results" / "default" / "leaderboard.csv")
    assert [row["state"] for row in board] == ["COMPLETE"] * 2


@pytest.mark.slow
def test_a_folder_search_leaves_no_decoded_images_behind(tiny_npz: Path, tmp_path: Path) -> None:
    """The worker decodes the folder into a temporary cache; the search process removes it."""
    import numpy as np

    arrays = np.load(tiny_npz)
    folder = image_folder(tmp_path / "animals", {
        str(name): arrays["x_train"][arrays["y_train"] == label]
        for label, name in enumerate(arrays["class_names"])})
    space = tmp_path / "space.yaml"
    space.write_text("backbone: efficientnet_lite0\nimage_size: 32\nfreeze_depth: 1.0\n"
                     "head_width: 0\ndropout: 0.0\nlearning_rate: 3.0e-3\n"
                     "augmentation: none\n")
    temp = tmp_path / "tmp"
    temp.mkdir()
    out = run_cli_process("search", "--space", space, "--data", folder, "--results",
                          tmp_path / "results", "--trials", "2", "--epochs", "1", "--quiet",
                          env={"TMPDIR": str(temp)})
    assert "oneDNN" not in out.stderr and "cuInit" not in out.stderr
    assert not list(temp.glob("automl-images-*"))


@pytest.mark.parametrize(("trials", "replaced_after"), [
    # (MB outside the caches, heavy) per trial: heavy first, then light ones set the floor
    ([(1400, True), (880, False), (900, False), (1450, True)], [0, 3]),
    # never a light trial (no feature cache): the first heavy one sets a heavy floor
    ([(1400, True), (1410, True), (1420, True), (1700, True)], [0, 3]),
    # light trials only: replaced once 200 MB above the lightest
    ([(880, False), (900, False), (1070, False), (1100, False)], [3]),
])
def test_when_the_worker_is_replaced(trials: list[tuple[float, bool]],
                                     replaced_after: list[int]) -> None:
    from automl.trial.messages import Memory, TrialEnd

    worker = TrialWorker(None)  # the policy alone: no process is started
    done: list[int] = []
    replaced: list[int] = []
    for number, (outside, heavy) in enumerate(trials):
        done.append(number)
        log = TrainLog()
        worker._finish(TrialEnd([], 1, 1.0, Memory(outside + 50, 50), heavy), log)
        assert log.heavy is heavy
        if worker._replace:  # due for replacement: a new process when the next trial starts
            replaced.append(number)
            worker._replace = False
    assert replaced == replaced_after
