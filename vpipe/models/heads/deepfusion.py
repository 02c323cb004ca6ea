"""``deep-fusion``: two-stream conv fusion, Fc6 and LN-LSTMs with frame region attention.

two-stream-deep-fusion-ln-lstm.md (§3.2–3.6, Fig. 5–8, eq. 1–12) on cached VGG-16
``conv5_3`` maps of both streams, per sampled frame (``vpipe plan --sampler uniform``:
T = 17 frames, eq. 13–14; ``vpipe flow --stack 4``: L = 4 flow fields centred on each):

1. the rgb and flow maps are stacked channel-interleaved (eq. 1) and fused by a
   3 × 3 × 3 convolution over (time, height, width) to D′ = 512 channels (eq. 2): X_conv;
2. X_conv is max-pooled (VGG's pool5) and goes through Fc6 (4096, ReLU, dropout 0.5): X_fc;
3. two sequence-to-sequence LN-LSTM* run over X_fc and over X_conv (eq. 7–10), the latter
   through a region attention over the map's cells;
4. their hidden sequences are merged by a linear map W and a sequence-to-one LN-LSTM
   (eq. 11), whose last hidden state is the video embedding; a softmax classifier follows.

Hidden size 101 and LSTM output dropout 0.25 as in §3.6. Padded frames of short videos
are masked throughout: the fusion conv sees them as the zero padding it would see at the
end of the video anyway, Fc6 skips them, and the LSTMs keep their state across them.

Choices where the paper is silent or ambiguous:

- **Eq. 1 in 0-based channels**: ``y[2k] = flow[k]``, ``y[2k+1] = rgb[k]`` (the paper's
  ``y_{2d} = x^a_d``, ``y_{2d−1} = x^b_d`` with 1-based ``d``, x^a spatial, x^b temporal).
- **Fusion conv**: zero padding 1 in time and space, so the output keeps T × H × W (§3.2:
  H = H″, W = W″); no nonlinearity after it, as eq. 2 writes none. It starts as the
  paper's own example (§3.2) of two identity matrices at the centre tap, halved, so the
  fused map starts as the mean of the two streams' conv5_3: an Fc6 loaded from a VGG-16
  checkpoint then sees conv5_3-like input from the first step (``fusion_init=random``
  gives PyTorch's default init instead).
- **Pool before Fc6**: VGG's own pool5 (2 × 2 max, stride 2) then an adaptive average to
  ``fc6_grid`` cells (7: torchvision's VGG, which makes a 14 × 14 map exactly fc6's
  7 × 7 × 512 input; smaller cached grids are repeated up to it, as torchvision does).
- **LN-LSTM (eq. 3–6)**: the equations are batch normalisation's, but the text names layer
  normalisation and they are applied per sample here: mean and variance over the hidden
  units of each gate, ε = 1e-5, so a video's output does not depend on its batch (and
  test batches of one work). As §3.3 says, only the inputs of the sigmoid gates (i, f, o)
  are normalised, each with its own γ, β (β is the gate's bias); the candidate g keeps a
  plain bias and the cell is not normalised::

      a = W_x x_t + W_h h_{t−1}
      i, f, o = σ(LN_i(a_i)), σ(LN_f(a_f)), σ(LN_o(a_o));   g = tanh(a_g + b_g)
      c_t = f ⊙ c_{t−1} + i ⊙ g;   h_t = o ⊙ tanh(c_t)

  On a padded step the state is carried over unchanged (and the step's output is zero).
- **How X_conv enters an LSTM; the frame region attention**: the paper feeds the
  512 × 14 × 14 map to LN-LSTM* and says the Fc6 stream gives the conv stream its region
  attention (abstract, §5), without equations. Here each step's LSTM input is an
  attention-weighted sum of the map's H·W cell vectors (the soft attention of the
  paper's ref. 26), with additive scores conditioned on the Fc6 stream's hidden state at
  the same step and the conv stream's previous hidden state:
  ``e_k = vᵀ tanh(W_a x_{t,k} + U_a [h_fc^t; h_conv^{t−1}] + b_a)``, ``α = softmax_k(e)``,
  input ``Σ_k α_k x_{t,k}``. Flattening the map instead would give the LSTM 100,352
  inputs per step (40 M weights) and no notion of region. Attention size = hidden size.
- **W in eq. 11**: a linear map of the concatenated hidden states ``[h_conv^t; h_fc^t]``
  (2·hidden → hidden) at every step, then the sequence-to-one LN-LSTM.
- **Classifier**: eq. 12 applies the softmax to h itself (hidden 101 = UCF101's classes);
  h = o ⊙ tanh(c) lies in (−1, 1), so such a softmax could never be confident. A linear
  layer hidden → classes follows instead, and the embedding is h (``num_features`` =
  hidden).
- **Dropout 0.25** on every LSTM's outputs: both hidden sequences before W, and h before
  the classifier.
- **Fc6 from a checkpoint** (``fc6_weights``): torchvision VGG-16's ``classifier.0``
  (4096 × 25088), which fits ``fused=512, fc6=4096, fc6_grid=7`` only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vpipe.errors import ConfigError, StageError, WeightsError
from vpipe.head_specs import DeepFusionSpec
from vpipe.models.heads.registry import (
    Head,
    HeadBatch,
    PrepareData,
    register_head,
)
from vpipe.models.weights import read_state_dict

#: The torchvision VGG-16 keys of fc6, the layer ``fc6_weights`` loads.
FC6_KEYS = ("classifier.0.weight", "classifier.0.bias")
#: Layer-normalisation ε (the paper's eq. 5 has one and gives no value; PyTorch's default).
LN_EPS = 1e-5


def interleave_channels(rgb: Tensor, flow: Tensor, dim: int = -3) -> Tensor:
    """Eq. 1: stack two maps channel by channel, flow first: ``[f_0, r_0, f_1, r_1, …]``.

    The paper's 1-based ``y_{2d} = x^a_d`` (spatial) and ``y_{2d−1} = x^b_d`` (temporal)
    put channel d of the temporal stream just before channel d of the spatial one.
    """
    if rgb.shape != flow.shape:
        raise ValueError(f"rgb and flow maps differ in shape: {tuple(rgb.shape)} vs {tuple(flow.shape)}")
    dim = dim % rgb.dim()
    return torch.stack([flow, rgb], dim=dim + 1).flatten(dim, dim + 1)


class LNLSTMCell(nn.Module):
    """One step of the layer-normalised LSTM (module docstring, "LN-LSTM")."""

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.input_weight = nn.Linear(input_size, 4 * hidden_size, bias=False)
        self.hidden_weight = nn.Linear(hidden_size, 4 * hidden_size, bias=False)
        self.gate_norms = nn.ModuleList(nn.LayerNorm(hidden_size, eps=LN_EPS) for _ in range(3))
        self.candidate_bias = nn.Parameter(torch.zeros(hidden_size))

    def forward(self, x: Tensor, state: tuple[Tensor, Tensor], projected: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(h_t, c_t)`` from ``x`` (B, input) and ``(h, c)``; ``projected`` = ``W_x x`` if
        the caller computed it for every step at once."""
        h, c = state
        a = (self.input_weight(x) if projected is None else projected) + self.hidden_weight(h)
        a_i, a_f, a_o, a_g = a.chunk(4, dim=-1)
        i, f, o = (torch.sigmoid(norm(part)) for norm, part in zip(self.gate_norms, (a_i, a_f, a_o)))
        c = f * c + i * torch.tanh(a_g + self.candidate_bias)
        return o * torch.tanh(c), c

    def initial_state(self, batch: int, like: Tensor) -> tuple[Tensor, Tensor]:
        zeros = like.new_zeros(batch, self.hidden_size)
        return zeros, zeros


