"""The search space: typed parameter records loaded and validated from a YAML file.

A space file is one YAML mapping with one key per dimension (see ``DIMENSIONS``). A scalar fixes
a value, ``{choices: [...]}`` is categorical, ``{low, high}`` is an int or float range by the
bounds' type, with optional ``log: true`` and ``step``. Dimensions left out take the value in
``DEFAULTS``. Every problem is reported as a ConfigError naming the file, the key and the value.

>>> space = SearchSpace.from_dict({"dropout": {"low": 0.0, "high": 0.5}}, source="inline")
>>> space.params["dropout"]
FloatRange(name='dropout', low=0.0, high=0.5, step=None, log=False)
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from automl.errors import ConfigError

AUGMENTATIONS = ("none", "flip", "light", "heavy")

#: dimension -> (python type of its values, one-line description)
DIMENSIONS: dict[str, tuple[type, str]] = {
    "backbone": (str, "a backbone name from `automl backbones`"),
    "image_size": (int, "an input size in pixels (square), at least the backbone's minimum"),
    "freeze_depth": (float, "the share of the backbone kept frozen, from 0.0 to 1.0"),
    "head_width": (int, "units of the hidden Dense layer of the head, 0 for none"),
    "dropout": (float, "the dropout rate before the output layer, from 0.0 to below 1.0"),
    "learning_rate": (float, "the learning rate of the head phase, above 0"),
    "augmentation": (str, "one of: " + ", ".join(AUGMENTATIONS)),
}

DEFAULTS: dict[str, Any] = {
    "backbone": "efficientnet_lite0",
    "image_size": 96,
    "freeze_depth": 1.0,
    "head_width": 128,
    "dropout": 0.2,
    "learning_rate": 1e-3,
    "augmentation": "none",
}


@dataclass(frozen=True)
class Fixed:
    """A dimension held at one value."""

    name: str
    value: Any

    def values(self) -> list[Any]:
        return [self.value]


@dataclass(frozen=True)
class Categorical:
    """A dimension sampled from a list of choices."""

    name: str
    choices: tuple[Any, ...]

    def values(self) -> list[Any]:
        return list(self.choices)


@dataclass(frozen=True)
class IntRange:
    """An integer range, both ends included."""

    name: str
    low: int
    high: int
    step: int = 1
    log: bool = False

    def values(self) -> list[Any]:
        return [self.low, self.high]


@dataclass(frozen=True)
class FloatRange:
    """A float range, both ends included; ``step`` discretises it, ``log`` samples log-uniformly."""

    name: str
    low: float
    high: float
    step: float | None = None
    log: bool = False

    def values(self) -> list[Any]:
        return [self.low, self.high]


Param = Fixed | Categorical | IntRange | FloatRange

#: The spaces shipped inside the package (found from a wheel as from a checkout).
SPACES_DIR = Path(__file__).resolve().parent / "search_spaces"


def packaged_spaces() -> list[str]:
    """Names of the packaged spaces, e.g. ``['default', 'wide']``."""
    return sorted(p.stem for p in SPACES_DIR.glob("*.yaml"))


def space_file(path: str | Path | None) -> Path:
    """The YAML file for ``--space``: a path as given, else a packaged space by name.

    >>> space_file(None).name, space_file("wide").parent == SPACES_DIR
    ('default.yaml', True)
    """
    if path is None:
        return SPACES_DIR / "default.yaml"
    given = Path(path)
    if given.is_file() or given.parent != Path("."):
        return given
    packaged = SPACES_DIR / (given.name if given.suffix else f"{given.name}.yaml")
    return packaged if packaged.is_file() else given


@dataclass(frozen=True)
class SearchSpace:
    """One validated Param per dimension, and the file it came from."""

    params: dict[str, Param]
    source: str

    @classmethod
    def from_file(cls, path: str | Path) -> SearchSpace:
        """Load and validate a YAML space file, or a packaged space by name (``wide``)."""
        path = space_file(path)
        if not path.is_file():
            raise ConfigError(f"Search space file '{path}' does not exist (expected a YAML file, "
                              f"or one of the packaged spaces: {', '.join(packaged_spaces())}).")
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{path}: not a UTF-8 text file ({exc.reason}).") from None
        except OSError as exc:
            raise ConfigError(f"{path}: cannot be read ({exc.strerror}).") from None
        except yaml.YAMLError as exc:
            where = getattr(exc, "problem_mark", None)
            at = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise ConfigError(f"{path}: this is not valid YAML{at}: {problem}.") from None
        return cls.from_dict(raw, source=str(path))

    @classmethod
    def from_dict(cls, raw: Any, source: str = "<space>") -> SearchSpace:
        """Validate a parsed mapping; missing dimensions take their ``DEFAULTS`` value."""
        if raw is None:
            raw = {}
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{source}: a search space must be a YAML mapping of dimension "
                              f"names to values; got {type(raw).__name__} instead.")
        params: dict[str, Param] = {}
        for key, spec in raw.items():
            if key not in DIMENSIONS:
                raise ConfigError(f"{source}: unknown key '{key}'. The dimensions are: "
                                  + ", ".join(DIMENSIONS) + ".")
            params[key] = _parse_param(source, key, spec)
        for key, value in DEFAULTS.items():
            params.setdefault(key, Fixed(key, value))
        space = cls({k: params[k] for k in DIMENSIONS}, source)
        space._check_values()
        return space

    def _check_values(self) -> None:
        """Check every reachable value against its dimension's rules and the backbone registry."""
        from automl.backbones.registry import REGISTRY  # light module: no TensorFlow import

        for name, param in self.params.items():
            for value in param.values():
                _check_value(self.source, name, value)
        sizes = [v for v in self.params["image_size"].values()]
        smallest = min(sizes)
        for backbone in self.params["backbone"].values():
            spec = REGISTRY.get(backbone)
            if spec is None:
                raise ConfigError(
                    f"{self.source}: key 'backbone': '{backbone}' is not a known backbone. "
                    "Known backbones: " + ", ".join(REGISTRY) + " (see `automl backbones`).")
            if smallest < spec.min_size:
                raise ConfigError(
                    f"{self.source}: key 'image_size': {smallest} is below the minimum input "
                    f"size of backbone '{backbone}' ({spec.min_size} pixels). Raise the size or "
                    "drop that backbone.")

    def backbones(self) -> list[str]:
        """Every backbone this space can sample."""
        return list(self.params["backbone"].values())

    def screening(self) -> SearchSpace:
        """The cheap rung: the most frozen depth and no augmentation, where the space allows.

        Such trials train only the head on cached backbone activations: seconds each.
        """
        params = dict(self.params)
        params["freeze_depth"] = Fixed("freeze_depth", max(self.params["freeze_depth"].values()))
        if "none" in self.params["augmentation"].values():
            params["augmentation"] = Fixed("augmentation", "none")
        return SearchSpace(params, self.source)

    def start_point(self) -> dict[str, Any]:
        """The configuration a new study tries first: one value per dimension.

        Each dimension takes its ``DEFAULTS`` value when the space can sample it (a well-known
        transfer-learning recipe), else its first choice, or the middle of its range (geometric
        for ``log``). On the screening rung this is a cheap, reliable first result while TPE's
        random start points explore.
        """
        return {name: _start_value(p, DEFAULTS[name]) for name, p in self.params.items()}

    def cut_depths(self) -> tuple[float, ...]:
        """The freeze depths below 1 this space can ask for (none for a range).

        >>> SearchSpace.from_dict({"freeze_depth": {"choices": [1.0, 0.9, 0.8]}}).cut_depths()
        (0.8, 0.9)
        """
        freeze = self.params["freeze_depth"]
        if not isinstance(freeze, Fixed | Categorical):
            return ()
        return tuple(sorted(float(d) for d in freeze.values() if d < 1.0))

    def refinement(self) -> dict[str, Param]:
        """The expensive dimensions explored on top of the best screened configurations.

        With a list of freeze depths and of augmentations: one dimension ``variant``, every
        ``"<freeze_depth>+<augmentation>"`` pair except the screening rung's own (which would
        repeat the screened trial), so TPE chooses fine-tuning, augmentation or both, e.g.
        ``"1+flip"`` (augmentation on the frozen backbone) or ``"0.9+none"`` (fine-tuning).
        With a freeze-depth range: freeze_depth without its most frozen end, and augmentation.
        Empty when the space has nothing beyond the cheap rung.

        >>> space = SearchSpace.from_dict({"freeze_depth": {"choices": [1.0, 0.9]},
        ...                                "augmentation": {"choices": ["none", "flip"]}})
        >>> space.refinement()["variant"].choices
        ('1+flip', '0.9+none', '0.9+flip')
        """
        if self.screening() == self:
            return {}
        freeze, aug = self.params["freeze_depth"], self.params["augmentation"]
        if isinstance(freeze, Fixed | Categorical) and isinstance(aug, Fixed | Categorical):
            cheap = self.screening()
            top, rung_aug = cheap.params["freeze_depth"].value, cheap.params["augmentation"]
            screened = rung_aug.values()  # augmentations the screening rung already samples
            pairs = [variant_name(f, a) for f in freeze.values() for a in aug.values()
                     if not (f == top and a in screened)]
            return {"variant": Fixed("variant", pairs[0]) if len(pairs) == 1
                    else Categorical("variant", tuple(pairs))}
        if isinstance(freeze, FloatRange) and freeze.low < freeze.high:
            high = freeze.low + 0.95 * (freeze.high - freeze.low)
            freeze = FloatRange("freeze_depth", freeze.low, high, None, freeze.log)
        return {"freeze_depth": freeze, "augmentation": aug}

    def restrict_backbones(self, keep: list[str]) -> SearchSpace:
        """A copy whose backbone dimension holds only ``keep`` (in the original order)."""
        kept = [b for b in self.backbones() if b in keep]
        param: Param = Fixed("backbone", kept[0]) if len(kept) == 1 else Categorical(
            "backbone", tuple(kept))
        return SearchSpace({**self.params, "backbone": param}, self.source)


