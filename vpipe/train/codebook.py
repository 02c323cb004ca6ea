"""Where a head's soft aggregation starts: a stored codebook or one fitted for the run.

The soft encodings are tied to k-means centres at the start (soft-correlation §3–4), and
the centres must live in the space the aggregation sees (see
:mod:`vpipe.models.heads.bilstm`):

* ``temporal="none"``: that space is the backbone's. The run uses the codebook
  ``vpipe encode`` fitted on the train split (``--codebook`` or the workspace's
  ``codebooks/<features>-k<K>.h5``), with α chosen on train descriptors.
* With an LSTM the space is the LSTM's output, so the head's own rule applies:
  k-means on the untrained temporal layer's outputs for the fit videos
  (:func:`init_aggregation_from_features`).
* With no codebook file for ``temporal="none"`` the same function fits k-means on the
  raw train features, so a run never starts from random centres.

Only fit videos (never validation or test) and their view 0 are used, as in ``encode``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from vpipe.encode import Codebook, load_codebook
from vpipe.encode.codebook_io import stored_fingerprint
from vpipe.errors import ConfigError, StageError
from vpipe.models.aggregation import alpha_from_data
from vpipe.models.heads.bilstm import BiLSTMSoftAggHead, init_aggregation_from_features
from vpipe.pipeline.fingerprint import file_fingerprint
from vpipe.pipeline.workspace import DatasetWorkspace
from vpipe.store import FeatureSet
from vpipe.train.config import TrainConfig

#: Train descriptors α is chosen on; the median gap it uses is stable long before this.
ALPHA_SAMPLE = 20_000


def codebook_file(ws: DatasetWorkspace, config: TrainConfig) -> Path | None:
    """The codebook file a run would load, or None when it fits its own centres.

    An explicit ``config.codebook`` must exist; the workspace default is used only when
    present.
    """
    if config.temporal != "none" or not config.uses_clusters:
        return None
    if config.codebook is not None:
        path = Path(config.codebook)
        if not path.is_file():
            raise StageError(
                f"no codebook at {path}: fit one with "
                f"`vpipe encode --dataset {ws.dataset} --features {config.features} --clusters {config.clusters}`"
            )
        return path
    default = ws.codebook_path(config.features, config.clusters)
    return default if default.is_file() else None


def load_checked(path: Path, config: TrainConfig, dim: int) -> Codebook:
    """The codebook at ``path``, refused unless it has ``config.clusters`` centres of ``dim`` values."""
    codebook = load_codebook(path)
    if codebook.centroids.shape != (config.clusters, dim):
        raise ConfigError(
            f"codebook {path} has {codebook.clusters} centres of {codebook.dim} values; the run needs "
            f"{config.clusters} of {dim}: pass --clusters {codebook.clusters} or fit one with "
            f"`vpipe encode --features {config.features} --clusters {config.clusters}`"
        )
    return codebook


def codebook_identity(path: Path | None) -> dict[str, str] | None:
    """What identifies a codebook file in a run's fingerprint: its path and content stamp."""
    if path is None:
        return None
    return {"path": str(path), "fingerprint": stored_fingerprint(path) or file_fingerprint(path)}


def _alpha_sample(features: FeatureSet, layer: str, video_ids: list[str], seed: int) -> np.ndarray:
    """Up to :data:`ALPHA_SAMPLE` view-0 descriptors of randomly ordered ``video_ids``."""
    rng = np.random.default_rng(seed)
    parts, total = [], 0
    for i in rng.permutation(len(video_ids)):
        sequence = features.sequence(video_ids[i], layer=layer, view=0).astype(np.float32)
        parts.append(sequence)
        total += len(sequence)
        if total >= ALPHA_SAMPLE:
            break
    return np.concatenate(parts)[:ALPHA_SAMPLE]


def standardise_inputs(head: BiLSTMSoftAggHead, features: FeatureSet, layer: str, fit_ids: list[str], seed: int) -> None:
    """Set the head's input statistics from train descriptors (a floor keeps dead dims finite)."""
    sample = _alpha_sample(features, layer, fit_ids, seed).astype(np.float64)
    std = sample.std(axis=0)
    floor = max(float(np.median(std)) * 1e-3, 1e-6)
    head.set_input_statistics(torch.from_numpy(sample.mean(axis=0)), torch.from_numpy(np.maximum(std, floor)))


def init_aggregation(
    head: BiLSTMSoftAggHead,
    config: TrainConfig,
    path: Path | None,
    features: FeatureSet,
    fit_ids: list[str],
    fit_batches: DataLoader,
) -> dict[str, Any] | None:
    """Initialise ``head``'s soft aggregation as the module docstring says; describe how.

    ``path`` comes from :func:`codebook_file`. Returns None for the average pool, else a
    JSON-able record for the run's config.
    """
    if not config.uses_clusters:
        return None
    if path is not None:
        codebook = load_checked(path, config, head.feature_dim)
        mean, std = head.input_mean.numpy(), head.input_std.numpy()
        sample = (_alpha_sample(features, config.layer, fit_ids, config.seed) - mean) / std
        centroids = (codebook.centroids - mean) / std
        variances = codebook.gmm_variances / std**2
        alpha = alpha_from_data(sample, centroids)
        head.init_from_codebook(centroids, alpha, variances, codebook.gmm_weights)
        return {"source": "file", **codebook_identity(path), "alpha": alpha}
    batches = ((x, lengths) for x, lengths, _ in fit_batches)
    fitted = init_aggregation_from_features(head, batches, seed=config.seed)
    space = "backbone features" if config.temporal == "none" else f"untrained {config.temporal} outputs"
    return {"source": f"k-means on {space} of {len(fit_ids)} fit videos", "alpha": fitted.alpha}
