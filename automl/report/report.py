"""`automl report`: one self-contained HTML page (images inline) plus the PNGs it shows.

Sections: the leaderboard and per-backbone summary, optimisation history, Optuna's parameter
importances, validation accuracy against each dimension, the best trial's training curves, and on
the test split for the best trial: confusion matrix, per-class precision/recall/F1, calibration
(a temperature fitted on the validation split as ``automl export`` fits it: ECE and NLL before
and after, a reliability diagram), the most confident mistakes and Grad-CAM heatmaps; then, when
``automl inspect`` has written them, the label issues and duplicates. The best model is rebuilt
by ``export.build_trained`` (the search's own builder) from its kept weights.
"""

from __future__ import annotations

import base64
import html
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from automl.atomic import write_atomic, write_text_atomic
from automl.config import study_dir
from automl.data import pipeline
from automl.errors import AutoMLError, ConfigError
from automl.report import metrics
from automl.search import leaderboard
from automl.search.record import StudyRecord, TrialRecord
from automl.space import DIMENSIONS

log = logging.getLogger("automl")
TOP = 20
MISTAKES = 12
GRADCAM_IMAGES = 8
TRUST_TOP = 12     # label issues shown with thumbnails
TRUST_PAIRS = 9    # duplicate pairs across splits shown side by side
THUMB = 64         # pixels a side of those thumbnails
BOARD_COLUMNS = ["trial", "state", "val_accuracy", "test_accuracy", *DIMENSIONS, "latency_ms",
                 "size_mb", "epochs", "best_phase", "train_seconds", "stage"]
FRONT_COLUMNS = ["trial", "val_accuracy", "test_accuracy", "latency_ms", "size_mb", "params",
                 "backbone", "image_size", "head_width"]


@dataclass
class TestEvaluation:
    """The best trial's predictions on the test split."""

    trial: int
    class_names: list[str]
    labels: np.ndarray
    probs: np.ndarray            # [n, n_classes]
    confusion: np.ndarray        # [true, predicted] counts
    recorded_accuracy: float | None  # what the search measured (the leaderboard)
    calibration: Any = None      # automl.report.calibrate.Calibration (fitted on validation)
    calibrated: np.ndarray | None = None  # probs with that temperature: the export's outputs

    @property
    def accuracy(self) -> float:
        return float(np.trace(self.confusion) / max(1, self.confusion.sum()))


@dataclass
class Report:
    """What ``build_report`` wrote."""

    html: Path
    images: dict[str, Path] = field(default_factory=dict)   # section key -> PNG file
    notes: list[str] = field(default_factory=list)          # sections that could not be made
    test: TestEvaluation | None = None
    per_class: pd.DataFrame | None = None


