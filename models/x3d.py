"""X3D video networks (X3D-S, X3D-L) as the Uni-AdaFocus-X3D variant uses them, in SlowFast's key layout.

Written from the X3D definition (Feichtenhofer, CVPR 2020) and the official Uni-AdaFocus-X3D
behaviour (docs/official-behaviour.md, "Model: backbones and checkpoint layout"); module names follow SlowFast's
state-dict layout so that its ``.pyth`` files and the official Uni-AdaFocus checkpoints
(``global_CNN.*`` = X3D-S, ``local_CNN.*`` = X3D-L) load key for key.

Architecture (input (N, 3, T, H, W); no temporal stride anywhere, so T is preserved):

* ``s1.pathway0_stem``: ``conv_xy`` 3->24, kernel (1,3,3), stride (1,2,2), pad (0,1,1); ``conv`` depthwise
  temporal 24->24, kernel (5,1,1), pad (2,0,0); ``bn``; ReLU. No pooling.
* ``s2``..``s5``: blocks ``pathway0_res{i}`` with output widths 24, 48, 96, 192 and inner widths
  int(2.25 * out) = 54, 108, 216, 432. Block 0 has spatial stride 2 and a projection shortcut
  (``branch1`` 1x1x1 conv with stride (1,2,2), ``branch1_bn``); the others are identity shortcuts.
  Output = ReLU(shortcut + branch2). ``branch2`` = ``a`` (1x1x1) -> ``a_bn`` -> ReLU -> ``b`` (channel-wise
  3x3x3, stride (1,s,s)) -> ``b_bn`` -> ``se`` (only at even block indices 0, 2, 4, ...) -> Swish ->
  ``c`` (1x1x1) -> ``c_bn`` (no activation). Depths ceil(depth_factor * (1, 2, 5, 3)): X3D-S (2.2) 3, 5,
  11, 7; X3D-L (5.0) 5, 10, 25, 15.
* SE: mean over (T, H, W) -> ``fc1`` (1x1x1 conv with bias) -> ReLU -> ``fc2`` -> sigmoid -> rescale; its width
  is SlowFast's rounding of inner/16 to a multiple of 8 (at least 8): 8, 8, 16, 32. The SE pool spans the
  whole clip, so a frame's features depend on every frame of the clip.
* ``head``: ``conv_5`` 192->432 (1x1x1) -> ``conv_5_bn`` -> ReLU = the **feature map** (N, 432, T, H/32, W/32);
  then the clip head: average over (T, h, w) of the *detached* map -> ``lin_5`` 432->2048 (1x1x1, no bias)
  -> ReLU -> dropout -> ``projection`` Linear(2048, C). The logits are raw (no softmax).

All BatchNorms: eps 1e-5, momentum 0.1. Spatial size: 160 -> 80 -> 40 -> 20 -> 10 -> 5 (X3D-S glance);
P -> P/32 (X3D-L patches: 4x4 for 128); sizes that are not multiples of 32 round up through the padding.

**Pooling.** The official head pools with a fixed ``AvgPool3d`` of kernel (T, ceil(S/32), ceil(S/32)),
stride 1, built for the configured clip length T and crop size S. For exactly that clip the map is
T x ceil(S/32) x ceil(S/32), so the fixed pool takes one average over the whole map: the same value as
the global average used here (``AdaptiveAvgPool3d(1)``). For any other T or size the official pool
returns more than one position and the logits get the wrong shape (N, k*C); the global average
keeps working, so one module serves every clip length and patch size.

**Detach.** The clip head reads ``feature_maps.detach()``, as the official ``get_featmap`` does: a
loss on ``final_logits`` trains ``lin_5`` and ``projection`` only, never the backbone. The backbone is
trained through ``feature_maps`` / ``frame_features`` (the variant's per-frame heads).

**Initialisation** (SlowFast's): Conv3d kaiming-normal, fan_out (ReLU gain), zero bias; BatchNorm
gamma 1 / beta 0, except each residual branch's final BN (``branch2.c_bn``) with gamma 0; Linear N(0, 0.01)
with zero bias.

**Pretrained weights** exist only as SlowFast ``.pyth`` files (``{'model_state': state_dict, 'epoch': ...}``,
the official ``archs/X3D_ckpt/x3d_s.pyth`` / ``x3d_l.pyth``); nothing is downloaded. Load them with
:func:`load_x3d_pyth` (or the constructors' ``weights=`` argument).

**Cost** (``models.flops.count_gmacs`` of :meth:`X3D.forward`, which includes the clip head): X3D-S on
16x160^2 and X3D-L on 32x128^2 match the official constants 2.415453044 and 5.984521316 GMACs
(the official FLOPs table) within 1 % (tests/test_x3d_backbone.py).
"""
from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from .weights import WeightsError, fit_problems, read_weight_file, strip_wrapper_prefixes, unwrap

