"""Benchmark (not a test): our search against the naive ways, same data and seed, in one run.

Contenders, each in its own child process (so peak RSS and TensorFlow state are its own):

  a  ``automl search`` as shipped: frozen-activation cache, median pruner, staged schedule,
     trials in a worker process that is replaced when its memory grows (RSS is measured over
     the search process and its worker together)
  b  the same search with both switched off (``--no-feature-cache --pruner none``)
  c  a naive keras-tuner RandomSearch over the same space that builds and fits the whole model
     per trial, the way a user writes it by hand
  d  the fixed seed recipe: frozen backbone, Dense(256), Dropout(0.5), RMSprop 2e-5, 30 epochs
     (the notebook's fast feature extraction: the conv base runs once, the head trains 30 epochs)

b and c are given the wall time (a) took (``--budget`` overrides): a fair "same time" race, and
the only way to finish today (their full 50 trials take hours on a CPU). It also measures feature
extraction against the backbone's bare ``predict`` throughput.

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
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SEED_RECIPE = {"head_width": 256, "dropout": 0.5, "learning_rate": 2e-5, "epochs": 30,
               "batch_size": 20}


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
    from automl.search.run import SearchRequest, run_search

    results = Path(args.workdir) / ("a" if cached else "b")
    run = RunConfig(seed=args.seed, feature_cache=cached)
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
                best_test = (t.user_attrs.get("result") or {}).get("test_accuracy")
    worker = [t.user_attrs.get("worker_memory") for t in study.trials
              if t.user_attrs.get("worker_memory")]
    return {"wall": wall, "trials": finished, "timeline": timeline, "best_val": best_val,
            "best_test": best_test, "rss_per_trial": rss, "worker_per_trial": worker,
            "own_per_trial": own,
            "peak_rss": peak_rss_mb()}


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


CHILDREN = {"a": lambda a: contender_search(a, True), "b": lambda a: contender_search(a, False),
            "c": contender_keras_tuner, "d": contender_seed_recipe,
            "throughput": contender_throughput}
NAMES = {"a": "(a) automl: cache + pruning", "b": "(b) automl: no cache, no pruner",
         "c": "(c) keras-tuner RandomSearch, naive", "d": "(d) seed recipe (fixed)"}


# ----------------------------------------------------------------------------- the run

def run_child(name: str, args: argparse.Namespace) -> dict[str, Any]:
    out = Path(args.workdir) / f"{name}.json"
    cmd = [sys.executable, __file__, "--child", name, "--json", str(out), "--trials",
           str(args.trials), "--budget", str(args.budget), "--seed", str(args.seed),
           "--space", args.space, "--workdir", args.workdir]
    if args.data:
        cmd += ["--data", args.data]
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
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=50)
    p.add_argument("--budget", type=float, default=0,
                   help="seconds for (b) and (c); 0 = the wall time (a) took")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", help="as automl search --data (default: embedded Animal-MNIST)")
    p.add_argument("--space", default=str(ROOT / "automl" / "search_spaces" / "default.yaml"))
    p.add_argument("--contenders", default="a,b,c,d,throughput")
    p.add_argument("--workdir", help="where the contenders write (default: a temporary folder)")
    p.add_argument("--out", help="also write the report to this file")
    p.add_argument("--report-from", metavar="WORKDIR",
                   help="print the report of an earlier run's --workdir again, running nothing")
    p.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    p.add_argument("--json", help=argparse.SUPPRESS)
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
    wanted = args.contenders.split(",")
    results: dict[str, dict[str, Any]] = {}
    started = time.monotonic()
    for name in ["a", "d", "throughput", "c", "b"]:  # a first: it sets the budget
        if name not in wanted:
            continue
        if name in "bc" and not args.budget:
            args.budget = results["a"]["wall"] if "a" in results else 600.0
        results[name] = run_child(name, args)
    text = report(results, args)
    print(f"\n== report (benchmark took {time.monotonic() - started:.0f} s) ==\n{text}")
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
