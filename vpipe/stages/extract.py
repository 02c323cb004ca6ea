"""The extract stage: backbone features of every planned clip, into a sharded HDF5 cache.

Items are videos, so resume and failure records are per video; the runner hands a
task several videos at once (``chunk_size``) so that one forward pass batches
clips across videos and one shard holds a task's output.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc

from vpipe import __version__
from vpipe.device import ComputeSettings, concrete_device
from vpipe.artifacts import atomic_write_text
from vpipe.artifacts.provenance import FeatureProvenance
from vpipe.errors import StageError, VpipeError
# The static copies, equal to the registry's (tests/test_cli_imports.py): describing an
# extract stage (status, fingerprints) does not build the backbone modules.
from vpipe.catalog import backbone_defaults, backbone_inputs, backbone_version, is_weightless
from vpipe.pipeline.fingerprint import canonical_json, fingerprint
from vpipe.pipeline.fingerprint_columns import file_fingerprints, json_texts, row_fingerprints, source_fingerprints
from vpipe.pipeline.item_state import latest_records
from vpipe.pipeline.journal import Journal, Record
from vpipe.pipeline.stage import Stage
from vpipe.pipeline.workspace import DatasetWorkspace
from vpipe.stages.plan_columns import plan_video_columns
from vpipe.stages.planned_videos import PlannedVideoStage
from vpipe.pipeline.tables import table_fingerprint, table_metadata

if TYPE_CHECKING:
    from vpipe.extract.features import ExtractConfig
    from vpipe.stages.flow import FlowStage

#: Bumped when the same configuration would store different features.
EXTRACT_FORMAT = 1
#: 2: the model fingerprint covers the backbone's resolved options and always its version.
FINGERPRINT_SCHEME = 2

log = logging.getLogger(__name__)


class ExtractStage(PlannedVideoStage):
    name = "extract"

    def __init__(
        self,
        workspace: DatasetWorkspace,
        *,
        backbone: str,
        stream: str = "rgb",
        plan: str = "li3d",
        weights: str | Path | None = None,
        options: dict[str, Any] | None = None,
        name: str | None = None,
        device: str = "auto",
        batch_size: int = 8,
        decode_workers: int | None = None,
        videos_per_task: int | None = None,
        decoder: str = "auto",
        plan_stage: Stage | None = None,
        flow: FlowStage | None = None,
    ):
        super().__init__(
            workspace, plan=plan, device=device, videos_per_task=videos_per_task, decoder=decoder, plan_stage=plan_stage
        )
        self.inputs = backbone_inputs(backbone, stream)
        # A backbone built from the frames and their flow reads both whichever stream is
        # named, so its stream is always its first input: naming the other one is the
        # same extraction, not a stale one.
        stream = self.inputs[0] if len(self.inputs) > 1 else stream
        self.backbone, self.stream, self._flow = backbone, stream, flow
        self.weights = str(Path(weights).expanduser().resolve()) if weights else None
        self.options = dict(options or {})
        # A backbone built from the frames and their flow has one feature set, not one per stream.
        self.set_name = name or (backbone if len(self.inputs) > 1 else f"{backbone}-{stream}")
        self.batch_size, self.decode_workers = batch_size, decode_workers
        self.compute = ComputeSettings.for_device(device)
        self._weights_sha: str | None = None

    @property
    def subject(self) -> str:
        return self.set_name

    @property
    def journal_name(self) -> str:
        return self.journal_of(self.set_name)

    @property
    def artifact(self) -> Path:
        return self.workspace.features_dir(self.set_name)

    @property
    def flow(self) -> FlowStage:
        """The stage whose flow this backbone reads: the job's, else the plan's flow with its
        default settings (whose journal and directory are the plan's, whatever the settings)."""
        if self._flow is None:
            from vpipe.stages.flow import FlowStage

            self._flow = FlowStage(self.workspace, plan=self.plan, device=self.device, decoder=self.decoder)
        return self._flow

    @property
    def flow_dir(self) -> Path:
        return self.flow.artifact

    def requires(self) -> Sequence[Stage]:
        """The plan stage when the job names it, and the flow stage for a backbone reading flow."""
        plan = super().requires()
        return (*plan, self.flow) if "flow" in self.inputs else plan

    def settings(self) -> dict[str, Any]:
        return {
            "backbone": self.backbone, "stream": self.stream, "weights": self.weights or "none",
            "options": self.resolved_options(), "backbone_version": backbone_version(self.backbone),
            "compute": list(self.compute.fingerprint_parts()),
        }  # fmt: skip

    @property
    def weights_sha256(self) -> str:
        if self._weights_sha is None:
            if self.weights and not Path(self.weights).is_file():
                raise StageError(f"--weights {self.weights} does not exist")
            if self.weights:
                from vpipe.models.weights import sha256_file

                self._weights_sha = sha256_file(self.weights)
            else:
                self._weights_sha = "none" if is_weightless(self.backbone) else "random"
        return self._weights_sha

    def resolved_options(self) -> dict[str, Any]:
        """The options the backbone is built with: its builder's defaults, overridden by
        the given ones. What the fingerprint covers, so ``-o grid=14`` given explicitly
        equals the default 14, and a changed default changes the fingerprint."""
        return {**backbone_defaults(self.backbone), **self.options}

    def model_fingerprint(self) -> str:
        """The backbone, stream, weights, resolved options, the backbone's output version,
        and the device kind and precision when they are not the CPU fp32 reference."""
        return fingerprint(
            EXTRACT_FORMAT, FINGERPRINT_SCHEME, self.backbone, self.stream, self.weights_sha256,
            self.resolved_options(), backbone_version(self.backbone), *self.compute.fingerprint_parts(),
        )  # fmt: skip

    def _typed_options_fingerprint(self) -> str:
        """The model fingerprint before :data:`FINGERPRINT_SCHEME` 2 (typed options only),
        kept to carry existing caches over (:meth:`_carry_over`)."""
        version = backbone_version(self.backbone)
        bumped = () if version == 1 else (version,)
        return fingerprint(EXTRACT_FORMAT, self.backbone, self.stream, self.weights_sha256, self.options, *bumped)

    def item_fingerprints(self) -> tuple[pa.Array, pa.Array]:
        """Per video with current inputs, ``fingerprint(model fingerprint, inputs, clip signature)``
        (see :meth:`_input_fingerprints` and :func:`plan_video_columns`); column-wise."""
        videos, inputs = self._input_fingerprints()
        keys = videos["video_id"].combine_chunks()
        fingerprints = self._fingerprints(self.model_fingerprint(), videos, inputs)
        self._carry_over(keys, fingerprints, lambda: self._fingerprints(self._typed_options_fingerprint(), videos, inputs))
        return keys, fingerprints

    @staticmethod
    def _fingerprints(model_fingerprint: str, videos: pa.Table, inputs: pa.Array) -> pa.Array:
        return row_fingerprints(canonical_json(model_fingerprint), json_texts(inputs), videos["signature"])

    def _carry_over(self, keys: pa.Array, current: pa.Array, typed: Callable[[], pa.Array]) -> None:
        """Once per feature set: records made under the typed-options fingerprint (``typed``
        gives them, per key) take the resolved one, when the shards' provenance shows they
        were built with today's resolved options; otherwise they stay stale and a warning
        says why.

        Never a silent full recompute, never silently stale. A marker in the journal
        directory makes this a one-time step.
        """
        marker = self.journal_dir / "fingerprints.json"
        journal = Journal(self.journal_dir)
        if marker.exists() or not journal.parts():
            return
        records = journal.load()
        current_by_key = dict(zip(keys.to_pylist(), current.to_pylist()))
        typed_by_key = dict(zip(keys.to_pylist(), typed().to_pylist()))
        old = [key for key, record in records.items() if key in current_by_key and record.fingerprint != current_by_key[key]]
        old = [key for key in old if records[key].fingerprint == typed_by_key[key]]
        if old:
            recorded = self._recorded_resolved_options()
            if recorded is not None and canonical_json(recorded) == canonical_json(self.resolved_options()):
                for key in old:
                    r = records[key]
                    journal.append(Record(key, current_by_key[key], r.ok, r.rows, r.error, r.path, r.seconds, r.time))
                journal.flush()
                log.info("%s: %d cached videos carried over to fingerprints over resolved options %s",
                         self.label, len(old), canonical_json(recorded))  # fmt: skip
            else:
                log.warning(
                    "%s: %d cached videos were extracted before their options were recorded with their "
                    "defaults, or with other defaults (%s); they will be recomputed",
                    self.label, len(old), "none recorded" if recorded is None else canonical_json(recorded),
                )  # fmt: skip
        atomic_write_text(marker, json.dumps({"scheme": FINGERPRINT_SCHEME}))

    def _recorded_resolved_options(self) -> dict[str, Any] | None:
        """The resolved options in the feature set's provenance, or None if not recorded."""
        if not (self.artifact / "index.parquet").is_file():
            return None
        try:
            from vpipe.store.reader import FeatureSet

            with FeatureSet.open(self.artifact) as features:
                provenance = features.provenance
        except VpipeError:
            return None
        return provenance.get("resolved_options")

    def _input_fingerprints(self) -> tuple[pa.Table, pa.Array]:
        """The plan's videos whose inputs exist (see :func:`plan_video_columns`), and per
        video a fingerprint of what its clips are built from: ``fingerprint(decoder,
        file_fingerprint(path))`` for frames, the flow stage's record for flow, both for
        a backbone reading both. Videos without a successful flow record are left out."""
        videos = plan_video_columns(self.workspace, self.plan)
        if "flow" not in self.inputs:
            return videos, source_fingerprints(self.decoder, videos["path"])
        videos, flow = self._flow_fingerprints(videos)
        if "rgb" not in self.inputs:
            return videos, flow
        stamps = json_texts(file_fingerprints(videos["path"]))
        return videos, row_fingerprints(canonical_json(self.decoder), stamps, json_texts(flow))

    def _flow_fingerprints(self, videos: pa.Table) -> tuple[pa.Table, pa.Array]:
        """The videos whose latest flow record succeeded, and that record's fingerprint:
        a video's flow input changes whenever its flow is recomputed."""
        if not (self.flow_dir / "index.parquet").exists():
            raise StageError(
                f"no optical flow for plan {self.plan!r}, which features {self.set_name} are computed from: "
                f"run `vpipe flow --dataset {self.workspace.dataset} --plan {self.plan}` first"
            )
        records = latest_records(self.flow.journal_dir)
        where = pc.index_in(videos["video_id"], value_set=records["key"].combine_chunks())
        found = pc.fill_null(pc.take(records["ok"], where.fill_null(0)), False) if records.num_rows else None
        if found is None:
            return videos.slice(0, 0), pa.array([], pa.string())
        found = pc.and_(pc.is_valid(where), found)
        return videos.filter(found), pc.take(records["fingerprint"], where.filter(found)).combine_chunks()

    def config(self) -> ExtractConfig:
        plan_path = self.workspace.plan_path(self.plan)
        provenance = FeatureProvenance(
            backbone=self.backbone,
            stream=self.stream,
            options=self.options,
            resolved_options=self.resolved_options(),
            backbone_version=backbone_version(self.backbone),
            inputs=tuple(self.inputs),
            weights=self.weights or self.weights_sha256,
            weights_sha256=self.weights_sha256,
            plan=self.plan,
            plan_fingerprint=table_fingerprint(plan_path),
            sampler=json.loads(table_metadata(plan_path, "sampler") or "{}"),
            decoder=self.decoder,
            vpipe_version=__version__,
            **self.compute.provenance(),
        )
        from vpipe.extract.features import ExtractConfig

        return ExtractConfig(
            backbone=self.backbone,
            stream=self.stream,
            out_dir=str(self.artifact),
            weights=self.weights,
            options=tuple(sorted(self.options.items())),
            device=concrete_device(self.device),
            batch_size=self.batch_size,
            decode_workers=self.decode_workers,
            decoder=self.decoder,
            flow_dir=str(self.flow_dir) if "flow" in self.inputs else None,
            inputs=self.inputs,
            weights_sha256=self.weights_sha256,
            precision=self.compute.precision,
            provenance=provenance.to_dict(),
        )

    def item_fn(self):
        from vpipe.extract.features import extract_videos

        return partial(extract_videos, self.config())

