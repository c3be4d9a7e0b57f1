"""A faster copy of a trained model for CPU evaluation, and the choice of the model evaluation runs.

``prepare_for_inference(model)`` returns an evaluation-only copy of any variant (``mn2_r50``, ``tsm``,
``x3d``) in which:

* **BatchNorm is folded** into the convolution it follows (``W' = W * g / s``,
  ``b' = (b - mean) * g / s + beta``): 2-D and 3-D convolutions, also those wrapped by the temporal
  shift (the shift moves the convolution's input, which folding does not touch);
* **the encoders run channels-last**: ``channels_last`` for the 2-D encoders (MobileNetV2, ResNet, with
  or without the shift), ``channels_last_3d`` for X3D (measured on 2 cores: X3D-L 1.5x, X3D-S 1.6x on
  top of folding);
* **the encoders see at most** ``encoder_chunk`` **images per call** (32 on a CPU; whole clips for the
  variants whose encoders mix the frames of a video), so the time per video stays flat as the
  evaluation batch grows instead of thrashing memory;
* **the glance encoder is traced and frozen** with ``torch.jit.optimize_for_inference`` on a CPU, which
  fuses each convolution with its ReLU6 (another 1.35x for MobileNetV2 at 224 px) -- for the plain
  2-D MobileNetV2 of ``mn2_r50`` only. The TSM glance reshapes its input by the clip length (traced, it
  still matched at other batch sizes in this torch release, but gained only 1.08x on 2 cores, and
  the graph would drop the shift's whole-clip check) and X3D is a 3-D network with a structured
  output: both stay eager. Under autocast (``--eval_amp``) the traced graph, which is float32 only,
  is bypassed and the folded eager encoder runs instead, so autocast keeps its meaning.
* with ``bf16_focus=True`` the focus encoder runs under bfloat16 autocast while the glance stays in
  float32 (CPUs with native bfloat16: AVX512-BF16 or AMX; :func:`bf16_support`). It moves the logits
  a little; measured against the plain model on the parity checkpoints and inputs (synthetic
  weights): max |logit change| 0.053 for ``mn2_r50`` (logits up to 23), 0.028 for ``tsm`` (up to 15),
  0.049 and 0.037 for ``x3d`` (up to 12.5 and 9.4), the frame choices unchanged. The glance stays in
  float32 because its features steer the policy: with the glance in bfloat16 too, the ``mn2_r50``
  logits moved by 0.86 and the selected frames changed.

Without ``bf16_focus`` the outputs equal the original model's to float rounding (~1e-5 on small
models). On the ``mn2_r50`` parity checkpoint, folding moves the glance features by 5.7e-5 and the
patch actions by 3.7e-5, which its random ResNet-50 amplifies at the patch borders to 1.4e-2 in the
focus features and 4.7e-3 in the exit logits (``tests/test_parity.py`` shows that the whole deviation
is those patch positions). The copy cannot be trained (its BatchNorm layers are gone), holds a
snapshot of the weights (make a new one after the weights change) and should not be used to count
FLOPs (the traced glance hides its convolutions): count them on the original model.

:func:`evaluation_model` decides what an evaluation runs: on a CPU the copy, made afresh at every
call; the plain model with ``plain=True`` (``--plain_model``) or on CUDA.
"""
from __future__ import annotations

import copy
import warnings
from typing import Callable, Optional, Tuple

import torch
import torch.nn as nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from .backbones import GlanceEncoder
from .temporal_shift import TemporalShift

#: Images per encoder call in CPU evaluation (see :func:`prepare_for_inference`).
CPU_ENCODER_CHUNK = 32

_CONVS = {2: nn.Conv2d, 3: nn.Conv3d}
_NORMS = {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}


# --------------------------------------------------------------------------------------------------
# Encoder calls in chunks (used by the networks themselves)
# --------------------------------------------------------------------------------------------------
def call_in_chunks(fn: Callable, x: torch.Tensor, rows: Optional[int]):
    """``fn(x)`` computed on slices of at most ``rows`` rows of ``x`` (dim 0) and concatenated.

    ``fn`` returns a tensor or a tuple of tensors, each with one row per input row; ``rows`` None (or
    not fewer than ``x``'s rows) is one call. The result does not depend on ``rows`` as long as ``fn``
    treats the rows independently (evaluation mode: no BatchNorm statistics are computed).
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
# Encoder wrappers
# --------------------------------------------------------------------------------------------------
class EncoderWrapper(nn.Module):
    """Base of the wrappers below: runs ``inner`` in some special way; every other attribute
    (``feature_dim``, the X3D heads, ...) is the inner encoder's."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "inner":
                raise
            return getattr(self.inner, name)


