"""Soft aggregation against numpy implementations of the formulas (soft-correlation §3–4)."""

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans
from sklearn.datasets import make_blobs

from vpipe.errors import ConfigError
from vpipe.models.aggregation import (
    AGGREGATIONS,
    POWER_EPS,
    MaskedAvgPool,
    SoftAggregation,
    SoftBoF,
    SoftFV,
    SoftVLAD,
    _masked,
    _PowerL2,
    alpha_from_data,
    codebook_statistics,
    make_aggregation,
    signed_sqrt,
)

K, D = 4, 5
LENGTHS = [6, 3, 1]


# --- numpy references, one video x (T, D) at a time --------------------------------------


def np_softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def np_assign(x, w, b):
    return np_softmax(x @ w.T + b)


def np_bof(x, w, b):
    return np_assign(x, w, b).mean(0)


def np_vlad(x, w, b, c):
    a = np_assign(x, w, b)
    v = np.einsum("tk,tkd->kd", a, x[:, None, :] - c[None])
    v = v / np.linalg.norm(v, axis=1, keepdims=True)
    v = v.ravel()
    return v / np.linalg.norm(v)


def np_fv(x, w, b, c, log_var, mix_logits):
    a = np_assign(x, w, b)
    pi = np_softmax(mix_logits)[:, None]
    u = (x[:, None, :] - c[None]) / np.exp(0.5 * log_var)[None]
    n = len(x)
    g1 = np.einsum("tk,tkd->kd", a, u) / (n * np.sqrt(pi))
    g2 = np.einsum("tk,tkd->kd", a, u**2 - 1) / (n * np.sqrt(2 * pi))
    z = np.concatenate([g1.ravel(), g2.ravel()])
    z = z / np.sqrt(np.abs(z) + POWER_EPS)
    return z / np.linalg.norm(z)


def np_hard_vlad(x, c, idx):
    v = np.zeros_like(c)
    np.add.at(v, idx, x - c[idx])
    v = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    v = v.ravel()
    return v / np.linalg.norm(v)


# --- helpers ------------------------------------------------------------------------------


