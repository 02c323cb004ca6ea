"""Training registered heads on the feature cache, and scoring them as the papers do.

``train(ws, TrainConfig(...))`` fits a head and writes ``runs/<run_id>/``;
``evaluate(ws, run_id)`` rebuilds it from that directory and re-scores the test split;
``embed_videos`` gives a run's video embeddings (retrieval, t-SNE); ``existing_run``
tells, without training, whether a config is already trained (``current_run`` tells it
without torch). The runs ``vpipe run`` trains are the main job's recipe
(:mod:`vpipe.stages.main_job`).

The names load on first use (:mod:`vpipe.lazy`): the command line reads
:class:`TrainConfig`'s defaults without importing torch.
"""

from vpipe.lazy import lazy_exports

__all__ = [
    "RunResult",
    "TrainConfig",
    "classification_metrics",
    "completed_runs",
    "current_run",
    "embed_clip_arrays",
    "embed_videos",
    "evaluate",
    "existing_run",
    "load_run",
    "train",
]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "TrainConfig": "vpipe.train.config",
        "embed_clip_arrays": "vpipe.train.evaluation",
        "embed_videos": "vpipe.train.evaluation",
        "evaluate": "vpipe.train.evaluation",
        "classification_metrics": "vpipe.train.metrics",
        "completed_runs": "vpipe.train.runs",
        "current_run": "vpipe.train.identity",
        "load_run": "vpipe.train.runs",
        "RunResult": "vpipe.train.trainer",
        "existing_run": "vpipe.train.trainer",
        "train": "vpipe.train.trainer",
    },
)
