"""Where artifacts live.

One directory per dataset under the workspace root; every stage reads and writes
only through these paths, so moving a workspace (``--workspace`` or
``VPIPE_WORKSPACE``) moves everything and nothing else needs configuring.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from vpipe.artifacts.records import DatasetConfig
from vpipe.artifacts.rows import ManifestRow, read_rows
from vpipe.errors import ConfigError, StageError
from vpipe.store.index import INDEX_FILE

if TYPE_CHECKING:
    import pandas as pd

    from vpipe.store.reader import FeatureSet

WORKSPACE_ENV = "VPIPE_WORKSPACE"


def resolve_workspace(path: str | Path | None = None) -> Path:
    """The explicit path, else ``$VPIPE_WORKSPACE``, else ``./workspace``."""
    chosen = path or os.environ.get(WORKSPACE_ENV) or "workspace"
    return Path(chosen).expanduser().resolve()


@dataclass(frozen=True)
class DatasetWorkspace:
    """The artifact paths of one dataset inside a workspace."""

    root: Path
    dataset: str

    def __post_init__(self) -> None:
        if not self.dataset or "/" in self.dataset or self.dataset.startswith("."):
            raise ConfigError(f"invalid dataset name {self.dataset!r}: use a plain name like 'ucf101'")

    @property
    def dir(self) -> Path:
        return self.root / self.dataset

    @property
    def config_path(self) -> Path:
        return self.dir / "dataset.json"

    @property
    def manifest_path(self) -> Path:
        return self.dir / "manifest.parquet"

    @property
    def failures_path(self) -> Path:
        return self.dir / "failures.parquet"

    @property
    def state_dir(self) -> Path:
        """Per-stage journals: the record of which items are done, used to resume."""
        return self.dir / ".state"

    def plan_path(self, name: str) -> Path:
        return self.dir / "plans" / f"{name}.parquet"

    def flow_dir(self, plan: str) -> Path:
        return self.dir / "flow" / plan

    def features_dir(self, name: str) -> Path:
        return self.dir / "features" / name

    def features_index(self, name: str) -> Path:
        """``features/<name>/index.parquet``; a :class:`StageError` naming ``vpipe extract`` if absent."""
        directory = self.features_dir(name)
        if not (directory / INDEX_FILE).is_file():
            available = sorted(p.name for p in directory.parent.glob("*") if (p / INDEX_FILE).is_file())
            raise StageError(
                f"features {name!r} of dataset {self.dataset!r} are not extracted (no {directory / INDEX_FILE}): "
                f"run `vpipe extract --dataset {self.dataset}` first"
                + (f"; extracted feature sets: {', '.join(available)}" if available else "")
            )
        return directory / INDEX_FILE

    def open_features(self, name: str, *, max_open_files: int = 16) -> FeatureSet:
        """The feature set ``features/<name>``; a :class:`StageError` naming ``vpipe extract`` if absent."""
        directory = self.features_index(name).parent
        from vpipe.store.reader import FeatureSet  # torch: only for callers that read features

        return FeatureSet.open(directory, max_open_files=max_open_files)

    def codebook_path(self, features: str, clusters: int) -> Path:
        return self.dir / "codebooks" / f"{features}-k{clusters}.h5"

    def encoding_path(self, features: str, clusters: int, method: str) -> Path:
        """``method`` is an encoding (bof, vlad, fv) or ``baseline`` (its JSON results)."""
        suffix = "json" if method == "baseline" else "h5"
        return self.dir / "encodings" / f"{features}-k{clusters}-{method}.{suffix}"

    @property
    def runs_dir(self) -> Path:
        return self.dir / "runs"

    def run_dir(self, run_id: str) -> Path:
        return self.runs_dir / run_id

    @property
    def index_dir(self) -> Path:
        """Retrieval indexes: ``<name>.faiss``, its id map ``<name>.parquet``, evaluations."""
        return self.dir / "index"

    @property
    def report_path(self) -> Path:
        return self.dir / "report.md"

    def read_manifest(self) -> pd.DataFrame:
        """The probe's manifest; a :class:`StageError` naming ``vpipe probe`` when absent."""
        if not self.manifest_path.exists():
            raise StageError(f"no manifest at {self.manifest_path}: run `vpipe probe --dataset {self.dataset}` first")
        return read_rows(self.manifest_path, ManifestRow, fix=f"run `vpipe probe --dataset {self.dataset}` again")

    def read_manifest_columns(self, columns: list[str]) -> pa.Table:
        """Some of the manifest's columns as Arrow, for work over every video at once (the
        stages' item fingerprints); the same :class:`StageError` as :meth:`read_manifest`."""
        if not self.manifest_path.exists():
            raise StageError(f"no manifest at {self.manifest_path}: run `vpipe probe --dataset {self.dataset}` first")
        return pq.read_table(self.manifest_path, columns=columns)

    def usable_videos(self, indexes: Iterable[pd.DataFrame]) -> tuple[pd.DataFrame, int]:
        """Manifest rows that probed ``ok`` and have view 0 in every one of ``indexes``.

        This is the one rule by which encode, training and retrieval choose videos: a
        video whose probe failed, or that lacks test-time (view 0) features in any input,
        takes no part. Returns the rows (``video_id``, ``label``, ``label_name``,
        ``split``) and how many ``ok`` videos were left out.
        """
        import pandas as pd

        manifest = self.read_manifest()
        ok = manifest[manifest["status"] == "ok"]
        present = pd.Series(True, index=ok.index)
        for index in indexes:
            present &= ok["video_id"].isin(set(index.loc[index["view"] == 0, "video_id"]))
        rows = ok.loc[present, ["video_id", "label", "label_name", "split"]].reset_index(drop=True)
        return rows, int((~present).sum())

    def usable_video_columns(self, view0: Iterable[Iterable[str]]) -> tuple[pa.Table, int]:
        """:meth:`usable_videos` as Arrow columns: ``view0`` holds, per input, the ids of the
        videos with view 0 in it. For status and run identities, which need no DataFrame."""
        manifest = self.read_manifest_columns(["video_id", "label", "label_name", "split", "status"])
        ok = manifest.filter(pc.equal(manifest["status"], "ok"))
        present = pa.array([True] * ok.num_rows, pa.bool_())
        for ids in view0:
            present = pc.and_(present, pc.is_in(ok["video_id"], value_set=pa.array(list(ids), pa.string())))
        rows = ok.filter(present).select(["video_id", "label", "label_name", "split"])
        return rows, ok.num_rows - rows.num_rows

    def read_config(self) -> DatasetConfig:
        """The dataset options recorded by the last probe (adapter, root, split)."""
        if not self.config_path.exists():
            raise StageError(
                f"dataset {self.dataset!r} has not been probed in {self.root}: "
                f"run `vpipe probe --dataset {self.dataset} --root PATH` first"
            )
        return DatasetConfig.from_file(self.config_path)

    def write_config(self, config: DatasetConfig) -> None:
        config.to_file(self.config_path)
