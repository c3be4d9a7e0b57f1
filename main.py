#!/usr/bin/env python
"""Train and evaluate Uni-AdaFocus: one process on a CPU or GPU, or many under torch.distributed.

    python main.py --config configs/synthetic.yaml                      # the embedded example
    torchrun --nproc_per_node=4 main.py --config configs/actnet_p128.yaml --data_dir DATA
    python -m torch.distributed.launch --nproc_per_node=4 main.py --glance_arch mbv2 --dataset actnet ...
    python main.py ... --evaluate --resume ckpt/actnet_p128.pth.tar     # official release files load too

Every official flag keeps its name and meaning (``ops/flags.py``); ``--batch_size`` is the global
batch, split over the processes. A run folder ``{root_log}/{store_name}`` receives ``ckpt.pth.tar``
(last epoch), ``ckpt.best.pth.tar``, ``config.yaml``, ``log.txt``, ``summary.csv``, ``metrics.json``
and TensorBoard logs in ``tb/``. ``--resume`` continues a run exactly where its last checkpoint
left it. A training run refuses to start in a folder that holds one (``--resume auto`` continues it,
``--overwrite`` starts over); ``--evaluate`` writes only its own files; a kill at any instant leaves
every file complete or absent (docs/reliability.md). The machinery is in ``ops/`` (``loaders``, ``build``,
``training``, ``evaluation``, ``run_state``; docs/layout.md).
"""
from __future__ import annotations

import os
import shlex
import shutil
import sys
import time
from dataclasses import dataclass
from typing import List, Optional

from ops.cpu import prefer_passive_omp_wait, tune_cpu_allocator

prefer_passive_omp_wait()  # before torch loads OpenMP, which reads OMP_WAIT_POLICY once (ops/cpu.py)

import torch  # noqa: E402
import yaml  # noqa: E402

from datasets.files import write_text_atomic  # noqa: E402
from models import get_variant  # noqa: E402
from ops import (build, cli, device_setup, evaluation, evaluation_report, loaders, run_state,  # noqa: E402
                 staged_training, training)
from ops import distributed as dist_ops  # noqa: E402
from ops.checkpoint import CheckpointError, atomic_save, read_checkpoint  # noqa: E402
from ops.config import adopt_checkpoint_config, parse_args, plain_config, run_folder  # noqa: E402
from ops.flags import UNUSED_OFFICIAL_FLAGS, get_args_parser  # noqa: E402
from ops.rng import epoch_seed, seed_everything  # noqa: E402
from ops.run_log import RunLog  # noqa: E402
from ops.schedule import adjust_learning_rate  # noqa: E402
from ops.visualize import legend, stack_rows  # noqa: E402


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = get_args_parser()
    args = parse_args(argv, parser)
    adopt_checkpoint_config(args, parser)  # --resume OWN_CHECKPOINT: the model sizes no flag sets
    info = dist_ops.init_distributed(args.local_rank, args.device, args.dist_url)
    try:
        return run(args, info, command=[sys.argv[0] or "main.py"] + argv)
    finally:
        dist_ops.cleanup()


#: The files of a training run that ``--overwrite`` deletes (a new run would replace them piecemeal).
TRAINING_FILES = ("ckpt.pth.tar", "ckpt.best.pth.tar", "metrics.json", "summary.csv", "config.yaml")


def check_run_folder(args, run_dir: str) -> None:
    """Refuse to start a training run over a finished or interrupted one (every rank checks, none writes)."""
    if args.evaluate or args.resume or args.overwrite:
        return
    if os.path.isfile(os.path.join(run_dir, "ckpt.pth.tar")):
        raise SystemExit(f"{run_dir} already holds a run (ckpt.pth.tar): pass --resume auto to continue it, "
                         f"--overwrite to start it over, or another --store_name / --root_log")


def prepare_run_folder(args, run_dir: str) -> None:
    """Main process: remove the temporary files an interrupted write left, and with ``--overwrite`` the
    previous run's files."""
    if not os.path.isdir(run_dir):
        return
    for folder in (run_dir, os.path.join(run_dir, "early_exit")):
        if os.path.isdir(folder):
            for name in os.listdir(folder):
                if name.startswith(".tmp-") and os.path.isfile(os.path.join(folder, name)):
                    os.remove(os.path.join(folder, name))
    if args.overwrite and not args.evaluate and not args.resume:
        for name in TRAINING_FILES:
            if os.path.isfile(os.path.join(run_dir, name)):
                os.remove(os.path.join(run_dir, name))
        shutil.rmtree(os.path.join(run_dir, "tb"), ignore_errors=True)


