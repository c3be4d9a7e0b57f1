"""GPU throughput: training and evaluation videos/s of the main variant, float32 against the fast settings,
and the data loader's clips/s.

    python -m scripts.bench_gpu                          # model: fp32 vs fast, alternated rounds
    python -m scripts.bench_gpu --sides fast compile     # torch.compile'd encoders against the fast settings
    python -m scripts.bench_gpu --loader                 # JPEG frame folders -> pinned batches on the GPU
    python -m scripts.bench_gpu --device cpu --tiny      # the same code on a CPU at toy sizes (a smoke run)
    python -m scripts.bench_gpu --device cpu --config configs/synthetic.yaml --sides fp32 channels_last --batch 16
                                                         # a preset's sizes: the main job's CPU layout choice
    python -m scripts.bench_gpu --device cpu --config configs/synthetic.yaml --sides channels_last adamw_loop \
        --batch 16                                       # the same, fused AdamW against its per-tensor loop

**Model.** ``mn2_r50`` at the official ActivityNet size (P = 128, T0 = 48, T_G = T_L = 16, 224-px frames,
200 classes, MobileNetV2 + ResNet-50), random weights, built by ``ops.build.build_model`` from main.py's
flags exactly as a run builds it. The input is synthetic uint8 videos already on the device (the loader
is measured on its own). A training round is one ``ops.training.train_one_epoch`` of ``--steps`` steps over
the same batch of ``--batch`` videos (the run's objective, optimizer and gradient scaler, at learning rate 0 so
that every round computes the same thing); an evaluation round is ``--eval_iters`` evaluation forwards of
``--eval_batch`` videos under the side's evaluation autocast (the forward only: no metrics).

Sides (main.py's flags)::

    fp32      --no-channels_last --no-cudnn_benchmark       (float32, as runs were before these flags)
    channels_last  --channels_last --no-cudnn_benchmark  (float32, channels-last encoders only)
    fast      --amp --amp_dtype bfloat16 --eval_amp --channels_last --cudnn_benchmark
    compile   the fast flags and --compile
    adamw_loop     the channels_last flags and --no-fused_adamw (AdamW's per-tensor loop; with an AdamW
                   preset on a CPU, against channels_last, whose AdamW is fused there)

On a CPU, glibc's allocator is tuned first, as ``main.py`` tunes it for a CPU run
(``ops.cpu.tune_cpu_allocator``), so that both sides allocate as a run does.

Every side is built and warmed up first (cuDNN's algorithm search, compilation: the warm-up seconds are
reported); then the sides are timed in alternating rounds, each under its own settings, with the device
synchronised around every round, so that a change of load hits all sides alike. The median round is
reported, with the ratio of every side to the first. ``--max_seconds`` stops adding rounds (at least one
is timed). On CUDA the script also counts the host synchronisations of a training step outside the print
steps (``torch.cuda.set_sync_debug_mode``: two epochs of different lengths, the difference per step).

**Loader.** ``--videos`` JPEG frame folders (``--frames`` frames of ``--frame_size``, listed ``--repeat``
times each) are written to a temporary ActivityNet-layout folder, and the training loader of
``ops.loaders.build_loaders`` reads them with ``--workers`` workers (default: every CPU) and pinned memory;
batches are copied to the device with ``non_blocking``. Clips/s are counted over ``--loader_seconds``
after the first round of batches (the workers' start). The frames have just been written, so they are
read from the page cache: this is the decoding and augmentation rate, not the disk's.

``--json FILE`` writes the figures (``scripts/gpu_check.py`` reads it).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import traceback
import warnings
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Dict, List, Optional

import numpy as np
import torch
from PIL import Image

from ops import build, config, device_setup, loaders, training
from ops import distributed as dist_ops
from ops.cpu import tune_cpu_allocator
from ops.run_log import RunLog

#: main.py's flags of each side (see the module docstring).
SIDES = {
    "fp32": ["--no-channels_last", "--no-cudnn_benchmark"],
    "channels_last": ["--channels_last", "--no-cudnn_benchmark"],
    "fast": ["--amp", "--amp_dtype", "bfloat16", "--eval_amp", "--channels_last", "--cudnn_benchmark"],
    "adamw_loop": ["--channels_last", "--no-cudnn_benchmark", "--no-fused_adamw"],
    "compile": ["--amp", "--amp_dtype", "bfloat16", "--eval_amp", "--channels_last", "--cudnn_benchmark",
                "--compile"],
}
#: The model: main.py's defaults are the official ActivityNet sizes but P (96); the benchmark's P is 128.
MODEL_FLAGS = ["--variant", "mn2_r50", "--patch_size", "128", "--no-pretrained", "--lr", "0"]
TINY_FLAGS = ["--variant", "mn2_r50", "--num_segments", "8", "--num_glance_segments", "4", "--num_focus_segments", "4",
              "--input_size", "64", "--patch_size", "32", "--focus_arch", "resnet18", "--classifier_dim", "32",
              "--stn_hidden_dim", "16", "--temporal_hidden_dim", "8", "--no-pretrained", "--lr", "0"]
NUM_CLASSES = 200


def log_line(text: str) -> None:
    print(text, flush=True)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _NoEpochs:
    def set_epoch(self, epoch: int) -> None:
        pass


class DeviceBatches:
    """A training loader stand-in: the same device-resident batch, ``steps`` times per epoch."""

    def __init__(self, batch: Dict[str, torch.Tensor], steps: int):
        self.batch, self.steps = batch, steps
        self.sampler = self.dataset = _NoEpochs()

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        return (self.batch for _ in range(self.steps))

    @property
    def videos(self) -> int:
        return self.steps * self.batch["label"].shape[0]


@dataclass
class Side:
    """One configuration under test: its flags, model, objective, optimizer and scaler."""

    name: str
    args: argparse.Namespace
    info: dist_ops.DistInfo
    settings: device_setup.DeviceSettings
    model: torch.nn.Module
    objective: object
    optimizer: torch.optim.Optimizer
    scaler: Optional[torch.amp.GradScaler]
    warmup_s: float = 0.0


def build_side(name: str, model_flags: List[str], device: torch.device) -> Side:
    args = config.parse_args(model_flags + SIDES[name] + ["--device", device.type, "--dataset", "actnet"])
    info = dist_ops.DistInfo(device=device)
    torch.manual_seed(0)  # the same random weights on every side
    model = build.build_model(args, NUM_CLASSES, info)
    settings = device_setup.device_settings(args, info)
    if settings.compile:
        device_setup.compile_encoders(model)
    return Side(name, args, info, settings, model, build.build_objective(args), build.build_optimizer(args, model),
                build.build_scaler(args, info))


def train_round(side: Side, loader: DeviceBatches, epoch: int, log: RunLog) -> float:
    """Videos/s of one training epoch of ``loader``."""
    device_setup.apply_device_settings(side.settings)
    side.args.print_freq = loader.steps  # print steps: the first and the last
    synchronize(side.info.device)
    started = time.perf_counter()
    training.train_one_epoch(side.model, side.objective, loader, side.optimizer, side.scaler, epoch, side.args,
                             side.info, log)
    synchronize(side.info.device)
    return loader.videos / (time.perf_counter() - started)


@torch.no_grad()
def eval_round(side: Side, video: torch.Tensor, iters: int) -> float:
    """Videos/s of ``iters`` evaluation forwards of ``video``."""
    device_setup.apply_device_settings(side.settings)
    side.model.eval()
    synchronize(side.info.device)
    started = time.perf_counter()
    with device_setup.autocast(side.args, side.info.device, training=False):
        for _ in range(iters):
            side.model(video)
    synchronize(side.info.device)
    return iters * video.shape[0] / (time.perf_counter() - started)


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def sync_site(stack: List[traceback.FrameSummary]) -> str:
    """Where a synchronising call was made: the innermost frame of this repository's code (this script
    excluded), and the innermost frame outside the warnings machinery when that one is elsewhere (a library)."""
    frames = [f for f in stack if not f.filename.endswith(("warnings.py", "bench_gpu.py"))]
    ours = [f for f in frames if os.path.abspath(f.filename).startswith(REPO + os.sep)]
    site = ours[-1] if ours else (frames[-1] if frames else None)
    if site is None:
        return "unknown"
    text = f"{os.path.relpath(site.filename, REPO) if ours else site.filename}:{site.lineno} ({(site.line or '').strip()})"
    if ours and frames and frames[-1] is not site:
        text += f" -> {os.path.basename(frames[-1].filename)}:{frames[-1].lineno} ({(frames[-1].line or '').strip()})"
    return text


def syncs_per_training_step(side: Side, batch: Dict[str, torch.Tensor], log: RunLog, lengths=(2, 6)) -> Dict:
    """Host synchronisations per training step outside the print steps (CUDA's sync debug mode reports them;
    two epochs of ``lengths`` steps read their values at the same two print steps): ``count`` per step, and
    ``sites``, the calls that synchronised, each with its count per step."""
    counts, sites = [], []
    for steps in lengths:
        loader = DeviceBatches(batch, steps)
        side.args.print_freq = steps
        seen: Counter = Counter()

        def record(message, category, filename, lineno, file=None, line=None):
            if "synchroniz" in str(message):
                seen[sync_site(traceback.extract_stack()[:-1])] += 1

        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = record
            torch.cuda.set_sync_debug_mode("warn")
            try:
                training.train_one_epoch(side.model, side.objective, loader, side.optimizer, side.scaler, 0, side.args,
                                         side.info, log)
            finally:
                torch.cuda.set_sync_debug_mode(0)
        counts.append(sum(seen.values()))
        sites.append(seen)
    per_step = lengths[1] - lengths[0]
    extra = {site: (sites[1][site] - sites[0][site]) / per_step for site in sites[1]}
    return {"count": (counts[1] - counts[0]) / per_step,
            "sites": dict(sorted(((k, v) for k, v in extra.items() if v), key=lambda kv: -kv[1]))}


def model_benchmark(opts, device: torch.device) -> Dict:
    model_flags = TINY_FLAGS if opts.tiny else MODEL_FLAGS
    if opts.config:  # a preset's sizes and optimiser; the side's flags still decide the speed settings
        model_flags = ["--config", opts.config, "--no-pretrained", "--lr", "0"]
    log = RunLog(tempfile.gettempdir(), enabled=False)
    probe = config.parse_args(model_flags + ["--device", device.type])
    t0, size = probe.num_segments, probe.input_size
    g = torch.Generator().manual_seed(0)
    train_batch = {"video": torch.randint(0, 256, (opts.batch, t0, 3, size, size), generator=g, dtype=torch.uint8),
                   "label": torch.randint(0, NUM_CLASSES, (opts.batch,), generator=g)}
    train_batch = {k: v.to(device) for k, v in train_batch.items()}
    eval_video = torch.randint(0, 256, (opts.eval_batch, t0, 3, size, size), generator=g, dtype=torch.uint8).to(device)
    config_text = ((f"{opts.config}: " if opts.config else "")
                   + f"mn2_r50, P={probe.patch_size}, T0={t0}, T_G={probe.num_glance_segments}, "
                   f"T_L={probe.num_focus_segments}, {size} px, {NUM_CLASSES} classes; training batch {opts.batch} x "
                   f"{opts.steps} steps, evaluation batch {opts.eval_batch} x {opts.eval_iters}")
    log_line(f"model benchmark on {device}: {config_text}")

    sides = []
    for name in opts.sides:
        started = time.perf_counter()
        side = build_side(name, model_flags, device)
        train_round(side, DeviceBatches(train_batch, opts.warmup_steps), 0, log)
        eval_round(side, eval_video, 2)
        side.warmup_s = time.perf_counter() - started
        log_line(f"  {name}: built and warmed up in {side.warmup_s:.1f} s ({side.settings.describe()})")
        sides.append(side)

    rates = {side.name: {"train": [], "eval": []} for side in sides}
    started = time.perf_counter()
    for r in range(opts.rounds):
        for side in sides:
            rates[side.name]["train"].append(train_round(side, DeviceBatches(train_batch, opts.steps), r + 1, log))
            rates[side.name]["eval"].append(eval_round(side, eval_video, opts.eval_iters))
        log_line(f"  round {r + 1}: " + ", ".join(f"{s.name} train {rates[s.name]['train'][-1]:.1f} / eval "
                                                  f"{rates[s.name]['eval'][-1]:.1f} videos/s" for s in sides))
        if time.perf_counter() - started > opts.max_seconds:
            break

    first = sides[0].name
    result = {"config": config_text, "device": str(device), "sides": {}, "ratios": {},
              "tf32": {"cudnn": torch.backends.cudnn.allow_tf32, "matmul": torch.backends.cuda.matmul.allow_tf32}}
    for side in sides:
        medians = {phase: statistics.median(values) for phase, values in rates[side.name].items()}
        group = side.optimizer.param_groups[0]
        optimizer = type(side.optimizer).__name__ + (" (fused)" if group.get("fused") else "")
        result["sides"][side.name] = {"flags": SIDES[side.name], "settings": side.settings.describe(),
                                      "optimizer": optimizer,
                                      "warmup_s": side.warmup_s, "train_videos_per_s": medians["train"],
                                      "eval_videos_per_s": medians["eval"], "rounds": rates[side.name]}
        if side.name != first:
            result["ratios"][f"{side.name}/{first}"] = {
                phase: medians[phase] / result["sides"][first][f"{phase}_videos_per_s"] for phase in ("train", "eval")}
    if device.type == "cuda" and opts.count_syncs:
        side = sides[-1]
        try:
            result["syncs_per_training_step"] = {"side": side.name,
                                                 **syncs_per_training_step(side, train_batch, log)}
        except Exception as exc:  # a diagnostic: its failure must not cost the figures above
            result["syncs_per_training_step"] = {"side": side.name, "error": f"{type(exc).__name__}: {exc}"}
    log_line(f"median of {len(rates[first]['train'])} round(s):")
    for side in sides:
        figures = result["sides"][side.name]
        ratio = result["ratios"].get(f"{side.name}/{first}")
        log_line(f"  {side.name:8s} train {figures['train_videos_per_s']:8.1f} videos/s   eval "
                 f"{figures['eval_videos_per_s']:8.1f} videos/s"
                 + (f"   ({ratio['train']:.2f}x / {ratio['eval']:.2f}x {first})" if ratio else ""))
    syncs = result.get("syncs_per_training_step")
    if syncs:
        log_line(f"  host synchronisations per training step outside the print steps ({syncs['side']}): "
                 f"{syncs.get('count', syncs.get('error'))}")
        for site, count in syncs.get("sites", {}).items():
            log_line(f"    {count:g} per step at {site}")
    return result


# --------------------------------------------------------------------------------------------------
# Loader
# --------------------------------------------------------------------------------------------------
def _write_video(folder: str, frames: int, width: int, height: int, seed: int) -> None:
    """One textured, slowly panning video as JPEG frames ``image_00001.jpg`` ... (quality 90)."""
    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    coarse = rng.integers(0, 256, (max(2, height // 16), max(2, width // 16), 3), dtype=np.uint8)
    base = np.asarray(Image.fromarray(coarse).resize((width + 64, height), Image.BICUBIC)).astype(np.int16)
    for f in range(frames):
        shift = (2 * f) % 64
        grain = rng.integers(-12, 13, (height, width, 3), dtype=np.int16)
        frame = np.clip(base[:, shift:shift + width] + grain, 0, 255).astype(np.uint8)
        Image.fromarray(frame).save(os.path.join(folder, f"image_{f + 1:05d}.jpg"), quality=90)


def write_frame_folders(root: str, videos: int, frames: int, width: int, height: int, repeat: int,
                        workers: int) -> None:
    """An ActivityNet-layout data folder of ``videos`` JPEG videos, each listed ``repeat`` times."""
    names = [f"video_{v:03d}" for v in range(videos)]
    with ProcessPoolExecutor(max_workers=max(1, workers)) as pool:
        list(pool.map(_write_video, [os.path.join(root, "frames", n) for n in names], [frames] * videos,
                      [width] * videos, [height] * videos, range(videos)))
    with open(os.path.join(root, "classInd.txt"), "w") as f:
        f.write("a\nb\n")
    lines = "".join(f"{name},{frames},{v % 2}\n" for _ in range(repeat) for v, name in enumerate(names))
    for split in ("train", "val"):
        with open(os.path.join(root, f"actnet_{split}_split.txt"), "w") as f:
            f.write(lines)


def loader_benchmark(opts, device: torch.device) -> Dict:
    workers = opts.workers or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())
    width, height = (int(v) for v in opts.frame_size.split("x"))
    root = tempfile.mkdtemp(prefix="bench_gpu_frames_")
    try:
        started = time.perf_counter()
        write_frame_folders(root, opts.videos, opts.frames, width, height, opts.repeat, workers)
        log_line(f"loader benchmark on {device}: wrote {opts.videos} videos x {opts.frames} JPEG frames of "
                 f"{width}x{height} in {time.perf_counter() - started:.1f} s")
        size_flags = TINY_FLAGS if opts.tiny else MODEL_FLAGS
        args = config.parse_args(["--dataset", "actnet", "--data_dir", root, "--workers", str(workers),
                                  "--batch_size", str(opts.batch), "--device", device.type, "--no-pretrained"]
                                 + size_flags)
        info = dist_ops.DistInfo(device=device)
        _, loader, _, _ = loaders.build_loaders(args, info)
        clips, timed_from, epoch, seen = 0, None, 0, 0
        while True:
            loader.sampler.set_epoch(epoch)
            loader.dataset.set_epoch(epoch)
            for batch in loader:
                video = batch["video"].to(device, non_blocking=True)
                seen += 1
                if seen == workers:  # the workers' first batches are in: steady state from here
                    synchronize(device)
                    timed_from = time.perf_counter()
                elif timed_from is not None:
                    clips += video.shape[0]
                if timed_from is not None and time.perf_counter() - timed_from > opts.loader_seconds and clips:
                    break
            else:
                epoch += 1
                continue
            break
        synchronize(device)
        elapsed = time.perf_counter() - timed_from
        result = {"clips_per_s": clips / elapsed, "clips": clips, "seconds": elapsed, "workers": workers,
                  "batch": opts.batch, "pin_memory": loader.pin_memory,
                  "clip": f"T0={args.num_segments} frames at {args.input_size} px (training transforms) from "
                          f"{width}x{height} JPEG"}
        log_line(f"  {result['clips_per_s']:.1f} clips/s with {workers} workers ({clips} clips in {elapsed:.1f} s, "
                 f"pin_memory={loader.pin_memory})")
        return result
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m scripts.bench_gpu", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--tiny", action="store_true", help="toy sizes (a smoke run of the code, e.g. on a CPU)")
    p.add_argument("--loader", action="store_true", help="benchmark the data loader instead of the model")
    p.add_argument("--config", default=None, help="model: a preset's sizes (e.g. configs/synthetic.yaml) instead of "
                                                  "the official ActivityNet ones")
    p.add_argument("--sides", nargs="+", choices=sorted(SIDES), default=["fp32", "fast"],
                   help="configurations to compare (ratios are to the first)")
    p.add_argument("--batch", type=int, default=8, help="training videos per step (the official 32 over 4 GPUs)")
    p.add_argument("--steps", type=int, default=10, help="training steps per round")
    p.add_argument("--warmup_steps", type=int, default=3)
    p.add_argument("--eval_batch", type=int, default=16, help="evaluation videos per forward")
    p.add_argument("--eval_iters", type=int, default=10, help="evaluation forwards per round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--max_seconds", type=float, default=90.0, help="stop adding rounds after this long")
    p.add_argument("--no-count_syncs", dest="count_syncs", action="store_false",
                   help="skip counting the host synchronisations of a training step (CUDA)")
    p.add_argument("--workers", type=int, default=0, help="loader workers (0: every CPU)")
    p.add_argument("--videos", type=int, default=32, help="loader: videos written")
    p.add_argument("--frames", type=int, default=56, help="loader: frames per video")
    p.add_argument("--frame_size", default="640x360", help="loader: JPEG frame size WxH (360 px short side, as "
                                                           "the official extraction)")
    p.add_argument("--repeat", type=int, default=16, help="loader: times each video is listed")
    p.add_argument("--loader_seconds", type=float, default=20.0, help="loader: seconds counted")
    p.add_argument("--json", default=None, help="write the figures to this file")
    opts = p.parse_args(argv)
    if opts.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available (pass --device cpu for a smoke run)")
    if opts.config and opts.tiny:
        raise SystemExit("--config and --tiny both choose the model's sizes: pass one of them")
    device = torch.device(opts.device, 0) if opts.device == "cuda" else torch.device("cpu")
    if device.type == "cpu":  # as main.py does for a CPU run
        tune_cpu_allocator()
    result = loader_benchmark(opts, device) if opts.loader else model_benchmark(opts, device)
    if opts.json:
        with open(opts.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
