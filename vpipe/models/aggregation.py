"""Soft-assignment aggregation of per-clip feature sequences.

A video reaches a head as a sequence of clip descriptors ``x_1 … x_T`` (LI3D: τ×1024, or
the BiLSTM outputs computed from them). The modules here turn that sequence into one
fixed-size video descriptor with the encodings of Wang & Yi, "Spatio-temporal feature soft
correlation concatenation aggregation" (§3–4):

* :class:`SoftBoF` – 0th-order statistics: the soft histogram of assignments (§3.1.1).
* :class:`SoftFV` – 1st- and 2nd-order statistics, an improved Fisher vector (§3.1.2).
* :class:`SoftVLAD` – residuals to the centres, eq. 3 (§3.1.3).
* :class:`SoftAggregation` – one encoding, or the three fused by concatenation or by the
  paper's project–stack–average steps 1–4 (§4.1).
* :class:`MaskedAvgPool` – the plain average, the baseline the paper improves on.

Every module takes ``x`` (B, T, D) and an optional boolean ``mask`` (B, T), True on valid
steps, and returns (B, ``out_dim``). Padded steps are overwritten with zeros before they
meet any parameter and then get zero weight, so whatever a collate function left there
(even NaN) cannot reach the output or the gradients.

Soft assignment (eq. 1 → eq. 2): ``softmax_k(−α‖x − c_k‖²)`` equals
``softmax_k(w_kᵀx + b_k)`` with ``w_k = 2αc_k`` and ``b_k = −α‖c_k‖²``, because the
``−α‖x‖²`` term is the same for every k and cancels in the softmax. Training then frees
``w``, ``b`` and ``c`` from each other (as NetVLAD does), which is what lets
back-propagation move the centres towards the data (§4, Fig. 1).
:meth:`init_from_codebook` starts all three from a k-means codebook, so training begins at
the classical encoding; without it the parameters start random.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from vpipe.errors import ConfigError

__all__ = [
    "AGGREGATIONS",
    "DEFAULT_RATIO",
    "SoftInit",
    "MaskedAvgPool",
    "SoftAggregation",
    "SoftAssignment",
    "SoftBoF",
    "SoftFV",
    "SoftVLAD",
    "alpha_from_data",
    "codebook_statistics",
    "make_aggregation",
    "signed_sqrt",
]

ENCODINGS = ("softbof", "softfv", "softvlad")
FUSIONS = ("concat", "mean")
AGGREGATIONS = ("avg", *ENCODINGS, *FUSIONS)

DEFAULT_RATIO = 0.1
"""Default runner-up/winner assignment ratio for :func:`alpha_from_data`."""

POWER_EPS = 1e-6
"""ε of :func:`signed_sqrt`."""

NORM_EPS = 1e-12
"""The floor of an L2 norm a vector is divided by (``F.normalize``'s default)."""

ArrayLike = np.ndarray | Tensor


class SoftInit(NamedTuple):
    """What :meth:`init_from_codebook` loads: centres, sharpness and (for FV) a diagonal GMM.

    Not a stored codebook (that is :class:`vpipe.encode.Codebook`, with its provenance):
    these are the resolved parameters one soft assignment starts from.

    ``variances`` and ``weights`` are None where the caller left them to their defaults.
    """

    centers: np.ndarray
    alpha: float
    variances: np.ndarray | None
    weights: np.ndarray | None


def signed_sqrt(z: Tensor, eps: float = POWER_EPS) -> Tensor:
    """Power normalisation ``sign(z)·√|z|`` in the smooth form ``z / √(|z| + ε)``.

    The exact signed square root has an infinite slope at 0, and Fisher-vector entries are
    exactly 0 wherever a cluster receives no mass, so its gradient would be inf/NaN there.
    ``z / √(|z| + ε)`` is odd and increasing, has slope ``1/√ε`` at 0, and differs from
    ``sign(z)·√|z|`` by less than ``0.31·√ε`` everywhere.
    """
    return z * torch.rsqrt(z.abs() + eps)


class _PowerL2(torch.autograd.Function):
    """``F.normalize(signed_sqrt(z), dim=1)`` for (B, N) ``z``, with a hand-written backward.

    The same function as the two composed (the order of a few float sums aside), in fewer
    passes over the (B, 2·K·D) Fisher vectors, whose element-wise work dominated a
    training step of the default head on CPU. Autograd of the composition runs about a
    dozen kernels backwards (abs, sgn, rsqrt's power, the norm's division, masked fills);
    this saves the slope of the signed square root, ``d = ½·r·(1 + ε·r²)`` with
    ``r = 1/√(|z| + ε)``, and the output, so that the backward is three passes:
    ``∂z = (∂o − [‖y‖ ≥ δ]·⟨∂o, o⟩·o) · d / max(‖y‖, δ)`` (δ = F.normalize's 1e-12, whose
    clamp passes no gradient below it).
    """

    @staticmethod
    def forward(ctx, z: Tensor, eps: float) -> Tensor:
        r = z.abs().add_(eps).rsqrt_()
        y = z * r
        norm = torch.linalg.vector_norm(y, dim=1, keepdim=True)
        scale = norm.clamp_min(NORM_EPS)
        out = y.div_(scale)
        slope = r.square().mul_(0.5 * eps).add_(0.5).mul_(r)
        ctx.save_for_backward(out, slope, scale, norm >= NORM_EPS)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        out, slope, scale, passes = ctx.saved_tensors
        dot = torch.bmm(grad.unsqueeze(1), out.unsqueeze(2)).squeeze(2)
        gz = torch.addcmul(grad, out, -dot * passes.to(dot.dtype))
        return gz.mul_(slope).div_(scale), None


def _masked(x: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
    """Return ``x`` with padded steps zeroed and the (B, T) step weights (1 valid, 0 padded)."""
    if x.dim() != 3:
        raise ValueError(f"expected x of shape (B, T, D), got {tuple(x.shape)}")
    if mask is None:
        return x, x.new_ones(x.shape[:2])
    if mask.shape != x.shape[:2]:
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match x {tuple(x.shape[:2])}")
    return x.masked_fill(~mask.unsqueeze(-1), 0.0), mask.to(x.dtype)


def _check_sizes(num_clusters: int, dim: int) -> None:
    if num_clusters < 1:
        raise ConfigError(f"num_clusters must be a positive integer, got {num_clusters}")
    if dim < 1:
        raise ConfigError(f"dim must be a positive integer, got {dim}")


def _as_float64(a: ArrayLike, name: str) -> np.ndarray:
    if isinstance(a, Tensor):
        a = a.detach().cpu().numpy()
    a = np.asarray(a, dtype=np.float64)
    if not np.isfinite(a).all():
        raise ConfigError(f"{name} contains non-finite values")
    return a


def _nearest_two(x: np.ndarray, centers: np.ndarray, chunk: int = 4096):
    """Squared distance to the nearest and second-nearest centre, and the nearest index."""
    c2 = (centers**2).sum(1)
    d1 = np.empty(len(x))
    d2 = np.empty(len(x))
    idx = np.empty(len(x), dtype=np.int64)
    for s in range(0, len(x), chunk):
        xs = x[s : s + chunk]
        d = np.maximum((xs**2).sum(1, keepdims=True) - 2.0 * xs @ centers.T + c2, 0.0)
        rows = np.arange(len(xs))
        i = d.argmin(1)
        idx[s : s + chunk] = i
        d1[s : s + chunk] = d[rows, i]
        d[rows, i] = np.inf
        d2[s : s + chunk] = d.min(1)
    return d1, d2, idx


def alpha_from_data(x: ArrayLike, centers: ArrayLike, ratio: float = DEFAULT_RATIO) -> float:
    """Choose the sharpness α of eq. 1 from descriptors ``x`` (N, D) and ``centers`` (K, D).

    The paper fixes α ∈ (0, 1) without a rule, but its effect depends on the scale of the
    features: the assignment of a descriptor to its second-nearest centre relative to its
    nearest is ``exp(−α(d₂ − d₁))`` with d the squared distances. This picks α so that, for
    the median descriptor, that runner-up/winner ratio equals ``ratio``::

        α = ln(1/ratio) / median(d₂ − d₁)

    (exp is monotone, so the median of the ratios is the ratio at the median gap when N is
    odd). The result is invariant to rescaling the feature space (α scales as 1/s²);
    ``ratio`` → 0 approaches hard k-means assignment, ``ratio`` → 1 uniform assignment.
    """
    if not 0.0 < ratio < 1.0:
        raise ConfigError(f"ratio must lie in (0, 1), got {ratio}")
    x = _as_float64(x, "x")
    centers = _as_float64(centers, "centers")
    if x.ndim != 2 or centers.ndim != 2 or x.shape[1] != centers.shape[1]:
        raise ConfigError(f"x {x.shape} and centers {centers.shape} must be (N, D) and (K, D)")
    if len(centers) < 2:
        raise ConfigError("alpha_from_data needs at least 2 centres; pass alpha explicitly")
    d1, d2, _ = _nearest_two(x, centers)
    gap = float(np.median(d2 - d1))
    if gap <= 0.0:
        raise ConfigError(
            "cannot choose alpha: the median descriptor is equidistant from its two nearest "
            "centres (duplicate centres?); pass alpha explicitly"
        )
    return math.log(1.0 / ratio) / gap


def codebook_statistics(x: ArrayLike, centers: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Diagonal variances (K, D) and mixture weights (K,) of the GMM a k-means codebook implies.

    Each descriptor is assigned to its nearest centre, as k-means does. Cluster k's variance
    is the mean squared deviation of its members from ``c_k`` with one pseudo-member at the
    global per-dimension variance, ``(Σ_members (x − c_k)² + v_global) / (n_k + 1)``, and its
    weight is ``(n_k + 1) / (N + K)``: empty and singleton clusters then get finite,
    positive values (the global variance, a small weight) instead of 0, which the Fisher
    vector would divide by or take the log of.
    """
    x = _as_float64(x, "x")
    centers = _as_float64(centers, "centers")
    if x.ndim != 2 or centers.ndim != 2 or x.shape[1] != centers.shape[1]:
        raise ConfigError(f"x {x.shape} and centers {centers.shape} must be (N, D) and (K, D)")
    _, _, idx = _nearest_two(x, centers)
    k = len(centers)
    counts = np.bincount(idx, minlength=k).astype(np.float64)
    sq = np.zeros_like(centers)
    np.add.at(sq, idx, (x - centers[idx]) ** 2)
    variances = (sq + x.var(0)) / (counts + 1.0)[:, None]
    weights = (counts + 1.0) / (len(x) + k)
    return np.maximum(variances, 1e-8), weights


def _resolve_codebook(
    centers: ArrayLike,
    alpha: float | None,
    variances: ArrayLike | None,
    weights: ArrayLike | None,
    num_clusters: int,
    dim: int,
) -> SoftInit:
    centers = _as_float64(centers, "centers")
    if centers.shape != (num_clusters, dim):
        raise ConfigError(f"centers must have shape ({num_clusters}, {dim}), got {centers.shape}")
    if alpha is None:
        alpha = alpha_from_data(centers, centers)
    elif not alpha > 0.0:
        raise ConfigError(f"alpha must be positive, got {alpha}")
    if variances is not None:
        variances = _as_float64(variances, "variances")
        if variances.shape != (num_clusters, dim) or (variances <= 0).any():
            raise ConfigError(
                f"variances must be positive with shape ({num_clusters}, {dim}), "
                f"got shape {variances.shape}"
            )
    if weights is not None:
        weights = _as_float64(weights, "weights")
        if weights.shape != (num_clusters,) or (weights <= 0).any():
            raise ConfigError(
                f"weights must be positive with shape ({num_clusters},), got {weights.shape}"
            )
        weights = weights / weights.sum()
    return SoftInit(centers, float(alpha), variances, weights)


class SoftAssignment(nn.Module):
    """``a_k(x) = softmax_k(w_kᵀx + b_k)`` (eq. 2): a linear layer and a softmax over clusters."""

    def __init__(self, num_clusters: int, dim: int) -> None:
        super().__init__()
        self.logits = nn.Linear(dim, num_clusters)

    def forward(self, x: Tensor) -> Tensor:
        return self.logits(x).softmax(-1)

    @torch.no_grad()
    def tie_to_centers(self, centers: Tensor, alpha: float, weights: Tensor | None = None) -> None:
        """Set ``w_k = 2αc_k``, ``b_k = −α‖c_k‖² (+ log π_k)`` so that eq. 2 equals eq. 1.

        With mixture weights π the result is ``softmax_k(log π_k − α‖x − c_k‖²)``, the
        posterior of an isotropic GMM with variance 1/(2α); without them, exactly eq. 1.
        """
        self.logits.weight.copy_(2.0 * alpha * centers)
        bias = -alpha * centers.pow(2).sum(1)
        self.logits.bias.copy_(bias if weights is None else bias + weights.log())


class _FromCodebook:
    """``init_from_codebook`` of an encoding, and of a fusion of encodings sharing one codebook."""

    num_clusters: int
    dim: int

    def _encodings(self) -> Iterable[_SoftEncoding]:
        """The encodings the codebook initialises."""
        raise NotImplementedError

    @torch.no_grad()
    def init_from_codebook(
        self,
        centers: ArrayLike,
        alpha: float | None = None,
        variances: ArrayLike | None = None,
        weights: ArrayLike | None = None,
    ) -> float:
        """Start every encoding from a k-means codebook ``centers`` (K, D); return the α used.

        The assignment is tied to the centres (:meth:`SoftAssignment.tie_to_centers`). With
        ``alpha`` None, :func:`alpha_from_data` is applied to the centres themselves (a
        descriptor sitting on a centre gives its nearest other centre ``DEFAULT_RATIO`` of its
        weight); pass the α from :func:`alpha_from_data` on real descriptors when available.
        ``variances`` (K, D) and ``weights`` (K,) are the diagonal GMM of
        :func:`codebook_statistics`; weights act as a prior in the assignment of every
        encoding, variances are used by :class:`SoftFV` only.
        """
        cb = _resolve_codebook(centers, alpha, variances, weights, self.num_clusters, self.dim)
        for encoding in self._encodings():
            encoding._load(cb)
        return cb.alpha


class _SoftEncoding(_FromCodebook, nn.Module):
    """Shared parts of the three encodings: sizes, assignment, codebook initialisation."""

    def __init__(self, num_clusters: int, dim: int) -> None:
        super().__init__()
        _check_sizes(num_clusters, dim)
        self.num_clusters = num_clusters
        self.dim = dim
        self.assign = SoftAssignment(num_clusters, dim)

    def _weighted_assignment(self, x: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """Zeroed ``x``, assignments (B, T, K) with padded steps 0, and valid-step counts (B,)."""
        x, w = _masked(x, mask)
        return x, self.assign(x) * w.unsqueeze(-1), w.sum(1)

    def _encodings(self) -> Iterable[_SoftEncoding]:
        return (self,)

    def _tensor(self, a: np.ndarray) -> Tensor:
        p = self.assign.logits.weight
        return torch.as_tensor(a, dtype=p.dtype, device=p.device)

    def _load(self, cb: SoftInit) -> None:
        weights = None if cb.weights is None else self._tensor(cb.weights)
        self.assign.tie_to_centers(self._tensor(cb.centers), cb.alpha, weights)


class SoftBoF(_SoftEncoding):
    """Soft bag of features: the mean soft assignment over valid steps, K values (§3.1.1).

    BoF counts how often each codeword occurs (Algorithm 1, step 4); with soft assignment
    the count becomes ``Σ_t a_k(x_t)``, and dividing by the number of valid steps gives the
    frequency histogram the paper describes, comparable across videos of different length.
    It already sums to 1, so no L2 normalisation is applied: the paper normalises only the
    VLAD residuals, and rescaling a histogram to unit L2 norm would make its scale depend
    on how peaked it is. The centres live only in ``w`` and ``b`` here (eq. 2): BoF has no
    residual term that would use a separate ``c``.
    """

    def __init__(self, num_clusters: int, dim: int) -> None:
        super().__init__(num_clusters, dim)
        self.out_dim = num_clusters

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        _, a, n = self._weighted_assignment(x, mask)
        return a.sum(1) / n.clamp_min(1.0).unsqueeze(-1)


class SoftVLAD(_SoftEncoding):
    """Soft VLAD (NetVLAD): ``V_k = Σ_t a_k(x_t)(x_t − c_k)`` (eq. 3), K·D values.

    Each cluster's residual sum is L2-normalised on its own (intra-normalisation, as in
    NetVLAD, so that a few bursty clusters cannot dominate), then the flattened K·D vector
    is L2-normalised (Algorithm 3, step 5). Layout: cluster-major, ``out[k·D + j] = V_k(j)``.
    """

    def __init__(self, num_clusters: int, dim: int) -> None:
        super().__init__(num_clusters, dim)
        self.centers = nn.Parameter(torch.randn(num_clusters, dim) / math.sqrt(dim))
        self.out_dim = num_clusters * dim

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        x, a, _ = self._weighted_assignment(x, mask)
        v = torch.baddbmm(a.sum(1).unsqueeze(-1) * self.centers, a.transpose(1, 2), x, beta=-1.0)
        # Both normalisations as one scale per cluster: after the intra-normalisation cluster
        # k has norm n_k / max(n_k, δ), so the outer norm follows from the K cluster norms
        # and the K·D values are scaled once (F.normalize twice would pass over them and
        # their gradients several times; this is most of soft VLAD's cost in training).
        norms = torch.linalg.vector_norm(v, dim=2, keepdim=True)
        inner = norms.clamp_min(NORM_EPS)
        outer = torch.linalg.vector_norm(norms / inner, dim=1, keepdim=True).clamp_min(NORM_EPS)
        return (v * (1.0 / (inner * outer))).flatten(1)

    def _load(self, cb: SoftInit) -> None:
        super()._load(cb)
        self.centers.copy_(self._tensor(cb.centers))


class SoftFV(_SoftEncoding):
    """Soft Fisher vector: 1st- and 2nd-order statistics, 2·K·D values (§3.1.2).

    The model is a diagonal GMM with trainable means ``c_k``, log-variances ``log σ_k²`` and
    mixture weights ``π = softmax(θ)``; the posterior is replaced by the soft assignment
    ``a_k`` of eq. 2 (free ``w``, ``b``), as for the other encodings. Over the N valid
    steps, with ``u = (x_t − c_k)/σ_k``::

        Φ1_k = 1/(N√π_k)  Σ_t a_k(x_t) u
        Φ2_k = 1/(N√2π_k) Σ_t a_k(x_t) (u² − 1)

    which are the gradients of the log-likelihood w.r.t. the means and standard deviations
    scaled by the diagonal Fisher information (Algorithm 2, step 3). The gradient w.r.t. the
    mixture weights (0th order) is left out: it carries the same information as
    :class:`SoftBoF`, which the fusion adds. Improved-FV normalisation: power normalisation
    (:func:`signed_sqrt`), then L2 over the whole vector. Layout ``[Φ1 (K·D), Φ2 (K·D)]``,
    each cluster-major.
    """

    def __init__(self, num_clusters: int, dim: int) -> None:
        super().__init__(num_clusters, dim)
        self.centers = nn.Parameter(torch.randn(num_clusters, dim) / math.sqrt(dim))
        self.log_var = nn.Parameter(torch.zeros(num_clusters, dim))
        self.mix_logits = nn.Parameter(torch.zeros(num_clusters))
        self.out_dim = 2 * num_clusters * dim

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """Φ1 and Φ2 as affine maps of the assignment-weighted moments.

        With the 1/N folded into the (B, T, K) assignments, ``s1 = Σ_t a x``,
        ``s2 = Σ_t a x²`` and ``m = Σ_t a``, and per-cluster constants of the GMM alone::

            Φ1 = s1·c1 + m·b1,  c1 = 1/(σ√π),  b1 = −μ·c1
            Φ2 = s2·c2 + s1·e2 + m·b2,  c2 = 1/(σ²√(2π)),  e2 = −2μ·c2,  b2 = μ²·c2 − 1/√(2π)

        which expands the formulas above. The constants are (K, D); only the five fused
        multiply-adds touch the (B, K, D) values, against about fifteen element-wise passes
        (and their gradients) for the formulas as written.
        """
        x, a, n = self._weighted_assignment(x, mask)
        a = a / n.clamp_min(1.0)[:, None, None]
        at = a.transpose(1, 2)
        mass = a.sum(1).unsqueeze(-1)
        s1 = at @ x
        s2 = at @ (x * x)
        mu = self.centers
        pi = self.mix_logits.softmax(0).unsqueeze(-1)
        inv_std = torch.exp(-0.5 * self.log_var)
        c1 = inv_std * pi.rsqrt()
        root2pi = (2.0 * pi).sqrt()
        c2 = inv_std.square() / root2pi
        phi1 = torch.addcmul(mass * (-mu * c1), s1, c1)
        phi2 = torch.addcmul(torch.addcmul(mass * (mu.square() * c2 - 1.0 / root2pi), s1, -2.0 * mu * c2), s2, c2)
        z = torch.cat([phi1.flatten(1), phi2.flatten(1)], dim=1)
        return _PowerL2.apply(z, POWER_EPS)

    def _load(self, cb: SoftInit) -> None:
        """Also load the GMM; without variances, use 1/(2α), the variance eq. 1 implies."""
        super()._load(cb)
        self.centers.copy_(self._tensor(cb.centers))
        if cb.variances is None:
            self.log_var.fill_(-math.log(2.0 * cb.alpha))
        else:
            self.log_var.copy_(self._tensor(np.log(cb.variances)))
        if cb.weights is None:
            self.mix_logits.zero_()
        else:
            self.mix_logits.copy_(self._tensor(np.log(cb.weights)))


class MaskedAvgPool(nn.Module):
    """Mean over valid steps, D values: the no-aggregation baseline (Table 1, "before")."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.out_dim = dim

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        x, w = _masked(x, mask)
        return x.sum(1) / w.sum(1).clamp_min(1.0).unsqueeze(-1)


_ENCODERS: dict[str, type[_SoftEncoding]] = {
    "softbof": SoftBoF,
    "softfv": SoftFV,
    "softvlad": SoftVLAD,
}


class SoftAggregation(_FromCodebook, nn.Module):
    """One soft encoding, or the three fused, optionally projected to ``out_dim``.

    ``kind``:

    * ``"softbof" | "softfv" | "softvlad"`` – that encoding; with ``out_dim``, followed by
      a linear projection (the paper's per-encoding ``output_dim``, §4.1 step 1).
    * ``"concat"`` – ``[BoF, FV, VLAD]`` concatenated, K·(3D + 1) values, each part keeping
      its own normalisation; with ``out_dim``, followed by one linear projection.
    * ``"mean"`` – §4.1 steps 1–4 and eq. 4: each encoding projected by its own linear
      layer to ``out_dim`` (the paper's ``output_dim``, the size every encoding is brought
      to before "the fusion operation"), stacked to (B, 3, out_dim) and averaged over the
      encodings. The paper does not give ``output_dim``; with ``out_dim=None`` it is K,
      the one size the paper fixes for all three (soft-BoF's own output), which keeps
      the projections at K·(1 + 3D)·K parameters (25 M for K = 128 and a 2×256 BiLSTM)
      instead of the 3·K·D·D' a step-sized output would need. Averaging three linear maps
      is itself a linear map of the concatenation, so this is the function class of
      ``"concat"`` with a projection; it differs in parametrisation, initialisation and
      a classifier K·(3D + 1)/K times smaller.

    Each encoding has its own assignment and centres: the paper initialises the centres of
    the three differently (§4, "frequency distribution", "mean and variance", "residuals").
    """

    def __init__(self, kind: str, num_clusters: int, dim: int, out_dim: int | None = None) -> None:
        super().__init__()
        if kind not in (*ENCODINGS, *FUSIONS):
            raise ConfigError(
                f"soft aggregation kind {kind!r} is not one of {', '.join((*ENCODINGS, *FUSIONS))}"
            )
        if out_dim is not None and out_dim < 1:
            raise ConfigError(f"out_dim must be a positive integer or None, got {out_dim}")
        if kind == "mean" and out_dim is None:
            out_dim = num_clusters
        self.kind, self.num_clusters, self.dim = kind, num_clusters, dim
        names = ENCODINGS if kind in FUSIONS else (kind,)
        self.encoders = nn.ModuleDict({n: _ENCODERS[n](num_clusters, dim) for n in names})
        sizes = [e.out_dim for e in self.encoders.values()]
        if kind == "mean":
            self.proj = nn.ModuleDict({n: nn.Linear(s, out_dim) for n, s in zip(names, sizes)})
            self.out_dim = out_dim
        else:
            self.proj = None if out_dim is None else nn.Linear(sum(sizes), out_dim)
            self.out_dim = sum(sizes) if out_dim is None else out_dim

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        codes = {n: e(x, mask) for n, e in self.encoders.items()}
        if self.kind == "mean":
            return torch.stack([self.proj[n](c) for n, c in codes.items()], dim=1).mean(1)
        z = torch.cat(list(codes.values()), dim=1)
        return z if self.proj is None else self.proj(z)

    def _encodings(self) -> Iterable[_SoftEncoding]:
        return self.encoders.values()


def make_aggregation(
    kind: str, num_clusters: int, dim: int, out_dim: int | None = None
) -> MaskedAvgPool | SoftAggregation:
    """Build the aggregation named ``kind`` (one of :data:`AGGREGATIONS`) over ``dim``-d steps.

    ``"avg"`` is the masked mean (``dim`` out, no clusters, no ``out_dim``); every other kind
    is a :class:`SoftAggregation`.
    """
    if kind == "avg":
        if out_dim is not None:
            raise ConfigError("out_dim applies to soft aggregations only; 'avg' returns dim values")
        return MaskedAvgPool(dim)
    if kind not in AGGREGATIONS:
        raise ConfigError(f"aggregation {kind!r} is not one of {', '.join(AGGREGATIONS)}")
    return SoftAggregation(kind, num_clusters, dim, out_dim)
