"""Reading and writing checkpoints: ours and the official release's, atomically.

Our format (``FORMAT_VERSION``) is a dict of plain data, loadable with ``weights_only=True``::

    {'format': 'uniadafocus', 'format_version': 1, 'model': state_dict, 'optimizer': ..., 'epoch': ...,
     'best_metric': ..., 'config': {...}, ...}

The official format is ``{'epoch', 'state_dict', 'optimizer', 'best_acc1'[, 'scaler']}`` with keys
prefixed ``module.`` (saved from DDP) in the variant's official module layout (its
``CheckpointLayout``, e.g. ``models.mn2_r50``); plain state dicts in either layout are accepted
too. ``load_checkpoint`` tells them apart, converts with the model's own checkpoint filter, drops
the official unused ImageNet heads, and names every missing, unexpected or mis-shaped key
(``models.weights``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import torch

from .packages import models, sibling

atomic_write = sibling("datasets.files").atomic_write
weights = sibling("models.weights")
unwrap = weights.unwrap

FORMAT_NAME = "uniadafocus"
FORMAT_VERSION = 1
#: Where official checkpoints keep the model's state dict: ``state_dict`` (Uni-AdaFocus, AdaFocusV2) or
#: ``model_state_dict`` (AdaFocus V1, beside its per-part entries ``glancer``, ``focuser``, ``fc``, ``policy``).
OFFICIAL_STATE_ENTRIES = ("state_dict", "model_state_dict")
#: Where official checkpoints keep their best validation metric (AdaFocus V1: ``best_acc``).
OFFICIAL_METRIC_ENTRIES = ("best_acc1", "best_acc")
#: AdaFocus V1's Something-Something checkpoints keep the actor-critic out of ``model_state_dict``, in the
#: entry ``policy``; it joins the state dict under this prefix (their official manifest's namespace).
SEPARATE_POLICY_PREFIX = "policy."


class CheckpointError(weights.WeightsError):
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


def read_checkpoint(path: str) -> Dict[str, Any]:
    """The raw checkpoint dict (``weights_only=True``), with a clear error when it cannot be read."""
    return weights.read_weight_file(path, CheckpointError, kind="checkpoint")


def _layouts(model: Optional[torch.nn.Module] = None):
    """The checkpoint layouts to try: the model's variant's, or (no model yet) every registered one."""
    if model is not None and getattr(model, "variant", None):
        return [models.variant_of(model).checkpoint]
    return [v.checkpoint for v in models.VARIANTS.values()]


def checkpoint_num_classes(ckpt: Dict[str, Any], path: str = "checkpoint") -> int:
    """The class count of a raw checkpoint dict (ours or official), read from a class-sized weight."""
    state = weights.nested_state_dict(ckpt, ("model",) + OFFICIAL_STATE_ENTRIES)
    if state is not None:
        for layout in _layouts():
            found = layout.num_classes(state)
            if found is not None:
                return found
    keys = sorted({k for layout in _layouts() for k in layout.class_weight_keys})
    raise CheckpointError(f"{path}: cannot tell the class count (no {' or '.join(keys)})")


def _as_number(value) -> Optional[float]:
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        return float(value.item())
    return float(value)


def official_state(ckpt: Dict[str, Any]) -> Optional[Dict[str, torch.Tensor]]:
    """The state dict of a checkpoint in an official layout (``state_dict`` or a plain state dict),
    wrapper prefixes removed; None for our own format."""
    if ckpt.get("format") == FORMAT_NAME:
        return None
    state = weights.nested_state_dict(ckpt, OFFICIAL_STATE_ENTRIES)
    return weights.strip_wrapper_prefixes(state) if state is not None else None


def model_state_from_checkpoint(ckpt: Dict[str, Any], path: str = "checkpoint",
                                model: Optional[torch.nn.Module] = None):
    """(our-layout state dict, format name, dropped keys) from a raw checkpoint dict.

    A state dict in an official layout is converted by the checkpoint filter of ``model``'s variant
    (or, without a model, of the registered variant whose layout it is).
    """
    if ckpt.get("format") == FORMAT_NAME:
        state, fmt = ckpt.get("model"), FORMAT_NAME
    elif any(isinstance(ckpt.get(entry), dict) for entry in OFFICIAL_STATE_ENTRIES):
        state, fmt = next(ckpt[e] for e in OFFICIAL_STATE_ENTRIES if isinstance(ckpt.get(e), dict)), "official"
        policy = ckpt.get("policy")
        if (isinstance(policy, dict) and policy and isinstance(ckpt.get("model_state_dict"), dict)
                and not any(k.startswith(SEPARATE_POLICY_PREFIX) or ".policy." in k for k in state)):
            state = {**state, **{SEPARATE_POLICY_PREFIX + k: v for k, v in policy.items()}}
    elif weights.is_state_dict(ckpt):
        state, fmt = ckpt, "state_dict"
    else:
        raise CheckpointError(f"{path}: no model weights found (keys: {sorted(ckpt)[:10]})")
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: the model entry is a {type(state).__name__}, not a state dict")
    state = weights.strip_wrapper_prefixes(state)
    dropped: List[str] = []
    layout = next((layout for layout in _layouts(model) if layout.detect(state)), None)
    if layout is not None:
        state, dropped, unknown = layout.convert(state)
        if unknown:
            raise CheckpointError(f"{path}: keys not in the {layout.name} layout: {', '.join(unknown[:10])}"
                                  f"{' ...' if len(unknown) > 10 else ''}")
        if fmt == "state_dict":
            fmt = "official"
    return state, fmt, dropped


def _shape_hints(model: torch.nn.Module, state: Dict[str, torch.Tensor], has_config: bool = True):
    own = model.state_dict()
    if not has_config and any(k in state and tuple(own[k].shape) != tuple(state[k].shape) for k in own):
        yield ("  (this file carries no configuration: the model's sizes come from the flags; pass the preset of "
               "the release it belongs to, e.g. --config configs/actnet_p128.yaml)")
    heads = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)
             and (".glance_exits." in k or ".focus_exits." in k or k.endswith("_head.1.weight"))]
    if heads:
        yield "  (head shapes differ: check num_classes, classifier_dim and the frame counts of the configuration)"


def load_checkpoint(path: str, model: torch.nn.Module, strict: bool = True) -> LoadedCheckpoint:
    """Load model weights from our format, the official release format or a plain state dict.

    ``strict=False`` loads the keys that fit and ignores the rest (for fine-tuning with another class
    count, say); mis-shaped keys are then skipped too. The optimizer state is returned only for our
    format: the official one holds parameter groups of a differently built model.
    """
    ckpt = read_checkpoint(path)
    target = unwrap(model)
    state, fmt, dropped = model_state_from_checkpoint(ckpt, path, target)
    weights.load_fitting(target, state, path, strict=strict, error=CheckpointError, kind="checkpoint",
                         hints=_shape_hints(target, state, isinstance(ckpt.get("config"), dict)))
    if fmt == FORMAT_NAME:
        epoch, best, optimizer = ckpt.get("epoch", 0), ckpt.get("best_metric"), ckpt.get("optimizer")
        extra = {k: v for k, v in ckpt.items() if k not in ("format", "format_version", "model", "epoch",
                                                              "best_metric", "optimizer")}
    else:
        best = next((ckpt[k] for k in OFFICIAL_METRIC_ENTRIES if ckpt.get(k) is not None), None)
        epoch, optimizer = ckpt.get("epoch", 0), None
        extra = ({k: v for k, v in ckpt.items() if k not in OFFICIAL_STATE_ENTRIES + OFFICIAL_METRIC_ENTRIES + ("epoch",)}
                 if fmt == "official" else {})
    return LoadedCheckpoint(path=path, format=fmt, epoch=int(_as_number(epoch) or 0), best_metric=_as_number(best),
                            optimizer=optimizer if isinstance(optimizer, dict) and optimizer else None,
                            extra=extra, dropped_keys=dropped)
