"""The temporal spectrum block: a masked DTFT against numpy, and a head that hears a period."""

from __future__ import annotations

import numpy as np
import torch

from vpipe.models.heads.bilstm import BiLSTMSoftAggHead
from vpipe.models.spectrum import FREQUENCIES, masked_spectrum, spectrum_frequencies


def numpy_spectrum(z: np.ndarray, frequencies: np.ndarray) -> np.ndarray:
    """(T, C) valid steps -> (C, F): |sum_t (z_t - mean) e^{-2 pi i f t}| / T over the mean of those."""
    centred = z - z.mean(0)
    t = np.arange(len(z))
    basis = np.exp(-2j * np.pi * frequencies[:, None] * t[None, :])  # (F, T)
    magnitude = np.abs(basis @ centred).T / len(z)
    return magnitude / magnitude.mean(1, keepdims=True)


def test_masked_spectrum_matches_a_numpy_dtft_and_ignores_padding() -> None:
    rng = np.random.default_rng(0)
    z = rng.normal(size=(2, 20, 3))
    lengths = [20, 13]
    z[1, 13:] = 1e3  # padding that must not count
    mask = torch.arange(20)[None] < torch.tensor(lengths)[:, None]
    frequencies = spectrum_frequencies()
    got = masked_spectrum(torch.tensor(z), mask, frequencies).numpy()
    for video, length in enumerate(lengths):
        want = numpy_spectrum(z[video, :length], frequencies.numpy())
        np.testing.assert_allclose(got[video], want, rtol=1e-6, atol=1e-9)


def test_a_sinusoid_peaks_at_its_own_frequency() -> None:
    frequencies = spectrum_frequencies()
    t = torch.arange(64, dtype=torch.float64)
    for period in (2.0, 4.0, 8.0, 16.0):
        z = torch.sin(2 * np.pi * t / period + 0.7).view(1, -1, 1)
        spectrum = masked_spectrum(z, torch.ones(1, 64, dtype=torch.bool), frequencies)[0, 0]
        nearest = int(torch.argmin((frequencies - 1 / period).abs()))
        assert int(spectrum.argmax()) == nearest


def periodic_videos(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Videos whose only class cue is how fast one feature repeats (period 3 or 8 steps, random
    phase and length): every step's distribution, and so any order-less pooling, is the same."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 2, (count,), generator=g)
    lengths = torch.randint(24, 33, (count,), generator=g)
    t = torch.arange(32, dtype=torch.float32)
    period = torch.where(labels == 0, 3.0, 8.0).unsqueeze(1)
    phase = torch.rand(count, 1, generator=g) * 2 * np.pi
    x = 0.3 * torch.randn(count, 32, 6, generator=g)
    x[:, :, 2] += torch.sign(torch.sin(2 * np.pi * t / period + phase))
    return x, lengths, labels


def train_accuracy(spectrum: int) -> float:
    torch.manual_seed(0)
    head = BiLSTMSoftAggHead(6, 2, temporal="none", aggregation="avg", dropout=0.0, spectrum=spectrum)
    x, lengths, labels = periodic_videos(256, seed=1)
    optimiser = torch.optim.Adam(head.parameters(), lr=0.02)
    for _ in range(60):
        optimiser.zero_grad()
        torch.nn.functional.cross_entropy(head(x, lengths), labels).backward()
        optimiser.step()
    test_x, test_lengths, test_labels = periodic_videos(256, seed=2)
    with torch.no_grad():
        return float((head(test_x, test_lengths).argmax(1) == test_labels).float().mean())


def test_the_spectrum_hears_a_period_that_average_pooling_cannot() -> None:
    assert train_accuracy(spectrum=0) < 0.65
    assert train_accuracy(spectrum=2) > 0.95


def test_the_spectrum_adds_channels_times_frequencies_to_the_embedding() -> None:
    plain = BiLSTMSoftAggHead(10, 3, hidden=8, aggregation="avg", segments=2)
    spectral = BiLSTMSoftAggHead(10, 3, hidden=8, aggregation="avg", segments=2, spectrum=4)
    assert spectral.num_features == plain.num_features + 4 * FREQUENCIES
    x = torch.randn(2, 12, 10)
    assert spectral.forward_features(x, torch.tensor([12, 7])).shape == (2, spectral.num_features)
