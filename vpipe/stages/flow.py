"""The flow stage: TV-L1 optical flow of every planned clip, cached for the flow stream.

Like extraction, items are videos and tasks take several at once, so that the
TV-L1 solver sees large batches of pairs (what makes it fast on a GPU).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import pyarrow as pa

from vpipe import __version__
from vpipe.artifacts.provenance import FlowProvenance
from vpipe.device import ComputeSettings, concrete_device
from vpipe.catalog import resolved_tvl1_params, tvl1_params_off_reference
from vpipe.pipeline.fingerprint import canonical_json, fingerprint
from vpipe.pipeline.fingerprint_columns import file_fingerprints, json_texts, row_fingerprints
from vpipe.pipeline.stage import Stage
from vpipe.pipeline.tables import table_fingerprint
from vpipe.pipeline.workspace import DatasetWorkspace
from vpipe.stages.planned_videos import PlannedVideoStage
from vpipe.stages.plan_columns import plan_video_columns

#: Bumped when the same configuration would store different flow.
FLOW_FORMAT = 1


class FlowStage(PlannedVideoStage):
    name = "flow"

    def __init__(
        self,
        workspace: DatasetWorkspace,
        *,
        plan: str = "li3d",
        stack: int = 0,
        encoding: str = "uint8",
        bound: float = 20.0,
        tvl1_params: dict[str, Any] | None = None,
        device: str = "auto",
        pairs_per_batch: int | None = None,
        videos_per_task: int | None = None,
        decoder: str = "auto",
        plan_stage: Stage | None = None,
    ):
        super().__init__(
            workspace, plan=plan, device=device, videos_per_task=videos_per_task, decoder=decoder, plan_stage=plan_stage
        )
        self.stack, self.encoding, self.bound = stack, encoding, bound
        self.tvl1_params = dict(tvl1_params or {})
        resolved_tvl1_params(self.tvl1_params)  # an unknown name fails here, not in every task
        self.pairs_per_batch = pairs_per_batch
        # TV-L1 runs in fp32 everywhere; the device kind still counts (CUDA sums in another order).
        self.compute = ComputeSettings.for_device(device, storage_dtype=encoding, precision="fp32")

    @property
    def journal_name(self) -> str:
        return self.journal_of(self.plan)  # one flow artifact per plan

    @property
    def artifact(self) -> Path:
        return self.workspace.flow_dir(self.plan)

    def settings(self) -> dict[str, Any]:
        return {
            "format": FLOW_FORMAT, "stack": self.stack, "encoding": self.encoding, "bound": self.bound,
            "tvl1_params": tvl1_params_off_reference(self.tvl1_params), "decoder": self.decoder,
            "compute": list(self.compute.fingerprint_parts()),
        }  # fmt: skip

    def item_fingerprints(self) -> tuple[pa.Array, pa.Array]:
        """Per video, ``fingerprint(config, file_fingerprint(path), clip signature)``, the flow
        settings' fingerprint as ``config`` (see :func:`plan_video_columns`); column-wise."""
        config_fp = fingerprint(
            FLOW_FORMAT, self.stack, self.encoding, self.bound, tvl1_params_off_reference(self.tvl1_params),
            self.decoder, *self.compute.fingerprint_parts(),
        )  # fmt: skip
        videos = plan_video_columns(self.workspace, self.plan)
        stamps = json_texts(file_fingerprints(videos["path"]))
        return videos["video_id"].combine_chunks(), row_fingerprints(canonical_json(config_fp), stamps, videos["signature"])

    def item_fn(self):
        from vpipe.flow.compute import FlowConfig, flow_videos

        config = FlowConfig(
            out_dir=str(self.artifact),
            stack=self.stack,
            encoding=self.encoding,
            bound=self.bound,
            device=concrete_device(self.device),
            pairs_per_batch=self.pairs_per_batch,
            decoder=self.decoder,
            tvl1_params=tuple(sorted(self.tvl1_params.items())),
            provenance=FlowProvenance(
                method="tvl1",
                tvl1_params=self.tvl1_params,
                tvl1_resolved=resolved_tvl1_params(self.tvl1_params),
                stack=self.stack,
                encoding=self.encoding,
                bound=self.bound,
                plan=self.plan,
                plan_fingerprint=table_fingerprint(self.workspace.plan_path(self.plan)),
                decoder=self.decoder,
                vpipe_version=__version__,
                **self.compute.provenance(),
            ).to_dict(),
        )
        return partial(flow_videos, config)
