"""The command line answers before heavy libraries load, and its static names stay true.

``vpipe --help`` used to import torch, scikit-learn, h5py, pandas and matplotlib
before printing a word (6 s on a 2-core machine). The guard below runs each help in a
fresh interpreter and lists what it imported, so a module-level import slipping back
into the CLI fails here rather than in a user's terminal.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import pytest

from vpipe import catalog

HEAVY = ("torch", "sklearn", "faiss", "dask", "distributed", "h5py", "matplotlib", "pandas", "pyarrow", "numpy", "cv2", "decord")


def _imported_by(args: list[str]) -> tuple[int, list[str], str]:
    """Run ``vpipe ARGS`` in a fresh interpreter: exit code, heavy modules it imported, stdout."""
    script = (
        "import json, sys\n"
        f"sys.argv = ['vpipe', *{args!r}]\n"
        "from vpipe.cli.app import app\n"
        "try:\n    app()\n    code = 0\nexcept SystemExit as exit:\n    code = exit.code or 0\n"
        f"heavy = [m for m in {HEAVY!r} if m in sys.modules]\n"
        "sys.stderr.write('\\nIMPORTED ' + json.dumps([code, heavy]) + '\\n')\n"
    )
    env = os.environ | {"COLUMNS": "1000"}  # one line per option: names are not wrapped apart
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env)
    marker = [line for line in done.stderr.splitlines() if line.startswith("IMPORTED ")]
    assert marker, done.stderr
    code, heavy = json.loads(marker[-1].removeprefix("IMPORTED "))
    return code, heavy, done.stdout


def _every_help() -> list[list[str]]:
    """``--help`` and each registered command's ``--help``: a command added later is guarded too."""
    import typer.main

    from vpipe.cli.app import app

    return [["--help"], *([name, "--help"] for name in sorted(typer.main.get_command(app).commands))]


@pytest.mark.parametrize("args", _every_help(), ids=lambda a: " ".join(a))
def test_help_imports_no_heavy_library(args):
    code, heavy, out = _imported_by(args)
    assert code == 0
    assert "Usage" in out
    assert heavy == [], f"`vpipe {' '.join(args)}` imported {heavy}"


def test_status_imports_no_training_or_plotting_library(tmp_path):
    """Even where nothing is probed, ``vpipe status`` imports only its own path."""
    code, heavy, _ = _imported_by(["status", "--dataset", "synthetic", "--workspace", str(tmp_path)])
    assert code == 1  # nothing probed there: the command still imported its whole path
    assert not {"torch", "sklearn", "faiss", "dask", "distributed", "matplotlib", "h5py"} & set(heavy), heavy


def test_status_of_every_stage_imports_no_heavy_library(tmp_path):
    """``vpipe status`` over a whole main job (bench/status.py's workspace: every
    per-video stage done; encode, train and evaluate asked about) computes every
    fingerprint, down to the training runs' data split, without torch, h5py,
    scikit-learn or faiss: heads are described by :mod:`vpipe.head_specs` and feature
    indexes read as columns (:mod:`vpipe.store.index_columns`). That the split and the
    rest of the run fingerprint equal the trainer's is tests/test_run_identity.py.

    pandas is not in the list: pyarrow imports it the first time it converts a Python
    or numpy sequence (``pa.array``), to check whether it is a pandas object."""
    from bench.status import DATASET, build

    build(tmp_path, 12)
    code, heavy, out = _imported_by(["status", "--dataset", DATASET, "--workspace", str(tmp_path), "--json"])
    assert code == 0, out
    report = json.loads(out)
    assert [report[f"extract:{name}"]["done"] for name in ("li3d-rgb", "li3d-flow", "hoghofmbh")] == [12] * 3
    # One video in each of 12 of its 400 classes: the run's split was computed, and has no validation part.
    assert "no validation videos" in report["train:li3d-rgb"]["reason"], report
    assert not {"torch", "h5py", "sklearn", "faiss", "dask", "distributed", "matplotlib"} & set(heavy), heavy


