"""The two encoders: a cheap glance network and an expensive focus network (paper §3.1, App. H.1).

* ``GlanceEncoder``: torchvision MobileNetV2 (width 1.0) without its classifier. It maps frames to a
  1280-channel feature map (7x7 for 224-px frames) and its spatial mean.
* ``FocusEncoder``: a torchvision ResNet (50 by default; 18/34 for small configurations) without its
  classifier. It maps patches to pooled feature vectors (2048-d for ResNet-50).

ImageNet weights come from torchvision's weight enums when ``pretrained`` is asked for. Without a
network connection that download fails; pass a local file instead (``weights=PATH``), in
torchvision's key layout, or — for MobileNetV2 — in the layout of the file the official code loads
(``mobilenetv2_1.0-f2a8633.pth.tar``), which is converted on the fly (docs/official-behaviour.md,
"Model: backbones and checkpoint layout").
"""
from __future__ import annotations

import os
from typing import Dict, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

from .weights import WeightsError, load_fitting, nested_state_dict, read_weight_file, strip_wrapper_prefixes

GLANCE_ARCHS = ("mbv2",)
FOCUS_ARCHS = ("resnet18", "resnet34", "resnet50")


class BackboneWeightsError(WeightsError):
    """Backbone weights could not be obtained or do not fit the network."""


# --------------------------------------------------------------------------------------------------
# MobileNetV2 key layouts
# --------------------------------------------------------------------------------------------------
# The official code (and the ImageNet file it loads) uses an older MobileNetV2 layout whose inverted
# residual blocks number their layers flatly ("conv.0" ... "conv.7"); torchvision groups them.
# Block 1 has expansion 1 (no expand layer); blocks 2..17 have expansion 6.
_MBV2_T1_RENAMES = {"0": "0.0", "1": "0.1", "3": "1", "4": "2"}
_MBV2_T6_RENAMES = {"0": "0.0", "1": "0.1", "3": "1.0", "4": "1.1", "6": "2", "7": "3"}


def mbv2_flat_to_torchvision(key: str) -> str:
    """Rename one key of the flat (official) MobileNetV2 layout to torchvision's layout."""
    parts = key.split(".")
    if len(parts) >= 4 and parts[0] == "features" and parts[2] == "conv":
        block = int(parts[1])
        table = _MBV2_T1_RENAMES if block == 1 else _MBV2_T6_RENAMES
        if parts[3] not in table:
            raise KeyError(f"unexpected MobileNetV2 layer {key!r}")
        return ".".join(parts[:3] + [table[parts[3]]] + parts[4:])
    return key


def mbv2_torchvision_to_flat(key: str) -> str:
    """Inverse of :func:`mbv2_flat_to_torchvision`."""
    parts = key.split(".")
    if len(parts) >= 5 and parts[0] == "features" and parts[2] == "conv":
        table = _MBV2_T1_RENAMES if int(parts[1]) == 1 else _MBV2_T6_RENAMES
        inverse = {grouped: flat for flat, grouped in table.items()}
        for n in (2, 1):  # grouped names have two components ("1.0") or one ("2")
            head = ".".join(parts[3:3 + n])
            if head in inverse:
                return ".".join(parts[:3] + [inverse[head]] + parts[3 + n:])
        raise KeyError(f"unexpected MobileNetV2 layer {key!r}")
    return key


def _is_flat_mbv2_layout(state_dict: Dict[str, torch.Tensor]) -> bool:
    # In the flat layout block 1's pointwise projection is "conv.3" (4-D); torchvision has "conv.1".
    w = state_dict.get("features.1.conv.3.weight")
    return w is not None and w.dim() == 4


# --------------------------------------------------------------------------------------------------
# Weight files
# --------------------------------------------------------------------------------------------------
def read_state_dict(path: str) -> Dict[str, torch.Tensor]:
    """A state dict from a weight file: a plain state dict, or one under 'state_dict' / 'model'."""
    state = nested_state_dict(read_weight_file(path, BackboneWeightsError))
    if state is None:
        raise BackboneWeightsError(f"{path} does not hold a state dict of tensors")
    return strip_wrapper_prefixes(state)


def _download(weights_enum, flag: str) -> Dict[str, torch.Tensor]:
    try:
        return weights_enum.get_state_dict(progress=False, check_hash=False)
    except Exception as exc:
        cache = os.path.join(torch.hub.get_dir(), "checkpoints")
        missing = os.path.join(cache, os.path.basename(weights_enum.url))
        raise BackboneWeightsError(
            f"ImageNet weights {missing} are missing and could not be downloaded ({exc.__class__.__name__}); "
            f"either download {weights_enum.url} to {missing} (torchvision's cache) or pass the file with "
            f"{flag} PATH (or train from scratch with --no-pretrained)") from exc