#: Blocks per stage (res2..res5) before the depth factor (X3D's block basis).
BLOCK_BASIS = (1, 2, 5, 3)
#: Depth factors of the two networks the Uni-AdaFocus-X3D variant uses.
X3D_S_DEPTH = 2.2
X3D_L_DEPTH = 5.0
#: Width of the feature map (conv_5 output) and of the clip head's hidden layer (lin_5 output).
FEATURE_DIM = 432
HEAD_DIM = 2048
BN_EPS = 1e-5
BN_MOMENTUM = 0.1
#: Keys of the clip head's classifier; a file with another class count may skip them (official behaviour).
PROJECTION_KEYS = ("head.projection.weight", "head.projection.bias")


class X3DWeightsError(WeightsError):
    """An X3D weight file cannot be read, or its state dict does not fit the network."""


# --------------------------------------------------------------------------------------------------
# Sizes
# --------------------------------------------------------------------------------------------------
def round_width(width: float, multiplier: float, min_width: int = 1, divisor: int = 1) -> int:
    """SlowFast's channel rounding: ``width * multiplier`` to the nearest multiple of ``divisor`` (at least
    ``min_width``), one divisor more when that falls below 90 % of the exact product."""
    exact = width * multiplier
    rounded = max(min_width, int(exact + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * exact:
        rounded += divisor
    return int(rounded)


def stage_depths(depth_factor: float) -> Tuple[int, ...]:
    """Blocks in res2..res5: ceil(depth_factor * basis). 2.2 -> (3, 5, 11, 7); 5.0 -> (5, 10, 25, 15)."""
    return tuple(int(math.ceil(depth_factor * b)) for b in BLOCK_BASIS)


def _bn(channels: int) -> nn.BatchNorm3d:
    return nn.BatchNorm3d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


# --------------------------------------------------------------------------------------------------
# Layers
# --------------------------------------------------------------------------------------------------
class Swish(nn.Module):
    """x * sigmoid(x)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(x)


class SqueezeExcite(nn.Module):
    """Channel gate from the clip mean: mean over (T, H, W) -> fc1 -> ReLU -> fc2 -> sigmoid -> x * gate."""

    def __init__(self, channels: int, ratio: float = 0.0625):
        super().__init__()
        hidden = round_width(channels, ratio, min_width=8, divisor=8)
        self.fc1 = nn.Conv3d(channels, hidden, 1, bias=True)
        self.relu = nn.ReLU()
        self.fc2 = nn.Conv3d(hidden, channels, 1, bias=True)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = x.mean(dim=(2, 3, 4), keepdim=True)
        gate = self.sigmoid(self.fc2(self.relu(self.fc1(gate))))
        return x * gate


class X3DStem(nn.Module):
    """Spatial 3x3 conv with stride 2, then a depthwise temporal conv of length 5, BN, ReLU."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv_xy = nn.Conv3d(in_channels, out_channels, (1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1),
                                 bias=False)
        self.conv = nn.Conv3d(out_channels, out_channels, (5, 1, 1), padding=(2, 0, 0), groups=out_channels,
                              bias=False)
        self.bn = _bn(out_channels)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv(self.conv_xy(x))))


