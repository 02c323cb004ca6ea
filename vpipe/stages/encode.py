"""The encode stage: a train-only codebook, classic encodings of every video, a baseline.

Fitting is one global job, not per-item work, so this stage does not use the item
engine; it keeps the same contract by hand. Each of its three artifacts carries a
fingerprint of everything it depends on and is skipped when that is unchanged:

- ``codebooks/<features>-k<K>.h5``: the features index content, the train video
  list, layer, K, requested sample size, seed, iterations and fitting method;
- ``encodings/<features>-k<K>-<method>.h5``: the codebook fingerprint, the method,
  the features index content and the encoded videos with their labels and splits;
- ``encodings/<features>-k<K>-baseline.json``: the encodings' fingerprints and the
  classifier settings.

Every artifact is written under a temporary name and renamed into place.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pandas as pd

from vpipe.encode.baseline import run_baseline
from vpipe.encode.classic import ENCODERS, METHODS, encoding_dim
from vpipe.encode.codebook_io import Codebook, load_codebook, save_codebook, stored_fingerprint
from vpipe.encode.encoding_io import EncodingWriter, load_encodings
from vpipe.encode.fit import fit_codebook
from vpipe.errors import ConfigError, StageError
from vpipe.pipeline.fingerprint import fingerprint
from vpipe.pipeline.workspace import DatasetWorkspace, atomic_write_text
from vpipe.store import FeatureSet

log = logging.getLogger(__name__)

#: Bumped when the fitting or encoding code changes what it writes.
CODEBOOK_METHOD = "faiss-kmeans+partition-gmm/1"
ENCODING_VERSION = "classic/1"
BASELINE_METHOD = "standardize+linearsvc/1"


def _parse_methods(methods: Sequence[str]) -> list[str]:
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ConfigError(f"unknown encoding method(s) {unknown or 'none'}: choose from {','.join(METHODS)}")
    return list(dict.fromkeys(methods))


def _codebook(
    ws: DatasetWorkspace,
    features: FeatureSet,
    features_name: str,
    train_ids: list[str],
    *,
    clusters: int,
    sample_size: int | None,
    seed: int,
    niter: int,
    layer: str,
    use_gpu: bool | None,
    index_sha256: str,
) -> tuple[Codebook, bool]:
    """The stored codebook if its fingerprint matches, else a new fit (written). Returns (codebook, fitted)."""
    fp = fingerprint(CODEBOOK_METHOD, features_name, index_sha256, layer, clusters, sample_size, seed, niter, train_ids)
    path = ws.codebook_path(features_name, clusters)
    if stored_fingerprint(path) == fp:
        log.info("codebook %s is up to date", path)
        return load_codebook(path), False
    log.info("fitting k=%d codebook on %d train videos", clusters, len(train_ids))
    codebook = fit_codebook(
        features, train_ids, clusters=clusters, sample_size=sample_size, seed=seed, niter=niter,
        use_gpu=use_gpu, layer=layer,
    )  # fmt: skip
    codebook.provenance.update(
        features=features_name,
        features_provenance=features.provenance,
        features_index_sha256=index_sha256,
        method=CODEBOOK_METHOD,
        fingerprint=fp,
    )
    save_codebook(path, codebook)
    return codebook, True


def _encode(
    ws: DatasetWorkspace,
    features: FeatureSet,
    features_name: str,
    codebook: Codebook,
    videos: pd.DataFrame,
    methods: list[str],
    *,
    layer: str,
    index_sha256: str,
) -> dict[str, dict[str, Any]]:
    """Write every stale method's encodings in one pass over the videos."""
    listing = videos[["video_id", "label", "split"]].values.tolist()
    info: dict[str, dict[str, Any]] = {}
    stale: dict[str, tuple[Path, str]] = {}
    for method in methods:
        path = ws.encoding_path(features_name, codebook.clusters, method)
        fp = fingerprint(ENCODING_VERSION, method, codebook.fingerprint, index_sha256, layer, listing)
        info[method] = {"path": str(path), "dim": encoding_dim(method, codebook), "fingerprint": fp, "written": False}
        if stored_fingerprint(path) != fp:
            stale[method] = (path, fp)
    if not stale:
        return info
    with ExitStack() as stack:
        writers = {
            method: stack.enter_context(
                EncodingWriter(
                    path,
                    videos,
                    encoding_dim(method, codebook),
                    fingerprint=fp,
                    provenance={
                        "method": method,
                        "version": ENCODING_VERSION,
                        "features": features_name,
                        "layer": layer,
                        "clusters": codebook.clusters,
                        "codebook_fingerprint": codebook.fingerprint,
                        "fingerprint": fp,
                        "view": 0,
                    },
                )
            )
            for method, (path, fp) in stale.items()
        }
        for row, video_id in enumerate(videos["video_id"]):
            descriptors = features.sequence(video_id, layer=layer, view=0)
            for method, writer in writers.items():
                writer.write(row, ENCODERS[method](descriptors, codebook))
            if (row + 1) % 500 == 0:
                log.info("encoded %d/%d videos", row + 1, len(videos))
    for method in stale:
        info[method]["written"] = True
    return info


