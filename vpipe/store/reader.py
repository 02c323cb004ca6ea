"""Reading a feature set (or flow cache) back through its index.

Everything needed to locate a clip comes from ``index.parquet``; shards are opened
on demand and each read is one h5py row slice, i.e. one chunk, never a whole file.
A small LRU keeps recently used shards open, because training reads the same few
thousand shards over and over and opening an HDF5 file costs more than a row read.

Open HDF5 handles must not cross process boundaries: h5py handles inherited through
``fork`` (DataLoader workers) share library state with the parent. The reader
therefore drops its handles when pickled or when it finds itself in a new process,
and :meth:`FeatureSet.torch_dataset` gives the dataset its own reader that opens
nothing until the first item is read.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from functools import cache
from pathlib import Path
from typing import Literal

import h5py
import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from vpipe.artifacts import Closing
from vpipe.errors import CorruptArtifactError, StageError
from vpipe.store.index import INDEX_FILE, producing_command, read_index, repair_command
from vpipe.store.shards import SHARD_FORMAT


@cache
def _parse_layers(layers_json: str) -> dict[str, dict[str, object]]:
    """Layer specs of an index row; cached because a shard's rows share one string."""
    return json.loads(layers_json)


class FeatureSet(Closing):
    """Read access to one artifact directory (``features/<backbone>-<stream>/`` or
    ``flow/<plan>/``) through its index.

    Build it with :meth:`open`. ``max_open_files`` bounds the LRU of open shards.
    """

    def __init__(self, directory: Path, index: pd.DataFrame, *, max_open_files: int = 16) -> None:
        self.directory = Path(directory)
        self.index = index
        self.max_open_files = max_open_files
        self._groups = {
            (video_id, int(view)): positions
            for (video_id, view), positions in index.groupby(["video_id", "view"], sort=False).indices.items()
        }
        self._views: dict[str, list[int]] = {}
        for video_id, view in sorted(self._groups):
            self._views.setdefault(video_id, []).append(view)
        self._clip = index["clip"].to_numpy()
        self._shard = index["shard"].to_numpy()
        self._row = index["row"].to_numpy()
        self._layers_json = index["layers"].to_numpy()
        layer_sets = {tuple(_parse_layers(s)) for s in index["layers"].unique()}
        if len(layer_sets) > 1:
            raise StageError(
                f"{self.directory} mixes shards with different layers {sorted(layer_sets)}; "
                f"it holds outputs of different configurations: delete it and run "
                f"`{producing_command(self.directory)}` again"
            )
        self.layers: list[str] = list(layer_sets.pop()) if layer_sets else []
        self._files: OrderedDict[str, h5py.File] = OrderedDict()
        self._pid = os.getpid()

    @classmethod
    def open(cls, directory: Path, *, max_open_files: int = 16) -> FeatureSet:
        """Open the artifact at ``directory``; :class:`StageError` if it has no index."""
        return cls(directory, read_index(directory), max_open_files=max_open_files)

    def close(self) -> None:
        """Close every open shard; later reads reopen them."""
        while self._files:
            self._files.popitem(last=False)[1].close()

    def __getstate__(self) -> dict[str, object]:
        state = self.__dict__.copy()
        state["_files"] = OrderedDict()
        return state

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state)
        self._pid = os.getpid()

    def _file(self, shard: str) -> h5py.File:
        if self._pid != os.getpid():
            self._files = OrderedDict()
            self._pid = os.getpid()
        handle = self._files.get(shard)
        if handle is not None:
            self._files.move_to_end(shard)
            return handle
        path = self.directory / shard
        if not path.is_file():
            raise StageError(
                f"shard {path} listed in {self.directory / 'index.parquet'} is missing; "
                f"run `{producing_command(self.directory)}` to rebuild it"
            )
        try:
            handle = h5py.File(path, "r")
        except OSError as error:
            raise self.corrupt(shard, f"cannot be opened ({error})") from error
        if handle.attrs.get("format") != SHARD_FORMAT:
            handle.close()
            raise StageError(f"{path} is not a {SHARD_FORMAT} shard; delete it and rerun the stage")
        self._files[shard] = handle
        if len(self._files) > self.max_open_files:
            self._files.popitem(last=False)[1].close()
        return handle

    def _read(self, position: int, layer: str) -> np.ndarray:
        """One clip's array for ``layer``, read as a single row slice."""
        spec = _parse_layers(self._layers_json[position])[layer]
        dset = self._file(self._shard[position])[spec["dataset"]]
        if list(dset.shape[1:]) != spec["shape"] or dset.dtype.name != spec["dtype"]:
            raise StageError(
                f"{self.directory / self._shard[position]}: layer {layer!r} is "
                f"{dset.dtype}{list(dset.shape[1:])} but the index says "
                f"{spec['dtype']}{spec['shape']}; the shard was rewritten after the index: "
                f"rerun `{producing_command(self.directory)}`"
            )
        try:
            array = dset[int(self._row[position])]
        except OSError as error:
            raise self.corrupt(self._shard[position], f"fails its checksum ({error})") from error
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise self.corrupt(self._shard[position], f"holds non-finite values in layer {layer!r}")
        return array

    def corrupt(self, shard: str, reason: str) -> CorruptArtifactError:
        """The one error for a damaged shard: which file, which videos, what repairs it."""
        videos = list(dict.fromkeys(self.index.loc[self.index["shard"] == shard, "video_id"]))
        shown = ", ".join(videos[:5]) + (f" and {len(videos) - 5} more" if len(videos) > 5 else "")
        return CorruptArtifactError(
            f"{self.directory / shard} {reason}; it holds videos {shown or '(none)'}: "
            f"run `{repair_command(self.directory)}` to recompute them"
        )

    def _check_layer(self, layer: str) -> None:
        if layer not in self.layers:
            raise StageError(f"{self.directory} has no layer {layer!r}; it has {self.layers}")

    @property
    def provenance(self) -> dict[str, object]:
        """How the artifact was made (backbone, weights, sampler, ...), from its first shard.

        Every shard carries the provenance of its task; a stage's fingerprint check
        keeps them equal within one directory, so the first one speaks for all.
        """
        if self.index.empty:
            return {}
        return json.loads(self._file(self._shard[0]).attrs["provenance"])

    @property
    def index_sha256(self) -> str:
        """Content hash of ``index.parquet``: changes whenever any clip is re-extracted."""
        return hashlib.sha256((self.directory / INDEX_FILE).read_bytes()).hexdigest()

    def video_ids(self) -> list[str]:
        """Every video with at least one clip, in index order."""
        return list(dict.fromkeys(self.index["video_id"]))

    def views(self, video_id: str) -> list[int]:
        """The cached views of ``video_id`` (0 is the test-time view)."""
        return list(self._views.get(video_id, []))

    def _positions(self, video_id: str, view: int) -> np.ndarray:
        """Index positions of a video's clips in one view, in clip order."""
        positions = self._groups.get((video_id, int(view)))
        if positions is None:
            raise StageError(
                f"video {video_id!r} view {view} is not in {self.directory}; it may have "
                f"failed (see failures.parquet) or not been extracted yet: run "
                f"`{producing_command(self.directory)}`"
            )
        return positions[np.argsort(self._clip[positions], kind="stable")]

    def clip_count(self, video_id: str, view: int = 0) -> int:
        """How many clips of ``video_id`` the view holds (0 when it is not cached)."""
        positions = self._groups.get((video_id, int(view)))
        return 0 if positions is None else len(positions)

    def clips(
        self, video_id: str, *, view: int = 0, layer: str | None = None
    ) -> dict[str, np.ndarray] | np.ndarray:
        """All clips of a video in clip order, stacked on a new first axis.

        Returns one array ``(clips, *shape)`` for ``layer``, or a dict of them for
        every layer when ``layer`` is None.
        """
        positions = self._positions(video_id, view)
        if layer is not None:
            self._check_layer(layer)
            return np.stack([self._read(p, layer) for p in positions])
        return {name: np.stack([self._read(p, name) for p in positions]) for name in self.layers}

    def sequence(self, video_id: str, layer: str = "pool", view: int = 0) -> np.ndarray:
        """A video's clips concatenated along time, e.g. ``(clips·τ, D)`` for a BiLSTM.

        A layer whose clip rows are 1-D vectors (one per clip) counts as one time step
        per clip and gives ``(clips, D)``.
        """
        stacked = self.clips(video_id, view=view, layer=layer)
        if stacked.ndim <= 2:
            return stacked
        return stacked.reshape(-1, *stacked.shape[2:])

    def __iter__(self) -> Iterator[tuple[str, int, int, dict[str, np.ndarray]]]:
        """Every clip as ``(video_id, clip, view, arrays)``, read one at a time."""
        for position, (video_id, clip, view) in enumerate(
            zip(self.index["video_id"], self._clip, self.index["view"])
        ):
            yield video_id, int(clip), int(view), {name: self._read(position, name) for name in self.layers}

    def torch_dataset(
        self,
        layer: str = "pool",
        video_ids: Sequence[str] | None = None,
        views: Literal["all"] | int = "all",
        labels: dict[str, int] | None = None,
    ) -> SequenceDataset:
        """A map-style dataset of ``(float32 sequence, label)``, one item per video and view.

        With ``views="all"`` every cached view of a video is an item of its own, so
        augmented views act as augmentation; an int keeps only that view. Without
        ``labels`` every label is -1. Videos default to all videos in the index.
        """
        self._check_layer(layer)
        wanted = self.video_ids() if video_ids is None else list(video_ids)
        items = [
            (vid, view)
            for vid in wanted
            for view in self.views(vid)
            if views == "all" or view == views
        ]
        if video_ids is not None:
            covered = {vid for vid, _ in items}
            missing = [vid for vid in wanted if vid not in covered]
            if missing:
                raise StageError(
                    f"{len(missing)} requested videos (first {missing[0]!r}) have no view "
                    f"{views} in {self.directory}; run `{producing_command(self.directory)}`"
                )
        if labels is not None:
            unlabelled = [vid for vid, _ in items if vid not in labels]
            if unlabelled:
                raise StageError(f"no label for video {unlabelled[0]!r} of {self.directory}")
        reader = FeatureSet(self.directory, self.index, max_open_files=self.max_open_files)
        return SequenceDataset(reader, layer, items, labels)


