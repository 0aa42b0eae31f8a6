"""Ctrl-C and kill -9 of a keras-tuner search (a real process): nothing broken, trial retried."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
from helpers import cli_command, csv_rows, load_study, run_cli_process

SLOW_SPACE = """\
backbone: efficientnet_lite0
image_size: 32
head_width: {choices: [0, 32, 64]}
dropout: {low: 0.0, high: 0.3}
learning_rate: {low: 1.0e-4, high: 1.0e-3, log: true}
augmentation: flip
"""


def _search(root: Path, data: Path, algorithm: str, trials: int, epochs: int,
            batch: int) -> list[str]:
    # augmentation runs the backbone live (no cached views): epochs long enough to stop one
    # midway (on cached flip views a trial can end within the test's 1.5 s wait)
    return ["search", "--driver", "keras-tuner", "--algorithm", algorithm, "--data", str(data),
            "--space", str(root / "space.yaml"), "--results", str(root / "results"), "--trials",
            str(trials), "--epochs", str(epochs), "--batch-size", str(batch),
            "--augment-views", "0"]


def _stop_during_the_second_trial(argv: list[str], board: Path,
                                  sig: int) -> tuple[subprocess.Popen, str, str]:
    proc = subprocess.Popen(cli_command(*argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if any(r["state"] == "COMPLETE" for r in csv_rows(board, missing_ok=True)):
            break
        time.sleep(0.5)
    time.sleep(1.5)  # the next trial is being built or trained
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    return proc, out, err


@pytest.mark.slow
@pytest.mark.parametrize(("algorithm", "sig"), [("random", signal.SIGINT),
                                                ("hyperband", signal.SIGKILL)],
                         ids=["ctrl-c-random", "kill-9-hyperband"])
def test_a_stopped_keras_tuner_trial_is_retried_by_the_same_command(
        algorithm: str, sig: int, tiny_npz: Path, tmp_path: Path) -> None:
    """Ctrl-C or kill -9 mid-trial: INTERRUPTED in the study, run again first by the next run."""
    (tmp_path / "space.yaml").write_text(SLOW_SPACE)
    results = tmp_path / "results"
    board = results / "default" / "leaderboard.csv"
    project = results / "default" / "keras_tuner" / algorithm
    # Hyperband's first rung is 2 epochs whatever --epochs is: small batches make them long
    epochs, batch = (40, 16) if algorithm == "random" else (40, 4)
    proc, _, err = _stop_during_the_second_trial(
        _search(tmp_path, tiny_npz, algorithm, 30, epochs, batch), board, sig)
    rows = csv_rows(board)
    assert "RUNNING" not in {r["state"] for r in rows}
    if sig == signal.SIGINT:
        assert proc.returncode == 130, err
        assert "run the same command again to resume" in err and "Traceback" not in err
        interrupted = [r for r in rows if r["state"] == "INTERRUPTED"]
        assert len(interrupted) == 1 and "Ctrl-C" in interrupted[0]["reason"]
        stopped = load_study(results).trials[int(interrupted[0]["trial"])]
        oracle = json.loads((project / "oracle.json").read_text())
        assert oracle["ongoing_trials"] == {}
        assert oracle["retry_queue"] == [stopped.user_attrs["kt_trial_id"]]
    else:  # nothing could be written: the trial is still RUNNING in the study and the project
        assert all(r["state"] == "COMPLETE" for r in rows)
        stopped = load_study(results).trials[-1]
        assert stopped.state.name == "RUNNING"
        oracle = json.loads((project / "oracle.json").read_text())
        assert list(oracle["ongoing_trials"].values()) == [stopped.user_attrs["kt_trial_id"]]
    kt_id = stopped.user_attrs["kt_trial_id"]
    finished = sum(r["state"] == "COMPLETE" for r in rows)

    # the same command (random: shorter, to keep the test quick) runs that configuration first
    done = run_cli_process(*_search(tmp_path, tiny_npz, algorithm, finished + 1,
                                    1 if algorithm == "random" else epochs, batch))
    if sig == signal.SIGKILL:
        assert "left running by a process that stopped" in done.stdout
    study = load_study(results)
    retried = study.trials[-1]
    assert retried.state.name == "COMPLETE" and retried.user_attrs["kt_trial_id"] == kt_id
    assert retried.user_attrs["config"] == stopped.user_attrs["config"]
    rows = csv_rows(board)
    assert sorted(int(r["trial"]) for r in rows) == list(range(len(rows)))
    assert [r["state"] for r in rows].count("INTERRUPTED") == 1
    assert sum(r["state"] == "COMPLETE" for r in rows) == finished + 1
    oracle = json.loads((project / "oracle.json").read_text())
    assert oracle["ongoing_trials"] == {} and oracle["retry_queue"] == []
    kt_trial = json.loads((project / f"trial_{kt_id}" / "trial.json").read_text())
    assert kt_trial["status"] == "COMPLETED" and kt_trial["score"] == retried.value
