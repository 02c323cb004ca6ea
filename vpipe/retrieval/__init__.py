"""Retrieval from the cache: FAISS indexes over per-video (or per-clip) embeddings.

``vpipe index`` builds ``index/<name>.faiss`` and its id map from an encoding, the
mean-pooled features or a trained run's embedding; ``vpipe search`` finds the
nearest videos to a dataset video or to a new video file, and evaluates the index
with the test-queries-against-train-gallery protocol. Python API::

    from vpipe.retrieval import Index
    index = Index.open("workspace", "ucf101", "li3d-rgb-k128-vlad")
    index.search("some/video_id", k=10)
"""

from vpipe.retrieval.evaluation import evaluate_index, retrieval_metrics
from vpipe.retrieval.index import Hit, Index, build_index

__all__ = ["Hit", "Index", "build_index", "evaluate_index", "retrieval_metrics"]
