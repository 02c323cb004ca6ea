"""Trusting the cache: atomic writes, checksums, ``vpipe verify --repair``, fault injection.

Faults are injected into a real feature cache (four tiny videos, two per shard): bytes
flipped inside a shard, a shard truncated, a codebook damaged, NaN out of the model, a
write over a file-size limit. Each must be detected and named, and repair plus a rerun
must recompute exactly the damaged videos and give the original features back.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

import vpipe.extract.features
from tests.test_flow_stage import build_workspace, moving_texture
from vpipe.artifacts import atomic_path, atomic_write_text, read_digest_file, sha256_file
from vpipe.cli.app import app
from vpipe.errors import CorruptArtifactError
from vpipe.pipeline.executor import InProcessExecutor
from vpipe.pipeline.journal import Journal
from vpipe.pipeline.runner import run_stage, stage_status
from vpipe.pipeline.workspace import DatasetWorkspace
from vpipe.stages.extract import ExtractStage
from vpipe.stages.verify import repair, verify
from vpipe.store import FeatureSet, ShardWriter, orphan_shards, read_index, write_index


def extract(ws: DatasetWorkspace) -> ExtractStage:
    return ExtractStage(ws, backbone="li3d", batch_size=4, videos_per_task=2)


def all_features(directory: Path) -> dict[tuple[str, int, int], np.ndarray]:
    with FeatureSet.open(directory) as features:
        return {(v, c, w): arrays["pool"] for v, c, w, arrays in features}


@pytest.fixture
def cache(tmp_path: Path) -> tuple[DatasetWorkspace, dict]:
    """Four videos in two shards, extracted once; the features as first written."""
    videos = {f"{c}/v{k}": moving_texture(10, seed=k + 2 * i) for i, c in enumerate("ab") for k in range(2)}
    ws = build_workspace(tmp_path, videos)
    report = run_stage(extract(ws), InProcessExecutor(), progress=False)
    assert (report.done, report.failed) == (4, 0)
    return ws, all_features(ws.features_dir("li3d-rgb"))


def shard_of(ws: DatasetWorkspace, video_id: str) -> tuple[Path, set[str]]:
    index = read_index(ws.features_dir("li3d-rgb"))
    shard = index.loc[index["video_id"] == video_id, "shard"].iloc[0]
    return ws.features_dir("li3d-rgb") / shard, set(index.loc[index["shard"] == shard, "video_id"])


def flip_bytes(path: Path, offset_fraction: float = 0.5, count: int = 4096) -> None:
    data = bytearray(path.read_bytes())
    start = int(len(data) * offset_fraction)
    for i in range(start, min(start + count, len(data))):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def test_atomic_path_commits_on_success_and_leaves_nothing_on_error(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "table.txt"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half of the new")
        raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert sorted(p.name for p in target.parent.iterdir()) == ["table.txt"]


LIMITED = """
import resource, signal
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, resource.RLIM_INFINITY))
"""


def test_a_file_size_limit_during_a_write_says_disk_full_and_leaves_no_file(tmp_path: Path) -> None:
    """RLIMIT_FSIZE stands in for a full disk: one "disk full at PATH" line, nothing left."""
    script = LIMITED + f"""
from pathlib import Path
import pandas as pd
from vpipe.errors import VpipeError
from vpipe.pipeline.tables import write_table
try:
    write_table(pd.DataFrame({{"x": range(200_000)}}), Path({str(tmp_path / "t.parquet")!r}), fingerprint="f")
