"""``vpipe verify``: check every stored artifact of a dataset, and mark damaged work stale.

What is checked, per kind of file:

* flow and feature shards: present, the size and SHA-256 recorded in their index, and,
  for shards with no recorded digest (written before digests were recorded), a full
  read of every layer through HDF5 (Fletcher-32 checksums where present) with floats
  required finite. A matching digest proves the bytes are those written, and writers
  refuse non-finite values, so the full read is skipped then: verify runs at hashing
  speed.
* codebooks and encodings (HDF5): the SHA-256 in their ``.sha256`` file when there is
  one, else a full read with floats required finite.
* training runs (completed ones): the checkpoint against the ``.sha256`` taken when the
  run finished; a checkpoint without one (older runs) must be an intact archive (every
  member's CRC-32, read without torch).
* retrieval indexes: the FAISS and centring files against the sizes and SHA-256 their
  id map recorded.
* Parquet tables (manifest, plans, indexes, journals, failures): fully readable.

Reading is streamed in bounded blocks, so memory stays flat whatever the cache size.

``repair`` makes the next ``vpipe run`` recompute exactly what is damaged: for a shard,
the journal records of the videos it holds are dropped (so those videos, and only
those, become work again), its rows leave the index and the file is deleted; a damaged
codebook or encoding is deleted, which makes its fingerprint stale; a run whose
checkpoint is damaged is deleted whole, so the next run retrains it under the same id
(training is deterministic, so the same weights and metrics come back); a damaged
retrieval index loses all its files and is rebuilt. What depends on
recomputed work (encodings of changed features, runs on a changed index) follows from
the fingerprints of the stages after it.
"""

from __future__ import annotations

import logging
import shutil
import time
import zipfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from vpipe.artifacts import FileDigest, digest_file_path, read_digest_file, sha256_file
from vpipe.errors import StageError
from vpipe.pipeline.journal import Journal
from vpipe.pipeline.workspace import DatasetWorkspace
from vpipe.retrieval.store import faiss_file_intact, index_files, read_metadata
from vpipe.stages.extract import ExtractStage
from vpipe.stages.flow import FlowStage
from vpipe.stages.planned_videos import missing_shards
from vpipe.store.index import INDEX_FILE, SHARD_BYTES, SHARD_SHA256, read_index, read_shard_digests, write_index
from vpipe.train.runs import CHECKPOINT_FILE, completed_runs

log = logging.getLogger(__name__)

#: What ``--stage`` may narrow verification to.
KINDS = ("flow", "extract", "encode", "train", "index", "tables")

#: Elements read per block when a dataset is read in full: bounds memory for any layer.
_BLOCK_ELEMENTS = 1 << 24


@dataclass(frozen=True)
class Problem:
    """One damaged or missing file, and the work items it costs."""

    path: str
    kind: str
    detail: str
    videos: tuple[str, ...] = ()
    #: Journal directory name (under ``.state``) whose records cover ``videos``.
    journal: str = ""
    #: Files or folders that repair deletes so that the next run rebuilds them.
    remove: tuple[str, ...] = ()

    def line(self) -> str:
        """One line for the terminal: the file, what is wrong, the videos affected."""
        videos = ""
        if self.videos:
            shown = ", ".join(self.videos[:10])
            more = f" and {len(self.videos) - 10} more" if len(self.videos) > 10 else ""
            videos = f"; videos: {shown}{more}"
        return f"{self.kind}: {self.path}: {self.detail}{videos}"


@dataclass
class VerifyReport:
    """What :func:`verify` looked at and what it found."""

    files: int = 0
    bytes: int = 0
    seconds: float = 0.0
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, object]:
        """The verdict first, then every field; ``vpipe verify --json`` prints it."""
        return {"ok": self.ok, **asdict(self)}


def verify(workspace: DatasetWorkspace, kinds: tuple[str, ...] = KINDS) -> VerifyReport:
    """Check every artifact of ``kinds`` in ``workspace``; never raises for a bad file."""
    report = VerifyReport()
    started = last_log = time.perf_counter()
    for check in _checks(workspace, kinds):
        problem, size = check()
        report.files += 1
        report.bytes += size
        if problem is not None:
            log.info("verify: %s", problem.line())
            report.problems.append(problem)
        if time.perf_counter() - last_log >= 10.0:
            last_log = time.perf_counter()
            log.info("verify: %d files, %.1f GB checked, %d problems", report.files, report.bytes / 1e9,
                     len(report.problems))  # fmt: skip
    report.seconds = time.perf_counter() - started
    return report


