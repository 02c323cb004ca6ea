"""Dataset adapters against tiny trees written in each collection's official formats.

Videos are empty placeholder files: adapters only list files, they never decode.
Expected labels and splits are written out by hand from the split files built here.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from vpipe.data.base import VideoEntry
from vpipe.splits import SPLITS
from vpipe.data.csvlist import CsvList
from vpipe.data.folder import Folder
from vpipe.data.hmdb51 import HMDB51
from vpipe.data.kinetics import Kinetics
from vpipe.data.registry import DATASETS, get_dataset, list_datasets
from vpipe.data.ucf101 import UCF101
from vpipe.errors import ConfigError, DatasetError


def touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")


def write_crlf(path: Path, lines: list[str]) -> None:
    """Write ``lines`` the way the official Windows-made split files are: CRLF plus a blank line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(("\r\n".join(lines) + "\r\n\r\n").encode())


def by_id(entries: list[VideoEntry]) -> dict[str, tuple[int, str, str]]:
    return {entry.video_id: (entry.label, entry.label_name, entry.split) for entry in entries}


def check_common(entries: list[VideoEntry]) -> None:
    assert [entry.video_id for entry in entries] == sorted(entry.video_id for entry in entries)
    for entry in entries:
        assert entry.path.is_absolute() and entry.path.is_file()
        assert entry.split in SPLITS


# --------------------------------------------------------------------------- UCF101

UCF_CLASSES = ["1 ApplyEyeMakeup", "2 Basketball", "3 HandstandPushups"]
# The official archive spells the files of class HandstandPushups "v_HandStandPushups_...".
UCF_VIDEOS = {
    "ApplyEyeMakeup": ["v_ApplyEyeMakeup_g01_c01", "v_ApplyEyeMakeup_g02_c01", "v_ApplyEyeMakeup_g03_c01"],
    "Basketball": ["v_Basketball_g01_c01", "v_Basketball_g02_c01", "v_Basketball_g03_c01", "v_Basketball_g09_c01"],
    "HandstandPushups": ["v_HandStandPushups_g01_c01", "v_HandStandPushups_g02_c01"],
}
# The group each split puts in test; every other listed group is train; g09 is listed nowhere.
UCF_TEST_GROUP = {1: "g01", 2: "g02", 3: "g03"}


def ucf_lists(split: int) -> tuple[list[str], list[str]]:
    labels = {"ApplyEyeMakeup": 1, "Basketball": 2, "HandstandPushups": 3}
    train, test = [], []
    for class_name, names in UCF_VIDEOS.items():
        for name in names:
            if "_g09_" in name:
                continue
            rel = f"{class_name}/{name}.avi"
            if f"_{UCF_TEST_GROUP[split]}_" in name:
                test.append(rel)
            else:
                train.append(f"{rel} {labels[class_name]}")
    return train, test


@pytest.fixture
def ucf_root(tmp_path: Path) -> Path:
    root = tmp_path / "ucf"
    for class_name, names in UCF_VIDEOS.items():
        for name in names:
            touch(root / "UCF-101" / class_name / f"{name}.avi")
    lists = root / "ucfTrainTestlist"
    write_crlf(lists / "classInd.txt", UCF_CLASSES)
    for split in (1, 2, 3):
        train, test = ucf_lists(split)
        write_crlf(lists / f"trainlist0{split}.txt", train)
        write_crlf(lists / f"testlist0{split}.txt", test)
    return root


def test_ucf101_split1(ucf_root: Path) -> None:
    entries = UCF101().prepare(ucf_root, split=1)
    check_common(entries)
    assert by_id(entries) == {
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01": (0, "ApplyEyeMakeup", "test"),
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g02_c01": (0, "ApplyEyeMakeup", "train"),
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g03_c01": (0, "ApplyEyeMakeup", "train"),
        "Basketball/v_Basketball_g01_c01": (1, "Basketball", "test"),
        "Basketball/v_Basketball_g02_c01": (1, "Basketball", "train"),
        "Basketball/v_Basketball_g03_c01": (1, "Basketball", "train"),
        "Basketball/v_Basketball_g09_c01": (1, "Basketball", "unused"),
        "HandstandPushups/v_HandStandPushups_g01_c01": (2, "HandstandPushups", "test"),
        "HandstandPushups/v_HandStandPushups_g02_c01": (2, "HandstandPushups", "train"),
    }
    entry = entries[0]
    assert entry.path == (ucf_root / "UCF-101/ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi").resolve()


