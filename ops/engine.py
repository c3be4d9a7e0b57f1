"""The training and evaluation engine: build a run's parts, train an epoch, evaluate, save and restore.

The entry points (``main.py``, ``test_early_exit.py``, ``scripts/``) are thin command lines over
these functions, in the manner of torchvision's reference scripts::

    train_set, train_loader, val_set, val_loader = build_loaders(args, info)
    model = build_model(args, val_set.num_classes, info)
    stats = train_one_epoch(model, objective, train_loader, optimizer, scaler, epoch, args, info, log)
    result = evaluate(model, val_loader, args, info)      # EvalResult: metrics, rows, images

Precision: ``--amp`` runs the backbones under autocast in **training** only, as the official
semi-AMP code does; evaluation runs in float32 (the official numbers) unless ``--eval_amp`` asks for
autocast there too. Policy math always runs in float32.
"""
from __future__ import annotations

import argparse
import math
import os
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F

from . import distributed as dist_ops
from . import early_exit
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint, unwrap
from .config import plain_config
from .metrics import head_metrics, topk_accuracy
from .objective import UniAdaFocusObjective, validation_loss
from .packages import datasets, models
from .policy_quality import policy_quality
from .rng import epoch_seed, rng_state, seed_everything, set_rng_state
from .run_log import RunLog, progress
from .schedule import param_groups
from .visualize import ground_truth_boxes, selection_strip


# ------------------------------------------------------------------------------------------------
# Building a run
# ------------------------------------------------------------------------------------------------
def dataset_options(args) -> Dict:
    """The dataset options the flags set (see ``datasets.build_dataset``); a variant whose glance frames
    are sampled apart from the focus candidates gets them from the dataset (``item['glance']``)."""
    options = {"missing_frames": args.missing_frames}
    if models.get_variant(args.variant).frame_source == "separate":
        options.update(glance_segments=args.num_glance_segments, shared_crop=args.shared_crop)
    if args.label_rule:
        options["label_rule"] = args.label_rule
    if args.dataset_config:
        options["config"] = args.dataset_config
    if args.dataset == "synthetic":
        options["synthetic"] = args.synthetic or {}
    return options


def build_dataset(args, split: str, info: dist_ops.DistInfo, train: Optional[bool] = None):
    """One split of ``--dataset`` (the synthetic set is generated on first use, by rank 0).

    ``train``: the training (True) or evaluation (False) transforms; default: the split's own.
    """
    options = dataset_options(args)
    if split == "val" and train is not True and getattr(args, "test_crops", 1) != 1:
        options["test_crops"] = args.test_crops  # multi-view evaluation
    if args.dataset == "synthetic":  # rank 0 generates; the others wait (the generator also locks)
        if info.is_main:
            datasets.num_classes(args.dataset, args.data_dir, **options)
        dist_ops.barrier(info)
    return datasets.build_dataset(args.dataset, args.data_dir, split, num_segments=args.num_segments,
                                  input_size=args.input_size, train=train, seed=args.seed, **options)


def _loader_options(args, info: dist_ops.DistInfo) -> Dict:
    options = dict(num_workers=args.workers, pin_memory=info.device.type == "cuda", persistent_workers=args.workers > 0)
    if args.workers > 0:
        options["prefetch_factor"] = args.prefetch_factor
    return options


def build_eval_loader(dataset, batch_size: int, args, info: dist_ops.DistInfo):
    """A loader over this process's shard of ``dataset`` (every sample once over all processes).

    ``batch_size`` is the global batch, split over the processes (rounded up).
    """
    sampler = dist_ops.ShardSampler(len(dataset), info.rank, info.world_size)
    return torch.utils.data.DataLoader(dataset, batch_size=max(1, math.ceil(batch_size / info.world_size)),
                                       sampler=sampler, **_loader_options(args, info))


def build_loaders(args, info: dist_ops.DistInfo):
    """(train set, train loader, val set, val loader); the training pair is None with ``--evaluate``."""
    train_set = train_loader = None
    if not args.evaluate:
        train_set = build_dataset(args, "train", info)
        if len(train_set) < args.batch_size:
            raise SystemExit(f"the training set has {len(train_set)} videos, fewer than --batch_size {args.batch_size}")
        sampler = torch.utils.data.DistributedSampler(train_set, num_replicas=info.world_size, rank=info.rank,
                                                      shuffle=True, seed=args.seed, drop_last=True)
        train_loader = torch.utils.data.DataLoader(train_set, batch_size=args.batch_size // info.world_size,
                                                   sampler=sampler, drop_last=True, **_loader_options(args, info))
    val_set = build_dataset(args, "val", info)
    return train_set, train_loader, val_set, build_eval_loader(val_set, args.val_batch_size, args, info)