def _kept_files(args) -> List[str]:
    """The files whose presence makes a run folder worth keeping after a failure."""
    return ["ckpt.pth.tar", "ckpt.best.pth.tar", "metrics.json", f"metrics_{args.eval_suffix}.json"]


def run(args, info: dist_ops.DistInfo, command: Optional[List[str]] = None) -> int:
    if args.batch_size % info.world_size:
        raise SystemExit(f"--batch_size {args.batch_size} is the global batch; it must divide by the "
                         f"{info.world_size} processes")
    run_dir = run_folder(args)
    check_run_folder(args, run_dir)
    created = [d for d in (args.root_log, run_dir) if d and not os.path.isdir(d)]
    if info.is_main:
        prepare_run_folder(args, run_dir)
    dist_ops.barrier(info)
    resumed = _resumed_epoch(args, run_dir)
    log = RunLog(run_dir, enabled=info.is_main, tensorboard=args.tensorboard and not args.evaluate,
                 resume_epoch=resumed)
    if command:
        log.info("=" * 24 + f" {time.strftime('%Y-%m-%d %H:%M:%S %Z')} session: {shlex.join(command)}")
    failed = True
    progress = Progress(saved_epochs=resumed if args.resume == "auto" else 0)
    try:
        status = _run(args, info, run_dir, log, progress)
        failed = False
        return status
    except FloatingPointError as exc:
        log.info(f"ERROR: {exc}")
        raise SystemExit(f"stopped: {exc}") from None
    except KeyboardInterrupt:  # Ctrl-C: one line in log.txt and on stderr (ops/cli.py), exit status 130
        message = interruption(args, run_dir, progress)
        if info.is_main:
            log.info(f"interrupted: {message}")
        raise cli.Interrupted(message) from None
    except BaseException as exc:
        if isinstance(exc, SystemExit) and exc.code in (0, None):
            failed = False
        elif info.is_main:
            log.info(f"ERROR: {cli.user_message(exc) if not isinstance(exc, SystemExit) else exc.code}")
        raise
    finally:
        log.close()
        # A run that failed before it wrote anything that lasts leaves no folder behind.
        if failed and run_dir in created and info.is_main and os.path.isdir(run_dir) and not any(
                os.path.isfile(os.path.join(run_dir, name)) for name in _kept_files(args)):
            shutil.rmtree(run_dir, ignore_errors=True)
            if args.root_log in created and os.path.isdir(args.root_log) and not os.listdir(args.root_log):
                os.rmdir(args.root_log)


class StepCounter:
    """The training loader as the epoch loop hands it to ``training.train_one_epoch``: it passes every batch
    on and counts the steps done, so that Ctrl-C can say at which step of the epoch the run stopped."""

    def __init__(self, loader, steps: int):
        self.loader, self.steps, self.done = loader, steps, 0

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        self.done = 0
        for batch in self.loader:
            yield batch
            self.done += 1  # the step that took the batch is over once it asks for the next one

    def __getattr__(self, name):  # sampler, dataset, ...
        return getattr(self.loader, name)


@dataclass
class Progress:
    """Where a run is, for the line Ctrl-C prints. ``phase``: 'training' (``batches`` counts the steps of
    ``epoch``), else a phrase such as "in epoch 3's validation"; ``saved_epochs``: the finished epochs
    the run folder's ``ckpt.pth.tar`` holds (0: none)."""

    phase: str = "before the first training step"
    epoch: int = 0
    batches: Optional[StepCounter] = None
    saved_epochs: int = 0

    def where(self) -> str:
        if self.phase == "training" and self.batches is not None:
            step = min(self.batches.done + 1, self.batches.steps)
            return f"in epoch {self.epoch} at step {step} of {self.batches.steps}"
        return self.phase