def randomize(module, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(0.5 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return module


def params(m):
    out = [m.assign.logits.weight, m.assign.logits.bias]
    out += [getattr(m, n) for n in ("centers", "log_var", "mix_logits") if hasattr(m, n)]
    return [p.detach().numpy() for p in out]


def padded_batch(seed=0, garbage=np.nan):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(len(LENGTHS), max(LENGTHS), D))
    mask = np.arange(x.shape[1])[None] < np.array(LENGTHS)[:, None]
    x[~mask] = garbage
    return torch.from_numpy(x), torch.from_numpy(mask)


REFERENCES = [(SoftBoF, np_bof), (SoftVLAD, np_vlad), (SoftFV, np_fv)]


# --- encodings ----------------------------------------------------------------------------


@pytest.mark.parametrize("cls, ref", REFERENCES)
def test_encoding_matches_numpy_per_video(cls, ref):
    m = randomize(cls(K, D).double())
    x, mask = padded_batch()
    out = m(x, mask).detach().numpy()
    assert out.shape == (len(LENGTHS), m.out_dim)
    for i, n in enumerate(LENGTHS):
        np.testing.assert_allclose(out[i], ref(x[i, :n].numpy(), *params(m)), rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize("cls", [SoftBoF, SoftVLAD, SoftFV, MaskedAvgPool])
def test_padding_contributes_nothing(cls):
    m = cls(D) if cls is MaskedAvgPool else randomize(cls(K, D).double())
    x_nan, mask = padded_batch(garbage=np.nan)
    x_big, _ = padded_batch(garbage=1e6)
    out = m(x_nan, mask)
    torch.testing.assert_close(out, m(x_big, mask))
    for i, n in enumerate(LENGTHS):
        torch.testing.assert_close(out[i : i + 1], m(x_nan[i : i + 1, :n]))


def test_avg_pool_matches_numpy():
    x, mask = padded_batch()
    out = MaskedAvgPool(D)(x, mask).numpy()
    for i, n in enumerate(LENGTHS):
        np.testing.assert_allclose(out[i], x[i, :n].numpy().mean(0))


@pytest.mark.parametrize("cls", [SoftVLAD, SoftFV])
def test_gradients_reach_centres_and_gmm(cls):
    m = cls(K, D)
    x, mask = padded_batch()
    out = m(x.float(), mask)
    (out * torch.randn_like(out)).sum().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_signed_sqrt_is_close_and_has_finite_slope_at_zero():
    z = torch.linspace(-2, 2, 100_001, dtype=torch.float64, requires_grad=True)
    exact = z.sign() * z.abs().sqrt()
    assert (signed_sqrt(z) - exact).abs().max() < 0.31 * POWER_EPS**0.5
    signed_sqrt(z).sum().backward()
    assert torch.isfinite(z.grad).all()
    assert z.grad.max() <= POWER_EPS**-0.5 + 1e-6


def test_fv_gradient_finite_when_a_cluster_gets_no_mass():
    m = SoftFV(K, D)
    with torch.no_grad():
        m.assign.logits.weight.zero_()
        m.assign.logits.bias.copy_(torch.tensor([0.0, 0.0, 0.0, -200.0]))
    x = torch.randn(2, 3, D)
    m(x).sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters())


def test_parameter_counts():
    counts = {c: sum(p.numel() for p in c(K, D).parameters()) for c in (SoftBoF, SoftVLAD, SoftFV)}
    assert counts == {SoftBoF: K * (D + 1), SoftVLAD: K * (2 * D + 1), SoftFV: K * (3 * D + 2)}


# --- the fused forwards against the formulas as written, values and gradients -------------


def formula_vlad(m, x, mask):
    """Soft VLAD as eq. 3 and Algorithm 3 read, composed of autograd's own operations."""
    x, w = _masked(x, mask)
    a = m.assign(x) * w.unsqueeze(-1)
    v = a.transpose(1, 2) @ x - a.sum(1).unsqueeze(-1) * m.centers
    return torch.nn.functional.normalize(torch.nn.functional.normalize(v, dim=2).flatten(1), dim=1)


def formula_fv(m, x, mask):
    """Soft FV as §3.1.2 reads (Φ1, Φ2, signed square root, L2), in autograd's operations."""
    x, w = _masked(x, mask)
    a = m.assign(x) * w.unsqueeze(-1)
    n = w.sum(1).clamp_min(1.0)[:, None, None]
    at, mass = a.transpose(1, 2), a.sum(1).unsqueeze(-1)
    s1, s2, mu = at @ x, at @ (x * x), m.centers
    inv_var = torch.exp(-m.log_var)
    pi = m.mix_logits.softmax(0).unsqueeze(-1)
    phi1 = (s1 - mass * mu) * inv_var.sqrt() / (n * pi.sqrt())
    phi2 = ((s2 - 2.0 * mu * s1 + mass * mu * mu) * inv_var - mass) / (n * (2.0 * pi).sqrt())
    z = torch.cat([phi1.flatten(1), phi2.flatten(1)], dim=1)
    return torch.nn.functional.normalize(signed_sqrt(z), dim=1)


def value_and_gradients(fn, m, x, mask, upstream):
    x = x.clone().requires_grad_(True)
    m.zero_grad(set_to_none=True)
    out = fn(x, mask)
    (out * upstream).sum().backward()
    return [out.detach(), x.grad] + [p.grad.clone() for p in m.parameters() if p.grad is not None]


@pytest.mark.parametrize("cls, formula", [(SoftVLAD, formula_vlad), (SoftFV, formula_fv)])
def test_fused_encoding_has_the_formulas_values_and_gradients(cls, formula):
    """float64, padded steps, and one cluster that gets no mass (its FV entries are 0, where
    the signed square root is steepest and the fused backward's saved slope is used)."""
    m = randomize(cls(K, D).double(), seed=3)
    with torch.no_grad():
        m.assign.logits.bias[-1] = -500.0
    x, mask = padded_batch(garbage=1e6)
    upstream = torch.randn(len(LENGTHS), m.out_dim, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    fused = value_and_gradients(m, m, x, mask, upstream)
    reference = value_and_gradients(lambda x, mask: formula(m, x, mask), m, x, mask, upstream)
    for got, want in zip(fused, reference):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_power_l2_backward_passes_gradcheck_and_matches_autograd(seed):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(3, 12, dtype=torch.float64, generator=g)
    z[0, :4] = 0.0  # entries at 0, where the slope is 1/√ε
    z.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: _PowerL2.apply(t, POWER_EPS), (z,), eps=1e-9, atol=1e-6)
    # Norms below F.normalize's floor δ = 1e-12, where its clamp passes no gradient: 0 and δ/2.
    tiny = torch.randn(1, 12, dtype=torch.float64, generator=g)
    tiny *= 0.5e-12 * POWER_EPS**0.5 / tiny.norm()
    z = torch.cat([z.detach(), torch.zeros(1, 12, dtype=torch.float64), tiny])
    upstream = torch.randn(z.shape, dtype=torch.float64, generator=g)
    fused = value_and_gradients(lambda t, _: _PowerL2.apply(t, POWER_EPS), torch.nn.Linear(1, 1), z, None, upstream)
    composed = value_and_gradients(
        lambda t, _: torch.nn.functional.normalize(signed_sqrt(t), dim=1), torch.nn.Linear(1, 1), z, None, upstream
    )
    for got, want in zip(fused[:2], composed[:2]):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=0.0)


