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

Device: :func:`device_settings` resolves the speed flags for the run's device in one place
(``--channels_last``, on by default on CUDA; ``--cudnn_benchmark``; ``--compile``; the autocast type
and gradient scaler of ``--amp``; ``--sync_bn``) and stops with one line on a combination the device
cannot run; :func:`build_model` applies them. Training never waits for the device between print steps
(:func:`train_one_epoch`).
"""
from __future__ import annotations

import argparse
import math
import os
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F

from . import distributed as dist_ops
from . import early_exit
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint, unwrap
from .cli import loader_worker_init
from .config import plain_config
from .metrics import head_metrics, mean_average_precision, topk_accuracy
from .objective import UniAdaFocusObjective, validation_loss
from .packages import datasets, models, sibling
from . import policy_ablation
from .policy_quality import policy_quality
from .rng import epoch_seed, rng_state, seed_everything, set_rng_state
from .run_log import RunLog, progress
from .schedule import param_groups, warm_up
from .visualize import ground_truth_boxes, selection_strip


# ------------------------------------------------------------------------------------------------
# Building a run
# ------------------------------------------------------------------------------------------------
def dataset_options(args) -> Dict:
    """The dataset options the flags set (see ``datasets.build_dataset``); a variant whose glance frames
    are sampled apart from the focus candidates gets them from the dataset (``item['glance']``)."""
    options = {"missing_frames": args.missing_frames}
    if getattr(args, "video_files", False):
        options["video_files"] = True
    if models.get_variant(args.variant).frame_source == "separate":
        options.update(glance_segments=args.num_glance_segments, shared_crop=args.shared_crop)
    if args.label_rule:
        options["label_rule"] = args.label_rule
    if args.dataset_config:
        options["config"] = args.dataset_config
    if args.dataset == "synthetic":
        options["synthetic"] = args.synthetic or {}
    return options


def frame_decoding_options(args) -> Dict:
    """The dataset options of an evaluation loader that decodes only the frames the model reads
    (``datasets.selected_frames``): for a variant whose glance frames are among the candidates, the
    workers decode the T_G glance positions (the model's evaluation rule) and the focus frames are
    decoded when the policy has chosen them; ``--decode_all_frames``: every candidate (the previous
    path); ``--gpu_decode``: the workers read the JPEG bytes of those frames for decoding on the GPU.
    Other variants: none (they decode every frame in the workers)."""
    if models.get_variant(args.variant).frame_source != "candidates":
        return {}
    options = {}
    if not getattr(args, "decode_all_frames", False):
        glance = sibling("models.frame_selection").glance_frame_indices(args.num_segments, args.num_glance_segments)
        options["decode_positions"] = glance[0].tolist()
    if getattr(args, "gpu_decode", False):
        options["jpeg_bytes"] = True
    return options


def build_dataset(args, split: str, info: dist_ops.DistInfo, train: Optional[bool] = None,
                  decode_on_demand: bool = False):
    """One split of ``--dataset`` (the synthetic set is generated on first use, by rank 0).

    ``train``: the training (True) or evaluation (False) transforms; default: the split's own.
    ``decode_on_demand``: with the evaluation transforms, items of :func:`frame_decoding_options`
    (for :func:`evaluate`, which decodes the rest when the model needs it).
    """
    options = dataset_options(args)
    evaluation = train is False or (train is None and split != "train")
    if split == "val" and train is not True and getattr(args, "test_crops", 1) != 1:
        options["test_crops"] = args.test_crops  # multi-view evaluation
    if decode_on_demand and evaluation:
        options.update(frame_decoding_options(args))
    if args.dataset == "synthetic":  # rank 0 generates; the others wait (the generator also locks)
        if info.is_main:
            datasets.num_classes(args.dataset, args.data_dir, **options)
        dist_ops.barrier(info)
    return datasets.build_dataset(args.dataset, args.data_dir, split, num_segments=args.num_segments,
                                  input_size=args.input_size, train=train, seed=args.seed, **options)


def _loader_options(args, info: dist_ops.DistInfo) -> Dict:
    """DataLoader options: ``--workers`` persistent workers, and a generator of the loader's own.

    The generator keeps the loader off the global RNGs. A DataLoader draws its workers' base seed when
    it makes an iterator: from the global torch RNG unless it has a generator. Persistent workers make
    one iterator in the first epoch a process iterates, a run without workers one per epoch, so that
    draw moved the global stream (dropout, the random-patch path) by one number in a resumed epoch
    and not in an uninterrupted one: runs with workers did not resume exactly. With the loader's own
    generator, seeded from ``--seed`` and the rank, the global stream of every epoch is what
    :func:`~ops.rng.seed_everything` set, whatever ``--workers`` is and wherever the run resumed;
    the workers' own seeds do not depend on where it resumed either (the samples draw from
    :func:`datasets.sampling.sample_rng`, not from the workers' global RNGs).
    """
    options = dict(num_workers=args.workers, pin_memory=info.device.type == "cuda", persistent_workers=args.workers > 0,
                   generator=torch.Generator().manual_seed(epoch_seed(args.seed, 0, info.rank)),
                   worker_init_fn=loader_worker_init)  # Ctrl-C: the main process's, no worker traceback
    if args.workers > 0:
        options["prefetch_factor"] = args.prefetch_factor
    return options


def build_eval_loader(dataset, batch_size: int, args, info: dist_ops.DistInfo):
    """A loader over this process's shard of ``dataset`` (every sample once over all processes).

    ``batch_size`` is the global batch, split over the processes (rounded up).
    """
    sampler = dist_ops.ShardSampler(len(dataset), info.rank, info.world_size)
    return torch.utils.data.DataLoader(dataset, batch_size=max(1, math.ceil(batch_size / info.world_size)),
                                       sampler=sampler, collate_fn=datasets.collate_items,
                                       **_loader_options(args, info))


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
    val_set = build_dataset(args, "val", info, decode_on_demand=True)
    return train_set, train_loader, val_set, build_eval_loader(val_set, args.val_batch_size, args, info)


# ------------------------------------------------------------------------------------------------
# Device settings: what the speed flags mean on the run's device, checked and applied in one place
# ------------------------------------------------------------------------------------------------
AUTOCAST_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class DeviceSettings:
    """How a run uses its device, resolved from the flags by :func:`device_settings`."""

    device_type: str  # 'cuda' or 'cpu'
    channels_last: bool  # the 2-D encoders in channels-last memory format (--channels_last)
    cudnn_benchmark: bool  # cuDNN times the convolution algorithms and keeps the fastest (CUDA only)
    compile: bool  # the encoders torch.compile'd (--compile)
    train_autocast: Optional[torch.dtype]  # the backbones' autocast type in training (None: float32)
    eval_autocast: Optional[torch.dtype]  # the same in evaluation (--eval_amp)
    grad_scaler: bool  # float16 training scales its loss (CUDA's GradScaler)
    sync_bn: bool  # BatchNorm synchronised over the processes in training (--sync_bn)

    def describe(self) -> str:
        """One log line."""
        def precision(dtype):
            return "float32" if dtype is None else f"{str(dtype).replace('torch.', '')} autocast"

        parts = [f"backbones in {precision(self.train_autocast)}"
                 + (" with a gradient scaler" if self.grad_scaler else "") + " for training, "
                 + f"{precision(self.eval_autocast)} for evaluation",
                 "channels-last 2-D encoders" if self.channels_last else "encoders in the default memory format",
                 "torch.compile'd encoders" if self.compile else "eager encoders"]
        if self.sync_bn:
            parts.append("synchronised BatchNorm")
        if self.device_type == "cuda":
            parts += [f"cudnn.benchmark {'on' if self.cudnn_benchmark else 'off'}", "pinned-memory loaders"]
        return "; ".join(parts)


def device_settings(args, info: dist_ops.DistInfo, bf16_problem=dist_ops.cuda_bf16_problem) -> DeviceSettings:
    """The speed and precision flags resolved for this process's device (``--channels_last`` defaults to
    on for CUDA); a combination the device cannot run stops with one line naming the flag.

    ``bf16_problem(device)``: why a GPU cannot run bfloat16 (None: it can); asked only when needed.
    """
    cuda = info.device.type == "cuda"
    training = not args.evaluate
    dtype = AUTOCAST_DTYPES[args.amp_dtype]
    train_autocast = dtype if args.amp and training else None
    eval_autocast = dtype if args.amp and args.eval_amp else None
    if train_autocast == torch.float16 and not cuda:
        raise SystemExit("--amp --amp_dtype float16: float16 training needs CUDA's gradient scaler and this run "
                         "trains on the CPU; pass --amp_dtype bfloat16 there (or drop --amp)")
    if cuda and torch.bfloat16 in (train_autocast, eval_autocast):
        problem = bf16_problem(info.device)
        if problem:
            raise SystemExit(f"--amp_dtype bfloat16: {problem}; pass --amp_dtype float16")
    sync_bn = bool(args.sync_bn) and training  # evaluation uses the running statistics: nothing to synchronise
    if sync_bn and not (cuda and info.distributed):
        raise SystemExit(f"--sync_bn synchronises BatchNorm over several CUDA processes; this run trains on "
                         f"{info.world_size} process(es) on {info.device.type}")
    channels_last = getattr(args, "channels_last", None)
    return DeviceSettings(device_type=info.device.type, channels_last=cuda if channels_last is None else channels_last,
                          cudnn_benchmark=cuda and getattr(args, "cudnn_benchmark", True),
                          compile=getattr(args, "compile", False), train_autocast=train_autocast,
                          eval_autocast=eval_autocast, grad_scaler=train_autocast == torch.float16, sync_bn=sync_bn)


def apply_device_settings(settings: DeviceSettings) -> None:
    """The process-wide part of the settings: cuDNN's algorithm search on CUDA (nothing on a CPU)."""
    if settings.device_type == "cuda":
        torch.backends.cudnn.benchmark = settings.cudnn_benchmark


