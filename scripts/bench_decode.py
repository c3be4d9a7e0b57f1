#!/usr/bin/env python
"""Benchmark of selected-frame decoding (datasets/selected_frames.py): frames decoded and loader time per
video when evaluation decodes

* **all** — every one of the T0 candidate frames in the loader (``--decode_all_frames``, the previous path);
* **selected** — the T_G glance frames in the loader, then the T_L focus frames the policy selected that
  are not glance frames (the default evaluation of the main variant);
* **early exit** — the glance frames, then, step by step, the focus frame of each step a video takes
  before it exits (the adaptive runtime's ``before_focus`` calls: a video that leaves at the glance
  decodes no focus frame, one that leaves after k steps its first k focus frames).

Setting (defaults): the paper's P = 128 configuration, T0 = 48, T_G = 16, T_L = 16; ``--videos`` videos
of ``--frames`` 224 x 224 JPEG frames (smooth patterns plus noise, quality 90) written to a temp folder;
evaluation transform resize to 256 + centre crop 224, as the datasets do.

Focus frames: simulated (the decoding cost does not depend on the weights, but how many focus frames are
also glance frames does). ``--policy random`` (default): each video's T_L focus frames are distinct
positions drawn uniformly among the T0 (seeded), so T_L * T_G / T0 = 5.33 of them are glance frames on
average and a video decodes 16 + 16 - 5.33 = 26.7 of 48 frames (0.556); ``--policy disjoint``: none is a
glance frame, the bound (16 + 16) / 48 = 0.667. (A random-weight model's nearly uniform frame weights
pick exactly the glance frames, 16 / 48: not a useful stand-in.)

Exits: the geometric distribution q_k ∝ p^k over the K = T_L + 1 stages whose expected cost under the
model's FLOPs table (``models.flops`` on ``UniAdaFocus(num_classes=200, patch_size=128)``) is
``--budget`` GFLOPs (default 18.1, the paper's early-exit figure for ActivityNet at P = 128; all 16
steps cost 27.2); p by bisection. A video that exits at stage k decodes ``|glance ∪ focus[:k]|`` files,
so the expected fraction is ``sum_k q_k E|glance ∪ focus[:k]| / T0``; it is printed next to the
batch's own, whose stages are the (i + 0.5)/N quantiles of q, shuffled (seeded).

Timing: single-threaded decoding work per video, with ``torch.set_num_threads(1)`` and a one-thread
feed: the **loader** part (the dataset items and their collation: what the workers do) and the
**main** part (the feed's decoding after the policy), each as CPU time of the process (all threads:
the decoding work, little disturbed by other processes on shared cores) and as wall time. The three
sides run in alternating order for ``--repeats`` rounds after a warm-up round (which also brings the
files into the page cache); medians are reported, and the ratio to the all-frames side is the median
of the per-round ratios. ``--gpu_decode --device cuda`` times the
device-decode path instead (the loader reads the bytes, the feed decodes on the GPU).

    python -m scripts.bench_decode
    python -m scripts.bench_decode --policy disjoint --videos 32 --repeats 5
"""
from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP (see scripts/bench_adaptive.py)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from datasets import FrameFeed, build_dataset, collate_items  # noqa: E402
from models import UniAdaFocus  # noqa: E402
from models.flops import flops_breakdown  # noqa: E402
from models.frame_selection import glance_frame_indices  # noqa: E402
from ops.early_exit import geometric_exit_distribution, geometric_p_for_cost, quantile_exit_stages  # noqa: E402


def write_videos(root: str, videos: int, frames: int, width: int, height: int, seed: int) -> None:
    """An ActivityNet-layout data folder of ``videos`` x ``frames`` JPEG frames."""
    os.makedirs(os.path.join(root, "frames"))
    with open(os.path.join(root, "classInd.txt"), "w") as f:
        f.write("a\nb\n")
    y, x = np.mgrid[0:height, 0:width]
    lines = []
    for v in range(videos):
        folder = os.path.join(root, "frames", f"video{v:03d}")
        os.makedirs(folder)
        rng = np.random.default_rng(seed + v)
        for i in range(1, frames + 1):
            phase = 0.05 * i + v
            image = np.stack([128 + 80 * np.sin(x / (11 + 3 * c) + y / (17 + c) + phase) for c in range(3)], -1)
            image = np.clip(image + rng.normal(0, 12, image.shape), 0, 255).astype(np.uint8)
            Image.fromarray(image).save(os.path.join(folder, f"image_{i:05d}.jpg"), quality=90)
        lines.append(f"video{v:03d},{frames},{v % 2}\n")
    with open(os.path.join(root, "actnet_val_split.txt"), "w") as f:
        f.writelines(lines)