# --- codebook initialisation --------------------------------------------------------------


@pytest.fixture(scope="module")
def blobs():
    x, _ = make_blobs(n_samples=301, centers=K, n_features=D, cluster_std=0.4, random_state=0)
    km = KMeans(K, n_init=4, random_state=0).fit(x)
    return x, km


@pytest.mark.parametrize("cls", [SoftBoF, SoftVLAD, SoftFV])
def test_codebook_init_reproduces_eq1(cls, blobs):
    x, km = blobs
    c = km.cluster_centers_
    m = cls(K, D).double()
    assert m.init_from_codebook(c, alpha=0.37) == 0.37
    a = m.assign(torch.from_numpy(x)).detach().numpy()
    d = ((x[:, None, :] - c[None]) ** 2).sum(-1)
    np.testing.assert_allclose(a, np_softmax(-0.37 * d), rtol=1e-9, atol=1e-12)
    if hasattr(m, "centers"):
        np.testing.assert_array_equal(m.centers.detach().numpy(), c)


def test_large_alpha_gives_hard_kmeans_assignment_and_classical_vlad(blobs):
    x, km = blobs
    c = km.cluster_centers_
    idx = km.predict(x)
    m = SoftVLAD(K, D).double()
    m.init_from_codebook(c, alpha=alpha_from_data(x, c, ratio=1e-30))
    a = m.assign(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_array_equal(a.argmax(1), idx)
    np.testing.assert_allclose(a, np.eye(K)[idx], atol=1e-6)
    # k-means centres are their members' means, so hard VLAD residuals would be all ~0:
    # compare on shifted centres, whose residuals are well defined.
    c = c + np.random.default_rng(0).normal(scale=0.3, size=c.shape)
    m.init_from_codebook(c, alpha=alpha_from_data(x, c, ratio=1e-30))
    idx = (((x[:, None, :] - c[None]) ** 2).sum(-1)).argmin(1)
    out = m(torch.from_numpy(x)[None]).detach().numpy()[0]
    np.testing.assert_allclose(out, np_hard_vlad(x, c, idx), atol=1e-6)


def test_alpha_from_data_sets_median_runner_up_ratio(blobs):
    x, km = blobs
    c = km.cluster_centers_
    alpha = alpha_from_data(x, c, ratio=0.2)
    d = np.sort(((x[:, None, :] - c[None]) ** 2).sum(-1), axis=1)
    a = np.sort(np_softmax(-alpha * d), axis=1)
    assert len(x) % 2 == 1
    np.testing.assert_allclose(np.median(a[:, -2] / a[:, -1]), 0.2, rtol=1e-9)
    np.testing.assert_allclose(alpha_from_data(3 * x, 3 * c, ratio=0.2), alpha / 9, rtol=1e-9)


def test_alpha_default_uses_centres_as_probes(blobs):
    _, km = blobs
    c = km.cluster_centers_
    d = ((c[:, None, :] - c[None]) ** 2).sum(-1) + np.diag(np.full(K, np.inf))
    expected = np.log(1 / 0.1) / np.median(d.min(1))
    assert SoftBoF(K, D).init_from_codebook(c) == pytest.approx(expected)


def test_codebook_statistics_match_numpy(blobs):
    x, km = blobs
    c = km.cluster_centers_ + 0.05
    variances, weights = codebook_statistics(x, c)
    idx = (((x[:, None, :] - c[None]) ** 2).sum(-1)).argmin(1)
    for k in range(K):
        members = x[idx == k]
        expected = (((members - c[k]) ** 2).sum(0) + x.var(0)) / (len(members) + 1)
        np.testing.assert_allclose(variances[k], expected)
        assert weights[k] == pytest.approx((len(members) + 1) / (len(x) + K))


def test_codebook_statistics_survive_empty_clusters(blobs):
    x, km = blobs
    c = np.vstack([km.cluster_centers_, np.full((1, D), 1e3)])
    variances, weights = codebook_statistics(x, c)
    np.testing.assert_allclose(variances[-1], x.var(0))
    assert (weights > 0).all() and weights.sum() == pytest.approx(1.0)


def test_fv_init_loads_gmm_and_prior(blobs):
    x, km = blobs
    c = km.cluster_centers_
    variances, weights = codebook_statistics(x, c)
    m = SoftFV(K, D).double()
    m.init_from_codebook(c, alpha=0.5, variances=variances, weights=weights)
    np.testing.assert_allclose(m.log_var.exp().detach().numpy(), variances)
    np.testing.assert_allclose(m.mix_logits.softmax(0).detach().numpy(), weights)
    a = m.assign(torch.from_numpy(x)).detach().numpy()
    d = ((x[:, None, :] - c[None]) ** 2).sum(-1)
    np.testing.assert_allclose(a, np_softmax(np.log(weights) - 0.5 * d), rtol=1e-9, atol=1e-12)
    m.init_from_codebook(c, alpha=0.5)
    np.testing.assert_allclose(m.log_var.exp().detach().numpy(), np.ones((K, D)))


def test_codebook_shape_is_checked():
    with pytest.raises(ConfigError, match="centers must have shape"):
        SoftVLAD(K, D).init_from_codebook(np.zeros((K + 1, D)), alpha=1.0)
    with pytest.raises(ConfigError, match="variances"):
        SoftFV(K, D).init_from_codebook(np.zeros((K, D)), alpha=1.0, variances=np.zeros((K, D)))


# --- fusion -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kind, out_dim, expected",
    [
        ("softbof", None, K),
        ("softfv", None, 2 * K * D),
        ("softvlad", None, K * D),
        ("concat", None, K * (3 * D + 1)),
        ("concat", 7, 7),
        ("mean", 7, 7),
        ("mean", None, K),
        ("softvlad", 7, 7),
        ("avg", None, D),
    ],
)
def test_output_sizes(kind, out_dim, expected):
    m = make_aggregation(kind, K, D, out_dim)
    x, mask = padded_batch()
    assert m.out_dim == expected
    assert m(x.float(), mask).shape == (len(LENGTHS), expected)