def use_channels_last(model) -> List[str]:
    """Put the model's 2-D encoders in channels-last memory format (their 4-D weights now, their input at
    every call through the encoders' ``memory_format``); returns their names. Encoders without that
    attribute (X3D's 3-D networks) keep their layout."""
    converted = []
    for name in ("glance", "focus"):
        encoder = getattr(unwrap(model), name, None)
        if encoder is not None and hasattr(encoder, "memory_format"):
            encoder.to(memory_format=torch.channels_last)
            encoder.memory_format = torch.channels_last
            converted.append(name)
    return converted


def compile_encoders(model) -> List[str]:
    """``torch.compile`` the glance and focus encoders in place (``nn.Module.compile``: parameter names, and
    so checkpoint keys, stay as they are); returns their names. Compiling happens at each encoder's first
    call for each input shape. Count FLOPs before (compiled code hides its operations from the counter)."""
    compiled = []
    for name in ("glance", "focus"):
        encoder = getattr(unwrap(model), name, None)
        if encoder is not None:
            encoder.compile()
            compiled.append(name)
    return compiled


def build_model(args, num_classes: int, info: dist_ops.DistInfo):
    """The ``--variant`` network for ``num_classes`` classes, on the run's device and set up for it
    (:func:`device_settings`: synchronised BatchNorm, channels-last encoders, cuDNN's algorithm search).

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


def autocast(args, device: torch.device, training: bool):
    """The backbones' autocast: ``--amp`` in training; in evaluation only with ``--eval_amp``."""
    enabled = args.amp if training else args.amp and args.eval_amp
    return torch.autocast(device.type, dtype=AUTOCAST_DTYPES[args.amp_dtype], enabled=enabled)


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

    A loader whose items leave frames undecoded (:func:`frame_decoding_options`) is fed through
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


