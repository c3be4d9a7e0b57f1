"""A faster copy of a trained model for inference: BatchNorm folded into convolutions, channels-last.

``prepare_for_inference(model)`` returns an evaluation-only copy in which every convolution of the
glance and focus encoders that is followed by a BatchNorm absorbs it (``W' = W * g / s``,
``b' = (b - mean) * g / s + beta``), and the encoders run in channels-last memory format. Outputs
equal the original model's to float rounding (~1e-6 relative); the copy cannot be trained (its
BatchNorm layers are gone). On a CPU this roughly doubles MobileNetV2's speed, whose depthwise
layers are limited by memory traffic rather than arithmetic.

On a CPU the glance encoder is also traced and frozen with ``torch.jit.optimize_for_inference``,
which fuses each convolution with its ReLU6: another 1.35x for MobileNetV2 at 224 px (0.271 s ->
0.198 s per 32 frames on 2 cores), with outputs equal to ~1e-14. ResNet gains nothing from it (and
its oneDNN path moves features by ~1e-4), so the focus encoder stays eager. The traced glance ignores
autocast (float32 only), which is why it is used on CPUs only.
"""
from __future__ import annotations

import copy
import warnings
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


class TracedEncoder(nn.Module):
    """A frozen TorchScript encoder behind the eager encoder's interface (``feature_dim``, forward)."""

    def __init__(self, traced: torch.jit.ScriptModule, feature_dim: int, memory_format: torch.memory_format):
        super().__init__()
        self.traced = traced
        self.feature_dim = feature_dim
        self.memory_format = memory_format

    def forward(self, frames: torch.Tensor):
        return self.traced(frames.contiguous(memory_format=self.memory_format))


def trace_encoder(encoder: nn.Module, input_size: int) -> nn.Module:
    """Trace ``encoder`` (evaluation mode, any batch size, ``input_size`` frames) and freeze it.

    TorchScript is deprecated in recent PyTorch releases (its FutureWarnings are silenced here); where
    tracing is unavailable or fails, the eager encoder is returned unchanged.
    """
    device = next(encoder.parameters()).device
    example = torch.zeros(2, 3, input_size, input_size, device=device)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            traced = torch.jit.trace(encoder.eval(), example, check_trace=False)
            traced = torch.jit.optimize_for_inference(torch.jit.freeze(traced))
    except (AttributeError, RuntimeError):
        return encoder
    return TracedEncoder(traced, encoder.feature_dim, getattr(encoder, "memory_format", torch.contiguous_format))


def prepare_for_inference(model: nn.Module, fold_bn: bool = True, channels_last: bool = True,
                          encoder_chunk: Optional[int] = None, trace_glance: Optional[bool] = None) -> nn.Module:
    """An evaluation-only copy of a UniAdaFocus with folded BatchNorm and channels-last encoders.

    ``encoder_chunk``: images per encoder call (default 32 on a CPU, where huge batches thrash
    memory; unlimited on a GPU). ``trace_glance``: run the glance encoder as a frozen TorchScript
    graph (default: on a CPU; float32 only, autocast does not apply to it).
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
    if trace_glance if trace_glance is not None else on_cpu:
        fast.glance = trace_encoder(fast.glance, fast.input_size)
    return fast
