"""A faster copy of a trained model for CPU evaluation, and the choice of the model evaluation runs.

``prepare_for_inference(model)`` returns an evaluation-only copy of any variant (``mn2_r50``, ``tsm``,
``x3d``) that **decides exactly as the model**: the glance encoder, the policy and the frame selection
are the model's own, untouched (no folding, no other memory layout), and the glance encoder sees the
whole batch in one call as in the model, so the glance features, the frame weights, the selected
frames and the patch actions are bit for bit the model's, on every variant and at every batch size.
The speed-ups apply to the **focus encoder** alone, which is downstream of every decision and most of
the work (ResNet-50 on T_L patches for ``mn2_r50`` and ``tsm``, X3D-L for ``x3d``):

* **BatchNorm is folded** into the convolution it follows (``W' = W * g / s``,
  ``b' = (b - mean) * g / s + beta``): 2-D and 3-D convolutions, also those wrapped by the temporal
  shift (the shift moves the convolution's input, which folding does not touch);
* **it runs channels-last**: ``channels_last`` for the 2-D encoders (ResNet, with or without the
  shift), ``channels_last_3d`` for X3D-L;
* **it sees at most** ``focus_chunk`` **images per call** (32 on a CPU; whole clips for the variants
  whose focus encoder mixes the frames of a video), so that its time per video stays flat as the
  evaluation batch grows instead of thrashing memory (the glance encoder's does not: it sees the whole
  batch, as in the model);
* with ``bf16_focus=True`` it runs under bfloat16 autocast (CPUs with native bfloat16: AVX512-BF16 or
  AMX; :func:`bf16_support`). It moves the logits a little; measured against the plain model on the
  parity checkpoints and inputs (synthetic weights): max |logit change| 0.067 for ``mn2_r50`` (logits
  up to 23), 0.030 for ``tsm`` (up to 15), 0.046 and 0.039 for ``x3d`` (up to 12.5 and 9.4). The
  glance stays in float32 because its features steer the policy: with the glance in bfloat16 too, the
  ``mn2_r50`` logits moved by 0.86 and the selected frames changed.

Measured with ``scripts/bench_inference.py`` (full-size configurations, random weights, 2 shared cores
of an AMD EPYC, three runs): the copy takes 0.79-0.94x the plain model's time at B = 1 and 0.62-0.91x
at B = 8, depending on the variant and on the load.

Without ``bf16_focus`` the focus features, and so the logits, equal the model's to float rounding
(folding and channels-last reorder float32 sums; on the parity checkpoints both stay within 1e-5 of
the plain model's), and the decisions are identical. Folding the glance too would move its features
by ~5e-5, and with them the patch positions, which a random ResNet-50 amplifies to ~1e-2 in the focus
features. The copy cannot be trained (its focus BatchNorm layers are gone) and holds a snapshot of the
weights (make a new one after the weights change).

:func:`evaluation_model` decides what an evaluation runs: on a CPU the copy, made afresh at every
call; the plain model with ``plain=True`` (``--plain_model``) or on CUDA.
"""
from __future__ import annotations

import copy
from typing import Callable, Optional, Tuple

import torch
import torch.nn as nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from .temporal_shift import TemporalShift

#: Images per focus-encoder call in CPU evaluation (see :func:`prepare_for_inference`).
CPU_FOCUS_CHUNK = 32

_CONVS = {2: nn.Conv2d, 3: nn.Conv3d}
_NORMS = {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}


# --------------------------------------------------------------------------------------------------
# Encoder calls in chunks (used by the networks themselves)
# --------------------------------------------------------------------------------------------------
def call_in_chunks(fn: Callable, x: torch.Tensor, rows: Optional[int]):
    """``fn(x)`` computed on slices of at most ``rows`` rows of ``x`` (dim 0) and concatenated.

    ``fn`` returns a tensor or a tuple of tensors, each with one row per input row; ``rows`` None (or
    not fewer than ``x``'s rows) is one call. As long as ``fn`` treats the rows independently
    (evaluation mode: no BatchNorm statistics are computed), the result is one call's to float rounding:
    the kernels may round differently for another number of rows.
    """
    if rows is None or rows >= x.shape[0]:
        return fn(x)
    outs = [fn(part) for part in x.split(max(1, rows))]
    if isinstance(outs[0], tuple):
        return tuple(torch.cat(parts) for parts in zip(*outs))
    return torch.cat(outs)


