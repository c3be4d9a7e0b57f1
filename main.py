#!/usr/bin/env python
"""Train and evaluate Uni-AdaFocus: one process on a CPU or GPU, or many under torch.distributed.

    python main.py --config configs/synthetic.yaml                      # the embedded example
    torchrun --nproc_per_node=4 main.py --config configs/actnet_p128.yaml --data_dir DATA
    python -m torch.distributed.launch --nproc_per_node=4 main.py --glance_arch mbv2 --dataset actnet ...
    python main.py ... --evaluate --resume ckpt/actnet_p128.pth.tar     # official release files load too

Every official flag keeps its name and meaning; ``--batch_size`` is the global batch, split over the
processes. A run folder ``{root_log}/{store_name}`` receives ``ckpt.pth.tar`` (last epoch),
``ckpt.best.pth.tar``, ``config.yaml``, ``log.txt``, ``summary.csv``, ``metrics.json`` and TensorBoard
logs in ``tb/``. ``--resume`` continues a run exactly where its last checkpoint left it.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from typing import Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F
import yaml

import datasets
from models import UniAdaFocus
from ops import distributed as dist_ops
from ops.cpu import tune_cpu_allocator
from ops import early_exit
from ops.checkpoint import CheckpointError, atomic_save, load_checkpoint, read_checkpoint, save_checkpoint, unwrap
from ops.flops import flops_breakdown
from ops.metrics import mean_average_precision, topk_accuracy
from ops.objective import UniAdaFocusObjective, validation_loss
from ops.policy_quality import policy_quality
from ops.run_log import RunLog, progress
from ops.schedule import adjust_learning_rate, param_groups
from ops.visualize import selection_strip, stack_rows

# Official flags that the official code never read. They are accepted; using one prints a warning.
UNUSED_OFFICIAL_FLAGS = {
    "num_steps": "unused officially",
    "sample_sigma": "unused officially",
    "glance_size": "unused officially (glance frames are full input_size frames)",
    "hidden_dim": "unused officially: the official classifier is 4096 wide whatever --hidden_dim says "
                  "(the README commands pass 1024); use --classifier_dim to change the width",
    "sample": "unused officially",
    "save": "unused officially",
    "multi_sample_times": "unused officially; the Monte-Carlo sample count is --mc_samples (128)",
    "scale_factor": "unused officially",
    "normal_sig": "unused officially",
    "fold_id": "unused officially",
}


# ------------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------------
def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("Uni-AdaFocus", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--config", default=None, help="YAML file of defaults (configs/*.yaml); the command line overrides it")

    g = p.add_argument_group("data")
    g.add_argument("--dataset", default="actnet", choices=sorted(datasets.DATASETS))
    g.add_argument("--data_dir", default="", help="dataset root (list files, class file, frames)")
    g.add_argument("--workers", "-j", type=int, default=16, help="data-loading workers per process")
    g.add_argument("--prefetch_factor", type=int, default=2, help="batches prefetched per worker")
    g.add_argument("--num_segments", type=int, default=48, help="T0: candidate frames sampled per video")
    g.add_argument("--label_rule", choices=("first", "random"), default=None,
                   help="which label of a multi-label video trains cross-entropy (default: random in training, "
                        "first in evaluation)")
    g.add_argument("--missing_frames", choices=("error", "repeat_first"), default="error",
                   help="'repeat_first' reproduces the official substitution of missing frames (each one logged)")
    g.add_argument("--dataset_config", default=None, help="JSON file describing a custom dataset (see docs/data.md)")
    g.add_argument("--synthetic", type=json.loads, default=None,
                   help='generation options of the synthetic dataset, as JSON, e.g. \'{"train_videos": 200}\'')

    g = p.add_argument_group("model")
    g.add_argument("--glance_arch", default="mbv2", choices=("mbv2",))
    g.add_argument("--focus_arch", default="resnet50", choices=("resnet18", "resnet34", "resnet50"))
    g.add_argument("--num_glance_segments", type=int, default=16, help="T_G")
    g.add_argument("--num_focus_segments", type=int, default=16, help="T_L")
    g.add_argument("--input_size", type=int, default=224)
    g.add_argument("--patch_size", type=int, default=96, help="P (the paper's runs use 96, 128, 160)")
    g.add_argument("--stn_hidden_dim", type=int, default=128, help="spatial policy channels")
    g.add_argument("--temporal_hidden_dim", type=int, default=64, help="temporal policy channels")
    g.add_argument("--classifier_dim", type=int, default=4096, help="exit classifier MLP width (official 4096)")
    g.add_argument("--dropout", type=float, default=0.2, help="dropout before every exit head")
    g.add_argument("--fc_dropout", type=float, default=0.2, help="dropout before the glance and focus heads")
    g.add_argument("--temperature", type=float, default=1.0, help="softmax temperature of frame selection")
    g.add_argument("--pretrained", action=argparse.BooleanOptionalAction, default=True,
                   help="ImageNet initialisation of both backbones (torchvision weights)")
    g.add_argument("--glance_weights", "--glance_ckpt_path", dest="glance_weights", default=None,
                   help="local ImageNet MobileNetV2 weights (torchvision or the official file layout)")
    g.add_argument("--focus_weights", default=None, help="local ImageNet ResNet weights (torchvision layout)")
    g.add_argument("--detach_temporal_input", action="store_true",
                   help="paper: stop gradients before the temporal policy (official: not detached)")

    g = p.add_argument_group("objective")
    g.add_argument("--KL_ratio", type=float, default=0.0, help="weight of KL(frame weights || uniform)")
    g.add_argument("--norm_ratio", type=float, default=1.0, help="alpha: weight of the patch-size regulariser")
    g.add_argument("--temporal_objective", choices=("official", "paper"), default="official",
                   help="Monte-Carlo temporal term: CE of averaged logits (official) or Eq. 21 (paper)")
    g.add_argument("--spatial_objective", choices=("official", "paper"), default="official",
                   help="spatial term: one CE per video (official) or per glance frame (paper Eq. 14)")
    g.add_argument("--mc_samples", type=int, default=128, help="Monte-Carlo samples M")
    g.add_argument("--kl_reference", choices=("official", "glance"), default="official",
                   help="uniform reference of the KL term: 1/T_L (official) or 1/T_G")

    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=50)
    g.add_argument("--batch_size", "-b", type=int, default=32, help="global batch size (split over processes)")
    g.add_argument("--val_batch_size", type=int, default=64, help="global evaluation batch size")
    g.add_argument("--lr", "--learning-rate", dest="lr", type=float, default=0.002, help="base learning rate")
    g.add_argument("--lr_type", choices=("cos", "step"), default="cos")
    g.add_argument("--lr_steps", type=float, nargs="+", default=[50, 100], help="epochs where 'step' decays x0.1")
    g.add_argument("--optimizer", choices=("sgd", "adamw"), default="sgd",
                   help="SGD with momentum (official) or AdamW (useful from random initialisation)")
    g.add_argument("--momentum", type=float, default=0.9)
    g.add_argument("--weight_decay", "--wd", dest="weight_decay", type=float, default=2e-4)
    g.add_argument("--global_lr_ratio", type=float, default=0.5, help="LR multiplier of the glance network and heads")
    g.add_argument("--stn_lr_ratio", type=float, default=0.2, help="LR multiplier of the spatial policy")
    g.add_argument("--stn_start_epoch", type=int, default=0,
                   help="the spatial policy trains from this epoch on (LR 0 before; 0: from the start, as "
                        "officially). For encoders trained from scratch, whose first feature maps carry no "
                        "localised evidence")
    g.add_argument("--temporal_lr_ratio", type=float, default=0.2, help="LR multiplier of the temporal policy")
    g.add_argument("--classifier_lr_ratio", type=float, default=20.0, help="LR multiplier of the exit classifier")
    g.add_argument("--amp", action="store_true", help="mixed precision for the backbones (policy math stays float32)")
    g.add_argument("--amp_dtype", choices=("bfloat16", "float16"), default="bfloat16")
    g.add_argument("--sync_bn", action="store_true", help="synchronise BatchNorm statistics across GPUs")
    g.add_argument("--iters_per_epoch", type=int, default=0, help="stop each epoch after N steps (0: full epochs)")

    g = p.add_argument_group("run")
    g.add_argument("--root_log", default="exp", help="folder of the run folders")
    g.add_argument("--store_name", default=None,
                   help="run folder name (default UniAdaFocus_{dataset}_{glance_arch}_segment{T0}_e{epochs})")
    g.add_argument("--resume", default="", help="checkpoint to continue from or evaluate; 'auto' = this run's last")
    g.add_argument("--evaluate", action="store_true", help="evaluate --resume once and exit")
    g.add_argument("--eval_freq", type=int, default=1, help="validate every N epochs (and after the last)")
    g.add_argument("--eval_suffix", default="eval", help="--evaluate writes metrics_{suffix}.json")
    g.add_argument("--thresholds", default=None,
                   help="early-exit thresholds file (test_early_exit.py --budget): --evaluate also reports the "
                        "metric, GFLOPs and exit distribution of early exit with them")
    g.add_argument("--print-freq", "-p", dest="print_freq", type=int, default=20, help="log every N steps")
    g.add_argument("--seed", type=int, default=1007, help="seed of every random choice")
    g.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    g.add_argument("--dist_url", default="env://", help="process-group initialisation (env://, file://...)")
    g.add_argument("--tensorboard", action=argparse.BooleanOptionalAction, default=True)
    g.add_argument("--num_visualised", type=int, default=4, help="videos drawn to TensorBoard at each evaluation")
    g.add_argument("--save_predictions", action="store_true",
                   help="with --evaluate: also write predictions_{suffix}.pt (per-video logits, labels, frames, patches)")
    g.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)

    g = p.add_argument_group("official flags the official code never read (accepted, with a warning)")
    g.add_argument("--num_steps", type=int, default=1)
    g.add_argument("--sample_sigma", type=float, default=0.015)
    g.add_argument("--glance_size", type=int, default=96)
    g.add_argument("--hidden_dim", type=int, default=1024)
    g.add_argument("--sample", action="store_true")
    g.add_argument("--save", default="")
    g.add_argument("--multi_sample_times", type=int, default=3)
    g.add_argument("--scale_factor", type=float, default=0.3)
    g.add_argument("--normal_sig", type=float, default=0.0)
    g.add_argument("--fold_id", type=int, default=None)
    return p


def _given_dests(parser: argparse.ArgumentParser, argv: List[str]) -> set:
    """Destinations of the options that appear in ``argv``."""
    by_flag = {flag: action.dest for action in parser._actions for flag in action.option_strings}
    given = set()
    for token in argv:
        if token.startswith("-"):
            flag = token.split("=", 1)[0]
            if flag in by_flag:
                given.add(by_flag[flag])
    return given


def load_config_file(path: str, parser: argparse.ArgumentParser) -> Dict:
    """Defaults from a YAML file of ``flag_name: value`` pairs, checked against the parser."""
    try:
        with open(path, encoding="utf-8") as f:
            values = yaml.safe_load(f) or {}
    except FileNotFoundError:
        parser.error(f"--config {path}: file not found")
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        parser.error(f"--config {path}{where}: invalid YAML ({getattr(exc, 'problem', exc)})")
    if not isinstance(values, dict):
        parser.error(f"--config {path}: expected a mapping of flag names to values")
    actions = {a.dest: a for a in parser._actions}
    values = {k.replace("-", "_"): v for k, v in values.items()}
    unknown = sorted(k for k in values if k not in actions or k == "config")
    if unknown:
        parser.error(f"--config {path}: unknown keys {unknown}")
    for key, value in values.items():  # YAML reads 1e-4 as a string: convert like the command line would
        kind = actions[key].type
        try:
            if kind is not None and isinstance(value, str):
                values[key] = kind(value)
            elif kind is not None and isinstance(value, list):
                values[key] = [kind(v) if isinstance(v, str) else v for v in value]
        except (TypeError, ValueError) as exc:
            parser.error(f"--config {path}: {key}: {exc}")
        choices = actions[key].choices
        if choices is not None and values[key] not in choices:
            parser.error(f"--config {path}: {key} must be one of {sorted(choices)}, got {values[key]!r}")
    return values


def parse_args(argv: Optional[List[str]] = None, parser: Optional[argparse.ArgumentParser] = None) -> argparse.Namespace:
    """Parse ``argv`` with ``parser`` (default: main.py's), defaults from ``--config FILE`` first."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = parser or get_args_parser()
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    known, _ = pre.parse_known_args(argv)
    from_config = {}
    if known.config:
        from_config = load_config_file(known.config, parser)
        parser.set_defaults(**from_config)
    args = parser.parse_args(argv)
    if args.stn_start_epoch < 0:
        parser.error(f"--stn_start_epoch must be 0 or more, got {args.stn_start_epoch}")
    args.explicit = sorted(_given_dests(parser, argv) | set(from_config))
    return args


def plain_config(args: argparse.Namespace) -> Dict:
    """The resolved configuration as plain data (saved with the run and in checkpoints)."""
    return {k: v for k, v in vars(args).items() if k not in ("local_rank", "explicit")}


# ------------------------------------------------------------------------------------------------
# Set-up helpers
# ------------------------------------------------------------------------------------------------
def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    return (seed * 1_000_003 + epoch * 10_007 + rank * 101 + 17) % (2 ** 62)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def rng_state() -> Dict:
    """The global RNG states as plain data (numpy's array becomes a tensor)."""
    np_state = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                       "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in state["python"]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def dataset_options(args) -> Dict:
    options = {"missing_frames": args.missing_frames}
    if args.label_rule:
        options["label_rule"] = args.label_rule
    if args.dataset_config:
        options["config"] = args.dataset_config
    if args.dataset == "synthetic":
        options["synthetic"] = args.synthetic or {}
    return options


def build_loaders(args, info: dist_ops.DistInfo):
    """Training and validation datasets and loaders (the synthetic set is generated on first use)."""
    options = dataset_options(args)
    if args.dataset == "synthetic":  # rank 0 generates; the others wait (the generator also locks)
        if info.is_main:
            datasets.num_classes(args.dataset, args.data_dir, **options)
        dist_ops.barrier(info)
    common = dict(num_segments=args.num_segments, input_size=args.input_size, seed=args.seed, **options)
    train_set = None if args.evaluate else datasets.build_dataset(args.dataset, args.data_dir, "train", **common)
    val_set = datasets.build_dataset(args.dataset, args.data_dir, "val", **common)
    per_process = args.batch_size // info.world_size
    val_per_process = max(1, math.ceil(args.val_batch_size / info.world_size))
    loader_kw = dict(num_workers=args.workers, pin_memory=info.device.type == "cuda",
                     persistent_workers=args.workers > 0)
    if args.workers > 0:
        loader_kw["prefetch_factor"] = args.prefetch_factor
    train_loader = None
    if train_set is not None:
        if len(train_set) < args.batch_size:
            raise SystemExit(f"the training set has {len(train_set)} videos, fewer than --batch_size {args.batch_size}")
        sampler = torch.utils.data.DistributedSampler(train_set, num_replicas=info.world_size, rank=info.rank,
                                                      shuffle=True, seed=args.seed, drop_last=True)
        train_loader = torch.utils.data.DataLoader(train_set, batch_size=per_process, sampler=sampler,
                                                   drop_last=True, **loader_kw)
    val_sampler = dist_ops.ShardSampler(len(val_set), info.rank, info.world_size)
    val_loader = torch.utils.data.DataLoader(val_set, batch_size=val_per_process, sampler=val_sampler, **loader_kw)
    return train_set, train_loader, val_set, val_loader


def build_model(args, num_classes: int, info: dist_ops.DistInfo):
    model = UniAdaFocus.from_args(args, num_classes=num_classes)
    if args.sync_bn:
        if info.device.type != "cuda" or not info.distributed:
            raise SystemExit("--sync_bn needs several CUDA processes")
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model.to(info.device)


# ------------------------------------------------------------------------------------------------
# Training
# ------------------------------------------------------------------------------------------------
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


def autocast(args, device: torch.device):
    dtype = torch.bfloat16 if args.amp_dtype == "bfloat16" else torch.float16
    return torch.autocast(device.type, dtype=dtype, enabled=args.amp)


def check_finite(terms, info: dist_ops.DistInfo, epoch: int, step: int, float16: bool = False) -> None:
    """Stop every process within the step when any loss term is NaN or infinite anywhere."""
    values = torch.stack([v.detach().float() for v in vars(terms).values()])
    bad = (~torch.isfinite(values)).any().float().reshape(1)
    if info.distributed:
        bad = dist_ops.all_reduce_sum(bad, info)
    if bad.item() > 0:
        names = [k for k, v in vars(terms).items() if not torch.isfinite(v.detach()).all()]
        raise FloatingPointError(
            f"non-finite loss at epoch {epoch}, step {step}" + (f" (terms: {', '.join(names)})" if names else
                                                                " (on another process)")
            + "; the run stops and keeps its last good checkpoint. Try a lower --lr"
            + (" or --amp_dtype bfloat16." if float16 else "."))


def train_one_epoch(model, objective, loader, optimizer, scaler, epoch: int, args, info, log: RunLog) -> Dict[str, float]:
    model.train()
    loader.sampler.set_epoch(epoch)
    loader.dataset.set_epoch(epoch)
    seed = epoch_seed(args.seed, epoch, info.rank)
    seed_everything(seed)  # dropout and anything else on the global RNGs
    generator = torch.Generator(device=info.device).manual_seed(seed)
    meters = Meters()
    steps = len(loader) if not args.iters_per_epoch else min(len(loader), args.iters_per_epoch)
    start = time.time()
    bar = progress(loader, info.is_main, total=steps, desc=f"epoch {epoch}")
    for step, batch in enumerate(bar):
        if step >= steps:
            break
        video = batch["video"].to(info.device, non_blocking=True)
        target = batch["label"].to(info.device, non_blocking=True)
        with autocast(args, info.device):
            out = model(video, generator=generator)
        terms = objective(out, target, generator=generator)
        check_finite(terms, info, epoch, step, float16=args.amp and args.amp_dtype == "float16")
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(terms.total).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            terms.total.backward()
            optimizer.step()
        values = terms.as_floats()
        values["top1"] = topk_accuracy(out.logits.detach().float(), target, ks=(1,))[0]
        meters.update(values, target.shape[0])
        if info.is_main and (step % args.print_freq == 0 or step == steps - 1):
            averages = meters.averages()
            log.info(f"epoch {epoch} [{step + 1}/{steps}] lr {optimizer.param_groups[-1]['lr']:.5g} "
                     f"{(time.time() - start) / (step + 1):.2f}s/step "
                     + " ".join(f"{k} {v:.4f}" for k, v in averages.items()))
            if hasattr(bar, "set_postfix"):
                bar.set_postfix(loss=f"{averages['total']:.3f}")
    averages = meters.averages(info)
    averages["time_s"] = time.time() - start
    return averages


# ------------------------------------------------------------------------------------------------
# Evaluation
# ------------------------------------------------------------------------------------------------
def sync_buffers(model, info: dist_ops.DistInfo) -> None:
    """Every process evaluates rank 0's BatchNorm statistics (ranks drift after their last step)."""
    if info.distributed:
        for buffer in unwrap(model).buffers():
            torch.distributed.broadcast(buffer, 0)


@torch.no_grad()
def evaluate(model, loader, args, info, collect_stages: bool = False, visualise: int = 0):
    """Evaluate every sample of ``loader.dataset`` exactly once over all processes.

    Returns ``(metrics, rows, images)``: metrics (dict, on every process), rows (dict of per-sample
    tensors in dataset order: prediction logits, head probabilities, labels, and with
    ``collect_stages`` the early-exit stage logits (N, T_L + 1, C)), and PIL strips of the first
    ``visualise`` videos of this process's shard.
    """
    net = unwrap(model)
    net.eval()
    sync_buffers(model, info)
    dataset = loader.dataset
    local: Dict[str, List[torch.Tensor]] = {}
    images = []
    loss_sum = torch.zeros((), dtype=torch.float64)
    has_boxes = False
    for batch in progress(loader, info.is_main, desc="eval"):
        video = batch["video"].to(info.device, non_blocking=True)
        target = batch["label"].to(info.device, non_blocking=True)
        with autocast(args, info.device):
            out = net(video)
        exits = out.exit_logits.float()
        loss_sum += validation_loss(out, target).double().cpu() * target.shape[0]
        parts = {
            "index": batch["index"],
            "label": batch["label"],
            "labels": batch["labels"],
            "prediction": out.logits.float().cpu(),
            "exits": F.softmax(exits, dim=-1).mean(dim=1).cpu(),
            "glance": F.softmax(out.glance_logits.float(), dim=-1).mean(dim=1).cpu(),
            "focus": F.softmax(out.focus_logits.float(), dim=-1).mean(dim=1).cpu(),
            "focus_indices": out.focus_indices.cpu(),
            "patch_boxes": out.patch_boxes.float().cpu(),
        }
        if collect_stages:
            parts["stages"] = exits[:, net.num_glance - 1:].cpu()  # (B, T_L + 1, C)
        if "object_boxes" in batch:
            has_boxes = True
            parts["object_boxes"] = batch["object_boxes"]
            parts["object_visible"] = batch["object_visible"]
        for k, v in parts.items():
            local.setdefault(k, []).append(v)
        for i in range(min(visualise - len(images), video.shape[0])):
            names = getattr(dataset, "class_names", None)
            pred, label = int(out.logits[i].argmax()), int(batch["label"][i])
            caption = f"#{int(batch['index'][i])} label {names[label] if names else label} / pred {names[pred] if names else pred}"
            images.append(selection_strip(batch["video"][i], out.focus_indices[i].cpu(), out.patch_boxes[i].cpu(),
                                          object_boxes=_visible_boxes(batch, i), label=caption))
    total = len(dataset)
    rows = {}
    for k, chunks in local.items():
        rows[k] = dist_ops.gather_by_index(torch.cat(chunks), torch.cat(local["index"]), total, info)
    loss = dist_ops.all_reduce_sum(loss_sum, info).item() / total
    metrics = compute_metrics(rows, dataset_metric(dataset), loss)
    if has_boxes:
        metrics["policy"] = policy_quality(rows["focus_indices"], rows["patch_boxes"], rows["object_boxes"],
                                           rows["object_visible"], (args.input_size, args.input_size), seed=args.seed)
    return metrics, rows, images


def load_exit_thresholds(path: str, num_stages: int) -> early_exit.ThresholdsFile:
    """A thresholds file for this model's ``num_stages`` exits, or a clear exit."""
    try:
        found = early_exit.load_thresholds(path)
    except early_exit.ThresholdsFileError as exc:
        raise SystemExit(f"--thresholds: {exc}") from None
    if found.thresholds.numel() != num_stages:
        raise SystemExit(f"--thresholds {path}: {found.thresholds.numel()} thresholds for a model with {num_stages} "
                         f"exits (the last glance exit and one per focus frame)")
    return found


def early_exit_metrics(rows: Dict[str, torch.Tensor], thresholds: early_exit.ThresholdsFile, flops: List[float],
                       metric: str) -> Dict:
    """Early exit with ``thresholds`` on the gathered stage logits (exact: the exits are running maxima)."""
    name = "map" if metric == "mAP" else "top1"
    result = early_exit.evaluate_exits(rows["stages"].float(), rows["labels"].bool() if name == "map" else rows["label"],
                                       flops, thresholds=thresholds.thresholds, criterion=thresholds.criterion,
                                       metric=name)
    return {"criterion": thresholds.criterion, "budget_gflops": thresholds.budget_gflops, "metric_name": metric,
            "metric": result.metric, "gflops": result.expected_gflops, "exit_counts": result.exit_counts.tolist()}


def _visible_boxes(batch, i):
    if "object_boxes" not in batch:
        return None
    boxes = batch["object_boxes"][i].clone()
    boxes[~batch["object_visible"][i]] = float("nan")
    return boxes


def dataset_metric(dataset) -> str:
    spec = getattr(dataset, "spec", None)
    return getattr(spec, "metric", "top1")


def compute_metrics(rows: Dict[str, torch.Tensor], metric: str, loss: float) -> Dict:
    """Prediction and per-head metrics: mAP (ActivityNet, FCVID) or top-1/top-5 (Mini-Kinetics)."""
    out: Dict = {"loss": loss, "num_videos": int(rows["label"].shape[0]), "metric": metric}
    heads = {"prediction": F.softmax(rows["prediction"], dim=-1), "exits": rows["exits"], "glance": rows["glance"],
             "focus": rows["focus"]}
    if metric == "mAP":
        for name, scores in heads.items():
            out[f"{name}_mAP"] = mean_average_precision(scores, rows["labels"].bool())[0]
        out["score"] = out["prediction_mAP"]
    classes = rows["prediction"].shape[1]
    ks = (1, 5) if classes >= 5 else (1,)
    for name, scores in heads.items():
        accs = topk_accuracy(scores, rows["label"], ks=ks)
        out[f"{name}_top1"] = accs[0]
        if len(accs) > 1:
            out[f"{name}_top5"] = accs[1]
    if metric != "mAP":
        out["score"] = out["prediction_top1"]
    return out


# ------------------------------------------------------------------------------------------------
# Checkpoints
# ------------------------------------------------------------------------------------------------
def restore(args, model, optimizer, scaler, log: RunLog, run_dir: str):
    """Load ``--resume``; returns (start epoch, best score, best epoch)."""
    path = args.resume
    if path == "auto":
        path = os.path.join(run_dir, "ckpt.pth.tar")
        if not os.path.isfile(path):
            log.info(f"--resume auto: no checkpoint in {run_dir}; starting from scratch")
            return 0, None, None
    try:
        info = load_checkpoint(path, model)
    except CheckpointError as exc:
        raise SystemExit(str(exc)) from None
    log.info(f"loaded {info.format} checkpoint {path} (epoch {info.epoch})")
    if args.evaluate:
        return info.epoch, info.best_metric, None
    if info.format != "uniadafocus":
        log.warning("the official checkpoint holds no optimizer state this model can use: momentum starts "
                    f"from zero; training continues at epoch {info.epoch}")
        return info.epoch, info.best_metric, None
    if info.optimizer is not None:
        optimizer.load_state_dict(info.optimizer)
    if scaler is not None and info.extra.get("scaler"):
        scaler.load_state_dict(info.extra["scaler"])
    if info.extra.get("rng"):
        set_rng_state(info.extra["rng"])
    return info.epoch, info.best_metric, info.extra.get("best_epoch")


def save_run_checkpoint(path: str, model, optimizer, scaler, epoch: int, best, best_epoch, args, lr: float) -> None:
    save_checkpoint(path, model, optimizer=optimizer.state_dict(),
                    scaler=scaler.state_dict() if scaler is not None else None, epoch=epoch, best_metric=best,
                    best_epoch=best_epoch, schedule={"lr_type": args.lr_type, "base_lr": lr, "next_epoch": epoch},
                    rng=rng_state(), config=plain_config(args))


# ------------------------------------------------------------------------------------------------
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
    args.store_name = args.store_name or \
        f"UniAdaFocus_{args.dataset}_{args.glance_arch}_segment{args.num_segments}_e{args.epochs}"
    run_dir = os.path.join(args.root_log, args.store_name)
    if info.is_main:
        os.makedirs(run_dir, exist_ok=True)
    dist_ops.barrier(info)
    resume_hint = 0
    if args.resume and not args.evaluate:
        resume_file = os.path.join(run_dir, "ckpt.pth.tar") if args.resume == "auto" else args.resume
        if os.path.isfile(resume_file):
            try:
                resume_hint = int(read_checkpoint(resume_file).get("epoch", 0))
            except CheckpointError:
                resume_hint = 0
    log = RunLog(run_dir, enabled=info.is_main, tensorboard=args.tensorboard, resume_epoch=resume_hint)
    try:
        return _run(args, info, run_dir, log)
    except FloatingPointError as exc:
        log.info(f"ERROR: {exc}")
        raise SystemExit(f"stopped: {exc}") from None
    finally:
        log.close()


def _run(args, info, run_dir: str, log: RunLog) -> int:
    started = time.time()
    for name in args.explicit:
        if name in UNUSED_OFFICIAL_FLAGS:
            log.warning(f"--{name}: {UNUSED_OFFICIAL_FLAGS[name]}")
    log.info(f"{'evaluating' if args.evaluate else 'training'} on {info.world_size} process(es), device "
             f"{info.device}, global batch {args.batch_size} ({args.batch_size // info.world_size} per process)")
    if info.device.type == "cpu" and tune_cpu_allocator():
        log.info("CPU run: glibc allocator tuned to reuse activation memory (ops/cpu.py)")
    seed_everything(epoch_seed(args.seed, 0, info.rank))
    train_set, train_loader, val_set, val_loader = build_loaders(args, info)
    num_classes = val_set.num_classes
    model = build_model(args, num_classes, info)
    objective = UniAdaFocusObjective(args.num_segments, args.num_glance_segments, args.num_focus_segments,
                                     kl_ratio=args.KL_ratio, norm_ratio=args.norm_ratio,
                                     temporal_form=args.temporal_objective, spatial_form=args.spatial_objective,
                                     mc_samples=args.mc_samples, kl_reference=args.kl_reference)
    groups = param_groups(model, temporal_lr_ratio=args.temporal_lr_ratio, stn_lr_ratio=args.stn_lr_ratio,
                          global_lr_ratio=args.global_lr_ratio, classifier_lr_ratio=args.classifier_lr_ratio)
    if args.optimizer == "sgd":
        optimizer = torch.optim.SGD(groups, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay)
    else:
        optimizer = torch.optim.AdamW(groups, lr=args.lr, weight_decay=args.weight_decay)
    scaler = torch.amp.GradScaler("cuda") if args.amp and args.amp_dtype == "float16" and info.device.type == "cuda" \
        else None
    start_epoch, best, best_epoch = 0, None, None
    if args.resume:
        start_epoch, best, best_epoch = restore(args, model, optimizer, scaler, log, run_dir)
    elif args.evaluate:
        log.warning("--evaluate without --resume evaluates an untrained model")
    stages = flops_breakdown(unwrap(model)).stages()
    log.info(f"{num_classes} classes; {len(val_set)} validation videos"
             + (f", {len(train_set)} training videos" if train_set is not None else "")
             + f"; GFLOPs per video {stages[-1]:.2f} (glance only {stages[0]:.2f})")
    if info.is_main:
        with open(os.path.join(run_dir, "config.yaml"), "w", encoding="utf-8") as f:
            yaml.safe_dump(plain_config(args), f, sort_keys=True)

    if info.distributed:
        ddp_kwargs = {"device_ids": [info.local_rank]} if info.device.type == "cuda" else {}
        train_model = torch.nn.parallel.DistributedDataParallel(model, **ddp_kwargs)
    else:
        train_model = model

    if args.evaluate:
        thresholds = load_exit_thresholds(args.thresholds, len(stages)) if args.thresholds else None
        metrics, rows, images = evaluate(train_model, val_loader, args, info, collect_stages=thresholds is not None,
                                         visualise=args.num_visualised)
        log.info("evaluation: " + describe(metrics))
        if thresholds is not None:
            metrics["early_exit"] = early_exit_metrics(rows, thresholds, stages, metrics["metric"])
            ee = metrics["early_exit"]
            log.info(f"early exit ({ee['criterion']}, {args.thresholds}): {ee['metric_name']} {ee['metric']:.3f} at "
                     f"{ee['gflops']:.4f} GFLOPs per video (all exits {stages[-1]:.4f}); exits per stage "
                     f"{ee['exit_counts']}")
        if args.save_predictions and info.is_main:
            atomic_save({k: rows[k] for k in ("index", "prediction", "label", "labels", "focus_indices", "patch_boxes")},
                        os.path.join(run_dir, f"predictions_{args.eval_suffix}.pt"))
        result = {"evaluated": args.resume, "metrics": metrics, "gflops": stages[-1], "time_s": time.time() - started}
        log.json(f"metrics_{args.eval_suffix}.json", result)
        return 0

    final = None
    for epoch in range(start_epoch, args.epochs):
        lr = adjust_learning_rate(optimizer, epoch, args.lr, args.epochs, args.lr_type, args.lr_steps, args.weight_decay,
                                  start_epochs={"spatial_policy": args.stn_start_epoch})
        train_stats = train_one_epoch(train_model, objective, train_loader, optimizer, scaler, epoch, args, info, log)
        row = {"epoch": epoch, "lr": lr, **{f"train_{k}": v for k, v in train_stats.items()}}
        log.scalars({f"train/{k}": v for k, v in train_stats.items()} | {"train/lr": lr}, epoch)
        last = epoch == args.epochs - 1
        if last or (args.eval_freq > 0 and (epoch + 1) % args.eval_freq == 0):
            metrics, _, images = evaluate(train_model, val_loader, args, info, visualise=args.num_visualised)
            final = metrics
            if best is None or metrics["score"] > best:
                best, best_epoch = metrics["score"], epoch
            row.update({f"val_{k}": v for k, v in metrics.items() if isinstance(v, (int, float))})
            log.scalars({f"val/{k}": v for k, v in metrics.items() if isinstance(v, (int, float))}, epoch)
            if "policy" in metrics:
                log.scalars({f"policy/{k}": v for k, v in metrics["policy"].items()}, epoch)
            if images:
                log.image("val/selected_frames_and_patches", stack_rows(images), epoch)
            log.info(f"epoch {epoch} validation: " + describe(metrics) + f"  (best {best:.3f} at epoch {best_epoch})")
            is_best = best_epoch == epoch
        else:
            is_best = False
        if info.is_main:
            save_run_checkpoint(os.path.join(run_dir, "ckpt.pth.tar"), model, optimizer, scaler, epoch + 1, best,
                                best_epoch, args, lr)
            if is_best:
                save_run_checkpoint(os.path.join(run_dir, "ckpt.best.pth.tar"), model, optimizer, scaler, epoch + 1,
                                    best, best_epoch, args, lr)
        log.epoch_row(row)
        log.json("metrics.json", {"final": final, "best": {"score": best, "epoch": best_epoch},
                                  "epochs_done": epoch + 1, "gflops": stages[-1], "time_s": time.time() - started})
        dist_ops.barrier(info)
    log.info(f"done in {time.time() - started:.1f}s; best {final['metric'] if final else 'score'} "
             f"{best if best is not None else float('nan'):.3f} at epoch {best_epoch}")
    return 0


def describe(metrics: Dict) -> str:
    keys = [k for k in ("score", "prediction_mAP", "prediction_top1", "prediction_top5", "exits_top1", "glance_top1",
                        "focus_top1", "loss") if k in metrics]
    text = "  ".join(f"{k} {metrics[k]:.3f}" for k in keys)
    if "policy" in metrics:
        p = metrics["policy"]
        text += (f"  | frames show object {p['frames_show_object']:.1f}% (uniform {p['uniform_frames_show_object']:.1f}%)"
                 f", patches cover it {p['patches_cover_object']:.1f}% (random {p['random_patches_cover_object']:.1f}%)")
    return text


if __name__ == "__main__":
    sys.exit(main())