def build_model(args, num_classes: int, info: dist_ops.DistInfo):
    """The ``--variant`` network for ``num_classes`` classes, on the run's device.

    Evaluating a checkpoint loads no pretrained backbone weights: the checkpoint replaces them all.
    """
    if args.evaluate and args.resume:
        args = argparse.Namespace(**{**vars(args), "pretrained": False, "glance_weights": None, "focus_weights": None})
    model = models.get_variant(args.variant).build_from(args, num_classes)
    if args.sync_bn:
        if info.device.type != "cuda" or not info.distributed:
            raise SystemExit("--sync_bn needs several CUDA processes")
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model.to(info.device)


def build_objective(args) -> UniAdaFocusObjective:
    """The training objective with the terms of ``--variant`` and the loss flags."""
    variant = models.get_variant(args.variant)
    sizes = (args.num_segments, args.num_glance_segments, args.num_focus_segments)
    return UniAdaFocusObjective(*sizes, terms=variant.objective_terms,
                                mc_draws=variant.mc_draws(*sizes) if variant.mc_draws else None,
                                kl_ratio=args.KL_ratio, norm_ratio=args.norm_ratio,
                                temporal_form=args.temporal_objective, spatial_form=args.spatial_objective,
                                mc_samples=args.mc_samples, kl_reference=args.kl_reference)


def build_optimizer(args, model) -> torch.optim.Optimizer:
    """SGD with momentum (official) or AdamW over the learning-rate groups of ``ops.schedule``."""
    groups = param_groups(model, temporal_lr_ratio=args.temporal_lr_ratio, stn_lr_ratio=args.stn_lr_ratio,
                          global_lr_ratio=args.global_lr_ratio, classifier_lr_ratio=args.classifier_lr_ratio)
    if args.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay)
    return torch.optim.AdamW(groups, lr=args.lr, weight_decay=args.weight_decay)


def build_scaler(args, info: dist_ops.DistInfo) -> Optional[torch.amp.GradScaler]:
    """A gradient scaler for float16 AMP on CUDA (the official semi-AMP), else None."""
    if args.amp and args.amp_dtype == "float16" and info.device.type == "cuda":
        return torch.amp.GradScaler("cuda")
    return None


def autocast(args, device: torch.device, training: bool):
    """The backbones' autocast: ``--amp`` in training; in evaluation only with ``--eval_amp``."""
    dtype = torch.bfloat16 if args.amp_dtype == "bfloat16" else torch.float16
    enabled = args.amp if training else args.amp and args.eval_amp
    return torch.autocast(device.type, dtype=dtype, enabled=enabled)


def exit_gflops(model) -> List[float]:
    """GFLOPs of every early-exit stage of a (possibly wrapped) model, its variant's accounting."""
    net = unwrap(model)
    return models.variant_of(net).flops(net).stages()


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


def model_inputs(batch, device: torch.device):
    """(focus candidates, {'glance': glance frames} or {}) of a batch, on ``device``."""
    video = batch["video"].to(device, non_blocking=True)
    glance = {"glance": batch["glance"].to(device, non_blocking=True)} if "glance" in batch else {}
    return video, glance


def train_one_epoch(model, objective, loader, optimizer, scaler, epoch: int, args, info, log: RunLog) -> Dict[str, float]:
    """One epoch (or ``--iters_per_epoch`` steps); returns the epoch's mean loss terms and top-1."""
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
        video, glance = model_inputs(batch, info.device)
        target = batch["label"].to(info.device, non_blocking=True)
        with autocast(args, info.device, training=True):
            out = model(video, generator=generator, **glance)
        terms = objective(out, target, generator=generator)
        check_finite(terms, info, epoch, step, float16=args.amp and args.amp_dtype == "float16")
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
@dataclass
class EvalResult:
    """What :func:`evaluate` found, on every process.

    ``metrics``: the figures of :func:`ops.metrics.head_metrics` (+ ``policy`` on data with ground
    truth); ``rows``: per-video tensors in dataset order (``index``, ``label``, ``labels``,
    ``prediction`` logits, the ``exits`` / ``glance`` / ``focus`` head probabilities,
    ``focus_indices``, ``patch_boxes``, and with ``collect_stages`` the early-exit ``stages``
    (N, T_L + 1, C)); ``images``: strips of the first videos of this process's shard.
    """

    metrics: Dict
    rows: Dict[str, torch.Tensor]
    images: List = field(default_factory=list)


