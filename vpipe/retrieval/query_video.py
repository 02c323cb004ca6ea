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

Random choices of a plan (li3d's window for a video longer than ``need``) are
seeded by the video's id, here the file name; a copy of a dataset video under
another name can therefore get another window.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from vpipe.errors import DecodeError, VpipeError, WeightsError
from vpipe.models import sha256_file
from vpipe.store import FeatureSet, write_index
from vpipe.video.decode import VideoInfo, probe_video
from vpipe.video.jobs import ClipSpec, VideoJob
from vpipe.video.plan import SamplerConfig, plan_video
from vpipe.video.views import Crop


def check_weights(provenance: dict[str, Any]) -> str | None:
    """The recorded weights path (None for random init), after checking it is the same file."""
    weights = provenance.get("weights", "random")
    if weights == "random":
        return None
    if not Path(weights).is_file() or sha256_file(weights) != provenance.get("weights_sha256"):
        raise WeightsError(
            f"weights {weights} are missing or changed since the features were extracted "
            f"(sha256 {provenance.get('weights_sha256')}); restore that file to embed new videos like the gallery"
        )
    return str(weights)


def _raise(error: Exception, path: Path) -> None:
    if isinstance(error, VpipeError):
        raise error
    raise DecodeError(f"query video {path} could not be read: {error}") from error


@contextmanager
def query_video(path: str | Path, *, device: str = "auto") -> Iterator[QueryVideo]:
    """A :class:`QueryVideo` whose scratch directory is removed on exit.

    The file is probed first, so one that does not decode fails before any other work.
    """
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise DecodeError(f"query video {path} does not exist; give the path of a video file")
    info = probe_video(path)
    with tempfile.TemporaryDirectory(prefix="vpipe-query-") as scratch:
        yield QueryVideo(path, Path(scratch), info, device=device)


class QueryVideo:
    """One new video and a scratch directory for its flow and features (see :func:`query_video`)."""

    def __init__(self, path: Path, scratch: Path, info: VideoInfo, *, device: str = "auto") -> None:
        self.path = path
        self.scratch = scratch
        self.video_id = path.name
        self.device = device
        self._probes: dict[str, VideoInfo] = {"auto": info}
        self._flows: dict[str, Path] = {}
        self._features: dict[str, Path] = {}

    def job(self, provenance: dict[str, Any]) -> VideoJob:
        """The video's view-0 clips under the recorded sampler and decoder."""
        decoder = str(provenance.get("decoder", "auto"))
        if decoder not in self._probes:
            self._probes[decoder] = probe_video(self.path, decoder=decoder)
        info = self._probes[decoder]
        sampler = SamplerConfig(**provenance["sampler"])
        rows = plan_video(self.video_id, info.num_frames, info.height, info.width, "test", sampler)
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
        )
        return VideoJob(self.video_id, str(self.path), info.num_frames, clips)

    def _flow(self, provenance: dict[str, Any]) -> Path:
        """TV-L1 flow of the clips, with the flow cache's recorded settings, computed once per plan."""
        from vpipe.flow.compute import FlowConfig, flow_videos

        flow = provenance["flow"]
        key = str(provenance["plan"])
        if key not in self._flows:
            directory = self.scratch / "flow" / key
            config = FlowConfig(
                out_dir=str(directory),
                stack=int(flow.get("stack", 0)),
                encoding=str(flow.get("encoding", "uint8")),
                bound=float(flow.get("bound", 20.0)),
                device=self.device,
                decoder=str(flow.get("decoder", "auto")),
                tvl1_params=tuple(sorted(flow.get("tvl1_params", {}).items())),
            )
            (result,) = flow_videos(config, [self.job(provenance)])
            if isinstance(result, Exception):
                _raise(result, self.path)
            write_index(directory, result)
            self._flows[key] = directory
        return self._flows[key]

    def features(self, name: str, provenance: dict[str, Any]) -> FeatureSet:
        """Feature set ``name`` of this video alone, extracted with its recorded provenance."""
        from vpipe.extract.features import ExtractConfig, extract_videos

        if name not in self._features:
            directory = self.scratch / "features" / name
            inputs = tuple(provenance.get("inputs") or [provenance["stream"]])
            flow_dir = self._flow(provenance) if "flow" in inputs else None
            config = ExtractConfig(
                backbone=str(provenance["backbone"]),
                stream=str(provenance["stream"]),
                out_dir=str(directory),
                weights=check_weights(provenance),
                options=tuple(sorted(dict(provenance.get("options", {})).items())),
                device=self.device,
                decoder=str(provenance.get("decoder", "auto")),
                flow_dir=str(flow_dir) if flow_dir else None,
                inputs=inputs,
                weights_sha256=str(provenance.get("weights_sha256", "random")),
            )
            (result,) = extract_videos(config, [self.job(provenance)])
            if isinstance(result, Exception):
                _raise(result, self.path)
            write_index(directory, result)
            self._features[name] = directory
        return FeatureSet.open(self._features[name])
