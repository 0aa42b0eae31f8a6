"""`automl inspect`: label issues and duplicates of a study's data (issue 17).

For the best complete trial's backbone and image size it takes the pooled backbone activations
of every split (from the study's feature cache, ``results/<study>/features``, or extracted once
and cached there), then

* ranks every training and validation image by cleanlab's label-quality score over
  out-of-sample probabilities of 5-fold heads (:mod:`automl.trust.labels`):
  ``label_issues.csv``, most suspicious first;
* finds duplicate pairs (:func:`find_pairs`): byte-identical images by content hash (any
  splits), and near-duplicates across splits by cosine similarity of the pooled activations
  (>= 0.97) or of grey thumbnails (>= 0.985): ``duplicates.csv``, one row per pair.

An image is named as the user knows it (``Split.source_names``): its file, ``x_train[123]`` into
the .npz's arrays, ``animal_mnist[42]`` for the embedded data.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from automl.atomic import write_atomic, write_text_atomic
from automl.config import TrialConfig, study_dir
from automl.data import twins
from automl.errors import ConfigError, DataError
from automl.search import leaderboard
from automl.search.record import StudyRecord, TrialRecord
from automl.trust import leakage
from automl.trust.labels import rank_label_issues

__all__ = ["ACTIVATION_THRESHOLD", "Inspection", "find_pairs", "inspect_study", "label_issues"]
log = logging.getLogger("automl")

ACTIVATION_THRESHOLD = leakage.DEFAULT_THRESHOLD  # 0.97: only copies reach it on Lite0 96 px
LABEL_CSV, PAIRS_CSV, SUMMARY_JSON = "label_issues.csv", "duplicates.csv", "inspect.json"
SPLIT_PAIRS = [("train", "test"), ("validation", "test"), ("train", "validation"),
               ("train", "train"), ("validation", "validation"), ("test", "test")]


@dataclass
class Inspection:
    """What ``inspect_study`` found and wrote."""

    trial: int
    backbone: str
    image_size: int
    extracted: list[str]        # splits whose activations were not in the cache
    labels: pd.DataFrame        # label_issues.csv
    pairs: pd.DataFrame         # duplicates.csv
    counts: pd.DataFrame        # per split pair: pairs, exact, images_b, share_b
    files: list[Path]


def label_issues(data: Any, features: dict[str, np.ndarray], seed: int = 0) -> pd.DataFrame:
    """Every training and validation image ranked by label quality, most suspicious first:
    ``rank, source, split, index`` (position in the split), ``given, suggested`` (class
    names), ``score`` (cleanlab's, lower = more likely mislabelled)."""
    parts = [name for name in ("train", "validation") if name in features]
    splits = data.splits()
    x = np.concatenate([features[name] for name in parts])
    y = np.concatenate([splits[name].labels for name in parts]).astype(np.int64)
    split_of = np.concatenate([[name] * len(splits[name]) for name in parts])
    index_of = np.concatenate([np.arange(len(splits[name])) for name in parts])
    sources = [s for name in parts for s in splits[name].source_names()]
    table = rank_label_issues(x, y, data.num_classes, seed=seed)
    rows = table["index"].to_numpy()
    names = np.asarray(data.class_names, dtype=object)
    return pd.DataFrame({"rank": np.arange(1, len(rows) + 1),
                         "source": [sources[i] for i in rows], "split": split_of[rows],
                         "index": index_of[rows], "given": names[table["given"].to_numpy()],
                         "suggested": names[table["suggested"].to_numpy()],
                         "score": table["score"].to_numpy()})


def find_pairs(data: Any, features: dict[str, np.ndarray],
               thumbs: dict[str, np.ndarray] | None = None) -> pd.DataFrame:
    """Duplicate pairs, one row per pair: ``source_a, source_b, split_a, index_a, split_b,
    index_b, exact, activation_cosine, thumbnail_cosine, found_by``.

    Exact duplicates (content hash) in any splits, within one too; near-duplicates across
    splits whose pooled activations reach ``ACTIVATION_THRESHOLD`` or whose thumbnails reach
    ``leakage.THUMBNAIL_THRESHOLD`` (:mod:`automl.data.twins`, as the search's leak warning).
    Ordered by split pair (train-test first), exact first, then most similar first. ``b`` is
    the later split (a test image leaking from train is ``b``).
    """
    splits = data.splits()
    thumbs = thumbs if thumbs is not None else twins.thumbnails(data)
    found: dict[tuple[str, int, str, int], set[str]] = {}
    exact = leakage.exact_duplicates({n: s.hashes.tolist() for n, s in splits.items()})
    near_act = leakage.near_duplicates(features, threshold=ACTIVATION_THRESHOLD)
    near_thumb = twins.near_pairs(thumbs)
    for how, frame in (("hash", exact), ("activations", near_act), ("thumbnails", near_thumb)):
        for ia, sa, ib, sb in frame[["index_a", "split_a", "index_b", "split_b"]].itertuples(
                index=False):
            found.setdefault((sa, int(ia), sb, int(ib)), set()).add(how)
    unit_f = {n: _unit(f) for n, f in features.items()}
    names = {n: s.source_names() for n, s in splits.items()}
    hashes = {n: s.hashes for n, s in splits.items()}
    rows = []
    for (sa, ia, sb, ib), how in found.items():
        rows.append({"source_a": names[sa][ia], "source_b": names[sb][ib], "split_a": sa,
                     "index_a": ia, "split_b": sb, "index_b": ib,
                     "exact": bool(hashes[sa][ia] == hashes[sb][ib]),
                     "activation_cosine": float(unit_f[sa][ia] @ unit_f[sb][ib]),
                     "thumbnail_cosine": float(thumbs[sa][ia] @ thumbs[sb][ib]),
                     "found_by": "+".join(h for h in ("hash", "activations", "thumbnails")
                                          if h in how)})
    columns = ["source_a", "source_b", "split_a", "index_a", "split_b", "index_b", "exact",
               "activation_cosine", "thumbnail_cosine", "found_by"]
    frame = pd.DataFrame(rows, columns=columns)
    if frame.empty:
        return frame
    order = {pair: i for i, pair in enumerate(SPLIT_PAIRS)}
    frame["_pair"] = [order.get(p, len(order)) for p in zip(frame.split_a, frame.split_b,
                                                            strict=True)]
    frame = frame.sort_values(["_pair", "exact", "thumbnail_cosine", "index_b", "index_a"],
                              ascending=[True, False, False, True, True], kind="stable")
    return frame.drop(columns="_pair").reset_index(drop=True)


def pair_counts(pairs: pd.DataFrame, data: Any) -> pd.DataFrame:
    """Per split pair (every pair of distinct splits, zeros included, then any within-split
    pairs found): ``pairs``, ``exact`` pairs, ``images_b`` (images of split_b with a twin in
    split_a) and ``share_b`` (of split_b's images)."""
    sizes = {n: len(s) for n, s in data.splits().items()}
    found = leakage.pair_counts(pairs).set_index(["split_a", "split_b"])
    keys = [(a, b) for a, b in SPLIT_PAIRS if a in sizes and b in sizes
            and (a != b or (a, b) in found.index)]
    rows = []
    for a, b in keys:
        got = found.loc[(a, b)] if (a, b) in found.index else None
        images = 0 if got is None else int(got["images_b"])
        rows.append({"split_a": a, "split_b": b,
                     "pairs": 0 if got is None else int(got["pairs"]),
                     "exact": 0 if got is None else int(got["exact"]),
                     "images_b": images, "share_b": images / sizes[b]})
    return pd.DataFrame(rows, columns=["split_a", "split_b", "pairs", "exact", "images_b",
                                       "share_b"])


def inspect_study(results: Path, study_name: str, storage: str | None = None,
                  artifacts: str | None = None, data: str | None = None) -> Inspection:
    """Inspect the study's data with its best complete trial's backbone and image size; write
    ``label_issues.csv``, ``duplicates.csv`` and ``inspect.json`` into ``results/<study>/``.

    ConfigError when the study has no complete trial; DataError when its data cannot be loaded
    from where the search read it (pass ``data``, ``--data``, with where it is now).
    """
    from automl.report.export import study_data
    from automl.search.study import artifact_root, open_study

    study = open_study(Path(results), study_name, storage, create=False)
    root = artifact_root(results, study_name, artifacts, study, storage)
    row = leaderboard.best_row(leaderboard.from_study(study, root))
    if row is None:
        raise ConfigError(f"study '{study_name}' has no complete trial yet; `automl inspect` "
                          "uses the best complete trial's backbone and image size. Run `automl "
                          "search` until a trial completes.")
    recorded = StudyRecord.of(study)
    meta = recorded.data or {}
    try:
        loaded = study_data(study, data)
    except DataError as exc:
        if data is not None:
            raise
        raise DataError(f"the data of study '{study_name}' cannot be loaded from where the "
                        f"search read it ({meta.get('data') or meta.get('source')}): {exc} If "
                        "it moved, pass --data with where it is now.") from None
    if loaded.fingerprint != meta.get("fingerprint"):
        log.warning("the data (%s) differs from what study '%s' was searched on; inspecting it "
                    "as it is now", loaded.source, study_name)
    number = int(row["trial"])
    result = TrialRecord.of(study.get_trials(deepcopy=False)[number]).result or {}
    config = TrialConfig.from_params(row.to_dict())
    folder = study_dir(results, study_name)
    features, extracted = pooled_features(loaded, config, result, folder / "features")
    seed = int(meta.get("seed", 0))
    labels = label_issues(loaded, features, seed)
    pairs = find_pairs(loaded, features)
    counts = pair_counts(pairs, loaded)
    files = [write_atomic(folder / LABEL_CSV, lambda p: labels.to_csv(p, index=False,
                                                                       float_format="%.6g")),
             write_atomic(folder / PAIRS_CSV, lambda p: pairs.to_csv(p, index=False,
                                                                      float_format="%.6g"))]
    summary = {"trial": number, "backbone": config.backbone, "image_size": config.image_size,
               "fingerprint": loaded.fingerprint, "images_ranked": len(labels),
               "thresholds": {"activations": ACTIVATION_THRESHOLD,
                              "thumbnails": leakage.THUMBNAIL_THRESHOLD},
               "counts": counts.to_dict(orient="records")}
    files.append(write_text_atomic(folder / SUMMARY_JSON,
                                   json.dumps(summary, indent=2, default=_plain)))
    return Inspection(number, config.backbone, config.image_size, extracted, labels, pairs,
                      counts, files)


def pooled_features(data: Any, config: TrialConfig, result: dict[str, Any],
                    cache_dir: Path) -> tuple[dict[str, np.ndarray], list[str]]:
    """Pooled activations of every split for the trial's backbone, pretrained weights and
    image size: from the feature cache (the keys the search uses), else extracted once (and
    cached); returns them and the splits that were extracted."""
    from automl.backbones.registry import get_spec
    from automl.backbones.weights import WeightsResolver, recorded_source
    from automl.errors import WeightsError
    from automl.trial.features import FeatureCache, FeatureKey

    spec = get_spec(config.backbone)
    identity = str(result.get("backbone_identity") or "")
    try:
        source = (recorded_source(spec, config.image_size, result.get("backbone_weights"),
                                  identity) if identity
                  else WeightsResolver().resolve(spec, config.image_size))
    except WeightsError as exc:
        raise ConfigError(f"the backbone of the best trial cannot be built: {exc}") from None
    cache = FeatureCache(cache_dir, 0)  # nothing kept in memory: each split is read once
    built: list[Any] = []
    extracted: list[str] = []

    def compute(split: Any) -> Any:
        def run() -> np.ndarray:
            from automl.trial.run import extract_features

            if not built:
                from automl.trial.model import build_model, reset_keras

                seed = source.identity.split(":", 1)[1] if source.identity.startswith(
                    "random:") else 0
                reset_keras(int(seed))
                built.append(build_model(config, spec, data.num_classes,
                                         source.weights).feature_model(at_cut=False))
            extracted.append(split.name)
            return extract_features(built[0], split, config.image_size, 64)
        return run

    features = {name: cache.get(FeatureKey(data.fingerprint, name, spec.name, source.identity,
                                           config.image_size, "pooled"), compute(split))
                for name, split in data.splits().items()}
    return features, extracted


def _unit(f: np.ndarray) -> np.ndarray:
    f = np.asarray(f, np.float32)
    return f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else str(value)