except VpipeError as error:
    print(error)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.stdout.startswith(f"disk full at {tmp_path / 't.parquet'}"), result.stdout + result.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_shard_writer_killed_by_a_full_disk_leaves_no_shard(tmp_path: Path) -> None:
    """HDF5 may take the process down when its writes fail; what remains is only a
    hidden temporary, which the next index rebuild sweeps, never a shard that looks whole."""
    script = LIMITED + f"""
from pathlib import Path
import numpy as np
from vpipe.store import ShardWriter
with ShardWriter(Path({str(tmp_path / "shard-0.h5")!r}), attrs={{}}) as writer:
    for clip in range(50):
        writer.add("v", clip, 0, {{"pool": np.ones(8192, np.float32)}})
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith(".")] == []
    assert orphan_shards(tmp_path, pd.DataFrame({"shard": []}, dtype=str)) == [tmp_path / ".shard-0.h5.tmp"]


def test_shards_record_size_and_sha256_and_chunk_checksums(cache) -> None:
    ws, _ = cache
    directory = ws.features_dir("li3d-rgb")
    index = read_index(directory)
    catalogue = json.loads(pq.read_schema(directory / "index.parquet").metadata[b"vpipe.shards"])
    assert set(catalogue) == set(index["shard"]) and len(catalogue) == 2
    for shard, entry in catalogue.items():
        path = directory / shard
        assert entry == {"bytes": path.stat().st_size, "sha256": sha256_file(path)}
        with h5py.File(path) as handle:
            assert handle["layers/pool"].fletcher32
    assert verify(ws).ok


def test_flipped_bytes_are_named_with_their_videos_and_repair_recomputes_only_them(cache) -> None:
    ws, original = cache
    shard, videos = shard_of(ws, "a/v0")
    flip_bytes(shard)
    with FeatureSet.open(ws.features_dir("li3d-rgb")) as features, pytest.raises(CorruptArtifactError) as caught:
        for video in sorted(videos):
            features.clips(video)
    message = str(caught.value)
    assert str(shard) in message and "\n" not in message and "vpipe verify" in message
    assert all(video in message for video in videos)

    report = verify(ws)
    assert [(p.path, set(p.videos)) for p in report.problems] == [(str(shard), videos)]
    assert "SHA-256" in report.problems[0].line()

    counts = repair(ws, report.problems)
    assert counts == {"videos": 2, "files": 1}
    status = stage_status(extract(ws))
    assert (status.done, status.total) == (2, 4), "a repaired stage is not done"
    rerun = run_stage(extract(ws), InProcessExecutor(), progress=False)
    assert (rerun.computed, rerun.up_to_date) == (2, 2)
    assert verify(ws).ok
    again = all_features(ws.features_dir("li3d-rgb"))
    assert again.keys() == original.keys()
    for key, value in original.items():
        np.testing.assert_array_equal(again[key], value)


def test_a_truncated_shard_makes_status_not_done_and_run_recomputes_it(cache) -> None:
    ws, original = cache
    shard, videos = shard_of(ws, "b/v1")
    shard.write_bytes(shard.read_bytes()[:3000])
    status = stage_status(extract(ws))
    assert (status.done, status.damaged) == (2, 2)
    with FeatureSet.open(ws.features_dir("li3d-rgb")) as features, pytest.raises(CorruptArtifactError, match="b/v1"):
        features.clips("b/v1")
    problems = verify(ws).problems
    assert len(problems) == 1 and "truncated" in problems[0].detail and set(problems[0].videos) == videos
    rerun = run_stage(extract(ws), InProcessExecutor(), progress=False)
    assert (rerun.computed, rerun.done) == (2, 4)
    assert verify(ws).ok
    again = all_features(ws.features_dir("li3d-rgb"))
    for key, value in original.items():
        np.testing.assert_array_equal(again[key], value)


def test_a_deleted_feature_set_is_not_done_and_run_extracts_it_again(cache) -> None:
    ws, original = cache
    shutil.rmtree(ws.features_dir("li3d-rgb"))
    status = stage_status(extract(ws))
    assert (status.done, status.damaged) == (0, 4)
    rerun = run_stage(extract(ws), InProcessExecutor(), progress=False)
    assert (rerun.computed, rerun.done) == (4, 4)
    again = all_features(ws.features_dir("li3d-rgb"))
    assert again.keys() == original.keys()


def test_a_run_stopped_before_its_index_resumes_from_its_shards(cache) -> None:
    """The index is written last: recorded videos whose shards exist stay done without it."""
    ws, _ = cache
    (ws.features_dir("li3d-rgb") / "index.parquet").unlink()
    assert stage_status(extract(ws)).done == 4
    shard, videos = shard_of_unindexed(ws)
    shard.unlink()
    status = stage_status(extract(ws))
    assert (status.done, status.damaged) == (4 - len(videos), len(videos))
    rerun = run_stage(extract(ws), InProcessExecutor(), progress=False)
    assert (rerun.computed, rerun.done) == (len(videos), 4)


def shard_of_unindexed(ws: DatasetWorkspace) -> tuple[Path, set[str]]:
    """A shard and the videos whose journal records point at it."""
    records = Journal(ws.state_dir / extract(ws).journal_dir.name).load()
    by_shard: dict[str, set[str]] = {}
    for key, record in records.items():
        for row in record.rows:
            by_shard.setdefault(row["shard"], set()).add(key)
    shard = sorted(by_shard)[0]
    return ws.features_dir("li3d-rgb") / shard, by_shard[shard]


def test_a_damaged_shard_without_a_recorded_digest_is_found_by_reading_it(tmp_path: Path) -> None:
    """Shards from before digests were recorded: HDF5's Fletcher-32 and the finite check."""
    directory = tmp_path / "ws" / "d" / "features" / "x-rgb"
    rows = []
    for shard, value in (("shard-a.h5", 1.0), ("shard-b.h5", np.nan)):
        with ShardWriter(directory / shard, attrs={}) as writer:
            writer.add(shard, 0, 0, {"pool": np.full(512, value, np.float32)})
        rows += [{k: v for k, v in row.items() if not k.startswith("shard_")} for row in writer.rows]
    write_index(directory, rows)
    problems = verify(DatasetWorkspace(tmp_path / "ws", "d"), ("extract",)).problems
    assert [(Path(p.path).name, p.videos) for p in problems] == [("shard-b.h5", ("shard-b.h5",))]
    assert "non-finite" in problems[0].detail
    with FeatureSet.open(directory) as features, pytest.raises(CorruptArtifactError, match="non-finite"):
        features.clips("shard-b.h5")


