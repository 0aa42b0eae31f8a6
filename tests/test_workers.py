"""Several `automl search` workers on one study through a real PostgreSQL server (and a journal).

Each worker is its own process with its own --results folder (as on separate machines); they
share the storage and the --artifacts folder. Heartbeats are 1 s with a 4 s grace period so a
killed worker's trial is failed and retried within seconds.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from helpers import animal_mnist_npz, cli_command, csv_rows, load_study, run_cli, run_cli_process
from pg_server import PASSWORD, Server, postgres_server

pytestmark = pytest.mark.slow

SPACE = """\
backbone: efficientnet_lite0
image_size: 32
head_width: {choices: [0, 16, 32]}
dropout: {low: 0.0, high: 0.3}
learning_rate: {low: 1.0e-3, high: 1.0e-2, log: true}
"""
CLASSES = ["bear", "cat", "horse", "zebra"]
BEAT = ["--heartbeat", "1", "--heartbeat-grace", "4"]


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    with postgres_server() as running:
        yield running


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A space and a tiny 4-class .npz (Animal-MNIST images) with its own validation/test."""
    root = tmp_path_factory.mktemp("workers")
    (root / "space.yaml").write_text(SPACE)
    animal_mnist_npz(root / "tiny.npz", 40, 15, 15, classes=CLASSES, seed=None)
    return root


def search(root: Path, storage: str, study: str, worker: str, trials: int,
           *extra: str, artifacts: bool = True) -> list[str]:
    shared = ["--artifacts", str(root / f"artifacts-{study}")] if artifacts else []
    return cli_command("search", "--space", root / "space.yaml", "--data", root / "tiny.npz",
                       "--storage", storage, "--study", study, "--results",
                       root / f"results-{worker}", *shared, "--trials", trials, "--batch-size",
                       "16", "--pruner", "none", "--keep-weights", "2", *BEAT, *extra)


def start(command: list[str], root: Path, name: str) -> subprocess.Popen:
    log = open(root / f"{name}.log", "w")  # noqa: SIM115 - closed by the OS when the test ends
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})


def finish(proc: subprocess.Popen, root: Path, name: str, timeout: float = 600) -> str:
    proc.wait(timeout=timeout)
    out = (root / f"{name}.log").read_text()
    assert proc.returncode == 0, out
    return out


def leaderboard(root: Path, storage: str, study: str) -> list[dict[str, str]]:
    """The leaderboard as `automl leaderboard --storage` writes it (from a fresh folder)."""
    out = root / f"board-{study}.csv"
    done = run_cli_process("leaderboard", "--storage", storage, "--study", study, "--results",
                           root / "elsewhere", "--csv", out, timeout=300)
    assert PASSWORD not in done.stdout + done.stderr
    return csv_rows(out)


def test_three_workers_share_one_study_and_export_from_the_storage(server: Server,
                                                                   root: Path) -> None:
    url, trials = server.url(), 9
    procs = {f"w{i}": start(search(root, url, "shared", f"w{i}", trials, "--epochs", "3"),
                            root, f"w{i}") for i in range(3)}
    pids = {name: proc.pid for name, proc in procs.items()}
    logs = {name: finish(proc, root, name) for name, proc in procs.items()}

    rows = leaderboard(root, url, "shared")
    finished = [r for r in rows if r["state"] in ("COMPLETE", "PRUNED")]
    assert len(finished) == trials  # across all workers, not per worker
    numbers = [int(r["trial"]) for r in rows]
    assert len(numbers) == len(set(numbers))
    hosts = {r["host"] for r in finished}
    assert {int(h.rsplit(":", 1)[1]) for h in hosts} == set(pids.values())  # all contributed
    for name, out in logs.items():
        assert PASSWORD not in out and "automl:***@" in out, out
        # every worker printed at least one trial it finished itself
        assert re.search(rf"\[\d+/{trials}\] trial \d+ (COMPLETE|PRUNED)", out), out
        board = (root / f"results-{name}" / "shared" / "leaderboard.csv").read_text()
        assert PASSWORD not in board
    # the best trial's weights are in the shared artefact folder, under the recorded path
    best = rows[0]
    study = load_study(storage=url, study="shared")
    attrs = study.trials[int(best["trial"])].user_attrs
    kind = attrs["result"]["weights_kind"]  # the whole model, or a head on the pretrained one
    assert attrs["weights"] == f"trial_{int(best['trial']):04d}/{kind}.weights.h5"
    assert (root / "artifacts-shared" / attrs["weights"]).is_file()
    kept = sorted((root / "artifacts-shared").glob("trial_*/head.weights.h5"))
    assert len(kept) == 2  # --keep-weights 2, pruned by whichever worker finished last

    # export from "another machine": a fresh results folder, the storage and the artefacts
    out = root / "best_model"
    done = run_cli_process("export", "--storage", url, "--study", "shared", "--results",
                           root / "elsewhere", "--out", out, timeout=300)
    assert f"exported trial {best['trial']} " in done.stdout
    assert PASSWORD not in done.stdout + done.stderr + (out / "automl.json").read_text()
    import tensorflow as tf

    model = tf.saved_model.load(str(out))
    data = np.load(root / "tiny.npz")
    images = np.repeat(data["x_test"], 3, axis=-1).astype(np.float32)  # (n, 28, 28, 1): gray
    probs = model(tf.constant(images)).numpy()
    accuracy = float(np.mean(np.argmax(probs, axis=1) == data["y_test"]))
    assert accuracy == pytest.approx(float(best["test_accuracy"]), abs=1e-6)
    assert json.loads((out / "automl.json").read_text())["classes"] == CLASSES


