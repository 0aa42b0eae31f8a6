"""The `automl` command: parse, call the library, print. No TensorFlow import at module level."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from automl.errors import AutoMLError, ConfigError

log = logging.getLogger("automl")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="automl", description="Search transfer-learning image "
                                "classifiers (pretrained Keras backbones + Optuna).")
    p.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("search", help="run (or resume) a search")
    s.add_argument("--space", help="search space: a YAML file, or the name of a packaged "
                   "space (default, wide); default: default")
    s.add_argument("--data", help="class-folder directory, train/validation directory, .npz, or "
                   "cifar10|cifar100|mnist|fashion_mnist (default: embedded Animal-MNIST)")
    _study_args(s)
    s.add_argument("--trials", type=int, default=50, help="finished trials the study ends with")
    s.add_argument("--timeout", type=float, help="seconds after which no new trial starts")
    s.add_argument("--driver", default="optuna", choices=["optuna", "keras-tuner"],
                   help="who picks the trials: Optuna's TPE with the staged schedule (default), "
                   "or a keras-tuner algorithm")
    s.add_argument("--algorithm", choices=["random", "bayesian", "hyperband"],
                   help="keras-tuner's algorithm (default: bayesian); --driver keras-tuner only")
    s.add_argument("--pruner", choices=["median", "hyperband", "halving", "none"],
                   help="Optuna pruner (default: median); --driver optuna only")
    s.add_argument("--screen-fraction", type=float,
                   help="share of trials that screen head settings on cached features before "
                   "fine-tuning and augmentation are tried on the best (1 = no staging; "
                   "default 0.8); --driver optuna only")
    s.add_argument("--max-latency-ms", type=float, metavar="MS",
                   help="train only architectures whose exported SavedModel answers one image "
                   "within MS milliseconds on this machine with TensorFlow (measured once per "
                   "architecture; TFLite/ONNX run faster, see the README); the others end as "
                   "INFEASIBLE; --driver optuna only")
    s.add_argument("--max-size-mb", type=float, metavar="MB",
                   help="likewise for the float32 .tflite file's size in MB (10^6 bytes)")
    s.add_argument("--epochs", type=int, default=10, help="max epochs of the head phase")
    s.add_argument("--fine-tune-epochs", type=int, default=5,
                   help="max epochs of the fine-tuning phase")
    s.add_argument("--batch-size", type=int, default=64)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--val-split", type=float, default=0.15)
    s.add_argument("--test-split", type=float, default=0.15)
    s.add_argument("--no-feature-cache", action="store_true",
                   help="run the frozen backbone live in every epoch (slow; for comparison)")
    s.add_argument("--augment-views", type=int, default=4, metavar="K",
                   help="cached augmented views per training image for light/heavy "
                   "augmentation (flip always uses its 2 exact views); 0 runs augmentation live "
                   "through the backbone in every epoch (default: 4)")
    s.add_argument("--cache-memory", type=int, default=2048, metavar="MB",
                   help="memory for cached backbone activations")
    s.add_argument("--in-process", action="store_true",
                   help="run trials in this process instead of a worker process that is "
                   "replaced when its memory grows (for debugging; memory then grows)")
    s.add_argument("--keep-weights", type=int, default=5, metavar="N",
                   help="keep the weights of the best N trials")
    s.add_argument("--weights", help="'none' for random initialisation, or a weights file")
    s.add_argument("--weights-dir", help="folder of Keras weights files (named as Keras does)")
    s.add_argument("--quiet", action="store_true", help="only warnings and the final summary")
    s.add_argument("--heartbeat", type=int, default=60, metavar="SECONDS",
                   help="with --storage: seconds between a worker's heartbeats (default 60)")
    s.add_argument("--heartbeat-grace", type=int, metavar="SECONDS",
                   help="with --storage: a trial whose worker is silent this long is failed "
                   "and retried by another worker (default 3 heartbeats)")

    lb = sub.add_parser("leaderboard", help="print a study's leaderboard")
    _study_args(lb)
    lb.add_argument("--top", type=int, default=10)
    lb.add_argument("--csv", help="write the full leaderboard to this CSV file")
    lb.add_argument("--summary-csv", help="write the per-backbone summary to this CSV file")

    e = sub.add_parser("export", help="export the best (or a given) trial as a SavedModel")
    _study_args(e)
    e.add_argument("--trial", type=int, help="trial number (default: the best)")
    e.add_argument("--data", help="the study's data where it is now, if it moved since the "
                   "search (default: where the search read it)")
    e.add_argument("--out", required=True, help="output folder")
    e.add_argument("--format", default="savedmodel", metavar="{savedmodel,tflite,onnx}",
                   help="savedmodel (default), tflite (model.tflite) or onnx (model.onnx, needs "
                   "automl[onnx]): checked against the Keras model on the test split, with "
                   "its latency and size measured")
    e.add_argument("--quantize", default="none", metavar="{none,float16,int8}",
                   help="with --format tflite: float16 weights, or int8 post-training "
                   "quantization calibrated on training images (default none: float32)")

    pr = sub.add_parser("predict", help="classify image files with an exported model")
    pr.add_argument("model_dir")
    pr.add_argument("images", nargs="+")
    pr.add_argument("--top", type=int, default=1)
    pr.add_argument("--json", action="store_true")

    r = sub.add_parser("report", help="write results/<study>/report.html (plots, test metrics, "
                       "Grad-CAM) and its PNGs")
    _study_args(r)
    r.add_argument("--data", help="the study's data where it is now, if it moved since the "
                   "search (default: where the search read it)")

    i = sub.add_parser("inspect", help="rank label issues and find duplicates across splits "
                       "(results/<study>/label_issues.csv, duplicates.csv)")
    _study_args(i)
    i.add_argument("--data", help="the study's data where it is now, if it moved since the "
                   "search (default: where the search read it)")

    b = sub.add_parser("backbones", help="list the backbones and where their weights come from")
    b.add_argument("--weights-dir", help="folder of Keras weights files to consider")
    return p


def _study_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--results", default="results", help="results folder (default: results)")
    p.add_argument("--study", default="default", help="study name (default: default)")
    p.add_argument("--storage", help="Optuna storage URL (postgresql://user@host/db, "
                   "mysql+pymysql://..., sqlite:///file.db) or journal:FILE (a journal file "
                   "on a shared filesystem); default: SQLite in the study folder")
    p.add_argument("--artifacts", metavar="DIR", help="folder for kept weights that every "
                   "worker (and export) reaches (default: <results>/<study>/trials)")


def _show_warning(message: Warning | str, category: type, *_: object, **__: object) -> None:
    """Python warnings (e.g. skipped image files) as one plain line on stderr."""
    print(f"warning: {message}", file=sys.stderr)


def cmd_search(a: argparse.Namespace) -> int:
    from automl.config import RunConfig
    from automl.search.cost import Limits
    from automl.search.run import SearchRequest, run_search

    run = RunConfig(epochs=a.epochs, fine_tune_epochs=a.fine_tune_epochs,
                    batch_size=a.batch_size, seed=a.seed, feature_cache=not a.no_feature_cache,
                    cache_memory_mb=a.cache_memory, keep_weights=a.keep_weights,
                    weights=a.weights, weights_dir=a.weights_dir, augment_views=a.augment_views)
    # unset --pruner / --screen-fraction stay None: validate() refuses them with keras-tuner
    req = SearchRequest(space=a.space, data=a.data, results=a.results, study=a.study,
                        storage=a.storage, trials=a.trials, timeout=a.timeout,
                        pruner=a.pruner, screen_fraction=a.screen_fraction,
                        val_split=a.val_split, test_split=a.test_split, run=run,
                        artifacts=a.artifacts, heartbeat=a.heartbeat,
                        heartbeat_grace=a.heartbeat_grace, driver=a.driver,
                        algorithm=a.algorithm, in_process=a.in_process,
                        limits=Limits(a.max_latency_ms, a.max_size_mb))
    from automl.search.progress import make_progress

    study = run_search(req, progress=make_progress(sys.stdout, quiet=a.quiet))
    _print_board(a, study, top=5)
    return 0


def _print_board(a: argparse.Namespace, study: object, top: int) -> None:
    import pandas as pd

    from automl.search import leaderboard

    board = leaderboard.from_study(study)
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        cols = ["trial", "state", "val_accuracy", "test_accuracy", "backbone", "image_size",
                "freeze_depth", "head_width", "dropout", "learning_rate", "augmentation",
                "epochs", "train_seconds"]
        cols += ["host"] if board["host"].astype(bool).any() else []  # several workers
        print(board[cols].head(top).to_string(index=False, float_format=lambda v: f"{v:.4g}"))
        print()
        print(leaderboard.summary(board).to_string(index=False,
                                                   float_format=lambda v: f"{v:.4g}"))
    written = Path(a.results) / a.study / "leaderboard.csv"
    if written.is_file():  # not on a machine that only reads a shared --storage
        print(f"\nleaderboard: {written}")


def cmd_leaderboard(a: argparse.Namespace) -> int:
    from automl.search import leaderboard
    from automl.search.study import artifact_root, open_study

    study = open_study(Path(a.results), a.study, a.storage, create=False)
    root = artifact_root(a.results, a.study, a.artifacts, study, a.storage)
    board = leaderboard.from_study(study, root)
    for path, frame in ((a.csv, board), (a.summary_csv, leaderboard.summary(board))):
        if path:
            try:
                leaderboard.write_csv(frame, path)
            except OSError as exc:
                raise ConfigError(f"cannot write {path}: {exc.strerror}; expected a writable "
                                  "file path.") from None
    _print_board(a, study, top=a.top)
    return 0


def cmd_export(a: argparse.Namespace) -> int:
    from automl.report.export import export_study

    report = export_study(Path(a.results), a.study, a.storage, a.trial, Path(a.out),
                          artifacts=a.artifacts, data=a.data, fmt=a.format, quantize=a.quantize)
    if a.format in ("tflite", "onnx"):
        print((tflite_summary if a.format == "tflite" else onnx_summary)(report))
        _print_calibration(report.calibration)
        return 0
    test = ""
    if report.reloaded_test_accuracy is not None:
        test = (f", test accuracy {report.reloaded_test_accuracy:.4f} reloaded"
                f" (recorded {report.recorded_test_accuracy:.4f})"
                if report.recorded_test_accuracy is not None else "")
    print(f"exported trial {report.trial} (val accuracy {report.val_accuracy:.4f}{test}) to "
          f"{report.out}; reload check passed (max difference {report.max_abs_diff:.2g})")
    _print_calibration(report.calibration)
    return 0


def _print_calibration(calibration: Any) -> None:
    """The export's temperature and what it does, in one line (nothing when not calibrated)."""
    if calibration is not None:
        print(f"calibrated: {calibration.describe()}")


