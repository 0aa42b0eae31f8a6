"""Export a trial as a TensorFlow SavedModel (+ .keras + labels.txt) and predict with it.

The SavedModel takes a batch of RGB images (uint8 or float, 0..255) of any height and width,
resizes them inside the graph exactly as training did, and returns class probabilities in the
order of ``labels.txt``, calibrated by a temperature fitted on the validation split
(:mod:`automl.report.calibrate`; T, NLL and ECE before and after are in ``automl.json``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from automl.atomic import staged_folder
from automl.config import TrialConfig
from automl.data import pipeline
from automl.errors import ConfigError, DataError
from automl.search.record import StudyRecord

SERVING_NOTE = ("serving_default: images [batch, height, width, 3] float32 0..255 -> "
                "probabilities, calibrated (softmax(log p / temperature))")
CHECK_TOLERANCE = 1e-5  # reloaded float SavedModel against the calibrated in-memory model


@dataclass(frozen=True)
class ExportReport:
    """What an export wrote and checked."""

    out: Path
    trial: int
    val_accuracy: float
    recorded_test_accuracy: float | None
    reloaded_test_accuracy: float | None
    max_abs_diff: float
    calibration: Any = None  # automl.report.calibrate.Calibration, or None (not calibrated)


def pick_trial(board: Any, trial: int | None) -> Any:
    """The leaderboard row to export: the best finished trial, or trial ``trial``."""
    if trial is None:
        if board.empty or (board["state"] == "COMPLETE").sum() == 0:
            raise ConfigError("the study has no finished (COMPLETE) trial to export yet; run "
                              "`automl search` until at least one trial completes.")
        rows = board[(board["state"] == "COMPLETE") & board["weights_kept"]]
        if rows.empty:
            raise ConfigError("no finished trial has its weights kept; re-run the search.")
        return rows.iloc[0]
    rows = board[board["trial"] == trial]
    if rows.empty:
        raise ConfigError(f"--trial {trial}: the study has no trial {trial} (trials: "
                          f"{', '.join(map(str, sorted(board['trial'].tolist())))}).")
    row = rows.iloc[0]
    if row["state"] != "COMPLETE":
        raise ConfigError(f"--trial {trial}: that trial is {row['state']}, not COMPLETE; only a "
                          "finished trial has weights to export.")
    if not row["weights_kept"]:
        raise ConfigError(f"--trial {trial}: its weights were not kept (only the best trials' "
                          "are). Export one of the best trials, or re-run with --keep-weights.")
    return row


def build_trained(row: Any, class_names: list[str], weights_file: Path,
                  result: dict[str, Any] | None = None) -> Any:
    """Rebuild a trial's inference model (same builder as the search) with its saved weights.

    ``result`` is the trial's recorded result. A trial that trained only a head on cached
    activations kept only the head (``weights_kind`` "head"): the backbone is rebuilt from the
    pretrained weights it was given (found again and checked by their identity), and the head's
    weights go on top.
    """
    from automl.backbones.registry import get_spec
    from automl.backbones.weights import recorded_source
    from automl.errors import WeightsError
    from automl.trial.model import build_model, reset_keras

    config = TrialConfig.from_params(row.to_dict())
    spec = get_spec(config.backbone)
    result = result or {}
    if result.get("weights_kind") != "head":
        reset_keras(0)
        tm = build_model(config, spec, len(class_names), None)
        tm.inference.load_weights(str(weights_file))
        return tm
    identity = str(result.get("backbone_identity", ""))
    try:
        source = recorded_source(spec, config.image_size, result.get("backbone_weights"),
                                 identity)
    except WeightsError as exc:
        raise ConfigError(f"trial {int(row['trial'])}: {exc}") from None
    # random initialisation (--weights none) is reproduced from the run seed it recorded
    reset_keras(int(identity.split(":", 1)[1]) if identity.startswith("random:") else 0)
    tm = build_model(config, spec, len(class_names), source.weights)
    tm.head.load_weights(str(weights_file))
    return tm


def export_trial(row: Any, class_names: list[str], weights_file: Path, out: Path,
                 check_images: np.ndarray, test: tuple[Any, np.ndarray | None] | None = None,
                 result: dict[str, Any] | None = None,
                 calibrate_on: tuple[Any, Any] | None = None) -> ExportReport:
    """Write ``out`` (SavedModel, model.keras, labels.txt, automl.json) and verify the round trip.

    ``calibrate_on`` (the validation and test ``Split``, test may be None): a temperature is
    fitted on the validation split's probabilities and kept inside the SavedModel's graph
    (:func:`automl.report.calibrate.calibrate`); T and the test NLL and ECE before and after go
    into automl.json. ``check_images`` (a few validation images, uint8 HxWx3) are predicted by
    the reloaded SavedModel and compared with the in-memory model's calibrated probabilities;
    any difference above 1e-5 fails the export and leaves ``out`` untouched. ``test`` (a batched
    (images, labels) dataset, and the labels) re-measures test accuracy with the reloaded model;
    a difference of more than one image fails the export.
    """
    import tensorflow as tf

    from automl.report.calibrate import calibrate_model, calibrated
    from automl.report.converted import describe
    from automl.report.metrics import as_multiclass
    from automl.trial.layers import with_probabilities
    from automl.trial.run import scores
    from automl.trial.serving import serving_module

    tm = build_trained(row, class_names, weights_file, result)
    size = int(row["image_size"])
    calibration = None if calibrate_on is None else calibrate_model(tm, *calibrate_on, size)
    temperature = None if calibration is None else calibration.temperature
    module = serving_module(tm.inference, size, len(class_names), temperature)
    out = Path(out)
    with staged_folder(out) as staging:
        tf.saved_model.save(module, str(staging), signatures={
            "serving_default": module.__call__.get_concrete_function(),
            "serving_uint8": module.predict_uint8.get_concrete_function()})
        # the Keras model serves what the SavedModel serves (two columns, calibrated)
        with_probabilities(tm.inference, tm.binary, temperature).save(
            str(staging / "model.keras"))
        describe(staging, class_names, row, format="savedmodel", input=SERVING_NOTE,
                 calibration=None if calibration is None else calibration.as_dict())
        expected = as_multiclass(tm.inference.predict(check_images.astype(np.float32),
                                                      verbose=0))
        if temperature is not None:
            expected = calibrated(expected, temperature)
        reloaded = tf.saved_model.load(str(staging))
        got = reloaded(tf.constant(check_images, tf.float32)).numpy()
        got8 = reloaded.predict_uint8(tf.constant(check_images, tf.uint8)).numpy()
        diff = float(max(np.max(np.abs(expected - got)), np.max(np.abs(expected - got8))))
        if not diff <= CHECK_TOLERANCE:
            raise ConfigError(f"export check failed: the reloaded SavedModel's predictions differ "
                              f"from the trained model's by {diff:.3g}; nothing was written.")
        odd = tf.image.resize(check_images[:2], (size + 7, size * 2 - 3)).numpy()
        if reloaded(tf.constant(odd, tf.float32)).shape != expected[:2].shape:
            raise ConfigError("export check failed: the SavedModel does not accept other sizes.")
        reloaded_test = None
        recorded = _recorded_test(row)
        if test is not None:
            probs = predict_batches(reloaded, test[0])
            labels = np.concatenate([y for _, y in test[0]]) if test[1] is None else test[1]
            reloaded_test = scores(probs, labels)[1]
            # cached-feature evaluation may round one borderline image differently, never more
            if recorded is not None and abs(reloaded_test - recorded) > 1.0 / len(labels) + 1e-9:
                raise ConfigError(
                    f"export check failed: the reloaded SavedModel's test accuracy "
                    f"{reloaded_test:.4f} differs from the recorded {recorded:.4f}; nothing was "
                    "written.")
    return ExportReport(out, int(row["trial"]), float(row["val_accuracy"]), recorded,
                        reloaded_test, diff, calibration)


def _recorded_test(row: Any) -> float | None:
    value = row.get("test_accuracy")
    return None if value is None or np.isnan(value) else float(value)


def predict_batches(model: Any, batches: Any) -> np.ndarray:
    """Probabilities of a reloaded SavedModel over batches of (images, labels)."""
    import tensorflow as tf

    return np.concatenate([model(tf.cast(x, tf.float32)).numpy() for x, _ in batches])


#: the model file of each export format, as ``automl export`` writes it
MODEL_FILES = {"savedmodel": "saved_model.pb", "tflite": "model.tflite", "onnx": "model.onnx"}


def load_exported(model_dir: Path) -> tuple[Callable[[np.ndarray], np.ndarray], list[str]]:
    """An exported model (a SavedModel, a TFLite or an ONNX export) as a function of one RGB
    image (its probabilities), and its labels; ConfigError if the folder is not an export."""
    model_dir = Path(model_dir)
    labels = model_dir / "labels.txt"
    fmt = next((f for f, name in MODEL_FILES.items() if (model_dir / name).is_file()), None)
    if fmt is None or not labels.is_file():
        raise ConfigError(f"{model_dir} is not a model exported by `automl export` (expected "
                          "saved_model.pb, model.tflite or model.onnx, and labels.txt in it).")
    names = labels.read_text(encoding="utf-8").splitlines()
    if fmt != "savedmodel":
        content = (model_dir / MODEL_FILES[fmt]).read_bytes()
        if fmt == "tflite":
            from automl.report.tflite import TFLiteModel

            return TFLiteModel(content, 1).predict_image, names
        from automl.report.onnx_export import OnnxModel, require

        require(("onnxruntime",), "an ONNX export (model.onnx)")
        return OnnxModel(content, 1).predict_image, names
    import tensorflow as tf

    saved = tf.saved_model.load(str(model_dir))
    return (lambda image: saved(tf.constant(image[None], tf.float32)).numpy()[0]), names


def predict_files(model_dir: Path, files: list[str], top: int = 1) -> list[dict[str, Any]]:
    """Top-``top`` labels and probabilities for each image file; a file that cannot be read
    or decoded gets ``{"file": ..., "error": why}`` instead, and the others are still predicted."""
    from automl.data.images import load_rgb_image

    predict, labels = load_exported(model_dir)
    results: list[dict[str, Any]] = []
    for name in files:
        try:
            image = load_rgb_image(name)
        except DataError as exc:
            results.append({"file": name, "error": str(exc)})
            continue
        probs = predict(image)
        order = np.argsort(-probs)[:max(1, top)]
        results.append({"file": name, "predictions": [
            {"label": labels[i], "probability": float(probs[i])} for i in order]})
    return results


def study_data(study: Any, data: str | None = None) -> Any:
    """The study's data, loaded as the search loaded it (splits and seed recorded); ``data``
    (``--data``) names where it is now when it has moved since the search."""
    from automl.data.load import load_data

    meta = StudyRecord.of(study).data or {}
    return load_data(data if data is not None else meta.get("data"),
                     val_split=meta.get("val_split", 0.15),
                     test_split=meta.get("test_split", 0.15), seed=meta.get("seed", 0))


def export_study(results: Path, study_name: str, storage: str | None, trial: int | None,
                 out: Path, check: int = 32, artifacts: str | None = None,
                 data: str | None = None, fmt: str = "savedmodel",
                 quantize: str = "none") -> Any:
    """Export the best (or ``trial``) trial of a study, checking it against the study's data.

    Kept weights are looked up under ``artifacts`` (default: the folder the search recorded, or
    ``<results>/<study>/trials``), so any machine that reaches the storage and that folder can
    export. ``data`` is the study's data where it is now (default: where the search read it).
    ``fmt`` "tflite" writes a verified ``model.tflite`` (``quantize``: none, float16, int8) and
    returns a :class:`~automl.report.tflite.TFLiteReport`; "onnx" a verified ``model.onnx``
    (:class:`~automl.report.onnx_export.OnnxReport`); else an :class:`ExportReport`. Every
    format holds the same temperature, fitted on the validation split
    (:func:`automl.report.calibrate.calibrate_model`), inside its graph.
    """
    from automl.trial.tflite_convert import QUANTIZATIONS

    if fmt not in MODEL_FILES:
        raise ConfigError(f"--format {fmt}: expected savedmodel, tflite or onnx.")
    if quantize not in QUANTIZATIONS:
        raise ConfigError(f"--quantize {quantize}: expected one of {', '.join(QUANTIZATIONS)}.")
    if quantize != "none" and fmt != "tflite":
        raise ConfigError(f"--quantize {quantize} applies to --format tflite only.")
    from automl.search import leaderboard
    from automl.search.record import StudyRecord, TrialRecord
    from automl.search.study import artifact_root, open_study
    from automl.trial.run import weights_path

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: that is a file; expected a folder to write the model to.")
    if fmt == "onnx":
        from automl.report.onnx_export import require

        require()  # before any work: one line telling how to install what is missing
    if out.exists() and not any((out / name).is_file() for name in MODEL_FILES.values()) \
            and any(out.iterdir()):
        raise ConfigError(f"--out {out}: the folder exists and is not an earlier export; "
                          "choose an empty or new folder.")
    study = open_study(Path(results), study_name, storage, create=False)
    root = artifact_root(results, study_name, artifacts, study, storage)
    board = leaderboard.from_study(study, root)
    done = board[board["state"] == "COMPLETE"]
    if trial is None and not done.empty and not done["weights_kept"].any():
        raise ConfigError(f"no finished trial has its weights under {root}; pass --artifacts "
                          "DIR with the folder the search kept them in (its --artifacts), or "
                          "re-run the search.")
    row = pick_trial(board, trial)
    number = int(row["trial"])
    chosen = TrialRecord.of(study.get_trials(deepcopy=False)[number])
    relative = chosen.weights
    weights = root / relative if relative else weights_path(root, number)
    if not weights.is_file():
        raise ConfigError(f"the weights of trial {number} ({weights}) are missing; they may have "
                          "been deleted. Export another trial with --trial N, or pass "
                          "--artifacts DIR with the folder the search kept them in.")
    recorded = StudyRecord.of(study)
    meta = recorded.data or {}
    class_names = list(recorded.class_names)
    data = study_data(study, data)
    size = int(row["image_size"])
    val = np.stack(list(pipeline.images(data.validation, size).take(check).as_numpy_iterator()))
    test = None
    if data.fingerprint != meta.get("fingerprint"):
        import logging

        logging.getLogger("automl").warning(
            "the data (%s) changed since the search; the export is checked on it but its test "
            "accuracy is not compared with the recorded one", data.source)
        row = row.copy()
        row["test_accuracy"] = float("nan")
    if fmt != "savedmodel":
        from automl.report.calibrate import calibrate_model

        tm = build_trained(row, class_names, weights, chosen.result)
        # the temperature the SavedModel export would hold, fitted the same way
        fit = calibrate_model(tm, data.validation, data.test, size)
        test_arrays = None if data.test is None else (
            np.stack(list(pipeline.images(data.test, size).as_numpy_iterator())),
            np.asarray(data.test.labels))
        if fmt == "onnx":
            from automl.report.onnx_export import export_onnx

            return export_onnx(tm, row, class_names, out, val, test_arrays, fit)
        from automl.report.tflite import calibration_images, export_tflite

        calibration = calibration_images(data.train, size) if quantize == "int8" else None
        return export_tflite(tm, row, class_names, out, quantize, val, test_arrays, calibration,
                             fit)
    if data.test is not None:
        test = (pipeline.dataset(data.test, size, 256), data.test.labels)
    return export_trial(row, class_names, weights, out, val, test, chosen.result,
                        calibrate_on=(data.validation, data.test))