@pytest.mark.parametrize("command", ["heads", "backbones"])
def test_listings_build_no_model(command):
    """``vpipe heads`` and ``vpipe backbones`` list from the declarations and the static
    tables (checked below against the built models), without torch."""
    code, heavy, out = _imported_by([command, "--json"])
    assert code == 0
    assert {row["name"] for row in json.loads(out)} == set(catalog.HEADS if command == "heads" else catalog.BACKBONES)
    assert not {"torch", "h5py", "sklearn", "faiss", "pandas"} & set(heavy), heavy


def test_help_lists_the_registered_names():
    _, _, out = _imported_by(["extract", "--help"])
    assert all(name in out for name in catalog.BACKBONES)
    _, _, out = _imported_by(["run", "--help"])
    assert all(name in out for name in catalog.SAMPLERS + catalog.DATASETS)


def test_catalog_equals_the_registries():
    """Every static name and default equals what its registry or module holds today."""
    from vpipe.data.registry import DATASETS
    from vpipe.data.synthetic import DEFAULT_VIDEOS_PER_CLASS
    from vpipe.device import DEVICES
    from vpipe.encode.budget import DEFAULT_MEMORY_BUDGET_TEXT
    from vpipe.encode.classic import METHODS
    from vpipe.models import list_backbones
    from vpipe.models.heads import list_heads
    from vpipe.stages.encode import DEFAULT_PCA
    from vpipe.video.plan import SAMPLERS

    fix = "update the table in vpipe/catalog.py"
    assert catalog.DATASETS == tuple(sorted(DATASETS)), fix
    assert catalog.BACKBONES == tuple(list_backbones()), fix
    assert catalog.HEADS == tuple(list_heads()), fix
    assert catalog.SAMPLERS == tuple(SAMPLERS), fix
    assert catalog.ENCODE_METHODS == tuple(METHODS), fix
    assert catalog.ENCODE_MEMORY_BUDGET == DEFAULT_MEMORY_BUDGET_TEXT
    assert catalog.DEFAULT_PCA == DEFAULT_PCA
    assert catalog.SYNTHETIC_VIDEOS_PER_CLASS == DEFAULT_VIDEOS_PER_CLASS
    assert catalog.DEVICES == DEVICES


def test_catalog_tvl1_defaults_equal_the_solver_s():
    """The flow fingerprint resolves TV-L1 options against the static copy (status has no
    torch): a default changed in the solver and not here fails this test."""
    import inspect

    from vpipe.flow.tvl1 import tvl1

    keyword_only = [n for n, p in inspect.signature(tvl1).parameters.items() if p.kind is p.KEYWORD_ONLY]
    assert list(catalog.TVL1_DEFAULTS) == keyword_only, "update TVL1_DEFAULTS in vpipe/catalog.py"
    assert catalog.TVL1_DEFAULTS == tvl1.__kwdefaults__, "update TVL1_DEFAULTS in vpipe/catalog.py"


@pytest.mark.parametrize("name", catalog.HEADS)
def test_catalog_head_declarations_are_the_registered_heads(name):
    """A registered built-in head inherits its torch-free declaration and redefines none
    of it, so status, ``vpipe heads`` and the trainer read one set of options, defaults,
    inputs, tags and files."""
    import inspect

    from vpipe.head_specs import HEAD_SPECS, HeadSpec
    from vpipe.models.heads import describe_head, head_class

    spec, cls = catalog.head_spec(name), head_class(name)
    assert spec is HEAD_SPECS[name] and issubclass(cls, spec)
    declared = [n for n in vars(HeadSpec) if not n.startswith("__")]
    redefined = [n for n in declared if inspect.getattr_static(cls, n) is not inspect.getattr_static(spec, n)]
    assert redefined == [], f"declare {redefined} in vpipe/head_specs.py"
    assert catalog.HEAD_PARAMETERS[name] == describe_head(name).parameters, "update HEAD_PARAMETERS in vpipe/catalog.py"
    assert catalog.HEAD_HOOKS[name] == describe_head(name).hooks, "update HEAD_HOOKS in vpipe/catalog.py"
    assert {row["name"]: row for row in catalog.describe_heads()}[name] == describe_head(name).__dict__


