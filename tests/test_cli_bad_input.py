"""Every kind of bad input through the CLI: one message, exit 2, earlier results byte-identical."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import optuna
import pytest
from helpers import image_folder, load_study, run_cli, write_npz


def _classes(root: Path, names: tuple[str, ...], per_class: int = 6) -> Path:
    """An image folder of flat grey 8x8 images: image i of each class has the value 20 * i."""
    return image_folder(root, {name: [np.full((8, 8, 3), 20 * i, np.uint8)
                                      for i in range(per_class)] for name in names})


@pytest.fixture()
def results(tmp_path: Path) -> Path:
    """An earlier study: study.db, a leaderboard and kept weights, whose bytes must not change."""
    from automl.search.study import open_study

    root = tmp_path / "results"
    study = open_study(root, "default", None, create=True)
    trial = study.ask()
    trial.set_user_attr("config", {"backbone": "efficientnet_lite0"})
    study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    (root / "default" / "leaderboard.csv").write_text("trial,state\n0,PRUNED\n")
    (root / "default" / "trials" / "trial_0000").mkdir(parents=True)
    (root / "default" / "trials" / "trial_0000" / "model.weights.h5").write_bytes(b"w" * 64)
    return root


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


X, Y = np.zeros((6, 8, 8), np.uint8), np.arange(6) % 2
DATA: dict[str, tuple[Callable[[Path], Path | str], str]] = {
    "missing path": (lambda t: t / "nope", "does not exist"),
    "not a dir or npz": (lambda t: (t / "a.txt").write_text("x") and t / "a.txt",
                         "neither a directory nor an .npz"),
    "empty dir": (lambda t: (t / "e").mkdir() or t / "e", "is empty"),
    "one class": (lambda t: _classes(t / "one", ("cat",)), "only one class"),
    "class without images": (lambda t: (_classes(t / "h", ("cat", "dog")) / "emu").mkdir()
                             or t / "h", "has no images"),
    "class sets differ": (lambda t: _classes(t / "s" / "train", ("cat", "dog")) and _classes(
        t / "s" / "validation", ("cat", "emu")) and t / "s", "differ"),
    "npz without x_train": (lambda t: write_npz(t / "a.npz", x_val=X, y_val=Y), "no x_train"),
    "npz lengths differ": (lambda t: write_npz(t / "b.npz", x_train=X, y_train=Y[:5]), "6 images"),
    "npz not images": (lambda t: write_npz(t / "c.npz", x_train=np.zeros((6, 4)), y_train=Y),
                       "not a stack of images"),
    "npz pickled objects": (lambda t: write_npz(t / "d.npz", x_train=X, y_train=np.array(
        [{"a": 1}] * 6, dtype=object)), "pickled"),
}

SPACES = {
    "unparsable YAML": ("backbone: [unclosed\n", "this is not valid YAML"),
    "unknown key": ("epochz: 3\n", "unknown key 'epochz'"),
    "unknown backbone": ("backbone: vgg17\n", "'vgg17' is not a known backbone"),
    "unknown augmentation": ("augmentation: wobble\n", "'wobble' is not allowed"),
    "wrong type": ("dropout: lots\n", "'lots' is a str"),
    "low > high": ("dropout: {low: 0.5, high: 0.1}\n", "low (0.5) is greater than high (0.1)"),
    "log with low <= 0": ("learning_rate: {low: 0.0, high: 0.1, log: true}\n",
                          "a log range needs low > 0"),
    "size below minimum": ("backbone: inception_v3\nimage_size: 32\n",
                           "below the minimum input size of backbone 'inception_v3'"),
}


def _check(argv: list[str], message: str, results: Path, culprit: str = "") -> None:
    before = _snapshot(results)
    err = run_cli(*argv, code=2).err
    assert message in err and culprit in err, err
    assert err.count("\n") == 1  # one paragraph
    assert _snapshot(results) == before


@pytest.mark.parametrize("case", DATA)
def test_bad_data(case: str, tmp_path: Path, results: Path) -> None:
    make, message = DATA[case]
    source = make(tmp_path)
    _check(["search", "--data", str(source), "--results", str(results)], message, results,
           culprit=str(source))


@pytest.mark.parametrize("case", SPACES)
def test_bad_space(case: str, tmp_path: Path, results: Path) -> None:
    text, message = SPACES[case]
    space = tmp_path / "space.yaml"
    space.write_text(text)
    _check(["search", "--space", str(space), "--results", str(results)], message, results,
           culprit=str(space))


@pytest.mark.parametrize(("argv", "message"), [
    (["search", "--trials", "0"], "--trials 0"),
    (["search", "--trials", "-2"], "--trials -2"),
    (["search", "--timeout", "-5"], "--timeout -5"),
    (["search", "--keep-weights", "0"], "--keep-weights 0"),
    (["search", "--max-latency-ms", "0"], "--max-latency-ms 0: expected a positive number"),
    (["search", "--max-size-mb", "-1"], "--max-size-mb -1: expected a positive number"),
    (["search", "--driver", "keras-tuner", "--max-latency-ms", "20"],
     "--max-latency-ms 20: cost limits apply to --driver optuna only"),
    (["export", "--out", "m"], "no finished (COMPLETE) trial to export"),
    (["export", "--trial", "0", "--out", "m"], "--trial 0: that trial is PRUNED"),
    (["export", "--study", "ghost", "--out", "m"], "there is no study 'ghost'"),
    (["leaderboard", "--study", "ghost"], "there is no study 'ghost'"),
    (["inspect"], "study 'default' has no complete trial yet"),
    (["inspect", "--study", "ghost"], "there is no study 'ghost'"),
])
def test_bad_cli_flags(argv: list[str], message: str, results: Path) -> None:
    _check([*argv, "--results", str(results)], message, results)


def test_predict_on_a_folder_that_is_not_a_model(results: Path) -> None:
    _check(["predict", str(results), "x.png"], "is not a model exported by `automl export`",
           results)


def test_undecodable_files_are_skipped_with_one_warning(tmp_path: Path) -> None:
    """Broken images are skipped with one warning; hidden and non-image files are ignored."""
    data = _classes(tmp_path / "data", ("snow leopard", "čáp"), per_class=10)
    (data / "čáp" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (data / "čáp" / "notes.jpg").write_text("a text file named .jpg")
    (data / "čáp" / ".hidden.png").write_bytes(b"junk")
    (data / "snow leopard" / "README.txt").write_text("ignored")
    space = tmp_path / "space.yaml"
    space.write_text("backbone: efficientnet_lite0\nimage_size: 32\n")
    results = tmp_path / "results"
    err = run_cli("search", "--data", data, "--space", space, "--results", results, "--trials",
                  "1", "--epochs", "1", "--fine-tune-epochs", "0", "--val-split", "0.3",
                  "--test-split", "0.3").err
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1
    assert "2 file(s)" in warnings[0] and "broken.jpg" in warnings[0]
    assert "notes.jpg" in warnings[0] and ".hidden" not in err
    board = (results / "default" / "leaderboard.csv").read_text(encoding="utf-8")
    assert "COMPLETE" in board
    names = load_study(results).user_attrs["class_names"]
    assert names == ["snow leopard", "čáp"]
