"""What makes two training runs the same, and whether a finished run already is this one.

A run's fingerprint covers the trainer's version, the complete config (less head options
added later at their default: :meth:`TrainConfig.identity`), the content of every feature
set it reads (the SHA-256 of each ``index.parquet``), the data split and
the files its head reads besides (a codebook, a checkpoint). ``train(reuse=True)``
returns a finished run of the same fingerprint instead of training again, which keeps
``vpipe run`` idempotent, and ``vpipe status`` asks the same question.

Nothing here needs torch or h5py: the head's part comes from its declaration
(:mod:`vpipe.head_specs`), and the feature sets' part from their indexes read as Arrow
columns, each once per process (:mod:`vpipe.store.index_columns`). The trainer computes
the fingerprint from the same functions with the feature sets it has open, so the two
agree by construction; a test checks that they do for every head. Unlike training,
status opens no shard, so a run whose inputs would fail the reader's own checks (a
missing layer, sets from different plans) shows as to do, and training names the error.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import replace
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from vpipe.errors import StageError
from vpipe.head_specs import HeadInput, prefixed_files, stream_prefix
from vpipe.pipeline.fingerprint import fingerprint
from vpipe.pipeline.workspace import DatasetWorkspace
from vpipe.store.index import INDEX_FILE
from vpipe.store.index_columns import IndexColumns, index_columns
from vpipe.train import runs
from vpipe.train.config import TrainConfig
from vpipe.train.splits import Splits, assign_splits

if TYPE_CHECKING:
    from vpipe.artifacts.run_record import RunRecord

#: Bumped when training changes what the same config produces (invalidates reuse).
TRAINER_VERSION = "head-trainer/3"


def run_inputs(config: TrainConfig) -> list[HeadInput]:
    """Every cached input the run reads, with the roles its model expects.

    A one-stream head given several feature sets under late fusion reads each set under
    its stream's role prefix (:class:`vpipe.models.heads.fusion.LateFusion`).
    """
    cls, options = config.head_spec, config.head_options
    if config.late_fusion:
        return [
            replace(spec, role=stream_prefix(i) + spec.role)
            for i, name in enumerate(config.features)
            for spec in cls.input_spec((name,), options)
        ]
    return cls.input_spec(config.features, options)


def input_features(config: TrainConfig) -> list[str]:
    """The feature sets the run reads, in the order of its inputs (as the trainer opens them)."""
    return list(dict.fromkeys(name for spec in run_inputs(config) for name in spec.features))


def feature_index(ws: DatasetWorkspace, name: str) -> IndexColumns:
    """``features/<name>``'s index as columns; a :class:`StageError` naming ``vpipe extract`` if absent."""
    return index_columns(ws.features_index(name).parent)


def fitted_codebook(ws: DatasetWorkspace) -> Callable[[str, int], Path | None]:
    """``(features, K) ->`` the workspace's codebook of ``features`` when it was fitted on
    them as they are now, else None.

    A codebook records the index of the features it was fitted on; after a re-extraction
    (new options, a new backbone version) that index differs and the codebook describes
    other vectors, possibly of another size, so a head must not start from it.
    """

    def current(features: str, clusters: int) -> Path | None:
        path = ws.codebook_path(features, clusters)
        if not path.is_file() or not (ws.features_dir(features) / INDEX_FILE).is_file():
            return None
        from vpipe.encode import load_codebook

        recorded = load_codebook(path).provenance.get("features_index_sha256")
        return path if recorded == feature_index(ws, features).sha256 else None

    return current


def run_files(ws: DatasetWorkspace, config: TrainConfig) -> dict[str, Path]:
    """Files outside the feature cache the run reads, as its head declares them."""
    cls, options, codebooks = config.head_spec, config.head_options, fitted_codebook(ws)
    if config.late_fusion:
        return prefixed_files([cls.external_files(options, (name,), codebooks) for name in config.features])
    return cls.external_files(options, config.features, codebooks)


def file_identity(path: Path) -> dict[str, str]:
    return {"path": str(path), "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def require_test_videos(ws: DatasetWorkspace, config: TrainConfig, splits: Splits) -> None:
    """Test metrics need test videos: one error naming the manifest's split column."""
    if not splits.test:
        raise StageError(
            f"dataset {ws.dataset!r} has no test videos with {', '.join(config.features)} features; test metrics "
            f"need them: check the manifest's split column (`vpipe probe --dataset {ws.dataset} --split N`)"
        )


def run_fingerprint(
    config: TrainConfig, index_sha256: dict[str, str], splits: Splits, files: dict[str, dict[str, str]]
) -> str:
    """The fingerprint of a run from its parts (see the module docstring)."""
    # A head at version 1 adds nothing, so runs from before heads had versions keep their fingerprint.
    head_version = config.head_spec.version
    bumped = () if head_version == 1 else ({"head_version": head_version},)
    return fingerprint(TRAINER_VERSION, config.identity(), index_sha256, splits.to_dict(), files, *bumped)


def status_fingerprint(ws: DatasetWorkspace, config: TrainConfig) -> str:
    """The fingerprint ``train(ws, config)`` would give its run, from the indexes as columns."""
    indexes = tuple(feature_index(ws, name) for name in input_features(config))
    files = {key: file_identity(path) for key, path in run_files(ws, config).items()}
    settings = json.dumps([config.identity(), files], sort_keys=True, default=str)
    return _fingerprint(ws, settings, indexes, _state(ws.manifest_path))


@lru_cache(maxsize=16)
def _fingerprint(ws: DatasetWorkspace, settings: str, indexes: tuple[IndexColumns, ...], manifest: tuple[int, int]) -> str:
    """:func:`status_fingerprint` once per config, external files, inputs and manifest
    state: the evaluate step asks again about every run, and at Kinetics size each
    fingerprint hashes the JSON of a 240k-video split."""
    config_dict, files = json.loads(settings)
    config = TrainConfig.from_dict(config_dict)
    splits = _splits(ws, indexes, config.val_fraction, config.seed, manifest)
    require_test_videos(ws, config, splits)
    return run_fingerprint(config, {index.directory.name: index.sha256 for index in indexes}, splits, files)


def _state(path: Path) -> tuple[int, int]:
    stat = path.stat() if path.exists() else None
    return (stat.st_size, stat.st_mtime_ns) if stat else (-1, -1)


@lru_cache(maxsize=16)
def _splits(
    ws: DatasetWorkspace, indexes: tuple[IndexColumns, ...], val_fraction: float, seed: int, manifest: tuple[int, int]
) -> Splits:
    """:func:`assign_splits` once per input sets, options and manifest state: status asks
    again for every run that reads the same sets (the evaluate step for all of them)."""
    return assign_splits(ws, {index.directory.name: index.view0_ids for index in indexes}, val_fraction, seed)


def current_run(ws: DatasetWorkspace, config: TrainConfig, among: Sequence[RunRecord] | None = None) -> RunRecord | None:
    """The completed run ``train(ws, config, reuse=True)`` would return, or None if it would train.

    ``among``: the finished runs, when the caller has read them (:func:`runs.finished_runs`).
    """
    return runs.find_by_fingerprint(ws, status_fingerprint(ws, config), among)
