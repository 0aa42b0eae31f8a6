"""`automl backbones`: the registry as a table, with where each backbone's weights come from."""

from __future__ import annotations

import pandas as pd

from automl.backbones.registry import REGISTRY
from automl.backbones.weights import WeightsResolver
from automl.errors import WeightsError
from automl.paths import keras_models_dir


def backbones_table(weights_dir: str | None = None) -> pd.DataFrame:
    """One row per backbone; answers offline in seconds (no conversion, no download attempt
    beyond one short reachability probe)."""
    resolver = WeightsResolver(None, weights_dir)
    rows = []
    for spec in REGISTRY.values():
        try:
            source = resolver.resolve(spec, spec.default_size, convert=False)
            where, available, reason = source.detail, "yes", ""
        except WeightsError as exc:
            where, available = "-", "no"
            reason = str(exc) if spec.packaged else (
                f"{spec.keras_weights_file(spec.default_size)} not in "
                f"{weights_dir or keras_models_dir()}; Keras download unreachable")
        rows.append({"name": spec.name, "family": spec.family, "default_size": spec.default_size,
                     "min_size": spec.min_size, "params": f"{spec.params / 1e6:.1f}M",
                     "weights_from": where, "available": available, "reason": reason})
    return pd.DataFrame(rows)