class X3DBottleneck(nn.Module):
    """The residual branch: 1x1x1 expand, channel-wise 3x3x3 (spatial stride), optional SE, Swish, 1x1x1
    project; BN after each conv, none after the last (``c_bn`` ends the branch)."""

    def __init__(self, in_channels: int, inner_channels: int, out_channels: int, stride: int, use_se: bool,
                 se_ratio: float = 0.0625, channelwise: bool = True):
        super().__init__()
        self.a = nn.Conv3d(in_channels, inner_channels, 1, bias=False)
        self.a_bn = _bn(inner_channels)
        self.a_relu = nn.ReLU()
        self.b = nn.Conv3d(inner_channels, inner_channels, 3, stride=(1, stride, stride), padding=1,
                           groups=inner_channels if channelwise else 1, bias=False)
        self.b_bn = _bn(inner_channels)
        self.se = SqueezeExcite(inner_channels, se_ratio) if use_se else None
        self.b_swish = Swish()
        self.c = nn.Conv3d(inner_channels, out_channels, 1, bias=False)
        self.c_bn = _bn(out_channels)
        self.c_bn.is_final_residual_bn = True  # zero-initialised (see X3D.reset_parameters)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.a_relu(self.a_bn(self.a(x)))
        x = self.b_bn(self.b(x))
        if self.se is not None:
            x = self.se(x)
        x = self.b_swish(x)
        return self.c_bn(self.c(x))


class X3DBlock(nn.Module):
    """ReLU(shortcut + branch2); the shortcut is a strided 1x1x1 conv + BN when the shape changes."""

    def __init__(self, in_channels: int, inner_channels: int, out_channels: int, stride: int, use_se: bool,
                 se_ratio: float = 0.0625, channelwise: bool = True):
        super().__init__()
        if in_channels != out_channels or stride != 1:
            self.branch1 = nn.Conv3d(in_channels, out_channels, 1, stride=(1, stride, stride), bias=False)
            self.branch1_bn = _bn(out_channels)
        else:
            self.branch1 = None
            self.branch1_bn = None
        self.branch2 = X3DBottleneck(in_channels, inner_channels, out_channels, stride, use_se, se_ratio,
                                     channelwise)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.branch1 is None else self.branch1_bn(self.branch1(x))
        return self.relu(shortcut + self.branch2(x))


