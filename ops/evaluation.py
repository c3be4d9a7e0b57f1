"""Evaluation: every validation video once over all processes, gathered in dataset order (:func:`evaluate`
-> :class:`EvalResult`), with multi-view averaging, selected-frame decoding and the final evaluation's
ablations.

Evaluation runs in float32 (the official numbers) unless ``--eval_amp``; on a CPU it runs the model's
inference copy (:func:`evaluation_network`). The figures of the gathered rows: ``ops.metrics.head_metrics``
and :mod:`.evaluation_report`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F

from . import distributed as dist_ops
from . import early_exit
from .build import exit_gflops
from .checkpoint import unwrap
from .device_setup import autocast
from .evaluation_report import ablation_metrics, exit_targets
from .loaders import threshold_set_loader
from .metrics import head_metrics
from .objective import validation_loss
from .packages import datasets, sibling
from . import policy_ablation
from .policy_quality import policy_quality
from .rng import epoch_seed
from .run_log import RunLog, progress
from .training import model_inputs
from .visualize import ground_truth_boxes, selection_strip


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


def evaluation_network(net, args, log: Optional[RunLog] = None):
    """The network :func:`evaluate` runs for ``net`` (unwrapped, eval mode), with one log line saying which.

    On a CPU, a fresh inference copy of the current weights (``models.inference``: the model's own glance
    and policy; the focus encoder with BatchNorm folded, channels-last, in chunks, and in bfloat16 with
    ``--bf16_focus``), made at every call so that validation between epochs never sees stale weights;
    ``net`` itself with ``--plain_model`` or on CUDA. ``--eval_amp`` keeps its meaning on the copy.
    """
    try:
        chosen, line = sibling("models.inference").evaluation_model(
            net, plain=getattr(args, "plain_model", False), bf16_focus=getattr(args, "bf16_focus", False),
            eval_amp=args.amp and args.eval_amp)
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    if log is not None:
        log.info(line)
    return chosen


def frame_feed(loader, info: dist_ops.DistInfo):
    """A ``datasets.FrameFeed`` on the run's device for a loader whose items leave frames undecoded, else None."""
    base = datasets.selected_frames.frame_dataset_of(loader.dataset)
    return datasets.FrameFeed(base, info.device) if getattr(base, "deferred", False) else None


