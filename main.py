#!/usr/bin/env python
"""Train and evaluate Uni-AdaFocus: one process on a CPU or GPU, or many under torch.distributed.

    python main.py --config configs/synthetic.yaml                      # the embedded example
    torchrun --nproc_per_node=4 main.py --config configs/actnet_p128.yaml --data_dir DATA
    python -m torch.distributed.launch --nproc_per_node=4 main.py --glance_arch mbv2 --dataset actnet ...
    python main.py ... --evaluate --resume ckpt/actnet_p128.pth.tar     # official release files load too

Every official flag keeps its name and meaning (``ops/config.py``); ``--batch_size`` is the global
batch, split over the processes. A run folder ``{root_log}/{store_name}`` receives ``ckpt.pth.tar``
(last epoch), ``ckpt.best.pth.tar``, ``config.yaml``, ``log.txt``, ``summary.csv``, ``metrics.json``
and TensorBoard logs in ``tb/``. ``--resume`` continues a run exactly where its last checkpoint
left it. The machinery is in ``ops/engine.py``.
"""
from __future__ import annotations

import os
import sys
import time
from typing import List, Optional

import torch
import yaml

from models import get_variant
from ops import distributed as dist_ops
from ops import engine
from ops.checkpoint import CheckpointError, atomic_save, read_checkpoint
from ops.config import UNUSED_OFFICIAL_FLAGS, parse_args, plain_config, run_folder
from ops.cpu import tune_cpu_allocator
from ops.rng import epoch_seed, seed_everything
from ops.run_log import RunLog
from ops.schedule import adjust_learning_rate
from ops.visualize import stack_rows


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    info = dist_ops.init_distributed(args.local_rank, args.device, args.dist_url)
    try:
        return run(args, info)
    finally:
        dist_ops.cleanup()


def run(args, info: dist_ops.DistInfo) -> int:
    if args.batch_size % info.world_size:
        raise SystemExit(f"--batch_size {args.batch_size} is the global batch; it must divide by the "
                         f"{info.world_size} processes")
    run_dir = run_folder(args)
    if info.is_main:
        os.makedirs(run_dir, exist_ok=True)
    dist_ops.barrier(info)
    log = RunLog(run_dir, enabled=info.is_main, tensorboard=args.tensorboard, resume_epoch=_resumed_epoch(args, run_dir))
    try:
        return _run(args, info, run_dir, log)
    except FloatingPointError as exc:
        log.info(f"ERROR: {exc}")
        raise SystemExit(f"stopped: {exc}") from None
    finally:
        log.close()


def _resumed_epoch(args, run_dir: str) -> int:
    """The epoch a training run resumes at (so the log continues there), 0 for a new run."""
    if not args.resume or args.evaluate:
        return 0
    path = os.path.join(run_dir, "ckpt.pth.tar") if args.resume == "auto" else args.resume
    try:
        return int(read_checkpoint(path).get("epoch", 0)) if os.path.isfile(path) else 0
    except CheckpointError:
        return 0