def _baseline(
    path: Path, encodings: dict[str, dict[str, Any]], label_names: dict[int, str], *, svm_c: float | None, seed: int
) -> tuple[dict[str, Any], bool]:
    """Test metrics per method, reused when the stored JSON has the same fingerprint."""
    fp = fingerprint(BASELINE_METHOD, {m: e["fingerprint"] for m, e in encodings.items()}, svm_c, seed)
    if path.is_file():
        stored = json.loads(path.read_text())
        if stored.get("fingerprint") == fp:
            return stored, False
    results: dict[str, Any] = {}
    for method, entry in encodings.items():
        data = load_encodings(Path(entry["path"]))
        train, test = data.split == "train", data.split == "test"
        log.info("baseline %s: %d train, %d test videos", method, train.sum(), test.sum())
        results[method] = {
            "dim": entry["dim"],
            **run_baseline(data.x[train], data.label[train], data.x[test], data.label[test], c=svm_c, seed=seed),
        }
    report = {
        "fingerprint": fp,
        "classifier": BASELINE_METHOD,
        "label_names": {str(k): v for k, v in sorted(label_names.items())},
        "methods": results,
    }
    atomic_write_text(path, json.dumps(report, indent=2))
    return report, True


def run_encode(
    ws: DatasetWorkspace,
    features_name: str = "li3d-rgb",
    clusters: int = 128,
    *,
    sample_size: int | None = None,
    seed: int = 0,
    niter: int = 20,
    methods: Sequence[str] = METHODS,
    layer: str = "pool",
    svm_c: float | None = None,
    use_gpu: bool | None = None,
) -> dict[str, Any]:
    """Fit (or reuse) the codebook, encode every video, run the linear baseline; return a summary.

    The baseline trains on the train split and reports on the test split; it is
    skipped (``baseline`` is None) when either split is empty.
    """
    methods = _parse_methods(methods)
    if not 0 <= seed < 2**31:
        raise ConfigError(f"--seed must be between 0 and 2^31-1, got {seed}")
    with ws.open_features(features_name) as features:
        videos, missing = ws.usable_videos([features.index])
        train_ids = videos.loc[videos["split"] == "train", "video_id"].tolist()
        if not train_ids:
            raise StageError(
                f"no train videos of dataset {ws.dataset!r} have {features_name} features: the codebook is fitted on "
                f"the train split only; check the manifest's split column (`vpipe probe --dataset {ws.dataset} --split N`)"
            )
        index_sha256 = features.index_sha256
        codebook, fitted = _codebook(
            ws, features, features_name, train_ids, clusters=clusters, sample_size=sample_size, seed=seed,
            niter=niter, layer=layer, use_gpu=use_gpu, index_sha256=index_sha256,
        )  # fmt: skip
        encodings = _encode(
            ws, features, features_name, codebook, videos, methods, layer=layer, index_sha256=index_sha256
        )
    summary: dict[str, Any] = {
        "dataset": ws.dataset,
        "features": features_name,
        "clusters": clusters,
        "videos": len(videos),
        "videos_without_features": missing,
        "codebook": {
            "path": str(ws.codebook_path(features_name, clusters)),
            "fitted": fitted,
            **{k: codebook.provenance[k] for k in ("sample_size", "objective", "device", "train_videos", "fingerprint")},
        },
        "encodings": encodings,
        "baseline": None,
    }
    if (videos["split"] == "test").any():
        path = ws.encoding_path(features_name, clusters, "baseline")
        label_names = dict(zip(videos["label"].astype(int), videos["label_name"]))
        report, written = _baseline(path, encodings, label_names, svm_c=svm_c, seed=seed)
        summary["baseline"] = {"path": str(path), "written": written, "methods": report["methods"]}
    return summary
