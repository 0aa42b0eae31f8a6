"""Every registered backbone builds, and its block cuts split it into a bottom and a top.

One build per backbone (weights=None, small input), shared by all checks of that backbone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from itertools import pairwise

import numpy as np
import pytest
from helpers import run_model

keras = pytest.importorskip("keras")

from automl.backbones.build import build_backbone  # noqa: E402
from automl.backbones.registry import REGISTRY, BackboneSpec  # noqa: E402
from automl.trial.layers import Preprocess  # noqa: E402
from automl.trial.model import Cut, block_cuts, reset_keras  # noqa: E402

pytestmark = pytest.mark.filterwarnings(  # keras get_weights on TF variables, numpy 2
    "ignore:__array__ implementation doesn.t accept a copy keyword:DeprecationWarning")

def _names() -> list:
    return [pytest.param(name, id=name) for name in REGISTRY]


@dataclass
class Built:
    spec: BackboneSpec
    size: int
    model: keras.Model
    cuts: list[Cut]
    x: np.ndarray     # a random, preprocessed batch
    out: np.ndarray   # the backbone's output on it


def _size(spec: BackboneSpec) -> int:
    return max(spec.min_size, 64)



def _close(got: np.ndarray, want: np.ndarray, what: str) -> None:
    """Equal up to float noise, relative to the activation's own scale."""
    scale = float(np.abs(want).max())
    assert got.shape == want.shape, what
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * max(scale, 1e-30),
                               err_msg=what)


@pytest.fixture(scope="module")
def built(request: pytest.FixtureRequest) -> Built:
    spec = REGISTRY[request.param]
    size = _size(spec)
    reset_keras(0)
    model = build_backbone(spec, (size, size, 3), None)
    rng = np.random.default_rng(0)
    pixels = rng.uniform(0, 255, (2, size, size, 3)).astype(np.float32)
    x = keras.ops.convert_to_numpy(Preprocess(spec.preprocess)(pixels))
    return Built(spec, size, model, block_cuts(model, spec.block_pattern), x, run_model(model, x))


@pytest.mark.parametrize("built", _names(), indirect=True)
def test_builds_to_a_feature_map(built: Built) -> None:
    shape = tuple(built.model.output.shape)
    assert len(shape) == 4 and shape[0] is None
    assert shape[3] > 0
    assert built.out.shape[0] == 2 and built.out.shape[1:] == shape[1:]
    assert min(shape[1:3]) >= 1
    assert np.all(np.isfinite(built.out))
    assert np.abs(built.out).max() > 0, "the random batch gives an all-zero output"


@pytest.mark.parametrize("built", _names(), indirect=True)
def test_params_match_the_registry(built: Built) -> None:
    assert built.model.count_params() == built.spec.params


@pytest.mark.parametrize("built", _names(), indirect=True)
def test_block_cuts_span_the_backbone(built: Built) -> None:
    cuts, model = built.cuts, built.model
    assert len(cuts) >= 3
    assert cuts[0] == Cut(None, 0.0)
    assert cuts[-1] == Cut(model.operations[-1].name, 1.0)
    depths = [c.depth for c in cuts]
    assert all(a < b for a, b in pairwise(depths)), depths
    pattern = re.compile(built.spec.block_pattern)
    for cut in cuts[1:-1]:
        assert pattern.search(cut.layer), f"{cut.layer} is not a block boundary of the family"


@pytest.mark.parametrize("built", _names(), indirect=True)
def test_every_interior_cut_splits_the_backbone(built: Built) -> None:
    """Bottom (input -> cut) and top (cut -> output) exist for every interior cut, and chained
    they compute the backbone: no residual branch crosses a cut."""
    model, cuts, x = built.model, built.cuts, built.x
    ops = {op.name: op for op in model.operations}
    interior = [ops[c.layer].output for c in cuts[1:-1]]
    bottoms = [keras.Model(model.input, t) for t in interior]
    tops = [keras.Model(t, model.output) for t in interior]  # ValueError if a branch crosses
    for top, t in zip(tops, interior, strict=True):
        assert tuple(top.input.shape) == tuple(t.shape)

    # activations at every cut in one pass, then cut -> next cut segment by segment: each
    # segment is built from its cut alone and must reproduce the next cut's activation
    acts = [keras.ops.convert_to_numpy(a)
            for a in keras.Model(model.input, interior)(x, training=False)]
    ends = [*interior[1:], model.output]
    wants = [*acts[1:], built.out]
    current = acts[0]
    for i, (start, end, want) in enumerate(zip(interior, ends, wants, strict=True)):
        current = run_model(keras.Model(start, end), current)
        _close(current, want, f"segment after {cuts[i + 1].layer}")

    # the bottom/top pairs themselves, chained, at the middle and the last interior cut
    for i in sorted({len(interior) // 2, len(interior) - 1}):
        mid = run_model(bottoms[i], x)
        _close(mid, acts[i], f"bottom up to {cuts[i + 1].layer}")
        _close(run_model(tops[i], mid), built.out, f"bottom+top split at {cuts[i + 1].layer}")


def test_a_cut_inside_a_residual_block_cannot_split() -> None:
    """The control for the check above: Keras refuses a top that a skip connection crosses."""
    spec = REGISTRY["efficientnet_lite0"]
    reset_keras(0)
    model = build_backbone(spec, (32, 32, 3), None)
    names = [c.layer for c in block_cuts(model, spec.block_pattern)]
    assert "block2b_expand_activation" not in names  # inside block2b, whose add skips it
    inside = model.get_layer("block2b_expand_activation").output
    with pytest.raises(ValueError, match="not connected"):
        keras.Model(inside, model.output)