def exit_targets(rows: Dict[str, torch.Tensor], metric: str) -> torch.Tensor:
    """The targets early exit scores gathered rows against: multi-hot labels (mAP) or label ids (top1)."""
    return rows["labels"].bool() if metric == "mAP" else rows["label"]


def threshold_set_loader(args, info: dist_ops.DistInfo, augmentation: bool = True, subset: int = 0):
    """The videos early-exit thresholds are fitted on, as officially: the training set with the training
    augmentation (``augmentation=False``: the evaluation transform), each video once over all processes.
    ``subset``: that many training videos instead (fewer: all), drawn with ``--seed``, in their order."""
    dataset = build_dataset(args, "train", info, train=augmentation, decode_on_demand=True)
    if subset and subset < len(dataset):
        generator = torch.Generator().manual_seed(args.seed)
        indices = sorted(torch.randperm(len(dataset), generator=generator)[:subset].tolist())
        whole, dataset = dataset, torch.utils.data.Subset(dataset, indices)
        dataset.num_classes, dataset.spec = whole.num_classes, whole.spec
    return build_eval_loader(dataset, args.val_batch_size, args, info)


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


def ablation_metrics(rows: Dict[str, torch.Tensor], metrics: Dict) -> Dict[str, float]:
    """The dataset's metric for the full model and every ``ablation_*`` row (B, S, C), averaged over the S draws."""
    metric = metrics["metric"]

    def value(logits: torch.Tensor) -> float:
        if metric == "mAP":
            return mean_average_precision(torch.softmax(logits.float(), dim=-1), rows["labels"].bool())[0]
        return topk_accuracy(logits, rows["label"], ks=(1,))[0]

    out = {"metric": metric, "full": metrics["score"]}
    for key, logits in rows.items():
        if key.startswith("ablation_"):
            out[key[len("ablation_"):]] = sum(value(draw) for draw in logits.unbind(1)) / logits.shape[1]
    return out