def test_nan_from_the_model_fails_that_video_alone(cache, monkeypatch) -> None:
    ws, original = cache
    real = vpipe.extract.features.run_model

    def poisoned(model, clips, device, precision="fp32"):
        out = real(model, clips, device, precision)
        out[0]["pool"][...] = np.nan
        return out

    monkeypatch.setattr(vpipe.extract.features, "run_model", poisoned)
    stage = ExtractStage(ws, backbone="li3d", name="poisoned", batch_size=1, videos_per_task=4)
    report = run_stage(stage, InProcessExecutor(), progress=False)
    assert (report.done, report.failed) == (0, 4), "every batch of one clip was poisoned"
    failures = pd.read_parquet(ws.failures_path)
    assert (failures["stage"] == "extract:poisoned").sum() == 4
    assert failures["error"].str.contains("non-finite").all()


def test_a_damaged_codebook_is_found_and_deleted_by_repair(cache) -> None:
    from vpipe.encode.codebook_io import Codebook, save_codebook

    ws, _ = cache
    path = ws.codebook_path("li3d-rgb", 4)
    centroids = np.arange(4 * 1024, dtype=np.float32).reshape(4, 1024)
    codebook = Codebook(centroids, np.full(4, 0.25), centroids, np.ones_like(centroids), {"fingerprint": "f"})
    save_codebook(path, codebook)
    assert read_digest_file(path) == sha256_file(path)
    assert verify(ws, ("encode",)).ok
    flip_bytes(path, 0.6, 64)
    problems = verify(ws, ("encode",)).problems
    assert [p.path for p in problems] == [str(path)]
    repair(ws, problems)
    assert not path.exists() and verify(ws).ok