def _running_trial(storage: str, study: str, timeout: float = 300) -> tuple[int, float]:
    """Wait for a trial that is training (reported an epoch); its number and when it was seen."""
    from optuna.trial import TrialState

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            trials = load_study(storage=storage, study=study).get_trials(
                states=(TrialState.RUNNING,))
        except Exception:  # the study is not created yet
            trials = []
        for trial in trials:
            if trial.intermediate_values:
                return trial.number, time.monotonic()
        time.sleep(0.5)
    pytest.fail("no trial started training in time")


def test_a_killed_workers_trial_is_failed_after_the_grace_period_and_retried(
        server: Server, root: Path) -> None:
    url = server.url()
    # the doomed worker trains on live images (no feature cache): its trial runs long enough
    doomed = start(search(root, url, "killed", "a", 3, "--epochs", "40",
                          "--no-feature-cache"), root, "a")
    number, _ = _running_trial(url, "killed")
    time.sleep(2)  # a few heartbeats into the trial
    doomed.send_signal(signal.SIGKILL)
    doomed.wait(timeout=30)
    killed_at = time.time()
    before = load_study(storage=url, study="killed").trials[number]
    assert before.state.name == "RUNNING"  # nobody told the storage

    other = start(search(root, url, "killed", "b", 3, "--epochs", "3"), root, "b")
    finish(other, root, "b")
    study = load_study(storage=url, study="killed")
    failed = study.trials[number]
    assert failed.state.name == "FAIL"
    # failed only once it had been silent for the grace period (4 s), by the other worker
    assert failed.datetime_complete.timestamp() >= killed_at + 4 - 2.5
    retries = [t for t in study.trials if t.user_attrs.get("retry_of") == number]
    assert len(retries) == 1
    retry = retries[0]
    assert retry.state.name == "COMPLETE" and retry.number > number
    assert retry.params == failed.params and retry.user_attrs["config"] == \
        failed.user_attrs["config"]
    assert retry.user_attrs["host"].endswith(f":{other.pid}")
    rows = leaderboard(root, url, "killed")
    by_number = {int(r["trial"]): r for r in rows}
    assert by_number[number]["state"] == "FAIL"
    assert by_number[number]["reason"] == ("its worker stopped sending heartbeats (killed, "
                                           f"crashed or cut off); retried as trial "
                                           f"{retry.number}")
    assert by_number[retry.number]["reason"] == f"retry of trial {number}"
    assert sum(r["state"] in ("COMPLETE", "PRUNED") for r in rows) == 3
    assert "RUNNING" not in {r["state"] for r in rows}


def test_two_workers_on_a_journal_file(root: Path) -> None:
    storage = f"journal:{root / 'shared' / 'study.journal'}"
    procs = {f"j{i}": start(search(root, storage, "journal", f"j{i}", 6, "--epochs", "3",
                                   artifacts=False), root, f"j{i}") for i in range(2)}
    for name, proc in procs.items():
        finish(proc, root, name)
    rows = leaderboard(root, storage, "journal")
    assert sum(r["state"] in ("COMPLETE", "PRUNED") for r in rows) == 6
    numbers = [int(r["trial"]) for r in rows]
    assert len(numbers) == len(set(numbers))
    assert {int(r["host"].rsplit(":", 1)[1]) for r in rows} <= {p.pid for p in procs.values()}
    # without --artifacts the kept weights sit next to the journal, where every worker reaches
    kept = sorted(p.parent.name for p in (root / "shared" / "journal" / "trials").glob(
        "trial_*/head.weights.h5"))  # every kept trial keeps its head
    assert kept == sorted(f"trial_{int(r['trial']):04d}" for r in rows[:2])
    assert [r["weights_kept"] for r in rows[:3]] == ["True", "True", "False"]


def test_a_wrong_password_is_refused_in_one_line_without_the_password(server: Server) -> None:
    wrong = "not-the-Pa55word"
    err = run_cli("leaderboard", "--storage", server.url(password=wrong), "--study", "shared",
                  code=2).err
    assert err.startswith(f"error: cannot connect to the study storage at postgresql://automl:***@"
                          f"{server.host}:{server.port}/automl: ")
    assert 'password authentication failed for user "automl"' in err
    assert wrong not in err and len(err.strip().splitlines()) == 1
