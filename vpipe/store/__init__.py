"""The artifact store: HDF5 shards written one per task, a Parquet index, a reader.

Flow caches (uint8 quantized flow) and feature caches (float16 layers) share it:
``ShardWriter`` writes a task's clips, ``write_index`` commits their rows, and
``FeatureSet`` reads clips, per-video sequences and torch datasets back through the
index alone.
"""

from vpipe.store.index import INDEX_FILE, INDEX_SCHEMA, orphan_shards, read_index, write_index
from vpipe.store.reader import FeatureSet, SequenceDataset, collate_padded
from vpipe.store.shards import ShardWriter, shard_name

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