def test_head_declaration_constants_equal_the_modules():
    from vpipe import head_specs
    from vpipe.models.aggregation import AGGREGATIONS

    assert head_specs.AGGREGATIONS == AGGREGATIONS
    assert set(catalog.HEAD_PARAMETERS) == set(catalog.HEAD_HOOKS) == set(catalog.HEADS)


@pytest.mark.parametrize("name", catalog.BACKBONES)
def test_catalog_backbone_descriptions_equal_the_registry(name):
    """The static copies the extract fingerprint reads (``vpipe status`` has no torch)."""
    from vpipe.models.backbones import registry

    fix = "update the backbone tables in vpipe/catalog.py"
    assert catalog.backbone_defaults(name) == registry.backbone_defaults(name), fix
    assert catalog.backbone_version(name) == registry.backbone_version(name), fix
    assert catalog.is_weightless(name) == registry.is_weightless(name), fix
    assert catalog.backbone_plan(name) == registry.backbone_plan(name), fix
    for stream in ("rgb", "flow"):
        assert catalog.backbone_inputs(name, stream) == registry.backbone_inputs(name, stream), fix
    assert set(catalog.BACKBONE_DEFAULTS) == set(registry.list_backbones()), fix
    with warnings.catch_warnings():  # built without weights: only its spec is read
        warnings.simplefilter("ignore")
        spec = registry.backbone(name).spec
    assert catalog.BACKBONE_LISTING[name] == catalog._listing(spec), "update BACKBONE_LISTING in vpipe/catalog.py"


def test_per_video_stage_status_imports_no_heavy_library(tmp_path):
    """The status of probe, plan, flow and every extract stage of a finished workspace
    (bench/status.py's, whose stages ran for real except the per-video work) lists and
    compares every video's fingerprint without torch, h5py or the fitting and search
    libraries: the device kind, the TV-L1 settings and the backbones' defaults come
    from torch-free modules."""
    from bench.status import DATASET, build

    build(tmp_path, 12)
    script = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "from vpipe.pipeline.runner import stage_status\n"
        "from vpipe.pipeline.workspace import DatasetWorkspace\n"
        "from vpipe.stages.extract import ExtractStage\n"
        "from vpipe.stages.flow import FlowStage\n"
        "from vpipe.stages.plan import PlanStage\n"
        "from vpipe.stages.probe import ProbeStage\n"
        "from vpipe.video.plan import sampler_config\n"
        f"ws = DatasetWorkspace(Path({str(tmp_path)!r}), {DATASET!r})\n"
        "stages = [ProbeStage(ws, ws.read_config()), PlanStage(ws, sampler_config('li3d')), FlowStage(ws),\n"
        "          ExtractStage(ws, backbone='li3d'), ExtractStage(ws, backbone='li3d', stream='flow'),\n"
        "          ExtractStage(ws, backbone='hoghofmbh')]\n"
        "counts = [(r.done, r.total) for r in map(stage_status, stages)]\n"
        f"print(json.dumps([counts, [m for m in {HEAVY[:6]!r} if m in sys.modules]]))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    counts, heavy = json.loads(done.stdout)
    assert counts == [[12, 12]] * 6
    assert heavy == []


def test_index_and_item_state_readers_import_no_heavy_library():
    """Reading an index and classifying a journal, as status does, needs neither torch
    (the feature reader) nor h5py (shards) nor the retrieval libraries."""
    script = (
        "import sys\n"
        "import vpipe.store, vpipe.retrieval, vpipe.pipeline.item_state, vpipe.pipeline.workspace\n"
        "from vpipe.store import read_index\n"
        "from vpipe.catalog import backbone_defaults\n"
        f"print([m for m in {HEAVY[:6]!r} if m in sys.modules])\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_lazy_package_names_resolve_to_their_modules():
    import vpipe.train as train_package
    from vpipe.train.evaluation import evaluate
    from vpipe.train.trainer import train

    assert train_package.evaluate is evaluate and train_package.train is train
    assert set(train_package.__all__) <= set(dir(train_package))
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        train_package.nothing  # noqa: B018
