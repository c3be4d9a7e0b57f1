"""Weight files: reading them, finding the state dict inside, and saying exactly why one does not fit.

One reader serves every weight file the project opens: ImageNet backbone files, our checkpoints and
the official release's. Files are loaded with ``weights_only=True`` (plain data, never arbitrary
pickled objects) on the CPU. Every failure is a :class:`WeightsError` whose message names the file
and, for a state dict that does not fit a module, every missing, unexpected and mis-shaped key.

Conversion of foreign key layouts lives beside the model it converts (``models/mn2_r50.py``'s
checkpoint filter, ``backbones.py``'s MobileNetV2 renaming); callers pass converted state dicts here.
"""
from __future__ import annotations

import os
from typing import Any, Dict, Iterable, List, Optional

import torch
import torch.nn as nn

#: Prefixes that wrappers add to every key: DDP / DataParallel, torch.compile.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
#: How many keys of each kind a fit report names before it says "...".
REPORTED_KEYS = 12


class WeightsError(RuntimeError):
    """A weight file cannot be read, or the weights it holds do not fit the module."""


def read_weight_file(path: str, error: type = WeightsError, kind: str = "weight file") -> Dict[str, Any]:
    """The top-level dict of a weight file, or ``error`` naming the ``kind`` of file, its path and what
    went wrong."""
    if not os.path.isfile(path):
        raise error(f"{kind} not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a corrupt file, or pickled objects that weights_only refuses
        detail = str(exc).splitlines()[0] if str(exc) else ""
        raise error(f"cannot read {kind} {path}: {exc.__class__.__name__}: {detail}") from None
    if not isinstance(obj, dict):
        raise error(f"{path} holds a {type(obj).__name__}, not a dict of weights")
    return obj


def is_state_dict(obj: Any) -> bool:
    """Whether ``obj`` is a non-empty dict of tensors."""
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def strip_wrapper_prefixes(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Remove any leading ``module.`` / ``_orig_mod.`` (in any order and number) from every key."""
    out = {}
    for key, value in state_dict.items():
        while key.startswith(WRAPPER_PREFIXES):
            key = key.split(".", 1)[1]
        out[key] = value
    return out


def unwrap(model: nn.Module) -> nn.Module:
    """The bare module inside DDP / DataParallel / torch.compile wrappers."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if inner is None:
            return model
        model = inner


def _listed(keys: List[str]) -> str:
    return ", ".join(keys[:REPORTED_KEYS]) + (" ..." if len(keys) > REPORTED_KEYS else "")


def fit_problems(own: Dict[str, torch.Tensor], state: Dict[str, torch.Tensor], kind: str = "file") -> List[str]:
    """Lines naming every key of ``state`` that is missing, unexpected or mis-shaped for ``own``."""
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    misshaped = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    lines = []
    if missing:
        lines.append(f"  missing keys ({len(missing)}): {_listed(missing)}")
    if unexpected:
        lines.append(f"  unexpected keys ({len(unexpected)}): {_listed(unexpected)}")
    for k in misshaped[:REPORTED_KEYS]:
        lines.append(f"  mis-shaped: {k}: {kind} {tuple(state[k].shape)} vs model {tuple(own[k].shape)}")
    if len(misshaped) > REPORTED_KEYS:
        lines.append(f"  ... and {len(misshaped) - REPORTED_KEYS} more mis-shaped keys")
    return lines


def load_fitting(module: nn.Module, state: Dict[str, torch.Tensor], source: str, *, strict: bool = True,
                 error: type = WeightsError, kind: str = "file", hints: Iterable[str] = ()) -> None:
    """Load ``state`` into ``module``.

    ``strict``: every key must fit, else ``error`` names each problem (and adds ``hints``; ``kind`` names
    the file's side in the report, e.g. "checkpoint (7, 1280) vs model (5, 1280)").
    Otherwise the keys that fit are loaded and the rest (missing, unexpected, mis-shaped) ignored.
    """
    own = module.state_dict()
    if strict:
        problems = fit_problems(own, state, kind)
        if problems:
            raise error("\n".join([f"{source} does not fit {type(module).__name__}:", *problems, *hints]))
    else:
        state = {k: v for k, v in state.items() if k in own and tuple(own[k].shape) == tuple(v.shape)}
    module.load_state_dict(state, strict=strict)


def nested_state_dict(obj: Dict[str, Any], keys: Iterable[str] = ("state_dict", "model")) -> Optional[Dict]:
    """The state dict stored under one of ``keys`` of a weight file's dict, or the dict itself."""
    for key in keys:
        if is_state_dict(obj.get(key)):
            return obj[key]
    return obj if is_state_dict(obj) else None
