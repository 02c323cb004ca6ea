"""How a run's inputs reach the head; which videos take part is :mod:`vpipe.train.splits`.

Training reads every cached view of a fit video (augmented crops and flips act as
augmentation); validation and test read view 0, the centre view, as at test time.

What stays in memory: each feature set's index (a few hundred bytes per clip), at most
512 open HDF5 shards per set, and an LRU of decoded videos bounded by ``cache_bytes``
(float16, as stored). A cache that fits the bound is read from disk once, in the first
epoch; a larger one (VGG conv5_3 grids of UCF101 are tens of GB) streams from the
shards every epoch, one row read per clip, with memory flat in the dataset size.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, Sampler, SequentialSampler

from vpipe.artifacts import Closing
from vpipe.errors import ConfigError, StageError
from vpipe.models.heads.registry import HeadBatch, HeadInput
from vpipe.pipeline.workspace import DatasetWorkspace
from vpipe.store import FeatureSet
from vpipe.train.splits import Splits, assign_splits, carve_validation  # noqa: F401 (re-exported)

#: Decoded videos kept between epochs; the synthetic and UCF101 pooled caches fit.
DEFAULT_CACHE_BYTES = 2 * 1024**3
#: Shards kept open per feature set. Training reads videos in shuffled order, so a small
#: LRU reopens an HDF5 file for nearly every clip (half of a streamed epoch's time at
#: UCF101 size with 16); a handle costs a few hundred KB.
OPEN_SHARDS = 512


def assemble(spec: HeadInput, stacks: Sequence[np.ndarray]) -> np.ndarray:
    """One video's entries of ``spec`` from each feature set's clip stack ``(clips, *row)``.

    ``steps`` joins clips along the row's first axis (1-D rows count as one step each);
    ``clips`` keeps one entry per clip. Several feature sets are concatenated along the
    last axis (early fusion), so their entry counts and other axes must agree.
    """
    parts = []
    for stack in stacks:
        if spec.layout == "clips" or stack.ndim <= 2:
            parts.append(stack)
        else:
            parts.append(stack.reshape(-1, *stack.shape[2:]))
    if len(parts) == 1:
        return parts[0]
    if len({p.shape[:-1] for p in parts}) != 1:
        raise StageError(
            f"input {spec.role!r}: feature sets {', '.join(spec.features)} disagree in layer {spec.layer!r} "
            f"({' vs '.join(str(list(p.shape)) for p in parts)}); early fusion needs the same steps in each"
        )
    return np.concatenate(parts, axis=-1)


class InputReader(Closing):
    """Every declared input of a run, read per (video, view) from its feature sets.

    Opening checks that each feature set is extracted and has each declared layer, and
    that all sets of one run come from one plan; :meth:`check_alignment` checks, before
    any training, that every needed video has the same clips in every set.
    """

    def __init__(
        self, ws: DatasetWorkspace, inputs: Sequence[HeadInput], *, cache_bytes: int = DEFAULT_CACHE_BYTES
    ) -> None:
        self.inputs = list(inputs)
        names = list(dict.fromkeys(name for spec in self.inputs for name in spec.features))
        self.sets: dict[str, FeatureSet] = {}
        try:
            for name in names:
                self.sets[name] = ws.open_features(name, max_open_files=OPEN_SHARDS)
        except Exception:
            self.close()
            raise
        for spec in self.inputs:
            for name in spec.features:
                if spec.layer not in self.sets[name].layers:
                    raise ConfigError(
                        f"features {name!r} have no layer {spec.layer!r} (input {spec.role!r}); "
                        f"they have {self.sets[name].layers}"
                    )
        plans = {name: fs.provenance.get("plan") for name, fs in self.sets.items()}
        if len({p for p in plans.values() if p is not None}) > 1:
            raise StageError(
                "a run's feature sets must come from one plan so that their clips align; got "
                + ", ".join(f"{name} from plan {plan!r}" for name, plan in plans.items())
            )
        self.cache_bytes = cache_bytes
        self._cache: OrderedDict[tuple[str, int], dict[str, np.ndarray]] = OrderedDict()
        self._cached = 0

    def close(self) -> None:
        for features in self.sets.values():
            features.close()

    @property
    def indexes(self) -> list[pd.DataFrame]:
        return [fs.index for fs in self.sets.values()]

    def index_sha256(self) -> dict[str, str]:
        return {name: fs.index_sha256 for name, fs in self.sets.items()}

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Per-entry shape of every role, from the indexes (no shard is read)."""
        shapes = {}
        for spec in self.inputs:
            per_set = []
            for name in spec.features:
                rows = {tuple(json.loads(s)[spec.layer]["shape"]) for s in self.sets[name].index["layers"].unique()}
                entry = {row if spec.layout == "clips" or len(row) <= 1 else row[1:] for row in rows}
                if len(entry) != 1:
                    raise StageError(
                        f"layer {spec.layer!r} of features {name!r} mixes entry shapes {sorted(entry)}; re-extract it"
                    )
                per_set.append(entry.pop())
            shape = per_set[0]
            if len(per_set) > 1:
                shape = (*shape[:-1], sum(s[-1] for s in per_set))
            shapes[spec.role] = tuple(int(n) for n in shape)
        return shapes

    def histogram_columns(self, role: str) -> tuple[tuple[int, int], ...]:
        """Per feature set of ``role``, the (start, stop) range of its columns that are declared histograms.

        A feature set's backbone and version come from its provenance; the backbone
        registry says which layers of that version are histograms, block by block
        (:func:`vpipe.models.backbones.registry.histogram_blocks`), and a set's blocks
        make one range. Sets joined along the feature axis keep their offsets; a set that
        declares none contributes no range.
        """
        from vpipe.models.backbones.registry import histogram_blocks

        spec = next(s for s in self.inputs if s.role == role)
        ranges, offset = [], 0
        for name in spec.features:
            fs = self.sets[name]
            width = json.loads(fs.index["layers"].iloc[0])[spec.layer]["shape"][-1]
            version = fs.provenance.get("backbone_version")
            blocks = histogram_blocks(str(fs.provenance.get("backbone")), spec.layer, version, width)
            if blocks:
                ranges.append((offset, offset + sum(blocks)))
            offset += width
        return tuple(ranges)

    def check_alignment(self, video_ids: Sequence[str], *, all_views: bool) -> None:
        """One clear error, before training, for a video missing or misaligned in a set."""
        first = next(iter(self.sets.values()))
        for video_id in video_ids:
            views = first.views(video_id) if all_views else [0]
            for view in views:
                counts = {}
                for name, fs in self.sets.items():
                    if view not in fs.views(video_id):
                        raise StageError(
                            f"video {video_id!r} view {view} has no features in {name!r} but has them in "
                            f"{', '.join(n for n in self.sets if n != name)}: extract it there (`vpipe extract`) "
                            "or leave that feature set out"
                        )
                    counts[name] = fs.clip_count(video_id, view)
                if len(set(counts.values())) > 1:
                    raise StageError(
                        f"video {video_id!r} view {view} has different clip counts per feature set ({counts}): "
                        "they were extracted from different plans; re-extract them from one plan"
                    )

    def read(self, video_id: str, view: int) -> dict[str, np.ndarray]:
        """Every role's entries of one video view, as stored (float16), through the cache."""
        key = (video_id, int(view))
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            return hit
        arrays = {
            spec.role: assemble(
                spec, [self.sets[name].clips(video_id, view=view, layer=spec.layer) for name in spec.features]
            )
            for spec in self.inputs
        }
        size = sum(a.nbytes for a in arrays.values())
        if size <= self.cache_bytes:
            self._cache[key] = arrays
            self._cached += size
            while self._cached > self.cache_bytes:
                _, dropped = self._cache.popitem(last=False)
                self._cached -= sum(a.nbytes for a in dropped.values())
        return arrays

    def sample(self, role: str, video_ids: Sequence[str], limit: int, seed: int) -> np.ndarray:
        """Up to ``limit`` view-0 entries of ``role`` from ``video_ids`` in a seeded random order."""
        rng = np.random.default_rng(seed)
        parts, total = [], 0
        for i in rng.permutation(len(video_ids)):
            entries = self.read(video_ids[i], 0)[role].astype(np.float32)
            parts.append(entries)
            total += len(entries)
            if total >= limit:
                break
        return np.concatenate(parts)[:limit]