def simulated_focus(videos: int, t0: int, num_focus: int, glance: np.ndarray, policy: str,
                    rng: np.random.Generator) -> torch.Tensor:
    """(N, T_L) increasing focus positions per video (see the module doc)."""
    pool = np.arange(t0) if policy == "random" else np.setdiff1d(np.arange(t0), glance)
    if len(pool) < num_focus:
        raise SystemExit(f"--policy {policy}: fewer than T_L = {num_focus} positions to choose from")
    return torch.from_numpy(np.stack([np.sort(rng.choice(pool, num_focus, replace=False)) for _ in range(videos)]))


def union_sizes(glance: np.ndarray, focus: torch.Tensor) -> np.ndarray:
    """(N, T_L + 1): frames a video decodes when it exits at stage k, |glance ∪ focus[:k]| (distinct files)."""
    out = np.empty((focus.shape[0], focus.shape[1] + 1), dtype=np.int64)
    for v, row in enumerate(focus.tolist()):
        seen = set(glance.tolist())
        out[v, 0] = len(seen)
        for k, position in enumerate(row, 1):
            seen.add(position)
            out[v, k] = len(seen)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m scripts.bench_decode", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", type=int, default=24, help="videos N")
    ap.add_argument("--frames", type=int, default=120, help="frames per video")
    ap.add_argument("--width", type=int, default=224)
    ap.add_argument("--height", type=int, default=224)
    ap.add_argument("--batch", type=int, default=8, help="videos per batch")
    ap.add_argument("--num_segments", type=int, default=48, help="T0")
    ap.add_argument("--num_glance_segments", type=int, default=16, help="T_G")
    ap.add_argument("--num_focus_segments", type=int, default=16, help="T_L")
    ap.add_argument("--patch_size", type=int, default=128, help="P (FLOPs table of the exit distribution)")
    ap.add_argument("--budget", type=float, default=18.1, help="mean GFLOPs of the exit distribution")
    ap.add_argument("--policy", choices=("random", "disjoint"), default="random",
                    help="simulated focus frames: uniform among T0, or never a glance frame")
    ap.add_argument("--repeats", type=int, default=3, help="timed rounds (after one warm-up round)")
    ap.add_argument("--device", default="cpu", help="where the feed's video lives (cpu or cuda)")
    ap.add_argument("--gpu_decode", action="store_true", help="decode JPEG bytes on --device (cuda)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda given, but CUDA is not available")
    if args.gpu_decode and device.type != "cuda":
        raise SystemExit("--gpu_decode decodes on a CUDA device: pass --device cuda")
    torch.set_num_threads(1)
    t0, num_glance, num_focus = args.num_segments, args.num_glance_segments, args.num_focus_segments

    model = UniAdaFocus(num_classes=200, num_segments=t0, num_glance_segments=num_glance,
                        num_focus_segments=num_focus, patch_size=args.patch_size).eval()
    flops = torch.tensor(flops_breakdown(model).stages(), dtype=torch.float64)
    del model
    try:  # the geometric exit distribution whose mean cost is the budget
        p = geometric_p_for_cost(flops, args.budget)
    except ValueError as exc:
        raise SystemExit(f"--budget: {exc}") from None
    q = geometric_exit_distribution(p, flops.numel()).double()
    glance = glance_frame_indices(t0, num_glance)[0].numpy()
    rng = np.random.default_rng(args.seed)
    focus = simulated_focus(args.videos, t0, num_focus, glance, args.policy, rng)  # (N, T_L)
    stages = quantile_exit_stages(q, args.videos, torch.Generator().manual_seed(args.seed))  # (N,)
    sizes = union_sizes(glance, focus)  # (N, K)
    expected_decoded = float((torch.from_numpy(sizes.mean(0)).double() * q).sum())

    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    with tempfile.TemporaryDirectory(prefix="bench_decode_") as root:
        write_videos(root, args.videos, args.frames, args.width, args.height, args.seed)
        common = dict(num_segments=t0, input_size=224)
        all_set = build_dataset("actnet", root, "val", **common,
                                **({"jpeg_bytes": True} if args.gpu_decode else {}))
        selected_set = build_dataset("actnet", root, "val", decode_positions=glance.tolist(),
                                     jpeg_bytes=args.gpu_decode, **common)
        batches = [list(range(s, min(s + args.batch, args.videos))) for s in range(0, args.videos, args.batch)]

        def clocks():
            return np.array([time.perf_counter(), time.process_time()])  # wall, CPU of every thread

        def run(side: str):
            """(loader (wall, CPU) seconds, main (wall, CPU) seconds, frames decoded per video (N,)) of
            decoding every video once."""
            dataset = all_set if side == "all" else selected_set
            loader_s = main_s = np.zeros(2)
            decoded = []
            with FrameFeed(dataset, device, threads=1) if dataset.deferred else contextlib.nullcontext() as feed:
                for rows in batches:
                    started = clocks()
                    batch = collate_items([dataset[i] for i in rows])
                    loader_s = loader_s + clocks() - started
                    started = clocks()
                    if feed is None:
                        batch["video"].to(device)
                        decoded += [len(np.unique(all_set.frame_indices(i))) for i in rows]
                    else:
                        part = feed.batch(batch)  # the loader's frames (on the device with --gpu_decode)
                        chosen = focus[rows]
                        if side == "all":
                            pass
                        elif side == "selected":
                            part.require(chosen)
                        else:  # early exit: step k for the videos still running, as the adaptive runtime asks
                            running = torch.arange(len(rows))
                            for k in range(num_focus):
                                running = running[stages[rows][running] > k]
                                if not running.numel():
                                    break
                                part.require(chosen[running, k:k + 1], running)
                        decoded += part.decoded.tolist()
                    sync()
                    main_s = main_s + clocks() - started
            return loader_s, main_s, np.array(decoded, dtype=np.float64)

        sides = ("all", "selected", "early exit")
        times = {side: [] for side in sides}
        counts = {}
        for r in range(args.repeats + 1):  # round 0 warms up
            order = sides if r % 2 == 0 else sides[::-1]
            for side in order:
                loader_s, main_s, decoded = run(side)
                counts[side] = decoded
                if r:
                    times[side].append((loader_s, main_s))

    n = args.videos
    print(f"selected-frame decoding: T0={t0}, T_G={num_glance}, T_L={num_focus}, P={args.patch_size}; {n} videos of "
          f"{args.frames} {args.width}x{args.height} JPEG frames, batches of {args.batch}; device {device}"
          f"{' (decoding on the device)' if args.gpu_decode else ''}; 1 thread; focus frames: --policy {args.policy}")
    print("FLOPs table (GFLOPs, stage k = after k focus frames): " + " ".join(f"{f:.2f}" for f in flops.tolist()))
    print(f"exit distribution: geometric p = {p:.5f}, mean {float((q * flops).sum()):.3f} GFLOPs "
          f"(budget {args.budget}); mean exit step {float((q * torch.arange(q.numel())).sum()):.2f} of {num_focus}")
    print("  q = " + " ".join(f"{v:.3f}" for v in q.tolist()))
    exits = torch.bincount(stages, minlength=q.numel())
    print(f"  this batch's exits per stage: {exits.tolist()} (mean {float(flops[stages].mean()):.3f} GFLOPs)")
    print("frames decoded when exiting at stage k (mean over the videos): "
          + " ".join(f"{v:.1f}" for v in sizes.mean(0).tolist()))
    print(f"expected with the exit distribution: sum_k q_k E|glance ∪ focus[:k]| = {expected_decoded:.2f} frames "
          f"= {expected_decoded / t0:.3f} of T0\n")
    for clock, c in (("CPU time (all threads)", 1), ("wall time", 0)):
        print(f"{clock}, ms per video, medians of {args.repeats} rounds; ratio: the median over the rounds of "
              f"(side / all) within a round")
        print(f"  {'side':12s} {'frames/video':>12s} {'fraction':>9s} {'loader':>8s} {'main':>8s} {'total':>8s} "
              f"{'ratio':>6s}")
        for side in sides:
            loader_ms = 1e3 * statistics.median(lo[c] for lo, _ in times[side]) / n
            main_ms = 1e3 * statistics.median(mn[c] for _, mn in times[side]) / n
            total_ms = 1e3 * statistics.median(lo[c] + mn[c] for lo, mn in times[side]) / n
            ratio = statistics.median((lo[c] + mn[c]) / (a_lo[c] + a_mn[c])
                                      for (lo, mn), (a_lo, a_mn) in zip(times[side], times["all"]))
            frames = counts[side].mean()
            print(f"  {side:12s} {frames:12.2f} {frames / t0:9.3f} {loader_ms:8.2f} {main_ms:8.2f} {total_ms:8.2f} "
                  f"{ratio:6.3f}")
    print("fraction: frames decoded / T0; loader: the items and their collation (the workers' share); main: "
          "the feed's decoding after the policy")
    return 0


if __name__ == "__main__":
    sys.exit(main())
