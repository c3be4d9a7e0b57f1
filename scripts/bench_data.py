"""Data-pipeline benchmark: clips per second per worker, our pipeline vs the official semantics.

    python -m scripts.bench_data                       # 360p JPEG frames generated in a temp folder
    python -m scripts.bench_data --data_dir D --dataset actnet --split val   # your extracted frames

Both pipelines read the same T0-frame clips (default 48) and run single-threaded, as a DataLoader
worker does (``torch.set_num_threads(1)``):

* ours: ``datasets.build_dataset`` items, uint8 ``(T0, 3, S, S)`` (normalisation happens on the device);
* official: a re-creation of the official data path from its description (docs/official-behaviour.md,
  "Data: list files, sampling, transforms"): PIL ``open().convert('RGB')`` per frame, multi-scale
  crop and resize per PIL image (train) or torchvision ``Resize`` + ``CenterCrop`` per PIL image (val),
  flip by ``transpose``, stacking to ``H×W×3T0`` with ``np.concatenate``, ``float().div(255)`` and a
  per-channel Python normalise loop.

The two are timed in alternating rounds and the median round is reported, so that load from other
processes affects both alike. ``--cpu_normalise`` adds our pipeline followed by a float
normalisation on the CPU, for reference.
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time

import numpy as np
import torch
import torchvision.transforms as T
from PIL import Image

from datasets import build_dataset
from datasets.frame_dataset import FrameFolderDataset
from datasets.sampling import segment_indices
from datasets.transforms import crop_size_pairs, default_scale_size, fixed_offsets

MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]


class OfficialStyle:
    """The official per-item work on the same records (PIL throughout, float output, normalised)."""

    def __init__(self, dataset: FrameFolderDataset):
        self.ds = dataset
        self.size = dataset.input_size
        self.scale = T.Resize(default_scale_size(self.size))
        self.centre = T.CenterCrop(self.size)

    def _crop(self, images):
        w, h = images[0].size
        crop_w, crop_h = random.choice(crop_size_pairs(w, h, self.size))
        x, y = random.choice(fixed_offsets(w, h, crop_w, crop_h))
        images = [im.crop((x, y, x + crop_w, y + crop_h)) for im in images]
        images = [im.resize((self.size, self.size), Image.BILINEAR) for im in images]
        if random.random() < 0.5:
            images = [im.transpose(Image.FLIP_LEFT_RIGHT) for im in images]
        return images

    def __getitem__(self, index):
        record = self.ds.records[index]
        n, t0 = record.num_frames, self.ds.num_segments
        if self.ds.train:
            indices = np.floor((np.arange(t0) + np.random.random(t0)) * n / t0).astype(int) + 1
        else:
            indices = segment_indices(n, t0)
        folder = self.ds.folder(record)
        images = [Image.open(os.path.join(folder, self.ds.template.format(int(i)))).convert("RGB") for i in indices]
        images = self._crop(images) if self.ds.train else [self.centre(self.scale(im)) for im in images]
        stacked = np.concatenate([np.array(im) for im in images], axis=2)
        tensor = torch.from_numpy(stacked).permute(2, 0, 1).contiguous().float().div(255)
        for channel, m, s in zip(tensor, MEAN * t0, STD * t0):
            channel.sub_(m).div_(s)
        return tensor, record.labels[0]


def normalise_on_cpu(item):
    video = item["video"].float().div_(255)
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return video.sub_(mean).div_(std)


def make_frames(root: str, videos: int, frames: int, width: int, height: int, quality: int) -> None:
    """Write an ActivityNet-layout folder of textured ``width×height`` JPEG videos."""
    rng = np.random.default_rng(0)
    os.makedirs(os.path.join(root, "frames"), exist_ok=True)
    lines = []
    for v in range(videos):
        name = f"video_{v:03d}"
        folder = os.path.join(root, "frames", name)
        os.makedirs(folder, exist_ok=True)
        coarse = rng.integers(0, 256, (height // 16, width // 16, 3), dtype=np.uint8)
        base = np.asarray(Image.fromarray(coarse).resize((width + 64, height), Image.BICUBIC)).astype(np.int16)
        for f in range(frames):
            shift = (f * 2) % 64                                          # slow pan
            grain = rng.integers(-12, 13, (height, width, 3), dtype=np.int16)
            frame = np.clip(base[:, shift:shift + width] + grain, 0, 255).astype(np.uint8)
            Image.fromarray(frame).save(os.path.join(folder, f"image_{f + 1:05d}.jpg"), quality=quality)
        lines.append(f"{name},{frames},{v % 2}")
    with open(os.path.join(root, "classInd.txt"), "w") as f:
        f.write("a\nb\n")
    for split in ("train", "val"):
        with open(os.path.join(root, f"actnet_{split}_split.txt"), "w") as f:
            f.write("\n".join(lines) + "\n")


def time_round(fn, indices) -> float:
    start = time.perf_counter()
    for i in indices:
        fn(i)
    return len(indices) / (time.perf_counter() - start)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data_dir", default=None, help="existing data dir (default: generate 360p frames)")
    p.add_argument("--dataset", default="actnet")
    p.add_argument("--split", default=None, choices=("train", "val"), help="default: both")
    p.add_argument("--num_segments", type=int, default=48)
    p.add_argument("--input_size", type=int, default=224)
    p.add_argument("--clips", type=int, default=8, help="clips per round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--videos", type=int, default=8, help="generated videos")
    p.add_argument("--frames", type=int, default=96, help="frames per generated video")
    p.add_argument("--size", default="640x360", help="generated frame size WxH")
    p.add_argument("--quality", type=int, default=90, help="generated JPEG quality")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 = like a DataLoader worker)")
    p.add_argument("--cpu_normalise", action="store_true", help="also time ours + float normalise on the CPU")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    random.seed(0)
    np.random.seed(0)

    tmp = None
    data_dir = args.data_dir
    if data_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="bench_data_")
        data_dir = tmp.name
        width, height = (int(v) for v in args.size.split("x"))
        started = time.perf_counter()
        make_frames(data_dir, args.videos, args.frames, width, height, args.quality)
        print(f"wrote {args.videos} videos x {args.frames} frames of {width}x{height} JPEG (q{args.quality}) "
              f"in {time.perf_counter() - started:.1f} s")
    print(f"T0={args.num_segments}, input {args.input_size}, torch threads {args.threads}, "
          f"{args.rounds} rounds x {args.clips} clips, median round reported")
    for split in ([args.split] if args.split else ["train", "val"]):
        ds = build_dataset(args.dataset, data_dir, split, num_segments=args.num_segments, input_size=args.input_size)
        official = OfficialStyle(ds)
        runs = {"ours (uint8)": lambda i: ds[i], "official-style (float, normalised)": lambda i: official[i]}
        if args.cpu_normalise:
            runs["ours + CPU normalise"] = lambda i: normalise_on_cpu(ds[i])
        rates = {name: [] for name in runs}
        for r in range(args.rounds + 1):
            indices = [(r * args.clips + k) % len(ds) for k in range(args.clips)]
            ds.set_epoch(r)
            for name, fn in runs.items():
                rate = time_round(fn, indices)
                if r:                                                    # round 0 warms the caches
                    rates[name].append(rate)
        medians = {name: statistics.median(v) for name, v in rates.items()}
        base = medians["official-style (float, normalised)"]
        print(f"[{split}]")
        for name, value in medians.items():
            print(f"  {name:38s} {value:7.2f} clips/s per worker   ({value / base:4.2f}x official)")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
