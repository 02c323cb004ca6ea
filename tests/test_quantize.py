"""Flow storage encodings against the denseflow / pytorch-i3d formulas written out in numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vpipe.errors import ConfigError
from vpipe.flow import decode_flow, dequantize_flow, encode_flow, flow_to_unit, quantize_flow


def test_quantize_matches_denseflow_formula() -> None:
    rng = np.random.default_rng(0)
    flow = rng.uniform(-30, 30, (2, 2, 16, 16)).astype(np.float32)
    expected = np.clip(np.round(255.0 * (flow + 20.0) / 40.0), 0, 255).astype(np.uint8)
    codes = quantize_flow(torch.from_numpy(flow))
    assert codes.dtype == torch.uint8
    np.testing.assert_array_equal(codes.numpy(), expected)
    np.testing.assert_array_equal(quantize_flow(flow).numpy(), expected)


@pytest.mark.parametrize("bound", [5.0, 20.0])
def test_round_trip_error_within_half_step(bound: float) -> None:
    flow = torch.linspace(-bound, bound, 10_001)
    back = dequantize_flow(quantize_flow(flow, bound), bound)
    assert back.dtype == torch.float32
    assert (back - flow).abs().max() <= bound / 255 + 1e-5


def test_out_of_bound_values_saturate() -> None:
    codes = quantize_flow(torch.tensor([-100.0, -20.0, 0.0, 20.0, 100.0]))
    assert codes.tolist() == [0, 0, 128, 255, 255]


def test_encode_decode_both_dtypes() -> None:
    # Seeded and inside the bound: an unseeded 4-sigma draw beyond +-20 saturates and
    # breaks the round-trip bound in about one run in forty.
    flow = (torch.randn(3, 2, 8, 8, generator=torch.Generator().manual_seed(0)) * 5).clamp(-20, 20)
    packed = encode_flow(flow, "uint8", bound=20.0)
    assert torch.equal(packed, quantize_flow(flow))
    assert (decode_flow(packed) - flow).abs().max() <= 20 / 255 + 1e-5
    half = encode_flow(flow, "float16")
    assert half.dtype == torch.float16
    torch.testing.assert_close(decode_flow(half), flow, rtol=1e-3, atol=1e-3)
    with pytest.raises(ConfigError):
        encode_flow(flow, "int16")  # type: ignore[arg-type]


def test_flow_to_unit_matches_pytorch_i3d() -> None:
    codes = torch.arange(256, dtype=torch.uint8)
    unit = flow_to_unit(codes)
    np.testing.assert_allclose(unit.numpy(), np.arange(256) / 255.0 * 2 - 1, atol=1e-6)
    assert unit[0] == -1 and unit[-1] == 1


def test_rejects_wrong_dtypes() -> None:
    with pytest.raises(ConfigError):
        dequantize_flow(torch.zeros(3))
    with pytest.raises(ConfigError):
        quantize_flow(torch.zeros(3, dtype=torch.uint8))
    with pytest.raises(ConfigError):
        quantize_flow(torch.zeros(3), bound=0)
