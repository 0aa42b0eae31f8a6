"""The report's figures, drawn with matplotlib's Agg backend (no display, no pyplot state).

Each function takes plain data (DataFrames, arrays, lists) and returns a Figure; ``png`` renders
one to PNG bytes.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

NUMERIC_LOG = {"learning_rate"}
FEW_VALUES = 6  # a numeric dimension with at most this many distinct values gets boxes


def png(fig: Figure, dpi: int = 100) -> bytes:
    """The figure as PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight", facecolor="white")
    return buf.getvalue()


def history_figure(board: pd.DataFrame) -> Figure:
    """Validation accuracy per trial (complete and pruned) and the best so far."""
    fig = Figure(figsize=(8, 4))
    ax = fig.add_subplot()
    frame = board.sort_values("trial")
    for state, marker, color in (("COMPLETE", "o", "tab:blue"), ("PRUNED", "x", "tab:gray")):
        part = frame[(frame["state"] == state) & frame["val_accuracy"].notna()]
        if not part.empty:
            ax.scatter(part["trial"], part["val_accuracy"], marker=marker, color=color,
                       label=f"{state.lower()} ({len(part)})", zorder=3)
    done = frame[frame["state"] == "COMPLETE"]
    if not done.empty:
        best = done["val_accuracy"].astype(float).cummax()
        ax.step(done["trial"], best, where="post", color="tab:red", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel("validation accuracy")
    ax.set_title("Optimisation history")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    return fig


def importance_figure(groups: Sequence[tuple[str, Mapping[str, float]]]) -> Figure:
    """One horizontal bar chart of Optuna's parameter importances per group of trials."""
    fig = Figure(figsize=(8, 0.6 + sum(0.45 * max(len(g), 1) + 0.8 for _, g in groups)))
    axes = fig.subplots(len(groups), 1, squeeze=False)[:, 0]
    for ax, (title, importances) in zip(axes, groups, strict=True):
        names = list(importances)[::-1]
        ax.barh(names, [importances[n] for n in names], color="tab:blue")
        ax.set_xlim(0, 1)
        ax.set_title(title)
        ax.set_xlabel("importance (share of the variance of validation accuracy)")
        ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig


def dimensions_figure(done: pd.DataFrame, dimensions: Sequence[str]) -> Figure:
    """Validation accuracy against each search dimension: boxes for categories, else scatter."""
    cols = 4
    rows = math.ceil(len(dimensions) / cols)
    fig = Figure(figsize=(4 * cols, 3.4 * rows))
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    backbones = sorted(done["backbone"].astype(str).unique())
    colors = {b: f"C{i % 10}" for i, b in enumerate(backbones)}
    rng = np.random.default_rng(0)
    for ax, dim in zip(axes, dimensions, strict=False):
        values = done[dim]
        acc = done["val_accuracy"].astype(float)
        numeric = pd.api.types.is_numeric_dtype(values)
        if not numeric or (dim not in NUMERIC_LOG and values.nunique() <= FEW_VALUES):
            levels = sorted(values.unique(), key=lambda v: (not numeric, v))
            data = [acc[values == level].to_numpy() for level in levels]
            ax.boxplot(data, tick_labels=[_label(v) for v in levels], widths=0.5)
            for i, level in enumerate(levels):
                mask = (values == level).to_numpy()
                x = i + 1 + rng.uniform(-0.12, 0.12, mask.sum())
                ax.scatter(x, acc[mask], s=14, zorder=3,
                           c=[colors[str(b)] for b in done["backbone"][mask]])
            ax.tick_params(axis="x", labelrotation=30 if dim == "backbone" else 0)
        else:
            ax.scatter(values.astype(float), acc, s=18,
                       c=[colors[str(b)] for b in done["backbone"]])
            if dim in NUMERIC_LOG:
                ax.set_xscale("log")
        ax.set_title(dim)
        ax.set_ylabel("validation accuracy")
        ax.grid(alpha=0.3)
    for ax in axes[len(dimensions):]:
        ax.axis("off")
    if len(backbones) > 1:
        handles = [axes[0].scatter([], [], color=colors[b], label=b) for b in backbones]
        fig.legend(handles=handles, loc="lower right", title="backbone")
    fig.suptitle("Validation accuracy against each search dimension (complete trials)")
    fig.tight_layout()
    return fig


def _label(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def curves_figure(history: Sequence[Mapping[str, float]], title: str) -> Figure:
    """Loss and accuracy per epoch, train and validation; the fine-tuning phase shaded."""
    frame = pd.DataFrame(list(history))
    fig = Figure(figsize=(11, 4))
    axes = fig.subplots(1, 2)
    tuned = frame[frame["phase"] == 2] if "phase" in frame else frame.iloc[0:0]
    for ax, metric in zip(axes, ("loss", "accuracy"), strict=True):
        ax.plot(frame["epoch"], frame[metric], "o-", label=f"train {metric}")
        ax.plot(frame["epoch"], frame[f"val_{metric}"], "s-", label=f"validation {metric}")
        if not tuned.empty:
            start, end = tuned["epoch"].min() - 0.5, tuned["epoch"].max() + 0.5
            ax.axvspan(start, end, color="tab:orange", alpha=0.15, label="fine-tuning (phase 2)")
            ax.axvline(start, color="tab:orange", linestyle="--")
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.set_xticks(frame["epoch"].astype(int).tolist())
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def confusion_figure(cm: np.ndarray, class_names: Sequence[str]) -> Figure:
    """The confusion matrix, counts written in the cells (rows: true class)."""
    n = len(class_names)
    side = max(4.0, 0.55 * n + 2)
    fig = Figure(figsize=(side + 1, side))
    ax = fig.add_subplot()
    image = ax.imshow(cm, cmap="Blues")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(n), labels=list(class_names), rotation=45, ha="right")
    ax.set_yticks(range(n), labels=list(class_names))
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    threshold = cm.max() / 2 if cm.size else 0
    if n <= 30:
        for i in range(n):
            for j in range(n):
                ax.text(j, i, str(int(cm[i, j])), ha="center", va="center", fontsize=8,
                        color="white" if cm[i, j] > threshold else "black")
    ax.set_title(f"Confusion matrix on the test split ({int(cm.sum())} images)")
    fig.tight_layout()
    return fig


def gallery_figure(images: np.ndarray, titles: Sequence[str], heading: str,
                   cols: int = 6) -> Figure:
    """A grid of images with a caption each."""
    rows = max(1, math.ceil(len(images) / cols))
    fig = Figure(figsize=(2.2 * cols, 2.8 * rows))
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, image, title in zip(axes, images, titles, strict=False):
        ax.imshow(np.asarray(image, dtype=np.uint8))
        ax.set_title(title, fontsize=8)
    for ax in axes:
        ax.axis("off")
    fig.suptitle(heading)
    fig.tight_layout()
    return fig


def gradcam_figure(images: np.ndarray, heatmaps: np.ndarray, titles: Sequence[str],
                   heading: str, cols: int = 4, flat: Sequence[bool] | None = None) -> Figure:
    """Each image beside its Grad-CAM heatmap laid over it; a ``flat`` map (uniform: it
    localises nothing) says so on its tile."""
    flat = list(flat) if flat is not None else [False] * len(images)
    rows = max(1, math.ceil(len(images) / cols))
    fig = Figure(figsize=(4.2 * cols, 2.8 * rows))
    axes = fig.subplots(rows, 2 * cols, squeeze=False)
    for k, (image, heat, title) in enumerate(zip(images, heatmaps, titles, strict=True)):
        left, right = axes[k // cols, 2 * (k % cols)], axes[k // cols, 2 * (k % cols) + 1]
        left.imshow(np.asarray(image, dtype=np.uint8))
        left.set_title(title, fontsize=8)
        right.imshow(np.asarray(image, dtype=np.uint8))
        right.imshow(heat, cmap="jet", alpha=0.45, vmin=0.0, vmax=1.0)
        right.set_title("Grad-CAM", fontsize=8)
        if flat[k]:
            right.set_title("Grad-CAM: flat map", fontsize=8, color="#8a4b00")
            right.text(0.5, 0.5, "flat map:\nno localised\nevidence", ha="center", va="center",
                       fontsize=8, transform=right.transAxes,
                       bbox={"facecolor": "white", "alpha": 0.85, "edgecolor": "#8a4b00"})
    for ax in axes.ravel():
        ax.axis("off")
    fig.suptitle(heading)
    fig.tight_layout()
    return fig


def cost_figure(board: pd.DataFrame, max_latency_ms: float | None = None) -> Figure:
    """Validation accuracy against batch-1 latency: finished trials, the Pareto front (the
    trials nothing beats on both), pruned ones in grey, the latency limit as a line."""
    fig = Figure(figsize=(8, 4.5))
    ax = fig.add_subplot()
    measured = board[board["latency_ms"].notna() & board["val_accuracy"].notna()]
    pruned = measured[measured["state"] == "PRUNED"]
    done = measured[measured["state"] == "COMPLETE"]
    if not pruned.empty:
        ax.scatter(pruned["latency_ms"], pruned["val_accuracy"], marker="x", color="tab:gray",
                   label=f"pruned ({len(pruned)}, best epoch)", zorder=2)
    if not done.empty:
        ax.scatter(done["latency_ms"], done["val_accuracy"], color="tab:blue",
                   label=f"complete ({len(done)})", zorder=3)
        front = done[done["pareto"].astype(bool)].sort_values("latency_ms")
        ax.step(front["latency_ms"], front["val_accuracy"], where="post", color="tab:red",
                marker="o", label=f"Pareto front ({len(front)})", zorder=4)
    if max_latency_ms is not None:
        ax.axvline(max_latency_ms, color="tab:orange", linestyle="--",
                   label=f"--max-latency-ms {max_latency_ms:g}")
    ax.set_xlabel("batch-1 latency of the exported model on this machine (ms)")
    ax.set_ylabel("validation accuracy")
    ax.set_title("Accuracy against latency")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    return fig


def reliability_figure(bins: pd.DataFrame, title: str) -> Figure:
    """Reliability diagram: accuracy against mean confidence per confidence bin, before and
    after calibration (``bins``: automl.report.calibrate.reliability), and the diagonal."""
    fig = Figure(figsize=(9, 4))
    axes = fig.subplots(1, 2, squeeze=False)[0]
    for ax, which in zip(axes, ("before", "after"), strict=True):
        part = bins[(bins["which"] == which) & (bins["count"] > 0)]
        width = float((bins["upper"] - bins["lower"]).iloc[0])
        ax.bar(part["lower"], part["accuracy"], width=width, align="edge", color="#4c72b0",
               edgecolor="white", label="accuracy")
        ax.bar(part["lower"], part["confidence"] - part["accuracy"], width=width,
               bottom=part["accuracy"], align="edge", color="#dd8452", alpha=0.5,
               label="gap to confidence")
        ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence (top class)")
        ax.set_ylabel("accuracy")
        ax.set_title(f"{which} temperature scaling", fontsize=10)
        ax.legend(fontsize=8, loc="upper left")
    fig.suptitle(title)
    fig.tight_layout()
    return fig
