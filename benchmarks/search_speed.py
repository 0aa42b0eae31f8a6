"""Benchmark (not a test): our search against the naive ways, same data and seed, in one run.

Contenders, each in its own child process (so peak RSS and TensorFlow state are its own):

  a  ``automl search`` as shipped: frozen-activation cache, median pruner, staged schedule,
     trials in a worker process that is replaced when its memory grows (RSS is measured over
     the search process and its worker together). From its study the report also takes the
     cost of each trial kind (``TrialResult.kind``: extraction, view extraction, fine-tuning,
     augmented head, head; pruned/failed trials have no result): count, median and total wall
     seconds; a head trial's cycle from ask to the next ask (after its leaderboard row); the
     time to the first finished trial; which trials trained an augmented or a fine-tuning phase
     for 2 epochs or more; and the size of the study's ``features/`` folder
  b  the same search with both switched off (``--no-feature-cache --pruner none``)
  c  a naive keras-tuner RandomSearch over the same space that builds and fits the whole model
     per trial, the way a user writes it by hand
  d  the fixed seed recipe: frozen backbone, Dense(256), Dropout(0.5), RMSprop 2e-5, 30 epochs
     (the notebook's fast feature extraction: the conv base runs once, the head trains 30 epochs)
  views      augmentation on cached views against live augmentation: (a)'s best configuration
     with augmentation ``light``, trained in process (``run_trial``) on 4 cached views with a
     cold cache (the views' extraction included), again with the views cached (read back from
     disk, as a new trial worker does), and live (``--augment-views 0``); same seed
  finetune   one fine-tuning epoch (the training loop's ``_Engine`` on the activations at the
     cut) against one forward pass of the same top over the same activations
  ablation   (a)'s best configuration with and without its augmentation and with and without
     fine-tuning (``flip`` / freeze depth 0.9 when it has neither): 4 trials in process, one
     shared activation cache, a 2x2 table of test (and validation) accuracy
  throughput feature extraction against the backbone's bare ``predict``, images per second

views, finetune and ablation start from (a)'s best finished configuration (from this run, or
from ``a.json`` of an earlier run in the same ``--workdir``; without either, EfficientNet-Lite0
at 96 px, freeze 1.0, Dense(128), dropout 0.2, learning rate 1e-3). b and c are given the wall
time (a) took (``--budget`` overrides): a fair "same time" race, and the only way to finish
today (their full 50 trials take hours on a CPU).

    python benchmarks/search_speed.py                 # the embedded default, 50 trials
    python benchmarks/search_speed.py --trials 8 --budget 120 --contenders a,c,d   # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

STARTED = time.time()  # this process's start (a child's: as ``automl search`` would start)
HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SEED_RECIPE = {"head_width": 256, "dropout": 0.5, "learning_rate": 2e-5, "epochs": 30,
               "batch_size": 20}
#: views, finetune and ablation start from this when no (a) has run (the space's start point)
FALLBACK_CONFIG = {"backbone": "efficientnet_lite0", "image_size": 96, "freeze_depth": 1.0,
                   "head_width": 128, "dropout": 0.2, "learning_rate": 1e-3,
                   "augmentation": "none"}
#: timed repetitions of a forward pass and a fine-tuning epoch (the medians are reported)
REPEATS = 3
#: the order of trial kinds in the report (automl.trial.run.trial_kind), then any other
KINDS = ["extraction", "view extraction", "fine-tuning", "augmented head", "head", "live",
         "pruned/failed"]


# ----------------------------------------------------------------------------- measurements

def own_rss_mb() -> float:
    """Resident memory of this process alone."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def tree_rss_mb(pid: int | None = None) -> float:
    """Resident memory of a process and all its descendants (the search and its trial worker)."""
    pid = pid or os.getpid()
    try:
        with open(f"/proc/{pid}/statm") as f:
            total = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
        children: list[int] = []
        for task in Path(f"/proc/{pid}/task").iterdir():
            children += [int(c) for c in (task / "children").read_text().split()]
    except OSError:  # gone meanwhile
        return 0.0
    return total + sum(tree_rss_mb(c) for c in children)


def peak_rss_mb() -> float:
    """Peak RSS of this process plus the largest peak of its finished children (the worker)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return (own + children) / 1024


def best_so_far(timeline: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """(seconds, best validation accuracy so far) at every improvement."""
    out: list[tuple[float, float]] = []
    for t, acc in sorted(timeline):
        if not out or acc > out[-1][1]:
            out.append((t, acc))
    return out


def time_to_reach(timeline: list[tuple[float, float]], target: float) -> float | None:
    """Seconds until a validation accuracy >= ``target`` was first finished (None: never)."""
    hits = [t for t, acc in timeline if acc >= target - 1e-9]
    return min(hits) if hits else None


# ----------------------------------------------------------------------------- contenders

def contender_search(args: argparse.Namespace, cached: bool) -> dict[str, Any]:
    """(a) or (b): automl's own search, in process, timed per trial."""
    from automl.config import RunConfig
    from automl.search.record import TrialRecord
    from automl.search.run import SearchRequest, run_search

    results = Path(args.workdir) / ("a" if cached else "b")
    run = RunConfig(seed=args.seed, feature_cache=cached, batch_size=args.batch_size)
    req = SearchRequest(space=args.space, data=args.data, results=str(results), study="bench",
                        trials=args.trials, timeout=None if cached else args.budget,
                        pruner="median" if cached else "none",
                        run=run)
    rss: list[float] = []
    own: list[float] = []
    start, t0 = time.monotonic(), time.time()  # the clock includes loading the data

    counts: list[int] = []

    def echo(line: str) -> None:
        if not counts:  # the first line says how many images each split has
            counts.extend(int(n) for n in re.findall(r"(\d+) (?:train|validation|test)", line))
        if line.startswith("["):  # one progress line per finished trial
            rss.append(tree_rss_mb())
            own.append(own_rss_mb())
            print(f"  {time.monotonic() - start:7.1f}s {line[:110]}", flush=True)

    study = run_search(req, echo=echo)
    wall = time.monotonic() - start
    timeline, finished, best_test = [], 0, None
    best_val = -1.0
    for t in study.trials:
        if t.state.name in ("COMPLETE", "PRUNED"):
            finished += 1
        if t.state.name == "COMPLETE":
            at = t.datetime_complete.timestamp() - t0
            timeline.append((at, float(t.value)))
            if t.value > best_val:
                best_val = float(t.value)
                best_test = TrialRecord.of(t).result.get("test_accuracy")
    records = [TrialRecord.of(t) for t in study.trials]
    worker = [rec.worker_memory for rec in records if rec.worker_memory]
    return {"wall": wall, "trials": finished, "timeline": timeline, "best_val": best_val,
            "best_test": best_test, "rss_per_trial": rss, "worker_per_trial": worker,
            "own_per_trial": own,
            "costs": study_costs(study, t0, results / "bench" / "features"),
            "best": best_trial(study),
            "peak_rss": peak_rss_mb()}