class X3DStage(nn.Module):
    """``depth`` blocks named ``pathway0_res{i}``; block 0 strides by 2 in space; SE on even indices."""

    def __init__(self, in_channels: int, inner_channels: int, out_channels: int, depth: int, stride: int = 2,
                 se_ratio: float = 0.0625, channelwise: bool = True):
        super().__init__()
        self.depth = depth
        for i in range(depth):
            block = X3DBlock(in_channels if i == 0 else out_channels, inner_channels, out_channels,
                             stride if i == 0 else 1, use_se=(i % 2 == 0) and se_ratio > 0,
                             se_ratio=se_ratio, channelwise=channelwise)
            self.add_module(f"pathway0_res{i}", block)

    def blocks(self) -> List[X3DBlock]:
        return [getattr(self, f"pathway0_res{i}") for i in range(self.depth)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks():
            x = block(x)
        return x


class X3DHead(nn.Module):
    """``conv_5`` -> BN -> ReLU (the feature map); the clip head: global mean -> ``lin_5`` -> ReLU ->
    dropout -> ``projection``."""

    def __init__(self, in_channels: int, feature_dim: int, head_dim: int, num_classes: int, dropout: float):
        super().__init__()
        self.conv_5 = nn.Conv3d(in_channels, feature_dim, 1, bias=False)
        self.conv_5_bn = _bn(feature_dim)
        self.conv_5_relu = nn.ReLU()
        # Global mean over (T, h, w): equal to the official fixed AvgPool3d for the configured clip,
        # and valid for any other clip length or size (module docstring, "Pooling").
        self.avg_pool = nn.AdaptiveAvgPool3d(1)
        self.lin_5 = nn.Conv3d(feature_dim, head_dim, 1, bias=False)
        self.lin_5_relu = nn.ReLU()
        self.dropout = nn.Dropout(dropout)
        self.projection = nn.Linear(head_dim, num_classes, bias=True)

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 192, T, h, w) -> (N, 432, T, h, w)."""
        return self.conv_5_relu(self.conv_5_bn(self.conv_5(x)))

    def classify(self, feature_maps: torch.Tensor) -> torch.Tensor:
        """Clip logits (N, C) from a feature map (N, 432, T, h, w); the map is used as given (not detached)."""
        x = self.lin_5_relu(self.lin_5(self.avg_pool(feature_maps)))  # (N, 2048, 1, 1, 1)
        x = self.dropout(x.flatten(1))
        return self.projection(x)


# --------------------------------------------------------------------------------------------------
# Network
# --------------------------------------------------------------------------------------------------
@dataclass
class X3DOutput:
    """The result of :meth:`X3D.forward` for a clip (N, 3, T, H, W); h = ceil(H/32), w = ceil(W/32)."""

    final_logits: torch.Tensor  # (N, C) clip head on the *detached* map: trains lin_5/projection only
    feature_maps: torch.Tensor  # (N, 432, T, h, w) conv_5 -> BN -> ReLU, channels before time (X3D layout)
    frame_features: torch.Tensor  # (N, T, 432) spatial mean of feature_maps per frame (not detached)


class X3D(nn.Module):
    """SlowFast's X3D with a configurable depth factor (X3D-S: 2.2, X3D-L: 5.0).

    Args:
        num_classes: classes of ``head.projection``.
        depth_factor: blocks per stage = ceil(depth_factor * (1, 2, 5, 3)).
        width_factor: multiplier of the stage widths (2.0 for both networks).
        bottleneck_factor: inner width = int(bottleneck_factor * stage width) (2.25).
        dim_c1: base width (12); the stem has round_width(dim_c1, width_factor) = 24 channels.
        dim_c5: width of ``lin_5`` (2048).
        dropout: dropout before ``projection`` (official 0.5).
        se_ratio: SE width ratio (1/16); 0 disables SE.
        channelwise: channel-wise (depthwise) 3x3x3 convolutions (True).

    Input: (N, 3, T, H, W), normalised RGB clips. Output: :class:`X3DOutput`.
    """

    def __init__(self, num_classes: int = 400, depth_factor: float = X3D_S_DEPTH, *, width_factor: float = 2.0,
                 bottleneck_factor: float = 2.25, dim_c1: int = 12, dim_c5: int = HEAD_DIM, dropout: float = 0.5,
                 se_ratio: float = 0.0625, channelwise: bool = True):
        super().__init__()
        self.num_classes = num_classes
        self.depth_factor = depth_factor
        self.depths = stage_depths(depth_factor)
        stem_width = round_width(dim_c1, width_factor)
        self.s1 = nn.Module()
        self.s1.add_module("pathway0_stem", X3DStem(3, stem_width))
        # Base widths of res2..res5 (res2 = dim_c1, each next one doubled, multiples of 8), then the
        # stage widths (x width_factor) and the bottleneck widths (x bottleneck_factor).
        base = [dim_c1]
        for _ in range(3):
            base.append(round_width(base[-1], 2.0, divisor=8))
        in_channels = stem_width
        self.stage_widths: List[int] = []
        self.inner_widths: List[int] = []
        for index, (width, depth) in enumerate(zip(base, self.depths)):
            out_channels = round_width(width, width_factor)
            inner = int(bottleneck_factor * out_channels)
            stage = X3DStage(in_channels, inner, out_channels, depth, stride=2, se_ratio=se_ratio,
                             channelwise=channelwise)
            self.add_module(f"s{index + 2}", stage)
            self.stage_widths.append(out_channels)
            self.inner_widths.append(inner)
            in_channels = out_channels
        self.feature_dim = int(bottleneck_factor * in_channels)  # 432
        self.head_dim = dim_c5
        self.head = X3DHead(in_channels, self.feature_dim, dim_c5, num_classes, dropout)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """SlowFast's initialisation (module docstring)."""
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm3d):
                nn.init.constant_(m.weight, 0.0 if getattr(m, "is_final_residual_bn", False) else 1.0)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, mean=0.0, std=0.01)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def stages(self) -> List[X3DStage]:
        return [self.s2, self.s3, self.s4, self.s5]

    def feature_map(self, clip: torch.Tensor) -> torch.Tensor:
        """(N, 3, T, H, W) -> the conv_5 map (N, 432, T, ceil(H/32), ceil(W/32))."""
        if clip.dim() != 5 or clip.shape[1] != 3:
            raise ValueError(f"X3D expects a clip (N, 3, T, H, W), got shape {tuple(clip.shape)}")
        x = self.s1.pathway0_stem(clip)
        for stage in self.stages():
            x = stage(x)
        return self.head.feature_map(x)

    def clip_logits(self, feature_maps: torch.Tensor) -> torch.Tensor:
        """Clip logits (N, C) from a feature map (N, 432, T, h, w), which is **detached** first."""
        return self.head.classify(feature_maps.detach())

    @staticmethod
    def frame_features_of(feature_maps: torch.Tensor) -> torch.Tensor:
        """(N, 432, T, h, w) -> (N, T, 432): the spatial mean of each frame's map."""
        return feature_maps.mean(dim=(3, 4)).transpose(1, 2)

    def forward(self, clip: torch.Tensor) -> X3DOutput:
        """clip (N, 3, T, H, W) -> X3DOutput(final_logits (N, C), feature_maps (N, 432, T, h, w),
        frame_features (N, T, 432)), h = ceil(H/32), w = ceil(W/32)."""
        maps = self.feature_map(clip)
        return X3DOutput(final_logits=self.clip_logits(maps), feature_maps=maps,
                         frame_features=self.frame_features_of(maps))

    def head_linear_weights(self) -> Dict[str, torch.Tensor]:
        """The clip head as the weights of a per-frame MLP ``Sequential(Linear(432, 2048, bias=False), ReLU,
        Dropout, Linear(2048, C))`` (keys ``0.weight``, ``3.weight``, ``3.bias``; detached copies), i.e. what
        the official ``share_head_params`` copies into the per-frame heads after the pretrained load."""
        return {"0.weight": self.head.lin_5.weight.detach().reshape(self.head_dim, self.feature_dim).clone(),
                "3.weight": self.head.projection.weight.detach().clone(),
                "3.bias": self.head.projection.bias.detach().clone()}


