"""LI3D-BiLSTM head with soft-assignment aggregation, trained on cached clip features.

The head follows the papers' order: clip features → temporal re-encoding → aggregation →
dropout → linear classifier.

* Temporal (li3d-bilstm §3.3): a bidirectional LSTM lets every step see the clips before
  and after it, which is what lifts LI3D (0.85) through LI3D-LSTM (0.86) to LI3D-BiLSTM
  (0.90) accuracy in its Table 3. ``"lstm"`` and ``"none"`` are the other two rows.
* Aggregation (soft-correlation-concat-aggregation §4): the re-encoded steps are pooled by
  soft BoF / FV / VLAD or their fusion (Table 1 "after"), or by a plain average ("before");
  see :mod:`vpipe.models.aggregation`.

Sequences are padded to a common length T and described by ``lengths``; the LSTM runs on
a packed sequence, so padding never reaches either direction (the backward LSTM starts at
each video's own last step), and the aggregation gets the matching mask.

Codebook initialisation needs centres in the space the aggregation sees. With
``temporal="none"`` that is the backbone feature space, and a k-means codebook fitted on
cached features can be loaded with :meth:`BiLSTMSoftAggHead.init_from_codebook`. With an
LSTM it is the LSTM output space, and a backbone codebook would be meaningless there (even
where the sizes happen to agree, e.g. 1024-d LI3D features and a 2×512 BiLSTM). The
aggregation is not moved in front of the LSTM to make them agree, since that is not the
papers' order; instead :func:`init_aggregation_from_features` fits k-means on the outputs
of the still-untrained temporal layer for the training videos. Those outputs move as the
LSTM learns, and the centres, being trainable, move with them.

Defaults and the readings behind them:

* ``aggregation="mean"``: §4.1 (steps 1–4) and eq. 4 of the aggregation paper average the
  three soft encodings after bringing each to one ``output_dim``; the concatenation
  (``"concat"``, the earlier default) stays available. The projection size the paper
  leaves open is K (see :class:`vpipe.models.aggregation.SoftAggregation`).
* ``hidden=256`` (:data:`HIDDEN`) per direction: neither paper gives the BiLSTM's size.
  256 per direction gives 512-d steps, half the 1024-d LI3D input, which keeps the
  averaged encoding's projections (3·K·K·512 values) and an epoch at UCF101 size within
  the CPU budget; one constant serves the module and the registered head.
* ``clusters=128``: the paper's Table 2 choice.
* ``segments=1``: the papers pool the whole sequence at once. ``segments=S`` splits each
  video's steps into S consecutive segments of (nearly) equal length, pools each with the
  same aggregation and joins the S codes in time order, the temporal grid Laptev et al.
  (CVPR 2008, "t2"/"t3") lay over bags of HOG/HOF features. It is how an order-less
  pooling, or an average over a recurrent layer's outputs that washes out where in the
  video a step was, keeps the order of the video's parts; see :func:`segment_masks`.
* ``spectrum=0``: not in the papers. ``spectrum=C`` joins to the pooled code the
  magnitude spectra over time of C learnt linear maps of the standardised input steps
  (:mod:`vpipe.models.spectrum`): how fast the video repeats itself, which the recurrent
  layer did not learn from the synthetic set's bouncing disks (bench/ablation.md).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from vpipe.errors import ConfigError
from vpipe.head_specs import AGGREGATION, HIDDEN, TEMPORAL, BiLSTMSoftAggSpec
from vpipe.models.aggregation import (
    DEFAULT_RATIO,
    SoftInit,
    alpha_from_data,
    codebook_statistics,
    make_aggregation,
)

from vpipe.models.heads.registry import Head, HeadBatch, PrepareData, register_head
from vpipe.models.spectrum import TemporalSpectrum

__all__ = ["TEMPORAL", "BiLSTMSoftAgg", "BiLSTMSoftAggHead", "init_aggregation_from_features", "segment_masks"]


def segment_masks(lengths: Tensor, total: int, segments: int) -> Tensor:
    """(B, segments, total) boolean: the steps of each of a video's ``segments`` consecutive parts.

    Segment s of a video with L valid steps covers steps ``floor(s·L/S)`` up to, not
    including, ``floor((s+1)·L/S)``: equal parts to within one step, in time order, that
    together cover the valid steps once and never reach the padding. A video shorter than
    S steps would leave segments empty (and, pooled, equal to a video with those steps
    missing); there a segment takes the one step at its start instead, so every segment
    holds at least one step and a short video repeats steps rather than inventing zeros.
    """
    lengths = torch.as_tensor(lengths, dtype=torch.int64).unsqueeze(1)
    s = torch.arange(segments, device=lengths.device)
    start = (s * lengths) // segments
    stop = torch.maximum(((s + 1) * lengths) // segments, start + 1)
    t = torch.arange(total, device=lengths.device)
    return (t >= start.unsqueeze(-1)) & (t < stop.unsqueeze(-1))


def input_scales(sample: np.ndarray, histograms: tuple[tuple[int, int], ...] = ()) -> np.ndarray:
    """Standard deviations that standardise (n, D) fit steps: per dimension, except one shared
    scale for each range ``(start, stop)`` of histogram columns the features declare.

    The rule: learned features have unrelated dimensions, each scaled by its own spread.
    The bins of normalised histograms (HOG, HOF, MBH, colour) are one quantity split
    between bins; scaling each bin by its own spread lifts near-constant bins (a still
    background's orientations, which differ per video) to the level of the few bins that
    move, and a head then memorises them. The shared scale is the root mean square of
    the range's spreads (the spread of its centred values pooled over the range), which
    keeps the bins' relative sizes. One scale over all of a feature set's histograms, not
    one per histogram: the descriptor already makes its blocks commensurable (each has
    unit norm), and equalising their spreads as well lifts a block that barely varies to
    the level of the block that carries the motion. Measured with ``hoghofmbh``: on
    ``tests/test_descriptor_order.py`` a BiLSTM scores 0.69 with per-dimension scales,
    0.75 with one scale per histogram and 0.88 with one shared scale; on the held-out
    motion set (bench/ablation.md) 71.0 % per dimension against 77.0 % shared. A floor of 1e-3
    of the median spread keeps a constant dimension from dividing by zero.
    """
    std = sample.std(axis=0)
    for start, stop in histograms:
        std[start:stop] = np.sqrt(np.mean(std[start:stop] ** 2))
    floor = max(float(np.median(std)) * 1e-3, 1e-6)
    return np.maximum(std, floor)


class BiLSTMSoftAggHead(nn.Module):
    """Classify a padded batch of clip-feature sequences ``x`` (B, T, input_dim).

    Args:
        input_dim: size of one cached clip feature (1024 for LI3D).
        num_classes: number of action classes.
        temporal: ``"none" | "lstm" | "bilstm"``; a BiLSTM concatenates both directions,
            so the aggregation sees ``2·hidden`` values per step (``hidden`` for an LSTM,
            ``input_dim`` for none).
        hidden: LSTM hidden size per direction.
        aggregation: one of :data:`vpipe.models.aggregation.AGGREGATIONS`.
        num_clusters: K of the soft aggregations (the paper settles on 128, its Table 2).
        out_dim: projection size after the soft aggregation (None: no projection, or K for
            ``"mean"``, which projects every encoding to one size).
        dropout: dropout on the video embedding before the classifier.
        segments: consecutive temporal segments pooled separately and joined in order
            (1: the whole sequence at once, as in the papers); the embedding has
            ``segments`` times the aggregation's values.
        spectrum: channels of the temporal spectrum joined to the embedding (0: none,
            as in the papers); see :class:`vpipe.models.spectrum.TemporalSpectrum`.

    The timm-style split is kept: :meth:`forward_features` gives the video embedding
    (``num_features`` values, for t-SNE and retrieval), :meth:`forward_head` the logits.
    """

    def __init__(
        self,
        input_dim: int,
        num_classes: int,
        *,
        temporal: str = "bilstm",
        hidden: int = HIDDEN,
        aggregation: str = AGGREGATION,
        num_clusters: int = 128,
        out_dim: int | None = None,
        dropout: float = 0.5,
        segments: int = 1,
        spectrum: int = 0,
    ) -> None:
        super().__init__()
        if temporal not in TEMPORAL:
            raise ConfigError(f"temporal {temporal!r} is not one of {', '.join(TEMPORAL)}")
        sizes = {"input_dim": input_dim, "num_classes": num_classes, "hidden": hidden, "segments": segments}
        for name, value in sizes.items():
            if value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value}")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"dropout must lie in [0, 1), got {dropout}")
        self.temporal = temporal
        self.num_clusters = num_clusters
        # Per-dimension standardisation of the cached features, set from the train split
        # (set_input_statistics) and saved with the weights: backbone features differ in
        # scale by orders of magnitude between layers, models and checkpoints.
        self.register_buffer("input_mean", torch.zeros(input_dim))
        self.register_buffer("input_std", torch.ones(input_dim))
        if temporal == "none":
            self.rnn = None
            self.feature_dim = input_dim
        else:
            bidirectional = temporal == "bilstm"
            self.rnn = nn.LSTM(input_dim, hidden, batch_first=True, bidirectional=bidirectional)
            self.feature_dim = 2 * hidden if bidirectional else hidden
        self.aggregation = make_aggregation(aggregation, num_clusters, self.feature_dim, out_dim)
        self.segments = segments
        if spectrum < 0:
            raise ConfigError(f"spectrum must be 0 or a positive number of channels, got {spectrum}")
        self.spectrum = TemporalSpectrum(input_dim, spectrum) if spectrum else None
        spectral = self.spectrum.out_dim if self.spectrum is not None else 0
        self.num_features = segments * self.aggregation.out_dim + spectral
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(self.num_features, num_classes)

    def sequence_features(self, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """Per-step descriptors the aggregation sees (B, T, feature_dim) and the valid-step mask."""
        if x.dim() != 3:
            raise ValueError(f"expected x of shape (B, T, D), got {tuple(x.shape)}")
        b, t, _ = x.shape
        lengths = torch.as_tensor(lengths, dtype=torch.int64)
        if lengths.shape != (b,) or lengths.min() < 1 or lengths.max() > t:
            raise ValueError(f"lengths must be {b} values in [1, {t}], got {lengths.tolist()}")
        mask = torch.arange(t, device=x.device) < lengths.to(x.device).unsqueeze(1)
        x = self.standardise(x)
        if self.rnn is None:
            return x, mask
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, _ = self.rnn(packed)
        h, _ = pad_packed_sequence(out, batch_first=True, total_length=t)
        return h, mask

    def standardise(self, x: Tensor) -> Tensor:
        """Cached features on the train split's per-dimension scale: what the temporal
        layer and the spectrum read."""
        return (x - self.input_mean) / self.input_std

    def set_input_statistics(self, mean: Tensor, std: Tensor) -> None:
        """Standardise inputs with these per-dimension statistics (of the train descriptors)."""
        self.input_mean.copy_(torch.as_tensor(mean, dtype=self.input_mean.dtype))
        self.input_std.copy_(torch.as_tensor(std, dtype=self.input_std.dtype))

    def forward_features(self, x: Tensor, lengths: Tensor) -> Tensor:
        """Video embedding after aggregation, (B, num_features): the codes of the
        ``segments`` parts in time order (one aggregation for all, as one batch), then the
        temporal spectrum when the head has one."""
        h, mask = self.sequence_features(x, lengths)
        if self.segments == 1:
            pooled = self.aggregation(h, mask)
        else:
            b, t, d = h.shape
            parts = segment_masks(torch.as_tensor(lengths), t, self.segments).to(h.device)
            h = h.unsqueeze(1).expand(b, self.segments, t, d).reshape(b * self.segments, t, d)
            pooled = self.aggregation(h, parts.reshape(b * self.segments, t)).reshape(b, -1)
        if self.spectrum is None:
            return pooled
        return torch.cat([pooled, self.spectrum(self.standardise(x), mask)], 1)

    def forward_head(self, embedding: Tensor) -> Tensor:
        return self.classifier(self.dropout(embedding))

    def forward(
        self, x: Tensor, lengths: Tensor, return_embedding: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Logits (B, num_classes), and the embedding too when ``return_embedding``."""
        embedding = self.forward_features(x, lengths)
        logits = self.forward_head(embedding)
        return (logits, embedding) if return_embedding else logits

    def init_from_codebook(
        self,
        centers: np.ndarray | Tensor,
        alpha: float | None = None,
        variances: np.ndarray | Tensor | None = None,
        weights: np.ndarray | Tensor | None = None,
    ) -> float:
        """Initialise the soft aggregation from a codebook in the space it sees; return α.

        ``centers`` (K, feature_dim) must come from the aggregation's input: backbone
        features only when ``temporal="none"``, otherwise use
        :func:`init_aggregation_from_features`.
        """
        init = getattr(self.aggregation, "init_from_codebook", None)
        if init is None:
            raise ConfigError("aggregation 'avg' has no codebook; choose a soft aggregation")
        return init(centers, alpha, variances, weights)


@torch.no_grad()
def init_aggregation_from_features(
    head: BiLSTMSoftAggHead,
    batches: Iterable[tuple[Tensor, Tensor]],
    *,
    ratio: float = DEFAULT_RATIO,
    max_points: int = 50_000,
    seed: int = 0,
) -> SoftInit:
    """Fit a codebook on what ``head``'s aggregation sees and initialise the aggregation from it.

    ``batches`` yields ``(x, lengths)`` for the training videos, as the trainer feeds them.
    The valid steps are passed through the head's temporal layer as it is now (untrained,
    in eval mode), at most ``max_points`` of them are drawn at random, and k-means with
    ``head.num_clusters`` centres is fitted on them; α comes from :func:`alpha_from_data`
    with ``ratio`` and the FV variances and weights from :func:`codebook_statistics`.
    Returns the codebook so that the run can record it.
    """
    if not hasattr(head.aggregation, "init_from_codebook"):
        raise ConfigError("aggregation 'avg' has no codebook; choose a soft aggregation")
    device = head.classifier.weight.device
    was_training = head.training
    head.eval()
    try:
        chunks = []
        for x, lengths in batches:
            h, mask = head.sequence_features(x.to(device), lengths)
            chunks.append(h[mask].float().cpu().numpy())
    finally:
        head.train(was_training)
    points = np.concatenate(chunks)
    if len(points) < head.num_clusters:
        raise ConfigError(
            f"{len(points)} feature steps cannot fit {head.num_clusters} clusters; "
            "pass more videos or lower num_clusters"
        )
    rng = np.random.default_rng(seed)
    if len(points) > max_points:
        points = points[rng.choice(len(points), max_points, replace=False)]
    from sklearn.cluster import KMeans  # here: importing it costs a second to every command listing heads

    centers = KMeans(head.num_clusters, n_init=1, random_state=seed).fit(points).cluster_centers_
    alpha = alpha_from_data(points, centers, ratio)
    variances, weights = codebook_statistics(points, centers)
    head.init_from_codebook(centers, alpha, variances, weights)
    return SoftInit(centers, alpha, variances, weights)


#: Train descriptors the input statistics and α are taken from; both are stable long before this.
SAMPLE_STEPS = 20_000


@register_head
class BiLSTMSoftAgg(BiLSTMSoftAggSpec, Head):
    """``bilstm-softagg``: :class:`BiLSTMSoftAggHead` on one per-step input, as a plugin.

    Hooks: :meth:`prepare` standardises the inputs with train statistics (backbone
    features differ in scale by orders of magnitude) and starts the soft aggregation from
    a codebook (see the module docstring); :meth:`external_files` declares the
    ``vpipe encode`` codebook a ``temporal=none`` run loads, so that a refitted codebook
    makes a new run.
    """

    def __init__(self, shapes: dict[str, tuple[int, ...]], num_classes: int, **options: Any) -> None:
        super().__init__()
        shape = shapes["x"]
        if len(shape) != 1:
            raise ConfigError(
                f"head {self.name!r} reads per-step vectors (τ, D) but layer {options['layer']!r} has steps of "
                f"shape {list(shape)}: choose a pooled layer with -O layer=..."
            )
        self.config = options
        self.model = BiLSTMSoftAggHead(
            shape[0],
            num_classes,
            temporal=options["temporal"],
            hidden=options["hidden"],
            aggregation=options["aggregation"],
            num_clusters=options["clusters"],
            out_dim=options["out_dim"],
            dropout=options["dropout"],
            segments=options["segments"],
            spectrum=options["spectrum"],
        )
        self.num_features = self.model.num_features

    def prepare(self, data: PrepareData) -> dict[str, Any] | None:
        """Input statistics from fit descriptors (see :func:`input_scales`), then the
        aggregation's starting centres."""
        sample = data.sample("x", SAMPLE_STEPS)
        wide = sample.astype(np.float64)
        histograms = data.histogram_columns("x")
        std = input_scales(wide, histograms)
        self.model.set_input_statistics(torch.from_numpy(wide.mean(axis=0)), torch.from_numpy(std))
        shared = ", ".join(f"{start}:{stop}" for start, stop in histograms)
        scale = {"input_scale": f"one shared scale for histogram columns {shared}" if histograms else "per dimension"}
        if self.config["aggregation"] == "avg":
            return scale
        path = data.files.get("codebook")
        if path is not None:
            return scale | self._init_from_file(path, sample)
        batches = ((b.inputs["x"], b.lengths["x"]) for b in data.batches())
        fitted = init_aggregation_from_features(self.model, batches, seed=data.seed)
        space = "backbone features" if self.config["temporal"] == "none" else f"untrained {self.config['temporal']} outputs"
        return scale | {"source": f"k-means on {space} of {data.fit_videos} fit videos", "alpha": fitted.alpha}

    def _init_from_file(self, path: Path, sample: np.ndarray) -> dict[str, Any]:
        """Centres, GMM and α from a ``vpipe encode`` codebook, in standardised units."""
        from vpipe.encode import load_codebook

        codebook = load_codebook(path)
        if codebook.pca is not None:
            raise ConfigError(
                f"codebook {path} was fitted after PCA to {codebook.dim} dimensions; the head's soft aggregation "
                f"needs centres in the feature space: fit one with `vpipe encode --pca 0` or leave out -O codebook"
            )
        clusters, dim = self.config["clusters"], self.model.feature_dim
        if codebook.centroids.shape != (clusters, dim):
            raise ConfigError(
                f"codebook {path} has {codebook.clusters} centres of {codebook.dim} values; the run needs "
                f"{clusters} of {dim}: pass -O clusters={codebook.clusters} or fit one with "
                f"`vpipe encode --clusters {clusters}`"
            )
        mean, std = self.model.input_mean.numpy(), self.model.input_std.numpy()
        centroids = (codebook.centroids - mean) / std
        alpha = alpha_from_data((sample - mean) / std, centroids)
        self.model.init_from_codebook(centroids, alpha, codebook.gmm_variances / std**2, codebook.gmm_weights)
        return {"source": "file", "path": str(path), "alpha": alpha}

    def forward_features(self, batch: HeadBatch) -> Tensor:
        return self.model.forward_features(batch.inputs["x"], batch.lengths["x"])

    def forward_head(self, embedding: Tensor) -> Tensor:
        return self.model.forward_head(embedding)