# --------------------------------------------------------------------------------------------------
# BatchNorm folding
# --------------------------------------------------------------------------------------------------
def _foldable(conv_like: nn.Module, bn: nn.Module) -> Optional[nn.Module]:
    """The convolution (2-D or 3-D, possibly inside a temporal shift) that ``bn`` of the same rank
    can be folded into, or None."""
    conv = conv_like.net if isinstance(conv_like, TemporalShift) else conv_like
    for dims, conv_type in _CONVS.items():
        if type(conv) is conv_type and type(bn) is _NORMS[dims] and bn.track_running_stats:
            return conv
    return None


def _fold_pair(parent: nn.Module, conv_name: str, bn_name: str) -> bool:
    conv_like, bn = getattr(parent, conv_name), getattr(parent, bn_name)
    conv = _foldable(conv_like, bn)
    if conv is None:
        return False
    fused = fuse_conv_bn_eval(conv.eval(), bn.eval())
    if isinstance(conv_like, TemporalShift):
        conv_like.net = fused
    else:
        setattr(parent, conv_name, fused)
    setattr(parent, bn_name, nn.Identity())
    return True


def _attribute_pairs(module: nn.Module):
    """(conv name, BatchNorm name) attribute pairs of a module that is not a Sequential: ``convN`` /
    ``bnN`` (ResNet, the X3D stem's ``conv`` / ``bn``) and ``X`` / ``X_bn`` (X3D blocks and head)."""
    names = dict(module.named_children())
    for name in names:
        candidates = [name + "_bn"]
        if name.startswith("conv"):
            candidates.append("bn" + name[len("conv"):])
        for bn_name in candidates:
            if bn_name in names:
                yield name, bn_name


def fold_batchnorm(module: nn.Module) -> int:
    """Fold every BatchNorm (2-D or 3-D) that directly follows a convolution into it, in place; returns
    the count.

    Handles the layouts of every encoder here: consecutive children of a Sequential (MobileNetV2,
    ResNet downsample branches), ``convN`` / ``bnN`` attribute pairs (ResNet stems and blocks, the X3D
    stem) and ``X`` / ``X_bn`` pairs (X3D blocks and head). A convolution wrapped by the temporal shift
    absorbs the BatchNorm that follows the wrapper.
    """
    folded = 0
    if isinstance(module, nn.Sequential):
        children = list(module.named_children())
        for (name_a, _), (name_b, _) in zip(children, children[1:]):
            folded += _fold_pair(module, name_a, name_b)
    else:
        for conv_name, bn_name in list(_attribute_pairs(module)):
            folded += _fold_pair(module, conv_name, bn_name)
    for _, child in module.named_children():
        folded += fold_batchnorm(child)
    return folded


# --------------------------------------------------------------------------------------------------
# bfloat16 focus encoder
# --------------------------------------------------------------------------------------------------
class AutocastEncoder(nn.Module):
    """``inner`` under autocast to ``dtype`` whatever the caller's setting (``bf16_focus``); every other
    attribute (``feature_dim``, the X3D heads, ...) is the inner encoder's."""

    def __init__(self, inner: nn.Module, dtype: torch.dtype = torch.bfloat16):
        super().__init__()
        self.inner = inner
        self.dtype = dtype

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "inner":
                raise
            return getattr(self.inner, name)

    def forward(self, *inputs):
        with torch.autocast(inputs[0].device.type, dtype=self.dtype):
            return self.inner(*inputs)


def bf16_support() -> Optional[str]:
    """None when this CPU runs bfloat16 convolutions natively (oneDNN with AVX512-BF16 or AMX), else
    the reason it does not."""
    if not torch.backends.mkldnn.is_available():
        return "this PyTorch build has no oneDNN (mkldnn) CPU backend"
    checks = []
    try:
        checks.append(bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()))
    except (AttributeError, RuntimeError):
        pass
    native = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    native = [f() for f in native if f is not None]
    if not checks or not all(checks) or not any(native):
        return "this CPU has no native bfloat16 arithmetic (AVX512-BF16 or AMX)"
    return None


# --------------------------------------------------------------------------------------------------
# The copy
# --------------------------------------------------------------------------------------------------
def _memory_format(encoder: nn.Module) -> torch.memory_format:
    """channels_last_3d for an encoder with 3-D convolutions, channels_last otherwise."""
    return torch.channels_last_3d if any(isinstance(m, nn.Conv3d) for m in encoder.modules()) else torch.channels_last


