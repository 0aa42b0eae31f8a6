"""Checks a search makes before any training: weights per backbone, the download step."""

from __future__ import annotations

import logging

import pytest

from automl.backbones import weights
from automl.backbones.registry import get_spec
from automl.backbones.weights import WeightsResolver
from automl.errors import ConfigError, WeightsError
from automl.search.run import usable_backbones
from automl.space import SearchSpace


def _space(backbones: list[str], sizes: list[int] | None = None) -> SearchSpace:
    return SearchSpace.from_dict({"backbone": {"choices": backbones},
                                  "image_size": {"choices": sizes or [96]}}, source="s.yaml")


def test_backbones_without_weights_are_dropped_with_one_warning(
        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="automl"):
        space, dropped = usable_backbones(_space(["efficientnet_lite0", "vgg16", "resnet50"]),
                                          WeightsResolver())
    assert space.backbones() == ["efficientnet_lite0"] and dropped == ["vgg16", "resnet50"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "vgg16, resnet50" in warnings[0] and "--weights-dir" in warnings[0]


def test_no_backbone_left_stops_before_training() -> None:
    with pytest.raises(WeightsError) as err:
        usable_backbones(_space(["vgg16"]), WeightsResolver())
    text = str(err.value)
    assert "none of the backbones in s.yaml has weights here" in text
    assert "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5" in text
    assert "--weights-dir" in text and "--weights none" in text


def test_a_backbone_is_dropped_if_one_of_its_sizes_has_no_weights(tmp_path) -> None:  # noqa: ANN001
    (tmp_path / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_96_no_top.h5").write_bytes(
        b"x")
    resolver = WeightsResolver(weights_dir=str(tmp_path))
    space, dropped = usable_backbones(_space(["efficientnet_lite0", "mobilenet_v2"], [96]),
                                      resolver)
    assert dropped == []
    space, dropped = usable_backbones(_space(["efficientnet_lite0", "mobilenet_v2"], [96, 128]),
                                      resolver)
    assert dropped == ["mobilenet_v2"]


def test_one_weights_file_for_several_backbones_is_refused(tmp_path) -> None:  # noqa: ANN001
    file = tmp_path / "w.h5"
    file.write_bytes(b"x")
    with pytest.raises(ConfigError, match="one weights file fits one backbone"):
        usable_backbones(_space(["efficientnet_lite0", "efficientnet_lite1"]),
                         WeightsResolver(str(file)))


def test_the_keras_download_comes_after_local_files_and_before_nothing(
        monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:  # noqa: ANN001
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setattr(weights, "download_reachable", lambda: True)
    source = WeightsResolver().resolve(get_spec("vgg16"), 96)
    assert (source.kind, source.weights) == ("download", "imagenet")
    (tmp_path / "models").mkdir()
    cached = tmp_path / "models" / "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
    cached.write_bytes(b"x")
    source = WeightsResolver().resolve(get_spec("vgg16"), 96)
    assert (source.kind, source.weights) == ("cache", str(cached))


def test_offline_probe_answers_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    weights.download_reachable.cache_clear()
    monkeypatch.setenv("AUTOML_OFFLINE", "1")
    assert weights.download_reachable() is False
    weights.download_reachable.cache_clear()


def test_keras_tuner_with_a_shared_storage_is_refused() -> None:
    from automl.search.run import SearchRequest, validate

    req = SearchRequest(driver="keras-tuner", storage="postgresql://u:secret@db/automl")
    with pytest.raises(ConfigError) as err:
        validate(req)
    assert str(err.value) == (
        "--storage postgresql...: the keras-tuner driver runs one worker per study (its oracle "
        "state lives in one project folder); use --driver optuna to share a study between "
        "workers.")
    assert "secret" not in str(err.value)


@pytest.mark.parametrize(("fields", "message"), [
    ({"pruner": "none"}, "--pruner applies to --driver optuna only"),
    ({"pruner": "median"}, "--pruner applies to --driver optuna only"),
    ({"screen_fraction": 0.5}, "--screen-fraction applies to --driver optuna only"),
])
def test_optuna_only_flags_are_refused_by_the_library_too(fields: dict, message: str) -> None:
    from automl.search.run import SearchRequest, validate

    with pytest.raises(ConfigError, match=message):
        validate(SearchRequest(driver="keras-tuner", **fields))
    validate(SearchRequest(driver="keras-tuner"))  # unset: the driver's own schedule
    validate(SearchRequest(**fields))  # the Optuna driver takes them
