"""BiLSTM + soft aggregation head (li3d-bilstm §3.3, soft-correlation §4.1)."""

import numpy as np
import pytest
import torch

from vpipe.errors import ConfigError
from vpipe.models.aggregation import AGGREGATIONS
from vpipe.models.heads import BiLSTMSoftAggHead, init_aggregation_from_features
from vpipe.models.heads.bilstm import TEMPORAL

D, C, HIDDEN, K = 6, 5, 4, 3
LENGTHS = torch.tensor([7, 3, 1])


def padded(seed=0, garbage=float("nan")):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(len(LENGTHS), int(LENGTHS.max()), D, generator=g)
    mask = torch.arange(x.shape[1]) < LENGTHS[:, None]
    return x.masked_fill(~mask[..., None], garbage)


@pytest.mark.parametrize("temporal", TEMPORAL)
@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_output_shapes(temporal, aggregation):
    out_dim = 7 if aggregation == "mean" else None
    head = BiLSTMSoftAggHead(
        D, C, temporal=temporal, hidden=HIDDEN, aggregation=aggregation, num_clusters=K,
        out_dim=out_dim,
    )
    feature_dim = {"none": D, "lstm": HIDDEN, "bilstm": 2 * HIDDEN}[temporal]
    expected = {
        "avg": feature_dim,
        "softbof": K,
        "softfv": 2 * K * feature_dim,
        "softvlad": K * feature_dim,
        "concat": K * (3 * feature_dim + 1),
        "mean": 7,
    }[aggregation]
    logits, embedding = head(padded(), LENGTHS, return_embedding=True)
    assert head.feature_dim == feature_dim and head.num_features == expected
    assert logits.shape == (len(LENGTHS), C) and embedding.shape == (len(LENGTHS), expected)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("temporal", ["lstm", "bilstm"])
def test_padded_batch_equals_individual_runs(temporal):
    head = BiLSTMSoftAggHead(
        D, C, temporal=temporal, hidden=HIDDEN, aggregation="concat", num_clusters=K
    ).eval()
    x = padded()
    logits, embedding = head(x, LENGTHS, return_embedding=True)
    for i, n in enumerate(LENGTHS.tolist()):
        one_logits, one_embedding = head(x[i : i + 1, :n], torch.tensor([n]), return_embedding=True)
        torch.testing.assert_close(logits[i : i + 1], one_logits)
        torch.testing.assert_close(embedding[i : i + 1], one_embedding)


def test_backward_direction_starts_at_the_last_valid_step():
    head = BiLSTMSoftAggHead(D, C, temporal="bilstm", hidden=HIDDEN, aggregation="avg").eval()
    x = padded(garbage=0.0)
    h, mask = head.sequence_features(x, LENGTHS)
    _, (h_n, _) = head.rnn(x[2:3, :1])
    torch.testing.assert_close(h[2, 0, HIDDEN:], h_n[1, 0])
    assert (h[~mask] == 0).all()


def ramps(n, seed, t=10):
    """Class 0: a rising ramp in feature 0; class 1: the same ramp reversed.

    Both classes have the same multiset of values in every feature, so any order-invariant
    pooling of the raw steps sees identically distributed inputs.
    """
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    lengths = torch.randint(5, t + 1, (n,), generator=g)
    x = 0.3 * torch.randn(n, t, 3, generator=g)
    for i in range(n):
        ramp = torch.linspace(-1, 1, int(lengths[i])) * (0.5 + torch.rand((), generator=g))
        x[i, : lengths[i], 0] += ramp.flip(0) if y[i] else ramp
    return x, lengths, y