def prepare_for_inference(model: nn.Module, fold_bn: bool = True, channels_last: bool = True,
                          focus_chunk: Optional[int] = None, bf16_focus: bool = False) -> nn.Module:
    """An evaluation-only copy of a Uni-AdaFocus network (any variant); see the module docstring.

    Only the focus encoder is changed: ``fold_bn`` folds its BatchNorm, ``channels_last`` converts it
    to the channels-last layout, ``focus_chunk`` sets the images per focus-encoder call (default
    :data:`CPU_FOCUS_CHUNK` on a CPU, where huge batches thrash memory; unlimited on a GPU),
    ``bf16_focus`` runs it under bfloat16 autocast. Everything upstream of the policy's decisions (the
    glance encoder, the policy) is the model's own, run on the whole batch as the model runs it.
    """
    fast = copy.deepcopy(model).eval()
    on_cpu = next(fast.parameters()).device.type == "cpu"
    fast.focus_chunk = focus_chunk if focus_chunk is not None else (CPU_FOCUS_CHUNK if on_cpu else None)
    # Only the focus encoder's parameters stop requiring gradients: on a CPU, some kernels take another
    # path for parameters that do not (measured: AdaFocusV2's GRU policy moved its actions by 2.4e-7), and
    # everything upstream of the decisions must run exactly as in the model. Evaluation runs under no_grad.
    for p in fast.focus.parameters():
        p.requires_grad_(False)
    if fold_bn:
        fold_batchnorm(fast.focus)
    if channels_last:
        layout = _memory_format(fast.focus)
        fast.focus.to(memory_format=layout)
        if hasattr(fast.focus, "memory_format"):  # the 2-D encoders convert their input to it
            fast.focus.memory_format = layout
    if bf16_focus:
        fast.focus = AutocastEncoder(fast.focus, torch.bfloat16)
    return fast


def evaluation_model(model: nn.Module, plain: bool = False, bf16_focus: bool = False,
                     eval_amp: bool = False) -> Tuple[nn.Module, str]:
    """The network an evaluation should run for ``model`` (in eval mode), and one line saying which.

    On a CPU: a fresh :func:`prepare_for_inference` copy of the current weights (with ``bf16_focus``
    if asked for); ``plain`` (``--plain_model``) or a CUDA model: ``model`` itself. ``eval_amp``: the
    caller evaluates under autocast (``--eval_amp``), which both encoders of the copy follow, as the
    model's do. Raises ValueError when ``bf16_focus`` cannot apply (:func:`bf16_focus_problem`).
    """
    device = next(model.parameters()).device
    if bf16_focus:
        problem = bf16_focus_problem(plain, device.type, eval_amp)
        if problem:
            raise ValueError(problem)
    if plain:
        return model, "evaluation runs the plain model (--plain_model)"
    if device.type != "cpu":
        return model, f"evaluation runs the plain model (on {device.type}; the inference copy is for CPUs)"
    fast = prepare_for_inference(model, bf16_focus=bf16_focus)
    precision = ("both encoders under --eval_amp autocast" if eval_amp else
                 "focus in bfloat16 (--bf16_focus), glance in float32" if bf16_focus else "float32")
    return fast, ("evaluation runs the inference copy (models/inference.py: the model's own glance and policy, "
                  f"the same frames and patches; focus encoder with BatchNorm folded, channels-last, "
                  f"{fast.focus_chunk} images per call; {precision}; --plain_model runs the plain model)")


def bf16_focus_problem(plain: bool, device_type: str, eval_amp: bool = False) -> Optional[str]:
    """Why ``--bf16_focus`` cannot apply (one line naming the flag), or None."""
    if plain:
        return "--bf16_focus applies to the inference copy; --plain_model turns that off"
    if eval_amp:
        return "--bf16_focus puts the focus encoder alone under bfloat16; --eval_amp puts both encoders under " \
               "autocast: pass one of them"
    if device_type != "cpu":
        return f"--bf16_focus is for CPU evaluation; this run evaluates on {device_type} (use --eval_amp there)"
    reason = bf16_support()
    return f"--bf16_focus: {reason}; evaluate in float32 (drop the flag)" if reason else None