def sync_buffers(model, info: dist_ops.DistInfo) -> None:
    """Every process evaluates rank 0's BatchNorm statistics (ranks drift after their last step)."""
    if info.distributed:
        for buffer in unwrap(model).buffers():
            torch.distributed.broadcast(buffer, 0)


@dataclass
class ViewAverage:
    """The output of a multi-view evaluation per video: each logits tensor averaged over the V views
    (the official plain mean of raw logits); frames and patches are those of the last view (the centre
    crop in the official order left, right, centre)."""

    exit_logits: torch.Tensor  # (B, E, C) every exit
    stage_logits: torch.Tensor  # (B, K, C) the early-exit stages
    glance_logits: torch.Tensor  # (B, T_G, C)
    focus_logits: torch.Tensor  # (B, T_L, C)
    validation_logits: torch.Tensor  # (B, S, C)
    focus_indices: torch.Tensor  # (B, T_L)
    patch_boxes: torch.Tensor  # (B, T_L, 4)

    @property
    def logits(self) -> torch.Tensor:
        return self.exit_logits[:, -1]


def average_views(out, views: int) -> ViewAverage:
    """The per-video :class:`ViewAverage` of an output whose rows are ``views`` consecutive views per video."""
    def mean(t):
        return t.view(-1, views, *t.shape[1:]).mean(dim=1)

    def last(t):
        return t.view(-1, views, *t.shape[1:])[:, -1]

    return ViewAverage(exit_logits=mean(out.exit_logits), stage_logits=mean(out.stage_logits),
                       glance_logits=mean(out.glance_logits),
                       focus_logits=mean(out.focus_logits), validation_logits=mean(out.validation_logits),
                       focus_indices=last(out.focus_indices), patch_boxes=last(out.patch_boxes))


def centre_view(batch):
    """A multi-view batch's last view (the centre crop) of every per-view entry, for drawing and scoring."""
    per_view = ("video", "glance", "object_boxes", "object_visible")
    return {k: v[:, -1] if k in per_view else v for k, v in batch.items()}


def dataset_metric(dataset) -> str:
    """The metric of a dataset's registry entry ('mAP' or 'top1')."""
    return getattr(getattr(dataset, "spec", None), "metric", "top1")


def _batch_rows(batch, out, collect_stages: bool) -> Dict[str, torch.Tensor]:
    """The per-video rows of one evaluated batch (on the CPU)."""
    rows = {
        "index": batch["index"], "label": batch["label"], "labels": batch["labels"],
        "prediction": out.logits.float().cpu(),
        "exits": F.softmax(out.exit_logits.float(), dim=-1).mean(dim=1).cpu(),
        "glance": F.softmax(out.glance_logits.float(), dim=-1).mean(dim=1).cpu(),
        "focus": F.softmax(out.focus_logits.float(), dim=-1).mean(dim=1).cpu(),
        "focus_indices": out.focus_indices.cpu(),
        "patch_boxes": out.patch_boxes.float().cpu(),
    }
    if collect_stages:
        rows["stages"] = out.stage_logits.float().cpu()  # (B, T_L + 1, C)
    if "object_boxes" in batch:
        rows["object_boxes"], rows["object_visible"] = batch["object_boxes"], batch["object_visible"]
    return rows


def _selection_images(batch, out, class_names, limit: int) -> List:
    """Strips of the first ``limit`` videos of a batch: frames, focus frames, patches, ground truth."""
    images = []
    for i in range(min(limit, batch["video"].shape[0])):
        pred, label = int(out.logits[i].argmax()), int(batch["label"][i])
        name = (lambda c: class_names[c]) if class_names else (lambda c: c)
        images.append(selection_strip(batch["video"][i], out.focus_indices[i].cpu(), out.patch_boxes[i].cpu(),
                                      object_boxes=ground_truth_boxes(batch, i),
                                      label=f"#{int(batch['index'][i])} label {name(label)} / pred {name(pred)}"))
    return images


