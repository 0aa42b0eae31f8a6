"""Tests for automl.trial.features: the frozen-activation cache (memory LRU over a disk store)."""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from automl.trial.features import FeatureCache, FeatureKey

KEY = FeatureKey(data="fp-abc", split="train", backbone="efficientnet_lite0",
                 weights="random:0", image_size=64, cut="pooled")


def _key(**over: object) -> FeatureKey:
    return dataclasses.replace(KEY, **over)


class Counter:
    """A compute function that returns a fixed array and counts its calls."""

    def __init__(self, array: np.ndarray) -> None:
        self.array, self.calls = array, 0

    def __call__(self) -> np.ndarray:
        self.calls += 1
        return self.array.copy()


def _array(n: int = 10, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 4)).astype(np.float32)  # n * 16 bytes


def test_computes_once_per_key_in_memory() -> None:
    cache = FeatureCache(None, max_bytes=1 << 20)
    a, b = Counter(_array(seed=1)), Counter(_array(seed=2))
    first = cache.get(KEY, a)
    again = cache.get(KEY, a)
    other = cache.get(_key(split="validation"), b)
    assert a.calls == 1 and b.calls == 1
    np.testing.assert_array_equal(first, a.array)
    assert again is first  # served from memory, not a copy
    np.testing.assert_array_equal(other, b.array)
    assert (cache.hits, cache.disk_hits, cache.misses) == (1, 0, 2)
    assert cache.memory_bytes == 2 * a.array.nbytes


def test_result_is_contiguous_float32() -> None:
    cache = FeatureCache(None, max_bytes=1 << 20)
    data = np.arange(24, dtype=np.float64).reshape(2, 3, 4)[:, ::2]  # float64, non-contiguous
    out = cache.get(KEY, lambda: data)
    assert out.dtype == np.float32 and out.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(out, data.astype(np.float32))


def test_disk_store_is_reused_by_a_fresh_cache(tmp_path: Path) -> None:
    array = _array(seed=3)
    first = FeatureCache(tmp_path, max_bytes=1 << 20)
    compute = Counter(array)
    first.get(KEY, compute)
    digest = KEY.digest()
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{digest}.json", f"{digest}.npy"]
    assert json.loads((tmp_path / f"{digest}.json").read_text()) == dataclasses.asdict(KEY)

    fresh = FeatureCache(tmp_path, max_bytes=1 << 20)

    def must_not_run() -> np.ndarray:
        raise AssertionError("compute called although the disk store has the array")

    out = fresh.get(KEY, must_not_run)
    np.testing.assert_array_equal(out, array)
    assert (fresh.hits, fresh.disk_hits, fresh.misses) == (0, 1, 0)
    fresh.get(KEY, must_not_run)  # now in memory
    assert (fresh.hits, fresh.disk_hits) == (1, 1)
    assert compute.calls == 1


