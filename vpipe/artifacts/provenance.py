"""How a flow cache or a feature set was made: the provenance every shard carries.

The flow and extract stages build these records and write their ``to_dict`` into each
shard's ``provenance`` attribute; whoever must redo the work for a new video (a query
video embedded like the gallery, :mod:`vpipe.retrieval.query_video`) reads them back and
rebuilds the stage's configuration from them with ``FlowConfig.from_provenance`` and
``ExtractConfig.from_provenance``. Defaults therefore live in the configurations alone:
a record holds what was recorded, and ``None`` where the version that wrote it did not
record a key yet (those keys are the optional fields below).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from vpipe.artifacts.records import Record

#: What ``weights`` records for a backbone without a weights file: random init, or none to load.
NO_WEIGHTS = ("random", "none")


@dataclass(frozen=True)
class FlowProvenance(Record):
    """A flow cache's TV-L1 settings (the flow stage's ``FlowConfig``) and its inputs."""

    _omit_none: ClassVar[frozenset[str]] = frozenset({"tvl1_resolved", "device_kind", "precision", "storage_dtype"})

    method: str
    #: The TV-L1 options given; ``tvl1_resolved`` is the full set after defaults.
    tvl1_params: Mapping[str, Any]
    stack: int
    encoding: str
    bound: float
    plan: str
    plan_fingerprint: str
    decoder: str
    vpipe_version: str
    tvl1_resolved: Mapping[str, Any] | None = None
    device_kind: str | None = None
    precision: str | None = None
    storage_dtype: str | None = None


@dataclass(frozen=True)
class FeatureProvenance(Record):
    """A feature set's backbone, options, weights, plan and sampler.

    ``flow`` is the provenance of the flow cache the clips were built from; the
    retrieval index records it next to the feature set's for backbones that read flow.
    """

    _omit_none: ClassVar[frozenset[str]] = frozenset(
        {"resolved_options", "backbone_version", "inputs", "device_kind", "precision", "storage_dtype", "flow"}
    )

    backbone: str
    stream: str
    options: Mapping[str, Any]
    #: The weights file's path, or "random" / "none" (see :data:`NO_WEIGHTS`).
    weights: str
    weights_sha256: str | None
    plan: str
    plan_fingerprint: str
    #: The plan's sampler with every parameter (``-o`` options included).
    sampler: Mapping[str, Any]
    decoder: str
    vpipe_version: str
    resolved_options: Mapping[str, Any] | None = None
    backbone_version: int | None = None
    inputs: tuple[str, ...] | None = None
    device_kind: str | None = None
    precision: str | None = None
    storage_dtype: str | None = None
    flow: FlowProvenance | None = None

    @classmethod
    def _load_field(cls, key: str, value: Any, source: str) -> Any:
        if key == "flow" and value is not None:
            return FlowProvenance.from_dict(value, source=f"{source} (flow)")
        if key == "inputs" and value is not None:
            return tuple(value)
        return value

    @property
    def clip_inputs(self) -> tuple[str, ...]:
        """What the clips were built from: rgb, flow or both (before ``inputs`` was
        recorded, a backbone read its own stream)."""
        return self.inputs or (self.stream,)

    @property
    def output_version(self) -> int:
        """The backbone's output version; 1 before versions were recorded."""
        return 1 if self.backbone_version is None else int(self.backbone_version)

    @property
    def backbone_options(self) -> dict[str, Any]:
        """The options the backbone was built with: resolved (defaults merged) when recorded,
        else the typed ones, which were all there was before resolved options were recorded."""
        return dict(self.resolved_options or self.options or {})

    @property
    def weights_file(self) -> str | None:
        """The weights path, or None for a backbone with no weights file."""
        return None if self.weights in NO_WEIGHTS else self.weights

    def with_flow(self, flow: FlowProvenance) -> FeatureProvenance:
        from dataclasses import replace

        return replace(self, flow=flow)