def _test_accuracies(converted: float | None, keras: float | None, name: str) -> str:
    """Both test accuracies for a summary line; empty without a test split."""
    if converted is None:
        return ""
    return f"test accuracy {converted:.4f} ({name}) against {keras:.4f} (Keras); "


def tflite_summary(r: Any) -> str:
    """What a TFLite export wrote and measured, in a few lines."""
    acc = _test_accuracies(r.tflite_test_accuracy, r.keras_test_accuracy, "TFLite")
    lines = [f"exported trial {r.trial} as TFLite ({r.quantize}) to {r.out}/model.tflite: "
             f"{acc}{r.size_mb:.2f} MB, batch-1 latency {r.latency_ms:.2f} ms "
             f"({r.interpreter}, {r.threads} threads); max difference from Keras "
             f"{r.max_abs_diff:.2g}"]
    if r.quantize != "none":
        lines.append(f"  float32 conversion of the same model: {r.float32_size_mb:.2f} MB "
                     f"({r.size_mb / r.float32_size_mb:.2f}x the size), "
                     f"{r.float32_latency_ms:.2f} ms ({r.float32_latency_ms / r.latency_ms:.2f}x "
                     f"the latency of {r.quantize})")
    return "\n".join(lines)


def onnx_summary(r: Any) -> str:
    """What an ONNX export wrote and measured, in one line."""
    acc = _test_accuracies(r.onnx_test_accuracy, r.keras_test_accuracy, "ONNX")
    return (f"exported trial {r.trial} as ONNX to {r.out}/model.onnx ({r.converter}): {acc}"
            f"{r.size_mb:.2f} MB, batch-1 latency {r.latency_ms:.2f} ms ({r.runtime}, "
            f"{r.threads} threads); max difference from Keras {r.max_abs_diff:.2g}")