def _carry(mask_t: Tensor, new: Tensor, old: Tensor) -> Tensor:
    """``new`` where the step is real, ``old`` (the state before it) on padding."""
    return torch.where(mask_t.unsqueeze(-1), new, old)


class LNLSTM(nn.Module):
    """LN-LSTM over a padded sequence: all hidden states (LN-LSTM*) and the last real one (LN-LSTM)."""

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.cell = LNLSTMCell(input_size, hidden_size)

    def forward(self, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """``x`` (B, T, input), ``mask`` (B, T) -> outputs (B, T, hidden), zero on padding,
        and the hidden state after each sequence's last real step (B, hidden)."""
        projected = self.cell.input_weight(x)
        h, c = self.cell.initial_state(x.shape[0], x)
        outputs = []
        for t in range(x.shape[1]):
            h_new, c_new = self.cell(x[:, t], (h, c), projected[:, t])
            h, c = _carry(mask[:, t], h_new, h), _carry(mask[:, t], c_new, c)
            outputs.append(h_new * mask[:, t, None])
        return torch.stack(outputs, dim=1), h


class RegionAttention(nn.Module):
    """Additive soft attention over the cells of one frame's map (module docstring)."""

    def __init__(self, channels: int, query_size: int, size: int) -> None:
        super().__init__()
        self.key = nn.Linear(channels, size, bias=False)
        self.query = nn.Linear(query_size, size)
        self.score = nn.Linear(size, 1, bias=False)

    def forward(self, cells: Tensor, keys: Tensor, query: Tensor) -> tuple[Tensor, Tensor]:
        """``cells`` (B, K, C) with ``keys`` = ``self.key(cells)`` (B, K, size) and ``query``
        (B, query_size) -> the attended vector (B, C) and the weights α (B, K)."""
        scores = self.score(torch.tanh(keys + self.query(query).unsqueeze(1))).squeeze(-1)
        alpha = torch.softmax(scores, dim=-1)
        return torch.einsum("bk,bkc->bc", alpha, cells), alpha


class AttentiveLNLSTM(nn.Module):
    """LN-LSTM* over fused maps whose input at step t is the region-attended map vector."""

    def __init__(self, channels: int, context_size: int, hidden_size: int, attention_size: int) -> None:
        super().__init__()
        self.cell = LNLSTMCell(channels, hidden_size)
        self.attention = RegionAttention(channels, context_size + hidden_size, attention_size)

    def forward(self, maps: Tensor, context: Tensor, mask: Tensor) -> Tensor:
        """``maps`` (B, T, C, H, W), ``context`` (B, T, context) = h_fc, ``mask`` (B, T) ->
        hidden states (B, T, hidden), zero on padding."""
        cells = maps.flatten(3).transpose(2, 3)
        keys = self.attention.key(cells)
        h, c = self.cell.initial_state(maps.shape[0], maps)
        outputs = []
        for t in range(maps.shape[1]):
            attended, _ = self.attention(cells[:, t], keys[:, t], torch.cat([context[:, t], h], dim=-1))
            h_new, c_new = self.cell(attended, (h, c))
            h, c = _carry(mask[:, t], h_new, h), _carry(mask[:, t], c_new, c)
            outputs.append(h_new * mask[:, t, None])
        return torch.stack(outputs, dim=1)


class ConvFusion(nn.Module):
    """Eq. 1–2: interleave the two streams' maps and fuse them by a 3 × 3 × 3 convolution."""

    def __init__(self, channels: int, fused: int, init: str) -> None:
        super().__init__()
        self.conv = nn.Conv3d(2 * channels, fused, kernel_size=3, padding=1)
        if init == "identity":
            with torch.no_grad():
                self.conv.weight.zero_()
                self.conv.bias.zero_()
                eye = torch.eye(fused) / 2
                self.conv.weight[:, 0::2, 1, 1, 1] = eye
                self.conv.weight[:, 1::2, 1, 1, 1] = eye

    def forward(self, rgb: Tensor, flow: Tensor) -> Tensor:
        """(B, T, C, H, W) twice -> (B, T, fused, H, W); padded frames must be zero."""
        stacked = interleave_channels(rgb, flow, dim=2)
        return self.conv(stacked.transpose(1, 2)).transpose(1, 2)


@register_head
class DeepFusion(DeepFusionSpec, Head):
    """``deep-fusion``: the network of two-stream-deep-fusion-ln-lstm on cached conv5_3 maps.

    See the module docstring for the equations and every choice the paper leaves open.
    """

    def __init__(self, shapes: dict[str, tuple[int, ...]], num_classes: int, **options: Any) -> None:
        super().__init__()
        channels, height, width = self.two_stream_grid(shapes, "extract both with the same backbone and grid")
        if height < 2 or width < 2:
            raise ConfigError(f"head {self.name!r} needs maps of at least 2 × 2 cells for pool5, got {height} × {width}")
        if options["fusion_init"] == "identity" and options["fused"] != channels:
            raise ConfigError(
                f"fusion_init=identity maps each of the {channels} input channels to itself and needs "
                f"fused={channels}, got {options['fused']}; use -O fusion_init=random"
            )
        hidden, grid = options["hidden"], options["fc6_grid"]
        self.config = options
        self.fusion = ConvFusion(channels, options["fused"], options["fusion_init"])
        self.fc6 = nn.Linear(options["fused"] * grid * grid, options["fc6"])
        self.fc6_dropout = nn.Dropout(options["fc6_dropout"])
        self.fc_lstm = LNLSTM(options["fc6"], hidden)
        self.conv_lstm = AttentiveLNLSTM(options["fused"], hidden, hidden, options["attention"] or hidden)
        self.merge = nn.Linear(2 * hidden, hidden)
        self.merge_lstm = LNLSTM(hidden, hidden)
        self.lstm_dropout = nn.Dropout(options["lstm_dropout"])
        self.classifier = nn.Linear(hidden, num_classes)
        self.num_features = hidden

    def prepare(self, data: PrepareData) -> dict[str, Any] | None:
        """Start Fc6 from the checkpoint's ``classifier.0`` when ``fc6_weights`` is given."""
        path = data.files.get("fc6_weights")
        if path is None:
            return None
        self.load_fc6(path)
        return {"fc6": f"{FC6_KEYS[0].rsplit('.', 1)[0]} of {path}"}

    @torch.no_grad()
    def load_fc6(self, path: Path) -> None:
        """Copy fc6 from a torchvision VGG-16 checkpoint; a :class:`WeightsError` if it does not fit."""
        state = read_state_dict(path)
        missing = [key for key in FC6_KEYS if key not in state]
        if missing:
            raise WeightsError(f"{path} has no {', '.join(missing)}: fc6_weights expects a torchvision VGG-16 checkpoint")
        weight, bias = state[FC6_KEYS[0]], state[FC6_KEYS[1]]
        if weight.shape != self.fc6.weight.shape or bias.shape != self.fc6.bias.shape:
            raise WeightsError(
                f"fc6 in {path} is {list(weight.shape)} but this head's is {list(self.fc6.weight.shape)}: "
                "a VGG-16 fc6 fits fused=512, fc6=4096, fc6_grid=7 only"
            )
        self.fc6.weight.copy_(weight)
        self.fc6.bias.copy_(bias)

    def frame_features(self, batch: HeadBatch) -> tuple[Tensor, Tensor, Tensor]:
        """X_conv (B, T, D′, H, W), X_fc (B, T, fc6) and the frame mask (B, T)."""
        rgb, flow = batch.inputs["rgb"], batch.inputs["flow"]
        if not torch.equal(batch.lengths["rgb"], batch.lengths["flow"]):
            raise StageError(
                "rgb and flow feature sets hold different numbers of frames for the same video: "
                "extract both streams from the same plan"
            )
        mask = batch.mask("rgb")
        keep = mask[:, :, None, None, None].to(rgb.dtype)
        fused = self.fusion(rgb * keep, flow * keep)
        pooled = F.adaptive_avg_pool2d(F.max_pool2d(fused[mask], 2), self.config["fc6_grid"])
        fc = fused.new_zeros(*mask.shape, self.fc6.out_features)
        fc[mask] = self.fc6_dropout(F.relu(self.fc6(pooled.flatten(1))))
        return fused, fc, mask

    def forward_features(self, batch: HeadBatch) -> Tensor:
        """Eq. 7–11: the merge LN-LSTM's last hidden state, (B, hidden)."""
        fused, fc, mask = self.frame_features(batch)
        h_fc, _ = self.fc_lstm(fc, mask)
        h_conv = self.conv_lstm(fused, h_fc, mask)
        merged = self.merge(self.lstm_dropout(torch.cat([h_conv, h_fc], dim=-1)))
        _, h = self.merge_lstm(merged, mask)
        return h

    def forward_head(self, embedding: Tensor) -> Tensor:
        return self.classifier(self.lstm_dropout(embedding))
