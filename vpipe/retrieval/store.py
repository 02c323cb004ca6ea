"""Where an index lives and how its two files are committed together.

``index/<name>.faiss`` holds the FAISS index (vector ids are row numbers of the id
map); ``index/<name>.centring.npz`` the gallery mean (and whitening projection) that
every query is transformed with (:mod:`vpipe.retrieval.centring`); ``index/<name>.parquet`` holds the id map (:data:`~vpipe.retrieval.embeddings.ROW_COLUMNS`)
with the index fingerprint and the metadata (embedding, its fingerprint and
provenance, index kind and parameters, expected recall, the FAISS file's size and
SHA-256, and the centring file's) in its schema metadata. All are written under
temporary names; the centring and FAISS files are renamed first and the id map last, so the id map is the commit point: a run
killed between the two renames leaves an id map whose recorded SHA-256 no longer
matches the FAISS file, which every reader checks, and a rerun rebuilds.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq

from vpipe.artifacts import atomic_path, sha256_file
from vpipe.errors import ConfigError, StageError
from vpipe.pipeline.tables import table_fingerprint, table_metadata, write_table
from vpipe.pipeline.workspace import DatasetWorkspace
from vpipe.retrieval.centring import Centring

METADATA_KEY = "index"


def check_name(name: str) -> str:
    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise ConfigError(f"invalid index name {name!r}: use a plain name like 'li3d-rgb-k128-vlad'")
    return name


def faiss_path(ws: DatasetWorkspace, name: str) -> Path:
    return ws.index_dir / f"{check_name(name)}.faiss"


def idmap_path(ws: DatasetWorkspace, name: str) -> Path:
    return ws.index_dir / f"{check_name(name)}.parquet"


def centring_path(ws: DatasetWorkspace, name: str) -> Path:
    return ws.index_dir / f"{check_name(name)}.centring.npz"


def evaluation_path(ws: DatasetWorkspace, name: str) -> Path:
    return ws.index_dir / f"{check_name(name)}-evaluation.json"


def read_metadata(ws: DatasetWorkspace, name: str) -> dict[str, Any] | None:
    """The stored metadata (with ``fingerprint``), or None when no index of that name is committed."""
    path = idmap_path(ws, name)
    if not path.is_file():
        return None
    try:
        text = table_metadata(path, METADATA_KEY)
        fp = table_fingerprint(path)
    except (OSError, ValueError) as error:
        raise StageError(
            f"index id map {path} is damaged ({error}); rerun `vpipe index --dataset {ws.dataset}`"
        ) from None
    if not text:
        raise StageError(f"{path} is not a vpipe index id map; move it away and rerun `vpipe index`")
    return {**json.loads(text), "fingerprint": fp}


def index_files(ws: DatasetWorkspace, name: str) -> list[Path]:
    """Every file of index ``name``: what deleting it must remove."""
    return [faiss_path(ws, name), idmap_path(ws, name), centring_path(ws, name), evaluation_path(ws, name)]


def faiss_file_intact(ws: DatasetWorkspace, name: str, metadata: dict[str, Any]) -> str:
    """"" if the FAISS file is the one the id map recorded, else what is wrong with it."""
    path = faiss_path(ws, name)
    if not path.is_file():
        return f"{path} is missing"
    size = path.stat().st_size
    if size != metadata["faiss_bytes"]:
        return f"{path} is truncated or replaced ({size} bytes, the id map recorded {metadata['faiss_bytes']})"
    if sha256_file(path) != metadata["faiss_sha256"]:
        return f"{path} does not match its id map (SHA-256 differs)"
    centring = centring_path(ws, name)
    if metadata.get("centring_sha256") and (not centring.is_file() or sha256_file(centring) != metadata["centring_sha256"]):
        return f"{centring} is missing or does not match its id map"
    return ""


def write_index_files(
    ws: DatasetWorkspace, name: str, index: Any, rows: pd.DataFrame, metadata: dict[str, Any], fingerprint: str,
    centring: bytes,
) -> None:
    """Commit the centring and FAISS files, then the id map carrying their sizes and SHA-256."""
    import faiss

    centred = centring_path(ws, name)
    with atomic_path(centred) as tmp:
        tmp.write_bytes(centring)
        metadata = {**metadata, "centring_sha256": sha256_file(tmp)}
    with atomic_path(faiss_path(ws, name)) as tmp:
        faiss.write_index(index, str(tmp))
        metadata = {**metadata, "faiss_bytes": tmp.stat().st_size, "faiss_sha256": sha256_file(tmp)}
    write_table(rows, idmap_path(ws, name), fingerprint=fingerprint, metadata={METADATA_KEY: json.dumps(metadata)})


def read_rows(ws: DatasetWorkspace, name: str) -> pd.DataFrame:
    return pq.read_table(idmap_path(ws, name)).to_pandas()


def read_centring(ws: DatasetWorkspace, name: str) -> Centring:
    """The query transform (checked with the FAISS file by :func:`read_faiss`)."""
    return Centring.load(centring_path(ws, name))


def read_faiss(ws: DatasetWorkspace, name: str, metadata: dict[str, Any]) -> Any:
    """The FAISS index, after checking it is intact; one-line :class:`StageError` otherwise."""
    import faiss

    problem = faiss_file_intact(ws, name, metadata)
    if problem:
        raise StageError(f"index {name!r}: {problem}; rebuild it: `vpipe index --dataset {ws.dataset} "
                         f"--embedding {metadata['embedding']} --name {name}`")
    try:
        return faiss.read_index(str(faiss_path(ws, name)))
    except RuntimeError as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else "unreadable"
        raise StageError(f"index {name!r}: {faiss_path(ws, name)} cannot be read ({reason}); rebuild it with "
                         f"`vpipe index --dataset {ws.dataset} --embedding {metadata['embedding']}`") from None