def test_cli_verify_names_the_file_and_exits_1_then_repair_restores(cache) -> None:
    ws, _ = cache
    shard, videos = shard_of(ws, "a/v1")
    flip_bytes(shard, 0.3)
    runner = CliRunner()
    args = ["verify", "--dataset", ws.dataset, "--workspace", str(ws.root)]
    checked = runner.invoke(app, args, catch_exceptions=False)
    assert checked.exit_code == 1
    lines = [line for line in checked.stdout.splitlines() if str(shard) in line]
    assert len(lines) == 1 and all(video in lines[0] for video in videos)
    repaired = runner.invoke(app, [*args, "--repair", "--json"], catch_exceptions=False)
    assert json.loads(repaired.stdout)["repaired"] == {"videos": 2, "files": 1}
    assert not shard.exists()
    assert Journal(ws.state_dir / "extract-li3d-rgb").load().keys() == {"a/v0", "a/v1", "b/v0", "b/v1"} - videos
    run_stage(extract(ws), InProcessExecutor(), progress=False)
    assert runner.invoke(app, args, catch_exceptions=False).exit_code == 0


def test_an_explicit_default_option_equals_the_implicit_one_and_a_changed_default_invalidates(
    tmp_path: Path, monkeypatch
) -> None:
    import vpipe.stages.extract as extract_module

    ws = DatasetWorkspace(tmp_path, "d")
    implicit = ExtractStage(ws, backbone="vgg16").model_fingerprint()
    assert ExtractStage(ws, backbone="vgg16", options={"flow_stack": 4, "grid": None}).model_fingerprint() == implicit
    assert ExtractStage(ws, backbone="vgg16", options={"grid": [7, 7]}).model_fingerprint() != implicit
    defaults = extract_module.backbone_defaults
    monkeypatch.setattr(extract_module, "backbone_defaults", lambda name: {**defaults(name), "grid": (14, 14)})
    assert ExtractStage(ws, backbone="vgg16").model_fingerprint() != implicit


def _rewrite_records_to_typed_options(ws: DatasetWorkspace, stage: ExtractStage) -> None:
    """Make the journal look like one written before fingerprints covered resolved options."""
    from tests.fingerprint_reference import clip_signature
    from vpipe.pipeline.fingerprint import file_fingerprint, fingerprint
    from vpipe.pipeline.journal import Record
    from vpipe.stages.planned_videos import plan_jobs

    journal = Journal(stage.journal_dir)
    records = journal.load()
    typed = stage._typed_options_fingerprint()
    jobs = plan_jobs(ws, stage.plan)
    for key, r in records.items():
        inputs = fingerprint(stage.decoder, file_fingerprint(jobs[key].path))
        journal.append(Record(key, fingerprint(typed, inputs, clip_signature(jobs[key])), r.ok, r.rows, r.error))
    journal.flush()
    assert all(Journal(stage.journal_dir).load()[key].fingerprint != r.fingerprint for key, r in records.items())


def test_an_existing_cache_is_carried_over_once_when_its_recorded_options_match(cache, caplog) -> None:
    ws, _ = cache
    _rewrite_records_to_typed_options(ws, extract(ws))
    with caplog.at_level("INFO"):
        assert stage_status(extract(ws)).done == 4
    assert "4 cached videos carried over" in caplog.text
    assert run_stage(extract(ws), InProcessExecutor(), progress=False).computed == 0


