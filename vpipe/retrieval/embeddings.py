"""What an index holds: one unit vector per video (or clip), from one of three sources.

An embedding is named ``kind:name``:

- ``encodings:<features>-k<K>-<method>``: a classic BoF / VLAD / Fisher vector
  from ``encodings/`` (per video);
- ``features:<set>[:<layer>]``: the cached features of view 0 mean-pooled over time
  (per video, or per clip for clip-level indexes), layer ``pool`` by default;
- ``run:<run_id>``: a trained run's pre-classifier embedding (per video).

Each source gives a cheap fingerprint (from the artifacts' own fingerprints and the
manifest listing, never from reading every vector), so an unchanged index is
recognised without touching the gallery; the gallery itself (vectors and id map);
a query vector for a video of the dataset; and the provenance that a new video
needs to be embedded exactly like the gallery (:mod:`vpipe.retrieval.query_video`).
"""

from __future__ import annotations

import importlib
import json
import re
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from vpipe.artifacts import sha256_file
from vpipe.artifacts.provenance import FeatureProvenance
from vpipe.encode.classic import ENCODERS, METHODS
from vpipe.encode.codebook_io import load_codebook, stored_fingerprint
from vpipe.encode.encoding_io import EncodingReader
from vpipe.errors import ConfigError, StageError
from vpipe.pipeline.fingerprint import fingerprint
from vpipe.pipeline.workspace import DatasetWorkspace
from vpipe.retrieval.faiss_index import normalise
from vpipe.retrieval.query_video import QueryVideo

if TYPE_CHECKING:
    from vpipe.store.reader import FeatureSet

#: Bumped when the same sources would give different vectors.
EMBEDDING_VERSION = 1
KINDS = ("encodings", "features", "run")
#: Rows per piece of :meth:`Embedding.batches`: 4096 × 32k-dim float32 VLADs = 512 MiB at most.
BATCH_ROWS = 4096
#: Columns of an index's id map, one row per indexed vector.
ROW_COLUMNS = ["video_id", "clip", "split", "label", "label_name", "path", "start_s", "end_s"]
_ENCODING_NAME = re.compile(r"^(?P<features>.+)-k(?P<clusters>\d+)-(?P<method>[a-z]+)$")


@dataclass
class Gallery:
    """The vectors to index (unit rows, float32) and their id map (:data:`ROW_COLUMNS`)."""

    vectors: np.ndarray
    rows: pd.DataFrame


def pooled(clip_rows: np.ndarray) -> np.ndarray:
    """Mean over the time axis of one clip's row (``(τ, D)`` -> ``(D,)``); other axes flattened.

    A row that is already one vector (``(D,)``) is its own pool.
    """
    array = np.asarray(clip_rows, dtype=np.float32)
    return array.reshape(-1) if array.ndim == 1 else array.mean(axis=0).reshape(-1)


def video_vector(clips: np.ndarray) -> np.ndarray:
    """Mean of a video's time steps over all its clips (``(clips, τ, D)`` or ``(clips, D)``)."""
    array = np.asarray(clips, dtype=np.float32)
    steps = array if array.ndim <= 2 else array.reshape(-1, *array.shape[2:])
    return steps.mean(axis=0).reshape(-1)


def _listing(rows: pd.DataFrame) -> list[list[Any]]:
    return rows[["video_id", "label", "split", "path"]].astype(str).values.tolist()


