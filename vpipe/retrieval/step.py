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
import time

from vpipe.errors import StageError
from vpipe.pipeline.stage import StageReport
from vpipe.pipeline.workspace import DatasetWorkspace
from vpipe.retrieval import store
from vpipe.stages.dataset_steps import DatasetStep

#: The figures the main job prints.
SUMMARY_KEYS = ("R@1", "R@5", "mAP")


def default_embedding(features: str, clusters: int | None) -> str:
    """VLAD of ``features`` with ``clusters`` words when a codebook is fitted, else its mean-pooled features."""
    return f"encodings:{features}-k{clusters}-vlad" if clusters else f"features:{features}"


class IndexStep(DatasetStep):
    """Build (or keep) the default index and evaluate it, test queries against the train gallery."""

    label = "retrieval"

    def __init__(self, ws: DatasetWorkspace, embedding: str) -> None:
        self.ws, self.embedding = ws, embedding

    @property
    def artifact(self) -> str:
        from vpipe.retrieval.index import index_status

        name, _ = index_status(self.ws, self.embedding)
        return str(store.faiss_path(self.ws, name))

    def _evaluation(self, name: str) -> dict | None:
        path = store.evaluation_path(self.ws, name)
        return json.loads(path.read_text()) if path.is_file() else None

    def is_current(self) -> bool:
        from vpipe.retrieval.index import index_status

        name, intact = index_status(self.ws, self.embedding)
        if not intact:
            return False
        evaluation, stored = self._evaluation(name), store.read_metadata(self.ws, name)
        if evaluation is None:
            splits = set(store.read_rows(self.ws, name)["split"])
            return not {"train", "test"} <= splits  # nothing to evaluate: the index is all there is
        return stored is not None and evaluation.get("index_fingerprint") == stored["fingerprint"]

    def run(self) -> StageReport:
        from vpipe.retrieval.evaluation import evaluate_index
        from vpipe.retrieval.index import Index, build_index

        started = time.perf_counter()
        current = self.is_current()
        summary = build_index(self.ws, self.embedding)
        name = summary["name"]
        evaluation = self._evaluation(name) if current else None
        if evaluation is None:
            try:
                evaluation = evaluate_index(Index.open(self.ws, name=name), device="cpu")
            except StageError as error:  # a dataset without a test or train split: index only
                evaluation = {"skipped": str(error)}
        figures = {key: evaluation.get(key) for key in SUMMARY_KEYS if key in evaluation}
        return StageReport(
            stage=self.label,
            total=1,
            done=1,
            computed=int(not current),
            up_to_date=int(current),
            seconds=time.perf_counter() - started,
            artifact=str(store.faiss_path(self.ws, name)),
            details={"retrieval": {"index": name, "embedding": summary["embedding"], **figures,
                                   **({"skipped": evaluation["skipped"]} if "skipped" in evaluation else {})}},
        )  # fmt: skip