@torch.no_grad()
def evaluate(model, loader, args, info, collect_stages: bool = False, visualise: int = 0,
             log: Optional[RunLog] = None, ablation: bool = False,
             dynamics: Optional[Sequence[str]] = None) -> EvalResult:
    """Evaluate every sample of ``loader.dataset`` exactly once over all processes (float32 unless
    ``--eval_amp``); ``visualise``: draw that many videos of this process's shard; ``ablation``: the
    final evaluation: ``metrics["stage_scores"]`` (the metric after t = 0..T_L focus frames) and the
    ablations the flags ask for: ``--policy_ablation`` (:mod:`.policy_ablation`;
    ``metrics["policy_ablation"]``) and ``--remove_dynamics`` (:func:`dynamics_ablation`;
    ``metrics["dynamics_ablation"]``); ``dynamics``: also collect the stage logits with these dynamics
    removed (``rows["dynamics"]``, :func:`.policy_ablation.dynamics_stage_logits`).

    A loader whose items leave frames undecoded (:func:`ops.loaders.frame_decoding_options`) is fed through
    ``datasets.FrameFeed``: the model's ``before_focus`` hook decodes the focus frames its policy chose
    (identical logits); the videos drawn, and every video with ``ablation``, get all their frames."""
    net = unwrap(model)
    net.eval()
    sync_buffers(model, info)
    net = evaluation_network(net, args, log)  # on a CPU: a fresh inference copy of the current weights
    dataset = loader.dataset
    policy = ablation and args.policy_ablation
    removal = getattr(args, "remove_dynamics", None) if ablation else None
    if removal is not None:
        dynamics = policy_ablation.removed_dynamics(removal)
    collect_stages = collect_stages or ablation
    for flag, used in (("--policy_ablation", policy), ("--remove_dynamics", dynamics is not None)):
        if used and not policy_ablation.supports(net):
            raise SystemExit(f"{flag}: the {getattr(net, 'variant', type(net).__name__)} variant has no "
                             f"candidate-frame policy to replace (available for mn2_r50)")
    every_frame = policy or (dynamics is not None and "temporal" in dynamics)  # frames the policy did not choose
    ablation_rng = torch.Generator(device=info.device).manual_seed(epoch_seed(args.seed, 0, info.rank))
    local: Dict[str, List[torch.Tensor]] = {}
    images: List = []
    loss_sum = torch.zeros((), dtype=torch.float64)
    feed = frame_feed(loader, info)  # None: the items hold every frame
    for batch in progress(loader, info.is_main, log=log, desc="eval"):  # log: progress lines off a terminal
        part = feed.batch(batch) if feed is not None else None  # the glance frames decoded, the rest on demand
        video, glance = (part.video, {}) if part is not None else model_inputs(batch, info.device)
        target = batch["label"].to(info.device, non_blocking=True)
        # (B, V, T0, 3, H, W): V spatial views per video (a feed's video is (B*V, T0, 3, H, W) already)
        views = part.views if part is not None else (video.shape[1] if video.dim() == 6 else 1)
        if views > 1 and part is None:
            video, glance = video.flatten(0, 1), {k: v.flatten(0, 1) for k, v in glance.items()}
        hook = {"before_focus": part.require} if part is not None else {}
        with autocast(args, info.device, training=False):
            out = net(video, **glance, **hook)
            if every_frame and part is not None:
                part.complete(len(part.indices))  # the ablations read frames the policy did not choose
            extra = policy_ablation.ablation_logits(net, video, out, generator=ablation_rng) if policy else {}
            if dynamics is not None:
                extra["dynamics"] = policy_ablation.dynamics_stage_logits(net, video, out, dynamics)  # (B, K, C)
        if views > 1:
            out, batch = average_views(out, views), centre_view(batch)
            extra = {k: v.view(-1, views, *v.shape[1:]).mean(dim=1) for k, v in extra.items()}  # raw logits, as the views
        removed_rows = extra.pop("dynamics", None)
        if removed_rows is not None:
            local.setdefault("dynamics", []).append(removed_rows.cpu())
        loss_sum += validation_loss(out, target).double().cpu() * target.shape[0]
        for k, v in _batch_rows(batch, out, collect_stages).items():
            local.setdefault(k, []).append(v)
        for k, v in extra.items():
            local.setdefault(f"ablation_{k}", []).append(v.cpu())
        if len(images) < visualise:
            if part is not None:  # a strip shows every candidate frame
                batch["video"] = part.complete(visualise - len(images))
            images += _selection_images(batch, out, getattr(dataset, "class_names", None), visualise - len(images))
    if feed is not None:
        feed.close()
    total = len(dataset)
    indices = torch.cat(local["index"])
    rows = {k: dist_ops.gather_by_index(torch.cat(chunks), indices, total, info) for k, chunks in local.items()}
    loss = dist_ops.all_reduce_sum(loss_sum, info).item() / total
    metrics = head_metrics(rows, dataset_metric(dataset), loss)
    if ablation:
        scored = early_exit.StageMetric(rows["stages"], exit_targets(rows, metrics["metric"]), metrics["metric"])
        metrics["stage_scores"] = scored.stages(getattr(net, "exit_focus_frames", None))  # indexed by focus frames
    if policy:
        metrics["policy_ablation"] = ablation_metrics(rows, metrics)
    if removal is not None:
        metrics["dynamics_ablation"] = dynamics_ablation(model, rows, metrics["metric"], args, info, log)
    if "object_boxes" in rows:
        metrics["policy"] = policy_quality(rows["focus_indices"], rows["patch_boxes"], rows["object_boxes"],
                                           rows["object_visible"], (args.input_size, args.input_size), seed=args.seed)
    return EvalResult(metrics, rows, images)


def dynamics_ablation(model, rows: Dict[str, torch.Tensor], metric: str, args, info,
                      log: Optional[RunLog] = None) -> Dict:
    """``--remove_dynamics`` (the paper's Table 10) on an evaluation's ``rows`` (with ``rows["dynamics"]``):
    the threshold set is evaluated with the same removals, then :func:`.policy_ablation.dynamics_metrics`
    gives the metric at each of ``--budgets`` (seeded by ``--seed``)."""
    removed = policy_ablation.removed_dynamics(args.remove_dynamics)
    started = time.time()
    threshold = evaluate(model, threshold_set_loader(args, info), args, info, log=log, dynamics=removed).rows
    if log is not None:
        log.info(f"--remove_dynamics: threshold set (training videos) evaluated in {time.time() - started:.1f}s")
    result = policy_ablation.dynamics_metrics(rows["dynamics"], exit_targets(rows, metric), threshold["dynamics"],
                                              exit_gflops(model), removed, metric, budgets=args.budgets, seed=args.seed,
                                              steps=unwrap(model).exit_focus_frames)
    result["threshold_set"] = "train"
    return result
