"""Benchmark (not a test): what a search's trials cost to serve, and shipping the best one.

In one run, on the embedded default (or ``--data``), through the CLI as a user runs it:

1. ``automl search --trials N`` (the default space; ``--keep-weights N`` so every finished trial
   can be exported; it changes nothing else), or an existing study (``--results``/``--study``):
   its wall time and the share of it the serving-cost measurement took;
2. the best finished EfficientNet-Lite0 trial exported as float32 and as int8 TFLite
   (``automl export --format tflite [--quantize int8]``): test accuracy of each against the
   Keras model, file sizes, batch-1 latencies with the same interpreter thread count, ratios;
3. a search with ``--max-latency-ms`` between the fastest and the slowest architecture measured
   in step 1: its best trial (feasible), the infeasible trials it recorded, and the feasible
   trials the pruner stopped.

    AUTOML_OFFLINE=1 python benchmarks/deploy.py --workdir /tmp/deploy
    AUTOML_OFFLINE=1 python benchmarks/deploy.py --results R --study default   # reuse a search
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def cli(*args: Any) -> tuple[float, str]:
    """Run ``automl ARGS`` as a user does; (wall seconds, stdout). Exits on failure."""
    cmd = [sys.executable, "-m", "automl.cli", *map(str, args)]
    start = time.monotonic()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"failed ({done.returncode}): {' '.join(cmd)}\n{done.stderr[-3000:]}")
    return time.monotonic() - start, done.stdout


def board(results: Path, study: str) -> Any:
    from automl.search import leaderboard
    from automl.search.study import artifact_root, open_study

    opened = open_study(results, study, None, create=False)
    return opened, leaderboard.from_study(opened, artifact_root(results, study, None, opened,
                                                                None))


def search_step(args: argparse.Namespace, results: Path) -> dict[str, Any]:
    """Step 1: the search (or the given study), its wall time and the cost measurement's."""
    from automl.search.cost import measuring_seconds
    from automl.search.record import StudyRecord, measured_costs

    wall = None
    if args.results is None:
        extra = ["--data", args.data] if args.data else []
        wall, _ = cli("search", "--trials", args.trials, "--results", results, "--study",
                      args.study, "--keep-weights", args.trials, "--quiet", *extra)
    study, frame = board(results, args.study)
    costs = measured_costs(study)
    return {"wall": wall, "measuring": measuring_seconds(study), "costs": costs,
            "frame": frame, "study": study,
            "background": StudyRecord.of(study).size_seconds or {}}


def export_step(results: Path, study: str, frame: Any, out: Path) -> dict[str, Any]:
    """Step 2: the best finished Lite0 trial as float32 and int8 TFLite."""
    done = frame[(frame["state"] == "COMPLETE") & (frame["backbone"] == "efficientnet_lite0")
                 & frame["weights_kept"].astype(bool)]
    if done.empty:
        sys.exit("no finished EfficientNet-Lite0 trial with kept weights in the study")
    row = done.iloc[0]
    measured = {}
    for quantize in ("none", "int8"):
        folder = out / f"lite0_{quantize}"
        cli("export", "--results", results, "--study", study, "--trial", int(row["trial"]),
            "--out", folder, "--format", "tflite", "--quantize", quantize)
        measured[quantize] = json.loads((folder / "automl.json").read_text())["measured"]
    return {"trial": int(row["trial"]), "row": row, "measured": measured}


def limited_step(args: argparse.Namespace, results: Path, costs: dict[str, Any]) -> dict:
    """Step 3: a search with a latency limit between the fastest and slowest architecture."""
    latencies = {k: float(v["backbone"]["latency_ms"]) for k, v in costs.items()
                 if v.get("backbone")}
    low, high = min(latencies.values()), max(latencies.values())
    limit = round(math.sqrt(low * high), 2)
    extra = ["--data", args.data] if args.data else []
    wall, _ = cli("search", "--trials", args.limited_trials, "--results", results, "--study",
                  f"{args.study}-limited", "--max-latency-ms", limit, "--quiet", *extra)
    study, frame = board(results, f"{args.study}-limited")
    feasible = frame[frame["state"].isin(["COMPLETE", "PRUNED"])]
    return {"limit": limit, "low": low, "high": high, "latencies": latencies, "wall": wall,
            "frame": frame, "infeasible": int((frame["state"] == "INFEASIBLE").sum()),
            "pruned_feasible": int((feasible["state"] == "PRUNED").sum()),
            "complete": int((frame["state"] == "COMPLETE").sum())}


def met(ok: bool) -> str:
    return "met" if ok else "NOT met"


