"""The encode stage: a train-only codebook, classic encodings of every video, a baseline.

Fitting is one global job, not per-item work, so this stage does not use the item
engine; it keeps the same contract by hand. Each of its three artifacts carries a
fingerprint of everything it depends on and is skipped when that is unchanged:

- ``codebooks/<features>-k<K>.h5``: the features index content, the train video
  list, layer, K, requested sample size, seed, iterations, PCA dimension and
  whitening, and the fitting method;
- ``encodings/<features>-k<K>-<method>.h5``: the codebook fingerprint, the method,
  the features index content and the encoded videos with their labels and splits;
- ``encodings/<features>-k<K>-baseline.json``: the encodings' fingerprints and the
  classifier settings.

:func:`encode_status` computes the same fingerprints without fitting or encoding, so
``vpipe status`` can say what ``vpipe run`` would redo.

Memory is bounded by a batch of videos, except for the two things checked against
``memory_budget`` first (the k-means sample and the baseline's train matrix, see
:mod:`vpipe.encode.budget`). Every artifact is written under a temporary name and
renamed into place.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from threadpoolctl import threadpool_limits

from vpipe.artifacts import atomic_write_text
from vpipe.encode.baseline import required_bytes, run_baseline_file
from vpipe.encode.budget import DEFAULT_MEMORY_BUDGET, WITHIN_BUDGET, check_budget, format_bytes
from vpipe.encode.classic import ENCODERS, METHODS, encoding_dim, method_dim
from vpipe.encode.codebook_io import Codebook, load_codebook, save_codebook, stored_fingerprint
from vpipe.encode.fit import codebook_sample_size, fit_codebook, resolve_pca
from vpipe.errors import ConfigError, StageError
from vpipe.pipeline.fingerprint import fingerprint
from vpipe.pipeline.workspace import DatasetWorkspace
from vpipe.store.index_columns import IndexColumns, index_columns

if TYPE_CHECKING:
    from vpipe.store import FeatureSet

log = logging.getLogger(__name__)

#: Bumped when the fitting or encoding code changes what it writes.
CODEBOOK_METHOD = "pca+faiss-kmeans+partition-gmm/2"
ENCODING_VERSION = "classic/1"
BASELINE_METHOD = "standardize+ovr-l2svm-lbfgs/2"
#: Default ``--pca``: D/2 when the codebook sample allows it, see :func:`vpipe.encode.fit.resolve_pca`.
DEFAULT_PCA = "auto"
#: Bytes of encoded vectors held before a batch is written.
BATCH_BYTES = 64 << 20


def _parse_methods(methods: Sequence[str]) -> list[str]:
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ConfigError(f"unknown encoding method(s) {unknown or 'none'}: choose from {','.join(METHODS)}")
    return list(dict.fromkeys(methods))


@dataclass(frozen=True)
class EncodeOptions:
    """How the codebook, the encodings and the baseline are made: what ``vpipe encode``
    takes besides the feature set and K, given once to :func:`run_encode` and to
    :func:`encode_status` alike.

    ``pca`` is the descriptor dimension after PCA: ``"auto"`` (D/2), an integer, or
    0/None for none. ``baseline`` is True, False or ``"within-budget"`` (methods whose
    baseline would exceed ``memory_budget`` are left out instead of refused).
    ``use_gpu`` (None: when faiss has one) enters no fingerprint.
    """

    sample_size: int | None = None
    seed: int = 0
    niter: int = 20
    methods: Sequence[str] = METHODS
    layer: str = "pool"
    svm_c: float | None = None
    use_gpu: bool | None = None
    pca: int | str | None = DEFAULT_PCA
    whiten: bool = False
    memory_budget: int = DEFAULT_MEMORY_BUDGET
    baseline: bool | str = True


@dataclass
class EncodePlan:
    """What a run would read and the fingerprint of every artifact it would write."""

    #: The usable videos' ``video_id``, ``label``, ``label_name`` and ``split``, in manifest order.
    videos: pa.Table
    missing: int
    train_ids: list[str]
    index_sha256: str
    pca: int | None
    code_dim: int
    codebook_fingerprint: str
    encoding_fingerprints: dict[str, str]
    baseline_fingerprint: str | None
    #: Methods the linear baseline evaluates (all encoded ones unless some exceed the budget).
    baseline_methods: list[str] = field(default_factory=list)
    #: Method -> one line saying why its baseline is left out (``baseline="within-budget"``).
    baseline_skipped: dict[str, str] = field(default_factory=dict)


def _plan(
    ws: DatasetWorkspace,
    features: IndexColumns,
    features_name: str,
    clusters: int,
    options: EncodeOptions,
) -> EncodePlan:
    """Fingerprints from the manifest, the features index (as columns: no shard, no
    pandas) and the options: nothing is fitted."""
    methods = _parse_methods(options.methods)
    seed, layer, run_baseline, memory_budget = options.seed, options.layer, options.baseline, options.memory_budget
    if not 0 <= seed < 2**31:
        raise ConfigError(f"--seed must be between 0 and 2^31-1, got {seed}")
    videos, missing = ws.usable_video_columns([features.view0_ids])
    train_ids = videos.filter(pc.equal(videos["split"], "train"))["video_id"].to_pylist()
    if not train_ids:
        raise StageError(
            f"no train videos of dataset {ws.dataset!r} have {features_name} features: the codebook is fitted on "
            f"the train split only; check the manifest's split column (`vpipe probe --dataset {ws.dataset} --split N`)"
        )
    input_dim = features.descriptor_dim(layer)
    samples = codebook_sample_size(features.descriptor_total(train_ids, layer), options.sample_size)
    reduced = resolve_pca(options.pca, input_dim, samples)
    index_sha256 = features.sha256
    book = fingerprint(
        CODEBOOK_METHOD, features_name, index_sha256, layer, clusters, options.sample_size, seed, options.niter,
        train_ids, reduced, options.whiten and reduced is not None,
    )  # fmt: skip
    listing = [list(row) for row in zip(*(videos[name].to_pylist() for name in ("video_id", "label", "split")))]
    encodings = {m: fingerprint(ENCODING_VERSION, m, book, index_sha256, layer, listing) for m in methods}
    if run_baseline not in (True, False, WITHIN_BUDGET):
        raise ConfigError(f"baseline must be true, false or {WITHIN_BUDGET!r}, got {run_baseline!r}")
    plan = EncodePlan(videos, missing, train_ids, index_sha256, reduced, reduced or input_dim, book, encodings, None)
    if not run_baseline or "test" not in videos["split"].to_pylist():
        return plan
    plan.baseline_methods = list(methods)
    if run_baseline == WITHIN_BUDGET:
        for method, needed in _baseline_bytes(plan, clusters).items():
            if needed > memory_budget:
                plan.baseline_methods.remove(method)
                plan.baseline_skipped[method] = (
                    f"the {method} linear baseline needs {format_bytes(needed)} in memory, more than the "
                    f"--memory-budget of {format_bytes(memory_budget)}: left out (`vpipe encode --dataset "
                    f"{ws.dataset} --features {features_name} --clusters {clusters} --methods {method} "
                    f"--memory-budget ...` runs it)"
                )
    if plan.baseline_methods:
        chosen = {m: encodings[m] for m in plan.baseline_methods}
        plan.baseline_fingerprint = fingerprint(BASELINE_METHOD, chosen, options.svm_c, seed)
    return plan


def _baseline_bytes(plan: EncodePlan, clusters: int) -> dict[str, int]:
    """Method -> bytes its baseline holds (train matrix, its per-fold copy, solver state)."""
    train = plan.videos.filter(pc.equal(plan.videos["split"], "train"))
    classes = len(set(train["label"].to_pylist()))
    return {
        method: required_bytes(len(plan.train_ids), method_dim(method, clusters, plan.code_dim), classes)
        for method in plan.encoding_fingerprints
    }


def _check_baseline_budget(plan: EncodePlan, clusters: int, memory_budget: int) -> None:
    """Refuse up front, before any fitting, a baseline whose train matrix would not fit."""
    needed = _baseline_bytes(plan, clusters)
    for method in plan.baseline_methods:
        dim = method_dim(method, clusters, plan.code_dim)
        check_budget(
            f"the {method} linear baseline ({len(plan.train_ids)} train videos × {dim})",
            needed[method],
            memory_budget,
            "raise --memory-budget, lower --clusters or --pca, leave the method out with --methods, "
            "or skip the baseline with --no-baseline",
        )


def _codebook(
    ws: DatasetWorkspace,
    features: FeatureSet,
    features_name: str,
    plan: EncodePlan,
    clusters: int,
    options: EncodeOptions,
) -> tuple[Codebook, bool]:
    """The stored codebook if its fingerprint matches, else a new fit (written). Returns (codebook, fitted)."""
    path = ws.codebook_path(features_name, clusters)
    if stored_fingerprint(path) == plan.codebook_fingerprint:
        log.info("codebook %s is up to date", path)
        return load_codebook(path), False
    log.info("fitting k=%d codebook on %d train videos", clusters, len(plan.train_ids))
    codebook = fit_codebook(
        features, plan.train_ids, clusters=clusters, sample_size=options.sample_size, seed=options.seed,
        niter=options.niter, use_gpu=options.use_gpu, layer=options.layer, pca=plan.pca, whiten=options.whiten,
        memory_budget=options.memory_budget,
    )  # fmt: skip
    codebook.provenance.update(
        features=features_name,
        features_provenance=features.provenance,
        features_index_sha256=plan.index_sha256,
        method=CODEBOOK_METHOD,
        fingerprint=plan.codebook_fingerprint,
    )
    save_codebook(path, codebook)
    return codebook, True


def _encode(
    ws: DatasetWorkspace,
    features: FeatureSet,
    features_name: str,
    codebook: Codebook,
    plan: EncodePlan,
    *,
    layer: str,
) -> dict[str, dict[str, Any]]:
    """Write every stale method's encodings in one pass over the videos, a batch at a time.

    BLAS runs on one thread here: a video's products are a few MFLOP, far below what
    pays for waking a thread pool, and on a loaded machine the pool's spinning threads
    made each video 10× slower.
    """
    from vpipe.encode.encoding_io import EncodingWriter

    videos = plan.videos.to_pandas()
    info: dict[str, dict[str, Any]] = {}
    stale: dict[str, tuple[Path, str]] = {}
    for method, fp in plan.encoding_fingerprints.items():
        path = ws.encoding_path(features_name, codebook.clusters, method)
        info[method] = {"path": str(path), "dim": encoding_dim(method, codebook), "fingerprint": fp, "written": False}
        if stored_fingerprint(path) != fp:
            stale[method] = (path, fp)
    if not stale:
        return info
    width = sum(encoding_dim(method, codebook) for method in stale)
    batch = max(1, BATCH_BYTES // (4 * width))
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
        ids = videos["video_id"].tolist()
        for start in range(0, len(ids), batch):
            chunk = [features.sequence(v, layer=layer, view=0) for v in ids[start : start + batch]]
            with threadpool_limits(1):
                encoded = {method: np.stack([ENCODERS[method](d, codebook) for d in chunk]) for method in writers}
            for method, writer in writers.items():
                writer.write_rows(start, encoded[method])
            log.info("encoded %d/%d videos", min(start + batch, len(ids)), len(ids))
    for method in stale:
        info[method]["written"] = True
    return info


def _baseline(
    path: Path,
    plan: EncodePlan,
    encodings: dict[str, dict[str, Any]],
    label_names: dict[int, str],
    options: EncodeOptions,
) -> tuple[dict[str, Any], bool]:
    """Test metrics per method, reused when the stored JSON has the same fingerprint."""
    if _stored_json_fingerprint(path) == plan.baseline_fingerprint:
        return json.loads(path.read_text()), False
    from vpipe.encode.encoding_io import EncodingReader

    results: dict[str, Any] = {}
    for method in plan.baseline_methods:
        entry = encodings[method]
        with EncodingReader(Path(entry["path"])) as reader:
            log.info("baseline %s: %d × %d", method, *reader.shape)
            started = time.perf_counter()
            metrics = run_baseline_file(reader, c=options.svm_c, seed=options.seed, memory_budget=options.memory_budget)
        results[method] = {"dim": entry["dim"], "seconds": round(time.perf_counter() - started, 3), **metrics}
    report = {
        "fingerprint": plan.baseline_fingerprint,
        "classifier": BASELINE_METHOD,
        "label_names": {str(k): v for k, v in sorted(label_names.items())},
        "methods": results,
    }
    atomic_write_text(path, json.dumps(report, indent=2))
    return report, True


def _stored_json_fingerprint(path: Path) -> str:
    if not path.is_file():
        return ""
    try:
        return str(json.loads(path.read_text()).get("fingerprint", ""))
    except (json.JSONDecodeError, AttributeError):
        return ""


def encode_status(
    ws: DatasetWorkspace, features_name: str = "li3d-rgb", clusters: int = 128, options: EncodeOptions = EncodeOptions()
) -> dict[str, bool]:
    """Artifact name (``codebook``, each method, ``baseline`` when there is a test split) ->
    whether :func:`run_encode` with the same options would leave it as it is.

    Reads the manifest and the features index only.
    """
    plan = _plan(ws, index_columns(ws.features_index(features_name).parent), features_name, clusters, options)
    status = {"codebook": stored_fingerprint(ws.codebook_path(features_name, clusters)) == plan.codebook_fingerprint}
    for method, fp in plan.encoding_fingerprints.items():
        status[method] = stored_fingerprint(ws.encoding_path(features_name, clusters, method)) == fp
    if plan.baseline_fingerprint is not None:
        stored = _stored_json_fingerprint(ws.encoding_path(features_name, clusters, "baseline"))
        status["baseline"] = stored == plan.baseline_fingerprint
    return status


def run_encode(
    ws: DatasetWorkspace, features_name: str = "li3d-rgb", clusters: int = 128, options: EncodeOptions = EncodeOptions()
) -> dict[str, Any]:
    """Fit (or reuse) the codebook, encode every video, run the linear baseline; return a summary.

    The baseline trains on the train split and reports on the test split; it is skipped
    (``baseline`` is None) when either split is empty or ``options.baseline`` is False,
    and refused before any work when its train matrix exceeds ``options.memory_budget``;
    with ``baseline="within-budget"`` such methods are left out instead, each with its
    reason in ``baseline_skipped`` and a warning in the log.
    ``seconds`` holds the wall time of each part.
    """
    seconds: dict[str, float] = {}
    with ws.open_features(features_name) as features:
        plan = _plan(ws, index_columns(features.directory), features_name, clusters, options)
        baseline_path = ws.encoding_path(features_name, clusters, "baseline")
        if plan.baseline_fingerprint is not None and _stored_json_fingerprint(baseline_path) != plan.baseline_fingerprint:
            _check_baseline_budget(plan, clusters, options.memory_budget)
        for reason in plan.baseline_skipped.values():
            log.warning(reason)
        started = time.perf_counter()
        codebook, fitted = _codebook(ws, features, features_name, plan, clusters, options)
        seconds["codebook"] = time.perf_counter() - started
        started = time.perf_counter()
        encodings = _encode(ws, features, features_name, codebook, plan, layer=options.layer)
        seconds["encodings"] = time.perf_counter() - started
    videos = plan.videos.to_pandas()
    summary: dict[str, Any] = {
        "dataset": ws.dataset,
        "features": features_name,
        "clusters": clusters,
        "videos": len(videos),
        "videos_without_features": plan.missing,
        "codebook": {
            "path": str(ws.codebook_path(features_name, clusters)),
            "fitted": fitted,
            "pca": codebook.provenance.get("pca"),
            **{
                k: codebook.provenance.get(k)
                for k in ("sample_size", "descriptors_per_centroid", "objective", "device", "train_videos", "fingerprint")
            },
        },
        "encodings": encodings,
        "baseline": None,
        "baseline_skipped": plan.baseline_skipped,
        "seconds": seconds,
    }
    if plan.baseline_fingerprint is not None:
        started = time.perf_counter()
        path = baseline_path
        label_names = dict(zip(videos["label"].astype(int), videos["label_name"]))
        report, written = _baseline(path, plan, encodings, label_names, options)
        summary["baseline"] = {"path": str(path), "written": written, "methods": report["methods"]}
        seconds["baseline"] = time.perf_counter() - started
    summary["seconds"] = {k: round(v, 3) for k, v in seconds.items()}
    return summary