@pytest.mark.parametrize("damage", [
    pytest.param(lambda p: p.write_bytes(b"this is not an npy file at all"), id="garbage"),
    pytest.param(lambda p: p.write_bytes(p.read_bytes()[:-40]), id="truncated"),
    pytest.param(lambda p: p.write_bytes(b""), id="empty"),
])
def test_corrupted_file_is_recomputed_with_a_warning(
        tmp_path: Path, caplog: pytest.LogCaptureFixture,
        damage: Callable[[Path], None]) -> None:
    array = _array(seed=4)
    FeatureCache(tmp_path, max_bytes=1 << 20).get(KEY, Counter(array))
    path = tmp_path / f"{KEY.digest()}.npy"
    damage(path)

    fresh = FeatureCache(tmp_path, max_bytes=1 << 20)
    compute = Counter(array)
    with caplog.at_level(logging.WARNING, logger="automl"):
        out = fresh.get(KEY, compute)
    assert compute.calls == 1
    np.testing.assert_array_equal(out, array)
    assert (fresh.disk_hits, fresh.misses) == (0, 1)
    warnings = [r for r in caplog.records if r.name == "automl" and r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert str(path) in warnings[0].getMessage()
    assert "unreadable" in warnings[0].getMessage()
    assert "recomputing" in warnings[0].getMessage()
    # the file was rewritten whole: a third cache reads it without computing
    np.testing.assert_array_equal(np.load(path), array)
    third = FeatureCache(tmp_path, max_bytes=1 << 20)
    np.testing.assert_array_equal(third.get(KEY, Counter(array * 0)), array)
    assert third.disk_hits == 1


def test_memory_lru_evicts_least_recently_used_past_max_bytes() -> None:
    arrays = {name: _array(10, seed=i) for i, name in enumerate("abcd")}  # 160 bytes each
    computes = {name: Counter(a) for name, a in arrays.items()}
    keys = {name: _key(split=name) for name in arrays}
    cache = FeatureCache(None, max_bytes=3 * 160)
    for name in "abc":
        cache.get(keys[name], computes[name])
    assert cache.memory_bytes == 480
    cache.get(keys["a"], computes["a"])  # touch a: b is now the least recently used
    cache.get(keys["d"], computes["d"])  # over the limit: b goes
    assert cache.memory_bytes == 480
    for name in "acd":
        np.testing.assert_array_equal(cache.get(keys[name], computes[name]), arrays[name])
    assert {n: c.calls for n, c in computes.items()} == {"a": 1, "b": 1, "c": 1, "d": 1}
    np.testing.assert_array_equal(cache.get(keys["b"], computes["b"]), arrays["b"])
    assert computes["b"].calls == 2  # evicted, and no disk store: computed again
    assert cache.memory_bytes <= 480


def test_every_field_changes_the_digest() -> None:
    changes = {"data": "fp-other", "split": "test", "backbone": "vgg16",
               "weights": "0123456789abcdef", "image_size": 96, "cut": "block6a_add",
               "augmentation": "light", "view": 1, "seed": 3}
    assert set(changes) == {f.name for f in dataclasses.fields(FeatureKey)}
    # (the views' seed names the views' draws: it changes the key of an augmented view only)
    digests = {KEY.digest()} | {_key(**{k: v}, **({"augmentation": "light"} if k == "seed"
                                                   else {})).digest()
                                for k, v in changes.items()}
    assert len(digests) == 1 + len(changes)
    assert _key(seed=3).digest() == KEY.digest()  # no views: the seed plays no part
    assert _key().digest() == KEY.digest()  # equal keys, equal digests
    assert len(KEY.digest()) == 24 and int(KEY.digest(), 16) >= 0
    # keys without a view keep the digest they had before views existed (caches stay valid)
    old_style = {f: getattr(KEY, f) for f in ("data", "split", "backbone", "weights",
                                              "image_size", "cut")}
    import hashlib
    import json

    text = json.dumps(old_style, sort_keys=True)
    assert KEY.digest() == hashlib.sha256(text.encode()).hexdigest()[:24]


def test_distinct_keys_never_share_an_array(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path, max_bytes=1 << 20)
    a = cache.get(_key(image_size=64), Counter(_array(seed=5)))
    b = cache.get(_key(image_size=96), Counter(_array(seed=6)))
    assert not np.array_equal(a, b)
    assert len(list(tmp_path.glob("*.npy"))) == 2


def test_arrays_too_big_for_memory_still_come_back_correct(tmp_path: Path) -> None:
    big = _array(1000, seed=7)  # 16 kB
    small = _array(2, seed=8)

    memory_only = FeatureCache(None, max_bytes=1000)
    compute = Counter(big)
    np.testing.assert_array_equal(memory_only.get(KEY, compute), big)
    np.testing.assert_array_equal(memory_only.get(KEY, compute), big)
    assert memory_only.memory_bytes == 0
    assert compute.calls == 2  # nowhere to keep it

    on_disk = FeatureCache(tmp_path, max_bytes=1000)
    on_disk.get(_key(split="small"), Counter(small))
    compute = Counter(big)
    np.testing.assert_array_equal(on_disk.get(KEY, compute), big)
    np.testing.assert_array_equal(on_disk.get(KEY, compute), big)
    assert compute.calls == 1  # second time from disk
    assert on_disk.disk_hits == 1
    assert on_disk.memory_bytes == small.nbytes  # the big one did not evict the small one