@torch.no_grad()
def evaluate(model, loader, args, info, collect_stages: bool = False, visualise: int = 0,
             log: Optional[RunLog] = None) -> EvalResult:
    """Evaluate every sample of ``loader.dataset`` exactly once over all processes (float32 unless
    ``--eval_amp``); ``visualise``: draw that many videos of this process's shard."""
    net = unwrap(model)
    net.eval()
    sync_buffers(model, info)
    dataset = loader.dataset
    local: Dict[str, List[torch.Tensor]] = {}
    images: List = []
    loss_sum = torch.zeros((), dtype=torch.float64)
    for batch in progress(loader, info.is_main, log=log, desc="eval"):  # log: progress lines off a terminal
        video, glance = model_inputs(batch, info.device)
        target = batch["label"].to(info.device, non_blocking=True)
        views = video.shape[1] if video.dim() == 6 else 1  # (B, V, T0, 3, H, W): V spatial views per video
        if views > 1:
            video, glance = video.flatten(0, 1), {k: v.flatten(0, 1) for k, v in glance.items()}
        with autocast(args, info.device, training=False):
            out = net(video, **glance)
        if views > 1:
            out, batch = average_views(out, views), centre_view(batch)
        loss_sum += validation_loss(out, target).double().cpu() * target.shape[0]
        for k, v in _batch_rows(batch, out, collect_stages).items():
            local.setdefault(k, []).append(v)
        if len(images) < visualise:
            images += _selection_images(batch, out, getattr(dataset, "class_names", None), visualise - len(images))
    total = len(dataset)
    indices = torch.cat(local["index"])
    rows = {k: dist_ops.gather_by_index(torch.cat(chunks), indices, total, info) for k, chunks in local.items()}
    loss = dist_ops.all_reduce_sum(loss_sum, info).item() / total
    metrics = head_metrics(rows, dataset_metric(dataset), loss)
    if "object_boxes" in rows:
        metrics["policy"] = policy_quality(rows["focus_indices"], rows["patch_boxes"], rows["object_boxes"],
                                           rows["object_visible"], (args.input_size, args.input_size), seed=args.seed)
    return EvalResult(metrics, rows, images)


def summarise(metrics: Dict) -> str:
    """One log line of an evaluation's figures."""
    keys = [k for k in ("score", "prediction_mAP", "prediction_top1", "prediction_top5", "exits_mAP", "glance_mAP",
                        "focus_mAP", "exits_top1", "glance_top1", "focus_top1", "loss") if k in metrics]
    text = "  ".join(f"{k} {metrics[k]:.3f}" for k in keys)
    if "policy" in metrics:
        p = metrics["policy"]
        text += (f"  | frames show object {p['frames_show_object']:.1f}% (uniform {p['uniform_frames_show_object']:.1f}%)"
                 f", patches cover it {p['patches_cover_object']:.1f}% (random {p['random_patches_cover_object']:.1f}%)")
    return text


# ------------------------------------------------------------------------------------------------
# Early exit on evaluated rows
# ------------------------------------------------------------------------------------------------
def load_exit_thresholds(path: str, num_stages: int):
    """A thresholds file for a model with ``num_stages`` exit stages, or a clear exit."""
    try:
        found = early_exit.load_thresholds(path)
    except early_exit.ThresholdsFileError as exc:
        raise SystemExit(f"--thresholds: {exc}") from None
    if found.thresholds.numel() != num_stages:
        raise SystemExit(f"--thresholds {path}: {found.thresholds.numel()} thresholds for a model with {num_stages} "
                         f"exits (the last glance exit and one per focus frame)")
    return found


def early_exit_metrics(rows: Dict[str, torch.Tensor], thresholds, flops: List[float], metric: str) -> Dict:
    """Early exit with ``thresholds`` on the gathered stage logits (exact: the exits are running maxima)."""
    targets = rows["labels"].bool() if metric == "mAP" else rows["label"]
    result = early_exit.evaluate_exits(rows["stages"].float(), targets, flops, thresholds=thresholds.thresholds,
                                       criterion=thresholds.criterion, metric=metric)
    return {"criterion": thresholds.criterion, "budget_gflops": thresholds.budget_gflops, "metric_name": metric,
            "metric": result.metric, "gflops": result.expected_gflops, "exit_counts": result.exit_counts.tolist()}


# ------------------------------------------------------------------------------------------------
# Checkpoints of a run
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


def save_run_checkpoint(path: str, model, optimizer, scaler, epoch: int, best, best_epoch, args) -> None:
    """Everything a resumed run needs: weights, optimizer, scaler, RNG states, configuration."""
    save_checkpoint(path, model, optimizer=optimizer.state_dict(),
                    scaler=scaler.state_dict() if scaler is not None else None, epoch=epoch, best_metric=best,
                    best_epoch=best_epoch, rng=rng_state(), config=plain_config(args))