def summarise(metrics: Dict) -> str:
    """One log line of an evaluation's figures."""
    keys = [k for k in ("score", "prediction_mAP", "prediction_top1", "prediction_top5", "exits_mAP", "glance_mAP",
                        "focus_mAP", "exits_top1", "glance_top1", "focus_top1", "loss") if k in metrics]
    text = "  ".join(f"{k} {metrics[k]:.3f}" for k in keys)
    if "policy" in metrics:
        p = metrics["policy"]
        text += (f"  | frames show object {p['frames_show_object']:.1f}% (uniform {p['uniform_frames_show_object']:.1f}%)"
                 f", patches cover it {p['patches_cover_object']:.1f}% (random {p['random_patches_cover_object']:.1f}%)")
    if "policy_ablation" in metrics:
        a = metrics["policy_ablation"]
        text += (f"  | {a['metric']} at equal GFLOPs: uniform frames {a['uniform_frames']:.1f}, random patches "
                 f"{a['random_patches']:.1f}, both {a['uniform_frames_random_patches']:.1f}; "
                 + (f"glance exit alone {a['glance_exit']:.1f}" if "glance_exit" in a else "no glance exit"))
    if "dynamics_ablation" in metrics:
        text += "  | " + policy_ablation.describe_dynamics(metrics["dynamics_ablation"])
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
    result = early_exit.evaluate_exits(rows["stages"].float(), exit_targets(rows, metric), flops,
                                       thresholds=thresholds.thresholds, criterion=thresholds.criterion, metric=metric)
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
        load_optimizer_state(optimizer, info.optimizer)
    if scaler is not None and info.extra.get("scaler"):
        scaler.load_state_dict(info.extra["scaler"])
    if info.extra.get("rng"):
        set_rng_state(info.extra["rng"])
    return info.epoch, info.best_metric, info.extra.get("best_epoch")


def save_run_checkpoint(path: str, model, optimizer, scaler, epoch: int, best, best_epoch, args) -> None:
    """Everything a resumed run needs: weights, optimizer, scaler, RNG states, configuration."""
    stage = {"stage": args.stage} if getattr(args, "stage", None) is not None else {}  # adafocus_v1's stages
    save_checkpoint(path, model, optimizer=optimizer.state_dict(),
                    scaler=scaler.state_dict() if scaler is not None else None, epoch=epoch, best_metric=best,
                    best_epoch=best_epoch, rng=rng_state(), config=plain_config(args), **stage)
