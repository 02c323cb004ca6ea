"""No module outside vpipe/artifacts writes an artifact file except through the atomic helper.

The check reads the package's source: every call that creates a file (a Parquet or
HDF5 writer, ``torch.save``, ``faiss.write_index``, ``savefig``, an ``open`` for
writing, ...) must write to the temporary name that :func:`vpipe.artifacts.atomic_path`
or :func:`vpipe.artifacts.temp_path` handed out, and no module renames files itself.
A new writer that targets its final path fails here, not after a crash in production.
"""

from __future__ import annotations

import ast
from pathlib import Path

import vpipe

PACKAGE = Path(vpipe.__file__).parent
#: Calls whose argument at the given position is the file written.
WRITERS = {
    "to_parquet": 0,
    "write_table": 1,  # pyarrow.parquet.write_table(table, where)
    "ParquetWriter": 0,
    "savefig": 0,
    "write_index": 1,  # faiss.write_index(index, path)
    "save": 1,  # torch.save(obj, f)
    "to_csv": 0,
}
#: Calls that move files into place: only the artifact layer may.
RENAMES = {"replace", "rename", "move", "mkstemp", "NamedTemporaryFile"}


def _name(node: ast.expr) -> str:
    """The dotted text of an expression, with ``str(...)``/``Path(...)`` unwrapped."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in {"str", "Path"} and node.args:
        return _name(node.args[0])
    return ast.unparse(node)


def _is_temporary(node: ast.expr) -> bool:
    return "tmp" in _name(node).lower()


def _callee(call: ast.Call) -> tuple[str, str]:
    """(attribute or function name, the object it is called on)."""
    if isinstance(call.func, ast.Attribute):
        return call.func.attr, ast.unparse(call.func.value)
    if isinstance(call.func, ast.Name):
        return call.func.id, ""
    return "", ""


def _mode(call: ast.Call, position: int) -> str:
    if len(call.args) > position and isinstance(call.args[position], ast.Constant):
        return str(call.args[position].value)
    for keyword in call.keywords:
        if keyword.arg == "mode" and isinstance(keyword.value, ast.Constant):
            return str(keyword.value.value)
    return "r"


def _violations(path: Path, root: Path = PACKAGE.parent) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for call in (node for node in ast.walk(tree) if isinstance(node, ast.Call)):
        name, owner = _callee(call)
        where = f"{path.relative_to(root)}:{call.lineno}"
        target = None
        if name in WRITERS and not (name == "write_table" and owner not in {"pq", "pyarrow.parquet"}):
            position = WRITERS[name]
            if (name == "save" and owner != "torch") or (name == "write_index" and owner != "faiss"):
                continue  # the product's own write_index goes through the helper
            if name == "to_csv" and not call.args:
                continue  # to_csv() with no path returns text
            target = call.args[position] if len(call.args) > position else None
        elif name == "File" and owner == "h5py" and _mode(call, 1) != "r":
            target = call.args[0] if call.args else None
        elif name == "open" and owner in {"", "av", "io"} and any(c in _mode(call, 1) for c in "wax+"):
            target = call.args[0] if call.args else None
        elif name in {"write_text", "write_bytes"} and owner:
            target = call.func.value  # type: ignore[attr-defined]
        elif name in RENAMES and owner in {"os", "shutil", "tempfile"} | ({""} if name != "replace" else set()):
            found.append(f"{where}: {ast.unparse(call.func)} (only vpipe/artifacts moves files into place)")
            continue
        elif name == "rename" and owner:
            found.append(f"{where}: {ast.unparse(call.func)} (only vpipe/artifacts moves files into place)")
            continue
        if target is not None and not _is_temporary(target):
            found.append(f"{where}: {ast.unparse(call)[:80]} writes to its final name, not an atomic temporary")
    return found


def test_every_writer_goes_through_the_atomic_helper() -> None:
    sources = [p for p in PACKAGE.rglob("*.py") if "artifacts" not in p.relative_to(PACKAGE).parts]
    violations = [v for path in sorted(sources) for v in _violations(path)]
    assert not violations, "\n".join(violations)


def test_the_check_bites(tmp_path: Path) -> None:
    """Each kind of direct write is caught; the same write to a temporary name is not."""
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import os, h5py, torch\n"
        "def f(table, path, figure, model):\n"
        "    table.to_parquet(path)\n"
        "    h5py.File(path, 'w')\n"
        "    torch.save(model, path)\n"
        "    figure.savefig(path)\n"
        "    os.replace(path, path)\n"
        "    path.write_text('x')\n"
        "    open(path, 'wb')\n"
    )
    good = tmp_path / "good.py"
    good.write_text(
        "import h5py, torch\n"
        "def f(table, tmp, figure, model, path):\n"
        "    table.to_parquet(tmp)\n"
        "    h5py.File(str(tmp), 'w')\n"
        "    h5py.File(path, 'r')\n"
        "    torch.save(model, tmp)\n"
        "    figure.savefig(tmp)\n"
        "    tmp.write_text('x')\n"
        "    open(path, 'rb')\n"
    )
    assert len(_violations(bad, tmp_path)) == 7
    assert _violations(good, tmp_path) == []