class TracedEncoder(EncoderWrapper):
    """A frozen TorchScript graph of an eager encoder (``inner``), used outside autocast.

    Under autocast the eager encoder runs instead: the frozen graph is float32 only and would ignore
    the autocast that ``--eval_amp`` asks for.
    """

    def __init__(self, traced: torch.jit.ScriptModule, inner: nn.Module):
        super().__init__(inner)
        self.traced = traced

    def forward(self, frames: torch.Tensor):
        if torch.is_autocast_enabled(frames.device.type):
            return self.inner(frames)
        return self.traced(frames.contiguous(memory_format=getattr(self.inner, "memory_format",
                                                                   torch.contiguous_format)))


class AutocastEncoder(EncoderWrapper):
    """``inner`` under autocast to ``dtype`` whatever the caller's setting (``bf16_focus``)."""

    def __init__(self, inner: nn.Module, dtype: torch.dtype = torch.bfloat16):
        super().__init__(inner)
        self.dtype = dtype

    def forward(self, *inputs):
        with torch.autocast(inputs[0].device.type, dtype=self.dtype):
            return self.inner(*inputs)


def traceable_glance(encoder: nn.Module) -> bool:
    """Whether tracing is safe for this glance encoder: the plain 2-D MobileNetV2 (``mn2_r50``), whose
    graph does not depend on the batch. The shifted MobileNetV2 (``tsm``) reshapes by the clip length
    and X3D returns a structured clip output: they stay eager."""
    return isinstance(encoder, GlanceEncoder) and not any(isinstance(m, TemporalShift) for m in encoder.modules())


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
    return TracedEncoder(traced, encoder)


# --------------------------------------------------------------------------------------------------
# bfloat16 support
# --------------------------------------------------------------------------------------------------
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
                          encoder_chunk: Optional[int] = None, trace_glance: Optional[bool] = None,
                          bf16_focus: bool = False) -> nn.Module:
    """An evaluation-only copy of a Uni-AdaFocus network (any variant); see the module docstring.

    ``encoder_chunk``: images per encoder call (default :data:`CPU_ENCODER_CHUNK` on a CPU, where huge
    batches thrash memory; unlimited on a GPU). ``trace_glance``: run the glance encoder as a frozen
    TorchScript graph (default: on a CPU, where :func:`traceable_glance` allows it; True where it does
    not is an error). ``bf16_focus``: the focus encoder under bfloat16 autocast.
    """
    fast = copy.deepcopy(model).eval()
    on_cpu = next(fast.parameters()).device.type == "cpu"
    fast.encoder_chunk = encoder_chunk if encoder_chunk is not None else (CPU_ENCODER_CHUNK if on_cpu else None)
    for p in fast.parameters():
        p.requires_grad_(False)
    for encoder in (fast.glance, fast.focus):
        if fold_bn:
            fold_batchnorm(encoder)
        if channels_last:
            layout = _memory_format(encoder)
            encoder.to(memory_format=layout)
            if hasattr(encoder, "memory_format"):  # the 2-D encoders convert their input to it
                encoder.memory_format = layout
    traceable = traceable_glance(fast.glance)
    if trace_glance and not traceable:
        raise ValueError(f"the {type(fast.glance).__name__} glance encoder of this variant cannot be traced safely")
    if trace_glance if trace_glance is not None else (on_cpu and traceable):
        fast.glance = trace_encoder(fast.glance, getattr(fast, "glance_size", None) or fast.input_size)
    if bf16_focus:
        fast.focus = AutocastEncoder(fast.focus, torch.bfloat16)
    fast.is_inference_copy = True
    return fast


def evaluation_model(model: nn.Module, plain: bool = False, bf16_focus: bool = False,
                     eval_amp: bool = False) -> Tuple[nn.Module, str]:
    """The network an evaluation should run for ``model`` (in eval mode), and one line saying which.

    On a CPU: a fresh :func:`prepare_for_inference` copy of the current weights (with ``bf16_focus``
    if asked for); ``plain`` (``--plain_model``) or a CUDA model: ``model`` itself. ``eval_amp``: the
    caller evaluates under autocast (``--eval_amp``), which the copy then follows (its glance is not
    traced: the float32 graph would ignore autocast; see :class:`TracedEncoder`). Raises ValueError
    when ``bf16_focus`` cannot apply (:func:`bf16_focus_problem`).
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
    # Under autocast a traced glance would be bypassed (TracedEncoder): do not trace it at all.
    fast = prepare_for_inference(model, bf16_focus=bf16_focus, trace_glance=False if eval_amp else None)
    traced = isinstance(fast.glance, TracedEncoder)
    precision = ("both encoders under --eval_amp autocast" if eval_amp else
                 "focus in bfloat16 (--bf16_focus), glance in float32" if bf16_focus else "float32")
    return fast, ("evaluation runs the inference copy (models/inference.py: BatchNorm folded, channels-last, "
                  f"{fast.encoder_chunk} images per encoder call, {'traced' if traced else 'eager'} glance, "
                  f"{precision}; --plain_model runs the plain model)")


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

