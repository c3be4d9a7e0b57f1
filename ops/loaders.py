"""The data of a run: each split's dataset from the flags, and the loaders that shard it over the processes.

Training shuffles with a ``DistributedSampler``; evaluation reads every video once over all processes
(:func:`build_eval_loader`), decoding only the frames the model reads where the variant allows
(:func:`frame_decoding_options`); early-exit thresholds are fitted on the training videos
(:func:`threshold_set_loader`).
"""
from __future__ import annotations

import math
from typing import Dict, Optional

import torch

from . import distributed as dist_ops
from .cli import loader_worker_init
from .packages import datasets, models, sibling
from .rng import epoch_seed


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
    (for :func:`ops.evaluation.evaluate`, which decodes the rest when the model needs it).
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
