"""A trial's serving cost and the limits a search keeps to (TensorFlow-free: the search side).

An architecture's cost is measured once (:mod:`automl.trial.cost`, in the trial worker, outside
any trial) and kept in the study as the user attribute ``cost:<backbone>@<image size>``: the
backbone part, and one entry per hidden head width measured so far. A resumed search and other
workers read it back instead of measuring again. A trial's cost (:func:`trial_cost`) is the sum:

- ``latency_ms``: the backbone graph's batch-1 latency plus the hidden head layer's;
- ``size_mb``: the float32 ``.tflite`` file of the backbone graph plus 4 bytes per parameter the
  hidden head layer adds;
- ``params``: every parameter of the exported model; ``throughput_ips``: the backbone graph's
  images a second at batch 32.

``Limits`` (``--max-latency-ms``, ``--max-size-mb``) turn a cost into Optuna constraints
(``trial.set_constraint``: feasible when every value is <= 0), measured before the trial trains
and recorded with it. Without limits nothing needs the cost before training, so a new
architecture is measured right after its first trial (the first results come sooner), and the
leaderboard takes a trial's cost from the study's measurements (:func:`known_cost`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from automl.errors import ConfigError
from automl.search import record

MB = 1e6  # size_mb is in megabytes of 10^6 bytes, as file managers show them


@dataclass(frozen=True)
class Limits:
    """The most a trial's model may cost to serve (None: no limit)."""

    max_latency_ms: float | None = None
    max_size_mb: float | None = None

    @property
    def any(self) -> bool:
        return self.max_latency_ms is not None or self.max_size_mb is not None

    def as_dict(self) -> dict[str, float]:
        return {k: v for k, v in (("max_latency_ms", self.max_latency_ms),
                                  ("max_size_mb", self.max_size_mb)) if v is not None}

    def constraints(self, cost: dict[str, Any]) -> dict[str, float]:
        """Optuna constraint values of a cost: measured minus the limit (> 0: over it)."""
        out = {}
        if self.max_latency_ms is not None:
            out["latency_ms"] = float(cost["latency_ms"]) - self.max_latency_ms
        if self.max_size_mb is not None:
            out["size_mb"] = float(cost["size_mb"]) - self.max_size_mb
        return out

    def violations(self, cost: dict[str, Any]) -> str:
        """Why a cost is over the limits, in words ("" when it is within them)."""
        parts = []
        if self.max_latency_ms is not None and cost["latency_ms"] > self.max_latency_ms:
            parts.append(f"latency {cost['latency_ms']:.2f} ms > --max-latency-ms "
                         f"{self.max_latency_ms:g}")
        if self.max_size_mb is not None and cost["size_mb"] > self.max_size_mb:
            parts.append(f"size {cost['size_mb']:.2f} MB > --max-size-mb {self.max_size_mb:g}")
        return "; ".join(parts)

    def describe(self) -> str:
        """The limits as the flags that set them."""
        return " ".join(f"--{k.replace('_', '-')} {v:g}" for k, v in self.as_dict().items())


def check_limits(limits: Limits) -> None:
    """Refuse limits no model can meet (zero or negative)."""
    for flag, value in (("--max-latency-ms", limits.max_latency_ms),
                        ("--max-size-mb", limits.max_size_mb)):
        if value is not None and not value > 0:
            raise ConfigError(f"{flag} {value:g}: expected a positive number (the most a "
                              "trial's model may cost to serve).")


def _key(backbone: str, image_size: int) -> str:
    return f"{backbone}@{image_size}"


def trial_cost(study: Any, runner: Any, config: Any, convert: bool = True) -> dict[str, Any]:
    """The serving cost of ``config``'s architecture, measured through ``runner`` only if the
    study does not know it yet (then kept in the study).

    A hidden head's cost depends on the backbone's output width, not on the image size: a width
    measured at another size of the same backbone is reused. ``convert`` False: the ``.tflite``
    size is only looked up (a search without limits converts in the background,
    :mod:`automl.search.sizes`).
    """
    key = _key(config.backbone, config.image_size)
    measured = record.measured_costs(study)
    entry = dict(measured.get(key) or {})
    width = str(int(config.head_width))
    heads = {**_backbone_heads(measured, config.backbone), **entry.get("heads", {})}
    if not entry.get("backbone") or width not in heads:
        start = time.monotonic()  # the search's wall time: the worker's round trip included
        # only this trial's width: a width the space offers may not even fit in memory
        new = runner.measure(config.backbone, int(config.image_size),
                             [] if width in heads else [int(config.head_width)],
                             features=entry.get("features") if entry.get("backbone") else None,
                             convert=convert)
        seconds = time.monotonic() - start
        # another worker may have measured other widths meanwhile: merge with what is there now
        measured = record.measured_costs(study)
        entry = dict(measured.get(key) or entry)
        heads = {**_backbone_heads(measured, config.backbone), **heads, **entry.get("heads", {}),
                 **{str(k): v for k, v in new["heads"].items()}}
        entry = {"backbone": entry.get("backbone") or new["backbone"],
                 "features": new["features"], "heads": heads,
                 "seconds": float(entry.get("seconds", 0.0)) + seconds}
        record.write_cost(study, key, entry)
    elif width not in entry.get("heads", {}):  # known from another size of the backbone
        entry["heads"] = heads
        record.write_cost(study, key, entry)
    return combine(entry, int(config.head_width))


def _backbone_heads(measured: dict[str, dict[str, Any]], backbone: str) -> dict[str, Any]:
    """Every hidden head width measured on ``backbone`` at any image size (same features)."""
    heads: dict[str, Any] = {}
    for key, entry in measured.items():
        if key.rsplit("@", 1)[0] == backbone:
            heads.update(entry.get("heads", {}))
    return heads


def known_cost(measured: dict[str, dict[str, Any]],
               config: dict[str, Any]) -> dict[str, Any] | None:
    """A configuration's cost from the study's measurements (``record.measured_costs``), or
    None while its architecture (or head width) is not measured."""
    try:
        entry = measured.get(_key(config["backbone"], int(config["image_size"])))
        width = int(config["head_width"])
    except (KeyError, TypeError, ValueError):
        return None
    if not entry or not entry.get("backbone") or str(width) not in entry.get("heads", {}):
        return None
    return combine(entry, width)


def combine(entry: dict[str, Any], head_width: int) -> dict[str, Any]:
    """A trial's cost from its architecture's measured parts (see the module's docstring)."""
    part, head = entry["backbone"], entry["heads"][str(int(head_width))]
    nbytes = part.get("tflite_bytes")  # None while its background conversion runs
    return {"latency_ms": round(float(part["latency_ms"]) + float(head["latency_ms"]), 3),
            "size_mb": (None if nbytes is None
                        else round((int(nbytes) + 4 * int(head["params"])) / MB, 3)),
            "params": int(part["params"]) + int(head["params"]),
            "throughput_ips": round(float(part["throughput_ips"]), 1)}


def measuring_seconds(study: Any) -> float:
    """Wall seconds the study's cost measurements held its trials up, all workers and runs
    together: the measurements between trials and the wait for background size conversions."""
    waited = (record.StudyRecord.of(study).size_seconds or {}).get("wait", 0.0)
    return float(waited) + sum(float(v.get("seconds", 0.0))
                               for v in record.measured_costs(study).values())