class _Page:
    """Collects sections (HTML) and images (PNG bytes, embedded and written to files)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.parts: list[str] = []
        self.images: dict[str, Path] = {}
        self.notes: list[str] = []

    def heading(self, text: str) -> None:
        self.parts.append(f"<h2>{html.escape(text)}</h2>")

    def text(self, text: str) -> None:
        self.parts.append(f"<p>{html.escape(text)}</p>")

    def note(self, text: str) -> None:
        self.notes.append(text)
        self.parts.append(f'<p class="note">{html.escape(text)}</p>')

    def table(self, frame: pd.DataFrame) -> None:
        """A table in a box that scrolls sideways when it is wider than the page."""
        self.parts.append('<div class="scroll">' + frame.to_html(
            index=False, na_rep="", border=0, classes="table",
            float_format=lambda v: f"{v:.4g}") + "</div>")

    def link(self, text: str, href: str) -> None:
        self.parts.append(f'<p><a href="{html.escape(href)}">{html.escape(text)}</a></p>')

    def image(self, key: str, fig: Any, alt: str) -> None:
        from automl.report.plots import png

        data = png(fig)
        path = write_atomic(self.folder / f"{key}.png", lambda p: p.write_bytes(data))
        self.images[key] = path
        uri = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
        self.parts.append(f'<figure><img src="{uri}" alt="{html.escape(alt)}" '
                          f'data-file="{html.escape(path.name)}"></figure>')


def build_report(results: Path, study_name: str, storage: str | None = None,
                 artifacts: str | None = None, data: str | None = None) -> Report:
    """Write ``results/<study>/report.html`` and ``results/<study>/report/*.png``.

    ``artifacts``: where the kept weights are (``--artifacts``; default as the search chose).
    """
    import matplotlib

    matplotlib.use("Agg")
    from automl.search.study import artifact_root, open_study, storage_url

    study = open_study(Path(results), study_name, storage, create=False)
    root = artifact_root(results, study_name, artifacts, study, storage)
    board = leaderboard.from_study(study, root)
    folder = study_dir(results, study_name)
    page = _Page(folder / "report")
    done = board[board["state"] == "COMPLETE"]
    _overview(page, study, board, done)
    _history(page, board)
    _cost(page, study, board)
    _importances(page, study)
    _dimensions(page, done)
    test, per_class = _best_trial(page, study, board, root, data)
    _trust(page, study, folder, data)
    url = storage_url(Path(results), study_name, storage)
    page.heading("More")
    page.parts.append("<p>Browse the study interactively with optuna-dashboard: "
                      "<code>pip install optuna-dashboard</code>, then <code>optuna-dashboard "
                      f"{html.escape(_display_url(url))}</code>.</p>")
    for old in page.folder.glob("*.png"):  # figures of an earlier report this one no longer has
        if old not in page.images.values():
            old.unlink(missing_ok=True)
    out = write_text_atomic(folder / "report.html", _document(study_name, page.parts))
    return Report(out, page.images, page.notes, test, per_class)


def _display_url(url: str) -> str:
    from automl.search.study import safe_url

    return safe_url(url)


def _overview(page: _Page, study: Any, board: pd.DataFrame, done: pd.DataFrame) -> None:
    data = StudyRecord.of(study).data or {}
    counts = board["state"].value_counts()
    states = ", ".join(f"{counts[s]} {s.lower()}" for s in counts.index)
    page.text(f"Data: {data.get('source', 'unknown')}. Trials: {len(board)} ({states or 'none'}).")
    page.heading(f"Leaderboard (top {TOP})")
    if board.empty:
        page.note("The study has no trials yet: run `automl search` first.")
        return
    page.table(board[BOARD_COLUMNS].head(TOP))
    page.heading("Per-backbone summary")
    if done.empty:
        page.note("No trial has completed yet, so there is no per-backbone summary.")
    else:
        page.table(leaderboard.summary(board))


def _history(page: _Page, board: pd.DataFrame) -> None:
    from automl.report.plots import history_figure

    page.heading("Optimisation history")
    if board["val_accuracy"].notna().sum() == 0:
        page.note("No trial has reached a validation accuracy yet: no history to plot.")
        return
    page.image("history", history_figure(board), "validation accuracy per trial, best so far")


def _cost(page: _Page, study: Any, board: pd.DataFrame) -> None:
    """Accuracy against latency, the Pareto front as a table, the limits the search kept to."""
    from automl.report.plots import cost_figure

    page.heading("Accuracy against serving cost")
    limits = StudyRecord.of(study).limits or {}
    if board["latency_ms"].notna().sum() == 0:
        page.note("No trial has a measured cost (trials of keras-tuner searches and of studies "
                  "from before automl measured it have none).")
        return
    if limits:
        said = ", ".join(f"--{k.replace('_', '-')} {v:g}" for k, v in limits.items())
        infeasible = int((board["state"] == "INFEASIBLE").sum())
        page.text(f"The search kept to {said}: {infeasible} trial(s) over the limits were "
                  "not trained (INFEASIBLE).")
    page.text("Latency: median of 50 batch-1 calls of the exported graph (resizing included) "
              "on this machine; size: the float32 .tflite file. Both are measured once per "
              "architecture.")
    page.image("cost", cost_figure(board, limits.get("max_latency_ms")),
               "validation accuracy against batch-1 latency, with the Pareto front")
    front = board[board["pareto"].astype(bool)].sort_values("latency_ms")
    if front.empty:
        page.note("No trial has finished yet: there is no Pareto front.")
    else:
        page.table(front[FRONT_COLUMNS])


def importance_groups(study: Any) -> tuple[list[tuple[str, dict[str, float]]], list[str]]:
    """Optuna's parameter importances per stage of the search, and why any stage has none.

    Screening and refinement trials sample different parameters, so each stage is evaluated on
    its own (fANOVA, seeded) over its complete trials.
    """
    import optuna

    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    stages: dict[str, list[Any]] = defaultdict(list)
    for trial in complete:
        stages[TrialRecord.of(trial).stage or "full"].append(trial)
    groups, notes = [], []
    for stage, trials in stages.items():
        name = {"screen": "screening", "refine": "refinement", "full": "all"}.get(stage, stage)
        varying = [p for p in trials[0].params
                   if len({repr(t.params.get(p)) for t in trials}) > 1]
        if len(trials) < 2 or not varying:
            why = "only" if len(trials) < 2 else "with no parameter that varies"
            notes.append(f"{name} trials: {len(trials)} complete trial(s) {why}; parameter "
                         "importances need at least 2 complete trials whose sampled parameters "
                         "differ.")
            continue
        sub = optuna.create_study(direction="maximize")
        sub.add_trials(trials)
        try:
            importances = optuna.importance.get_param_importances(
                sub, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))
        except (ValueError, RuntimeError) as exc:
            notes.append(f"{name} trials: Optuna could not compute parameter importances "
                         f"({str(exc).splitlines()[0]}).")
            continue
        groups.append((f"{name} trials ({len(trials)} complete)",
                       {k: float(v) for k, v in importances.items()}))
    if not complete:
        notes.append("no complete trial yet: parameter importances need at least 2.")
    return groups, notes


def _importances(page: _Page, study: Any) -> None:
    from automl.report.plots import importance_figure

    page.heading("Parameter importances (Optuna, fANOVA)")
    groups, notes = importance_groups(study)
    for text in notes:
        page.note(text)
    if groups:
        page.image("importances", importance_figure(groups), "parameter importances")


def _dimensions(page: _Page, done: pd.DataFrame) -> None:
    from automl.report.plots import dimensions_figure

    page.heading("Validation accuracy against each search dimension")
    if done.empty:
        page.note("No complete trial yet: nothing to plot against the search dimensions.")
        return
    page.image("dimensions", dimensions_figure(done, DIMENSIONS),
               "validation accuracy against each search dimension")


def _best_trial(page: _Page, study: Any, board: pd.DataFrame, root: Path,
                data: str | None = None) -> tuple[TestEvaluation | None, pd.DataFrame | None]:
    from automl.report.plots import curves_figure

    page.heading("Best trial: training curves")
    row = leaderboard.best_row(board)
    if row is None:
        page.note("No complete trial yet: no best trial to show.")
        return None, None
    number = int(row["trial"])
    trial = study.get_trials(deepcopy=False)[number]
    history = TrialRecord.of(trial).history
    config = ", ".join(f"{k}={_short(row[k])}" for k in DIMENSIONS)
    page.text(f"Trial {number} (validation accuracy {row['val_accuracy']:.4f}): {config}.")
    if history:
        phases = {int(r.get("phase", 1)) for r in history}
        if 2 not in phases:
            page.text("This trial has no fine-tuning phase (its backbone stays frozen).")
        page.image("curves", curves_figure(history, f"Trial {number}: loss and accuracy per "
                                           "epoch (shaded: fine-tuning)"),
                   "training curves of the best trial")
    else:
        page.note(f"Trial {number} has no stored per-epoch history.")
    page.heading("Best trial on the test split")
    try:
        test, images, size = evaluate_test(study, row, root, data)
    except AutoMLError as exc:  # weights deleted, data no longer where the search found it
        page.note(f"The test-split sections are missing: {exc}")
        return None, None
    if test is None:
        page.note("The data has no test split: no confusion matrix, per-class table, mistakes "
                  "or Grad-CAM.")
        return None, None
    return test, _test_sections(page, test, images, size, row)


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def evaluate_test(study: Any, row: pd.Series, artifacts: Path, source: str | None = None,
                  ) -> tuple[TestEvaluation | None, Any, int]:
    """Rebuild the trial's model from its kept weights and predict the test split; fit its
    temperature on the validation split as ``automl export`` does."""
    from automl.report.calibrate import calibrate, calibrated, predict_probabilities
    from automl.report.export import build_trained, study_data
    from automl.trial.run import weights_path

    number = int(row["trial"])
    chosen = TrialRecord.of(study.trials[number])
    relative = chosen.weights
    weights = artifacts / relative if relative else weights_path(artifacts, number)
    if not weights.is_file():
        raise ConfigError(f"the weights of trial {number} ({weights}) are missing; they may "
                          "have been deleted. Re-run the search to rebuild them.")
    data = study_data(study, source)
    if data.test is None:
        return None, None, 0
    recorded = StudyRecord.of(study)
    meta = recorded.data or {}
    class_names = list(recorded.class_names or data.class_names)
    recorded = row.get("test_accuracy")
    recorded = None if recorded is None or pd.isna(recorded) else float(recorded)
    if data.fingerprint != meta.get("fingerprint"):
        log.warning("the data (%s) changed since the search; the report evaluates the best "
                    "trial on it as it is now", data.source)
        recorded = None
    size = int(row["image_size"])
    tm = build_trained(row, class_names, weights, chosen.result)
    probs = predict_probabilities(tm, data.test, size)
    labels = np.asarray(data.test.labels)
    cm = metrics.confusion_matrix(labels, probs.argmax(axis=1), len(class_names))
    fit = calibrate(predict_probabilities(tm, data.validation, size), data.validation.labels,
                    probs, labels)
    evaluation = TestEvaluation(number, class_names, labels, probs, cm, recorded, fit,
                                calibrated(probs, fit.temperature))
    return evaluation, (tm, data.test), size


def _pick_images(split: Any, size: int, indices: list[int]) -> np.ndarray:
    """The test images at ``indices`` (model input size, uint8), in that order."""
    wanted = set(indices)
    found: dict[int, np.ndarray] = {}
    for i, image in enumerate(pipeline.images(split, size).as_numpy_iterator()):
        if i in wanted:
            found[i] = image
            if len(found) == len(wanted):
                break
    return np.stack([found[i] for i in indices]) if indices else np.zeros((0, size, size, 3))


def _test_sections(page: _Page, test: TestEvaluation, model_and_split: Any, size: int,
                   row: pd.Series) -> pd.DataFrame:
    from automl.report.gradcam import flat_maps, grad_cam
    from automl.report.plots import confusion_figure, gallery_figure, gradcam_figure

    tm, split = model_and_split
    names = test.class_names
    recorded = ("" if test.recorded_accuracy is None
                else f"; the leaderboard records {test.recorded_accuracy:.4f}")
    page.text(f"Test accuracy of trial {test.trial}: {test.accuracy:.4f} "
              f"({int(np.trace(test.confusion))} of {int(test.confusion.sum())} images)"
              f"{recorded}.")
    page.image("confusion", confusion_figure(test.confusion, names), "confusion matrix")
    page.heading("Per-class precision, recall and F1 (test split)")
    table = metrics.per_class(test.confusion, names)
    page.table(table)
    _calibration(page, test)
    page.heading("Most confident mistakes (test split)")
    wrong = metrics.confident_mistakes(test.probs, test.labels, MISTAKES).tolist()
    if wrong:
        predicted = test.probs.argmax(axis=1)
        titles = [f"true: {names[test.labels[i]]}\npred: {names[predicted[i]]} "
                  f"({test.probs[i, predicted[i]]:.2f})" for i in wrong]
        page.image("mistakes", gallery_figure(_pick_images(split, size, wrong), titles,
                                              "The most confident mistakes"),
                   "the most confident mistakes")
    else:
        page.text("The model makes no mistake on the test split.")
    page.heading("Grad-CAM: where the best model looks (test split)")
    chosen = [int(np.flatnonzero(test.labels == c)[0]) for c in range(len(names))
              if (test.labels == c).any()][:GRADCAM_IMAGES]
    images = _pick_images(split, size, chosen)
    cams = grad_cam(tm, images)
    titles = [f"true: {names[test.labels[i]]}\npred: {names[c]} ({cams.probs[k, c]:.2f})"
              for k, (i, c) in enumerate(zip(chosen, cams.classes, strict=True))]
    flat = flat_maps(cams.heatmaps)
    page.text(gradcam_text(cams, size, flat))
    page.image("gradcam", gradcam_figure(images, cams.heatmaps, titles, "Grad-CAM", flat=flat),
               "Grad-CAM heatmaps")
    return table


def gradcam_text(cams: Any, size: int, flat: np.ndarray) -> str:
    """The Grad-CAM section's text: the layer the maps come from and, when some of the maps
    (``cams``: a :class:`automl.report.gradcam.GradCam`) are ``flat``, how many."""
    from automl.report.gradcam import FLAT

    return (f"Heatmaps of the predicted class over the first test image of each class, from "
            f"the activation of layer '{cams.layer}' ({cams.grid[0]}x{cams.grid[1]} cells, "
            f"input {size}x{size}). A flat map (its values span less than {FLAT:.0%} of the "
            "scale, e.g. all zero: no cell raises the class score) is marked on its tile"
            + (f"; {int(np.sum(flat))} here." if np.any(flat) else "."))


def _calibration(page: _Page, test: TestEvaluation) -> None:
    from automl.report.calibrate import reliability
    from automl.report.plots import reliability_figure

    fit = test.calibration
    if fit is None:
        return
    page.heading("Calibration (test split)")
    page.text(f"A temperature fitted on the validation split's probabilities, as `automl "
              f"export` fits it and keeps it inside the exported model (softmax(log p / T); the "
              f"predicted class never changes): {fit.describe()}. Expected calibration error "
              f"over {fit.bins} equal-width confidence bins.")
    page.image("reliability", reliability_figure(
        reliability(test.probs, test.labels, fit.temperature),
        f"Reliability on the test split (T = {fit.temperature:.3g})"),
        "reliability diagram before and after temperature scaling")


def _trust(page: _Page, study: Any, folder: Path, source: str | None) -> None:
    """Label issues and duplicates from `automl inspect`'s files, when they are there."""
    import json

    from automl.report.inspect import LABEL_CSV, PAIRS_CSV, SUMMARY_JSON

    labels_csv, pairs_csv = folder / LABEL_CSV, folder / PAIRS_CSV
    page.heading("Label issues and duplicates (automl inspect)")
    if not labels_csv.is_file() or not pairs_csv.is_file():
        page.text("Run `automl inspect` to rank label issues and find duplicates across the "
                  "splits; this section then shows them.")
        return
    try:
        labels = pd.read_csv(labels_csv)
        pairs = pd.read_csv(pairs_csv)
        summary = json.loads((folder / SUMMARY_JSON).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        page.note(f"The files of `automl inspect` cannot be read ({exc}); run it again.")
        return
    page.link(f"{LABEL_CSV}: {len(labels)} images ranked", LABEL_CSV)
    page.link(f"{PAIRS_CSV}: {len(pairs)} pairs", PAIRS_CSV)
    try:
        from automl.report.export import study_data

        data = study_data(study, source)
    except AutoMLError as exc:
        page.note(f"The thumbnails are missing: {exc}")
        data = None
    if data is not None and data.fingerprint != summary.get("fingerprint"):
        page.note("The data changed since `automl inspect` ran: run it again; the lists below "
                  "are shown without thumbnails.")
        data = None
    _label_issues(page, labels, data)
    _duplicates(page, pairs, data, summary)


def _label_issues(page: _Page, labels: pd.DataFrame, data: Any) -> None:
    from automl.report.plots import gallery_figure

    page.heading("Label issues: the most suspicious training and validation images")
    page.text("Ranked by cleanlab's label-quality score (lower: more likely mislabelled) over "
              "out-of-sample probabilities of 5-fold heads on the best trial's pooled "
              "activations; 'suggested' is the heads' most probable class.")
    top = labels.head(TRUST_TOP)
    if data is not None and len(top):
        images = _thumbnails(data, [(r.split, int(r.index)) for r in top.itertuples()])
        titles = [f"{r.source}\ngiven {r.given} -> {r.suggested}?\nscore {r.score:.3g}"
                  for r in top.itertuples()]
        page.image("label_issues", gallery_figure(np.stack(images), titles,
                                                  "Most suspicious labels"),
                   "the most suspicious labels")
    page.table(top[["rank", "source", "split", "given", "suggested", "score"]])


def _thumbnails(data: Any, wanted: list[tuple[str, int]]) -> list[np.ndarray]:
    """The images at (split, index), THUMB px a side, in that order (one pass per split)."""
    found: dict[tuple[str, int], np.ndarray] = {}
    for split in {name for name, _ in wanted}:
        indices = sorted({i for name, i in wanted if name == split})
        for i, image in zip(indices, _pick_images(data.splits()[split], THUMB, indices),
                            strict=True):
            found[(split, i)] = image
    return [found[key] for key in wanted]


def _duplicates(page: _Page, pairs: pd.DataFrame, data: Any, summary: dict) -> None:
    from automl.report.plots import gallery_figure

    page.heading("Duplicates within and across splits")
    limits = summary.get("thresholds", {})
    page.text("Byte-identical images (content hash), and near-duplicates across splits: pooled "
              f"activations with cosine >= {limits.get('activations')} or grey thumbnails with "
              f"cosine >= {limits.get('thumbnails')}.")
    counts = pd.DataFrame(summary.get("counts", []))
    if counts.empty:
        page.text("No duplicate pair was found.")
        return
    page.table(counts)
    across = pairs[pairs["split_a"] != pairs["split_b"]].head(TRUST_PAIRS)
    if data is not None and len(across):
        wanted, titles = [], []
        for r in across.itertuples():
            for split, index, name in ((r.split_a, r.index_a, r.source_a),
                                       (r.split_b, r.index_b, r.source_b)):
                wanted.append((split, int(index)))
                titles.append(f"{split}\n{name}")
            titles[-1] += "\n" + ("exact" if r.exact else f"thumb {r.thumbnail_cosine:.3f}")
        images = _thumbnails(data, wanted)
        page.image("duplicates", gallery_figure(np.stack(images), titles,
                                                "Duplicate pairs across splits (side by side)"),
                   "duplicate pairs across splits")


_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;
max-width:1200px;padding:0 1rem;color:#222}
h1{font-size:1.6rem}h2{font-size:1.25rem;margin-top:2rem;border-bottom:1px solid #ddd}
div.scroll{overflow-x:auto;max-width:100%}
table.table{border-collapse:collapse;font-size:.85rem}
table.table th,table.table td{padding:.2rem .5rem;border-bottom:1px solid #eee;text-align:right}
table.table th{background:#f4f4f4}figure{margin:1rem 0}img{max-width:100%}
.note{color:#8a4b00;background:#fff6e5;padding:.4rem .6rem;border-radius:4px}
code{background:#f4f4f4;padding:0 .2rem}
"""


def _document(study_name: str, parts: list[str]) -> str:
    title = f"automl report: study {html.escape(study_name)}"
    stamp = datetime.now().strftime("%Y-%m-%d %H:%M")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{title}</title><style>{_STYLE}</style></head><body>"
            f"<h1>{title}</h1><p>Generated {stamp}.</p>\n" + "\n".join(parts) +
            "\n</body></html>\n")