def _manifest_rows(ws: DatasetWorkspace, indexes: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """Usable videos (the shared rule) with their paths, clip -1 and no time span."""
    videos, _ = ws.usable_videos(indexes)
    paths = ws.read_manifest().set_index("video_id")["path"]
    rows = videos.assign(clip=-1, path=videos["video_id"].map(paths).astype(str), start_s=np.nan, end_s=np.nan)
    return rows[ROW_COLUMNS]


def _feature_provenance(ws: DatasetWorkspace, features: FeatureSet) -> dict[str, Any]:
    """A feature set's provenance, plus its flow cache's when the backbone reads flow."""
    provenance = dict(features.provenance)
    if "flow" in (provenance.get("inputs") or [provenance.get("stream")]):
        from vpipe.store.reader import FeatureSet

        with FeatureSet.open(ws.flow_dir(str(provenance["plan"]))) as flow:
            provenance["flow"] = flow.provenance
    return provenance


def recorded_features(provenance: dict[str, Any], source: str) -> FeatureProvenance:
    """A feature set's provenance as an index recorded it (see :func:`_feature_provenance`)."""
    return FeatureProvenance.from_dict(provenance, source=f"{source} (recorded feature provenance)")


def unknown_video(ws: DatasetWorkspace, video_id: str, where: str) -> ConfigError:
    return ConfigError(
        f"video id {video_id!r} is not among the usable videos of {where} in dataset {ws.dataset!r}; "
        f"ids look like the manifest's video_id column (`vpipe status --dataset {ws.dataset}`)"
    )


class Embedding(ABC):
    """One embedding source; see the module docstring for the kinds."""

    kind: str

    def __init__(self, name: str) -> None:
        self.name = name

    @property
    def text(self) -> str:
        """The canonical ``kind:name`` spelling, recorded in the index metadata."""
        return f"{self.kind}:{self.name}"

    @property
    def default_index_name(self) -> str:
        return self.name.replace(":", "-")

    @abstractmethod
    def fingerprint(self, ws: DatasetWorkspace) -> str:
        """Changes whenever the gallery's vectors or id map would."""

    @abstractmethod
    def provenance(self, ws: DatasetWorkspace) -> dict[str, Any]:
        """Everything :meth:`embed_file` needs to embed a new video like the gallery."""

    def batches(
        self, ws: DatasetWorkspace, *, clips: bool = False, size: int = BATCH_ROWS, device: str = "auto"
    ) -> Iterator[Gallery]:
        """The gallery in pieces of about ``size`` rows, in id-map order: memory bounded by ``size``."""
        return self._clip_batches(ws, size) if clips else self._video_batches(ws, size, device)

    @abstractmethod
    def _video_batches(self, ws: DatasetWorkspace, size: int, device: str) -> Iterator[Gallery]:
        """:meth:`batches` of one vector per video."""

    def _clip_batches(self, ws: DatasetWorkspace, size: int) -> Iterator[Gallery]:
        """:meth:`batches` of one vector per clip, with the clip's time span."""
        raise ConfigError(f"clip-level indexes need a features: embedding; {self.text} has one vector per video")

    def gallery(self, ws: DatasetWorkspace, *, clips: bool = False, device: str = "auto") -> Gallery:
        """Every usable video's unit vector (or every clip's, with ``clips``)."""
        parts = list(self.batches(ws, clips=clips, device=device))
        if not parts:
            return Gallery(np.zeros((0, 0), np.float32), pd.DataFrame(columns=ROW_COLUMNS))
        return Gallery(np.concatenate([p.vectors for p in parts]), pd.concat([p.rows for p in parts], ignore_index=True))

    @abstractmethod
    def vectors(self, ws: DatasetWorkspace, video_ids: Sequence[str], *, device: str = "auto") -> np.ndarray:
        """Unit vectors of these dataset videos, in order."""

    @abstractmethod
    def embed_file(self, ws: DatasetWorkspace, query: QueryVideo, provenance: dict[str, Any], *, source: str) -> np.ndarray:
        """The unit vector of a new video, made with the recorded ``provenance`` (read from ``source``)."""


class EncodingEmbedding(Embedding):
    kind = "encodings"

    def __init__(self, name: str) -> None:
        super().__init__(name)
        match = _ENCODING_NAME.match(name)
        if not match or match["method"] not in METHODS:
            raise ConfigError(
                f"encodings name {name!r} should be <features>-k<K>-<method> with method one of "
                f"{', '.join(METHODS)}, e.g. encodings:li3d-rgb-k128-vlad"
            )
        self.features, self.clusters, self.method = match["features"], int(match["clusters"]), match["method"]

    def path(self, ws: DatasetWorkspace) -> Path:
        path = ws.encoding_path(self.features, self.clusters, self.method)
        if not path.is_file():
            existing = sorted(p.stem for p in path.parent.glob("*.h5"))
            raise StageError(
                f"no encodings {self.name!r} at {path}: run `vpipe encode --dataset {ws.dataset} "
                f"--features {self.features} --clusters {self.clusters}`"
                + (f"; encodings present: {', '.join(existing)}" if existing else "")
            )
        return path

    def _read(self, ws: DatasetWorkspace) -> tuple[EncodingReader, pd.DataFrame]:
        """The open encodings and their rows joined with the manifest (paths, label names)."""
        reader = EncodingReader(self.path(ws))
        manifest = ws.read_manifest().set_index("video_id")
        video_ids = pd.Series(reader.video_id)
        rows = pd.DataFrame(
            {
                "video_id": video_ids,
                "clip": -1,
                "split": reader.split,
                "label": reader.label,
                "label_name": video_ids.map(manifest["label_name"]).astype(str),
                "path": video_ids.map(manifest["path"]).astype(str),
                "start_s": np.nan,
                "end_s": np.nan,
            }
        )
        return reader, rows

    def fingerprint(self, ws: DatasetWorkspace) -> str:
        reader, rows = self._read(ws)
        with reader:
            return fingerprint(EMBEDDING_VERSION, self.text, stored_fingerprint(self.path(ws)), _listing(rows))

    def provenance(self, ws: DatasetWorkspace) -> dict[str, Any]:
        with EncodingReader(self.path(ws)) as reader:
            encoding = reader.provenance
        with ws.open_features(self.features) as features:
            return {"encoding": encoding, "features": _feature_provenance(ws, features)}

    def _video_batches(self, ws: DatasetWorkspace, size: int, device: str) -> Iterator[Gallery]:
        reader, rows = self._read(ws)
        with reader:
            for start in range(0, len(rows), size):
                stop = min(start + size, len(rows))
                # blocks of one batch: a batch reads its own rows only, not a 64 MiB block around them
                vectors = self._rows(reader, np.arange(start, stop), block_bytes=size * 4 * reader.shape[1])
                yield Gallery(vectors, rows.iloc[start:stop].reset_index(drop=True))

    @staticmethod
    def _rows(reader: EncodingReader, positions: np.ndarray, block_bytes: int | None = None) -> np.ndarray:
        """Unit vectors of rows ``positions`` (in that order), read a block at a time.

        ``block_bytes`` bounds the rows read at once (the reader's default otherwise).
        """
        order = np.argsort(positions, kind="stable")
        vectors = np.zeros((len(positions), reader.shape[1]), dtype=np.float32)
        blocks = reader.blocks(positions[order], **({"block_bytes": block_bytes} if block_bytes else {}))
        for found, block in blocks:
            vectors[order[found]] = normalise(block)
        return vectors

    def vectors(self, ws: DatasetWorkspace, video_ids: Sequence[str], *, device: str = "auto") -> np.ndarray:
        reader, rows = self._read(ws)
        position = dict(zip(rows["video_id"], rows.index))
        with reader:
            missing = [v for v in video_ids if v not in position]
            if missing:
                raise unknown_video(ws, missing[0], self.text)
            return self._rows(reader, np.array([position[v] for v in video_ids], dtype=np.int64))

    def embed_file(self, ws: DatasetWorkspace, query: QueryVideo, provenance: dict[str, Any], *, source: str) -> np.ndarray:
        encoding = provenance["encoding"]
        codebook = load_codebook(ws.codebook_path(self.features, self.clusters))
        if codebook.fingerprint != encoding["codebook_fingerprint"]:
            raise StageError(
                f"codebook {ws.codebook_path(self.features, self.clusters)} was refitted after this index was built; "
                f"rebuild the index: `vpipe index --dataset {ws.dataset} --embedding {self.text}`"
            )
        with query.features(self.features, recorded_features(provenance["features"], source)) as features:
            descriptors = features.sequence(query.video_id, layer=encoding["layer"], view=0)
        return normalise(ENCODERS[self.method](descriptors.astype(np.float32), codebook))


class FeaturesEmbedding(Embedding):
    kind = "features"

    def __init__(self, name: str) -> None:
        features, _, layer = name.partition(":")
        if not features:
            raise ConfigError(f"features embedding {name!r} names no feature set; e.g. features:li3d-rgb")
        self.features, self.layer = features, layer or "pool"
        super().__init__(features if self.layer == "pool" else f"{features}:{self.layer}")

    @property
    def default_index_name(self) -> str:
        return f"{self.features}-{self.layer}-mean"

    def _open(self, ws: DatasetWorkspace) -> FeatureSet:
        features = ws.open_features(self.features)
        if self.layer not in features.layers:
            features.close()
            raise ConfigError(
                f"feature set {self.features!r} has no layer {self.layer!r}; it has {', '.join(features.layers)}: "
                f"use features:{self.features}:<layer>"
            )
        return features

    def fingerprint(self, ws: DatasetWorkspace) -> str:
        with self._open(ws) as features:
            rows = _manifest_rows(ws, [features.index])
            return fingerprint(EMBEDDING_VERSION, self.text, features.index_sha256, _listing(rows))

    def provenance(self, ws: DatasetWorkspace) -> dict[str, Any]:
        with self._open(ws) as features:
            return {"layer": self.layer, "features": _feature_provenance(ws, features)}

    def _video_batches(self, ws: DatasetWorkspace, size: int, device: str) -> Iterator[Gallery]:
        with self._open(ws) as features:
            videos = _manifest_rows(ws, [features.index])
            for start in range(0, len(videos), size):
                part = videos.iloc[start : start + size].reset_index(drop=True)
                stacked = [video_vector(features.clips(v, view=0, layer=self.layer)) for v in part["video_id"]]
                yield Gallery(normalise(np.stack(stacked)), part)

    def _clip_batches(self, ws: DatasetWorkspace, size: int) -> Iterator[Gallery]:
        with self._open(ws) as features:
            videos = _manifest_rows(ws, [features.index])
            spans = self._spans(ws, str(features.provenance.get("plan", "")))
            vectors, rows = [], []
            for video in videos.to_dict("records"):
                for clip, row in enumerate(features.clips(video["video_id"], view=0, layer=self.layer)):
                    start, end = spans.get((video["video_id"], clip), (np.nan, np.nan))
                    rows.append({**video, "clip": clip, "start_s": start, "end_s": end})
                    vectors.append(pooled(row))
                if len(rows) >= size:
                    yield Gallery(normalise(np.stack(vectors)), pd.DataFrame(rows, columns=ROW_COLUMNS))
                    vectors, rows = [], []
            if rows:
                yield Gallery(normalise(np.stack(vectors)), pd.DataFrame(rows, columns=ROW_COLUMNS))

    def _spans(self, ws: DatasetWorkspace, plan: str) -> dict[tuple[str, int], tuple[float, float]]:
        """(video, clip) -> (first frame, last frame + 1) in seconds, from the plan's view 0."""
        path = ws.plan_path(plan)
        if not plan or not path.is_file():
            return {}
        rows = pd.read_parquet(path, columns=["video_id", "clip", "view", "frames"])
        fps = ws.read_manifest().set_index("video_id")["fps"]
        spans = {}
        for row in rows[rows["view"] == 0].itertuples():
            rate = float(fps.get(row.video_id, 0.0)) or np.nan
            spans[(row.video_id, int(row.clip))] = (min(row.frames) / rate, (max(row.frames) + 1) / rate)
        return spans

    def vectors(self, ws: DatasetWorkspace, video_ids: Sequence[str], *, device: str = "auto") -> np.ndarray:
        with self._open(ws) as features:
            known = set(_manifest_rows(ws, [features.index])["video_id"])
            missing = [v for v in video_ids if v not in known]
            if missing:
                raise unknown_video(ws, missing[0], self.text)
            return normalise(np.stack([video_vector(features.clips(v, view=0, layer=self.layer)) for v in video_ids]))

    def embed_file(self, ws: DatasetWorkspace, query: QueryVideo, provenance: dict[str, Any], *, source: str) -> np.ndarray:
        with query.features(self.features, recorded_features(provenance["features"], source)) as features:
            return normalise(video_vector(features.clips(query.video_id, view=0, layer=provenance["layer"])))


class RunEmbedding(Embedding):
    """A trained run's pre-classifier embedding, computed by the training package."""

    kind = "run"

    @property
    def default_index_name(self) -> str:
        return f"run-{self.name}"

    def _config(self, ws: DatasetWorkspace) -> dict[str, Any]:
        path = ws.run_dir(self.name) / "config.json"
        if not path.is_file():
            raise StageError(f"no run {self.name!r} in {ws.runs_dir} (no {path}): train it with `vpipe train` first")
        config = json.loads(path.read_text())
        if not config.get("inputs"):
            raise StageError(f"{path} lists no inputs; the run was trained by an older vpipe: retrain it")
        return config

    def _sets(self, ws: DatasetWorkspace) -> list[str]:
        return sorted({name for entry in self._config(ws)["inputs"] for name in entry["features"]})

    @staticmethod
    def _api() -> ModuleType:
        """The training package's embedding functions, imported only when a run is indexed."""
        try:
            module = importlib.import_module("vpipe.train.evaluation")
        except ImportError as error:
            raise StageError(f"run: embeddings need vpipe.train.evaluation, which cannot be imported: {error}") from None
        if not hasattr(module, "embed_videos") or not hasattr(module, "embed_clip_arrays"):
            raise StageError("run: embeddings need vpipe.train.evaluation.embed_videos, which this version lacks")
        return module

    def _rows(self, ws: DatasetWorkspace) -> tuple[pd.DataFrame, list[str]]:
        shas = []
        indexes = []
        for name in self._sets(ws):
            with ws.open_features(name) as features:
                indexes.append(features.index)
                shas.append(features.index_sha256)
        return _manifest_rows(ws, indexes), shas

    def fingerprint(self, ws: DatasetWorkspace) -> str:
        rows, shas = self._rows(ws)
        checkpoint = ws.run_dir(self.name) / "checkpoint.pt"
        weights = sha256_file(checkpoint) if checkpoint.is_file() else "missing"
        return fingerprint(EMBEDDING_VERSION, self.text, self._config(ws), weights, shas, _listing(rows))

    def provenance(self, ws: DatasetWorkspace) -> dict[str, Any]:
        sets = {}
        for name in self._sets(ws):
            with ws.open_features(name) as features:
                sets[name] = _feature_provenance(ws, features)
        return {"inputs": self._config(ws)["inputs"], "features": sets}

    def _video_batches(self, ws: DatasetWorkspace, size: int, device: str) -> Iterator[Gallery]:
        rows, _ = self._rows(ws)
        for start in range(0, len(rows), size):
            part = rows.iloc[start : start + size].reset_index(drop=True)
            yield Gallery(self._embed(ws, part["video_id"].tolist(), device), part)

    def _embed(self, ws: DatasetWorkspace, video_ids: list[str], device: str) -> np.ndarray:
        return normalise(self._api().embed_videos(ws, self.name, video_ids, device=device))

    def vectors(self, ws: DatasetWorkspace, video_ids: Sequence[str], *, device: str = "auto") -> np.ndarray:
        known = set(self._rows(ws)[0]["video_id"])
        missing = [v for v in video_ids if v not in known]
        if missing:
            raise unknown_video(ws, missing[0], self.text)
        return self._embed(ws, list(video_ids), device)

    def embed_file(self, ws: DatasetWorkspace, query: QueryVideo, provenance: dict[str, Any], *, source: str) -> np.ndarray:
        arrays: dict[str, dict[str, np.ndarray]] = {}
        for entry in provenance["inputs"]:
            for name in entry["features"]:
                with query.features(name, recorded_features(provenance["features"][name], source)) as features:
                    arrays.setdefault(name, {})[entry["layer"]] = features.clips(
                        query.video_id, view=0, layer=entry["layer"]
                    )
        return normalise(self._api().embed_clip_arrays(ws, self.name, arrays, device=query.device))


_KINDS: dict[str, type[Embedding]] = {
    "encodings": EncodingEmbedding,
    "features": FeaturesEmbedding,
    "run": RunEmbedding,
}


def parse_embedding(text: str) -> Embedding:
    """``kind:name`` -> its :class:`Embedding`; a :class:`ConfigError` naming the kinds otherwise."""
    kind, sep, name = text.partition(":")
    if not sep or kind not in _KINDS or not name:
        raise ConfigError(
            f"--embedding {text!r} should be kind:name with kind one of {', '.join(KINDS)}, "
            f"e.g. encodings:li3d-rgb-k128-vlad, features:li3d-rgb or run:<run_id>"
        )
    return _KINDS[kind](name)

