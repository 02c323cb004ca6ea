"""Retrieval from the cache: FAISS indexes over per-video (or per-clip) embeddings.

``vpipe index`` builds ``index/<name>.faiss`` and its id map from an encoding, the
mean-pooled features or a trained run's embedding; ``vpipe search`` finds the
nearest videos to a dataset video or to a new video file, and evaluates the index
with the test-queries-against-train-gallery protocol. Python API::

    from vpipe.retrieval import Index
    index = Index.open("workspace", "ucf101", "li3d-rgb-k128-vlad")
    index.search("some/video_id", k=10)
"""

from vpipe.lazy import lazy_exports

__all__ = ["Hit", "Index", "IndexOptions", "build_index", "evaluate_index", "retrieval_metrics"]

# Lazy: the pipeline's index step (listed by ``vpipe status``) lives in this package,
# and the index itself needs faiss, torch and h5py.
__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "evaluate_index": "vpipe.retrieval.evaluation",
        "retrieval_metrics": "vpipe.retrieval.evaluation",
        "Hit": "vpipe.retrieval.index",
        "Index": "vpipe.retrieval.index",
        "IndexOptions": "vpipe.retrieval.index_options",
        "build_index": "vpipe.retrieval.index",
    },
)