# --------------------------------------------------------------------------------------------------
# SlowFast .pyth files
# --------------------------------------------------------------------------------------------------
_CONVERT_HINT = (
    "Convert it once, in an environment where you trust the file (unpickling can run code; SlowFast "
    "files may also need the 'yacs' package for their config):\n"
    "  python -c \"import torch; c = torch.load('{path}', map_location='cpu', weights_only=False); "
    "torch.save({{'model_state': c['model_state'], 'epoch': c.get('epoch', 0)}}, '{path}.tensors')\"\n"
    "and pass '{path}.tensors' instead.")


def _short_reason(text: str) -> str:
    """The informative part of a torch.load error: the unpickler's own complaint when there is one (not the
    generic advice to retry with weights_only=False, which does not help a broken file), else the first
    sentence."""
    found = re.search(r"WeightsUnpickler error:\s*(.*?)\s*(?:Check the documentation|$)", text, re.S)
    reason = " ".join(found.group(1).split()) if found and found.group(1).strip() else text.strip()
    return reason.split(". ")[0].splitlines()[0][:200] if reason else "no detail"


def read_x3d_pyth(path: str) -> Dict[str, torch.Tensor]:
    """The ``model_state`` of a SlowFast ``.pyth`` file (read with ``weights_only=True``, on the CPU), with any
    ``module.`` prefixes removed. A bare state dict of tensors is accepted too.

    Raises :class:`X3DWeightsError` naming the path when the file is missing, corrupt, pickles objects other
    than tensors and plain containers (it says how to convert such a file; it is never unpickled
    unsafely), or holds no state dict.
    """
    try:
        obj = read_weight_file(path, X3DWeightsError, kind="X3D weight file")
    except X3DWeightsError as exc:
        cause = exc.__context__
        text = str(cause) if cause is not None else ""
        if "Unsupported global" in text:
            found = re.search(r"GLOBAL (\S+)", text)
            what = f" (e.g. {found.group(1)})" if found else ""
            raise X3DWeightsError(
                f"cannot read X3D weight file {path} with weights_only=True: it pickles non-tensor "
                f"objects{what}, which are not loaded unsafely.\n" + _CONVERT_HINT.format(path=path)) from None
        if cause is not None:  # not a refusal of pickled objects: the file itself is broken
            raise X3DWeightsError(f"cannot read X3D weight file {path}: it is corrupt or not a file written by "
                                  f"torch.save ({cause.__class__.__name__}: {_short_reason(text)})") from None
        raise
    state = obj.get("model_state")
    if state is None and all(isinstance(v, torch.Tensor) for v in obj.values()) and obj:
        state = obj
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise X3DWeightsError(f"X3D weight file {path} holds no 'model_state' state dict of tensors "
                              f"(top-level keys: {sorted(map(str, obj))[:12]})")
    return strip_wrapper_prefixes(state)


