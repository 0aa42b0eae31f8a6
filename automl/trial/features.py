"""Frozen-activation cache shared across trials: compute a backbone's frozen part once.

A key names everything that changes the values: the data (its fingerprint covers content and
split), the split, the backbone, its weights, the image size and the cut. Arrays live in memory
(least recently used evicted past a byte limit) and on disk as ``<dir>/<key>.npy`` (written
atomically), so a resumed or second search reuses them.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from automl.atomic import write_atomic

log = logging.getLogger("automl")


@dataclass(frozen=True)
class FeatureKey:
    """Identity of one cached activation array."""

    data: str      # Datasets.fingerprint
    split: str     # train | validation | test
    backbone: str
    weights: str   # identity of the backbone weights (file hash, "random:<seed>", ...)
    image_size: int
    cut: str       # layer name after which activations are taken, or "pooled"
    augmentation: str = "none"  # the policy of an augmented view of the training images
    view: int = 0               # which view of that policy (each has its own random draw)
    seed: int = 0               # the run seed the views were drawn with

    def digest(self) -> str:
        fields = asdict(self)
        if self.augmentation == "none" and self.view == 0:  # as before augmented views
            del fields["augmentation"], fields["view"], fields["seed"]
        text = json.dumps(fields, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:24]


@dataclass(frozen=True)
class Architecture:
    """What a trial needs to know of a backbone at one input size without building it.

    Recorded the first time the backbone is built (which every cached activation needs), so a
    trial that trains a head on cached activations never builds the backbone.
    """

    cuts: tuple[tuple[str | None, float], ...]  # every block boundary: (layer, depth)
    features: int                               # width of the pooled output
    backbone_params: int                        # parameters of the backbone without its top


class FeatureCache:
    """In-memory LRU over an optional on-disk store of activation arrays."""

    def __init__(self, directory: Path | None, max_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self._memory: OrderedDict[str, np.ndarray] = OrderedDict()
        self._arch: dict[str, Architecture] = {}
        self.hits = self.disk_hits = self.misses = 0

    @property
    def memory_bytes(self) -> int:
        return sum(a.nbytes for a in self._memory.values())

    def architecture(self, backbone: str, image_size: int) -> Architecture | None:
        """The recorded architecture of ``backbone`` at ``image_size``, if any."""
        name = f"{backbone}@{image_size}"
        if name not in self._arch:
            path = self._arch_path(name)
            if path is None or not path.is_file():
                return None
            try:
                raw = json.loads(path.read_text())
                self._arch[name] = Architecture(tuple((c[0], float(c[1])) for c in raw["cuts"]),
                                                int(raw["features"]), int(raw["backbone_params"]))
            except (OSError, ValueError, KeyError, TypeError, IndexError):
                return None  # unreadable: the next build records it again
        return self._arch[name]

    def record_architecture(self, backbone: str, image_size: int, arch: Architecture) -> None:
        """Remember ``arch`` (in memory, and on disk next to the activations)."""
        name = f"{backbone}@{image_size}"
        self._arch[name] = arch
        path = self._arch_path(name)
        if path is not None and not path.is_file():
            try:
                write_atomic(path, lambda p: p.write_text(json.dumps(asdict(arch))))
            except OSError as exc:
                log.warning("could not write %s (%s)", path, exc)

    def _arch_path(self, name: str) -> Path | None:
        return None if self.directory is None else self.directory / f"arch-{name}.json"

    def get(self, key: FeatureKey, compute: Callable[[], np.ndarray]) -> np.ndarray:
        """The cached array for ``key``, computing and storing it on a miss."""
        digest = key.digest()
        if digest in self._memory:
            self.hits += 1
            self._memory.move_to_end(digest)
            return self._memory[digest]
        array = self._load(digest)
        if array is not None:
            self.disk_hits += 1
        else:
            self.misses += 1
            array = np.ascontiguousarray(compute(), dtype=np.float32)
            self._store(digest, key, array)
        self._remember(digest, array)
        return array

    def put(self, key: FeatureKey, array: np.ndarray) -> None:
        """Store an array computed alongside another one (same pass over the images)."""
        digest = key.digest()
        array = np.ascontiguousarray(array, dtype=np.float32)
        if digest not in self._memory:
            path = self._path(digest)
            if path is None or not path.is_file():
                self._store(digest, key, array)
        self._remember(digest, array)

    def _path(self, digest: str) -> Path | None:
        return None if self.directory is None else self.directory / f"{digest}.npy"

    def _load(self, digest: str) -> np.ndarray | None:
        path = self._path(digest)
        if path is None or not path.is_file():
            return None
        try:
            return np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:  # damaged: recomputed, never trusted
            log.warning("feature cache file %s is unreadable (%s); recomputing it", path, exc)
            path.unlink(missing_ok=True)
            return None

    def _store(self, digest: str, key: FeatureKey, array: np.ndarray) -> None:
        path = self._path(digest)
        if path is None:
            return
        try:
            write_atomic(path, lambda p: np.save(p, array, allow_pickle=False))
            sidecar = path.with_suffix(".json")
            write_atomic(sidecar, lambda p: p.write_text(json.dumps(asdict(key), indent=1)))
        except OSError as exc:  # a full disk costs speed, not the search
            log.warning("could not write the feature cache to %s (%s)", path, exc)

    def _remember(self, digest: str, array: np.ndarray) -> None:
        if array.nbytes > self.max_bytes:
            return
        self._memory[digest] = array
        while self.memory_bytes > self.max_bytes:
            self._memory.popitem(last=False)