def _run(args, info, run_dir: str, log: RunLog) -> int:
    started = time.time()
    used = set(get_variant(args.variant).hyper_parameters)  # e.g. --glance_size is x3d's
    for name in args.explicit:
        if name in UNUSED_OFFICIAL_FLAGS and name not in used:
            log.warning(f"--{name}: {UNUSED_OFFICIAL_FLAGS[name]}")
    log.info(f"{'evaluating' if args.evaluate else 'training'} on {info.world_size} process(es), device "
             f"{info.device}, global batch {args.batch_size} ({args.batch_size // info.world_size} per process)")
    if info.device.type == "cpu" and tune_cpu_allocator():
        log.info("CPU run: glibc allocator tuned to reuse activation memory (ops/cpu.py)")
    seed_everything(epoch_seed(args.seed, 0, info.rank))
    train_set, train_loader, val_set, val_loader = engine.build_loaders(args, info)
    model = engine.build_model(args, val_set.num_classes, info)
    objective = engine.build_objective(args)
    optimizer = engine.build_optimizer(args, model)
    scaler = engine.build_scaler(args, info)
    start_epoch, best, best_epoch = 0, None, None
    if args.resume:
        start_epoch, best, best_epoch = engine.restore(args, model, optimizer, scaler, log, run_dir)
    elif args.evaluate:
        log.warning("--evaluate without --resume evaluates an untrained model")
    stages = engine.exit_gflops(model)
    log.info(f"{val_set.num_classes} classes; {len(val_set)} validation videos"
             + (f", {len(train_set)} training videos" if train_set is not None else "")
             + f"; GFLOPs per video {stages[-1]:.2f} (glance only {stages[0]:.2f})")
    if info.is_main:
        with open(os.path.join(run_dir, "config.yaml"), "w", encoding="utf-8") as f:
            yaml.safe_dump(plain_config(args), f, sort_keys=True)
    if info.distributed:
        ddp_kwargs = {"device_ids": [info.local_rank]} if info.device.type == "cuda" else {}
        model = torch.nn.parallel.DistributedDataParallel(model, **ddp_kwargs)

    if args.evaluate:
        return evaluate_once(args, info, model, val_loader, stages, run_dir, log, started)

    final = None
    for epoch in range(start_epoch, args.epochs):
        lr = adjust_learning_rate(optimizer, epoch, args.lr, args.epochs, args.lr_type, args.lr_steps, args.weight_decay,
                                  start_epochs={"spatial_policy": args.stn_start_epoch})
        train_stats = engine.train_one_epoch(model, objective, train_loader, optimizer, scaler, epoch, args, info, log)
        row = {"epoch": epoch, "lr": lr, **{f"train_{k}": v for k, v in train_stats.items()}}
        log.scalars({f"train/{k}": v for k, v in train_stats.items()} | {"train/lr": lr}, epoch)
        is_best = False
        if epoch == args.epochs - 1 or (args.eval_freq > 0 and (epoch + 1) % args.eval_freq == 0):
            result = engine.evaluate(model, val_loader, args, info, visualise=args.num_visualised)
            final = result.metrics
            if best is None or final["score"] > best:
                best, best_epoch = final["score"], epoch
            is_best = best_epoch == epoch
            numbers = {k: v for k, v in final.items() if isinstance(v, (int, float))}
            row.update({f"val_{k}": v for k, v in numbers.items()})
            log.scalars({f"val/{k}": v for k, v in numbers.items()}, epoch)
            if "policy" in final:
                log.scalars({f"policy/{k}": v for k, v in final["policy"].items()}, epoch)
            if result.images:
                log.image("val/selected_frames_and_patches", stack_rows(result.images), epoch)
            log.info(f"epoch {epoch} validation: {engine.summarise(final)}  (best {best:.3f} at epoch {best_epoch})")
        if info.is_main:
            names = ["ckpt.pth.tar"] + (["ckpt.best.pth.tar"] if is_best else [])
            for name in names:
                engine.save_run_checkpoint(os.path.join(run_dir, name), model, optimizer, scaler, epoch + 1, best,
                                           best_epoch, args)
        log.epoch_row(row)
        log.json("metrics.json", {"final": final, "best": {"score": best, "epoch": best_epoch},
                                  "epochs_done": epoch + 1, "gflops": stages[-1], "time_s": time.time() - started})
        dist_ops.barrier(info)
    log.info(f"done in {time.time() - started:.1f}s; best {final['metric'] if final else 'score'} "
             f"{best if best is not None else float('nan'):.3f} at epoch {best_epoch}")
    return 0


def evaluate_once(args, info, model, val_loader, stages, run_dir: str, log: RunLog, started: float) -> int:
    """``--evaluate``: the metrics (and early exit with ``--thresholds``) of the loaded weights."""
    thresholds = engine.load_exit_thresholds(args.thresholds, len(stages)) if args.thresholds else None
    result = engine.evaluate(model, val_loader, args, info, collect_stages=thresholds is not None,
                             visualise=args.num_visualised)
    metrics, rows = result.metrics, result.rows
    log.info("evaluation: " + engine.summarise(metrics))
    if thresholds is not None:
        ee = metrics["early_exit"] = engine.early_exit_metrics(rows, thresholds, stages, metrics["metric"])
        log.info(f"early exit ({ee['criterion']}, {args.thresholds}): {ee['metric_name']} {ee['metric']:.3f} at "
                 f"{ee['gflops']:.4f} GFLOPs per video (all exits {stages[-1]:.4f}); exits per stage "
                 f"{ee['exit_counts']}")
    if args.save_predictions and info.is_main:
        atomic_save({k: rows[k] for k in ("index", "prediction", "label", "labels", "focus_indices", "patch_boxes")},
                    os.path.join(run_dir, f"predictions_{args.eval_suffix}.pt"))
    log.json(f"metrics_{args.eval_suffix}.json", {"evaluated": args.resume, "metrics": metrics, "gflops": stages[-1],
                                                  "time_s": time.time() - started})
    return 0


if __name__ == "__main__":
    sys.exit(main())