def load_x3d_state_dict(model: nn.Module, state: Dict[str, torch.Tensor], source: str = "state dict", *,
                        skip_mismatched_projection: bool = True) -> List[str]:
    """Load a SlowFast-layout X3D state dict into ``model`` strictly; returns notes on what was skipped.

    Every key of the model must be in ``state`` with the same shape and ``state`` must hold no other key,
    else :class:`X3DWeightsError` names ``source`` and every missing, unexpected and mis-shaped key. One
    exception (``skip_mismatched_projection``, the official loader's behaviour): when ``head.projection``
    has another class count, both projection tensors are skipped, keep their current values, and a note
    says so.
    """
    target = unwrap(model)
    own = target.state_dict()
    notes: List[str] = []
    skipped: Sequence[str] = ()
    if skip_mismatched_projection and all(k in own and k in state for k in PROJECTION_KEYS):
        if any(tuple(own[k].shape) != tuple(state[k].shape) for k in PROJECTION_KEYS):
            skipped = PROJECTION_KEYS
            notes.append(f"{source}: head.projection skipped ({state[PROJECTION_KEYS[1]].shape[0]} classes in the "
                         f"file, {own[PROJECTION_KEYS[1]].shape[0]} in the model); it keeps its current values")
    own_checked = {k: v for k, v in own.items() if k not in skipped}
    state = {k: v for k, v in state.items() if k not in skipped}
    problems = fit_problems(own_checked, state, kind="file")
    if problems:
        raise X3DWeightsError("\n".join([f"{source} does not fit {type(target).__name__}:", *problems]))
    result = target.load_state_dict(state, strict=False)
    if sorted(result.missing_keys) != sorted(skipped) or result.unexpected_keys:  # guarded by fit_problems
        raise X3DWeightsError(f"{source}: unexpected load result {result}")
    return notes


def load_x3d_pyth(model: nn.Module, path: str, *, skip_mismatched_projection: bool = True) -> List[str]:
    """Read a SlowFast ``.pyth`` file (:func:`read_x3d_pyth`) and load its ``model_state`` into ``model``
    strictly (:func:`load_x3d_state_dict`). Returns the notes (a skipped projection); raises
    :class:`X3DWeightsError` naming the file and the offending keys."""
    state = read_x3d_pyth(path)
    return load_x3d_state_dict(model, state, f"X3D weight file {path}",
                               skip_mismatched_projection=skip_mismatched_projection)


# --------------------------------------------------------------------------------------------------
# Constructors
# --------------------------------------------------------------------------------------------------
def _build(num_classes: int, depth_factor: float, dropout: float, weights: Optional[str]) -> X3D:
    model = X3D(num_classes, depth_factor, dropout=dropout)
    if weights is not None:
        for note in load_x3d_pyth(model, weights):
            warnings.warn(note)
    return model


def x3d_s(num_classes: int = 400, dropout: float = 0.5, weights: Optional[str] = None) -> X3D:
    """X3D-S (depth 2.2: 3, 5, 11, 7 blocks); the glance network (16 x 160^2 clips -> 5x5 maps).
    ``weights``: a SlowFast ``x3d_s.pyth`` to load (a skipped projection is reported as a warning)."""
    return _build(num_classes, X3D_S_DEPTH, dropout, weights)


def x3d_l(num_classes: int = 400, dropout: float = 0.5, weights: Optional[str] = None) -> X3D:
    """X3D-L (depth 5.0: 5, 10, 25, 15 blocks); the focus network (32 x P^2 patches -> P/32 maps).
    ``weights``: a SlowFast ``x3d_l.pyth`` to load (a skipped projection is reported as a warning)."""
    return _build(num_classes, X3D_L_DEPTH, dropout, weights)