def test_an_existing_cache_without_recorded_defaults_is_recomputed_with_a_warning(cache, caplog) -> None:
    ws, _ = cache
    directory = ws.features_dir("li3d-rgb")
    for shard in directory.glob("shard-*.h5"):
        with h5py.File(shard, "r+") as handle:
            provenance = json.loads(handle.attrs["provenance"])
            del provenance["resolved_options"]
            handle.attrs["provenance"] = json.dumps(provenance)
    _rewrite_records_to_typed_options(ws, extract(ws))
    with caplog.at_level("INFO"):
        assert stage_status(extract(ws)).done == 0
    assert "4 cached videos were extracted before their options were recorded" in caplog.text


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_a_damaged_checkpoint_names_its_run_and_repair_retrains_it_identically(tmp_path: Path, damage: str) -> None:
    from tests.fake_cache import make_workspace
    from tests.test_train import cfg
    from vpipe.train import train

    ws = make_workspace(tmp_path)
    first = train(ws, cfg(max_epochs=2), reuse=True)
    checkpoint = first.directory / "checkpoint.pt"
    assert read_digest_file(checkpoint) == sha256_file(checkpoint)
    assert verify(ws, ("train",)).ok
    original = checkpoint.read_bytes()
    if damage == "flip":
        flip_bytes(checkpoint, 0.5, 256)
    elif damage == "truncate":
        checkpoint.write_bytes(original[: len(original) // 3])
    else:
        checkpoint.unlink()
    [problem] = verify(ws, ("train",)).problems
    assert problem.path == str(checkpoint) and f"run {first.run_id}" in problem.line()
    assert problem.kind == ("missing" if damage == "delete" else "corrupt")
    repair(ws, [problem])
    assert not first.directory.exists()
    again = train(ws, cfg(max_epochs=2), reuse=True)
    assert not again.reused and again.run_id == first.run_id and again.metrics["accuracy"] == first.metrics["accuracy"]
    assert verify(ws, ("train",)).ok


def test_a_checkpoint_without_a_digest_is_checked_as_an_archive(tmp_path: Path) -> None:
    """Runs finished before checkpoints had digests are read member by member (CRC-32)."""
    from tests.fake_cache import make_workspace
    from tests.test_train import cfg
    from vpipe.artifacts import digest_file_path
    from vpipe.train import train

    ws = make_workspace(tmp_path)
    checkpoint = train(ws, cfg(max_epochs=1)).directory / "checkpoint.pt"
    digest_file_path(checkpoint).unlink()
    assert verify(ws, ("train",)).ok
    flip_bytes(checkpoint, 0.5, 256)
    [problem] = verify(ws, ("train",)).problems
    assert problem.kind == "corrupt" and str(checkpoint) == problem.path


@pytest.mark.parametrize("target", ["faiss", "centring", "truncate"])
def test_a_damaged_retrieval_index_is_named_and_rebuilt_identically(tmp_path: Path, target: str) -> None:
    from tests.test_retrieval import clustered_videos, fake_workspace
    from vpipe.retrieval import build_index
    from vpipe.retrieval.store import centring_path, faiss_path

    ws = fake_workspace(tmp_path, clustered_videos(40, 8))
    assert build_index(ws, "encodings:toy-k1-vlad")["written"]
    name = "toy-k1-vlad"
    faiss_file, centring = faiss_path(ws, name), centring_path(ws, name)
    originals = {path: path.read_bytes() for path in (faiss_file, centring)}
    assert verify(ws, ("index",)).ok
    if target == "faiss":
        flip_bytes(faiss_file, 0.5, 16)
    elif target == "centring":
        flip_bytes(centring, 0.5, 16)
    else:
        faiss_file.write_bytes(originals[faiss_file][:100])
    [problem] = verify(ws, ("index",)).problems
    assert f"index {name}" in problem.line() and problem.kind == "corrupt"
    assert problem.path == str(centring if target == "centring" else faiss_file)
    repair(ws, [problem])
    assert not faiss_file.exists() and not centring.exists()
    assert build_index(ws, "encodings:toy-k1-vlad")["written"]
    assert {path: path.read_bytes() for path in originals} == originals
    assert verify(ws).ok


#: Each kind of artifact write, run in a child process that is SIGKILLed once the data is
#: written but before the rename that publishes it: the worst moment to die.
KILLED_WRITES = {
    "table": """
from vpipe.pipeline.tables import write_table
write_table(pd.DataFrame({"x": range(1000)}), target, fingerprint="f")
""",
    "shard": """
from vpipe.store import ShardWriter
with ShardWriter(target, attrs={}) as writer:
    writer.add("v", 0, 0, {"pool": np.ones(64, np.float32)})
""",
    "codebook": """
from vpipe.encode.codebook_io import Codebook, save_codebook
c = np.ones((4, 8), np.float32)
save_codebook(target, Codebook(c, np.full(4, 0.25), c, c, {"fingerprint": "f"}))
""",
    "checkpoint": """
import torch
from vpipe.train.trainer import _save_checkpoint
_save_checkpoint(target, torch.nn.Linear(4, 2), {}, 1)
""",
}
KILL_BEFORE_RENAME = """
import os, signal, sys
from pathlib import Path
import numpy as np
import pandas as pd
target = Path(sys.argv[1])
rename = os.replace
def replace(src, dst, *args, **kwargs):
    if Path(dst) == target:
        os.kill(os.getpid(), signal.SIGKILL)
    rename(src, dst, *args, **kwargs)
os.replace = replace
"""


@pytest.mark.parametrize("kind", sorted(KILLED_WRITES))
def test_sigkill_during_a_write_leaves_the_old_file_or_none(tmp_path: Path, kind: str) -> None:
    target = tmp_path / {"table": "t.parquet", "shard": "shard-0.h5", "codebook": "c.h5", "checkpoint": "c.pt"}[kind]
    script = KILL_BEFORE_RENAME + KILLED_WRITES[kind]
    killed = subprocess.run([sys.executable, "-c", script, str(target)], capture_output=True, text=True, timeout=120)
    assert killed.returncode == -9, killed.stderr
    assert not target.exists() and not any(p.name == target.name for p in tmp_path.iterdir())
    target.write_bytes(b"previous version")
    subprocess.run([sys.executable, "-c", script, str(target)], capture_output=True, timeout=120)
    assert target.read_bytes() == b"previous version", "a killed rewrite leaves the previous file intact"
    finished = script.replace("os.replace = replace\n", "")
    subprocess.run([sys.executable, "-c", finished, str(target)], check=True, capture_output=True, timeout=120)
    assert target.read_bytes() != b"previous version"
    assert not list(tmp_path.glob(".*.tmp*")), "a finished rewrite replaces the killed writer's leftover"


def test_status_says_a_run_recomputes_a_deleted_feature_set(cache) -> None:
    ws, _ = cache
    shutil.rmtree(ws.features_dir("li3d-rgb"))
    args = ["status", "--dataset", ws.dataset, "--workspace", str(ws.root)]
    out = CliRunner().invoke(app, args, catch_exceptions=False).stdout
    line = next(line for line in out.splitlines() if line.startswith("extract:li3d-rgb"))
    assert "0 done" in line and "4 damaged (shards missing or resized): `vpipe run` recomputes them" in line


def test_verify_names_a_deleted_feature_set_and_repair_marks_its_videos_stale(cache) -> None:
    ws, original = cache
    shutil.rmtree(ws.features_dir("li3d-rgb"))
    problems = verify(ws).problems
    assert {p.kind for p in problems} == {"missing"} and len(problems) == 2  # the two shards
    assert sorted(v for p in problems for v in p.videos) == ["a/v0", "a/v1", "b/v0", "b/v1"]
    assert repair(ws, problems) == {"videos": 4, "files": 2}
    assert Journal(ws.state_dir / "extract-li3d-rgb").load() == {}
    assert verify(ws).ok
    rerun = run_stage(extract(ws), InProcessExecutor(), progress=False)
    assert (rerun.computed, rerun.done) == (4, 4)
    assert all_features(ws.features_dir("li3d-rgb")).keys() == original.keys()
