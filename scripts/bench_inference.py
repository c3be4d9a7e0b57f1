#!/usr/bin/env python
"""Benchmark of CPU evaluation: the inference copy (models.inference) against the plain model.

Builds a network of the ``--variant`` (default the main one, ``mn2_r50``: MobileNetV2 glance +
ResNet-50 focus, P = 128, T0 = 48 candidate frames, 16 glance + 16 focus frames at 224 px, 200
classes) with random weights in eval mode, and times the evaluation forward of

* ``plain``: the model as trained (what ``--plain_model`` runs);
* ``copy``: ``prepare_for_inference(model)``, what CPU evaluation runs by default (the model's own
  glance encoder and policy, so the same frames and patches; the focus encoder with BatchNorm folded,
  channels-last, at most 32 images per call);
* ``copy+bf16``: the copy with ``bf16_focus=True`` (``--bf16_focus``: the focus encoder under bfloat16
  autocast, the glance in float32) -- skipped, with the reason printed, on a CPU without native
  bfloat16 (AVX512-BF16 or AMX),

on the same uint8 batch, for each batch size of ``--batches`` (default 1 and 16). The sides alternate
within every repeat (forward order on even repeats, reversed on odd ones) so that a change in machine
load hits them alike. It prints, per batch size and side, the median seconds per batch and per video,
the ratio of each side's time to the plain model's (median of the per-repeat ratios), and, per side,
the growth of the time per video from the smallest to the largest batch (1.0 = flat: the plain
model's encoders see the whole batch at once, the copy's focus encoder sees chunks). Before timing it
prints how far each side's logits are from the plain model's and whether its frames and patches are
the plain model's.

Run from the repository root::

    OMP_WAIT_POLICY=PASSIVE python -m scripts.bench_inference                  # full size, B = 1 and 16
    OMP_WAIT_POLICY=PASSIVE python -m scripts.bench_inference --input_size 112 --patch_size 64 \\
        --num_segments 16 --num_glance_segments 8 --num_focus_segments 8 --batches 1 4 --repeats 2   # quick

**OMP_WAIT_POLICY.** OpenMP threads spin after each parallel region by default; on cores shared with
other work the spinning threads take the time slices the working ones need (2-thread runs measured up
to 5x slower). Set ``OMP_WAIT_POLICY=PASSIVE`` in the environment; when it is unset this script sets
it before torch loads (``ops.cpu.prefer_passive_omp_wait``), and prints the policy in effect. Both
sides run in one process under the same policy, threads (``--threads``) and allocator tuning
(``ops.cpu.tune_cpu_allocator``). On shared cores the absolute times vary by tens of percent between
runs; the ratios, measured side by side, vary less.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

from ops.cpu import cpu_name, prefer_passive_omp_wait, tune_cpu_allocator

prefer_passive_omp_wait()  # before torch loads OpenMP, which reads OMP_WAIT_POLICY once

import torch  # noqa: E402

from models import get_variant  # noqa: E402
from models.inference import bf16_support, prepare_for_inference  # noqa: E402


def build_model(args):
    variant = get_variant(args.variant)
    sizes = {k: getattr(args, k) for k in ("num_segments", "num_glance_segments", "num_focus_segments", "patch_size",
                                           "input_size") if k in variant.hyper_parameters}
    if "pretrained" in variant.hyper_parameters:
        sizes["pretrained"] = False
    return variant, variant.build(num_classes=args.num_classes, **sizes).eval()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m scripts.bench_inference", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", default="mn2_r50", help="mn2_r50 (default), tsm or x3d")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16], help="evaluation batch sizes (videos)")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (every side)")
    ap.add_argument("--repeats", type=int, default=3, help="timed forwards of each side per batch size")
    ap.add_argument("--warmup", type=int, default=1, help="untimed forwards of each side first")
    ap.add_argument("--num_classes", type=int, default=200)
    ap.add_argument("--patch_size", type=int, default=128)
    ap.add_argument("--input_size", type=int, default=224)
    ap.add_argument("--num_segments", type=int, default=48, help="T0")
    ap.add_argument("--num_glance_segments", type=int, default=16, help="T_G")
    ap.add_argument("--num_focus_segments", type=int, default=16, help="T_L")
    ap.add_argument("--no-bf16", dest="bf16", action="store_false", help="leave out the copy+bf16 side")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if min(args.batches) < 1 or args.repeats < 1:
        raise SystemExit("--batches and --repeats must be positive")

    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # random weights must not time denormal arithmetic
    tuned = tune_cpu_allocator()
    torch.manual_seed(args.seed)
    variant, model = build_model(args)
    sides = {"plain": model, "copy": prepare_for_inference(model)}
    reason = bf16_support() if args.bf16 else "left out (--no-bf16)"
    if reason is None:
        sides["copy+bf16"] = prepare_for_inference(model, bf16_focus=True)

    print(f"CPU evaluation, inference copy vs plain model: variant {variant.name}, C={args.num_classes}, "
          f"P={args.patch_size}, T0={model.num_segments}, T_G={model.num_glance}, T_L={model.num_focus}, "
          f"{model.input_size} px, random weights")
    print(f"conditions: torch {torch.__version__}, {cpu_name()}, {os.cpu_count()} CPUs (they may be shared with "
          f"other work), {args.threads} threads, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}, "
          f"allocator tuning {'on' if tuned else 'off'}, focus chunk of the copy {sides['copy'].focus_chunk} "
          f"images, {args.repeats} alternating repeats after {args.warmup} warm-up")
    if reason is not None:
        print(f"copy+bf16: skipped: {reason}")

    gen = torch.Generator().manual_seed(args.seed)
    results = {}  # (side, batch) -> [seconds per forward]
    for batch in args.batches:
        shape = (batch, model.num_segments, 3, model.input_size, model.input_size)
        video = torch.randint(0, 256, shape, generator=gen, dtype=torch.uint8)
        extra = {}
        if variant.frame_source == "separate":
            extra["glance"] = torch.randint(0, 256, (batch, model.num_glance) + shape[2:], generator=gen,
                                            dtype=torch.uint8)

        def forward(side):
            with torch.no_grad():
                return sides[side](video, **extra)

        reference = forward("plain")
        print(f"\nB={batch}: logits against the plain model's (max |logit| "
              f"{reference.exit_logits.abs().max().item():.3g}):")
        for side in sides:
            if side != "plain":
                out = forward(side)
                diff = (out.exit_logits - reference.exit_logits).abs().max().item()
                same = all(torch.equal(getattr(out, name), getattr(reference, name))
                           for name in ("focus_indices", "focus_actions"))
                print(f"  {side:10s} max |difference| {diff:.3g}, frames and patches "
                      f"{'identical' if same else 'DIFFERENT'}")
        for _ in range(max(0, args.warmup - 1)):  # the checks above were one warm-up forward each
            for side in sides:
                forward(side)
        order = list(sides)
        for r in range(args.repeats):
            for side in (order if r % 2 == 0 else order[::-1]):
                started = time.perf_counter()
                forward(side)
                results.setdefault((side, batch), []).append(time.perf_counter() - started)

    print(f"\n{'side':10s} {'B':>4s} {'s/batch':>9s} {'s/video':>9s} {'vs plain':>9s}   per-repeat times (s)")
    for batch in args.batches:
        plain = results[("plain", batch)]
        for side in sides:
            times = results[(side, batch)]
            ratio = statistics.median(t / p for t, p in zip(times, plain))
            print(f"{side:10s} {batch:4d} {statistics.median(times):9.3f} {statistics.median(times) / batch:9.4f} "
                  f"{ratio:8.3f}x   " + " ".join(f"{t:.3f}" for t in times))
    if len(args.batches) > 1:
        small, large = min(args.batches), max(args.batches)
        print(f"\ntime per video at B={large} / at B={small} (1.0 = flat):")
        for side in sides:
            per_video = {b: statistics.median(results[(side, b)]) / b for b in (small, large)}
            print(f"  {side:10s} {per_video[large] / per_video[small]:.3f}")
    print("\n(ratios < 1: faster than the plain model; each is the median over repeats of the paired ratio)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