def test_ucf101_split3(ucf_root: Path) -> None:
    splits = {video_id: split for video_id, (_, _, split) in by_id(UCF101().prepare(ucf_root, split=3)).items()}
    assert splits == {
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01": "train",
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g02_c01": "train",
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g03_c01": "test",
        "Basketball/v_Basketball_g01_c01": "train",
        "Basketball/v_Basketball_g02_c01": "train",
        "Basketball/v_Basketball_g03_c01": "test",
        "Basketball/v_Basketball_g09_c01": "unused",
        "HandstandPushups/v_HandStandPushups_g01_c01": "train",
        "HandstandPushups/v_HandStandPushups_g02_c01": "train",
    }


def test_ucf101_ids_are_the_same_for_every_split_and_location(ucf_root: Path, tmp_path: Path) -> None:
    ids = [entry.video_id for entry in UCF101().prepare(ucf_root, split=1)]
    assert ids == [entry.video_id for entry in UCF101().prepare(ucf_root, split=2)]
    moved = ucf_root.rename(tmp_path / "elsewhere")
    assert ids == [entry.video_id for entry in UCF101().prepare(moved, split=1)]


@pytest.mark.parametrize(
    ("file_name", "line", "text", "words"),
    [
        ("trainlist01.txt", 2, "Bowling/v_Bowling_g01_c01.avi 2", "unknown class Bowling"),
        ("trainlist01.txt", 1, "ApplyEyeMakeup/v_ApplyEyeMakeup_g02_c01.avi 2", "disagrees"),
        ("trainlist01.txt", 3, "ApplyEyeMakeup/v_ApplyEyeMakeup_g07_c01.avi 1", "does not exist"),
        ("trainlist01.txt", 2, "ApplyEyeMakeup/v_ApplyEyeMakeup_g02_c01.avi", "expected"),
        ("trainlist01.txt", 2, "ApplyEyeMakeup/v_ApplyEyeMakeup_g02_c01.avi one", "expected"),
        ("trainlist01.txt", 2, "v_ApplyEyeMakeup_g02_c01.avi 1", "expected"),
        ("testlist01.txt", 2, "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi 1", "expected"),
        ("testlist01.txt", 3, "Basketball/v_Basketball_g02_c01.avi", "also in trainlist01.txt:3"),
        ("testlist01.txt", 3, "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi", "already listed at line 1"),
        ("classInd.txt", 2, "Basketball 2", "expected"),
        ("classInd.txt", 2, "4 Basketball", "index 4"),
    ],
)
def test_ucf101_errors_name_file_and_line(ucf_root: Path, file_name: str, line: int, text: str, words: str) -> None:
    path = ucf_root / "ucfTrainTestlist" / file_name
    lines = path.read_bytes().decode().splitlines()
    lines[line - 1] = text
    path.write_bytes("\r\n".join(lines).encode())
    with pytest.raises(DatasetError, match=rf"{file_name}:{line}: .*{words}"):
        UCF101().prepare(ucf_root, split=1)


def test_ucf101_class_folder_not_in_class_index(ucf_root: Path) -> None:
    touch(ucf_root / "UCF-101" / "Bowling" / "v_Bowling_g01_c01.avi")
    with pytest.raises(DatasetError, match=r"Bowling: class folder not listed in .*classInd.txt"):
        UCF101().prepare(ucf_root)


