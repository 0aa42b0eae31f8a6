"""Tests for automl.search.leaderboard: rows, ranking, per-backbone summary, atomic CSV writes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from automl.atomic import write_atomic
from automl.search.leaderboard import COLUMNS, best_row, rank, summary, trial_row, write_csv
from automl.space import DIMENSIONS


def _config(backbone: str = "efficientnet_lite0", **over: Any) -> dict[str, Any]:
    config = {"backbone": backbone, "image_size": 64, "freeze_depth": 1.0, "head_width": 128,
              "dropout": 0.2, "learning_rate": 1e-3, "augmentation": "none"}
    return {**config, **over}


def _complete(number: int, acc: float, loss: float, backbone: str = "efficientnet_lite0",
              test: float | None = None, seconds: float = 10.0,
              weights_file: str | None = None) -> dict[str, Any]:
    result = {"val_accuracy": acc, "val_loss": loss, "test_accuracy": test, "epochs": 7,
              "best_phase": 2, "train_seconds": seconds, "params": 1234, "cut": "block6a_add",
              "weights_file": weights_file}
    history = [{"epoch": e, "val_accuracy": acc} for e in range(1, 8)]
    return trial_row(number, "COMPLETE",
                     {"result": result, "config": _config(backbone), "history": history})


def _frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=COLUMNS)


def test_complete_row_has_every_column(tmp_path: Path) -> None:
    kept = tmp_path / "model.weights.h5"
    kept.write_bytes(b"x")
    row = _complete(3, 0.9, 0.3, test=0.85, weights_file=str(kept))
    assert set(row) == set(COLUMNS)  # the frame orders the columns
    assert row["trial"] == 3 and row["state"] == "COMPLETE"
    assert (row["val_accuracy"], row["val_loss"], row["test_accuracy"]) == (0.9, 0.3, 0.85)
    assert {k: row[k] for k in DIMENSIONS} == _config()
    assert (row["epochs"], row["best_phase"], row["params"], row["cut"]) == (7, 2, 1234,
                                                                            "block6a_add")
    assert row["weights_kept"] is True
    assert row["reason"] == ""
    kept.unlink()  # pruned by keep_weights later: the row says so
    assert _complete(3, 0.9, 0.3, weights_file=str(kept))["weights_kept"] is False
    assert _complete(3, 0.9, 0.3, weights_file=None)["weights_kept"] is False


def test_pruned_row_shows_best_intermediate_value_and_epochs_reached() -> None:
    row = trial_row(5, "PRUNED", {"config": _config()}, {1: 0.40, 2: 0.65, 3: 0.55})
    assert row["state"] == "PRUNED"
    assert row["val_accuracy"] == 0.65
    assert row["val_loss"] is None
    assert row["epochs"] == 3
    # with a recorded history, epochs reached is its length
    history = [{"epoch": e} for e in (1, 2, 3, 4)]
    row = trial_row(5, "PRUNED", {"config": _config(), "history": history}, {2: 0.5, 4: 0.6})
    assert (row["val_accuracy"], row["epochs"]) == (0.6, 4)
    # pruned before any report: nothing to show
    row = trial_row(6, "PRUNED", {"config": _config()}, {})
    assert row["val_accuracy"] is None and row["epochs"] is None


def test_interrupted_state_detail_is_shown_only_for_failed_trials() -> None:
    attrs = {"config": _config(), "state_detail": "INTERRUPTED",
             "reason": "interrupted by the user (Ctrl-C)"}
    row = trial_row(2, "FAIL", attrs, {1: 0.3})
    assert row["state"] == "INTERRUPTED"
    assert row["reason"] == "interrupted by the user (Ctrl-C)"
    assert row["val_accuracy"] == 0.3
    failed = trial_row(4, "FAIL", {"config": _config(), "state_detail": "FAIL",
                                   "reason": "the loss became NaN"})
    assert failed["state"] == "FAIL" and failed["reason"] == "the loss became NaN"
    # a finished trial ignores a stale state_detail
    assert trial_row(1, "COMPLETE", {"state_detail": "INTERRUPTED"})["state"] == "COMPLETE"


def test_rank_orders_states_then_accuracy_then_loss() -> None:
    rows = [
        trial_row(0, "FAIL", {"config": _config(), "reason": "boom"}),
        trial_row(1, "PRUNED", {"config": _config()}, {1: 0.99}),
        _complete(2, 0.80, 0.50),
        trial_row(3, "FAIL", {"config": _config(), "state_detail": "INTERRUPTED"}, {1: 0.9}),
        _complete(4, 0.90, 0.40),
        _complete(5, 0.90, 0.20),   # ties trial 4 on accuracy, lower loss: ranks first
        trial_row(6, "PRUNED", {"config": _config()}, {1: 0.70}),
        trial_row(7, "RUNNING", {"config": _config()}),
    ]
    ranked = rank(_frame(rows))
    assert ranked["trial"].tolist() == [5, 4, 2, 1, 6, 7, 3, 0]
    assert ranked["state"].tolist() == ["COMPLETE"] * 3 + ["PRUNED"] * 2 + [
        "RUNNING", "INTERRUPTED", "FAIL"]
    assert list(ranked.index) == list(range(8))
    assert list(ranked.columns) == COLUMNS


def test_rank_full_tie_keeps_trial_order_and_empty_frame() -> None:
    ranked = rank(_frame([_complete(9, 0.5, 0.5), _complete(1, 0.5, 0.5)]))
    assert ranked["trial"].tolist() == [1, 9]
    empty = rank(_frame([]))
    assert empty.empty and list(empty.columns) == COLUMNS


def test_best_row() -> None:
    ranked = rank(_frame([trial_row(0, "PRUNED", {}, {1: 1.0}), _complete(1, 0.7, 0.6),
                          _complete(2, 0.8, 0.9)]))
    best = best_row(ranked)
    assert best is not None and best["trial"] == 2
    assert best_row(rank(_frame([trial_row(0, "PRUNED", {}, {1: 1.0}),
                                 trial_row(1, "FAIL", {})]))) is None


def test_summary_groups_finished_trials_per_backbone() -> None:
    rows = [
        _complete(0, 0.70, 0.9, "vgg16", test=0.60, seconds=10.0),
        _complete(1, 0.90, 0.3, "efficientnet_lite0", test=0.88, seconds=4.0),
        _complete(2, 0.80, 0.5, "efficientnet_lite0", test=0.91, seconds=6.0),
        _complete(3, 0.75, 0.6, "vgg16", test=0.70, seconds=20.0),
        trial_row(4, "PRUNED", {"config": _config("resnet50")}, {1: 0.99}),
        trial_row(5, "FAIL", {"config": _config("vgg16")}),
    ]
    table = summary(rank(_frame(rows)))
    assert list(table.columns) == ["backbone", "trials", "best_val_accuracy",
                                   "mean_val_accuracy", "best_test_accuracy",
                                   "mean_train_seconds", "best_trial"]
    assert table["backbone"].tolist() == ["efficientnet_lite0", "vgg16"]  # resnet50: no finish
    lite, vgg = table.iloc[0], table.iloc[1]
    assert (lite["trials"], lite["best_trial"]) == (2, 1)
    assert lite["best_val_accuracy"] == pytest.approx(0.90)
    assert lite["mean_val_accuracy"] == pytest.approx(0.85)
    assert lite["best_test_accuracy"] == pytest.approx(0.91)
    assert lite["mean_train_seconds"] == pytest.approx(5.0)
    assert (vgg["trials"], vgg["best_trial"]) == (2, 3)
    assert vgg["mean_val_accuracy"] == pytest.approx(0.725)


def test_summary_without_finished_trials_is_empty_with_columns() -> None:
    table = summary(rank(_frame([trial_row(0, "PRUNED", {"config": _config()}, {1: 0.5})])))
    assert table.empty
    assert "best_trial" in table.columns and "backbone" in table.columns


def test_write_csv_round_trips_and_leaves_no_temp_files(tmp_path: Path) -> None:
    ranked = rank(_frame([_complete(0, 0.123456789, 0.5), _complete(1, 0.9, 0.25),
                          trial_row(2, "PRUNED", {"config": _config()}, {1: 0.4})]))
    path = tmp_path / "out" / "leaderboard.csv"
    assert write_csv(ranked, path) == path
    assert sorted(p.name for p in path.parent.iterdir()) == ["leaderboard.csv"]
    back = pd.read_csv(path)
    assert list(back.columns) == COLUMNS
    assert back["trial"].tolist() == [1, 0, 2]
    assert back["val_accuracy"].tolist() == [0.9, 0.123457, 0.4]  # float_format %.6g
    assert back["state"].tolist() == ["COMPLETE", "COMPLETE", "PRUNED"]
    # overwrite in place
    write_csv(ranked.head(1), path)
    assert pd.read_csv(path)["trial"].tolist() == [1]
    assert sorted(p.name for p in path.parent.iterdir()) == ["leaderboard.csv"]


def test_write_csv_keeps_large_integers_exact(tmp_path: Path) -> None:
    done = _complete(0, 0.9, 0.3)
    done["params"] = 23_587_712  # resnet50 without its top
    ranked = rank(_frame([done, trial_row(1, "PRUNED", {"config": _config()}, {1: 0.5})]))
    path = write_csv(ranked, tmp_path / "leaderboard.csv")
    assert pd.read_csv(path)["params"].iloc[0] == 23_587_712


def test_failed_writer_leaves_the_old_file_byte_identical(tmp_path: Path) -> None:
    path = tmp_path / "leaderboard.csv"
    write_csv(rank(_frame([_complete(0, 0.5, 0.5)])), path)
    before = path.read_bytes()

    def half_then_crash(tmp: Path) -> None:
        tmp.write_text("trial,state\n1,COMPL", encoding="utf-8")
        raise RuntimeError("disk pulled out")

    with pytest.raises(RuntimeError, match="disk pulled out"):
        write_atomic(path, half_then_crash)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["leaderboard.csv"]

    with pytest.raises(KeyboardInterrupt):  # BaseException too
        write_atomic(path, lambda tmp: (_ for _ in ()).throw(KeyboardInterrupt()))
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["leaderboard.csv"]


def test_write_atomic_keeps_the_target_suffix_for_the_writer(tmp_path: Path) -> None:
    seen: list[str] = []

    def writer(tmp: Path) -> None:
        seen.append(tmp.name)
        tmp.write_bytes(b"w")

    write_atomic(tmp_path / "model.weights.h5", writer)
    assert seen[0].startswith(".tmp-") and seen[0].endswith(".weights.h5")
    assert (tmp_path / "model.weights.h5").read_bytes() == b"w"


def test_kept_weights_are_found_under_the_artifact_root_given_here(tmp_path: Path) -> None:
    """Another machine mounts the shared artefacts elsewhere: the relative path still finds them."""
    mounted = tmp_path / "mnt" / "artifacts"
    (mounted / "trial_0003").mkdir(parents=True)
    (mounted / "trial_0003" / "model.weights.h5").write_bytes(b"x")
    attrs = {"result": {"val_accuracy": 0.9, "weights_file": "/elsewhere/trial_0003/model.w.h5"},
             "config": _config(), "weights": "trial_0003/model.weights.h5",
             "host": "gpu-2:4242"}
    assert trial_row(3, "COMPLETE", attrs)["weights_kept"] is False  # the searching machine's
    row = trial_row(3, "COMPLETE", attrs, artifacts=mounted)
    assert row["weights_kept"] is True and row["host"] == "gpu-2:4242"


def test_a_stale_trial_says_its_worker_stopped_and_which_trial_retries_it() -> None:
    import optuna

    from automl.search.leaderboard import from_study

    study = optuna.create_study(direction="maximize")
    dead = study.ask()
    dead.set_user_attr("host", "gone:1")
    study.tell(dead, state=optuna.trial.TrialState.FAIL)  # as fail_stale_trials leaves it
    retry = study.ask()
    retry.set_user_attr("retry_of", 0)
    study._storage.set_trial_system_attr(retry._trial_id, "failed_trial", 0)
    study.tell(retry, 0.8)
    rows = from_study(study).set_index("trial")
    assert rows.loc[0, "state"] == "FAIL" and rows.loc[0, "reason"] == (
        "its worker stopped sending heartbeats (killed, crashed or cut off); retried as trial 1")
    assert rows.loc[1, "reason"] == "retry of trial 0" and rows.loc[0, "host"] == "gone:1"