def _start_value(p: Param, default: Any) -> Any:
    """``default`` if ``p`` can take it, else its first choice or the middle of its range."""
    if isinstance(p, Fixed):
        return p.value
    if isinstance(p, Categorical):
        return default if default in p.choices else p.choices[0]
    step = p.step
    offset = None if step is None else ((default - p.low) / step) % 1
    on_grid = offset is None or min(offset, 1 - offset) < 1e-9
    if p.low <= default <= p.high and on_grid and isinstance(default, type(p.low)):
        return default
    mid = math.sqrt(p.low * p.high) if p.log else (p.low + p.high) / 2
    if step is not None:  # onto the grid of low + k * step
        mid = p.low + round((mid - p.low) / step) * step
        mid = min(mid, p.high)
    return int(round(mid)) if isinstance(p, IntRange) else float(mid)


def _parse_param(source: str, key: str, spec: Any) -> Param:
    """Turn one YAML value into a Param, refusing malformed specs."""
    where = f"{source}: key '{key}'"
    if not isinstance(spec, Mapping):
        if isinstance(spec, list):
            raise ConfigError(f"{where}: got a list {spec!r}; write choices as "
                              f"{{choices: {spec!r}}}.")
        return Fixed(key, _coerce(where, key, spec))
    keys = set(spec)
    if "choices" in keys:
        if keys != {"choices"}:
            raise ConfigError(f"{where}: 'choices' cannot be combined with "
                              f"{sorted(keys - {'choices'})}.")
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{where}: 'choices' must be a non-empty list; got {choices!r}.")
        values = tuple(_coerce(where, key, c) for c in choices)
        if len(set(values)) != len(values):
            raise ConfigError(f"{where}: 'choices' lists a value twice: {list(choices)!r}.")
        return Categorical(key, values)
    allowed = {"low", "high", "log", "step"}
    if not {"low", "high"} <= keys or not keys <= allowed:
        raise ConfigError(f"{where}: a range needs 'low' and 'high' (optionally 'log', 'step'); "
                          f"got keys {sorted(keys)}. For a list of values use {{choices: [...]}}.")
    low, high = _number(spec["low"]), _number(spec["high"])
    log = spec.get("log", False)
    step = spec.get("step")
    if not isinstance(log, bool):
        raise ConfigError(f"{where}: 'log' must be true or false; got {log!r}.")
    expected = DIMENSIONS[key][0]
    if expected is str:
        raise ConfigError(f"{where}: takes names, not a range; use {{choices: [...]}}.")
    for bound, value in (("low", low), ("high", high)):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: '{bound}' must be a number; got {value!r}.")
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{where}: '{bound}' must be finite; got {value!r}.")
    if low > high:
        raise ConfigError(f"{where}: low ({low}) is greater than high ({high}).")
    if log and low <= 0:
        raise ConfigError(f"{where}: a log range needs low > 0; got low={low}.")
    if step is not None and (isinstance(step, bool) or not isinstance(step, int | float)
                             or step <= 0):
        raise ConfigError(f"{where}: 'step' must be a positive number; got {step!r}.")
    if log and step is not None:
        raise ConfigError(f"{where}: 'log' and 'step' cannot be used together.")
    if expected is int:
        for bound, value in (("low", low), ("high", high), ("step", step)):
            if value is not None and not isinstance(value, int):
                raise ConfigError(f"{where}: takes whole numbers; '{bound}' is {value!r}.")
        return IntRange(key, low, high, step or 1, log)
    return FloatRange(key, float(low), float(high), None if step is None else float(step), log)