def interruption(args, run_dir: str, progress: Progress) -> str:
    """What Ctrl-C stopped and how to continue, in one line. Checkpoints are written whole or not at all
    (``ops/checkpoint.py``), so the run folder keeps the last complete one."""
    stopped = f"stopped by Ctrl-C {'during the evaluation' if args.evaluate else progress.where()}"
    if args.evaluate:
        return f"{stopped}; an evaluation writes its files at its end, so none was written: run the same command again"
    if progress.saved_epochs:
        again = "run the same command again" if args.resume == "auto" else "run the same command with --resume auto"
        return (f"{stopped}; {os.path.join(run_dir, 'ckpt.pth.tar')} keeps the {progress.saved_epochs} finished "
                f"epoch(s): {again} to continue from epoch {progress.saved_epochs}")
    if args.resume:
        return f"{stopped}; no epoch finished since {args.resume} was loaded: run the same command again"
    return f"{stopped}; no epoch had finished, so nothing was kept: run the same command again"


def _resumed_epoch(args, run_dir: str) -> int:
    """The epoch a training run resumes at (so the log continues there), 0 for a new run."""
    if not args.resume or args.evaluate:
        return 0
    path = os.path.join(run_dir, "ckpt.pth.tar") if args.resume == "auto" else args.resume
    try:
        return int(read_checkpoint(path).get("epoch", 0)) if os.path.isfile(path) else 0
    except CheckpointError:
        return 0