def cmd_predict(a: argparse.Namespace) -> int:
    from automl.report.export import predict_files

    results = predict_files(Path(a.model_dir), a.images, top=a.top)
    failed = [item for item in results if "error" in item]
    if a.json:
        print(json.dumps(results, indent=2, ensure_ascii=False))
    else:
        for item in results:
            if "error" not in item:
                preds = ", ".join(f"{p['label']} {p['probability']:.3f}"
                                  for p in item["predictions"])
                print(f"{item['file']}: {preds}")
    for item in failed:  # the others were predicted: say which ones were not, and why
        print(f"error: {item['error']}", file=sys.stderr)
    if failed:
        print(f"error: {len(failed)} of {len(results)} image(s) could not be predicted",
              file=sys.stderr)
    return 1 if failed else 0


def cmd_backbones(a: argparse.Namespace) -> int:
    from automl.backbones.table import backbones_table

    print(backbones_table(a.weights_dir).to_string(index=False))
    return 0


def cmd_report(a: argparse.Namespace) -> int:
    from automl.report.report import build_report

    report = build_report(Path(a.results), a.study, a.storage, a.artifacts, a.data)
    for text in report.notes:
        print(f"note: {text}")
    if report.test is not None:
        print(f"best trial {report.test.trial}: test accuracy {report.test.accuracy:.4f} "
              f"({int(report.test.confusion.sum())} test images)")
    print(f"report: {report.html} ({len(report.images)} figures in "
          f"{report.html.parent / 'report'})")
    return 0