class HeadDataset(Dataset):
    """One item per (video, view): every role's float32 entries and the label."""

    def __init__(self, reader: InputReader, items: list[tuple[str, int]], labels: dict[str, int] | None) -> None:
        self.reader = reader
        self.items = items
        self.labels = labels

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[dict[str, torch.Tensor], int]:
        video_id, view = self.items[i]
        arrays = self.reader.read(video_id, view)
        label = -1 if self.labels is None else int(self.labels[video_id])
        return {role: torch.from_numpy(a.astype(np.float32)) for role, a in arrays.items()}, label


def collate_heads(batch: Sequence[tuple[dict[str, torch.Tensor], int]]) -> HeadBatch:
    """Pad every role to its longest video in the batch; keep the true lengths."""
    roles = batch[0][0].keys()
    inputs, lengths = {}, {}
    for role in roles:
        entries = [item[role] for item, _ in batch]
        lengths[role] = torch.tensor([len(e) for e in entries], dtype=torch.long)
        inputs[role] = torch.nn.utils.rnn.pad_sequence(entries, batch_first=True, padding_value=0.0)
    return HeadBatch(inputs, lengths, torch.tensor([label for _, label in batch], dtype=torch.long))


def make_splits(ws: DatasetWorkspace, reader: InputReader, val_fraction: float, seed: int) -> Splits:
    """Roles of the manifest's videos for one run (:func:`vpipe.train.splits.assign_splits`)."""
    view0 = {name: set(fs.index.loc[fs.index["view"] == 0, "video_id"]) for name, fs in reader.sets.items()}
    return assign_splits(ws, view0, val_fraction, seed)