_FLOAT_TEXT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+$")


def _number(value: Any) -> Any:
    """YAML 1.1 reads ``1e-4`` (no dot) as a string; take such exponent notation as a float."""
    if isinstance(value, str) and _FLOAT_TEXT.match(value.strip()):
        return float(value)
    return value


def _coerce(where: str, key: str, value: Any) -> Any:
    """Check a single value's type for its dimension (ints are accepted for float dimensions)."""
    expected, description = DIMENSIONS[key]
    if expected is float:
        value = _number(value)
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, bool) or not isinstance(value, expected):
        raise ConfigError(f"{where}: {value!r} is a {type(value).__name__}; expected "
                          f"{description}.")
    return value


def _check_value(source: str, key: str, value: Any) -> None:
    """Range rules of each dimension; raises ConfigError naming the value."""
    where = f"{source}: key '{key}'"
    bad = (
        (key == "image_size" and value < 1)
        or (key == "freeze_depth" and not 0.0 <= value <= 1.0)
        or (key == "head_width" and value < 0)
        or (key == "dropout" and not 0.0 <= value < 1.0)
        or (key == "learning_rate" and not 0.0 < value < 10.0)
        or (key == "augmentation" and value not in AUGMENTATIONS)
    )
    if bad:
        raise ConfigError(f"{where}: {value!r} is not allowed; expected "
                          f"{DIMENSIONS[key][1]}.")


def variant_name(freeze_depth: float, augmentation: str) -> str:
    """A refinement variant's name: ``"0.9+flip"``."""
    return f"{freeze_depth:g}+{augmentation}"


def parse_variant(name: str) -> dict[str, Any]:
    """The freeze depth and augmentation of a refinement variant.

    >>> parse_variant("0.9+flip")
    {'freeze_depth': 0.9, 'augmentation': 'flip'}
    """
    freeze, _, augmentation = name.partition("+")
    return {"freeze_depth": float(freeze), "augmentation": augmentation}
