"""Tests for automl.space: parsing and validation of YAML search space files."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from automl.backbones.registry import REGISTRY
from automl.errors import ConfigError
from automl.space import (
    DEFAULTS,
    DIMENSIONS,
    Categorical,
    Fixed,
    FloatRange,
    IntRange,
    SearchSpace,
)

ROOT = Path(__file__).resolve().parents[1]


def _write(tmp_path: Path, text: str, name: str = "space.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def _load(tmp_path: Path, text: str) -> SearchSpace:
    return SearchSpace.from_file(_write(tmp_path, text))


def _error(tmp_path: Path, text: str) -> tuple[str, Path]:
    """Load ``text`` as a space file; return the ConfigError's message and the file's path."""
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        SearchSpace.from_file(path)
    return str(info.value), path


# --- parsing


def test_scalars_are_fixed_and_ints_widen_to_float(tmp_path: Path) -> None:
    space = _load(tmp_path, """
        backbone: mobilenet_v2
        image_size: 96
        freeze_depth: 1
        head_width: 0
        dropout: 0.25
        learning_rate: 0.01
        augmentation: light
    """)
    p = space.params
    assert p["backbone"] == Fixed("backbone", "mobilenet_v2")
    assert p["image_size"] == Fixed("image_size", 96)
    assert p["freeze_depth"] == Fixed("freeze_depth", 1.0)
    assert isinstance(p["freeze_depth"].value, float)  # an int for a float dimension widens
    assert p["head_width"] == Fixed("head_width", 0)
    assert p["dropout"] == Fixed("dropout", 0.25)
    assert p["learning_rate"] == Fixed("learning_rate", 0.01)
    assert p["augmentation"] == Fixed("augmentation", "light")
    assert space.source == str(tmp_path / "space.yaml")
    assert space.backbones() == ["mobilenet_v2"]


def test_choices_keep_their_order(tmp_path: Path) -> None:
    space = _load(tmp_path, """
        backbone: {choices: [vgg16, efficientnet_lite0]}
        image_size: {choices: [96, 64]}
        freeze_depth: {choices: [1, 0.5]}
        augmentation: {choices: [none, flip, heavy]}
    """)
    p = space.params
    assert p["backbone"] == Categorical("backbone", ("vgg16", "efficientnet_lite0"))
    assert p["image_size"] == Categorical("image_size", (96, 64))
    assert p["freeze_depth"] == Categorical("freeze_depth", (1.0, 0.5))
    assert p["augmentation"] == Categorical("augmentation", ("none", "flip", "heavy"))
    assert space.backbones() == ["vgg16", "efficientnet_lite0"]


def test_int_and_float_ranges(tmp_path: Path) -> None:
    space = _load(tmp_path, """
        image_size: {low: 64, high: 128, step: 32}
        head_width: {low: 16, high: 512, log: true}
        dropout: {low: 0, high: 0.5, step: 0.1}
        learning_rate: {low: 1.0e-4, high: 1.0e-2, log: true}
        freeze_depth: {low: 0.5, high: 1.0}
    """)
    p = space.params
    assert p["image_size"] == IntRange("image_size", 64, 128, step=32, log=False)
    assert p["head_width"] == IntRange("head_width", 16, 512, step=1, log=True)
    assert p["dropout"] == FloatRange("dropout", 0.0, 0.5, step=0.1, log=False)
    assert isinstance(p["dropout"].low, float)
    assert p["learning_rate"] == FloatRange("learning_rate", 1e-4, 1e-2, step=None, log=True)
    assert p["freeze_depth"] == FloatRange("freeze_depth", 0.5, 1.0)


def test_missing_dimensions_take_the_defaults(tmp_path: Path) -> None:
    space = _load(tmp_path, "dropout: {low: 0.0, high: 0.3}\n")
    assert list(space.params) == list(DIMENSIONS)
    for name, value in DEFAULTS.items():
        if name != "dropout":
            assert space.params[name] == Fixed(name, value)
    assert space.params["dropout"] == FloatRange("dropout", 0.0, 0.3)


def test_empty_file_is_all_defaults(tmp_path: Path) -> None:
    space = _load(tmp_path, "# nothing but a comment\n")
    assert {n: p.values() for n, p in space.params.items()} == {
        n: [v] for n, v in DEFAULTS.items()}


def test_default_space_file_uses_only_registry_backbones() -> None:
    path = ROOT / "automl" / "search_spaces" / "default.yaml"
    space = SearchSpace.from_file(path)
    assert space.source == str(path)
    assert space.backbones(), "the default space samples no backbone"
    assert set(space.backbones()) <= set(REGISTRY)
    assert set(space.params) == set(DIMENSIONS)


def test_start_point_takes_the_defaults_the_space_allows() -> None:
    space = SearchSpace.from_file(ROOT / "automl" / "search_spaces" / "default.yaml")
    assert space.start_point() == DEFAULTS


@pytest.mark.parametrize(("spec", "expected"), [
    ({"choices": [160, 128]}, 160),                       # 96 not offered: the first choice
    ({"low": 64, "high": 128}, 96),                       # in range: the default
    ({"low": 64, "high": 128, "step": 40}, 104),          # 96 off the grid: the middle, on it
    ({"low": 128, "high": 224}, 176),                     # out of range: the middle
    (224, 224),                                           # fixed
])
def test_start_point_of_an_int_dimension(spec: object, expected: int) -> None:
    value = SearchSpace.from_dict({"image_size": spec}).start_point()["image_size"]
    assert value == expected and isinstance(value, int)


def test_start_point_of_a_float_range_is_its_geometric_middle_on_a_log_scale() -> None:
    space = SearchSpace.from_dict({"learning_rate": {"low": 1e-2, "high": 1.0, "log": True},
                                   "dropout": {"low": 0.3, "high": 0.7, "step": 0.3}})
    start = space.start_point()
    assert start["learning_rate"] == pytest.approx(0.1)
    assert start["dropout"] == pytest.approx(0.6)  # 0.5 onto the grid 0.3, 0.6


def test_restrict_backbones_keeps_original_order(tmp_path: Path) -> None:
    space = _load(tmp_path, """
        backbone: {choices: [efficientnet_lite0, vgg16, mobilenet_v2, resnet50]}
        dropout: {low: 0.0, high: 0.5}
    """)
    two = space.restrict_backbones(["resnet50", "efficientnet_lite0", "not_in_space"])
    assert two.params["backbone"] == Categorical("backbone", ("efficientnet_lite0", "resnet50"))
    assert two.backbones() == ["efficientnet_lite0", "resnet50"]
    one = space.restrict_backbones(["vgg16"])
    assert one.params["backbone"] == Fixed("backbone", "vgg16")
    # everything else is untouched, and the original is not modified
    assert one.params["dropout"] == space.params["dropout"]
    assert one.source == space.source
    assert space.backbones() == ["efficientnet_lite0", "vgg16", "mobilenet_v2", "resnet50"]


# --- errors: every message names the file and the key


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        SearchSpace.from_file(path)
    msg = str(info.value)
    assert str(path) in msg
    assert "does not exist" in msg


def test_unparsable_yaml_names_file_and_line(tmp_path: Path) -> None:
    msg, path = _error(tmp_path, "backbone: efficientnet_lite0\nhead_width: 128\ndropout: a: b\n")
    assert msg == (f"{path}: this is not valid YAML at line 3, column 11: mapping values are "
                   "not allowed here.")
    msg, path = _error(tmp_path, "backbone: vgg16\ndropout: {low: 0.0, high: 0.5\n")
    assert msg.startswith(f"{path}: this is not valid YAML at line 3, column 1: ")


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "space.yaml"
    path.write_bytes(b"backbone: \xff\xfe\n")
    with pytest.raises(ConfigError, match="not a UTF-8 text file") as info:
        SearchSpace.from_file(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("text, got", [("- dropout\n- head_width\n", "list"),
                                       ("just a string\n", "str"),
                                       ("42\n", "int")])
def test_top_level_not_a_mapping(tmp_path: Path, text: str, got: str) -> None:
    msg, path = _error(tmp_path, text)
    assert msg.startswith(f"{path}: a search space must be a YAML mapping")
    assert f"got {got} instead" in msg


def test_unknown_key_lists_the_dimensions(tmp_path: Path) -> None:
    msg, path = _error(tmp_path, "dropuot: 0.2\n")
    assert str(path) in msg
    assert "unknown key 'dropuot'" in msg
    assert "The dimensions are: " + ", ".join(DIMENSIONS) + "." in msg


def test_unknown_backbone_lists_known_ones(tmp_path: Path) -> None:
    msg, path = _error(tmp_path, "backbone: {choices: [efficientnet_lite0, resnet9000]}\n")
    assert msg.startswith(f"{path}: key 'backbone': 'resnet9000' is not a known backbone.")
    assert "Known backbones: " + ", ".join(REGISTRY) in msg


def test_unknown_augmentation(tmp_path: Path) -> None:
    msg, path = _error(tmp_path, "augmentation: {choices: [flip, rotate]}\n")
    assert msg.startswith(f"{path}: key 'augmentation': 'rotate' is not allowed")
    assert "one of: none, flip, light, heavy" in msg


@pytest.mark.parametrize("text, key, fragment", [
    ("dropout: '0.2'\n", "dropout", "'0.2' is a str; expected the dropout rate"),
    ("image_size: {choices: [64, 96.5]}\n", "image_size", "96.5 is a float; expected an input"),
    ("head_width: true\n", "head_width", "True is a bool; expected units"),
    ("dropout: {choices: [0.1, false]}\n", "dropout", "False is a bool"),
    ("augmentation: 3\n", "augmentation", "3 is a int; expected one of"),
    ("image_size: {low: 64, high: 96.0}\n", "image_size", "takes whole numbers; 'high' is 96.0"),
    ("head_width: {low: 16, high: 64, step: 2.5}\n", "head_width",
     "takes whole numbers; 'step' is 2.5"),
    ("dropout: {low: '0.1', high: 0.5}\n", "dropout", "'low' must be a number; got '0.1'"),
    ("dropout: {low: 0.0, high: true}\n", "dropout", "'high' must be a number; got True"),
    ("learning_rate: {low: 0.001, high: .inf}\n", "learning_rate", "'high' must be finite"),
    ("dropout: {low: 0.0, high: 0.5, log: 'yes'}\n", "dropout",
     "'log' must be true or false; got 'yes'"),
    ("dropout: {low: 0.0, high: 0.5, step: -0.1}\n", "dropout",
     "'step' must be a positive number; got -0.1"),
    ("image_size: [64, 96]\n", "image_size", "got a list [64, 96]; write choices as"),
    ("dropout: {low: 0.1}\n", "dropout", "a range needs 'low' and 'high'"),
    ("dropout: {low: 0.1, high: 0.2, best: 0.15}\n", "dropout", "got keys ['best', 'high'"),
    ("dropout: {choices: [0.1], low: 0.0}\n", "dropout", "'choices' cannot be combined with"),
    ("dropout: 1.0\n", "dropout", "1.0 is not allowed"),
    ("freeze_depth: {low: 0.5, high: 1.5}\n", "freeze_depth", "1.5 is not allowed"),
    ("learning_rate: 0\n", "learning_rate", "0.0 is not allowed"),
    ("head_width: -1\n", "head_width", "-1 is not allowed"),
])
def test_wrong_types_and_values(tmp_path: Path, text: str, key: str, fragment: str) -> None:
    msg, path = _error(tmp_path, text)
    assert msg.startswith(f"{path}: key '{key}': ")
    assert fragment in msg


def test_low_above_high(tmp_path: Path) -> None:
    msg, path = _error(tmp_path, "dropout: {low: 0.5, high: 0.1}\n")
    assert msg == f"{path}: key 'dropout': low (0.5) is greater than high (0.1)."


@pytest.mark.parametrize("low", ["0.0", "-0.001"])
def test_log_needs_positive_low(tmp_path: Path, low: str) -> None:
    msg, path = _error(tmp_path, f"learning_rate: {{low: {low}, high: 0.1, log: true}}\n")
    assert msg.startswith(f"{path}: key 'learning_rate': a log range needs low > 0")
    assert f"got low={float(low)}" in msg


def test_log_and_step_together(tmp_path: Path) -> None:
    msg, path = _error(tmp_path,
                       "learning_rate: {low: 0.001, high: 0.1, log: true, step: 0.01}\n")
    assert msg == f"{path}: key 'learning_rate': 'log' and 'step' cannot be used together."


@pytest.mark.parametrize("choices", ["[]", "null", "3"])
def test_empty_or_non_list_choices(tmp_path: Path, choices: str) -> None:
    msg, path = _error(tmp_path, f"head_width: {{choices: {choices}}}\n")
    assert msg.startswith(f"{path}: key 'head_width': 'choices' must be a non-empty list")


@pytest.mark.parametrize("text", ["head_width: {choices: [0, 128, 0]}\n",
                                  "freeze_depth: {choices: [1, 1.0]}\n",
                                  "backbone: {choices: [vgg16, vgg16]}\n"])
def test_duplicate_choices(tmp_path: Path, text: str) -> None:
    key = text.split(":")[0]
    msg, path = _error(tmp_path, text)
    assert msg.startswith(f"{path}: key '{key}': 'choices' lists a value twice")


@pytest.mark.parametrize("key", ["backbone", "augmentation"])
def test_range_on_a_string_dimension(tmp_path: Path, key: str) -> None:
    msg, path = _error(tmp_path, f"{key}: {{low: 1, high: 2}}\n")
    assert msg == (f"{path}: key '{key}': takes names, not a range; use "
                   "{choices: [...]}.")


def test_image_size_below_a_backbones_minimum(tmp_path: Path) -> None:
    assert REGISTRY["inception_v3"].min_size == 75
    msg, path = _error(tmp_path, """
        backbone: {choices: [efficientnet_lite0, inception_v3]}
        image_size: {choices: [96, 64]}
    """)
    assert msg.startswith(f"{path}: key 'image_size': 64 is below the minimum input size of "
                          "backbone 'inception_v3' (75 pixels).")
    # an int range is checked at its low end; the minimum itself is fine
    msg, _ = _error(tmp_path, "backbone: inception_v3\nimage_size: {low: 74, high: 128}\n")
    assert "key 'image_size': 74 is below" in msg
    ok = _load(tmp_path, "backbone: inception_v3\nimage_size: {low: 75, high: 128}\n")
    assert ok.params["image_size"] == IntRange("image_size", 75, 128)


def test_from_dict_uses_the_source_name() -> None:
    with pytest.raises(ConfigError) as info:
        SearchSpace.from_dict({"dropout": "high"}, source="inline-space")
    assert str(info.value).startswith("inline-space: key 'dropout': 'high' is a str")


def test_exponent_notation_without_a_dot_is_a_float(tmp_path: Path) -> None:
    """YAML 1.1 reads 1e-4 as a string; the space takes it as the number users meant."""
    path = tmp_path / "space.yaml"
    path.write_text("learning_rate: {low: 1e-4, high: 1e-2, log: true}\ndropout: 5e-1\n")
    space = SearchSpace.from_file(path)
    assert space.params["learning_rate"] == FloatRange("learning_rate", 1e-4, 1e-2, None, True)
    assert space.params["dropout"] == Fixed("dropout", 0.5)
