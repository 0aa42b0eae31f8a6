"""Benchmark (not a test): how many flipped labels the label-issue ranking finds (issue 17).

On the embedded default's training split (7,000 images, the default carve, seed 0) it flips 5%
of the labels, each to another class drawn uniformly (seed 0), computes EfficientNet-Lite0
pooled activations at 96 px (ImageNet weights, offline), ranks every image with
``automl.trust.labels.rank_label_issues`` (5-fold out-of-sample heads, cleanlab's score) and
prints the share of flipped images in the top 5% (target >= 70%) and the time taken.

    AUTOML_OFFLINE=1 python benchmarks/label_issues.py [--fraction 0.05] [--seed 0]
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fraction", type=float, default=0.05, help="share of labels flipped")
    parser.add_argument("--seed", type=int, default=0, help="seeds the flips and the folds")
    parser.add_argument("--size", type=int, default=96, help="image size for the backbone")
    args = parser.parse_args()

    from automl.backbones.registry import get_spec
    from automl.backbones.weights import WeightsResolver
    from automl.config import TrialConfig
    from automl.data.load import load_data
    from automl.trial.model import build_model
    from automl.trial.run import extract_features
    from automl.trust.labels import rank_label_issues

    train = load_data(None).train
    classes = 10
    start = time.perf_counter()
    config = TrialConfig("efficientnet_lite0", args.size, 1.0, 0, 0.0, 1e-3, "none")
    spec = get_spec(config.backbone)
    weights = WeightsResolver().resolve(spec, args.size).weights
    model = build_model(config, spec, classes, weights).feature_model(at_cut=False)
    features = extract_features(model, train, args.size, 64)
    extracted = time.perf_counter() - start

    rng = np.random.default_rng(args.seed)
    labels = train.labels.astype(np.int64)
    flipped = rng.choice(len(labels), int(round(args.fraction * len(labels))), replace=False)
    noisy = labels.copy()
    noisy[flipped] = (labels[flipped] + rng.integers(1, classes, len(flipped))) % classes

    start = time.perf_counter()
    table = rank_label_issues(features, noisy, classes, seed=args.seed)
    ranked = time.perf_counter() - start
    top = table["index"].to_numpy()[:len(flipped)]
    found = np.isin(flipped, top)
    suggested = table.set_index("index").loc[flipped[found], "suggested"].to_numpy()
    print(f"images {len(labels)}, flipped {len(flipped)} ({args.fraction:.0%}, seed {args.seed})")
    print(f"recovered in the top {len(flipped)}: {found.sum()} = {found.mean():.1%} "
          f"(target >= 70%); suggested label = true label for "
          f"{(suggested == labels[flipped[found]]).mean():.1%} of them")
    print(f"time: activations {extracted:.1f} s (Lite0 {args.size} px, once per search), "
          f"5-fold heads + ranking {ranked:.1f} s")


if __name__ == "__main__":
    main()
