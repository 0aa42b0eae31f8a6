"""Benchmark (not a test): how many flipped labels the label-issue ranking finds (issue 17).

On the embedded default's training and validation splits (7,000 + 1,500 images, the default
carve, seed 0) it flips 5% of the labels, each to another class drawn uniformly (seed 0),
computes EfficientNet-Lite0 pooled activations at 96 px (ImageNet weights, offline), ranks
train ∪ validation as ``automl inspect`` does (:func:`automl.report.inspect.label_issues`:
5-fold out-of-sample heads over both splits, cleanlab's score) and prints the share of flipped
images in the top 5% of the ranked list (target >= 70%) and the time taken.

    AUTOML_OFFLINE=1 python benchmarks/label_issues.py [--fraction 0.05] [--seed 0]
"""

from __future__ import annotations

import argparse
import dataclasses
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
    from automl.report.inspect import label_issues
    from automl.trial.model import build_model
    from automl.trial.run import extract_features

    data = load_data(None)
    names = ("train", "validation")
    classes = data.num_classes
    start = time.perf_counter()
    config = TrialConfig("efficientnet_lite0", args.size, 1.0, 0, 0.0, 1e-3, "none")
    spec = get_spec(config.backbone)
    weights = WeightsResolver().resolve(spec, args.size).weights
    model = build_model(config, spec, classes, weights).feature_model(at_cut=False)
    features = {name: extract_features(model, data.splits()[name], args.size, 64)
                for name in names}
    extracted = time.perf_counter() - start

    # flip labels across train ∪ validation, in that order (as inspect ranks them)
    rng = np.random.default_rng(args.seed)
    labels = np.concatenate([data.splits()[name].labels for name in names]).astype(np.int64)
    flipped = rng.choice(len(labels), int(round(args.fraction * len(labels))), replace=False)
    noisy = labels.copy()
    noisy[flipped] = (labels[flipped] + rng.integers(1, classes, len(flipped))) % classes
    cut = len(data.train)
    noisy_data = dataclasses.replace(
        data, train=dataclasses.replace(data.train, labels=noisy[:cut]),
        validation=dataclasses.replace(data.validation, labels=noisy[cut:]))

    start = time.perf_counter()
    table = label_issues(noisy_data, features, seed=args.seed)
    ranked = time.perf_counter() - start
    offset = {"train": 0, "validation": cut}
    position = np.array([offset[s] + i for s, i in zip(table["split"], table["index"],
                                                      strict=True)])
    top = position[:len(flipped)]
    found = np.isin(flipped, top)
    suggested = table.set_index(position)["suggested"]
    truth = np.asarray(data.class_names)[labels[flipped[found]]]
    print(f"images {len(labels)} (train {cut} + validation {len(labels) - cut}), flipped "
          f"{len(flipped)} ({args.fraction:.0%}, seed {args.seed})")
    print(f"recovered in the top {len(flipped)}: {found.sum()} = {found.mean():.1%} "
          f"(target >= 70%); suggested label = true label for "
          f"{(suggested.loc[flipped[found]].to_numpy() == truth).mean():.1%} of them")
    print(f"time: activations {extracted:.1f} s (Lite0 {args.size} px, once per search), "
          f"5-fold heads + ranking {ranked:.1f} s")


if __name__ == "__main__":
    main()
