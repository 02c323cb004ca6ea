"""How an index is built: what ``vpipe index`` takes besides the embedding.

One record, given to :func:`~vpipe.retrieval.index.build_index` and
:func:`~vpipe.retrieval.index.index_status` alike, so the question "is this index
current?" is asked with exactly the options it would be built with. It imports
nothing heavy: the command line takes its defaults from here.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class IndexOptions:
    """``name`` left out is derived from the embedding (``-clips`` appended at clip level).

    ``exact`` builds a flat index whatever the size; ``clips`` indexes one vector per
    clip; ``centre`` subtracts the gallery mean from every vector and query, ``whiten``
    also PCA-whitens them (and so centres too). All but ``name`` enter the fingerprint.
    """

    name: str | None = None
    exact: bool = False
    clips: bool = False
    centre: bool = True
    whiten: bool = False