def best_trial(study: Any) -> dict[str, Any] | None:
    """The best COMPLETE trial: number, configuration, accuracies, whether it fine-tuned."""
    from automl.search.record import TrialRecord

    complete = [t for t in study.trials if t.state.name == "COMPLETE" and t.value is not None]
    if not complete:
        return None
    best = max(complete, key=lambda t: (float(t.value), -t.number))
    rec = TrialRecord.of(best)
    return {"number": best.number, "config": rec.config, "val": float(best.value),
            "test": rec.result.get("test_accuracy"), "kind": rec.result.get("kind"),
            "fine_tuned": any(row.get("phase") == 2 for row in rec.history)}


def du_mb(folder: Path) -> tuple[float, int]:
    """Disk use of a folder (as ``du``: allocated blocks) in MB, and its number of files."""
    total, files = 0, 0
    for path in folder.rglob("*") if folder.is_dir() else []:
        if path.is_file():
            total += path.stat().st_blocks * 512
            files += 1
    return total / 2**20, files


def study_costs(study: Any, t0: float, features: Path) -> dict[str, Any]:
    """What each kind of trial cost in a finished study, read through TrialRecord only.

    Wall seconds are Optuna's ``datetime_complete - datetime_start``. A head trial's cycle runs
    from its ``datetime_start`` to the next trial's: the search writes the leaderboard row
    before it asks for the next trial, so that interval is ask -> leaderboard row (and the
    next ask).
    """
    from automl.search.cost import measuring_seconds
    from automl.search.record import StudyRecord, TrialRecord, measured_costs

    trials = sorted(study.trials, key=lambda t: t.number)
    starts = {t.number: t.datetime_start for t in trials if t.datetime_start is not None}
    kinds: dict[str, list[float]] = {}
    states: dict[str, int] = {}
    head_cycles: list[float] = []
    phased: list[dict[str, Any]] = []
    for t in trials:
        rec = TrialRecord.of(t)
        states[t.state.name] = states.get(t.state.name, 0) + 1
        kind = (rec.result.get("kind") or "unrecorded") if rec.result else "pruned/failed"
        if t.datetime_start is not None and t.datetime_complete is not None:
            seconds = (t.datetime_complete - t.datetime_start).total_seconds()
            kinds.setdefault(kind, []).append(seconds)
        if (t.state.name == "COMPLETE" and kind == "head" and t.datetime_start is not None
                and t.number + 1 in starts):
            head_cycles.append((starts[t.number + 1] - t.datetime_start).total_seconds())
        policy = str(rec.config.get("augmentation", "none"))
        # phase-1 rows of an augmented trial are its own: only a trial without augmentation
        # takes over an earlier trial's head phase (a warm start)
        phase1 = sum(1 for row in rec.history if row.get("phase") == 1)
        phase2 = sum(1 for row in rec.history if row.get("phase") == 2)
        augmented = policy != "none" and (phase1 >= 2 or phase2 >= 2)
        tuned = phase2 >= 2
        if augmented or tuned:
            phased.append({"number": t.number, "state": t.state.name, "augmentation": policy,
                           "augmented": augmented, "fine_tuned": tuned,
                           "freeze_depth": rec.config.get("freeze_depth")})
    complete = [t for t in trials if t.state.name == "COMPLETE" and t.datetime_complete]
    first = min(complete, key=lambda t: t.datetime_complete) if complete else None
    size_mb, files = du_mb(features)
    return {
        "kinds": {k: {"count": len(v), "median": statistics.median(v), "total": sum(v)}
                  for k, v in kinds.items()},
        "states": states,
        "head_cycle_median": statistics.median(head_cycles) if head_cycles else None,
        "head_cycles": len(head_cycles),
        "first_complete": None if first is None else {
            "number": first.number, "val": float(first.value),
            "from_process": first.datetime_complete.timestamp() - STARTED,
            "from_search": first.datetime_complete.timestamp() - t0},
        "phased": phased,
        "features_mb": size_mb, "features_files": files, "features_dir": str(features),
        "cost_seconds": measuring_seconds(study), "architectures": len(measured_costs(study)),
        "size_seconds": StudyRecord.of(study).size_seconds or {},
    }


def _naive_inputs(args: argparse.Namespace) -> tuple[Any, Any]:
    from automl.data.load import load_data
    from automl.space import SearchSpace

    space = SearchSpace.from_file(args.space)
    data = load_data(args.data, seed=args.seed)
    return space, data


def _naive_model(spec: Any, size: int, freeze_depth: float, head_width: int, dropout: float,
                 n_classes: int, weights: Any, augmentation: str, seed: int) -> Any:
    """What a user writes: backbone(include_top=False), freeze the first layers, add a head."""
    import keras

    from automl.backbones.build import build_backbone
    from automl.trial.layers import Preprocess, augmentation_layers

    base = build_backbone(spec, (size, size, 3), weights)
    frozen = int(round(freeze_depth * len(base.layers)))
    for i, layer in enumerate(base.layers):
        layer.trainable = i >= frozen and not isinstance(layer, keras.layers.BatchNormalization)
    image = keras.Input((size, size, 3))
    x = image
    for layer in augmentation_layers(augmentation, seed):
        x = layer(x)
    x = Preprocess(spec.preprocess)(x)
    x = keras.layers.GlobalAveragePooling2D()(base(x))
    if head_width:
        x = keras.layers.Dense(head_width, activation="relu")(x)
    x = keras.layers.Dropout(dropout)(x)
    return keras.Model(image, keras.layers.Dense(n_classes, activation="softmax")(x))