class SequenceDataset(Dataset):
    """Per-(video, view) feature sequences; see :meth:`FeatureSet.torch_dataset`."""

    def __init__(
        self,
        reader: FeatureSet,
        layer: str,
        items: list[tuple[str, int]],
        labels: dict[str, int] | None,
    ) -> None:
        self.reader = reader
        self.layer = layer
        self.items = items
        self.labels = labels

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        video_id, view = self.items[i]
        sequence = self.reader.sequence(video_id, layer=self.layer, view=view)
        label = -1 if self.labels is None else int(self.labels[video_id])
        return torch.from_numpy(sequence.astype(np.float32)), label


def collate_padded(
    batch: Sequence[tuple[torch.Tensor, int]],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Batch variable-length sequences: ``(padded, lengths, labels)``.

    ``padded`` is ``(B, max_len, *feature)`` with zeros after each sequence's end,
    ``lengths`` the true lengths (ready for ``pack_padded_sequence(...,
    enforce_sorted=False)``), ``labels`` a long tensor. Batch order is kept.
    """
    sequences = [sequence for sequence, _ in batch]
    lengths = torch.tensor([len(s) for s in sequences], dtype=torch.long)
    padded = torch.nn.utils.rnn.pad_sequence(sequences, batch_first=True, padding_value=0.0)
    labels = torch.tensor([label for _, label in batch], dtype=torch.long)
    return padded, lengths, labels
