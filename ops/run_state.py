"""A run's state on disk: everything a resumed run needs, saved (:func:`save_run_checkpoint`) and restored
(:func:`restore`, ``--resume``) through ``ops.checkpoint``.
"""
from __future__ import annotations

import os
from typing import NamedTuple, Optional

from .build import load_optimizer_state
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .config import plain_config
from .rng import rng_state, set_rng_state
from .run_log import RunLog


class Resumed(NamedTuple):
    """Where a resumed run stands: the epoch it starts at, its best score and that score's epoch, and the
    seconds its earlier segments took (0 for a new run, an evaluation or a checkpoint without the figure)."""
    epoch: int
    best: Optional[float]
    best_epoch: Optional[int]
    time_s: float = 0.0


def restore(args, model, optimizer, scaler, log: RunLog, run_dir: str) -> Resumed:
    """Load ``--resume`` (:class:`Resumed`)."""
    path = args.resume
    if path == "auto":
        path = os.path.join(run_dir, "ckpt.pth.tar")
        if not os.path.isfile(path):
            log.info(f"--resume auto: no checkpoint in {run_dir}; starting from scratch")
            return Resumed(0, None, None)
    try:
        info = load_checkpoint(path, model)
    except CheckpointError as exc:
        raise SystemExit(str(exc)) from None
    log.info(f"loaded {info.format} checkpoint {path} (epoch {info.epoch})")
    if args.evaluate:
        return Resumed(info.epoch, info.best_metric, None)
    if info.format != "uniadafocus":
        log.warning("the official checkpoint holds no optimizer state this model can use: momentum starts "
                    f"from zero; training continues at epoch {info.epoch}")
        return Resumed(info.epoch, info.best_metric, None)
    if info.optimizer is not None:
        load_optimizer_state(optimizer, info.optimizer)
    if scaler is not None and info.extra.get("scaler"):
        scaler.load_state_dict(info.extra["scaler"])
    if info.extra.get("rng"):
        set_rng_state(info.extra["rng"])
    return Resumed(info.epoch, info.best_metric, info.extra.get("best_epoch"), float(info.extra.get("time_s") or 0.0))


def save_run_checkpoint(path: str, model, optimizer, scaler, epoch: int, best, best_epoch, args,
                        time_s: Optional[float] = None) -> None:
    """Everything a resumed run needs: weights, optimizer, scaler, RNG states, configuration, and the seconds the
    run has taken so far (``time_s``: a resumed run's time counts on from it)."""
    stage = {"stage": args.stage} if getattr(args, "stage", None) is not None else {}  # adafocus_v1's stages
    save_checkpoint(path, model, optimizer=optimizer.state_dict(),
                    scaler=scaler.state_dict() if scaler is not None else None, epoch=epoch, best_metric=best,
                    best_epoch=best_epoch, rng=rng_state(), config=plain_config(args), time_s=time_s, **stage)