def test_concat_is_the_three_encodings_side_by_side():
    m = SoftAggregation("concat", K, D).double()
    x, mask = padded_batch()
    parts = [m.encoders[n](x, mask) for n in ("softbof", "softfv", "softvlad")]
    torch.testing.assert_close(m(x, mask), torch.cat(parts, 1))


def test_mean_averages_one_projection_per_encoding():
    m = SoftAggregation("mean", K, D, out_dim=3).double()
    x, mask = padded_batch()
    out = m(x, mask).detach().numpy()
    expected = 0
    for name, enc in m.encoders.items():
        lin = m.proj[name]
        code = enc(x, mask).detach().numpy()
        expected = expected + (code @ lin.weight.detach().numpy().T + lin.bias.detach().numpy()) / 3
    np.testing.assert_allclose(out, expected, rtol=1e-10)


def test_mean_without_out_dim_averages_the_encodings_projected_to_k():
    """§4.1 / eq. 4 with no extra option: every encoding brought to K values, then averaged."""
    m = randomize(SoftAggregation("mean", K, D).double())
    assert m.out_dim == K
    x, mask = padded_batch()
    out = m(x, mask).detach().numpy()
    refs = {"softbof": np_bof, "softfv": np_fv, "softvlad": np_vlad}
    for i, n in enumerate(LENGTHS):
        steps = x[i, :n].numpy()
        expected = np.zeros(K)
        for name, ref in refs.items():
            lin = m.proj[name]
            code = ref(steps, *params(m.encoders[name]))
            expected += (lin.weight.detach().numpy() @ code + lin.bias.detach().numpy()) / 3
        np.testing.assert_allclose(out[i], expected, rtol=1e-7, atol=1e-10)


def test_fusion_init_reaches_every_encoding(blobs):
    x, km = blobs
    m = SoftAggregation("concat", K, D).double()
    m.init_from_codebook(km.cluster_centers_, alpha=0.3)
    for enc in m.encoders.values():
        np.testing.assert_allclose(
            enc.assign.logits.weight.detach().numpy(), 0.6 * km.cluster_centers_
        )


def test_bad_options_name_the_allowed_values():
    with pytest.raises(ConfigError, match="'bogus'.*avg, softbof, softfv, softvlad, concat, mean"):
        make_aggregation("bogus", K, D)
    with pytest.raises(ConfigError, match="out_dim"):
        make_aggregation("avg", K, D, out_dim=3)
    with pytest.raises(ConfigError, match="num_clusters"):
        SoftVLAD(0, D)
    with pytest.raises(ConfigError, match="ratio"):
        alpha_from_data(np.zeros((3, D)), np.eye(2, D), ratio=1.0)
    assert AGGREGATIONS == ("avg", "softbof", "softfv", "softvlad", "concat", "mean")
