"""Optical flow: batched TV-L1 matching OpenCV, and its storage encodings."""

from vpipe.flow.quantize import decode_flow, dequantize_flow, encode_flow, flow_to_unit, quantize_flow
from vpipe.flow.tvl1 import to_gray, tvl1

__all__ = ["tvl1", "to_gray", "quantize_flow", "dequantize_flow", "encode_flow", "decode_flow", "flow_to_unit"]
