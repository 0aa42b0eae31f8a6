"""The live view of a search: a rich block on a terminal, plain lines in a log, --quiet."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import select
import sys
import time
from pathlib import Path

import pytest
from helpers import animal_mnist_npz as tiny_npz
from rich.console import Console

from automl.search.progress import (
    LineProgress,
    LiveProgress,
    SearchProgress,
    TrialEnd,
    make_progress,
)

PARAMS = {"backbone": "efficientnet_lite0", "image_size": 48, "learning_rate": 0.00123}
ROW = {"epoch": 2, "phase": 1, "phase_epoch": 2, "loss": 0.5, "accuracy": 0.8,
       "val_loss": 0.6, "val_accuracy": 0.75}


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    """What the live view writes to, replayed by ``screen``; reports itself as a terminal."""

    def isatty(self) -> bool:
        return True


def screen(text: str) -> list[str]:
    """The lines a terminal shows after ``text``, the escapes rich's Live uses: CR, nA (cursor
    up), 2K (erase line), SGR styles and cursor show/hide (ignored). Lines are not wrapped."""
    rows, r, c = [""], 0, 0
    for token in re.split(r"(\x1b\[[0-9;?]*[A-Za-z]|\n|\r)", text):
        if token == "\n":
            r, c = r + 1, 0
            if r == len(rows):
                rows.append("")
        elif token == "\r":
            c = 0
        elif token.startswith("\x1b["):
            n, command = token[2:-1], token[-1]
            if command == "A":
                r -= int(n or 1)
                assert r >= 0, "moved above the first line"
            elif command == "K":
                rows[r] = ""
            elif command not in "mhl":
                raise AssertionError(f"unexpected escape {token!r}")
        elif token:
            line = rows[r].ljust(c)
            rows[r] = line[:c] + token + line[c + len(token):]
            c += len(token)
    rows = [row.rstrip() for row in rows]
    while rows and not rows[-1]:
        rows.pop()
    return rows


def console(out: io.StringIO, width: int = 100) -> Console:
    return Console(file=out, force_terminal=True, width=width, highlight=False, emoji=False)


def shown(view: LiveProgress, width: int = 100) -> str:
    """The live block as ``rich`` draws it on a terminal ``width`` columns wide, escapes and all."""
    out = io.StringIO()
    console(out, width).print(view.render())
    return out.getvalue()


def plain(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)


def _end(number: int, finished: int, value: float, best: tuple[float, int]) -> TrialEnd:
    return TrialEnd(number, "COMPLETE", finished, val_accuracy=value, best_value=best[0],
                    best_trial=best[1], params=PARAMS)


def test_block_shows_the_running_trial_its_last_epoch_and_the_best() -> None:
    clock = Clock()
    view = LiveProgress(console=console(io.StringIO()), clock=clock, tick=None)
    view.start(3, 0, max_epochs=(10, 5))
    assert [line.rstrip() for line in plain(shown(view)).splitlines()] == [
        "trial 0 of 3 (0 finished) " + "━" * 30 + " 0s elapsed", "  best val_acc -"]
    view.trial_start(4, PARAMS, "screen")
    assert "\n  building the model / first epoch ...  " in plain(shown(view))
    clock.now += 65
    view.epoch(4, ROW)
    drawn = shown(view)
    assert "\x1b[" in drawn  # styled (the bar, the running trial's name)
    assert [line.rstrip() for line in plain(drawn).splitlines()] == [
        "trial 1 of 3 (0 finished) " + "━" * 30 + " 1m05s elapsed",
        "  running trial 4 [screen]: backbone=efficientnet_lite0 image_size=48 "
        "learning_rate=0.00123",
        "  epoch 2 (phase 1 head, 2/10) loss 0.5000 acc 0.8000 | val_loss 0.6000 val_acc 0.7500",
        "  best val_acc -"]
    clock.now += 15
    view.trial_end(_end(4, 1, 0.75, (0.75, 4)))
    view.trial_start(5, PARAMS, "refine")
    view.epoch(5, {**ROW, "epoch": 3, "phase": 2, "phase_epoch": 1})
    lines = [line.rstrip() for line in plain(shown(view)).splitlines()]
    assert lines[0].startswith("trial 2 of 3 (1 finished) ━━━━━━━━━━")  # a third of the bar
    assert lines[0].endswith(" 1m20s elapsed, ~2m40s left")
    assert lines[1:] == [
        "  running trial 5 [refine]: backbone=efficientnet_lite0 image_size=48 "
        "learning_rate=0.00123",
        "  epoch 3 (phase 2 fine-tune, 1/5) loss 0.5000 acc 0.8000 | val_loss 0.6000 val_acc "
        "0.7500",
        "  best val_acc 0.7500 (trial 4)"]
    view.close()


@pytest.mark.parametrize("width", [50, 30])
def test_a_narrow_terminal_gets_the_block_wrapped_not_cut(width: int) -> None:
    view = LiveProgress(console=console(io.StringIO(), width), clock=Clock(), tick=None)
    view.start(3)
    view.trial_start(0, {**PARAMS, "augmentation": "heavy", "dropout": 0.25})
    lines = plain(shown(view, width)).splitlines()
    assert max(len(line.rstrip()) for line in lines) <= width
    assert all(line.startswith("  ") for line in lines[1:])  # under the header
    joined = " ".join(line.strip() for line in lines)
    for part in ("trial 1 of 3 (0 finished)", "0s elapsed", "running trial 0:",
                 "backbone=efficientnet_lite0", "augmentation=heavy dropout=0.25",
                 "learning_rate=0.00123", "best val_acc -"):
        assert part in joined
    view.close()


def test_finished_trials_stay_above_the_block_and_close_erases_it() -> None:
    tty, clock = Terminal(), Clock()
    view = LiveProgress(console=console(tty), clock=clock, tick=None)
    view.note("study 'default': 0 of 3 trials finished")
    view.start(3, 0, max_epochs=(10, 5))
    view.trial_start(4, PARAMS, "screen")
    clock.now += 65
    view.epoch(4, ROW)
    assert screen(tty.getvalue()) == [
        "study 'default': 0 of 3 trials finished",
        "trial 1 of 3 (0 finished) " + "━" * 30 + " 1m05s elapsed",
        "  running trial 4 [screen]: backbone=efficientnet_lite0 image_size=48 "
        "learning_rate=0.00123",
        "  epoch 2 (phase 1 head, 2/10) loss 0.5000 acc 0.8000 | val_loss 0.6000 val_acc 0.7500",
        "  best val_acc -"]
    clock.now += 15
    view.trial_end(_end(4, 1, 0.75, (0.75, 4)))
    view.trial_start(5, PARAMS, "refine")
    view.trial_end(TrialEnd(5, "PRUNED", 2, detail="at epoch 3", best_value=0.75, best_trial=4,
                            params={"backbone": "x"}))
    view.trial_start(6, PARAMS)
    rows = screen(tty.getvalue())
    assert rows[:3] == [
        "study 'default': 0 of 3 trials finished",
        "[1/3] trial 4 COMPLETE val_acc=0.7500 | best 0.7500 (trial 4) | backbone=efficientnet_"
        "lite0 image_size=48 learning_rate=0.00123 | 1m20s elapsed, ~2m40s left",  # unwrapped
        "[2/3] trial 5 PRUNED at epoch 3 | best 0.7500 (trial 4) | backbone=x | 1m20s elapsed, "
        "~40s left"]
    assert rows[3].startswith("trial 3 of 3 (2 finished) ━") and len(rows) == 7
    view.close()
    assert screen(tty.getvalue()) == rows[:3]  # the block is erased
    assert tty.getvalue().endswith("\x1b[?25h" + "\r" + "\x1b[1A\x1b[2K" * 4)  # cursor back


def test_warnings_are_written_above_the_block_not_into_it(monkeypatch) -> None:  # noqa: ANN001
    tty = Terminal()
    monkeypatch.setattr(sys, "stderr", tty)  # stderr and stdout on one terminal
    handler = logging.StreamHandler(tty)
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        view = LiveProgress(console=console(tty), clock=Clock(), tick=None)
        view.start(2)
        logging.getLogger("automl").warning("dropping backbones without weights here: vgg16")
        print("warning: skipped a file", file=sys.stderr)  # the CLI's Python warnings
        view.trial_start(0, PARAMS)
        assert screen(tty.getvalue()) == [
            "WARNING: dropping backbones without weights here: vgg16",
            "warning: skipped a file",
            "trial 1 of 2 (0 finished) " + "━" * 30 + " 0s elapsed",
            "  running trial 0: backbone=efficientnet_lite0 image_size=48 learning_rate=0.00123",
            "  building the model / first epoch ...",
            "  best val_acc -"]
        view.close()
        assert handler.stream is tty and sys.stderr is tty  # left as they were
    finally:
        root.removeHandler(handler)


def test_plain_lines_when_not_a_terminal() -> None:
    out = io.StringIO()
    view = make_progress(out)
    assert type(view) is LineProgress
    view.start(2)
    view.trial_start(0, PARAMS)
    view.epoch(0, ROW)  # epochs are not logged line by line
    view.trial_end(TrialEnd(0, "PRUNED", 1, detail="at epoch 3", params={"backbone": "x"}))
    view.trial_end(TrialEnd(1, "FAIL", 1, detail="the loss became NaN", params={}))
    view.close()
    lines = out.getvalue().splitlines()
    assert [re.sub(r"\| \d+s elapsed.*$", "| T", line) for line in lines] == [
        "[1/2] trial 0 PRUNED at epoch 3 | backbone=x | T",
        "[1/2] trial 1 FAIL the loss became NaN |  | T"]
    assert "\x1b" not in out.getvalue()


def test_quiet_view_prints_nothing() -> None:
    out = io.StringIO()
    view = make_progress(out, quiet=True)
    assert type(view) is SearchProgress
    view.start(1)
    view.note("hello")
    view.trial_start(0, PARAMS)
    view.trial_end(_end(0, 1, 0.5, (0.5, 0)))
    view.close()
    assert out.getvalue() == "" and view.best == (0.5, 0)


def test_estimate_uses_this_runs_trials_and_the_timeout() -> None:
    clock = Clock()
    view = SearchProgress(clock)
    view.start(10, finished=4, timeout=100.0)  # resumed: 4 finished by an earlier run
    assert view.remaining(0.0) == 100.0  # nothing finished here yet: only the timeout bounds it
    clock.now += 20
    view.trial_end(_end(7, 6, 0.5, (0.5, 7)))  # this run finished 2 trials in 20 s
    assert view.remaining(20.0) == pytest.approx(40.0)  # 4 left at 10 s each
    assert view.remaining(90.0) == pytest.approx(10.0)  # the timeout comes first


def test_a_real_terminal_gets_the_live_view_and_its_clock_ticks(monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setenv("TERM", "xterm-256color")
    for name in ("TTY_COMPATIBLE", "TTY_INTERACTIVE"):
        monkeypatch.delenv(name, raising=False)
    master, slave = os.openpty()
    with os.fdopen(slave, "w", encoding="utf-8") as tty:
        view = make_progress(tty)
        assert type(view) is LiveProgress
        view.tick = 0.05
        view.start(1)
        time.sleep(0.3)
        view.close()
        output = b""
        while select.select([master], [], [], 0.5)[0]:  # all of it: a read may return a part
            output += os.read(master, 65536)
    os.close(master)
    # the block was drawn and redrawn several times by the ticker, then erased
    assert output.decode().count("trial 0 of 1 (0 finished)") >= 3
    assert output.decode().endswith("\x1b[?25h\r" + "\x1b[1A\x1b[2K" * 2)


@pytest.mark.slow
def test_quiet_search_prints_only_warnings_and_the_summary(tmp_path: Path, caplog) -> None:
    """Through the CLI: warnings are still logged, no progress line reaches stdout."""
    from automl.cli import main

    data = tiny_npz(tmp_path / "tiny.npz", train=20, val=5, test=5)
    (tmp_path / "space.yaml").write_text(
        "backbone: efficientnet_lite0\nimage_size: 32\nfreeze_depth: 1.0\nhead_width: 0\n"
        "dropout: 0.1\nlearning_rate: 0.003\naugmentation: none\n")
    args = ["search", "--quiet", "--space", str(tmp_path / "space.yaml"), "--data", str(data),
            "--results", str(tmp_path / "results"), "--trials", "1", "--epochs", "1"]
    with contextlib.redirect_stdout(io.StringIO()), caplog.at_level(logging.WARNING, "automl"):
        assert main([*args, "--timeout", "0"]) == 0  # starts no trial, with a warning
    out = io.StringIO()
    with contextlib.redirect_stdout(out), caplog.at_level(logging.WARNING, "automl"):
        assert main(args) == 0
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == [
        "--timeout 0.0s reached: no new trial is started"]
    printed = out.getvalue()
    assert "[1/1]" not in printed and "study 'default'" not in printed
    assert printed.lstrip().startswith("trial")  # the final table is the first thing printed
    assert re.search(r"^\s+0\s+COMPLETE\s+0\.\d+", printed, re.M)
    assert printed.rstrip().endswith(f"leaderboard: {tmp_path / 'results' / 'default'}"
                                     "/leaderboard.csv")