def contender_keras_tuner(args: argparse.Namespace) -> dict[str, Any]:
    """(c): keras-tuner RandomSearch building and fitting the whole model in every trial."""
    import keras
    import keras_tuner as kt

    from automl.backbones.registry import get_spec
    from automl.backbones.weights import WeightsResolver
    from automl.data import pipeline
    from automl.space import Categorical, Fixed, FloatRange, IntRange

    start = time.monotonic()
    space, data = _naive_inputs(args)
    resolver = WeightsResolver(seed=args.seed)
    n_classes = len(data.class_names)
    deadline = start + args.budget
    tests: dict[str, float] = {}
    timeline: list[tuple[float, float]] = []

    def hp_value(hp: Any, name: str) -> Any:
        p = space.params[name]
        if isinstance(p, Fixed):
            return hp.Fixed(name, p.value)
        if isinstance(p, Categorical):
            return hp.Choice(name, list(p.choices))
        if isinstance(p, IntRange):
            return hp.Int(name, p.low, p.high, step=p.step or 1)
        assert isinstance(p, FloatRange)
        return hp.Float(name, p.low, p.high, step=p.step,
                        sampling="log" if p.log else "linear")

    class Budget(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            if time.monotonic() > deadline:
                self.model.stop_training = True

    class Naive(kt.HyperModel):
        def build(self, hp: Any) -> Any:
            keras.backend.clear_session()
            spec = get_spec(hp_value(hp, "backbone"))
            size = hp_value(hp, "image_size")
            weights = resolver.resolve(spec, size).weights
            model = _naive_model(spec, size, hp_value(hp, "freeze_depth"),
                                 hp_value(hp, "head_width"), hp_value(hp, "dropout"), n_classes,
                                 weights, hp_value(hp, "augmentation"), args.seed)
            model.compile(keras.optimizers.Adam(hp_value(hp, "learning_rate")),
                          loss="sparse_categorical_crossentropy", metrics=["accuracy"])
            return model

        def fit(self, hp: Any, model: Any, *a: Any, **kw: Any) -> Any:
            size = hp.get("image_size")
            train = pipeline.dataset(data.train, size, 64, shuffle=True, seed=args.seed)
            val = pipeline.dataset(data.validation, size, 64)
            history = model.fit(train, validation_data=val, epochs=10, verbose=0,
                                callbacks=[*kw.get("callbacks", []), Budget(),
                                           keras.callbacks.EarlyStopping(
                                               patience=3, restore_best_weights=True)])
            best = max(history.history["val_accuracy"])
            test = pipeline.dataset(data.test, size, 64)
            tests[kw["trial_id"]] = model.evaluate(test, verbose=0)[1]
            timeline.append((time.monotonic() - start, best))
            print(f"  {time.monotonic() - start:7.1f}s trial {len(timeline)} val_acc={best:.4f} "
                  f"{dict(hp.values)}", flush=True)
            return best

    class Tuner(kt.RandomSearch):
        def run_trial(self, trial: Any, *a: Any, **kw: Any) -> Any:
            if time.monotonic() > deadline:
                return {"val_accuracy": float("nan")}
            kw["trial_id"] = trial.trial_id
            return super().run_trial(trial, *a, **kw)

        def on_trial_end(self, trial: Any) -> None:
            super().on_trial_end(trial)
            if time.monotonic() > deadline:
                self.oracle.max_trials = len(self.oracle.trials)

    # keras-tuner takes seed 0 as "no seed" (a random one): + 1 keeps (c) repeatable
    tuner = Tuner(Naive(), objective="val_accuracy", max_trials=args.trials, seed=args.seed + 1,
                  directory=str(Path(args.workdir) / "c"), project_name="naive", overwrite=True,
                  executions_per_trial=1, max_consecutive_failed_trials=5)
    tuner.search(verbose=0)
    wall = time.monotonic() - start
    best_i = max(range(len(timeline)), key=lambda i: timeline[i][1]) if timeline else None
    best_val = timeline[best_i][1] if best_i is not None else None
    ids = list(tests)
    return {"wall": wall, "trials": len(timeline), "timeline": timeline, "best_val": best_val,
            "best_test": tests[ids[best_i]] if best_i is not None else None,
            "peak_rss": peak_rss_mb()}


def contender_seed_recipe(args: argparse.Namespace) -> dict[str, Any]:
    """(d): the notebook recipe, conv base run once, Dense(256)+Dropout(0.5) head, RMSprop 2e-5."""
    import keras
    import numpy as np

    from automl.backbones.build import build_backbone
    from automl.backbones.registry import get_spec
    from automl.backbones.weights import WeightsResolver
    from automl.data import pipeline
    from automl.trial.layers import Preprocess

    start = time.monotonic()
    space, data = _naive_inputs(args)
    backbone = space.backbones()[0]
    size = max(space.params["image_size"].values())
    spec = get_spec(backbone)
    keras.utils.set_random_seed(args.seed)
    weights = WeightsResolver(seed=args.seed).resolve(spec, size).weights
    base = build_backbone(spec, (size, size, 3), weights)
    image = keras.Input((size, size, 3))
    conv_base = keras.Model(image, keras.layers.GlobalAveragePooling2D()(
        base(Preprocess(spec.preprocess)(image))))

    def features(split: Any) -> Any:
        return conv_base.predict(pipeline.dataset(split, size, 64), verbose=0)

    x_train, x_val, x_test = (features(s) for s in (data.train, data.validation, data.test))
    head = keras.Sequential([keras.Input(x_train.shape[1:]),
                             keras.layers.Dense(SEED_RECIPE["head_width"], activation="relu"),
                             keras.layers.Dropout(SEED_RECIPE["dropout"]),
                             keras.layers.Dense(len(data.class_names), activation="softmax")])
    head.compile(keras.optimizers.RMSprop(SEED_RECIPE["learning_rate"]),
                 loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    timeline: list[tuple[float, float]] = []

    class Clock(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            timeline.append((time.monotonic() - start, float(logs["val_accuracy"])))

    head.fit(x_train, data.train.labels, validation_data=(x_val, data.validation.labels),
             epochs=SEED_RECIPE["epochs"], batch_size=SEED_RECIPE["batch_size"], verbose=0,
             callbacks=[Clock()])
    test = float(np.mean(np.argmax(head.predict(x_test, verbose=0), 1) == data.test.labels))
    return {"wall": time.monotonic() - start, "trials": 1, "timeline": timeline,
            "best_val": max(a for _, a in timeline), "best_test": test,
            "recipe": f"{backbone} {size}px", "peak_rss": peak_rss_mb()}


def contender_throughput(args: argparse.Namespace) -> dict[str, Any]:
    """Feature extraction (our path) against the backbone's bare predict, images per second."""
    import keras
    import numpy as np

    from automl.backbones.registry import get_spec
    from automl.backbones.weights import WeightsResolver
    from automl.config import TrialConfig
    from automl.data import pipeline
    from automl.trial.model import build_model, reset_keras
    from automl.trial.run import extract_features

    space, data = _naive_inputs(args)
    size = max(space.params["image_size"].values())
    split = data.train
    rows = []
    for backbone in space.backbones():
        spec = get_spec(backbone)
        reset_keras(args.seed)
        weights = WeightsResolver(seed=args.seed).resolve(spec, size).weights
        config = TrialConfig(backbone, size, 1.0, 0, 0.0, 1e-3, "none")
        tm = build_model(config, spec, len(data.class_names), weights)
        ours = tm.feature_model(at_cut=False)
        image = keras.Input((size, size, 3))
        bare = keras.Model(image, tm.inference.get_layer("avg_pool")(
            tm.bottom(tm.inference.get_layer("preprocess")(image))))
        batch = pipeline.images(split, size).batch(len(split)).get_single_element()
        array = np.asarray(batch, np.float32)
        bare.predict(array[:64], verbose=0)  # build both before timing
        extract_features(ours, split, size, 64)
        best = {"bare": 0.0, "ours": 0.0}
        for _ in range(2):  # alternate, keep the best of two
            t = time.monotonic()
            bare.predict(array, batch_size=64, verbose=0)
            best["bare"] = max(best["bare"], len(array) / (time.monotonic() - t))
            t = time.monotonic()
            extract_features(ours, split, size, 64)
            best["ours"] = max(best["ours"], len(array) / (time.monotonic() - t))
        rows.append({"backbone": backbone, "size": size, **best,
                     "ratio": best["ours"] / best["bare"]})
        print(f"  {backbone} {size}px: ours {best['ours']:.0f} img/s, bare predict "
              f"{best['bare']:.0f} img/s", flush=True)
    return {"rows": rows, "peak_rss": peak_rss_mb()}


# --------------------------------------------------------------- one configuration, in process

def _base(args: argparse.Namespace) -> dict[str, Any]:
    """The configuration views, finetune and ablation start from (see ``base_config``)."""
    base = json.loads(args.base) if args.base else {}
    return {"config": dict(base.get("config") or FALLBACK_CONFIG),
            "source": base.get("source", "fallback"), "fine_tuned": base.get("fine_tuned", False)}


def _trial_setup(args: argparse.Namespace, config: Any) -> tuple[Any, Any, Any, Any]:
    """What in-process trials share: (space, data, weights resolver, RunConfig).

    The backbone's weights are found (and converted) and TensorFlow is started before any
    timing, as a trial worker has them before its trials.
    """
    import tensorflow  # noqa: F401  (started before the clock)

    from automl.backbones.registry import get_spec
    from automl.backbones.weights import WeightsResolver
    from automl.config import RunConfig

    space, data = _naive_inputs(args)
    resolver = WeightsResolver(seed=args.seed)
    resolver.resolve(get_spec(config.backbone), config.image_size)
    run = RunConfig(seed=args.seed, batch_size=args.batch_size, cut_depths=space.cut_depths())
    return space, data, resolver, run


def _timed_trial(config: Any, ctx: Any) -> dict[str, Any]:
    """One in-process trial (number 0: every variant gets the same initial head weights)."""
    from automl.trial.run import run_trial

    start = time.monotonic()
    result = run_trial(config, ctx, 0)
    return {"seconds": time.monotonic() - start, "val": result.val_accuracy,
            "test": result.test_accuracy, "kind": result.kind, "epochs": result.epochs,
            "best_phase": result.best_phase,
            "phase2_epochs": sum(1 for row in result.history if row.get("phase") == 2)}


def _describe(config: dict[str, Any]) -> str:
    return (f"{config['backbone']} {config['image_size']}px, freeze {config['freeze_depth']}, "
            f"head {config['head_width']}, dropout {config['dropout']:.2f}, "
            f"lr {config['learning_rate']:.2g}, augmentation {config['augmentation']}")


def contender_views(args: argparse.Namespace) -> dict[str, Any]:
    """Cached augmented views (cold, then reused) against live augmentation, one configuration."""
    import dataclasses

    from automl.config import TrialConfig
    from automl.trial.features import FeatureCache
    from automl.trial.run import SearchContext

    base = _base(args)
    config = dataclasses.replace(TrialConfig.from_params(base["config"]), augmentation="light")
    space, data, resolver, run = _trial_setup(args, config)
    run = dataclasses.replace(run, augment_views=4)
    root = Path(args.workdir) / "views"
    shutil.rmtree(root, ignore_errors=True)  # a cold cache: nothing extracted yet
    limit = run.cache_memory_mb * 2**20
    rows: dict[str, dict[str, Any]] = {}
    # the reuse gets a new cache over the same folder: it reads the views back from disk, as the
    # trial worker that replaces the one which extracted them does
    for label, trial_run, cache in (
            ("cached, cold", run, FeatureCache(root / "features", limit)),
            ("cached, warm", run, FeatureCache(root / "features", limit)),
            ("live", dataclasses.replace(run, augment_views=0), FeatureCache(None, limit))):
        ctx = SearchContext(data, trial_run, resolver, cache, root / label.replace(", ", "-"))
        rows[label] = _timed_trial(config, ctx)
        r = rows[label]
        print(f"  {label:13} {r['seconds']:7.1f} s  val {r['val']:.4f} test {r['test']:.4f} "
              f"({r['kind']}, {r['epochs']} epochs)", flush=True)
    return {"config": config.as_dict(), "source": base["source"], "views": run.augment_views,
            "rows": rows, "peak_rss": peak_rss_mb()}


def contender_finetune(args: argparse.Namespace) -> dict[str, Any]:
    """A fine-tuning epoch against one forward pass of the same top over the same activations."""
    import dataclasses

    import numpy as np
    import tensorflow as tf

    from automl.backbones.registry import get_spec
    from automl.config import TrialConfig
    from automl.trial.model import build_model, reset_keras
    from automl.trial.run import extract_features
    from automl.trial.train import ArrayFeed, _Engine

    base = _base(args)
    config = TrialConfig.from_params(base["config"])
    tuned_base = base["fine_tuned"] or config.freeze_depth < 1.0
    config = dataclasses.replace(config, augmentation="none",
                                 freeze_depth=config.freeze_depth if tuned_base else 0.9)
    _, data, resolver, run = _trial_setup(args, config)
    spec = get_spec(config.backbone)
    reset_keras(args.seed)
    weights = resolver.resolve(spec, config.image_size).weights
    tm = build_model(config, spec, len(data.class_names), weights, seed=args.seed)
    if tm.top is None:
        raise SystemExit(f"error: freeze depth {config.freeze_depth} leaves no top to fine-tune")
    start = time.monotonic()
    acts = extract_features(tm.feature_model(at_cut=True), data.train, config.image_size,
                            args.batch_size)
    extract_s = time.monotonic() - start
    top = tm.top_model()
    forward = tf.function(lambda x: top(x, training=False), reduce_retracing=True)
    batches = [tf.constant(acts[i:i + args.batch_size])
               for i in range(0, len(acts), args.batch_size)]
    forward(batches[0]).numpy()  # warm-up: trace (the last, shorter batch too)
    forward(batches[-1]).numpy()
    tm.set_phase(2)
    lr = config.learning_rate * run.fine_tune_lr_factor
    engine = _Engine(top, lr, binary=tm.binary)
    feed = ArrayFeed(acts, np.asarray(data.train.labels), args.batch_size, shuffle=True,
                     seed=args.seed)
    engine.train_epoch(feed, 0)  # warm-up epoch: traces the compiled epoch
    forwards, epochs = [], []
    for rep in range(REPEATS):  # interleaved, so a slow spell of the machine hits both
        start = time.monotonic()
        for batch in batches:
            forward(batch).numpy()
        forwards.append(time.monotonic() - start)
        start = time.monotonic()
        engine.train_epoch(feed, rep + 1)
        epochs.append(time.monotonic() - start)
    forward_s, epoch_s = statistics.median(forwards), statistics.median(epochs)
    trainable = int(sum(np.prod(v.shape) for v in top.trainable_variables))
    print(f"  cut {tm.cut.layer} (depth {tm.cut.depth:.2f}), activations {acts.shape}: forward "
          f"{forward_s:.2f} s, fine-tuning epoch {epoch_s:.2f} s", flush=True)
    return {"config": config.as_dict(), "source": base["source"], "from_best": tuned_base,
            "cut": tm.cut.layer, "depth": tm.cut.depth, "shape": list(acts.shape),
            "extract": extract_s, "forward": forward_s, "epoch": epoch_s,
            "forwards": forwards, "epochs": epochs,
            "trainable": trainable, "batch_size": args.batch_size, "peak_rss": peak_rss_mb()}


def contender_ablation(args: argparse.Namespace) -> dict[str, Any]:
    """(a)'s best configuration with/without its augmentation and with/without fine-tuning."""
    import dataclasses

    from automl.config import TrialConfig
    from automl.trial.features import FeatureCache
    from automl.trial.run import SearchContext

    base = _base(args)
    config = TrialConfig.from_params(base["config"])
    policy = config.augmentation if config.augmentation != "none" else "flip"
    depth = config.freeze_depth if config.freeze_depth < 1.0 else 0.9
    _, data, resolver, run = _trial_setup(args, config)
    root = Path(args.workdir) / "ablation"
    shutil.rmtree(root, ignore_errors=True)
    cache = FeatureCache(root / "features", run.cache_memory_mb * 2**20)  # shared by all four
    cells: dict[str, dict[str, Any]] = {}
    # the cheapest first: it extracts the activations (and those at the cuts) the others reuse
    for aug, freeze in (("none", 1.0), ("none", depth), (policy, 1.0), (policy, depth)):
        variant = dataclasses.replace(config, augmentation=aug, freeze_depth=freeze)
        ctx = SearchContext(data, run, resolver, cache, root / f"trials-{aug}-{freeze}")
        key = f"{aug}|{freeze}"
        cells[key] = _timed_trial(variant, ctx)
        c = cells[key]
        print(f"  augmentation {aug:5} freeze {freeze:<4}: val {c['val']:.4f} test "
              f"{c['test']:.4f} {c['seconds']:6.1f} s ({c['kind']}, best phase "
              f"{c['best_phase']})", flush=True)
    return {"config": config.as_dict(), "source": base["source"], "policy": policy,
            "depth": depth, "cells": cells, "peak_rss": peak_rss_mb()}


CHILDREN = {"a": lambda a: contender_search(a, True), "b": lambda a: contender_search(a, False),
            "c": contender_keras_tuner, "d": contender_seed_recipe,
            "throughput": contender_throughput, "views": contender_views,
            "finetune": contender_finetune, "ablation": contender_ablation}
NAMES = {"a": "(a) automl: cache + pruning", "b": "(b) automl: no cache, no pruner",
         "c": "(c) keras-tuner RandomSearch, naive", "d": "(d) seed recipe (fixed)",
         "views": "views: cached augmented views against live augmentation",
         "finetune": "finetune: a fine-tuning epoch against a forward pass",
         "ablation": "ablation: (a)'s best with and without augmentation and fine-tuning"}
#: the contenders that start from (a)'s best configuration
FROM_A = ("views", "finetune", "ablation")
#: the order they run in: a first (it sets the budget of b and c and the others' configuration)
ORDER = ["a", "views", "finetune", "ablation", "d", "throughput", "c", "b"]


# ----------------------------------------------------------------------------- the run

def base_config(results: dict[str, dict[str, Any]], workdir: str) -> dict[str, Any]:
    """(a)'s best finished configuration: from this run, else from an earlier run's ``a.json``
    in the same workdir (with its source), else none (the children use FALLBACK_CONFIG)."""
    earlier = Path(workdir) / "a.json"
    if "a" in results:
        a, source = results["a"], "this run's (a)"
    elif earlier.is_file():
        a, source = json.loads(earlier.read_text()), f"(a) of an earlier run in {workdir}"
    else:
        return {}
    best = a.get("best")
    if not best or not best.get("config"):
        return {}
    return {"config": best["config"], "fine_tuned": best.get("fine_tuned", False),
            "source": f"{source}, trial {best['number']} (val {best['val']:.4f}, test "
                      f"{fmt(best.get('test'), '.4f', '-')})"}


def run_child(name: str, args: argparse.Namespace, base: dict[str, Any] | None = None,
              ) -> dict[str, Any]:
    out = Path(args.workdir) / f"{name}.json"
    cmd = [sys.executable, __file__, "--child", name, "--json", str(out), "--trials",
           str(args.trials), "--budget", str(args.budget), "--seed", str(args.seed),
           "--space", args.space, "--workdir", args.workdir,
           "--batch-size", str(args.batch_size)]
    if args.data:
        cmd += ["--data", args.data]
    if base:
        cmd += ["--base", json.dumps(base)]
    print(f"\n== {NAMES.get(name, name)} ==", flush=True)
    if subprocess.run(cmd, cwd=ROOT).returncode:
        sys.exit(f"error: contender {name} failed (its output is above)")
    return json.loads(out.read_text())


def fmt(x: float | None, spec: str = ".1f", none: str = "never") -> str:
    return none if x is None else format(x, spec)


def report(res: dict[str, dict[str, Any]], args: argparse.Namespace) -> str:
    lines = [f"machine: {platform.machine()}, {os.cpu_count()} CPU cores, "
             f"{platform.python_version()}; data: {args.data or 'embedded Animal-MNIST'}; "
             f"space: {Path(args.space).name}; seed {args.seed}; trials {args.trials}; "
             f"budget for b and c: {args.budget:.0f} s", ""]
    target_d = res["d"]["best_val"] if "d" in res else None
    target_c = res["c"]["best_val"] if "c" in res else None
    head = (f"{'contender':38} {'wall s':>8} {'trials':>6} {'best val':>8} {'test':>7} "
            f"{'to (d) s':>9} {'to (c) s':>9} {'peak RSS MB':>11}")  # own + worker's
    lines += [head, "-" * len(head)]
    for key in "abcd":
        if key not in res:
            continue
        r = res[key]
        tl = r["timeline"]
        lines.append(f"{NAMES[key]:38} {r['wall']:8.0f} {r['trials']:6d} "
                     f"{fmt(r['best_val'], '.4f', '-'):>8} {fmt(r['best_test'], '.4f', '-'):>7} "
                     f"{fmt(time_to_reach(tl, target_d)) if target_d else '-':>9} "
                     f"{fmt(time_to_reach(tl, target_c)) if target_c else '-':>9} "
                     f"{r['peak_rss']:11.0f}")
    lines.append("")
    if "a" in res:
        a = res["a"]
        for other in ("c", "b"):
            if other not in res:
                continue
            o = res[other]
            t_o = time_to_reach(o["timeline"], o["best_val"]) if o["best_val"] else None
            t_a = time_to_reach(a["timeline"], o["best_val"]) if o["best_val"] else None
            ratio = t_o / t_a if t_o and t_a else None
            lines.append(f"({other})/(a): time to ({other})'s final best val "
                         f"{fmt(o['best_val'], '.4f', '-')}: ({other}) {fmt(t_o)} s, (a) "
                         f"{fmt(t_a)} s -> ratio {fmt(ratio, '.1f', 'n/a')}x; trials per hour "
                         f"({other}) {3600 * o['trials'] / o['wall']:.0f} vs (a) "
                         f"{3600 * a['trials'] / a['wall']:.0f}")
        rss = a["rss_per_trial"]
        worker = a.get("worker_per_trial") or []
        if rss:
            # a sample taken right after the worker was replaced shows the new one still
            # starting (about 300 MB): the baseline is the first sample with a settled worker
            pids = [w["pid"] for w in worker] if len(worker) == len(rss) else []
            settled = [i for i in range(len(rss))
                       if not pids or i + 1 >= len(pids) or pids[i + 1] == pids[i]]
            base_i = settled[0] if settled else 0
            base = rss[base_i]
            upto = rss[: min(len(rss), 30)]
            lines.append(f"(a) RSS between trials (search process + trial worker, sampled as "
                         f"the next trial is picked): after trial {base_i + 1} (the first with "
                         f"a settled worker) {base:.0f} MB; highest after trials "
                         f"{base_i + 2}-{len(upto)} {max(upto[base_i + 1:] or [base]):.0f} MB "
                         f"(growth {max(upto[base_i + 1:] or [base]) - base:+.0f} MB); highest "
                         f"over all {len(rss)} {max(rss):.0f} MB (growth {max(rss) - base:+.0f} "
                         f"MB); lowest {min(rss):.0f} MB (a replaced worker still starting)")
        own = a.get("own_per_trial") or []
        if worker:
            outside = [w["rss_mb"] - w["cache_mb"] for w in worker]
            lines.append(f"(a) trial worker: {len({w['pid'] for w in worker})} process(es) over "
                         f"{len(worker)} trials; RSS outside its bounded caches {outside[0]:.0f} "
                         f"MB after trial 1, max {max(outside):.0f} MB; bounded caches "
                         f"(activations + resized images) {worker[0]['cache_mb']:.0f} MB after "
                         f"trial 1, max {max(w['cache_mb'] for w in worker):.0f} MB")
        if own and len(own) == len(worker):
            ends = [o + w["rss_mb"] for o, w in zip(own, worker, strict=True)]
            lines.append(f"(a) at each trial's end, before a grown worker is replaced (search "
                         f"process + that worker): after trial 1 {ends[0]:.0f} MB, highest "
                         f"{max(ends):.0f} MB ({max(ends) - ends[0]:+.0f} MB); the search "
                         f"process alone {own[0]:.0f} MB after trial 1, {own[-1]:.0f} MB after "
                         f"the last")
    if "throughput" in res:
        for row in res["throughput"]["rows"]:
            lines.append(f"feature extraction {row['backbone']} {row['size']}px: "
                         f"{row['ours']:.0f} img/s vs bare predict {row['bare']:.0f} img/s "
                         f"= {100 * row['ratio']:.0f}%")
    if res.get("a", {}).get("costs"):
        lines += ["", *report_costs(res["a"]["costs"], res.get("views"))]
        seconds, wall = res["a"]["costs"].get("cost_seconds"), res["a"].get("wall")
        if seconds is not None and wall:
            background = res["a"]["costs"].get("size_seconds") or {}
            lines.append(f"(a) serving-cost measurement (latency, throughput; once per backbone "
                         f"and size, in the trial worker between trials; plus the wait for the "
                         f"background .tflite size conversions at the end): {seconds:.1f} s of "
                         f"the {wall:.0f} s wall = {100 * seconds / wall:.1f}% (target <= 10%) "
                         f"({res['a']['costs']['architectures']} architectures); the background "
                         f"conversions (nice 19, beside the trials): "
                         f"{background.get('cpu', 0.0):.1f} CPU s, waited for "
                         f"{background.get('wait', 0.0):.1f} s")
    for name, section in (("views", report_views), ("finetune", report_finetune),
                          ("ablation", report_ablation)):
        if name in res:
            lines += ["", *section(res[name])]
    return "\n".join(lines)


def report_costs(costs: dict[str, Any], views: dict[str, Any] | None) -> list[str]:
    """(a)'s study: what each kind of trial cost, the first result, augmented and fine-tuning
    trials, the activation cache on disk."""
    kinds = costs["kinds"]
    states = ", ".join(f"{k} {v}" for k, v in sorted(costs["states"].items()))
    lines = [f"(a) time per trial kind (wall seconds from Optuna's datetime_start to "
             f"datetime_complete; kind = what dominated the trial's cost, pruned/failed trials "
             f"have none; states: {states}):",
             f"  {'kind':22} {'trials':>6} {'median s':>9} {'total s':>8}"]
    for kind in [*KINDS, *sorted(set(kinds) - set(KINDS))]:
        if kind in kinds:
            k = kinds[kind]
            lines.append(f"  {kind:22} {k['count']:6d} {k['median']:9.1f} {k['total']:8.1f}")
        elif kind != "live":  # every kind the issue names, also when this run had none
            lines.append(f"  {kind:22} {0:6d} {'-':>9} {'-':>8}")
    live = (views or {}).get("rows", {}).get("live")
    if live:
        lines.append(f"  {'live (from views)':22} {1:6d} {live['seconds']:9.1f} "
                     f"{live['seconds']:8.1f}   <- not in (a): the search caches views; this is "
                     f"the views contender's live trial")
    cycle = (f"median {costs['head_cycle_median']:.1f} s over {costs['head_cycles']} trials"
             if costs["head_cycle_median"] is not None
             else "n/a (no finished 'head' trial was followed by another trial)")
    lines.append(f"(a) a finished 'head' trial from ask to its leaderboard row: {cycle} "
                 f"(measured from its datetime_start to the next trial's, which is asked after "
                 f"the row is written)")
    first = costs["first_complete"]
    if not first:
        lines.append("(a) first finished trial: none finished")
    else:
        lines.append(f"(a) first finished trial: {first['from_process']:.1f} s after the search "
                     f"command started ({first['from_search']:.1f} s after run_search was "
                     f"called, data loading included): trial {first['number']}, val "
                     f"{first['val']:.4f}")
    phased = costs["phased"]
    aug = [t for t in phased if t["augmented"]]
    tuned = [t for t in phased if t["fine_tuned"]]
    policies: dict[str, int] = {}
    for t in phased:
        if t["augmentation"] != "none":
            policies[t["augmentation"]] = policies.get(t["augmentation"], 0) + 1
    pstates: dict[str, int] = {}
    for t in phased:
        pstates[t["state"]] = pstates.get(t["state"], 0) + 1
    lines.append(
        f"(a) trials that trained >= 2 epochs of an augmented phase or of a fine-tuning phase: "
        f"{len(phased)} (augmented {len(aug)}, fine-tuning {len(tuned)}, both "
        f"{sum(1 for t in phased if t['augmented'] and t['fine_tuned'])}); "
        f"{sum(policies.values())} of them use augmentation"
        + (f" ({', '.join(f'{k} x{v}' for k, v in sorted(policies.items()))})" if policies
           else "")
        + (f"; {', '.join(f'{k} {v}' for k, v in sorted(pstates.items()))}" if pstates else "")
        + (f"; trials {', '.join(str(t['number']) for t in phased)}" if phased else ""))
    lines.append(f"(a) activation cache on disk ({costs['features_dir']}): "
                 f"{costs['features_mb']:.0f} MB (du), {costs['features_files']} files")
    return lines


def _ratio(num: float | None, den: float | None) -> str:
    return f"{num / den:.1f}x" if num and den else "n/a"


def report_views(v: dict[str, Any]) -> list[str]:
    rows = v["rows"]
    lines = [f"views: cached augmentation ({v['views']} views per image) against live "
             f"augmentation, one configuration, same seed: {_describe(v['config'])} "
             f"(from {v['source']}, augmentation set to light)",
             f"  {'variant':14} {'kind':16} {'val':>7} {'test':>7} {'wall s':>7} {'epochs':>6}"]
    for label, r in rows.items():
        lines.append(f"  {label:14} {r['kind']:16} {r['val']:7.4f} {fmt(r['test'], '.4f', '-'):>7}"
                     f" {r['seconds']:7.1f} {r['epochs']:6d}")
    live = rows.get("live")
    parts = []
    for label in ("cached, cold", "cached, warm"):
        c = rows.get(label)
        if live and c:
            test = (f", test {live['test'] - c['test']:+.4f}"
                    if live["test"] is not None and c["test"] is not None else "")
            name = label.replace(", ", "-")
            parts.append(f"live/{name}: time {_ratio(live['seconds'], c['seconds'])}, "
                         f"accuracy live - cached: val {live['val'] - c['val']:+.4f}{test}")
    if parts:
        lines.append("  " + "; ".join(parts))
    lines.append("  (cold: a new activation cache, the trial extracts the views and the plain "
                 "activations itself; warm: a new cache over the same folder, read from disk "
                 "as a replaced trial worker does)")
    return lines


def report_finetune(f: dict[str, Any]) -> list[str]:
    chosen = "(a)'s best, which fine-tunes" if f["from_best"] else "freeze depth set to 0.9"
    calls = -(-f["shape"][0] // f["batch_size"])
    return [f"finetune: {_describe(f['config'])} ({chosen}; from {f['source']}); cut after "
            f"{f['cut']} (depth {f['depth']:.2f}); train activations at the cut "
            f"{'x'.join(map(str, f['shape']))} (extracted in {f['extract']:.1f} s)",
            f"  one forward pass of the top over them ({calls} compiled calls of "
            f"{f['batch_size']}, after a warm-up): {f['forward']:.2f} s; one fine-tuning epoch "
            f"(_Engine.train_epoch as fit_phase runs it, batches of {f['batch_size']}, "
            f"{f['trainable'] / 1e6:.2f} M trainable weights, after a warm-up epoch): "
            f"{f['epoch']:.2f} s -> the epoch costs {_ratio(f['epoch'], f['forward'])} the "
            f"forward pass",
            f"  (medians of {len(f.get('epochs', [0]))} interleaved repetitions; forward "
            f"{_seconds(f.get('forwards'))}, epoch {_seconds(f.get('epochs'))})"]


def _seconds(values: list[float] | None) -> str:
    return "/".join(f"{v:.2f}" for v in values or []) + " s"


def report_ablation(r: dict[str, Any]) -> list[str]:
    config, policy, depth, cells = r["config"], r["policy"], r["depth"], r["cells"]
    found = (config["augmentation"], float(config["freeze_depth"]))
    lines = [f"ablation: {_describe(config)} (from {r['source']}); test accuracy (val), "
             f"wall s of an in-process trial; * = the configuration as found",
             f"  {'':20}   {f'freeze {depth} (fine-tunes)':28} {'freeze 1.0 (frozen)'}"]

    def cell(aug: str, freeze: float) -> str:
        c = cells.get(f"{aug}|{freeze}")
        if c is None:
            return "-"
        mark = " *" if (aug, freeze) == found else ""
        return f"{fmt(c['test'], '.4f', '-')} ({c['val']:.4f}) {c['seconds']:4.0f} s{mark}"

    for aug in (policy, "none"):
        lines.append(f"  {'augmentation ' + aug:20}   {cell(aug, depth):28} {cell(aug, 1.0):28}"
                     .rstrip())
    lines.append("  kinds, in the order run (one shared activation cache, so the first trial's "
                 "extraction serves the others): "
                 + ", ".join(f"{k.replace('|', ' / ')} {c['kind']}" for k, c in cells.items()))

    def diff(k1: str, k2: str) -> str:
        a, b = cells.get(k1), cells.get(k2)
        if not a or not b or a["test"] is None or b["test"] is None:
            return "n/a"
        return f"{a['test'] - b['test']:+.4f}"

    lines.append(f"  test accuracy gained by {policy}: {diff(f'{policy}|{depth}', f'none|{depth}')}"
                 f" with fine-tuning, {diff(f'{policy}|1.0', 'none|1.0')} frozen; by fine-tuning "
                 f"(freeze {depth}): {diff(f'{policy}|{depth}', f'{policy}|1.0')} with {policy}, "
                 f"{diff(f'none|{depth}', 'none|1.0')} without")
    tuned = [k for k, c in cells.items() if k.endswith(f"|{depth}") and c["best_phase"] != 2]
    if tuned:
        lines.append(f"  (fine-tuning did not beat the head phase in {', '.join(tuned)}: those "
                     f"keep the head phase's weights, as a search trial does)")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=50,
                   help="trials of (a) and (b) (b and c stop at the budget too; default 50)")
    p.add_argument("--budget", type=float, default=0,
                   help="seconds for (b) and (c); 0 = the wall time (a) took")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", help="as automl search --data (default: embedded Animal-MNIST)")
    p.add_argument("--space", default=str(ROOT / "automl" / "search_spaces" / "default.yaml"))
    p.add_argument("--batch-size", type=int, default=64,
                   help="the trials' batch size (a, b, views, finetune, ablation) and the "
                        "forward pass's in finetune (default 64, as automl search)")
    p.add_argument("--contenders", default="a,b,c,d,throughput,views,finetune,ablation",
                   help="comma-separated, any of a, b, c, d, throughput, views, finetune, "
                        "ablation (they run in the order a, views, finetune, ablation, d, "
                        "throughput, c, b); views, finetune and ablation start from (a)'s best "
                        "configuration, from this run or an earlier run's a.json in --workdir")
    p.add_argument("--workdir", help="where the contenders write (default: a temporary folder)")
    p.add_argument("--out", help="also write the report to this file")
    p.add_argument("--report-from", metavar="WORKDIR",
                   help="print the report of an earlier run's --workdir again, running nothing")
    p.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    p.add_argument("--json", help=argparse.SUPPRESS)
    p.add_argument("--base", help=argparse.SUPPRESS)  # (a)'s best configuration, as JSON
    args = p.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if args.child:
        from automl.errors import AutoMLError

        try:
            result = CHILDREN[args.child](args)
        except AutoMLError as exc:
            sys.exit(f"error: {exc}")
        Path(args.json).write_text(json.dumps(result))
        return
    if args.report_from:
        done = {p.stem: json.loads(p.read_text()) for p in Path(args.report_from).glob("*.json")}
        if "c" in done or "b" in done:
            args.budget = args.budget or done.get("a", {}).get("wall", 0.0)
        print(report({k: v for k, v in done.items() if k in CHILDREN}, args))
        return
    args.workdir = args.workdir or tempfile.mkdtemp(prefix="automl-bench-")
    wanted = [w.strip() for w in args.contenders.split(",") if w.strip()]
    unknown = sorted(set(wanted) - set(CHILDREN))
    if unknown:
        p.error(f"unknown contender(s) {', '.join(unknown)}; choose from {', '.join(ORDER)}")
    results: dict[str, dict[str, Any]] = {}
    started = time.monotonic()
    for name in ORDER:
        if name not in wanted:
            continue
        if name in ("b", "c") and not args.budget:
            args.budget = results["a"]["wall"] if "a" in results else 600.0
        base = base_config(results, args.workdir) if name in FROM_A else None
        results[name] = run_child(name, args, base)
    text = report(results, args)
    print(f"\n== report (benchmark took {time.monotonic() - started:.0f} s) ==\n{text}")
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
