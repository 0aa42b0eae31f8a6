"""Benchmark (not a test): does the leakage check find resized, re-encoded copies (issue 17)?

It writes the embedded default's splits (the grouped carve, seed 0) as an image folder with
``train/``, ``validation/`` and ``test/`` (28 px PNGs), replaces 20 test images (drawn with
``--seed``) by copies of 20 training images, each upscaled to a random 42-84 px (bicubic) and
saved as JPEG at a random quality 60-90 in its source's class folder, loads the folder as
given splits, computes EfficientNet-Lite0 pooled activations at 96 px (ImageNet weights,
offline) and runs ``automl inspect``'s pair finder (:func:`automl.report.inspect.find_pairs`).

It prints how many of the 20 injected pairs are found (target >= 19) and the false pairs across
splits (target <= 5): a pair is false only if it is neither injected nor near-identical in the
original pixels (cosine >= 0.99 of the 28x28 arrays), for the chosen method and for each of its
parts alone.

    AUTOML_OFFLINE=1 python benchmarks/leakage.py [--seed 0] [--copies 20]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers import score_leaks, write_leaky_folder  # noqa: E402  (shared with the tests)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0, help="which images are copied, how")
    parser.add_argument("--copies", type=int, default=20)
    parser.add_argument("--size", type=int, default=96, help="image size for the backbone")
    args = parser.parse_args()

    from automl.backbones.registry import get_spec
    from automl.backbones.weights import WeightsResolver
    from automl.config import TrialConfig
    from automl.data.load import load_data
    from automl.data.twins import thumbnails
    from automl.report import inspect
    from automl.trial.model import build_model
    from automl.trial.run import extract_features
    from automl.trust.leakage import THUMBNAIL_MAX, THUMBNAIL_THRESHOLD

    with tempfile.TemporaryDirectory(prefix="automl-leakage-") as tmp:
        root = Path(tmp) / "data"
        pixels, injected = write_leaky_folder(root, load_data(None), args.copies, args.seed)
        start = time.perf_counter()
        data = load_data(root)
        loaded = time.perf_counter() - start
        config = TrialConfig("efficientnet_lite0", args.size, 1.0, 0, 0.0, 1e-3, "none")
        spec = get_spec(config.backbone)
        weights = WeightsResolver().resolve(spec, args.size).weights
        model = build_model(config, spec, data.num_classes, weights).feature_model(at_cut=False)
        start = time.perf_counter()
        features = {name: extract_features(model, split, args.size, 64)
                    for name, split in data.splits().items()}
        extracted = time.perf_counter() - start
        start = time.perf_counter()
        thumbs = thumbnails(data)
        pairs = inspect.find_pairs(data, features, thumbs)
        found_s = time.perf_counter() - start
        twins = data.test_twins()

        print(f"data: {len(data.train)} train / {len(data.validation)} validation / "
              f"{len(data.test)} test files (grouped carve of the embedded default, seed 0); "
              f"{args.copies} test images replaced by resized (42-84 px) JPEG copies of "
              f"training images (seed {args.seed}); byte-identical test/train twins: {twins}")
        print(f"method: content hash, or pooled Lite0 {args.size} px activations cosine >= "
              f"{inspect.ACTIVATION_THRESHOLD}, or grey thumbnails (at the data's smallest side, "
              f"max {THUMBNAIL_MAX} px) cosine >= {THUMBNAIL_THRESHOLD}")
        for label, keep in (("chosen (hash | activations | thumbnails)", None),
                            ("activations alone", "activations"),
                            ("thumbnails alone", "thumbnails")):
            part = pairs if keep is None else pairs[pairs["found_by"].str.contains(keep)]
            hits, false = score_leaks(part, injected, pixels)
            print(f"  {label:42s} found {hits}/{len(injected)} (target >= 19), false pairs "
                  f"across splits {false} (target <= 5)")
        copies = pairs[[(a, b) in injected for a, b in zip(pairs.source_a, pairs.source_b,
                                                           strict=True)]]
        if len(copies):
            print(f"  injected pairs' cosine: activations {copies.activation_cosine.min():.3f}-"
                  f"{copies.activation_cosine.max():.3f}, thumbnails "
                  f"{copies.thumbnail_cosine.min():.3f}-{copies.thumbnail_cosine.max():.3f}")
        print(f"time: loading the folder {loaded:.1f} s, activations {extracted:.1f} s, "
              f"thumbnails + pairs {found_s:.1f} s")


if __name__ == "__main__":
    main()
