"""A run's parts built from the flags: the model on its device, the objective, the optimiser and the
gradient scaler (and the GFLOPs of the model's exits).

The entry points (``main.py``, ``test_early_exit.py``, ``scripts/``) are thin command lines over these
and the loaders, training loop and evaluation beside them, in the manner of torchvision's reference
scripts::

    train_set, train_loader, val_set, val_loader = ops.loaders.build_loaders(args, info)
    model = build_model(args, val_set.num_classes, info)
    stats = ops.training.train_one_epoch(model, objective, train_loader, optimizer, scaler, epoch, args, info, log)
    result = ops.evaluation.evaluate(model, val_loader, args, info)      # EvalResult: metrics, rows, images
"""
from __future__ import annotations

import argparse
from typing import Dict, List, Optional

import torch

from . import distributed as dist_ops
from .checkpoint import unwrap
from .device_setup import apply_device_settings, device_settings, use_channels_last
from .objective import UniAdaFocusObjective
from .packages import models
from .schedule import param_groups


def build_model(args, num_classes: int, info: dist_ops.DistInfo):
    """The ``--variant`` network for ``num_classes`` classes, on the run's device and set up for it
    (:func:`ops.device_setup.device_settings`: synchronised BatchNorm, channels-last encoders, cuDNN's algorithm search).

    Evaluating a checkpoint loads no pretrained backbone weights: the checkpoint replaces them all.
    """
    models.get_variant(args.variant).require_entry_points()
    settings = device_settings(args, info)
    apply_device_settings(settings)
    if args.evaluate and args.resume:
        args = argparse.Namespace(**{**vars(args), "pretrained": False, "glance_weights": None, "focus_weights": None})
    model = models.get_variant(args.variant).build_from(args, num_classes)
    if settings.sync_bn:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = model.to(info.device)
    if settings.channels_last:
        use_channels_last(model)
    return model


def build_objective(args) -> UniAdaFocusObjective:
    """The training objective with the terms of ``--variant`` and the loss flags (or the variant's own)."""
    variant = models.get_variant(args.variant)
    if variant.objective is not None:
        return variant.objective(args)
    sizes = (args.num_segments, args.num_glance_segments, args.num_focus_segments)
    return UniAdaFocusObjective(*sizes, terms=variant.objective_terms,
                                mc_draws=variant.mc_draws(*sizes) if variant.mc_draws else None,
                                kl_ratio=args.KL_ratio, norm_ratio=args.norm_ratio,
                                temporal_form=args.temporal_objective, spatial_form=args.spatial_objective,
                                mc_samples=args.mc_samples, kl_reference=args.kl_reference,
                                glance_form=args.glance_objective)


def build_optimizer(args, model) -> torch.optim.Optimizer:
    """SGD with momentum (official) or AdamW over the learning-rate groups of ``ops.schedule``."""
    groups = param_groups(model, temporal_lr_ratio=args.temporal_lr_ratio, stn_lr_ratio=args.stn_lr_ratio,
                          global_lr_ratio=args.global_lr_ratio, classifier_lr_ratio=args.classifier_lr_ratio)
    if args.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay)
    return torch.optim.AdamW(groups, lr=args.lr, weight_decay=args.weight_decay,
                             fused=adamw_fused(args, [p for group in groups for p in group["params"]]))


def adamw_fused(args, params) -> Optional[bool]:
    """AdamW's ``fused`` argument for ``params``: ``--fused_adamw``, by default True on a CPU.

    The fused kernel updates all of a group's tensors in one pass, several times faster than the
    per-tensor loop on a CPU (scripts/bench_gpu.py --sides channels_last adamw_loop) and equal to it up
    to float rounding. CUDA keeps PyTorch's default (None) unless asked."""
    fused = getattr(args, "fused_adamw", None)
    if fused is None:
        fused = all(p.device.type == "cpu" for p in params)
    return True if fused else None


#: Optimizer settings that say how a step is computed, not what it computes: a resumed run keeps its own.
IMPLEMENTATION_KEYS = ("fused", "foreach")


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: Dict) -> None:
    """``optimizer.load_state_dict(state)``, keeping this run's implementation (``--fused_adamw``):
    PyTorch would restore the saved groups' ``fused`` / ``foreach`` entries too."""
    kept = [{k: group[k] for k in IMPLEMENTATION_KEYS if k in group} for group in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for group, implementation in zip(optimizer.param_groups, kept):
        group.update(implementation)


def build_scaler(args, info: dist_ops.DistInfo) -> Optional[torch.amp.GradScaler]:
    """A gradient scaler for float16 AMP training on CUDA (the official semi-AMP), else None."""
    return torch.amp.GradScaler("cuda") if device_settings(args, info).grad_scaler else None


def exit_gflops(model) -> List[float]:
    """GFLOPs of every early-exit stage of a (possibly wrapped) model, its variant's accounting."""
    net = unwrap(model)
    return models.variant_of(net).flops(net).stages()
