"""The artifact store: HDF5 shards written one per task, a Parquet index, a reader.

Flow caches (uint8 quantized flow) and feature caches (float16 layers) share it:
``ShardWriter`` writes a task's clips, ``write_index`` commits their rows, and
``FeatureSet`` reads clips, per-video sequences and torch datasets back through the
index alone.
"""

from vpipe.lazy import lazy_exports

__all__ = [
    "INDEX_FILE",
    "INDEX_SCHEMA",
    "FeatureSet",
    "SequenceDataset",
    "ShardWriter",
    "collate_padded",
    "orphan_shards",
    "read_index",
    "shard_name",
    "write_index",
]

# Lazy: ``vpipe status`` reads indexes through this package and must not import torch
# (the reader) or h5py (the shards) to do so.
__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "INDEX_FILE": "vpipe.store.index",
        "INDEX_SCHEMA": "vpipe.store.index",
        "orphan_shards": "vpipe.store.index",
        "read_index": "vpipe.store.index",
        "write_index": "vpipe.store.index",
        "FeatureSet": "vpipe.store.reader",
        "SequenceDataset": "vpipe.store.reader",
        "collate_padded": "vpipe.store.reader",
        "ShardWriter": "vpipe.store.shards",
        "shard_name": "vpipe.store.shards",
    },
)
