"""Temporal shift (TSM): exchange a fraction of the channels between neighbouring frames, for free.

For a clip of T frames stored as consecutive rows of a (N*T, C, H, W) batch, with
``fold = C // fold_div``:

* channels ``[0, fold)``: frame t takes frame t+1's values (from the future); the last frame gets zeros;
* channels ``[fold, 2 fold)``: frame t takes frame t-1's values (from the past); the first frame gets zeros;
* the other channels are unchanged.

Zero padding, not circular (docs/official-behaviour.md, "Model: backbones and checkpoint layout").
:class:`TemporalShift` wraps a layer (kept as ``.net``, so state-dict keys read ``...conv1.net.weight``
as in the official checkpoints) and shifts its input before calling it. The placements used by the
Uni-AdaFocus-TSM encoders put the shift on the residual branch only:

* :func:`shift_mobilenet_v2` — the expansion 1x1 convolution of every inverted residual block with an
  identity shortcut (expansion 6, stride 1, equal channels): torchvision's ``features.N.conv.0.0``;
* :func:`shift_resnet` — ``conv1`` of every bottleneck / basic block of layer1..layer4 ("blockres").
"""
from __future__ import annotations

import torch
import torch.nn as nn


def temporal_shift(x: torch.Tensor, num_segments: int, fold_div: int = 8) -> torch.Tensor:
    """Shift ``x`` (N*T, C, H, W), T = ``num_segments`` frames per clip -> a new tensor of the same shape."""
    nt, c = x.shape[:2]
    if nt % num_segments:
        raise ValueError(f"{nt} rows are not whole clips of {num_segments} frames")
    clips = x.view(nt // num_segments, num_segments, c, *x.shape[2:])  # (N, T, C, H, W)
    fold = c // fold_div
    out = torch.zeros_like(clips)
    out[:, :-1, :fold] = clips[:, 1:, :fold]  # from the future
    out[:, 1:, fold:2 * fold] = clips[:, :-1, fold:2 * fold]  # from the past
    out[:, :, 2 * fold:] = clips[:, :, 2 * fold:]
    return out.view_as(x)


class TemporalShift(nn.Module):
    """``net(temporal_shift(x))``: a layer whose input is shifted over the frames of each clip."""

    def __init__(self, net: nn.Module, num_segments: int, fold_div: int = 8):
        super().__init__()
        self.net = net
        self.num_segments = num_segments
        self.fold_div = fold_div

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(temporal_shift(x, self.num_segments, self.fold_div))

    def extra_repr(self) -> str:
        return f"num_segments={self.num_segments}, fold_div={self.fold_div}"


def shift_mobilenet_v2(features: nn.Sequential, num_segments: int, fold_div: int = 8) -> int:
    """Insert the shift into torchvision MobileNetV2 ``features``; returns the number of shifted blocks."""
    count = 0
    for block in features:
        layers = getattr(block, "conv", None)
        if layers is None or not getattr(block, "use_res_connect", False) or len(layers) != 4:
            continue  # not an expansion-6 block with an identity shortcut
        expand = layers[0]  # Conv2dNormActivation: [Conv2d 1x1, BN, ReLU6]
        expand[0] = TemporalShift(expand[0], num_segments, fold_div)
        count += 1
    return count


def shift_resnet(encoder: nn.Module, num_segments: int, fold_div: int = 8) -> int:
    """Insert the shift before ``conv1`` of every block of layer1..layer4; returns the number of blocks."""
    count = 0
    for stage in (encoder.layer1, encoder.layer2, encoder.layer3, encoder.layer4):
        for block in stage:
            block.conv1 = TemporalShift(block.conv1, num_segments, fold_div)
            count += 1
    return count
