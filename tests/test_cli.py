"""The command line end to end, on tiny generated videos."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from vpipe.cli.app import app
from vpipe.video.write import write_video

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def moving_square(num_frames: int, size=(48, 64), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    frames = np.full((num_frames, *size, 3), 40, np.uint8)
    for t in range(num_frames):
        y, x = 8 + t % 20, 4 + 2 * t % 40
        frames[t, y : y + 12, x : x + 12] = rng.integers(100, 255, 3)
    return frames


def make_folder_tree(tmp_path: Path) -> Path:
    """Two classes of good videos plus one zero-byte, one truncated and one non-video file."""
    root = tmp_path / "clips"
    for label, cls in enumerate(["jump", "run"]):
        for k in range(5):
            write_video(root / cls / f"{cls}_{k}.avi", moving_square(20 + 3 * k, seed=label * 10 + k))
    (root / "jump" / "zero_bytes.avi").write_bytes(b"")
    good = (root / "run" / "run_0.avi").read_bytes()
    (root / "run" / "truncated.avi").write_bytes(good[: len(good) // 20])
    (root / "run" / "notes_not_video.mp4").write_text("this is not a video\n" * 50)
    return root


@pytest.fixture
def folder_tree(tmp_path: Path) -> Path:
    return make_folder_tree(tmp_path)


def test_every_command_has_help_with_an_example():
    top = invoke("--help")
    assert top.exit_code == 0
    commands = [c for c in app.registered_commands]
    assert {c.name for c in commands} >= {"datasets", "probe", "plan", "status", "run"}
    for command in commands:
        result = invoke(command.name, "--help")
        assert result.exit_code == 0, command.name
        assert "Example: vpipe" in result.output, f"{command.name} --help shows no example"


def test_datasets_lists_every_adapter_as_json():
    result = invoke("datasets", "--json")
    names = {row["name"] for row in json.loads(result.stdout)}
    assert names == {"ucf101", "hmdb51", "kinetics", "folder", "csv", "synthetic"}


TINY = ["-o", "need=8", "-o", "size=32", "-o", "short_side=48", "--clusters", "4", "--workers", "0"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """The whole chain once on the folder tree with broken files; tests read its artifacts."""
    tmp = tmp_path_factory.mktemp("run")
    root = make_folder_tree(tmp)
    ws = tmp / "ws"
    args = ["run", "--dataset", "clips", "--adapter", "folder", "--root", root, "--workspace", ws, *TINY]
    first = invoke(*args)
    return args, ws / "clips", first


def test_bad_input_files_are_recorded_and_the_rest_finishes(tiny_run):
    _, ws, result = tiny_run
    assert result.exit_code == 0, result.output
    assert "3 failed" in result.output
    manifest = pd.read_parquet(ws / "manifest.parquet")
    failed = manifest[manifest.status == "failed"]
    assert sorted(failed.video_id) == ["jump/zero_bytes", "run/notes_not_video", "run/truncated"]
    assert all(failed.error.str.len() > 0)
    ok = manifest[manifest.status == "ok"].set_index("video_id")
    assert len(ok) == 10
    assert ok.loc["jump/jump_3", "num_frames"] == 29
    assert (ok.width == 64).all() and (ok.height == 48).all()
    failures = pd.read_parquet(ws / "failures.parquet")
    assert sorted(failures.video_id) == sorted(failed.video_id)
    assert set(failures.stage) == {"probe"}
    for row in failures.itertuples():
        assert row.path.endswith(row.video_id.split("/")[1] + Path(row.path).suffix)
    plan = pd.read_parquet(ws / "plans" / "li3d.parquet")
    assert set(plan.video_id) == set(ok.index)
    assert all(len(f) == 8 for f in plan.frames)


def test_main_job_caches_flow_and_features_of_every_good_video(tiny_run):
    _, ws, _ = tiny_run
    from vpipe.store.reader import FeatureSet

    with FeatureSet.open(ws / "flow" / "li3d") as flow:
        assert len(flow.video_ids()) == 10
        field = flow.clips("jump/jump_0", layer="flow")
        assert field.shape == (1, 8, 2, 32, 32) and field.dtype == np.uint8
    for name in ("li3d-rgb", "li3d-flow"):
        with FeatureSet.open(ws / "features" / name) as features:
            assert len(features.video_ids()) == 10
            assert features.sequence("run/run_2").shape == (1, 1024)
            assert features.provenance["weights_sha256"] == "random"
    assert (ws / "codebooks" / "li3d-rgb-k4.h5").exists()


def test_strict_turns_failed_items_into_a_non_zero_exit(tiny_run):
    args, _, _ = tiny_run
    assert invoke(*args, "--strict").exit_code == 1


def test_second_run_does_nothing_and_status_counts(tiny_run):
    args, ws, _ = tiny_run
    report = json.loads(invoke(*args, "--json").stdout)
    assert [s["computed"] for s in report["stages"]] == [0] * len(report["stages"])
    assert report["failed"] == 3
    status = json.loads(invoke("status", "--dataset", "clips", "--workspace", ws.parent, *TINY[:6], "--json").stdout)
    assert (status["probe"]["done"], status["probe"]["failed"], status["probe"]["total"]) == (10, 3, 13)
    assert (status["plan"]["done"], status["plan"]["failed"], status["plan"]["total"]) == (10, 0, 10)
    assert status["extract:li3d-rgb"]["done"] == status["extract:li3d-flow"]["done"] == 10


def test_dry_run_on_finished_runs_then_on_stale_ones_runs_evaluate_after_train(tiny_run):
    args, ws, _ = tiny_run

    def artifacts() -> dict[Path, int]:  # the state directory caches fingerprints: not an artifact
        return {p: p.stat().st_mtime_ns for p in ws.rglob("*") if p.is_file() and ".state" not in p.parts}

    before = artifacts()
    finished = json.loads(invoke(*args, "--dry-run", "--json").stdout)
    assert all(s["done"] == s["total"] - s["failed"] and "after" not in s for s in finished.values()), finished

    clusters = args.index("--clusters")
    changed = [*args[: clusters + 1], "5", *args[clusters + 2 :]]
    stale = json.loads(invoke(*changed, "--dry-run", "--json").stdout)
    assert stale["extract:li3d-rgb"]["done"] == 10 and "after" not in stale["extract:li3d-rgb"]
    assert stale["encode:li3d-rgb"]["new"] == 1, "a codebook of another K is another artifact"
    assert stale["retrieval"]["after"] == ["encode:li3d-rgb"]
    trains = [name for name in stale if name.startswith("train:")]
    assert all(stale[name]["why"] == "head_options.clusters: 4 -> 5" for name in trains), "each head takes K from --clusters"
    assert stale["evaluate"]["after"] == trains
    assert "evaluate: will run after train (4 stages)" in invoke(*changed, "--dry-run").stdout
    assert artifacts() == before, "a dry run writes no artifact"


def test_replacing_a_broken_video_reprobes_only_it(folder_tree, tmp_path):
    args = ["probe", "--dataset", "clips", "--adapter", "folder", "--root", folder_tree,
            "--workspace", tmp_path / "ws", "--workers", "0", "--json"]
    invoke(*args)
    write_video(folder_tree / "jump" / "zero_bytes.avi", moving_square(12))
    report = json.loads(invoke(*args).stdout)["stages"][0]
    assert (report["computed"], report["failed"], report["done"]) == (1, 2, 11)


def test_status_before_anything_ran_says_what_to_do(tmp_path):
    result = invoke("status", "--dataset", "ucf101", "--workspace", tmp_path)
    assert result.exit_code == 1
    assert "vpipe probe --dataset ucf101" in result.output


def test_usage_errors_exit_2_and_runtime_errors_exit_1(tmp_path):
    assert invoke("run", "--workers", "-3", "--dataset", "x").exit_code == 2
    missing_root = invoke("probe", "--dataset", "ucf101", "--workspace", tmp_path)
    assert missing_root.exit_code == 1
    assert "needs --root" in missing_root.output
    unknown = invoke("probe", "--dataset", "ucf1O1", "--root", tmp_path, "--workspace", tmp_path)
    assert unknown.exit_code == 1
    assert "ucf101" in unknown.output
    bad_option = invoke("plan", "--dataset", "x", "--workspace", tmp_path, "-o", "nede=3")
    assert bad_option.exit_code == 1


@pytest.mark.slow
def test_synthetic_main_job_runs_every_stage_then_does_nothing(tmp_path):
    """The whole main job on a small synthetic set (small crops keep it to seconds)."""
    args = ["run", "--dataset", "synthetic", "--workspace", tmp_path, "--videos-per-class", "4", "--workers", "0",
            "-o", "size=32", "-o", "short_side=48", "-o", "need=8", "--json"]
    first = invoke(*args)
    assert first.exit_code == 0, first.output
    stages = {s["stage"]: s for s in json.loads(first.stdout)["stages"]}
    names = list(stages)
    assert names[:8] == [
        "probe", "plan", "flow", "extract:li3d-rgb", "extract:li3d-flow", "extract:hoghofmbh", "encode:li3d-rgb",
        "retrieval",
    ]  # fmt: skip
    retrieval = stages["retrieval"]["details"]["retrieval"]
    assert retrieval["embedding"] == "encodings:li3d-rgb-k16-vlad" and retrieval["index"] == "li3d-rgb-k16-vlad"
    assert all(0.0 <= retrieval[key] <= 1.0 for key in ("R@1", "R@5", "mAP")) and retrieval["R@1"] <= retrieval["R@5"]
    evaluation = json.loads((tmp_path / "synthetic" / "index" / "li3d-rgb-k16-vlad-evaluation.json").read_text())
    assert evaluation["R@1"] == retrieval["R@1"] and evaluation["gallery"] == "train"
    trains = names[8:-1]
    assert names[-1] == "evaluate" and all(name.startswith("train:") for name in trains)
    assert trains == ["train:li3d-rgb", "train:li3d-flow", "train:li3d-rgb+li3d-flow-late", "train:hoghofmbh"]
    manifest = pd.read_parquet(tmp_path / "synthetic" / "manifest.parquet")
    assert (manifest.status == "ok").all() and len(manifest) == 14 * 4
    assert manifest.label.min() == 0 and manifest.label.nunique() == manifest.label_name.nunique() == 14
    assert (manifest.num_frames < 16).any(), "some synthetic videos are shorter than a clip"
    assert stages["probe"]["done"] == 56 and stages["extract:li3d-flow"]["done"] == 56
    accuracies = stages["evaluate"]["details"]["accuracy"]
    assert len(accuracies) == 4 and all(0.0 <= value <= 1.0 for value in accuracies.values())
    assert stages["extract:hoghofmbh"]["done"] == 56
    for train in trains:
        run_dir = Path(stages[train]["artifact"])
        for name in ("config.json", "checkpoint.pt", "history.csv", "metrics.json"):
            assert (run_dir / name).exists(), (train, name)
    assert (tmp_path / "synthetic" / "report.md").exists()
    second = json.loads(invoke(*args).stdout)
    assert sum(s["computed"] for s in second["stages"]) == 0
    text = invoke(*args[:-1]).output
    assert f"retrieval (encodings:li3d-rgb-k16-vlad, test queries against train videos): R@1 {retrieval['R@1']:.3f}" in text


def test_kinetics_clips_missing_from_disk_are_recorded_and_the_rest_finishes(tmp_path):
    root = tmp_path / "k400"
    (root / "annotations").mkdir(parents=True)
    (root / "annotations" / "train.csv").write_text(
        "label,youtube_id,time_start,time_end,split\n"
        "abseiling,aaaaaaaaaaa,0,10,train\n"
        "zumba,bbbbbbbbbbb,5,15,train\n"
        "zumba,never_downl,0,10,train\n"
    )
    write_video(root / "train" / "abseiling" / "aaaaaaaaaaa_000000_000010.mp4", moving_square(12), codec="h264")
    write_video(root / "train" / "zumba" / "bbbbbbbbbbb_000005_000015.mp4", moving_square(14, seed=3), codec="h264")
    result = invoke("probe", "--dataset", "kinetics", "--root", root, "--workspace", tmp_path / "ws",
                    "--workers", "0", "--json")
    assert result.exit_code == 0, result.output
    failures = pd.read_parquet(tmp_path / "ws" / "kinetics" / "failures.parquet")
    assert failures.video_id.tolist() == ["never_downl_000000_000010"]
    assert "never_downl_000000_000010.mp4" in failures.error.item()
    manifest = pd.read_parquet(tmp_path / "ws" / "kinetics" / "manifest.parquet").set_index("video_id")
    assert manifest.loc["bbbbbbbbbbb_000005_000015", "num_frames"] == 14
    assert manifest.loc["never_downl_000000_000010", "status"] == "failed"


def test_a_log_file_gets_progress_lines_and_quiet_gets_none(folder_tree, tmp_path):
    """What `vpipe probe ... > log 2>&1` shows; stdout stays clean JSON either way."""
    args = ["probe", "--dataset", "clips", "--adapter", "folder", "--root", folder_tree, "--workers", "0", "--json"]
    logged = invoke(*args, "--workspace", tmp_path / "a", "--log-every", "0.1")
    assert logged.exit_code == 0
    assert json.loads(logged.stdout)["stages"][0]["done"] == 10
    lines = logged.stderr.splitlines()
    assert re.match(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d probe: finished 13/13, 3 failed in \d+s \(", lines[-1]), lines
    assert sum("probe: run/truncated:" in line for line in lines) == 1, "each failure named once"
    quiet = invoke(*args, "--workspace", tmp_path / "b", "--quiet")
    assert json.loads(quiet.stdout)["stages"][0]["failed"] == 3
    assert "finished" not in quiet.stderr and "ETA" not in quiet.stderr
    assert len(quiet.stderr.splitlines()) == 3, "only the three failures"
