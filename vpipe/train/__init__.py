"""Training registered heads on the feature cache, and scoring them as the papers do.

``train(ws, TrainConfig(...))`` fits a head and writes ``runs/<run_id>/``;
``evaluate(ws, run_id)`` rebuilds it from that directory and re-scores the test split;
``embed_videos`` gives a run's video embeddings (retrieval, t-SNE);
``train_for_pipeline`` is the small default run of ``vpipe run`` (``existing_run`` with
``pipeline_config`` tells, without training, whether it is already done).
"""

from vpipe.train.config import TrainConfig
from vpipe.train.evaluate import embed_clip_arrays, embed_videos, evaluate
from vpipe.train.metrics import classification_metrics
from vpipe.train.runs import completed_runs, load_run
from vpipe.train.trainer import RunResult, existing_run, pipeline_config, train, train_for_pipeline

__all__ = [
    "RunResult",
    "TrainConfig",
    "classification_metrics",
    "completed_runs",
    "embed_clip_arrays",
    "embed_videos",
    "evaluate",
    "existing_run",
    "load_run",
    "pipeline_config",
    "train",
    "train_for_pipeline",
]
