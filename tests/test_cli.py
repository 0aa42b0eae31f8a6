"""End to end through the CLI: search -> leaderboard -> export -> reload -> predict -> resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import csv_rows, load_study, run_cli

from automl.data import pipeline

SPACE = """\
backbone: efficientnet_lite0
image_size: 32
freeze_depth: {choices: [1.0, 0.98]}
head_width: {choices: [0, 64]}
dropout: 0.1
learning_rate: {low: 1.0e-3, high: 1.0e-2, log: true}
augmentation: none
"""
FAST = ["--epochs", "2", "--fine-tune-epochs", "1", "--batch-size", "128"]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One real search of 3 trials on the embedded default with pretrained Lite0."""
    root = tmp_path_factory.mktemp("cli")
    space = root / "space.yaml"
    space.write_text(SPACE)
    results = root / "results"
    run_cli("search", "--space", space, "--trials", "3", "--results", results, *FAST)
    return {"root": root, "space": space, "results": results}


def test_search_writes_a_ranked_leaderboard(run: dict[str, Path]) -> None:
    rows = csv_rows(run["results"] / "default" / "leaderboard.csv")
    assert len(rows) == 3
    assert {r["state"] for r in rows} == {"COMPLETE"}
    for column in ("trial", "val_accuracy", "val_loss", "test_accuracy", "backbone",
                   "image_size", "freeze_depth", "head_width", "dropout", "learning_rate",
                   "augmentation", "epochs", "train_seconds", "params"):
        assert column in rows[0]
    accuracies = [float(r["val_accuracy"]) for r in rows]
    assert accuracies == sorted(accuracies, reverse=True)
    assert accuracies[0] > 0.5  # 10 classes: chance is 0.1
    assert float(rows[0]["test_accuracy"]) > 0.5


def test_a_new_study_starts_at_the_spaces_start_point(run: dict[str, Path]) -> None:
    study = load_study(run["results"])
    first = study.trials[0]
    assert first.user_attrs["start"] == "start point"
    # backbone and size are fixed in SPACE, so no extra heads on the same input are queued;
    # head_width's default (128) is not offered: its first choice; learning_rate's is
    assert {k: first.user_attrs["config"][k] for k in ("freeze_depth", "head_width",
                                                       "learning_rate")} == {
        "freeze_depth": 1.0, "head_width": 0, "learning_rate": 1e-3}
    assert [t.number for t in study.trials if "start" in t.user_attrs] == [0]


def test_timeout_zero_on_a_new_study_queues_nothing(tmp_path: Path) -> None:
    space = tmp_path / "space.yaml"
    space.write_text(SPACE.replace("backbone: efficientnet_lite0",
                                   "backbone: {choices: [efficientnet_lite0, efficientnet_lite1]}"))
    run_cli("search", "--space", space, "--trials", "20", "--timeout", "0",
            "--results", tmp_path / "r", *FAST)
    assert load_study(tmp_path / "r").trials == []  # no WAITING start trials left behind


def test_leaderboard_command_prints_table_and_summary(run: dict[str, Path],
                                                      tmp_path: Path) -> None:
    out_csv = tmp_path / "summary.csv"
    printed = run_cli("leaderboard", "--results", run["results"], "--summary-csv", out_csv).out
    assert "efficientnet_lite0" in printed and "best_val_accuracy" in printed
    summary = csv_rows(out_csv)
    assert summary[0]["backbone"] == "efficientnet_lite0" and summary[0]["trials"] == "3"


def test_export_reloads_and_reproduces_test_accuracy(run: dict[str, Path]) -> None:
    import tensorflow as tf

    from automl.data.load import load_data
    from automl.trial.run import scores

    out = run["root"] / "best_model"
    assert "reload check passed" in run_cli("export", "--results", run["results"], "--out",
                                            out).out
    best = csv_rows(run["results"] / "default" / "leaderboard.csv")[0]
    labels = (out / "labels.txt").read_text(encoding="utf-8").splitlines()
    assert labels[:3] == ["bear", "bird", "cat"] and len(labels) == 10
    assert (out / "model.keras").is_file()

    model = tf.saved_model.load(str(out))
    data = load_data(None)
    images = np.stack(list(pipeline.images(data.test, 32).as_numpy_iterator()))
    probs = model(tf.constant(images, tf.float32)).numpy()
    assert probs.shape == (len(images), 10)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert scores(probs, data.test.labels)[1] == pytest.approx(float(best["test_accuracy"]),
                                                               abs=1e-6)
    # the .keras file (with automl's layers registered) predicts exactly what the SavedModel does
    import keras

    import automl.trial.layers  # noqa: F401 - registers Preprocess for deserialisation

    in_process = keras.saving.load_model(str(out / "model.keras"))
    np.testing.assert_allclose(in_process.predict(images[:64].astype(np.float32), verbose=0),
                               probs[:64], atol=1e-5)
    # any size and uint8 work too: resizing is inside the graph
    big = tf.image.resize(images[:4], (77, 51)).numpy().astype(np.uint8)
    assert model.predict_uint8(tf.constant(big)).shape == (4, 10)