def _checks(workspace: DatasetWorkspace, kinds: tuple[str, ...]) -> Iterator:
    """One callable per file to check, returning ``(problem or None, bytes read)``."""
    if "flow" in kinds:
        for directory in _artifact_dirs(workspace.dir / "flow"):
            yield from _shard_checks(directory, FlowStage.journal_of(directory.name))
        yield from _unindexed_checks(workspace, FlowStage.journal_of(""), workspace.dir / "flow")
    if "extract" in kinds:
        for directory in _artifact_dirs(workspace.dir / "features"):
            yield from _shard_checks(directory, ExtractStage.journal_of(directory.name))
        yield from _unindexed_checks(workspace, ExtractStage.journal_of(""), workspace.dir / "features")
    if "encode" in kinds:
        for folder in ("codebooks", "encodings"):
            for path in sorted((workspace.dir / folder).glob("*.h5")):
                yield lambda path=path: _check_hdf5_file(path)
    if "train" in kinds:
        for run_id in completed_runs(workspace):
            yield lambda run_id=run_id: _check_run(workspace.runs_dir / run_id)
    if "index" in kinds and workspace.index_dir.is_dir():
        for idmap in sorted(workspace.index_dir.glob("*.parquet")):
            yield lambda name=idmap.stem: _check_index(workspace, name)
    if "tables" in kinds:
        for path in sorted(workspace.dir.rglob("*.parquet")):
            yield lambda path=path: _check_table(path)


def _artifact_dirs(parent: Path) -> list[Path]:
    return sorted(p for p in parent.glob("*") if (p / INDEX_FILE).is_file()) if parent.is_dir() else []


def _shard_checks(directory: Path, journal: str) -> Iterator:
    try:
        index = read_index(directory)
        digests = read_shard_digests(directory)
    except Exception as error:  # a damaged index is reported by the table check
        log.debug("verify: cannot read %s: %s", directory / INDEX_FILE, error)
        return
    for shard, videos in index.groupby("shard", sort=True)["video_id"]:
        path = directory / str(shard)
        affected = tuple(dict.fromkeys(videos))
        yield lambda path=path, affected=affected: _check_shard(path, digests.get(path.name), affected, journal)


def _unindexed_checks(workspace: DatasetWorkspace, prefix: str, parent: Path) -> Iterator:
    """Journals whose artifact has no index (deleted, or a run stopped before writing it):
    a recorded shard that is gone is missing work, which only the journal can name."""
    for journal_dir in sorted(workspace.state_dir.glob(f"{prefix}*")):
        directory = parent / journal_dir.name[len(prefix) :]
        if (directory / INDEX_FILE).is_file():
            continue
        missing = missing_shards(directory, Journal(journal_dir).load())
        for shard, videos in sorted(missing.items()):
            problem = Problem(str(directory / shard), "missing", "recorded as written but absent (no index either)",
                              tuple(videos), journal_dir.name)  # fmt: skip
            yield lambda problem=problem: (problem, 0)


def _check_shard(path: Path, digest: FileDigest | None, videos: tuple[str, ...], journal: str) -> tuple[Problem | None, int]:
    def problem(kind: str, detail: str) -> Problem:
        return Problem(str(path), kind, detail, videos, journal)

    if not path.is_file():
        return problem("missing", "listed in the index but absent"), 0
    size = path.stat().st_size
    if digest is not None:
        if size != digest.bytes:
            return problem("corrupt", f"{size} bytes, {digest.bytes} when written (truncated or replaced)"), 0
        if sha256_file(path) != digest.sha256:
            return problem("corrupt", "SHA-256 differs from the one recorded when written"), size
        return None, size
    detail = _read_hdf5(path)
    return (problem("corrupt", detail) if detail else None), size


def _check_hdf5_file(path: Path) -> tuple[Problem | None, int]:
    size = path.stat().st_size
    remove = (str(path), str(digest_file_path(path)))
    recorded = read_digest_file(path)
    if recorded is not None:
        if recorded != sha256_file(path):
            return Problem(str(path), "corrupt", "SHA-256 differs from its .sha256 file", remove=remove), size
        return None, size
    detail = _read_hdf5(path)
    return (Problem(str(path), "corrupt", detail, remove=remove) if detail else None), size


def _check_run(directory: Path) -> tuple[Problem | None, int]:
    """A completed run's checkpoint: its recorded digest, else an intact zip archive."""
    path = directory / CHECKPOINT_FILE

    def problem(kind: str, detail: str) -> Problem:
        return Problem(str(path), kind, f"run {directory.name}: {detail}", remove=(str(directory),))

    if not path.is_file():
        return problem("missing", "the run finished but its checkpoint is absent"), 0
    size = path.stat().st_size
    recorded = read_digest_file(path)
    if recorded is not None:
        if recorded != sha256_file(path):
            return problem("corrupt", "SHA-256 differs from the one taken when the run finished"), size
        return None, size
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError) as error:
        return problem("corrupt", f"not a readable checkpoint archive ({error})"), size
    return (problem("corrupt", f"archive member {bad} fails its CRC-32") if bad else None), size


