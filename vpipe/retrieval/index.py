"""Building an index over an embedding, and searching it.

:func:`build_index` is the ``vpipe index`` stage: like encode, it is one
whole-dataset job with a fingerprint (of the embedding's fingerprint and the
index-choice rules), skipped when that is unchanged and the stored files are
intact. :class:`Index` is the read side and the Python API::

    from vpipe.retrieval import Index
    index = Index.open("workspace", "ucf101", "li3d-rgb-k128-vlad")
    hits = index.search("ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01", k=10, split="train")
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from vpipe.errors import ConfigError, StageError
from vpipe.pipeline.fingerprint import fingerprint
from vpipe.pipeline.workspace import DatasetWorkspace, resolve_workspace
from vpipe.retrieval import faiss_index, store
from vpipe.retrieval.centring import Centring, score_spread
from vpipe.retrieval.embeddings import Embedding, parse_embedding
from vpipe.retrieval.index_options import IndexOptions
from vpipe.retrieval.query_video import gallery_twin, probe_query, query_video

#: Bumped when the same embedding would give a different index.
#: (2: vectors centred on the gallery mean, optionally whitened, before indexing.)
INDEX_VERSION = "vpipe.index/2"


def _index_fingerprint(embedding_fp: str, options: IndexOptions) -> str:
    rules = (faiss_index.FLAT_MAX, faiss_index.FLAT_BYTES_MAX, faiss_index.TARGET_RECALL)
    return fingerprint(INDEX_VERSION, embedding_fp, options.exact, options.clips, rules, options.centre, options.whiten)


def _state(
    ws: DatasetWorkspace, source: Embedding, options: IndexOptions
) -> tuple[str, dict[str, Any] | None, str, str]:
    """The index name, its stored metadata (None if absent), the embedding's and the index's fingerprints."""
    name = store.check_name(options.name or source.default_index_name + ("-clips" if options.clips else ""))
    stored = store.read_metadata(ws, name)
    if stored is not None and stored["embedding"] != source.text:
        raise ConfigError(
            f"index {name!r} in {ws.index_dir} was built from {stored['embedding']}, not {source.text}; "
            f"choose another --name (nothing was rewritten)"
        )
    embedding_fp = source.fingerprint(ws)
    return name, stored, embedding_fp, _index_fingerprint(embedding_fp, options)


def _intact(ws: DatasetWorkspace, name: str, stored: dict[str, Any] | None, fp: str) -> bool:
    return stored is not None and stored["fingerprint"] == fp and not store.faiss_file_intact(ws, name, stored)


def index_status(ws: DatasetWorkspace, embedding: str, options: IndexOptions = IndexOptions()) -> tuple[str, bool]:
    """The index name and whether :func:`build_index` with these arguments would find nothing to do."""
    name, stored, _, fp = _state(ws, parse_embedding(embedding), options)
    return name, _intact(ws, name, stored, fp)


def build_index(
    ws: DatasetWorkspace, embedding: str, options: IndexOptions = IndexOptions(), *, device: str = "auto"
) -> dict[str, Any]:
    """Index ``embedding``'s gallery under ``options.name``; return the metadata and whether it was written.

    ``options.centre`` subtracts the gallery mean from every vector (and query),
    ``options.whiten`` also PCA-whitens them (:mod:`vpipe.retrieval.centring`); the
    metadata reports the spread of gallery-to-gallery scores before and after. An
    existing index of the same name built from another embedding is never overwritten:
    that is a :class:`ConfigError` asking for another ``--name``.
    """
    source = parse_embedding(embedding)
    gpu = faiss_index.use_gpu(device)
    name, stored, embedding_fp, fp = _state(ws, source, options)
    if _intact(ws, name, stored, fp):
        return {"name": name, "path": str(store.faiss_path(ws, name)), "written": False, **stored}
    gallery = source.gallery(ws, clips=options.clips, device=device)
    if len(gallery.rows) == 0:
        raise StageError(f"{source.text} of dataset {ws.dataset!r} has no usable videos to index")
    count, input_dim = gallery.vectors.shape
    if options.centre or options.whiten:
        centring = Centring.fit(gallery.vectors, whiten=options.whiten)
    else:
        centring = Centring(np.zeros(input_dim, np.float32))
    vectors = centring.apply(gallery.vectors)
    dim = vectors.shape[1]
    plan = faiss_index.plan_index(count, dim, exact=options.exact)
    index, report = faiss_index.build(vectors, plan, gpu=gpu)
    recall = faiss_index.tune_search(index, vectors, plan)
    metadata = {
        "index_version": INDEX_VERSION,
        "name": name,
        "embedding": source.text,
        "embedding_fingerprint": embedding_fp,
        "provenance": source.provenance(ws),
        "level": "clip" if options.clips else "video",
        "metric": "cosine",
        "count": int(count),
        "input_dim": int(input_dim),
        "dim": int(dim),
        "centred": bool(options.centre or options.whiten),
        "whitened": centring.whiten,
        "score_spread": {"raw": score_spread(gallery.vectors), "indexed": score_spread(vectors)},
        "kind": plan.kind,
        "factory": plan.factory(dim),
        "params": plan.params,
        **recall,
        **report,
    }
    store.write_index_files(ws, name, index, gallery.rows, metadata, fp, centring.to_bytes())
    return {"name": name, "path": str(store.faiss_path(ws, name)), "written": True, **store.read_metadata(ws, name)}


@dataclass(frozen=True)
class Hit:
    """One result: a video (``clip`` -1) or a clip with its time span in seconds."""

    rank: int
    score: float
    video_id: str
    clip: int
    label: int
    label_name: str
    split: str
    path: str
    start_s: float | None
    end_s: float | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Index:
    """A built index: its FAISS structure, id map and metadata. Open with :meth:`open`."""

    def __init__(
        self, ws: DatasetWorkspace, name: str, index: Any, rows: pd.DataFrame, metadata: dict[str, Any],
        centring: Centring,
    ) -> None:  # fmt: skip
        self.ws, self.name, self.faiss, self.rows, self.metadata = ws, name, index, rows, metadata
        #: Fitted on the gallery at build time; every query goes through it in :meth:`ranked`.
        self.centring = centring
        self._split = rows["split"].to_numpy().astype(str)
        self._video = rows["video_id"].to_numpy().astype(str)
        self._per_video = int(rows.groupby("video_id").size().max()) if len(rows) else 1

    @classmethod
    def open(
        cls, workspace: str | Path | DatasetWorkspace | None, dataset: str | None = None, name: str = "",
        *, embedding: str | None = None,
    ) -> Index:
        """Open index ``name`` of ``dataset`` in ``workspace`` (a path, or a DatasetWorkspace).

        With ``embedding``, an index built from another embedding is a :class:`ConfigError`.
        """
        ws = workspace if isinstance(workspace, DatasetWorkspace) else DatasetWorkspace(
            resolve_workspace(workspace), str(dataset)
        )
        metadata = store.read_metadata(ws, name)
        if metadata is None:
            present = sorted(p.stem for p in ws.index_dir.glob("*.parquet"))
            raise StageError(
                f"no index {name!r} in {ws.index_dir}: build it with `vpipe index --dataset {ws.dataset} "
                f"--embedding KIND:NAME`" + (f"; indexes present: {', '.join(present)}" if present else "")
            )
        if embedding is not None and parse_embedding(embedding).text != metadata["embedding"]:
            raise ConfigError(
                f"index {name!r} was built from {metadata['embedding']}, not {embedding}; "
                f"open the index built from {embedding} or build one with `vpipe index --embedding {embedding}`"
            )
        if "centring_sha256" not in metadata:
            raise StageError(
                f"index {name!r} was built by an older vpipe without centring; rebuild it: "
                f"`vpipe index --dataset {ws.dataset} --embedding {metadata['embedding']} --name {name}`"
            )
        index = store.read_faiss(ws, name, metadata)
        return cls(ws, name, index, store.read_rows(ws, name), metadata, store.read_centring(ws, name))

    @property
    def embedding(self) -> Embedding:
        return parse_embedding(self.metadata["embedding"])

    @property
    def clip_level(self) -> bool:
        return self.metadata["level"] == "clip"

    def vectors_of(self, video_ids: list[str], *, device: str = "auto") -> np.ndarray:
        """Query vectors of dataset videos, refused when the embedding changed since the build."""
        source = self.embedding
        if source.fingerprint(self.ws) != self.metadata["embedding_fingerprint"]:
            raise StageError(
                f"index {self.name!r} is stale: {source.text} changed since it was built; rebuild it with "
                f"`vpipe index --dataset {self.ws.dataset} --embedding {source.text} --name {self.name}`"
            )
        return source.vectors(self.ws, video_ids, device=device)

    def search(
        self, query: np.ndarray | str, k: int = 10, *, split: str | None = None, clips: bool = False,
        device: str = "auto",
    ) -> list[Hit]:
        """The k nearest videos (or clips) to a vector or to a dataset video, best first.

        A dataset video is not returned as its own neighbour. ``split`` keeps only
        gallery items of that split; ``clips`` returns clip hits (clip-level indexes only).
        """
        if isinstance(query, str):
            vector = self.vectors_of([query], device=device)
            return self.search_vectors(vector, k, split=split, clips=clips, exclude=[query])[0]
        return self.search_vectors(faiss_index.normalise(np.atleast_2d(query)), k, split=split, clips=clips)[0]

    def search_video(
        self, path: str | Path, k: int = 10, *, split: str | None = None, clips: bool = False, device: str = "auto"
    ) -> list[Hit]:
        """Embed a new video file with the index's recorded configuration, then search.

        A file with the bytes of a gallery video is planned as that video was (see
        :mod:`vpipe.retrieval.query_video`), so it finds its own stored vector.
        """
        info = probe_query(path)
        sizes = self.ws.read_manifest()[["video_id", "width", "height"]]
        twin = gallery_twin(self.rows.merge(sizes, on="video_id", how="left"), Path(path).expanduser(), (info.width, info.height))
        with query_video(path, device=device, twin=twin, info=info) as query:
            vector = self.embedding.embed_file(
                self.ws, query, self.metadata["provenance"], source=str(store.idmap_path(self.ws, self.name))
            )
        return self.search_vectors(np.atleast_2d(vector), k, split=split, clips=clips)[0]

    def search_vectors(
        self, queries: np.ndarray, k: int, *, split: str | None = None, clips: bool = False,
        exclude: list[str] | None = None,
    ) -> list[list[Hit]]:
        """Hits for each row of ``queries`` (unit vectors); ``exclude[i]`` is a video left out of row i's."""
        return [
            [self._hit(rank, float(score), int(position), clips) for rank, (position, score) in enumerate(zip(*row), 1)]
            for row in self.ranked(queries, k, split=split, clips=clips, exclude=exclude)
        ]

    def ranked(
        self, queries: np.ndarray, k: int, *, split: str | None = None, clips: bool = False,
        exclude: list[str] | None = None,
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per query, the id-map rows of its k best hits and their scores, best first.

        ``queries`` are unit vectors of the embedding; the index's centring is applied here.

        Video hits from a clip-level index keep each video's best clip: asking FAISS for
        k × (most clips of any video) rows always leaves k distinct videos when there are.
        """
        if k < 1:
            raise ConfigError(f"k must be at least 1, got {k}")
        if clips and not self.clip_level:
            raise ConfigError(
                f"index {self.name!r} holds one vector per video; clip hits need a clip-level index: "
                f"`vpipe index --dataset {self.ws.dataset} --embedding {self.metadata['embedding']} --clips`"
            )
        if queries.shape[1] != self.metadata["input_dim"]:
            raise ConfigError(
                f"query vectors have {queries.shape[1]} dimensions, index {self.name!r} has {self.metadata['input_dim']}"
            )
        queries = self.centring.apply(queries)
        allowed = None
        if split is not None:
            allowed = np.flatnonzero(self._split == split)
            if not len(allowed):
                raise ConfigError(
                    f"index {self.name!r} holds no {split!r} videos; splits present: "
                    f"{', '.join(sorted(set(self._split)))}"
                )
        per_hit = 1 if clips else self._per_video
        fetch = (k + (1 if exclude else 0)) * per_hit
        scores, ids = faiss_index.search(
            self.faiss, queries, fetch, kind=self.metadata["kind"], params=self.metadata["params"], allowed=allowed
        )
        results = []
        for row, (row_scores, row_ids) in enumerate(zip(scores, ids)):
            keep = row_ids >= 0
            if exclude:
                keep &= self._video[np.maximum(row_ids, 0)] != exclude[row]
            row_ids, row_scores = row_ids[keep], row_scores[keep]
            if per_hit > 1:
                first = np.sort(np.unique(self._video[row_ids], return_index=True)[1])
                row_ids, row_scores = row_ids[first], row_scores[first]
            results.append((row_ids[:k], row_scores[:k]))
        return results

    def _hit(self, rank: int, score: float, position: int, clips: bool) -> Hit:
        row = self.rows.iloc[position]
        span = clips and not pd.isna(row["start_s"])
        return Hit(
            rank=rank,
            score=score,
            video_id=str(row["video_id"]),
            clip=int(row["clip"]) if clips else -1,
            label=int(row["label"]),
            label_name=str(row["label_name"]),
            split=str(row["split"]),
            path=str(row["path"]),
            start_s=float(row["start_s"]) if span else None,
            end_s=float(row["end_s"]) if span else None,
        )