def report(s: dict[str, Any], e: dict[str, Any], lim: dict[str, Any] | None) -> str:
    lines = []
    wall = s["wall"]
    share = (f" = {100 * s['measuring'] / wall:.1f}% of the search's {wall:.0f} s wall (target "
             f"<= 10%: {met(s['measuring'] <= 0.1 * wall)})") if wall \
        else " (an existing study: its wall time is not known here)"
    lines.append(f"1. search: {len(s['frame'])} trials; serving-cost measurement "
                 f"{s['measuring']:.1f} s over {len(s['costs'])} architectures{share}")
    if s["background"]:
        lines.append(f"   .tflite size conversions in the background (nice 19, beside the "
                     f"trials): {s['background'].get('cpu', 0.0):.1f} CPU s; the search waited "
                     f"{s['background'].get('wait', 0.0):.1f} s for them at its end (counted "
                     f"above)")
    for key, value in sorted(s["costs"].items()):
        part = value.get("backbone") or {}
        lines.append(f"   {key:26} latency {part.get('latency_ms', math.nan):6.2f} ms, "
                     f"{part.get('throughput_ips', math.nan):6.0f} img/s at batch 32, float32 "
                     f".tflite {(part.get('tflite_bytes') or 0) / 1e6:5.2f} MB (linear head), "
                     f"measured in {value.get('seconds', math.nan):.1f} s")
    f, q = e["measured"]["none"], e["measured"]["int8"]
    row = e["row"]
    lines.append(f"2. best Lite0 trial {e['trial']} ({int(row['image_size'])} px, head "
                 f"{int(row['head_width'])}, val {float(row['val_accuracy']):.4f}) as TFLite, "
                 f"{f['interpreter']}, {f['threads']} threads for both:")
    lines.append(f"   {'':8} {'test acc':>9} {'Keras':>7} {'diff pt':>8} {'MB':>7} "
                 f"{'latency ms':>11}")
    for name, m in (("float32", f), ("int8", q)):
        diff = 100 * (m["tflite_test_accuracy"] - m["keras_test_accuracy"])
        lines.append(f"   {name:8} {m['tflite_test_accuracy']:9.4f} "
                     f"{m['keras_test_accuracy']:7.4f} {diff:+8.2f} {m['size_mb']:7.2f} "
                     f"{m['latency_ms']:11.2f}")
    size_ratio = q["size_mb"] / f["size_mb"]
    points = 100 * (q["tflite_test_accuracy"] - q["keras_test_accuracy"])
    lines.append(f"   int8/float32: size {size_ratio:.2f}x (target <= 1/3: "
                 f"{met(size_ratio <= 1 / 3)}), latency {q['latency_ms'] / f['latency_ms']:.2f}x "
                 f"(float32 is {f['latency_ms'] / q['latency_ms']:.2f}x int8's); int8 test "
                 f"accuracy {points:+.2f} points against Keras (target within 1.0: "
                 f"{met(abs(points) <= 1.0)})")
    if lim is not None:
        lines.append(f"3. --max-latency-ms {lim['limit']:g} (between the fastest architecture, "
                     f"{lim['low']:.2f} ms, and the slowest, {lim['high']:.2f} ms): "
                     f"{len(lim['frame'])} trials in {lim['wall']:.0f} s: {lim['complete']} "
                     f"complete, {lim['infeasible']} infeasible (not trained), "
                     f"{lim['pruned_feasible']} feasible trial(s) stopped by the pruner (target "
                     f">= 1: {met(lim['pruned_feasible'] >= 1)})")
        best = lim["frame"][lim["frame"]["state"] == "COMPLETE"]
        if best.empty:
            lines.append("   no feasible trial finished")
        else:
            b = best.iloc[0]
            within = float(b["latency_ms"]) <= lim["limit"]
            lines.append(f"   best: trial {int(b['trial'])} {b['backbone']} "
                         f"{int(b['image_size'])} px, latency {float(b['latency_ms']):.2f} ms "
                         f"(<= {lim['limit']:g}: {met(within)}), val "
                         f"{float(b['val_accuracy']):.4f}, test {float(b['test_accuracy']):.4f}")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workdir", type=Path, default=Path("/tmp/automl-deploy"))
    p.add_argument("--results", type=Path, help="an existing search's results folder")
    p.add_argument("--study", default="default")
    p.add_argument("--data", help="a data set (default: the embedded Animal-MNIST)")
    p.add_argument("--trials", type=int, default=50)
    p.add_argument("--limited-trials", type=int, default=20)
    p.add_argument("--skip-limited", action="store_true")
    args = p.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    results = args.results or args.workdir / "results"
    s = search_step(args, results)
    print(f"search done ({s['wall'] or 0:.0f} s)", flush=True)
    e = export_step(results, args.study, s["frame"], args.workdir)
    print("exports done", flush=True)
    lim = None if args.skip_limited else limited_step(args, results, s["costs"])
    text = report(s, e, lim)
    (args.workdir / "deploy.txt").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
