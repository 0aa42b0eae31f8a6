"""Our SearchSpace as keras-tuner hyperparameters, and sampled values back into the space.

>>> from automl.space import SearchSpace
>>> space = SearchSpace.from_dict({"dropout": {"low": 0.0, "high": 0.5, "step": 0.1}})
>>> hp = to_hyperparameters(space)
>>> hp.get("dropout"), hp.get("backbone")
(0.0, 'efficientnet_lite0')
>>> from_values(space, {**hp.values, "dropout": 0.30000000000000004})["dropout"]
0.3
"""

from __future__ import annotations

import math
from typing import Any

import keras_tuner as kt

from automl.errors import ConfigError
from automl.space import Categorical, Fixed, FloatRange, IntRange, Param, SearchSpace


def to_hyperparameter(hp: kt.HyperParameters, p: Param) -> None:
    """Register one Param in ``hp``: Fixed, Choice, Int or Float (log sampling, steps)."""
    if isinstance(p, Fixed):
        hp.Fixed(p.name, p.value)
    elif isinstance(p, Categorical):
        numeric = isinstance(p.choices[0], int | float)
        hp.Choice(p.name, list(p.choices), ordered=numeric)
    elif isinstance(p, IntRange):
        if p.log:  # keras-tuner reads a step under log sampling as a factor: leave it out
            hp.Int(p.name, p.low, p.high, sampling="log")
        else:
            hp.Int(p.name, p.low, p.high, step=p.step)
    elif p.step is not None:
        # keras-tuner counts grid points as (max - min) // step + 1, which drops the top end
        # to float rounding (0.5 // 0.1 == 4.0); half a step of headroom keeps it, and
        # from_values snaps every value back onto the YAML's grid and bounds.
        hp.Float(p.name, p.low, p.high + p.step / 2, step=p.step)
    else:
        hp.Float(p.name, p.low, p.high, sampling="log" if p.log else "linear")


def to_hyperparameters(space: SearchSpace) -> kt.HyperParameters:
    """The keras-tuner search space of ``space`` (one hyperparameter per dimension)."""
    hp = kt.HyperParameters()
    for p in space.params.values():
        to_hyperparameter(hp, p)
    return hp


def from_value(p: Param, value: Any) -> Any:
    """A value keras-tuner sampled for ``p``, as the YAML allows it (bounds and step grid).

    keras-tuner can overshoot by a rounding error or, for a log-sampled Int proposed at the
    upper bound by the Bayesian oracle, by one; such values are clamped. A value that is not
    in the space at all (a project made for another space) is a ConfigError.
    """
    if isinstance(p, Fixed):
        return p.value
    if isinstance(p, Categorical):
        if value not in p.choices:
            raise ConfigError(f"key '{p.name}': keras-tuner proposed {value!r}, which is not one "
                              f"of the space's choices {list(p.choices)}.")
        return type(p.choices[0])(value)
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        raise ConfigError(f"key '{p.name}': keras-tuner proposed {value!r}; expected a number.")
    if isinstance(p, IntRange):
        number = min(max(int(round(value)), p.low), p.high)
        if not p.log:
            number = p.low + (number - p.low) // p.step * p.step
        return number
    number = min(max(float(value), p.low), p.high)
    if p.step is not None:
        k = min(round((number - p.low) / p.step), math.floor((p.high - p.low) / p.step + 1e-9))
        number = float(f"{p.low + k * p.step:.12g}")  # 0.30000000000000004 -> 0.3
    return number


def from_values(space: SearchSpace, values: dict[str, Any]) -> dict[str, Any]:
    """The seven dimensions of a trial from keras-tuner's values (its own 'tuner/...' ignored)."""
    out = {}
    for name, p in space.params.items():
        if not isinstance(p, Fixed) and name not in values:
            raise ConfigError(f"key '{name}': the keras-tuner project proposed no value for it; "
                              "it was made for another search space.")
        out[name] = from_value(p, values.get(name))
    return out


def optuna_distributions(space: SearchSpace) -> dict[str, Any]:
    """Optuna distributions of the searched (non-fixed) dimensions, to record kt trials with."""
    import optuna

    dists: dict[str, Any] = {}
    for name, p in space.params.items():
        if isinstance(p, Categorical):
            dists[name] = optuna.distributions.CategoricalDistribution(list(p.choices))
        elif isinstance(p, IntRange):
            dists[name] = optuna.distributions.IntDistribution(p.low, p.high, log=p.log,
                                                               step=p.step)
        elif isinstance(p, FloatRange):
            dists[name] = optuna.distributions.FloatDistribution(p.low, p.high, log=p.log,
                                                                 step=p.step)
    return dists
