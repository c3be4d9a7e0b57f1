"""Reading and writing checkpoints: ours and the official release's, atomically.

Our format (``FORMAT_VERSION``) is a dict of plain data, loadable with ``weights_only=True``::

    {'format': 'uniadafocus', 'format_version': 1, 'model': state_dict, 'optimizer': ..., 'epoch': ...,
     'best_metric': ..., 'config': {...}, ...}

The official format is ``{'epoch', 'state_dict', 'optimizer', 'best_acc1'[, 'scaler']}`` with keys
prefixed ``module.`` (saved from DDP) in the official module layout (see ``models.official``);
plain state dicts in either layout are accepted too. ``load_checkpoint`` tells them apart, converts,
drops the official unused ImageNet heads, and names every missing, unexpected or mis-shaped key.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import torch

from .files import atomic_write

try:  # installed as uniadafocus.ops
    from ..models import official as official_layout
except ImportError:  # run from the repository root
    from models import official as official_layout

FORMAT_NAME = "uniadafocus"
FORMAT_VERSION = 1
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DDP / DataParallel, torch.compile


class CheckpointError(RuntimeError):
    """A checkpoint cannot be read or does not fit the model."""


@dataclass
class LoadedCheckpoint:
    """What ``load_checkpoint`` found besides the weights it loaded."""

    path: str
    format: str  # 'uniadafocus', 'official' or 'state_dict'
    epoch: int = 0
    best_metric: Optional[float] = None
    optimizer: Optional[Dict[str, Any]] = None  # only for our format (official groups differ)
    extra: Dict[str, Any] = field(default_factory=dict)  # every other top-level entry
    dropped_keys: List[str] = field(default_factory=list)  # official unused ImageNet heads


def atomic_save(obj: Any, path: str) -> None:
    """``torch.save`` to a temporary file in the same folder, fsync, then rename over ``path``.

    An interrupted write leaves the previous file intact; readers never see a partial file.
    """
    with atomic_write(path, "wb") as f:
        torch.save(obj, f)


def save_checkpoint(path: str, model: torch.nn.Module, **entries: Any) -> None:
    """Write our format atomically: the model's state dict plus plain-data ``entries``."""
    state = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "model": unwrap(model).state_dict()}
    state.update(entries)
    atomic_save(state, path)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The bare module inside DDP / DataParallel / torch.compile wrappers."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if inner is None:
            return model
        model = inner


def strip_wrapper_prefixes(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Remove leading ``module.`` / ``_orig_mod.`` from every key."""
    out = {}
    for key, value in state_dict.items():
        stripped = True
        while stripped:
            stripped = False
            for prefix in _WRAPPER_PREFIXES:
                if key.startswith(prefix):
                    key, stripped = key[len(prefix):], True
        out[key] = value
    return out


def read_checkpoint(path: str) -> Dict[str, Any]:
    """The raw checkpoint dict (``weights_only=True``), with a clear error when it cannot be read."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(
            f"cannot read checkpoint {path}: {exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        ) from exc
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a checkpoint dict")
    return obj


def checkpoint_num_classes(ckpt: Dict[str, Any], path: str = "checkpoint") -> int:
    """The class count of a raw checkpoint dict (ours or official), read from its auxiliary head."""
    state = ckpt.get("model") or ckpt.get("state_dict") or ckpt
    if isinstance(state, dict):
        for key, value in state.items():
            if key.endswith(("spatial_head.weight", "aux_fc.weight")) and isinstance(value, torch.Tensor):
                return int(value.shape[0])
    raise CheckpointError(f"{path}: cannot tell the class count (no spatial_head.weight or aux_fc.weight)")


def _as_number(value) -> Optional[float]:
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        return float(value.item())
    return float(value)


def model_state_from_checkpoint(ckpt: Dict[str, Any], path: str = "checkpoint"):
    """(our-layout state dict, format name, dropped keys) from a raw checkpoint dict."""
    if ckpt.get("format") == FORMAT_NAME:
        state, fmt = ckpt.get("model"), FORMAT_NAME
    elif isinstance(ckpt.get("state_dict"), dict):
        state, fmt = ckpt["state_dict"], "official"
    elif ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        state, fmt = ckpt, "state_dict"
    else:
        raise CheckpointError(f"{path}: no model weights found (keys: {sorted(ckpt)[:10]})")
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: the model entry is a {type(state).__name__}, not a state dict")
    state = strip_wrapper_prefixes(state)
    dropped: List[str] = []
    if official_layout.is_official_layout(state):
        state, dropped, unknown = official_layout.convert_official_state_dict(state)
        if unknown:
            raise CheckpointError(f"{path}: keys not in the official layout: {', '.join(unknown[:10])}"
                                  f"{' ...' if len(unknown) > 10 else ''}")
        if fmt == "state_dict":
            fmt = "official"
    return state, fmt, dropped


def check_state_dict(model: torch.nn.Module, state: Dict[str, torch.Tensor], path: str = "checkpoint") -> None:
    """Raise ``CheckpointError`` naming every missing, unexpected and mis-shaped key."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    misshaped = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if not (missing or unexpected or misshaped):
        return
    lines = [f"{path} does not fit the model:"]
    for title, keys in (("missing", missing), ("unexpected", unexpected)):
        if keys:
            lines.append(f"  {title} keys ({len(keys)}): " + ", ".join(keys[:12]) + (" ..." if len(keys) > 12 else ""))
    for k in misshaped[:12]:
        lines.append(f"  mis-shaped: {k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}")
    if len(misshaped) > 12:
        lines.append(f"  ... and {len(misshaped) - 12} more mis-shaped keys")
    if any(".glance_exits." in k or ".focus_exits." in k or k.endswith("_head.1.weight") for k in misshaped):
        lines.append("  (head shapes differ: check num_classes, classifier_dim and the frame counts of the configuration)")
    raise CheckpointError("\n".join(lines))


def load_checkpoint(path: str, model: torch.nn.Module, strict: bool = True) -> LoadedCheckpoint:
    """Load model weights from our format, the official release format or a plain state dict.

    ``strict=False`` loads the keys that fit and ignores the rest (for fine-tuning with another class
    count, say); mis-shaped keys are then skipped too. The optimizer state is returned only for our
    format: the official one holds parameter groups of a differently built model.
    """
    ckpt = read_checkpoint(path)
    state, fmt, dropped = model_state_from_checkpoint(ckpt, path)
    target = unwrap(model)
    if strict:
        check_state_dict(target, state, path)
    else:
        own = target.state_dict()
        state = {k: v for k, v in state.items() if k in own and tuple(own[k].shape) == tuple(v.shape)}
    target.load_state_dict(state, strict=strict)
    if fmt == FORMAT_NAME:
        epoch, best, optimizer = ckpt.get("epoch", 0), ckpt.get("best_metric"), ckpt.get("optimizer")
        extra = {k: v for k, v in ckpt.items() if k not in ("format", "format_version", "model", "epoch",
                                                              "best_metric", "optimizer")}
    else:
        epoch, best, optimizer = ckpt.get("epoch", 0), ckpt.get("best_acc1"), None
        extra = {k: v for k, v in ckpt.items() if k not in ("state_dict", "epoch", "best_acc1")} if fmt == "official" else {}
    return LoadedCheckpoint(path=path, format=fmt, epoch=int(_as_number(epoch) or 0), best_metric=_as_number(best),
                            optimizer=optimizer if isinstance(optimizer, dict) and optimizer else None,
                            extra=extra, dropped_keys=dropped)
