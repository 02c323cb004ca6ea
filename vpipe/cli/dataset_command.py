"""The options and the ending every command over one dataset's artifacts shares, declared once.

``encode``, ``train``, ``evaluate``, ``report``, ``index``, ``search``, ``export`` and
``verify`` each read or write one dataset's workspace, take ``--workspace --json
--verbose``, set up logging before any work, and print their result either as JSON on
stdout or as text. :func:`dataset_command` adds all of that, so a command body only calls
the library and names how its result reads as text.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from vpipe.cli.options import Dataset, Json, Verbose, Workspace, dataset_workspace, declared, setup_logging, show
from vpipe.cli.options import user_errors, with_options

if TYPE_CHECKING:
    from vpipe.pipeline.workspace import DatasetWorkspace

_DATASET = declared({"dataset": Dataset})
_OPTIONS = declared({"workspace": Workspace, "json_output": Json, "verbose": Verbose})
_DEFAULTS = {"workspace": None, "json_output": False, "verbose": False}


@dataclass(frozen=True)
class CommandContext:
    """What a dataset command needs of the shared options while it runs."""

    workspace: DatasetWorkspace
    json_output: bool = False

    def show(self, result: Any, text: Callable[[Any], None]) -> None:
        """``result`` as JSON on stdout with ``--json``; otherwise as ``text`` prints it."""
        show(result, text, json_output=self.json_output)


def dataset_command(command: Callable[..., None]) -> Callable[..., None]:
    """Give ``command`` ``--dataset`` (first in its ``--help``) and ``--workspace --json
    --verbose`` (where it puts ``context``), passed to it as ``context``, and
    :func:`~vpipe.cli.options.user_errors`.

    Logging is set up, then the dataset's workspace opened, before the command runs.
    """

    def call(*args: Any, dataset: str, **kwargs: Any) -> None:
        chosen = {name: kwargs.pop(name, _DEFAULTS[name]) for name, _, _ in _OPTIONS}
        setup_logging(chosen["verbose"])
        workspace = dataset_workspace(dataset, chosen["workspace"])
        command(*args, context=CommandContext(workspace, chosen["json_output"]), **kwargs)

    return with_options(
        command, user_errors(call), replaces="context", options=_OPTIONS, defaults=_DEFAULTS, leading=_DATASET
    )
