"""Interruptions through a real subprocess: Ctrl-C and kill -9 lose nothing; re-running resumes."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest
from helpers import cli_command, csv_rows, load_study, run_cli_process

SPACE = """\
backbone: efficientnet_lite0
image_size: 32
head_width: {choices: [0, 32, 64]}
dropout: {low: 0.0, high: 0.3}
learning_rate: {low: 1.0e-4, high: 1.0e-3, log: true}
"""


def _search(root: Path, trials: int, epochs: int) -> list[str]:
    return ["search", "--space", str(root / "space.yaml"), "--results", str(root / "results"),
            "--trials", str(trials), "--epochs", str(epochs), "--batch-size", "16", "--pruner",
            "none"]


def _rows(root: Path) -> list[dict[str, str]]:
    return csv_rows(root / "results" / "default" / "leaderboard.csv", missing_ok=True)


def _running(root: Path) -> bool:
    """Whether the study has a trial running (read from its SQLite file, as the search writes)."""
    return any(t.state.name == "RUNNING" for t in load_study(root / "results").trials)


def _start_and_wait_for_a_trial(root: Path, trials: int) -> subprocess.Popen:
    """Start a long search; return once one trial has finished and the next one is training."""
    (root / "space.yaml").write_text(SPACE)
    proc = subprocess.Popen(cli_command(*_search(root, trials, epochs=40)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        # after the first trial its architecture's serving cost is measured, then the next
        # trial starts: wait for it to be running
        if any(r["state"] == "COMPLETE" for r in _rows(root)) and _running(root):
            time.sleep(2)  # well into the next trial's training (small batches: long epochs)
            return proc
        time.sleep(1)
    proc.kill()
    out, err = proc.communicate()
    pytest.fail(f"no trial finished in time:\n{out}\n{err}")


def _resume(root: Path, trials: int) -> subprocess.CompletedProcess:
    return run_cli_process(*_search(root, trials, epochs=1))


@pytest.mark.slow
def test_ctrl_c_marks_the_trial_interrupted_and_the_same_command_resumes(tmp_path: Path) -> None:
    proc = _start_and_wait_for_a_trial(tmp_path, trials=30)
    before = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert time.monotonic() - before < 30
    assert proc.returncode == 130
    assert "run the same command again to resume" in err and "Traceback" not in err
    rows = _rows(tmp_path)
    states = {r["state"] for r in rows}
    assert "INTERRUPTED" in states and "RUNNING" not in states
    interrupted = [r for r in rows if r["state"] == "INTERRUPTED"]
    assert "Ctrl-C" in interrupted[0]["reason"]

    finished = sum(r["state"] == "COMPLETE" for r in rows)
    _resume(tmp_path, trials=finished + 1)
    rows = _rows(tmp_path)
    numbers = sorted(int(r["trial"]) for r in rows)
    assert numbers == list(range(len(numbers)))  # no duplicate, no gap
    assert sum(r["state"] == "COMPLETE" for r in rows) == finished + 1


@pytest.mark.slow
def test_kill_9_leaves_a_stale_trial_that_the_next_run_closes(tmp_path: Path) -> None:
    proc = _start_and_wait_for_a_trial(tmp_path, trials=30)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    before = {r["trial"]: r for r in _rows(tmp_path)}
    assert all(r["state"] == "COMPLETE" for r in before.values())  # the killed one never got told
    finished = len(before)

    done = _resume(tmp_path, trials=finished + 1)
    assert "left running by a process that stopped" in done.stdout
    rows = _rows(tmp_path)
    numbers = sorted(int(r["trial"]) for r in rows)
    assert numbers == list(range(len(numbers)))
    stale = [r for r in rows if r["state"] == "INTERRUPTED"]
    assert len(stale) == 1 and "killed or crashed" in stale[0]["reason"]
    assert sum(r["state"] == "COMPLETE" for r in rows) == finished + 1