def test_ucf101_rejects_undefined_split_and_missing_folder(ucf_root: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no split 4"):
        UCF101().prepare(ucf_root, split=4)
    with pytest.raises(DatasetError, match="UCF-101"):
        UCF101().prepare(tmp_path / "nowhere")


# --------------------------------------------------------------------------- HMDB51

HMDB_VIDEOS = {
    "brush_hair": ["April_09_brush_hair_u_nm_np1_ba_goo_0", "April_09_brush_hair_u_nm_np1_ba_goo_1",
                   "Brushing_Hair_with_Beth_brush_hair_h_nm_np1_le_goo_0", "red_head_brush_hair_u_cm_np1_ba_goo_0"],
    "cartwheel": ["#20_Rhythm_clap_cartwheel_f_cm_np1_le_bad_0", "Bodenturnen_cartwheel_f_cm_np1_ri_med_0",
                  "Cartwheel_(Female)_cartwheel_f_cm_np1_le_med_0"],
    "clap": ["Applauding_clap_u_cm_np1_fr_med_0", "Clap_for_me_clap_h_nm_np1_fr_goo_0", "extra_clap_u_nm_np1_fr_goo_9"],
}
# Flags per split: the last clap video is listed in no split file.
HMDB_FLAGS = {
    1: {"brush_hair": "1 2 1 0", "cartwheel": "1 1 2", "clap": "2 1"},
    2: {"brush_hair": "2 1 1 0", "cartwheel": "2 1 1", "clap": "1 2"},
    3: {"brush_hair": "1 1 2 0", "cartwheel": "1 2 1", "clap": "1 2"},
}


def make_hmdb(root: Path, split_folder: Path) -> Path:
    for class_name, names in HMDB_VIDEOS.items():
        for name in names:
            touch(root / class_name / f"{name}.avi")
        for split, flags in HMDB_FLAGS.items():
            lines = [f"{name}.avi {flag} " for name, flag in zip(names, flags[class_name].split())]
            write_crlf(split_folder / f"{class_name}_test_split{split}.txt", lines)
    return root


@pytest.fixture
def hmdb_root(tmp_path: Path) -> Path:
    root = tmp_path / "hmdb"
    return make_hmdb(root, root / "testTrainMulti_7030_splits")


def test_hmdb51_split1(hmdb_root: Path) -> None:
    entries = HMDB51().prepare(hmdb_root, split=1)
    check_common(entries)
    assert by_id(entries) == {
        "brush_hair/April_09_brush_hair_u_nm_np1_ba_goo_0": (0, "brush_hair", "train"),
        "brush_hair/April_09_brush_hair_u_nm_np1_ba_goo_1": (0, "brush_hair", "test"),
        "brush_hair/Brushing_Hair_with_Beth_brush_hair_h_nm_np1_le_goo_0": (0, "brush_hair", "train"),
        "brush_hair/red_head_brush_hair_u_cm_np1_ba_goo_0": (0, "brush_hair", "unused"),
        "cartwheel/#20_Rhythm_clap_cartwheel_f_cm_np1_le_bad_0": (1, "cartwheel", "train"),
        "cartwheel/Bodenturnen_cartwheel_f_cm_np1_ri_med_0": (1, "cartwheel", "train"),
        "cartwheel/Cartwheel_(Female)_cartwheel_f_cm_np1_le_med_0": (1, "cartwheel", "test"),
        "clap/Applauding_clap_u_cm_np1_fr_med_0": (2, "clap", "test"),
        "clap/Clap_for_me_clap_h_nm_np1_fr_goo_0": (2, "clap", "train"),
        "clap/extra_clap_u_nm_np1_fr_goo_9": (2, "clap", "unused"),
    }


def test_hmdb51_split3_with_split_files_in_root(tmp_path: Path) -> None:
    root = make_hmdb(tmp_path / "hmdb", tmp_path / "hmdb")
    splits = {video_id: split for video_id, (_, _, split) in by_id(HMDB51().prepare(root, split=3)).items()}
    assert splits == {
        "brush_hair/April_09_brush_hair_u_nm_np1_ba_goo_0": "train",
        "brush_hair/April_09_brush_hair_u_nm_np1_ba_goo_1": "train",
        "brush_hair/Brushing_Hair_with_Beth_brush_hair_h_nm_np1_le_goo_0": "test",
        "brush_hair/red_head_brush_hair_u_cm_np1_ba_goo_0": "unused",
        "cartwheel/#20_Rhythm_clap_cartwheel_f_cm_np1_le_bad_0": "train",
        "cartwheel/Bodenturnen_cartwheel_f_cm_np1_ri_med_0": "test",
        "cartwheel/Cartwheel_(Female)_cartwheel_f_cm_np1_le_med_0": "train",
        "clap/Applauding_clap_u_cm_np1_fr_med_0": "train",
        "clap/Clap_for_me_clap_h_nm_np1_fr_goo_0": "test",
        "clap/extra_clap_u_nm_np1_fr_goo_9": "unused",
    }


@pytest.mark.parametrize(
    ("line", "text", "words"),
    [
        (2, "Bodenturnen_cartwheel_f_cm_np1_ri_med_0.avi 3", "expected"),
        (2, "Bodenturnen_cartwheel_f_cm_np1_ri_med_0.avi", "expected"),
        (3, "Gone_cartwheel_f_cm_np1_le_med_0.avi 1", "does not exist"),
        (3, "Bodenturnen_cartwheel_f_cm_np1_ri_med_0.avi 2", "already listed at line 2 as train"),
    ],
)
def test_hmdb51_errors_name_file_and_line(hmdb_root: Path, line: int, text: str, words: str) -> None:
    path = hmdb_root / "testTrainMulti_7030_splits" / "cartwheel_test_split1.txt"
    lines = path.read_bytes().decode().splitlines()
    lines[line - 1] = text
    path.write_bytes("\r\n".join(lines).encode())
    with pytest.raises(DatasetError, match=rf"cartwheel_test_split1.txt:{line}: .*{words}"):
        HMDB51().prepare(hmdb_root, split=1)


def test_hmdb51_unknown_class_folder(hmdb_root: Path) -> None:
    touch(hmdb_root / "dive" / "Dive_dive_f_cm_np1_ri_bad_0.avi")
    with pytest.raises(DatasetError, match=r"dive: class folder has no dive_test_split1.txt"):
        HMDB51().prepare(hmdb_root)


def test_hmdb51_without_split_files(tmp_path: Path) -> None:
    touch(tmp_path / "clap" / "a.avi")
    with pytest.raises(DatasetError, match="_test_split2.txt"):
        HMDB51().prepare(tmp_path, split=2)


# --------------------------------------------------------------------------- Kinetics

KINETICS_TRAIN = [
    "label,youtube_id,time_start,time_end,split,is_cc",
    "zumba,zz0000000_1,5,15,train,0",
    "abseiling,--07WQ2iBlw,1,11,train,0",
    '"air drumming",-VtLx-mcPds,11,21,train,1',
    "abseiling,missing0001,0,10,train,0",
]
KINETICS_VAL = [
    "label,youtube_id,time_start,time_end,split",
    "air drumming,val00000001,30,40,validate",
    "zumba,val00000002,0,10,val",
]
# The original Kinetics-400 test CSV has no label column.
KINETICS_TEST = ["youtube_id,time_start,time_end,split", "tst00000001,0,10,test"]


@pytest.fixture
def kinetics_root(tmp_path: Path) -> Path:
    root = tmp_path / "k400"
    write_crlf(root / "annotations" / "train.csv", KINETICS_TRAIN)
    write_crlf(root / "annotations" / "validate.csv", KINETICS_VAL)
    write_crlf(root / "annotations" / "test.csv", KINETICS_TEST)
    touch(root / "train" / "zumba" / "zz0000000_1_000005_000015.mp4")
    touch(root / "train" / "abseiling" / "--07WQ2iBlw_000001_000011.mp4")
    touch(root / "train" / "air_drumming" / "-VtLx-mcPds_000011_000021.mp4")
    touch(root / "val" / "val00000001_000030_000040.mp4")
    touch(root / "validate" / "val00000002_000000_000010.mkv")
    touch(root / "test" / "tst00000001_000000_000010.mp4")
    touch(root / "train" / "zumba" / "notes.txt")
    return root


def test_kinetics(kinetics_root: Path, caplog: pytest.LogCaptureFixture) -> None:
    adapter = Kinetics()
    with caplog.at_level(logging.WARNING, logger="vpipe.data.kinetics"):
        entries = adapter.prepare(kinetics_root)
    on_disk = [e for e in entries if e.path.exists()]
    check_common(on_disk)
    assert by_id(on_disk) == {
        "--07WQ2iBlw_000001_000011": (0, "abseiling", "train"),
        "-VtLx-mcPds_000011_000021": (1, "air drumming", "train"),
        "val00000001_000030_000040": (1, "air drumming", "val"),
        "val00000002_000000_000010": (2, "zumba", "val"),
        "zz0000000_1_000005_000015": (2, "zumba", "train"),
    }
    missing = [e for e in entries if not e.path.exists()]
    assert [(e.video_id, e.label, e.split) for e in missing] == [("missing0001_000000_000010", 0, "train")]
    assert missing[0].path == kinetics_root / "train" / "missing0001_000000_000010.mp4"
    assert "1 of 6 annotated clips are not on disk" in caplog.text
    assert "test.csv: 1 rows have no label" in caplog.text


def test_kinetics_csvs_directly_in_root(kinetics_root: Path) -> None:
    for csv_path in (kinetics_root / "annotations").iterdir():
        csv_path.rename(kinetics_root / csv_path.name)
    (kinetics_root / "annotations").rmdir()
    assert len(Kinetics().prepare(kinetics_root)) == 6


@pytest.mark.parametrize(
    ("file_name", "lines", "line", "words"),
    [
        ("validate.csv", [*KINETICS_VAL, "yoga,val00000003,0,10,val"], 4, "unknown class 'yoga'"),
        ("validate.csv", [*KINETICS_VAL, "zumba,val00000003,0,ten,val"], 4, "whole-second times"),
        ("validate.csv", [*KINETICS_VAL, "zumba,val00000003,0,10,holdout"], 4, "split train/val"),
        ("validate.csv", [*KINETICS_VAL, "zumba,val00000003,0,10"], 4, "expected 5 comma-separated"),
        ("validate.csv", [*KINETICS_VAL, "zumba,--07WQ2iBlw,1,11,val"], 4, "train at .*train.csv:3"),
        ("validate.csv", ["label,youtube_id,start,end,split", *KINETICS_VAL[1:]], 1, "header lacks time_start"),
    ],
)
def test_kinetics_errors_name_file_and_line(
    kinetics_root: Path, file_name: str, lines: list[str], line: int, words: str
) -> None:
    write_crlf(kinetics_root / "annotations" / file_name, lines)
    with pytest.raises(DatasetError, match=rf"{file_name}:{line}: .*{words}"):
        Kinetics().prepare(kinetics_root)


def test_kinetics_with_no_clip_on_disk(tmp_path: Path) -> None:
    write_crlf(tmp_path / "train.csv", KINETICS_TRAIN)
    with pytest.raises(DatasetError, match="none of the 4 annotated clips"):
        Kinetics().prepare(tmp_path)


# --------------------------------------------------------------------------- folder


@pytest.fixture
def folder_root(tmp_path: Path) -> Path:
    root = tmp_path / "clips"
    for name in ["v1.mp4", "v2.AVI", "v3.mkv", "v4.webm", "v5.mov", "v6.mp4", "cover.jpg"]:
        touch(root / "wave" / name)
    for name in ["b.mp4", "a.mp4"]:
        touch(root / "jump" / name)
    touch(root / "empty" / "readme.txt")
    return root


def test_folder_labels_and_holdout(folder_root: Path) -> None:
    entries = Folder().prepare(folder_root)
    check_common(entries)
    assert by_id(entries) == {
        "jump/a": (0, "jump", "train"),
        "jump/b": (0, "jump", "train"),
        "wave/v1": (1, "wave", "train"),
        "wave/v2": (1, "wave", "train"),
        "wave/v3": (1, "wave", "train"),
        "wave/v4": (1, "wave", "train"),
        "wave/v5": (1, "wave", "test"),
        "wave/v6": (1, "wave", "train"),
    }


def test_folder_errors(folder_root: Path, tmp_path: Path) -> None:
    touch(folder_root / "wave" / "v1.mkv")
    with pytest.raises(DatasetError, match=r"v1\.(mkv|mp4): same name as v1\.(mkv|mp4)"):
        Folder().prepare(folder_root)
    touch(tmp_path / "loose" / "x.mp4")
    with pytest.raises(DatasetError, match="x.mp4: video directly under the dataset folder"):
        Folder().prepare(tmp_path / "loose")


# --------------------------------------------------------------------------- csv


def test_csv_names_splits_and_paths(tmp_path: Path) -> None:
    outside = tmp_path / "other" / "run_07.mp4"
    touch(outside)
    touch(tmp_path / "set" / "clips" / "jump_01.mp4")
    touch(tmp_path / "set" / "clips" / "sit_01.mp4")
    write_crlf(
        tmp_path / "set" / "videos.csv",
        [
            "split,path,label",
            "train,clips/jump_01.mp4,jump",
            f"test,{outside},run",
            "",
            "unused,./clips/sit_01.mp4,sit",
        ],
    )
    entries = CsvList().prepare(tmp_path / "set")
    check_common(entries)
    assert by_id(entries) == {
        "clips/jump_01": (0, "jump", "train"),
        "clips/sit_01": (2, "sit", "unused"),
        outside.with_suffix("").as_posix().lstrip("/"): (1, "run", "test"),
    }


def test_csv_integer_labels_and_default_holdout(tmp_path: Path) -> None:
    rows = ["path,label"]
    for k in range(1, 7):
        touch(tmp_path / f"c{k}.mp4")
        rows.append(f"c{k}.mp4,{10 if k < 6 else 2}")
    write_crlf(tmp_path / "list.csv", rows)
    assert by_id(CsvList().prepare(tmp_path / "list.csv")) == {
        "c1": (10, "10", "train"),
        "c2": (10, "10", "train"),
        "c3": (10, "10", "train"),
        "c4": (10, "10", "train"),
        "c5": (10, "10", "test"),
        "c6": (2, "2", "train"),
    }


@pytest.mark.parametrize(
    ("lines", "line", "words"),
    [
        (["path,label,split", "a.mp4,jump,train", "gone.mp4,jump,train"], 3, "does not exist"),
        (["path,label,split", "a.mp4,jump,holdout"], 2, "split 'holdout' is not one of"),
        (["path,label", "a.mp4,3", "b.mp4,jump"], 3, "is a name but line 2 is not"),
        (["path,label", "a.mp4,jump,extra"], 2, "expected 2 comma-separated"),
        (["path,label", "a.mp4,jump", "./a.mp4,jump"], 3, "already listed at line 2"),
        (["path,label,splits", "a.mp4,jump,train"], 1, "header must be path,label"),
    ],
)
def test_csv_errors_name_file_and_line(tmp_path: Path, lines: list[str], line: int, words: str) -> None:
    touch(tmp_path / "a.mp4")
    touch(tmp_path / "b.mp4")
    write_crlf(tmp_path / "videos.csv", lines)
    with pytest.raises(DatasetError, match=rf"videos.csv:{line}: .*{words}"):
        CsvList().prepare(tmp_path)


def test_csv_encodings(tmp_path: Path) -> None:
    touch(tmp_path / "caf\u00e9.mp4")
    (tmp_path / "videos.csv").write_bytes("\ufeffpath,label\r\ncaf\u00e9.mp4,jump\r\n".encode())
    assert by_id(CsvList().prepare(tmp_path)) == {"caf\u00e9": (0, "jump", "train")}
    (tmp_path / "videos.csv").write_bytes("path,label\r\ncaf\u00e9.mp4,jump\r\n".encode("latin-1"))
    with pytest.raises(DatasetError, match="videos.csv: not UTF-8 text"):
        CsvList().prepare(tmp_path)


# --------------------------------------------------------------------------- registry


def test_registry() -> None:
    assert [adapter.name for adapter in list_datasets()] == sorted(DATASETS)
    assert {"ucf101", "hmdb51", "kinetics", "folder", "csv", "synthetic"} <= set(DATASETS)
    assert isinstance(get_dataset("ucf101"), UCF101)
    for adapter in list_datasets():
        assert adapter.summary and adapter.split_numbers
    with pytest.raises(ConfigError, match="did you mean ucf101"):
        get_dataset("ucf-101")