# --------------------------------------------------------------------------------------------------
# Encoders
# --------------------------------------------------------------------------------------------------
class GlanceEncoder(nn.Module):
    """MobileNetV2 feature extractor.

    forward(frames (N, 3, H, W)) -> (feature map (N, 1280, h, w), pooled (N, 1280)), h = ceil(H/32).

    ``zero_init_residual``: for random initialisation, the BatchNorm that closes each inverted residual
    with a shortcut starts at zero, so that the block starts as the identity (as torchvision's ResNets
    offer; Goyal et al., 2017). Loaded weights replace it.
    """

    feature_dim = 1280

    def __init__(self, arch: str = "mbv2", pretrained: bool = False, weights: Optional[str] = None,
                 zero_init_residual: bool = False):
        super().__init__()
        if arch not in GLANCE_ARCHS:
            raise ValueError(f"glance_arch must be one of {GLANCE_ARCHS}, got {arch!r} "
                             "(the official code implements only MobileNetV2 as well)")
        self.features = torchvision.models.mobilenet_v2(weights=None).features
        if zero_init_residual:  # every inverted residual with a shortcut starts as the identity
            for block in self.features:
                if getattr(block, "use_res_connect", False):
                    nn.init.zeros_(block.conv[-1].weight)  # the BatchNorm after the linear projection
        if weights:
            self.load_weights(read_state_dict(weights), source=weights)
        elif pretrained:
            enum = torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1
            self.load_weights(_download(enum, "--glance_weights"), source=enum.url)

    def load_weights(self, state_dict: Dict[str, torch.Tensor], source: str = "state dict") -> None:
        """Load ImageNet MobileNetV2 weights in torchvision's or the official flat layout."""
        if _is_flat_mbv2_layout(state_dict):
            state_dict = {mbv2_flat_to_torchvision(k): v for k, v in state_dict.items()}
        state_dict = {k[len("features."):]: v for k, v in state_dict.items() if k.startswith("features.")}
        load_fitting(self.features, state_dict, f"weights from {source}", error=BackboneWeightsError)

    #: Memory format the input is put in (``models.inference`` sets channels-last for speed).
    memory_format = torch.contiguous_format

    def forward(self, frames: torch.Tensor):
        fmap = self.features(frames.contiguous(memory_format=self.memory_format))  # (N, 1280, h, w)
        return fmap, fmap.mean(dim=(2, 3))


class FocusEncoder(nn.Module):
    """ResNet feature extractor: patches (N, 3, P, P) -> pooled features (N, feature_dim).

    The modules keep torchvision's names (conv1, bn1, layer1..layer4) so that torchvision and the
    official checkpoints map onto it by a prefix.
    """

    def __init__(self, arch: str = "resnet50", pretrained: bool = False, weights: Optional[str] = None,
                 zero_init_residual: bool = False):
        super().__init__()
        if arch not in FOCUS_ARCHS:
            raise ValueError(f"focus_arch must be one of {FOCUS_ARCHS}, got {arch!r}")
        # zero_init_residual: the last BatchNorm of every block starts at zero (each block the identity)
        net = getattr(torchvision.models, arch)(weights=None, zero_init_residual=zero_init_residual)
        self.feature_dim = net.fc.in_features
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        if weights:
            self.load_weights(read_state_dict(weights), source=weights)
        elif pretrained:
            enum = torchvision.models.get_model_weights(arch).IMAGENET1K_V1
            self.load_weights(_download(enum, "--focus_weights"), source=enum.url)

    def load_weights(self, state_dict: Dict[str, torch.Tensor], source: str = "state dict") -> None:
        """Load ImageNet ResNet weights in torchvision's layout (the classifier 'fc' is dropped)."""
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith("fc.")}
        load_fitting(self, state_dict, f"weights from {source}", error=BackboneWeightsError)

    memory_format = torch.contiguous_format

    def feature_maps(self, patches: torch.Tensor) -> torch.Tensor:
        """patches (N, 3, P, P) -> the last stage's feature maps (N, D, P/32, P/32)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(patches.contiguous(memory_format=self.memory_format)))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        return self.feature_maps(patches).mean(dim=(2, 3))  # (N, D)


def downscale(frames: torch.Tensor, size: int, antialias: bool) -> torch.Tensor:
    """Frames (N, C, H, W) resized to ``size x size`` with bilinear interpolation (``align_corners=False``).

    ``antialias=True`` low-pass filters first when shrinking, as a camera of that resolution would see the
    scene (fine detail is averaged away instead of aliased); ``False`` samples the frame as the official
    X3D variant does. Frames already of that size pass through unchanged.
    """
    if frames.shape[-2:] == (size, size):
        return frames
    return F.interpolate(frames, size=(size, size), mode="bilinear", align_corners=False, antialias=antialias)


def glance_feature_size(input_size: int) -> int:
    """Side of MobileNetV2's last feature map for ``input_size`` frames (five stride-2 stages)."""
    size = input_size
    for _ in range(5):
        size = (size + 1) // 2
    return size
