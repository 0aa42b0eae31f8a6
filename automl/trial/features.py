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

    def digest(self) -> str:
        text = json.dumps(asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:24]


class FeatureCache:
    """In-memory LRU over an optional on-disk store of activation arrays."""

    def __init__(self, directory: Path | None, max_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self._memory: OrderedDict[str, np.ndarray] = OrderedDict()
        self.hits = self.disk_hits = self.misses = 0

    @property
    def memory_bytes(self) -> int:
        return sum(a.nbytes for a in self._memory.values())

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
