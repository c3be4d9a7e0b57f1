"""A faster copy of a trained model for inference: BatchNorm folded into convolutions, channels-last.

``prepare_for_inference(model)`` returns an evaluation-only copy in which every convolution of the
glance and focus encoders that is followed by a BatchNorm absorbs it (``W' = W * g / s``,
``b' = (b - mean) * g / s + beta``), and the encoders run in channels-last memory format. Outputs
equal the original model's to float rounding (~1e-6 relative); the copy cannot be trained (its
BatchNorm layers are gone). On a CPU this roughly doubles MobileNetV2's speed, whose depthwise
layers are limited by memory traffic rather than arithmetic.
"""
from __future__ import annotations

import copy
from typing import Optional

import torch
import torch.nn as nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


def fold_batchnorm(module: nn.Module) -> int:
    """Fold every BatchNorm2d that directly follows a Conv2d into it, in place; returns the count.

    Handles both layouts of the encoders: consecutive children of a Sequential (MobileNetV2,
    ResNet downsample branches) and ``convN`` / ``bnN`` attribute pairs (ResNet stems and blocks).
    """
    folded = 0
    children = list(module.named_children())
    if isinstance(module, nn.Sequential):
        for (name_a, a), (name_b, b) in zip(children, children[1:]):
            if isinstance(a, nn.Conv2d) and isinstance(b, nn.BatchNorm2d):
                setattr(module, name_a, fuse_conv_bn_eval(a, b))
                setattr(module, name_b, nn.Identity())
                folded += 1
    else:
        for name, child in children:
            if isinstance(child, nn.Conv2d) and name.startswith("conv"):
                bn_name = "bn" + name[len("conv"):]
                bn = getattr(module, bn_name, None)
                if isinstance(bn, nn.BatchNorm2d):
                    setattr(module, name, fuse_conv_bn_eval(child, bn))
                    setattr(module, bn_name, nn.Identity())
                    folded += 1
    for _, child in module.named_children():
        folded += fold_batchnorm(child)
    return folded


def prepare_for_inference(model: nn.Module, fold_bn: bool = True, channels_last: bool = True,
                          encoder_chunk: Optional[int] = None) -> nn.Module:
    """An evaluation-only copy of a UniAdaFocus with folded BatchNorm and channels-last encoders.

    ``encoder_chunk``: images per encoder call (default 32 on a CPU, where huge batches thrash
    memory; unlimited on a GPU).
    """
    fast = copy.deepcopy(model).eval()
    on_cpu = next(fast.parameters()).device.type == "cpu"
    fast.encoder_chunk = encoder_chunk if encoder_chunk is not None else (32 if on_cpu else None)
    for p in fast.parameters():
        p.requires_grad_(False)
    for encoder in (fast.glance, fast.focus):
        if fold_bn:
            fold_batchnorm(encoder)
        if channels_last:
            encoder.to(memory_format=torch.channels_last)
            encoder.memory_format = torch.channels_last
    return fast