@pytest.fixture
def one_thread():
    """Training on tiny tensors: extra intra-op threads only add contention on a busy machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def train_accuracy(head, steps=80):
    torch.manual_seed(0)
    x, lengths, y = ramps(256, seed=1)
    opt = torch.optim.Adam(head.parameters(), lr=0.02)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(head(x, lengths), y).backward()
        opt.step()
    x, lengths, y = ramps(256, seed=2)
    with torch.no_grad():
        return (head.eval()(x, lengths).argmax(1) == y).float().mean().item()


def test_bilstm_learns_order_that_average_pooling_cannot_see(one_thread):
    torch.manual_seed(0)
    kwargs = dict(hidden=8, aggregation="avg", dropout=0.0)
    assert train_accuracy(BiLSTMSoftAggHead(3, 2, temporal="bilstm", **kwargs)) > 0.95
    assert train_accuracy(BiLSTMSoftAggHead(3, 2, temporal="none", **kwargs)) < 0.7


def test_bilstm_with_codebook_initialised_softvlad_learns_order(one_thread):
    torch.manual_seed(0)
    head = BiLSTMSoftAggHead(3, 2, hidden=8, aggregation="softvlad", num_clusters=4, dropout=0.0)
    x, lengths, _ = ramps(256, seed=1)
    init_aggregation_from_features(head, [(x, lengths)])
    assert train_accuracy(head) > 0.95


def test_init_from_features_fits_the_space_the_aggregation_sees():
    torch.manual_seed(0)
    x = 10.0 + 5.0 * torch.randn(12, 7, D)
    lengths = torch.randint(1, 8, (12,))
    batches = [(x[:6], lengths[:6]), (x[6:], lengths[6:])]

    head = BiLSTMSoftAggHead(D, C, hidden=HIDDEN, aggregation="softvlad", num_clusters=K)
    head.train()
    codebook = init_aggregation_from_features(head, batches)
    assert head.training
    assert codebook.centers.shape == (K, 2 * HIDDEN)
    assert np.abs(codebook.centers).max() < 1.0  # LSTM outputs lie in (-1, 1)
    vlad = head.aggregation.encoders["softvlad"]
    np.testing.assert_allclose(vlad.centers.detach().numpy(), codebook.centers, rtol=1e-6)

    with torch.no_grad():
        h = torch.cat([head.rnn(x[i : i + 1, :n])[0][0] for i, n in enumerate(lengths.tolist())])
        a = vlad.assign(h).double().numpy()
    d = ((h.double().numpy()[:, None] - codebook.centers[None]) ** 2).sum(-1)
    logits = np.log(codebook.weights) - codebook.alpha * d
    expected = np.exp(logits - logits.max(1, keepdims=True))
    np.testing.assert_allclose(a, expected / expected.sum(1, keepdims=True), atol=1e-5)

    flat = BiLSTMSoftAggHead(D, C, temporal="none", aggregation="softfv", num_clusters=K)
    codebook = init_aggregation_from_features(flat, batches)
    assert codebook.centers.shape == (K, D) and codebook.centers.mean() > 5.0
    fv = flat.aggregation.encoders["softfv"]
    np.testing.assert_allclose(fv.log_var.exp().detach().numpy(), codebook.variances, rtol=1e-5)


def test_bad_options_raise_config_error():
    with pytest.raises(ConfigError, match="'gru'.*none, lstm, bilstm"):
        BiLSTMSoftAggHead(D, C, temporal="gru")
    with pytest.raises(ConfigError, match="'max'.*avg, softbof"):
        BiLSTMSoftAggHead(D, C, aggregation="max")
    head = BiLSTMSoftAggHead(D, C, hidden=HIDDEN, aggregation="avg")
    with pytest.raises(ConfigError, match="no codebook"):
        head.init_from_codebook(np.zeros((K, 2 * HIDDEN)))
    with pytest.raises(ValueError, match="lengths"):
        head(padded(), torch.tensor([8, 3, 1]))


def test_input_statistics_standardise_what_the_head_sees() -> None:
    torch.manual_seed(0)
    head = BiLSTMSoftAggHead(6, 3, temporal="bilstm", hidden=8, aggregation="softvlad", num_clusters=4).eval()
    reference = BiLSTMSoftAggHead(6, 3, temporal="bilstm", hidden=8, aggregation="softvlad", num_clusters=4).eval()
    reference.load_state_dict(head.state_dict())
    mean, std = torch.linspace(-3, 3, 6), torch.linspace(0.1, 10, 6)
    head.set_input_statistics(mean, std)
    x = torch.randn(2, 5, 6) * std + mean
    lengths = torch.tensor([5, 3])
    assert torch.allclose(head(x, lengths), reference((x - mean) / std, lengths), atol=1e-5)
    assert torch.equal(head.state_dict()["input_std"], std), "statistics travel with the checkpoint"


def test_one_hidden_size_and_the_papers_aggregation_by_default():
    import inspect

    from vpipe.models.heads.registry import head_class

    options = head_class("bilstm-softagg").validate_options({})
    signature = inspect.signature(BiLSTMSoftAggHead).parameters
    assert options["hidden"] == signature["hidden"].default
    assert options["aggregation"] == signature["aggregation"].default == "mean"


def test_segment_masks_split_each_video_into_consecutive_parts():
    from vpipe.models.heads.bilstm import segment_masks

    masks = segment_masks(torch.tensor([7, 6, 2]), 8, 3).int().numpy()
    # floor(s·L/S) .. floor((s+1)·L/S): 7 -> 0-1, 2-3, 4-6; 6 -> 0-1, 2-3, 4-5; the padding never
    expected = {0: [[0, 1], [2, 3], [4, 5, 6]], 1: [[0, 1], [2, 3], [4, 5]], 2: [[0], [0], [1]]}
    for video, parts in expected.items():
        for s, steps in enumerate(parts):
            assert np.flatnonzero(masks[video, s]).tolist() == steps
    # a video shorter than S: every segment takes at least its first step, none is empty
    assert segment_masks(torch.tensor([1]), 4, 3).sum(-1).tolist() == [[1, 1, 1]]


@pytest.mark.parametrize("aggregation", ["avg", "softvlad"])
def test_segments_join_each_parts_code_in_time_order(aggregation):
    torch.manual_seed(0)
    head = BiLSTMSoftAggHead(D, C, temporal="none", aggregation=aggregation, num_clusters=K, segments=3).eval()
    whole = BiLSTMSoftAggHead(D, C, temporal="none", aggregation=aggregation, num_clusters=K).eval()
    whole.aggregation.load_state_dict(head.aggregation.state_dict())
    x = padded()
    embedding = head.forward_features(x, LENGTHS)
    assert head.num_features == 3 * whole.num_features and embedding.shape == (3, head.num_features)
    n = whole.num_features
    # video 0 (7 steps): steps 0-1, 2-3, 4-6, each pooled alone, in that order
    for s, steps in enumerate([slice(0, 2), slice(2, 4), slice(4, 7)]):
        part = x[0:1, steps]
        alone = whole.forward_features(part, torch.tensor([part.shape[1]]))[0]
        torch.testing.assert_close(embedding[0, s * n : (s + 1) * n], alone)
    if aggregation == "avg":  # against numpy: the mean of each part
        numpy = np.concatenate([x[1, steps].numpy().mean(0) for steps in (slice(0, 1), slice(1, 2), slice(2, 3))])
        np.testing.assert_allclose(embedding[1].detach().numpy(), numpy, rtol=1e-6)
    assert torch.isfinite(embedding).all()  # video 2 (1 step): every part repeats it, NaN padding never read


def test_segments_see_order_that_whole_video_average_pooling_cannot(one_thread):
    """A time-reversed video has the same average; with two segments its halves swap places."""
    x = torch.randn(1, 8, D)
    lengths = torch.tensor([8])
    reversed_x = x.flip(1)
    whole = BiLSTMSoftAggHead(D, C, temporal="none", aggregation="avg").eval()
    torch.testing.assert_close(whole.forward_features(x, lengths), whole.forward_features(reversed_x, lengths))
    halves = BiLSTMSoftAggHead(D, C, temporal="none", aggregation="avg", segments=2).eval()
    forward, backward = halves.forward_features(x, lengths), halves.forward_features(reversed_x, lengths)
    assert not torch.allclose(forward, backward)
    torch.testing.assert_close(backward[:, :D], forward[:, D:])
    torch.testing.assert_close(backward[:, D:], forward[:, :D])
    torch.manual_seed(0)
    kwargs = dict(hidden=8, aggregation="avg", dropout=0.0, temporal="none")
    assert train_accuracy(BiLSTMSoftAggHead(3, 2, segments=2, **kwargs)) > 0.95
    assert train_accuracy(BiLSTMSoftAggHead(3, 2, **kwargs)) < 0.7


def test_segments_option_names_the_run_and_defaults_to_the_papers_whole_video():
    from vpipe.models.heads.registry import head_class

    spec = head_class("bilstm-softagg")
    assert spec.validate_options({})["segments"] == 1
    assert spec.tag(spec.validate_options({"aggregation": "avg"})) == "bilstm-avg"
    assert spec.tag(spec.validate_options({"aggregation": "avg", "segments": "3"})) == "bilstm-avg-seg3"
    with pytest.raises(ConfigError, match="segments"):
        spec.validate_options({"segments": 0})
    with pytest.raises(ConfigError, match="segments"):
        BiLSTMSoftAggHead(D, C, segments=0)
