"""Package namespaces that import their modules on first use.

``from vpipe.train import TrainConfig`` should not cost an ``import torch`` when all the
caller needs is a dataclass: the command line reads defaults from such light modules
to print ``--help`` at once. A package whose ``__init__`` re-exports names from heavy
modules therefore lists them in :func:`lazy_exports` instead of importing them, and
Python's module ``__getattr__`` (PEP 562) imports each module the first time one of
its names is asked for. ``from package import name`` and ``package.name`` both work
unchanged; a submodule is imported only by whoever uses it.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any


def lazy_exports(package: str, exports: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package``, whose public ``name`` lives in ``exports[name]``.

    An exported name must differ from every submodule's name: importing the submodule
    would otherwise replace the package attribute with the module.
    """
    clashes = sorted(name for name, module in exports.items() if module.rpartition(".")[2] == name)
    if clashes:
        raise ValueError(f"{package}: exported names equal their module's name: {clashes}")

    def __getattr__(name: str) -> Any:
        try:
            module = exports[name]
        except KeyError:
            raise AttributeError(f"module {package!r} has no attribute {name!r}") from None
        value = getattr(importlib.import_module(module), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(exports) | set(vars(sys.modules[package])))

    return __getattr__, __dir__
