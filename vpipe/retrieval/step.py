"""Retrieval as a step of the main job: the default index and its ``--evaluate`` figures.

``vpipe run`` builds one index after encode and before training, so its figures come
with every run's results: test videos query the train gallery, Recall@1/5 and mAP by
label. The default embedding is the VLAD encoding of the first feature set when the job
fits a codebook (the vector NetVLAD-style retrieval uses), the mean-pooled features
otherwise; both are centred on the gallery mean. The step is current when the index
is intact for the current embedding and its evaluation was made on that index, so a
rerun with nothing changed does nothing.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vpipe.errors import StageError
from vpipe.pipeline.fingerprint import fingerprint
from vpipe.pipeline.stage import Stage, WholeDatasetStage
from vpipe.pipeline.workspace import DatasetWorkspace
from vpipe.retrieval import store

#: The figures the main job prints.
SUMMARY_KEYS = ("R@1", "R@5", "mAP")


def default_embedding(features: str, clusters: int | None) -> str:
    """VLAD of ``features`` with ``clusters`` words when a codebook is fitted, else its mean-pooled features."""
    return f"encodings:{features}-k{clusters}-vlad" if clusters else f"features:{features}"


class IndexStage(WholeDatasetStage):
    """Build (or keep) the default index and evaluate it, test queries against the train gallery.

    ``source`` is the stage that makes the embedding: the encode stage for an encoding,
    the extract stage for mean-pooled features.
    """

    name = "retrieval"

    def __init__(self, ws: DatasetWorkspace, embedding: str, source: Stage) -> None:
        super().__init__(ws)
        self.embedding, self.source = embedding, source

    def requires(self) -> Sequence[Stage]:
        return (self.source,)

    @property
    def artifact(self) -> Path:
        from vpipe.retrieval.index import index_status

        name, _ = index_status(self.workspace, self.embedding)
        return store.faiss_path(self.workspace, name)

    def settings(self) -> dict[str, Any]:
        return {"embedding": self.embedding}

    def item_fingerprint(self) -> str:
        return fingerprint(self.name, self.settings())

    def _evaluation(self, name: str) -> dict | None:
        path = store.evaluation_path(self.workspace, name)
        return json.loads(path.read_text()) if path.is_file() else None

    def is_current(self) -> bool:
        from vpipe.retrieval.index import index_status

        name, intact = index_status(self.workspace, self.embedding)
        if not intact:
            return False
        evaluation, stored = self._evaluation(name), store.read_metadata(self.workspace, name)
        if evaluation is None:
            splits = set(store.read_rows(self.workspace, name)["split"])
            return not {"train", "test"} <= splits  # nothing to evaluate: the index is all there is
        return stored is not None and evaluation.get("index_fingerprint") == stored["fingerprint"]

    def work(self) -> dict[str, Any]:
        from vpipe.retrieval.evaluation import evaluate_index
        from vpipe.retrieval.index import Index, build_index

        name = build_index(self.workspace, self.embedding)["name"]
        try:
            evaluation = evaluate_index(Index.open(self.workspace, name=name), device="cpu")
        except StageError as error:  # a dataset without a test or train split: index only
            evaluation = {"skipped": str(error)}
        return self._figures(name, evaluation)

    def describe(self) -> dict[str, Any]:
        from vpipe.retrieval.index import index_status

        name, _ = index_status(self.workspace, self.embedding)
        return self._figures(name, self._evaluation(name) or {"skipped": "no train and test split to evaluate"})

    def _figures(self, name: str, evaluation: dict[str, Any]) -> dict[str, Any]:
        figures = {key: evaluation.get(key) for key in SUMMARY_KEYS if key in evaluation}
        skipped = {"skipped": evaluation["skipped"]} if "skipped" in evaluation else {}
        return {"retrieval": {"index": name, "embedding": self.embedding, **figures, **skipped}}
