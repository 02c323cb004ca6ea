"""A video file from outside the dataset, embedded exactly like the indexed ones.

The configuration is the one recorded in the index (each feature set's provenance:
sampler, decoder, backbone, weights and their SHA-256, and the flow cache's TV-L1
settings), not whatever the dataset holds now. The video then goes through the
stages' own library functions: probe (:func:`vpipe.video.decode.probe_video`), plan
(:func:`vpipe.video.plan.plan_video`, view 0, as a test video), flow
(:func:`vpipe.flow.compute.flow_videos`) and extraction
(:func:`vpipe.extract.features.extract_videos`). Their shards land in a private
temporary directory and are read back through the same store, so a query's
features are stored in float16 and read back exactly as a cached video's are; the
dataset's artifacts are never touched.

Every option a user can set reaches the query through the recorded provenance, read
as a typed :class:`~vpipe.artifacts.provenance.FeatureProvenance` (with its flow cache's
:class:`~vpipe.artifacts.provenance.FlowProvenance`), and the stage configurations are
rebuilt from those records by the configurations themselves
(``ExtractConfig.from_provenance``, ``FlowConfig.from_provenance``), so no default is
restated here: the sampler with all its parameters (``-o`` options included), the
decoder, the backbone with its resolved options and output version, the weights and
their digest, and the flow cache's TV-L1 settings.

Random choices of a plan (li3d's window for a video longer than ``need``, tsn's
offsets on the training split) are seeded by the video's id. A query file whose bytes
are those of a gallery video *is* that video, so it is planned under that video's id
and split (:func:`gallery_twin`), which makes an identical file reproduce its stored
vector; any other file is planned under its file name as a test video. The twin is
found by frame count and size first, so only same-sized files are hashed.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from vpipe.artifacts.provenance import FeatureProvenance, FlowProvenance
from vpipe.errors import DecodeError, StageError, VpipeError, WeightsError
from vpipe.artifacts import sha256_file
from vpipe.store.index import write_index
from vpipe.video.jobs import ClipSpec, VideoJob
from vpipe.video.plan import SamplerConfig, plan_video
from vpipe.video.views import Crop

if TYPE_CHECKING:
    from vpipe.extract.features import ExtractConfig
    from vpipe.video.decode import VideoInfo
    from vpipe.store.reader import FeatureSet
    from vpipe.flow.compute import FlowConfig


def check_weights(provenance: FeatureProvenance) -> str | None:
    """The recorded weights path (None without a file), after checking it is the same file."""
    weights = provenance.weights_file
    if weights is None:
        return None
    if not Path(weights).is_file() or sha256_file(weights) != provenance.weights_sha256:
        raise WeightsError(
            f"weights {weights} are missing or changed since the features were extracted "
            f"(sha256 {provenance.weights_sha256}); restore that file to embed new videos like the gallery"
        )
    return weights


def check_backbone_version(provenance: FeatureProvenance) -> None:
    """Refuse a gallery whose backbone computed its output differently from the installed one."""
    from vpipe.models.backbones.registry import backbone_version

    name = provenance.backbone
    recorded, current = provenance.output_version, backbone_version(name)
    if recorded != current:
        raise StageError(
            f"feature set from {name} version {recorded} cannot be reproduced by the installed {name} "
            f"(version {current}); re-extract the dataset's features, then rebuild the index"
        )


def sampler_from(provenance: FeatureProvenance) -> SamplerConfig:
    """The recorded sampler with every parameter the plan was made with (``-o`` options included)."""
    return SamplerConfig(**provenance.sampler)


def flow_config(flow: FlowProvenance, out_dir: Path, device: str) -> FlowConfig:
    """The flow stage's configuration as recorded in the flow cache's provenance."""
    from vpipe.flow.compute import FlowConfig

    return FlowConfig.from_provenance(flow, str(out_dir), device)


def extract_config(provenance: FeatureProvenance, out_dir: Path, device: str, flow_dir: Path | None) -> ExtractConfig:
    """The extract stage's configuration as recorded in a feature set's provenance
    (:meth:`ExtractConfig.from_provenance`), after checking the backbone and weights."""
    from vpipe.extract.features import ExtractConfig

    check_backbone_version(provenance)
    return ExtractConfig.from_provenance(
        provenance,
        str(out_dir),
        weights=check_weights(provenance),
        inputs=provenance.clip_inputs,
        device=device,
        flow_dir=str(flow_dir) if flow_dir else None,
    )


def gallery_twin(rows: pd.DataFrame, path: Path, size: tuple[int, int] | None = None) -> tuple[str, str] | None:
    """(video_id, split) of the gallery video whose file holds the same bytes as ``path``, if any.

    ``rows`` needs ``video_id``, ``split`` and ``path`` (an index's id map); with
    ``width`` and ``height`` columns and ``size`` = (width, height), only videos of
    that frame size are looked at. Files of another byte count are skipped on a
    ``stat``, so only true candidates are hashed.
    """
    if size is not None and {"width", "height"} <= set(rows.columns):
        rows = rows[(rows["width"] == size[0]) & (rows["height"] == size[1])]
    length = path.stat().st_size
    digest = None
    for video_id, split, other in rows[["video_id", "split", "path"]].drop_duplicates("video_id").itertuples(index=False):
        try:
            if os.stat(other).st_size != length:
                continue
        except OSError:
            continue
        digest = digest or sha256_file(path)
        if sha256_file(other) == digest:
            return str(video_id), str(split)
    return None


def _raise(error: Exception, path: Path) -> None:
    if isinstance(error, VpipeError):
        raise error
    raise DecodeError(f"query video {path} could not be read: {error}") from error


def probe_query(path: str | Path) -> VideoInfo:
    """Probe a query file, so that one that is missing or does not decode fails before any other work."""
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise DecodeError(f"query video {path} does not exist; give the path of a video file")
    from vpipe.video.decode import probe_video  # PyAV: only when a query is searched

    return probe_video(path)


@contextmanager
def query_video(
    path: str | Path, *, device: str = "auto", twin: tuple[str, str] | None = None, info: VideoInfo | None = None
) -> Iterator[QueryVideo]:
    """A :class:`QueryVideo` whose scratch directory is removed on exit.

    ``info`` is the file's :func:`probe_query` result, probed here when not given.
    ``twin`` is the (video_id, split) of the gallery video with the same bytes
    (:func:`gallery_twin`): the query is then planned exactly as that video was.
    """
    info = info or probe_query(path)
    path = Path(path).expanduser().resolve()
    with tempfile.TemporaryDirectory(prefix="vpipe-query-") as scratch:
        yield QueryVideo(path, Path(scratch), info, device=device, twin=twin)


class QueryVideo:
    """One new video and a scratch directory for its flow and features (see :func:`query_video`)."""

    def __init__(
        self, path: Path, scratch: Path, info: VideoInfo, *, device: str = "auto",
        twin: tuple[str, str] | None = None,
    ) -> None:  # fmt: skip
        self.path = path
        self.scratch = scratch
        #: The id its plan is seeded with and its features are stored under.
        self.video_id, self.split = twin or (path.name, "test")
        self.device = device
        self.info = info
        self._probes: dict[str, VideoInfo] = {"auto": info}
        self._flows: dict[str, Path] = {}
        self._features: dict[str, Path] = {}

    def job(self, provenance: FeatureProvenance) -> VideoJob:
        """The video's view-0 clips under the recorded sampler and decoder."""
        decoder = provenance.decoder
        if decoder not in self._probes:
            from vpipe.video.decode import probe_video

            self._probes[decoder] = probe_video(self.path, decoder=decoder)
        info = self._probes[decoder]
        rows = plan_video(self.video_id, info.num_frames, info.height, info.width, self.split, sampler_from(provenance))
        clips = tuple(
            ClipSpec(
                clip=row["clip"],
                view=0,
                frames=tuple(row["frames"]),
                crop=Crop(row["resize_h"], row["resize_w"], row["crop_y"], row["crop_x"], row["crop_h"],
                          row["crop_w"], row["flip"]),
            )
            for row in rows
            if row["view"] == 0
        )  # fmt: skip
        return VideoJob(self.video_id, str(self.path), info.num_frames, clips)

    def _flow(self, provenance: FeatureProvenance) -> Path:
        """TV-L1 flow of the clips, with the flow cache's recorded settings, computed once per plan."""
        from vpipe.flow.compute import flow_videos

        key = provenance.plan
        if provenance.flow is None:
            raise StageError(
                f"the index records no flow settings for features built from flow with plan {key!r}; "
                f"rebuild the index to embed new videos"
            )
        if key not in self._flows:
            directory = self.scratch / "flow" / key
            (result,) = flow_videos(flow_config(provenance.flow, directory, self.device), [self.job(provenance)])
            if isinstance(result, Exception):
                _raise(result, self.path)
            write_index(directory, result)
            self._flows[key] = directory
        return self._flows[key]

    def features(self, name: str, provenance: FeatureProvenance) -> FeatureSet:
        """Feature set ``name`` of this video alone, extracted with its recorded provenance.

        Flow is computed only when the set was built from flow.
        """
        from vpipe.extract.features import extract_videos

        if name not in self._features:
            directory = self.scratch / "features" / name
            flow_dir = self._flow(provenance) if "flow" in provenance.clip_inputs else None
            config = extract_config(provenance, directory, self.device, flow_dir)
            (result,) = extract_videos(config, [self.job(provenance)])
            if isinstance(result, Exception):
                _raise(result, self.path)
            write_index(directory, result)
            self._features[name] = directory
        from vpipe.store.reader import FeatureSet  # torch: only when a query reads its features

        return FeatureSet.open(self._features[name])
