"""The training loop: one epoch of a run (:func:`train_one_epoch`) and its running means.

Training never waits for the device between print steps: each step's loss terms and logits stay on the
device until a print step reads them all at once (:func:`_read_steps`) and checks them for NaN and
infinity on every process (:func:`check_finite`).
"""
from __future__ import annotations

import time
from typing import Dict, List, Optional

import torch

from . import distributed as dist_ops
from .device_setup import autocast
from .metrics import topk_accuracy
from .rng import epoch_seed, seed_everything
from .run_log import RunLog, progress
from .schedule import warm_up


class Meters:
    """Sample-weighted running means of named values, reducible over processes."""

    def __init__(self):
        self.sums: Dict[str, float] = {}
        self.count = 0

    def update(self, values: Dict[str, float], n: int) -> None:
        for k, v in values.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v) * n
        self.count += n

    def averages(self, info: Optional[dist_ops.DistInfo] = None) -> Dict[str, float]:
        names = sorted(self.sums)
        totals = torch.tensor([self.sums[k] for k in names] + [self.count], dtype=torch.float64)
        if info is not None and info.distributed:
            totals = dist_ops.all_reduce_sum(totals, info).cpu()
        count = max(totals[-1].item(), 1.0)
        return {k: totals[i].item() / count for i, k in enumerate(names)}


def check_finite(values: torch.Tensor, names: List[str], info: dist_ops.DistInfo, epoch: int, first_step: int,
                 total_steps: int, float16: bool = False) -> None:
    """Stop every process when a loss term was NaN or infinite, on any process, in the steps just read.

    values: (S, T) the T terms ``names`` of the S steps read together at a print step, from the 0-based
    step ``first_step`` of this epoch of ``total_steps`` on (steps are numbered from 1 in the message,
    as in the log).
    """
    bad = ~torch.isfinite(values)  # (S, T)
    anywhere = bad.any().to(torch.float32).reshape(1)
    if info.distributed:
        anywhere = dist_ops.all_reduce_sum(anywhere, info)
    if anywhere.item() == 0:
        return
    read = f"steps {first_step + 1}-{first_step + values.shape[0]}" if values.shape[0] > 1 else f"step {first_step + 1}"
    if bad.any():
        row = int(bad.any(dim=1).nonzero()[0])  # the first bad step, and its bad terms
        terms = ", ".join(name for name, b in zip(names, bad[row].tolist()) if b)
        where = (f"step {first_step + row + 1}/{total_steps} (terms: {terms}; found when {read} were read, every "
                 f"--print-freq steps)")
    else:
        where = f"{read}/{total_steps}, on another process"
    raise FloatingPointError(f"non-finite loss at epoch {epoch}, {where}; the run stops and keeps its last good "
                             "checkpoint. Try a lower --lr" + (" or --amp_dtype bfloat16." if float16 else "."))


def model_inputs(batch, device: torch.device):
    """(focus candidates, {'glance': glance frames} or {}) of a batch, on ``device``."""
    video = batch["video"].to(device, non_blocking=True)
    glance = {"glance": batch["glance"].to(device, non_blocking=True)} if "glance" in batch else {}
    return video, glance


def _read_steps(pending: List, names: List[str], meters: Meters, info: dist_ops.DistInfo, epoch: int,
                first_step: int, total_steps: int, float16: bool) -> None:
    """Read the loss terms and logits that the ``pending`` steps left on the device (the only place where
    training waits for the device), stop on a non-finite loss, and add every step to ``meters`` exactly as
    it would have been added at its own step. pending: [(terms (T,) float64, logits (B, C), target (B,))]."""
    values = torch.stack([terms for terms, _, _ in pending]).cpu()  # (S, T)
    check_finite(values, names, info, epoch, first_step, total_steps, float16)
    # one copy each for all the steps' logits and targets (a copy per step would wait on the device per step)
    sizes = [target.shape[0] for _, _, target in pending]
    logits = torch.cat([step_logits.float() for _, step_logits, _ in pending]).cpu().split(sizes)
    targets = torch.cat([target for _, _, target in pending]).cpu().split(sizes)
    for row, step_logits, target in zip(values.tolist(), logits, targets):
        step_values = dict(zip(names, row))
        step_values["top1"] = topk_accuracy(step_logits, target, ks=(1,))[0]
        meters.update(step_values, target.shape[0])


def train_one_epoch(model, objective, loader, optimizer, scaler, epoch: int, args, info, log: RunLog) -> Dict[str, float]:
    """One epoch (or ``--iters_per_epoch`` steps); returns the epoch's mean loss terms and top-1.

    The host never waits for the device between print steps: each step's loss terms and logits stay on
    the device until a print step (every ``--print_freq`` steps, and the last) reads them all at once,
    checks them for NaN / infinity on every process and logs the running means. (float16 AMP's gradient
    scaler still reads its overflow flag inside every ``scaler.step``.)
    """
    model.train()
    loader.sampler.set_epoch(epoch)
    loader.dataset.set_epoch(epoch)
    seed = epoch_seed(args.seed, epoch, info.rank)
    seed_everything(seed)  # dropout and anything else on the global RNGs
    generator = torch.Generator(device=info.device).manual_seed(seed)
    meters = Meters()
    float16 = args.amp and args.amp_dtype == "float16"
    steps = len(loader) if not args.iters_per_epoch else min(len(loader), args.iters_per_epoch)
    names: List[str] = []  # the loss terms, in the objective's order
    pending: List = []  # the steps since the last print step (see _read_steps)
    first_pending = 0
    start = time.time()
    bar = progress(loader, info.is_main, total=steps, desc=f"epoch {epoch}")
    for step, batch in enumerate(bar):
        if step >= steps:
            break
        warm_up(optimizer, epoch, step, steps, args.warmup_epochs)
        video, glance = model_inputs(batch, info.device)
        target = batch["label"].to(info.device, non_blocking=True)
        with autocast(args, info.device, training=True):
            out = model(video, generator=generator, **glance)
        terms = objective(out, target, generator=generator)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(terms.total).backward()
            if args.clip_gradient:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip_gradient)
            scaler.step(optimizer)
            scaler.update()
        else:
            terms.total.backward()
            if args.clip_gradient:
                torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip_gradient)
            optimizer.step()
        names = names or list(vars(terms))
        pending.append((torch.stack([v.detach().double() for v in vars(terms).values()]), out.logits.detach(), target))
        if step % args.print_freq == 0 or step == steps - 1:  # the same steps on every process
            _read_steps(pending, names, meters, info, epoch, first_pending, steps, float16)
            pending, first_pending = [], step + 1
            if info.is_main:
                averages = meters.averages()
                log.info(f"epoch {epoch} [{step + 1}/{steps}] lr {optimizer.param_groups[-1]['lr']:.5g} "
                         f"{(time.time() - start) / (step + 1):.2f}s/step "
                         + " ".join(f"{k} {v:.4f}" for k, v in averages.items()))
                if hasattr(bar, "set_postfix"):
                    bar.set_postfix(loss=f"{averages['total']:.3f}")
    if pending:  # a loader that ended early
        _read_steps(pending, names, meters, info, epoch, first_pending, steps, float16)
    averages = meters.averages(info)
    averages["time_s"] = time.time() - start
    return averages