def cmd_inspect(a: argparse.Namespace) -> int:
    from automl.report.inspect import inspect_study

    found = inspect_study(Path(a.results), a.study, a.storage, a.artifacts, a.data)
    cached = (f"extracted for {', '.join(found.extracted)}" if found.extracted
              else "from the feature cache")
    print(f"inspected with trial {found.trial}'s backbone: {found.backbone} at "
          f"{found.image_size} px (pooled activations {cached})")
    labels = found.labels
    print(f"label issues: {len(labels)} training and validation images ranked, most suspicious "
          "first:")
    for row in labels.head(5).itertuples():
        print(f"  {row.source} ({row.split}): given {row.given}, suggested {row.suggested}, "
              f"score {row.score:.4f}")
    print(f"duplicates: {len(found.pairs)} pair(s)")
    for row in found.counts.itertuples():
        print(f"  {row.split_a}-{row.split_b}: {row.pairs} pair(s), {row.exact} exact; "
              f"{row.images_b} {row.split_b} image(s) ({row.share_b:.1%}) have a twin in "
              f"{row.split_a}")
    print("wrote " + ", ".join(str(p) for p in found.files))
    return 0


COMMANDS = {"search": cmd_search, "leaderboard": cmd_leaderboard, "export": cmd_export,
            "predict": cmd_predict, "backbones": cmd_backbones, "report": cmd_report,
            "inspect": cmd_inspect}


def _needs_tensorflow(args: argparse.Namespace) -> bool:
    """Whether this process imports TensorFlow. A search on in-memory data (the embedded
    default, an .npz) leaves it to its trial worker: a faster start, hundreds of MB less here.
    keras-tuner, --in-process, image folders (checked with TensorFlow's decoders) and Keras
    datasets need it here too."""
    if args.command == "backbones":
        return False
    if args.command == "search":
        in_memory = args.data is None or str(args.data).lower().endswith(".npz")
        return args.in_process or args.driver == "keras-tuner" or not in_memory
    return True


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING,
                        format="%(levelname)s: %(message)s")
    warnings.showwarning = _show_warning
    logging.getLogger("automl").setLevel(logging.DEBUG if args.debug else logging.INFO)
    try:
        if _needs_tensorflow(args):
            from automl.trial.quiet import quiet_tensorflow

            quiet_tensorflow()
        return COMMANDS[args.command](args)
    except AutoMLError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: finished trials are kept; run the same command again to resume.",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