def _check_index(workspace: DatasetWorkspace, name: str) -> tuple[Problem | None, int]:
    """A retrieval index's FAISS and centring files against its id map's record."""
    files = index_files(workspace, name)
    remove = tuple(str(path) for path in files)
    size = sum(path.stat().st_size for path in files if path.is_file())
    try:
        metadata = read_metadata(workspace, name)
    except StageError as error:
        return Problem(str(files[1]), "corrupt", str(error), remove=remove), size
    if metadata is None or "faiss_sha256" not in metadata:
        return None, 0
    detail = faiss_file_intact(workspace, name, metadata)
    if not detail:
        return None, size
    # The detail names the file at fault (the FAISS file or the centring transform).
    faiss_file, _, centring, _ = files
    damaged = next((path for path in (faiss_file, centring) if str(path) in detail), faiss_file)
    kind = "corrupt" if damaged.is_file() else "missing"
    return Problem(str(damaged), kind, f"index {name}: {detail}", remove=remove), size


def _read_hdf5(path: Path) -> str:
    """Read every dataset of an HDF5 file in bounded blocks; "" if all is well, else why not."""
    try:
        with h5py.File(path, "r") as handle:
            datasets: list[h5py.Dataset] = []
            handle.visititems(lambda _, obj: datasets.append(obj) if isinstance(obj, h5py.Dataset) else None)
            for dset in datasets:
                if dset.shape == () or dset.size == 0:
                    continue
                per_row = max(1, int(np.prod(dset.shape[1:])))
                step = max(1, _BLOCK_ELEMENTS // per_row)
                for start in range(0, dset.shape[0], step):
                    block = dset[start : start + step]
                    if block.dtype.kind == "f" and not np.isfinite(block).all():
                        return f"dataset {dset.name} holds non-finite values"
    except (OSError, KeyError, ValueError, RuntimeError) as error:
        return f"unreadable HDF5 ({error})"
    return ""


def _check_table(path: Path) -> tuple[Problem | None, int]:
    size = path.stat().st_size
    try:
        parquet = pq.ParquetFile(path)
        for group in range(parquet.num_row_groups):
            parquet.read_row_group(group)
    except Exception as error:  # pyarrow raises several types for damaged files
        return Problem(str(path), "corrupt", f"unreadable Parquet table ({error})"), size
    return None, size


def repair(workspace: DatasetWorkspace, problems: list[Problem]) -> dict[str, int]:
    """Mark exactly the damaged work stale; returns counts of what was marked.

    Shards: drop the journal records of the videos they hold and their index rows,
    delete the file. Other artifacts (codebooks, encodings, runs, retrieval indexes):
    delete what the problem lists, which their stages rebuild. A damaged Parquet table is
    reported but not touched: a journal part or index is rebuilt by rerunning its stage
    after deleting it, which verify leaves to the user.
    """
    counts = {"videos": 0, "files": 0}
    by_directory: dict[Path, list[Problem]] = {}
    for problem in problems:
        path = Path(problem.path)
        if problem.journal:
            by_directory.setdefault(path.parent, []).append(problem)
        elif problem.remove:
            for target in map(Path, problem.remove):
                if target.is_dir():
                    shutil.rmtree(target)
                else:
                    target.unlink(missing_ok=True)
            counts["files"] += 1
            log.info("verify: deleted %s; the next run rebuilds it", ", ".join(problem.remove))
    for directory, damaged in by_directory.items():
        shards = {Path(p.path).name for p in damaged}
        journal = Journal(workspace.state_dir / damaged[0].journal)
        records = journal.load()
        stale = {
            key for key, record in records.items()
            if any(str(row.get("shard")) in shards for row in record.rows)
        } | {video for p in damaged for video in p.videos}  # fmt: skip
        journal.compact({key: record for key, record in records.items() if key not in stale})
        if (directory / INDEX_FILE).is_file():
            _drop_index_rows(directory, shards)
        for shard in shards:
            (directory / shard).unlink(missing_ok=True)
        counts["videos"] += len(stale)
        counts["files"] += len(shards)
        log.info("verify: %d videos of %s marked stale", len(stale), directory)
    return counts


def _drop_index_rows(directory: Path, shards: set[str]) -> None:
    """Rewrite the index without the rows of ``shards``, keeping the others' digests."""
    index = read_index(directory)
    digests = read_shard_digests(directory)
    kept = index[~index["shard"].isin(shards)].copy()
    kept[SHARD_BYTES] = kept["shard"].map(lambda s: digests[s].bytes if s in digests else None)
    kept[SHARD_SHA256] = kept["shard"].map(lambda s: digests[s].sha256 if s in digests else None)
    write_index(directory, pd.DataFrame(kept))
