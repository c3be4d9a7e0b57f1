"""Optimiser parameter groups and the per-epoch learning-rate schedule (paper App. H.3).

Eight groups, in the official order, each with a learning-rate multiplier:

    temporal_policy  temporal_lr_ratio (0.2)     spatial_policy  stn_lr_ratio (0.2)
    glance           global_lr_ratio (0.5)       glance_head     global_lr_ratio
    spatial_head     global_lr_ratio             focus           1
    focus_head       1                           classifier      classifier_lr_ratio (20)

With the ActivityNet settings (lr 0.002) that is classifier 0.04, focus 0.002, glance 0.001 and
policy 0.0004, as in the paper. Weight decay applies to every parameter, as officially. At the start
of epoch e the base rate is ``0.5 lr (1 + cos(pi e / epochs))`` ('cos', no warm-up) or
``lr * 0.1 ** (number of milestones <= e)`` ('step').

``--warmup_epochs W`` (off officially) scales those rates per step during the first W epochs by
``(steps done, this one included) / (W * steps per epoch)``: a linear ramp from nearly 0 that meets
the schedule at epoch W.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence

import torch

# (group name, our module path, name of the multiplier argument or None for 1). A model has the
# modules of its variant: the exit classifier (main variant) or the TSN prediction heads (TSM, whose
# glance head lives with the glance network officially and so shares its rate).
GROUPS = (
    ("temporal_policy", "policy.temporal", "temporal_lr_ratio"),
    ("spatial_policy", "policy.spatial", "stn_lr_ratio"),
    ("glance", "glance", "global_lr_ratio"),
    ("glance_head", "glance_head", "global_lr_ratio"),
    ("glance_prediction_head", "glance_prediction_head", "global_lr_ratio"),
    ("spatial_head", "spatial_head", "global_lr_ratio"),
    ("focus", "focus", None),
    ("focus_head", "focus_head", None),
    ("focus_prediction_head", "focus_prediction_head", None),
    ("classifier", "classifier", "classifier_lr_ratio"),
)


def param_groups(model: torch.nn.Module, *, temporal_lr_ratio: float = 0.2, stn_lr_ratio: float = 0.2,
                 global_lr_ratio: float = 0.5, classifier_lr_ratio: float = 20.0) -> List[Dict]:
    """The official parameter groups of the model's variant (every parameter in exactly one)."""
    ratios = dict(temporal_lr_ratio=temporal_lr_ratio, stn_lr_ratio=stn_lr_ratio, global_lr_ratio=global_lr_ratio,
                  classifier_lr_ratio=classifier_lr_ratio)
    groups, seen = [], set()
    for name, path, ratio in GROUPS:
        try:  # a variant without this module (e.g. AdaFocusV2's policy has no temporal branch)
            module = model.get_submodule(path)
        except AttributeError:
            continue
        params = [p for p in module.parameters() if p.requires_grad]
        seen.update(id(p) for p in module.parameters())
        groups.append({"params": params, "name": name, "lr_mult": ratios[ratio] if ratio else 1.0, "decay_mult": 1.0})
    left = [n for n, p in model.named_parameters() if id(p) not in seen]
    if left:
        raise ValueError(f"parameters outside the optimiser groups: {left[:5]}")
    return groups


def base_learning_rate(epoch: int, lr: float, epochs: int, lr_type: str = "cos",
                       lr_steps: Sequence[float] = (50, 100)) -> float:
    """The base learning rate of (0-based) epoch ``epoch``."""
    if lr_type == "cos":
        return 0.5 * lr * (1 + math.cos(math.pi * epoch / epochs))
    if lr_type == "step":
        return lr * 0.1 ** sum(1 for m in lr_steps if epoch >= m)
    raise ValueError(f"lr_type must be 'cos' or 'step', got {lr_type!r}")


def adjust_learning_rate(optimizer: torch.optim.Optimizer, epoch: int, lr: float, epochs: int, lr_type: str = "cos",
                         lr_steps: Sequence[float] = (50, 100), weight_decay: float = 2e-4,
                         start_epochs: Optional[Dict[str, int]] = None) -> float:
    """Set every group's rate and weight decay for ``epoch``; returns the base rate.

    ``start_epochs`` maps a group name to the first epoch it trains in: before it the group's rate is 0
    (so neither its update nor its weight decay moves it), e.g. ``{"spatial_policy": 2}``.
    """
    base = base_learning_rate(epoch, lr, epochs, lr_type, lr_steps)
    start_epochs = start_epochs or {}
    for group in optimizer.param_groups:
        waiting = epoch < start_epochs.get(group.get("name"), 0)
        group["lr"] = group["scheduled_lr"] = 0.0 if waiting else base * group.get("lr_mult", 1.0)
        group["weight_decay"] = weight_decay * group.get("decay_mult", 1.0)
    return base


def warmup_factor(progress: float, warmup_epochs: float) -> float:
    """The linear warm-up's multiplier once ``progress`` epochs (fractional) of training are done.

    Rises linearly from 0 to 1 over ``warmup_epochs``, then stays 1; ``warmup_epochs`` 0 is no warm-up.
    """
    if warmup_epochs <= 0 or progress >= warmup_epochs:
        return 1.0
    return max(progress, 0.0) / warmup_epochs


def warm_up(optimizer: torch.optim.Optimizer, epoch: int, step: int, steps: int, warmup_epochs: float) -> None:
    """Scale each group's rate set by :func:`adjust_learning_rate` (or, without one, its rate at the first
    call) for step ``step`` (0-based) of ``steps`` in ``epoch``; nothing happens after the warm-up."""
    if epoch >= warmup_epochs:
        return
    factor = warmup_factor(epoch + (step + 1) / steps, warmup_epochs)
    for group in optimizer.param_groups:
        scheduled = group.setdefault("scheduled_lr", group["lr"])  # an optimiser never given a schedule
        group["lr"] = scheduled * factor