def _run(args, info, run_dir: str, log: RunLog, progress: Progress) -> int:
    started = time.time()
    get_variant(args.variant).require_entry_points()  # before anything is built or written
    staged_training.check_flags(args)  # adafocus_v1's --stage and its hand-over flags
    used = set(get_variant(args.variant).hyper_parameters)  # e.g. --glance_size is x3d's
    for name in args.explicit:
        if name in UNUSED_OFFICIAL_FLAGS and name not in used:
            log.warning(f"--{name}: {UNUSED_OFFICIAL_FLAGS[name]}")
    log.info(f"{'evaluating' if args.evaluate else 'training'} on {info.world_size} process(es), device "
             f"{info.device}, global batch {args.batch_size} ({args.batch_size // info.world_size} per process)")
    settings = device_setup.device_settings(args, info)  # a flag this device cannot honour stops the run here
    log.info(f"device settings: {settings.describe()}")
    if info.device.type == "cpu" and tune_cpu_allocator():
        log.info("CPU run: glibc allocator tuned to reuse activation memory (ops/cpu.py)")
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if args.workers > cpus:
        log.info(f"--workers {args.workers}: capped to the {cpus} CPUs available to this process")
        args.workers = cpus
    seed_everything(epoch_seed(args.seed, 0, info.rank))
    train_set, train_loader, val_set, val_loader = loaders.build_loaders(args, info)
    model = build.build_model(args, val_set.num_classes, info)
    objective = build.build_objective(args)
    staged = staged_training.for_run(args, model, info, log)  # adafocus_v1's --stage (None otherwise)
    optimizer = staged.optimizer if staged else build.build_optimizer(args, model)
    scaler = build.build_scaler(args, info)
    start_epoch, best, best_epoch = 0, None, None
    if args.resume:
        start_epoch, best, best_epoch, earlier_s = run_state.restore(args, model, optimizer, scaler, log, run_dir)
        started -= earlier_s  # a resumed run's time counts its earlier segments
    elif args.evaluate:
        log.warning("--evaluate without --resume evaluates an untrained model")
    stages = build.exit_gflops(model)
    log.info(f"{val_set.num_classes} classes; {len(val_set)} validation videos"
             + (f", {len(train_set)} training videos" if train_set is not None else "")
             + f"; GFLOPs per video {stages[-1]:.2f} (its first exit {stages[0]:.2f})")
    if settings.compile:  # after counting the FLOPs: compiled code hides its operations from the counter
        log.info(f"--compile: the {' and '.join(device_setup.compile_encoders(model))} encoders compile at their first "
                 f"call for each input shape")
    if info.is_main:  # an evaluation writes its own configuration, never the training run's
        name = f"config_{args.eval_suffix}.yaml" if args.evaluate else "config.yaml"
        write_text_atomic(os.path.join(run_dir, name), yaml.safe_dump(plain_config(args), sort_keys=True))
    if info.distributed and not staged:  # a stage averages its gradients / gathers its rollouts itself
        ddp_kwargs = {"device_ids": [info.local_rank]} if info.device.type == "cuda" else {}
        model = torch.nn.parallel.DistributedDataParallel(model, **ddp_kwargs)

    if args.evaluate:
        return evaluate_once(args, info, model, val_loader, stages, run_dir, log, started)

    final = None
    progress.batches = StepCounter(train_loader, len(train_loader) if not args.iters_per_epoch
                                   else min(len(train_loader), args.iters_per_epoch))
    for epoch in range(start_epoch, args.epochs):
        progress.phase, progress.epoch = "training", epoch
        if staged:
            lr, train_stats = optimizer.adjust(epoch), staged.train_one_epoch(model, progress.batches, epoch, log)
        else:
            lr = adjust_learning_rate(optimizer, epoch, args.lr, args.lr_epochs or args.epochs, args.lr_type,
                                      args.lr_steps, args.weight_decay,
                                      start_epochs={"spatial_policy": args.stn_start_epoch})
            train_stats = training.train_one_epoch(model, objective, progress.batches, optimizer, scaler, epoch, args,
                                                   info, log)
        row = {"epoch": epoch, "lr": lr, **{f"train_{k}": v for k, v in train_stats.items()}}
        log.scalars({f"train/{k}": v for k, v in train_stats.items()} | {"train/lr": lr}, epoch)
        is_best = False
        progress.phase = f"in epoch {epoch}'s validation"
        if epoch == args.epochs - 1 or (args.eval_freq > 0 and (epoch + 1) % args.eval_freq == 0):
            result = evaluation.evaluate(model, val_loader, args, info, visualise=args.num_visualised, log=log,
                                         ablation=epoch == args.epochs - 1)  # the final evaluation
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
                key = legend(object_boxes="policy" in final)  # ground truth is drawn where there is some
                log.image("val/selected_frames_and_patches", stack_rows(result.images + [key]), epoch)
            log.info(f"epoch {epoch} validation: {evaluation_report.summarise(final)}  "
                     f"(best {best:.3f} at epoch {best_epoch})")
        # The last checkpoint is written last: a run killed before it ends redoes this epoch on
        # --resume auto (and rewrites the best checkpoint, the summary row and metrics.json), so a
        # run that resumes as finished has written every file of its last epoch.
        progress.phase = f"while epoch {epoch}'s files were written"
        if info.is_main and is_best:
            run_state.save_run_checkpoint(os.path.join(run_dir, "ckpt.best.pth.tar"), model, optimizer, scaler,
                                          epoch + 1, best, best_epoch, args, time.time() - started)
        log.epoch_row(row)
        log.json("metrics.json", {"final": final, "best": {"score": best, "epoch": best_epoch},
                                  "epochs_done": epoch + 1, "gflops": stages[-1], "time_s": time.time() - started})
        if info.is_main:
            run_state.save_run_checkpoint(os.path.join(run_dir, "ckpt.pth.tar"), model, optimizer, scaler, epoch + 1,
                                          best, best_epoch, args, time.time() - started)
        progress.saved_epochs = epoch + 1
        dist_ops.barrier(info)
    log.info(f"done in {time.time() - started:.1f}s; best {final['metric'] if final else 'score'} "
             f"{best if best is not None else float('nan'):.3f} at epoch {best_epoch}")
    return 0


def evaluate_once(args, info, model, val_loader, stages, run_dir: str, log: RunLog, started: float) -> int:
    """``--evaluate``: the metrics (and early exit with ``--thresholds``) of the loaded weights."""
    thresholds = evaluation_report.load_exit_thresholds(args.thresholds, len(stages)) if args.thresholds else None
    result = evaluation.evaluate(model, val_loader, args, info, collect_stages=thresholds is not None,
                                 visualise=args.num_visualised, log=log, ablation=True)
    metrics, rows = result.metrics, result.rows
    log.info("evaluation: " + evaluation_report.summarise(metrics))
    if thresholds is not None:
        ee = metrics["early_exit"] = evaluation_report.early_exit_metrics(rows, thresholds, stages, metrics["metric"])
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
    sys.exit(cli.run_main(main))