def test_a_head_only_trial_exports_from_the_pretrained_backbone(run: dict[str, Path],
                                                                tmp_path: Path) -> None:
    """Trials after the first train a head alone on cached activations and keep only it;
    export rebuilds the backbone from its pretrained weights and reproduces the recorded test
    accuracy with the reloaded SavedModel."""
    import tensorflow as tf

    from automl.data.load import load_data
    from automl.trial.run import scores

    study = load_study(run["results"])
    kinds = {t.number: t.user_attrs["result"]["weights_kind"] for t in study.trials}
    assert kinds[0] == "model" and "head" in kinds.values()
    number = min(n for n, kind in kinds.items() if kind == "head")
    kept = run["results"] / "default" / "trials" / f"trial_{number:04d}"
    assert sorted(p.name for p in kept.iterdir()) == ["head.weights.h5"]
    out = tmp_path / "head_model"
    assert "reload check passed" in run_cli("export", "--results", run["results"], "--trial",
                                            str(number), "--out", out).out
    data = load_data(None)
    images = np.stack(list(pipeline.images(data.test, 32).as_numpy_iterator()))
    probs = tf.saved_model.load(str(out))(tf.constant(images, tf.float32)).numpy()
    recorded = study.trials[number].user_attrs["result"]["test_accuracy"]
    assert abs(scores(probs, data.test.labels)[1] - recorded) <= 1.0 / len(images) + 1e-9


def test_predict_prints_top_labels(run: dict[str, Path], tmp_path: Path) -> None:
    from PIL import Image

    out = run["root"] / "best_model"
    if not out.exists():
        run_cli("export", "--results", run["results"], "--out", out)
    from automl.data.load import load_data

    data = load_data(None)
    image = next(pipeline.images(data.test, 28).as_numpy_iterator())
    files = []
    for name in ("a.png", "b.jpg"):
        Image.fromarray(image).save(tmp_path / name)
        files.append(str(tmp_path / name))
    result = json.loads(run_cli("predict", out, *files, "--top", "2", "--json").out)
    assert [r["file"] for r in result] == files
    labels = set((out / "labels.txt").read_text().splitlines())
    for item in result:
        assert len(item["predictions"]) == 2
        assert item["predictions"][0]["label"] in labels
        assert item["predictions"][0]["probability"] >= item["predictions"][1]["probability"]


def test_predict_reports_an_unreadable_image_and_predicts_the_others(
        run: dict[str, Path], tmp_path: Path) -> None:
    from PIL import Image

    out = run["root"] / "best_model"
    if not out.exists():
        run_cli("export", "--results", run["results"], "--out", out)
    good = [tmp_path / "a.png", tmp_path / "c.png"]
    for path in good:
        Image.fromarray(np.full((28, 28, 3), 128, np.uint8)).save(path)
    broken = tmp_path / "b.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    files = [good[0], broken, good[1]]
    done = run_cli("predict", out, *files, code=1)
    printed = done.out.splitlines()
    assert [line.split(":")[0] for line in printed] == [str(good[0]), str(good[1])]
    assert f"error: Image '{broken}' cannot be decoded" in done.err
    assert "error: 1 of 3 image(s) could not be predicted" in done.err
    assert "Traceback" not in done.err
    as_json = json.loads(run_cli("predict", out, *files, "--json", code=1).out)
    assert [("error" in item) for item in as_json] == [False, True, False]


def test_resume_runs_only_the_missing_trials(run: dict[str, Path]) -> None:
    again = ["search", "--space", run["space"], "--trials", "4", "--results", run["results"],
             *FAST]
    assert "3 of 4 trials finished" in run_cli(*again).out
    rows = csv_rows(run["results"] / "default" / "leaderboard.csv")
    assert sorted(int(r["trial"]) for r in rows) == [0, 1, 2, 3]
    study = load_study(run["results"])
    assert [t.number for t in study.trials if "start" in t.user_attrs] == [0]  # not queued again
    # already complete: nothing runs, nothing changes
    before = (run["results"] / "default" / "leaderboard.csv").read_bytes()
    run_cli(*again)
    assert (run["results"] / "default" / "leaderboard.csv").read_bytes() == before


@pytest.mark.parametrize(("argv", "message"), [
    (["search", "--trials", "0"], "--trials 0: expected a whole number of at least 1"),
    (["search", "--trials", "-3"], "--trials -3"),
    (["search", "--timeout", "-1"], "--timeout -1: expected a number of seconds >= 0"),
    (["search", "--data", "/no/such/folder"], "/no/such/folder"),
    (["search", "--space", "/no/such.yaml"], "/no/such.yaml"),
    (["export", "--study", "nothing-here", "--out", "x"], "there is no study 'nothing-here'"),
    (["predict", "/tmp", "x.png"], "is not a model exported by `automl export`"),
])
def test_bad_input_is_one_clear_message(argv: list[str], message: str, tmp_path: Path) -> None:
    if argv[0] in ("search", "export"):
        argv = [*argv, "--results", str(tmp_path / "results")]
    assert message in run_cli(*argv, code=2).err


def test_bad_space_stops_before_training_and_keeps_results(run: dict[str, Path],
                                                           tmp_path: Path) -> None:
    board = run["results"] / "default" / "leaderboard.csv"
    before = board.read_bytes()
    bad = tmp_path / "bad.yaml"
    bad.write_text("backbone: {choices: [efficientnet_lite0, vgg17]}\n")
    err = run_cli("search", "--space", bad, "--trials", "9", "--results", run["results"],
                  code=2).err
    assert "'vgg17' is not a known backbone" in err and str(bad) in err
    assert board.read_bytes() == before


def test_export_of_an_empty_study_is_refused(tmp_path: Path) -> None:
    from automl.search.study import open_study

    open_study(tmp_path, "empty", None, create=True)
    err = run_cli("export", "--results", tmp_path, "--study", "empty", "--out", tmp_path / "m",
                  code=2).err
    assert "no finished (COMPLETE) trial to export" in err
    assert not (tmp_path / "m").exists()
