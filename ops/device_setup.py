"""Device settings: what the speed and precision flags mean on the run's device, checked and applied in one place.

:func:`device_settings` resolves them for the run's device (``--channels_last``, on by default on CUDA;
``--cudnn_benchmark``; ``--compile``; the autocast type and gradient scaler of ``--amp``; ``--sync_bn``)
and stops with one line on a combination the device cannot run; ``ops.build.build_model`` applies them.

Precision: ``--amp`` runs the backbones under autocast in **training** only, as the official semi-AMP
code does; evaluation runs in float32 (the official numbers) unless ``--eval_amp`` asks for autocast
there too (:func:`autocast`). Policy math always runs in float32.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

import torch

from . import distributed as dist_ops
from .checkpoint import unwrap


AUTOCAST_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class DeviceSettings:
    """How a run uses its device, resolved from the flags by :func:`device_settings`."""

    device_type: str  # 'cuda' or 'cpu'
    channels_last: bool  # the 2-D encoders in channels-last memory format (--channels_last)
    cudnn_benchmark: bool  # cuDNN times the convolution algorithms and keeps the fastest (CUDA only)
    compile: bool  # the encoders torch.compile'd (--compile)
    train_autocast: Optional[torch.dtype]  # the backbones' autocast type in training (None: float32)
    eval_autocast: Optional[torch.dtype]  # the same in evaluation (--eval_amp)
    grad_scaler: bool  # float16 training scales its loss (CUDA's GradScaler)
    sync_bn: bool  # BatchNorm synchronised over the processes in training (--sync_bn)

    def describe(self) -> str:
        """One log line."""
        def precision(dtype):
            return "float32" if dtype is None else f"{str(dtype).replace('torch.', '')} autocast"

        parts = [f"backbones in {precision(self.train_autocast)}"
                 + (" with a gradient scaler" if self.grad_scaler else "") + " for training, "
                 + f"{precision(self.eval_autocast)} for evaluation",
                 "channels-last 2-D encoders" if self.channels_last else "encoders in the default memory format",
                 "torch.compile'd encoders" if self.compile else "eager encoders"]
        if self.sync_bn:
            parts.append("synchronised BatchNorm")
        if self.device_type == "cuda":
            parts += [f"cudnn.benchmark {'on' if self.cudnn_benchmark else 'off'}", "pinned-memory loaders"]
        return "; ".join(parts)


def device_settings(args, info: dist_ops.DistInfo, bf16_problem=dist_ops.cuda_bf16_problem) -> DeviceSettings:
    """The speed and precision flags resolved for this process's device (``--channels_last`` defaults to
    on for CUDA); a combination the device cannot run stops with one line naming the flag.

    ``bf16_problem(device)``: why a GPU cannot run bfloat16 (None: it can); asked only when needed.
    """
    cuda = info.device.type == "cuda"
    training = not args.evaluate
    dtype = AUTOCAST_DTYPES[args.amp_dtype]
    train_autocast = dtype if args.amp and training else None
    eval_autocast = dtype if args.amp and args.eval_amp else None
    if train_autocast == torch.float16 and not cuda:
        raise SystemExit("--amp --amp_dtype float16: float16 training needs CUDA's gradient scaler and this run "
                         "trains on the CPU; pass --amp_dtype bfloat16 there (or drop --amp)")
    if cuda and torch.bfloat16 in (train_autocast, eval_autocast):
        problem = bf16_problem(info.device)
        if problem:
            raise SystemExit(f"--amp_dtype bfloat16: {problem}; pass --amp_dtype float16")
    sync_bn = bool(args.sync_bn) and training  # evaluation uses the running statistics: nothing to synchronise
    if sync_bn and not (cuda and info.distributed):
        raise SystemExit(f"--sync_bn synchronises BatchNorm over several CUDA processes; this run trains on "
                         f"{info.world_size} process(es) on {info.device.type}")
    channels_last = getattr(args, "channels_last", None)
    return DeviceSettings(device_type=info.device.type, channels_last=cuda if channels_last is None else channels_last,
                          cudnn_benchmark=cuda and getattr(args, "cudnn_benchmark", True),
                          compile=getattr(args, "compile", False), train_autocast=train_autocast,
                          eval_autocast=eval_autocast, grad_scaler=train_autocast == torch.float16, sync_bn=sync_bn)


def apply_device_settings(settings: DeviceSettings) -> None:
    """The process-wide part of the settings: cuDNN's algorithm search on CUDA (nothing on a CPU)."""
    if settings.device_type == "cuda":
        torch.backends.cudnn.benchmark = settings.cudnn_benchmark


def autocast(args, device: torch.device, training: bool):
    """The backbones' autocast: ``--amp`` in training; in evaluation only with ``--eval_amp``."""
    enabled = args.amp if training else args.amp and args.eval_amp
    return torch.autocast(device.type, dtype=AUTOCAST_DTYPES[args.amp_dtype], enabled=enabled)


def use_channels_last(model) -> List[str]:
    """Put the model's 2-D encoders in channels-last memory format (their 4-D weights now, their input at
    every call through the encoders' ``memory_format``); returns their names. Encoders without that
    attribute (X3D's 3-D networks) keep their layout."""
    converted = []
    for name in ("glance", "focus"):
        encoder = getattr(unwrap(model), name, None)
        if encoder is not None and hasattr(encoder, "memory_format"):
            encoder.to(memory_format=torch.channels_last)
            encoder.memory_format = torch.channels_last
            converted.append(name)
    return converted


def compile_encoders(model) -> List[str]:
    """``torch.compile`` the glance and focus encoders in place (``nn.Module.compile``: parameter names, and
    so checkpoint keys, stay as they are); returns their names. Compiling happens at each encoder's first
    call for each input shape. Count FLOPs before (compiled code hides its operations from the counter)."""
    compiled = []
    for name in ("glance", "focus"):
        encoder = getattr(unwrap(model), name, None)
        if encoder is not None:
            encoder.compile()
            compiled.append(name)
    return compiled
