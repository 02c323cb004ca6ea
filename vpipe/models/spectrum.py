"""Temporal spectrum of a step sequence: how fast a video's features oscillate, not where.

A recurrent layer has to learn a period from a few dozen noisy steps, and on the
synthetic set's rhythm family (a disk bouncing with a period of 6, 12 or 24 frames)
the BiLSTM heads do not: a linear probe on the spectrum of one descriptor quantity
separates the three rhythms at 76-86 % where the heads score about half
(``bench/rhythm_signal.py``, bench/ablation.md). Repetition rate is what tells walking
from jogging from running, so the head may read it directly instead: a learnt linear
map of each step to a few channels, then each channel's magnitude spectrum over the
video's valid steps.

The spectrum is the discrete-time Fourier transform at fixed frequencies in cycles per
step (:func:`spectrum_frequencies`), not an FFT: videos of any length give the same
frequencies, and padded steps are left out by the mask. Each channel loses its mean
first (the level is what the pooled code already carries) and its magnitudes are divided
by their mean over the frequencies, so the block says how the motion's energy is spread
over repetition rates whatever its amplitude.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

#: Frequencies of the spectrum when none are given: periods of 32 down to 2 steps.
FREQUENCIES = 16
LOWEST, HIGHEST = 1 / 32, 1 / 2


def spectrum_frequencies(count: int = FREQUENCIES) -> Tensor:
    """``count`` frequencies in cycles per step, evenly from 1/32 (a period of 32 steps)
    to 1/2 (the fastest a sequence of steps can hold)."""
    return torch.linspace(LOWEST, HIGHEST, count, dtype=torch.float64)


def masked_spectrum(z: Tensor, mask: Tensor, frequencies: Tensor) -> Tensor:
    """Magnitude spectrum (B, C, F) of (B, T, C) channels over the steps where ``mask`` (B, T) holds.

    Per video and channel: remove the mean of the valid steps, take
    ``|sum_t z_t exp(-2 pi i f t)| / n`` over the n valid steps at each frequency f, and
    divide by the mean of those magnitudes (a constant channel gives zeros).
    """
    weight = mask.to(z.dtype).unsqueeze(-1)
    count = weight.sum(1, keepdim=True).clamp_min(1.0)
    centred = (z - (z * weight).sum(1, keepdim=True) / count) * weight
    steps = torch.arange(z.shape[1], device=z.device, dtype=z.dtype)
    phase = 2 * math.pi * frequencies.to(device=z.device, dtype=z.dtype).unsqueeze(1) * steps
    real = torch.einsum("btc,ft->bcf", centred, torch.cos(phase))
    imag = torch.einsum("btc,ft->bcf", centred, torch.sin(phase))
    magnitude = torch.sqrt(real * real + imag * imag + 1e-12) / count.transpose(1, 2)
    return magnitude / magnitude.mean(-1, keepdim=True).clamp_min(1e-6)


class TemporalSpectrum(nn.Module):
    """(B, T, input_dim) steps -> (B, channels * frequencies): learnt channels' magnitude spectra."""

    def __init__(self, input_dim: int, channels: int, frequencies: int = FREQUENCIES) -> None:
        super().__init__()
        self.project = nn.Linear(input_dim, channels)
        self.register_buffer("frequencies", spectrum_frequencies(frequencies).float())
        self.out_dim = channels * frequencies

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        return masked_spectrum(self.project(x), mask, self.frequencies).flatten(1)
