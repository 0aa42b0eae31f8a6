"""Ctrl-C through a real process with the keras-tuner driver: nothing broken, the trial retried."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

SLOW_SPACE = """\
backbone: efficientnet_lite0
image_size: 32
head_width: {choices: [0, 32, 64]}
dropout: {low: 0.0, high: 0.3}
learning_rate: {low: 1.0e-4, high: 1.0e-3, log: true}
augmentation: flip
"""


@pytest.mark.slow
def test_ctrl_c_queues_the_keras_tuner_trial_and_the_same_command_retries_it(
        tiny_npz: Path, tmp_path: Path) -> None:
    """Interrupted mid-trial: INTERRUPTED in the study, queued for retry in the kt project."""
    (tmp_path / "space.yaml").write_text(SLOW_SPACE)
    results = tmp_path / "results"

    def command(trials: int, epochs: int) -> list[str]:
        # augmentation runs the backbone live: epochs long enough to interrupt one
        return [sys.executable, "-m", "automl.cli", "search", "--driver", "keras-tuner",
                "--algorithm", "random", "--data", str(tiny_npz), "--space",
                str(tmp_path / "space.yaml"), "--results", str(results), "--trials",
                str(trials), "--epochs", str(epochs), "--batch-size", "16"]

    board = results / "default" / "leaderboard.csv"
    proc = subprocess.Popen(command(30, 40), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ})
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if board.is_file() and any(r["state"] == "COMPLETE" for r in _rows(board)):
            break
        time.sleep(0.5)
    time.sleep(1.5)  # into the second trial's training
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "run the same command again to resume" in err and "Traceback" not in err
    rows = _rows(board)
    interrupted = [r for r in rows if r["state"] == "INTERRUPTED"]
    assert len(interrupted) == 1 and "Ctrl-C" in interrupted[0]["reason"]
    assert "RUNNING" not in {r["state"] for r in rows}
    study = _study(results)
    stopped = study.trials[int(interrupted[0]["trial"])]
    kt_id = stopped.user_attrs["kt_trial_id"]
    project = results / "default" / "keras_tuner" / "random"
    oracle = json.loads((project / "oracle.json").read_text())
    assert oracle["ongoing_trials"] == {} and oracle["retry_queue"] == [kt_id]
    finished = sum(r["state"] == "COMPLETE" for r in rows)

    # the same command (shorter, to keep the test quick) retries that configuration first
    done = subprocess.run(command(finished + 1, 1), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    study = _study(results)
    retried = study.trials[-1]
    assert retried.state.name == "COMPLETE" and retried.user_attrs["kt_trial_id"] == kt_id
    assert retried.user_attrs["config"] == stopped.user_attrs["config"]
    rows = _rows(board)
    assert sorted(int(r["trial"]) for r in rows) == list(range(len(rows)))
    assert sum(r["state"] == "COMPLETE" for r in rows) == finished + 1
    oracle = json.loads((project / "oracle.json").read_text())
    assert oracle["ongoing_trials"] == {} and oracle["retry_queue"] == []
    kt_trial = json.loads((project / f"trial_{kt_id}" / "trial.json").read_text())
    assert kt_trial["status"] == "COMPLETED" and kt_trial["score"] == retried.value


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _study(results: Path) -> optuna.Study:
    return optuna.load_study(study_name="default",
                             storage=f"sqlite:///{results / 'default' / 'study.db'}")