class MicroBatches(Sampler[list[int]]):
    """The batches of ``sampler``'s order cut into micro-batches of at most ``size`` items.

    Batches are what :class:`~torch.utils.data.BatchSampler` makes of the order (the
    last one short); each is yielded as consecutive micro-batches, the last one short,
    and never joined to the next batch. :attr:`step_sizes` lists the batches' sizes, so
    a consumer knows where each batch ends. The order is the sampler's whatever ``size``
    is: a shuffled epoch sees the same videos in the same batches.
    """

    def __init__(self, sampler: Sampler[int], batch_size: int, size: int) -> None:
        self.batches = BatchSampler(sampler, batch_size, drop_last=False)
        self.size = size

    @property
    def step_sizes(self) -> list[int]:
        items = len(self.batches.sampler)
        full, rest = divmod(items, self.batches.batch_size)
        return [self.batches.batch_size] * full + ([rest] if rest else [])

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.batches:
            for start in range(0, len(batch), self.size):
                yield batch[start : start + self.size]

    def __len__(self) -> int:
        return sum(-(-n // self.size) for n in self.step_sizes)


def loader(
    reader: InputReader,
    video_ids: list[str],
    labels: dict[str, int] | None,
    *,
    batch_size: int,
    train: bool,
    seed: int = 0,
    micro_batch: int | None = None,
) -> DataLoader:
    """Padded :class:`HeadBatch` es; shuffled and every view when ``train``.

    With ``micro_batch``, each batch of ``batch_size`` comes as micro-batches of at most
    that many items (:class:`MicroBatches`, ``loader.batch_sampler.step_sizes`` says
    where batches end); each is padded to its own longest video. Only a micro-batch of
    inputs is ever built, which is what bounds a step's memory for heads with large maps.

    Batches are read in the main process, through the reader's cache: cached inputs
    are small next to model work, and worker processes would each hold a cache copy.
    """
    first = next(iter(reader.sets.values()))
    items = [(vid, view) for vid in video_ids for view in (first.views(vid) if train else [0])]
    reader.check_alignment(video_ids, all_views=train)
    dataset = HeadDataset(reader, items, labels)
    generator = torch.Generator().manual_seed(seed) if train else None
    sampler = RandomSampler(dataset, generator=generator) if train else SequentialSampler(dataset)
    return DataLoader(
        dataset,
        batch_sampler=MicroBatches(sampler, batch_size, micro_batch or batch_size),
        # The loader draws its own seed from ``generator`` before the sampler shuffles, as
        # a shuffled DataLoader does: the epoch's order and the global stream dropout
        # draws from stay what they were before batches could be cut.
        generator=generator,
        collate_fn=collate_heads,
        num_workers=0,
    )


def longest_item(reader: InputReader, video_ids: Sequence[str], *, all_views: bool) -> tuple[str, int]:
    """The (video, view) with the most clips: the one a micro-batch's memory is sized for."""
    first = next(iter(reader.sets.values()))
    items = [(vid, view) for vid in video_ids for view in (first.views(vid) if all_views else [0])]
    return max(items, key=lambda item: first.clip_count(*item))


def batches_of(arrays: dict[str, np.ndarray]) -> Iterator[HeadBatch]:
    """One :class:`HeadBatch` of a single video's assembled role arrays."""
    yield collate_heads([({role: torch.from_numpy(a.astype(np.float32)) for role, a in arrays.items()}, -1)])


def features_record(reader: InputReader) -> dict[str, dict[str, object]]:
    """What ``config.json`` keeps of each feature set: where, which content, how made."""
    return {
        name: {"directory": str(Path(fs.directory)), "index_sha256": fs.index_sha256, "provenance": fs.provenance}
        for name, fs in reader.sets.items()
    }
