"""Video retrieval evaluation: test videos query the train gallery.

This is the protocol of the self-supervised video papers on UCF101 / HMDB51: every
test video is a query, the train videos are the gallery, and a query is answered
correctly at K when any of its K nearest train videos has its label (Recall@K, also
called top-K retrieval accuracy). Mean average precision treats every train video
of the query's label as relevant: ``AP = (1/R) Σ_{i: hit i relevant} precision@i``
over the ranking, ``R`` the number of relevant train videos. The ranking covers the
whole train gallery up to :data:`FULL_RANKING_MAX` videos; beyond that it stops at
that depth and relevant videos below it count as missed, so the reported mAP is a
lower bound (the JSON records the depth). Queries whose label has no train video
count for recall (as misses) but not for mAP, where AP is undefined.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from vpipe.errors import StageError
from vpipe.artifacts import atomic_write_text
from vpipe.retrieval import store
from vpipe.retrieval.index import Index

DEFAULT_KS = (1, 5, 10, 20, 50)
FULL_RANKING_MAX = 10_000


def hits_at(ranked: np.ndarray, query_labels: np.ndarray, k: int) -> np.ndarray:
    """Per query: does any of the first k ranked labels equal the query's (-1 pads never do)."""
    return (ranked[:, :k] == query_labels[:, None]).any(axis=1)


def average_precision(ranked: np.ndarray, label: int, relevant: int) -> float:
    """AP of one ranking (labels, best first) for ``label`` with ``relevant`` relevant items in all."""
    if relevant <= 0:
        return float("nan")
    flags = ranked == label
    precision = np.cumsum(flags) / np.arange(1, len(ranked) + 1)
    return float(precision[flags].sum() / relevant)


def retrieval_metrics(
    ranked: np.ndarray, query_labels: np.ndarray, gallery_labels: np.ndarray, names: dict[int, str],
    ks: Sequence[int] = DEFAULT_KS,
) -> dict[str, Any]:
    """Recall@K and mAP overall and per label, from each query's ranked gallery labels."""
    counts = {int(label): int(n) for label, n in zip(*np.unique(gallery_labels, return_counts=True))}
    recalls = {k: hits_at(ranked, query_labels, k) for k in ks}
    aps = np.array([average_precision(r, int(q), counts.get(int(q), 0)) for r, q in zip(ranked, query_labels)])

    def summary(mask: np.ndarray) -> dict[str, Any]:
        ap = aps[mask & ~np.isnan(aps)]
        return {
            "queries": int(mask.sum()),
            **{f"R@{k}": float(recalls[k][mask].mean()) if mask.any() else 0.0 for k in ks},
            "mAP": float(ap.mean()) if len(ap) else None,
        }

    per_label = {
        names.get(int(label), str(label)): summary(query_labels == label) for label in np.unique(query_labels)
    }
    return {**summary(np.ones(len(query_labels), dtype=bool)), "per_label": per_label}


def evaluate_index(index: Index, *, ks: Sequence[int] = DEFAULT_KS, device: str = "auto") -> dict[str, Any]:
    """Test videos against the train gallery of ``index``; written to ``index/<name>-evaluation.json``."""
    videos = index.rows.drop_duplicates("video_id")
    test = videos[videos["split"] == "test"]
    train = videos[videos["split"] == "train"]
    if test.empty or train.empty:
        raise StageError(
            f"index {index.name!r} needs test and train videos to evaluate; it has {len(test)} test and "
            f"{len(train)} train videos (check the manifest's split column)"
        )
    depth = min(len(train), FULL_RANKING_MAX)
    queries = index.vectors_of(test["video_id"].tolist(), device=device)
    labels = index.rows["label"].to_numpy(np.int64)
    ranked = np.full((len(test), depth), -1, dtype=np.int64)
    for begin in range(0, len(test), 256):
        for row, (positions, _) in enumerate(index.ranked(queries[begin : begin + 256], depth, split="train")):
            ranked[begin + row, : len(positions)] = labels[positions]
    names = dict(zip(videos["label"].astype(int), videos["label_name"].astype(str)))
    result = {
        "index": index.name,
        "embedding": index.metadata["embedding"],
        "index_fingerprint": index.metadata["fingerprint"],
        "kind": index.metadata["kind"],
        "queries": "test",
        "gallery": "train",
        "gallery_videos": len(train),
        "ranking_depth": int(depth),
        **retrieval_metrics(ranked, test["label"].to_numpy(np.int64), train["label"].to_numpy(np.int64), names, ks),
    }
    path = store.evaluation_path(index.ws, index.name)
    atomic_write_text(path, json.dumps(result, indent=2))
    return {**result, "path": str(path)}
