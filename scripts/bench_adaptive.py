#!/usr/bin/env python
"""Benchmark of the adaptive early-exit runtime (ops.early_exit.adaptive) against the full forward.

Builds the official-size model (``UniAdaFocus(num_classes=200, patch_size=128)``: 48 frames, 16
glance + 16 focus steps, MobileNetV2 + ResNet-50; random weights, eval mode), takes an exit
distribution over the K = 17 stages and forces a batch of B videos to exit according to it, then
times, on the same batch and thread count, after a warm-up:

* the full forward (all 32 exits, what the post-hoc simulation needs), and
* the adaptive run (stage 0, then the policy and one focus step at a time for the videos still
  running; see ops/early_exit/adaptive.py),

alternating the two so that a change in machine load hits both alike, and prints the measured
speed-up next to the speed-up the FLOPs predict::

    predicted = FLOPs(stage K-1) / sum_k q_k FLOPs(k)           (the model's measured FLOPs table)
    measured  = median time of the full forward / median time of the adaptive run
    ratio     = measured / predicted                             (target >= 0.9)

The default distribution is the one of the official 18.1-GFLOPs budget: the geometric distribution
q_k ∝ p^k (``ops.early_exit.geometric_exit_distribution``) whose expected cost under the model's
measured FLOPs table is 18.1 GFLOPs (p found by bisection). ``--p`` or ``--distribution`` give
another one.

How exits are forced: video i gets the stage of quantile (i + 0.5) / B of the distribution (so the
batch follows it as closely as B allows; the batch's own mean GFLOPs and predicted speed-up are
printed too), the stages are shuffled over the batch (seeded), and the runner is called with
``forced_exits`` (``AdaptiveRunner.run``): every stage still computes its exit logits and criterion
exactly as in a threshold run, but the decision is taken from the assignment, so the measured work
does not depend on what random weights predict. Before timing, the adaptive logits are checked
against the full pass's stage logits.

Run from the repository root::

    python -m scripts.bench_adaptive                           # B=48, 2 threads, 18.1-GFLOPs budget
    python -m scripts.bench_adaptive --batch 16 --repeats 3
    python -m scripts.bench_adaptive --device cuda --batch 64  # on a GPU (autocast with --amp)

Both paths run the inference copy of the model (``models.inference.prepare_for_inference``: the
model's own glance encoder and policy; the focus encoder with BatchNorm folded, channels-last, at
most 32 patches per call on a CPU)
with glibc's allocator tuned to reuse freed activations (``ops.cpu.tune_cpu_allocator``); ``--plain``
times the training-layout model instead.

Reading the figures on a CPU (2-core EPYC, torch 2.14.1): the FLOPs table prices a glance frame
(MobileNetV2, 0.30 GFLOPs) at a quarter of a focus patch (ResNet-50 at 128 px, 1.34 GFLOPs), but on
this CPU a glance frame takes a third of a patch's time or more (22 ms per patch; 7.6 ms per frame
for a frozen, folded MobileNetV2, 9.5 ms eager; the copy's glance is the model's, eager), so the glance that every video pays for is a larger share of the time (~25 %) than of
the FLOPs (18 %) and caps the measured
speed-up below the prediction; and each incremental step reads the focus MLP's and the exit head's
weights again for a smaller batch. A larger batch (the default 48) keeps the per-step batches large.
The cores may be shared with other work: timings then vary by tens of percent between runs.

Output: the conditions (torch version, CPU, CPU count, threads, ``OMP_WAIT_POLICY``, autocast,
inference copy, allocator tuning, B, criterion) first, then the times of both paths and their ratios:
the measured speed-up (median / median, best / best and the median of the per-repeat ratios), the
speed-ups the FLOPs predict (for the distribution and for this batch's exits) and measured / predicted.
Set ``OMP_WAIT_POLICY=PASSIVE`` on shared cores (unset, this script sets it before torch loads).

Exit status 1 when the ratio is below --target (``--no-check`` to only report).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

from ops.cpu import cpu_name, prefer_passive_omp_wait, tune_cpu_allocator

# OpenMP threads that spin while they wait turn every small parallel region into a scheduler time
# slice when the cores are shared with other work (measured here: ResNet-50 on one 128-px patch
# 2.2 s with 2 spinning threads vs 0.07 s passive). Both paths run under the same setting; set
# OMP_WAIT_POLICY yourself to override. Must be set before torch is imported (OpenMP reads it when it
# is loaded), hence the imports below this line.
prefer_passive_omp_wait()

import torch  # noqa: E402

from models import UniAdaFocus  # noqa: E402
from models.flops import flops_breakdown  # noqa: E402
from models.inference import prepare_for_inference  # noqa: E402
from ops.early_exit import (LAST_STAGE_THRESHOLD, NO_EXIT_THRESHOLD, AdaptiveRunner,  # noqa: E402
                            geometric_exit_distribution, geometric_p_for_cost, quantile_exit_stages)


def expected_cost(q: torch.Tensor, flops: torch.Tensor) -> float:
    return float((q.double() * flops).sum())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m scripts.bench_adaptive", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=48, help="videos per batch (B)")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (both runs)")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs of each path (alternating)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed runs of each path first")
    ap.add_argument("--budget", type=float, default=18.1, help="GFLOPs budget that fixes p (default 18.1)")
    ap.add_argument("--p", type=float, default=None, help="geometric parameter p instead of --budget")
    ap.add_argument("--distribution", type=str, default=None,
                    help="explicit exit distribution: K comma-separated weights (normalised here)")
    ap.add_argument("--num_classes", type=int, default=200)
    ap.add_argument("--patch_size", type=int, default=128)
    ap.add_argument("--criterion", default="confidence", choices=("confidence", "entropy", "max_prob"))
    ap.add_argument("--device", default="cpu", help="cpu or cuda (cuda:N)")
    ap.add_argument("--amp", action="store_true",
                    help="run both paths under autocast (bfloat16 on CPU, float16 on CUDA)")
    ap.add_argument("--plain", action="store_true",
                    help="time the training-layout model (unfolded BatchNorm, NCHW, default allocator) "
                         "instead of models.inference.prepare_for_inference + ops.cpu.tune_cpu_allocator")
    ap.add_argument("--runtime-baseline", action="store_true",
                    help="also time the runtime with every video forced to the last stage (its own no-exit cost)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--target", type=float, default=0.9, help="minimum measured/predicted ratio")
    ap.add_argument("--no-check", action="store_true", help="report only; exit 0 whatever the ratio")
    args = ap.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda given, but CUDA is not available")
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # random weights must not time denormal arithmetic
    torch.manual_seed(args.seed)
    model = UniAdaFocus(num_classes=args.num_classes, patch_size=args.patch_size).eval()
    flops = torch.tensor(flops_breakdown(model).stages(), dtype=torch.float64)  # counted on the CPU
    model.to(device)
    if not args.plain:  # both paths run the inference copy: the focus encoder folded and channels-last
        model = prepare_for_inference(model)
    tuned = device.type == "cpu" and not args.plain and tune_cpu_allocator()
    k_stages = flops.numel()

    if args.distribution is not None:
        q = torch.tensor([float(v) for v in args.distribution.split(",")], dtype=torch.float64)
        if q.numel() != k_stages or (q < 0).any() or q.sum() <= 0:
            raise SystemExit(f"--distribution needs {k_stages} non-negative weights")
        q, p = q / q.sum(), None
    else:
        try:  # the geometric exit distribution whose mean cost is the budget
            p = args.p if args.p is not None else geometric_p_for_cost(flops, args.budget)
        except ValueError as exc:
            raise SystemExit(f"--budget: {exc}") from None
        q = geometric_exit_distribution(p, k_stages).double()
    expected = expected_cost(q, flops)
    predicted = float(flops[-1]) / expected

    gen = torch.Generator().manual_seed(args.seed)
    stages = quantile_exit_stages(q, args.batch, gen)
    batch_cost = float(flops[stages].mean())
    predicted_batch = float(flops[-1]) / batch_cost
    video = torch.randint(0, 256, (args.batch, model.num_segments, 3, model.input_size, model.input_size),
                          generator=gen, dtype=torch.uint8).to(device)
    thresholds = [NO_EXIT_THRESHOLD] * (k_stages - 1) + [LAST_STAGE_THRESHOLD]  # unused: exits are forced
    runner = AdaptiveRunner(model, thresholds, args.criterion, flops=flops.tolist())

    amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)

    def full():
        with torch.no_grad(), torch.autocast(device.type, dtype=amp_dtype, enabled=args.amp):
            return model(video)

    def adaptive(timing=False):
        with torch.autocast(device.type, dtype=amp_dtype, enabled=args.amp):
            return runner.run(video, forced_exits=stages, timing=timing)

    def full_by_stage():
        """One full forward composed from the model's stage functions, timing each part."""
        parts, frames = {}, model.frames_view(video)
        with torch.no_grad(), torch.autocast(device.type, dtype=amp_dtype, enabled=args.amp):
            amp = model.autocast_setting(device.type)
            with torch.autocast(device.type, enabled=False):
                sync()
                t = time.perf_counter()
                glance = model.glance_stage(frames, amp)
                sync()
                parts["glance (+ glance head)"] = time.perf_counter() - t
                t = time.perf_counter()
                policy = model.policy_stage(glance, model.num_segments)
                sync()
                parts["policy (+ auxiliary head)"] = time.perf_counter() - t
                t = time.perf_counter()
                feats = model.focus_features(frames, policy.focus_indices, policy.focus_actions, amp)
                sync()
                parts["focus crops + encoder"] = time.perf_counter() - t
                t = time.perf_counter()
                model.focus_head(feats.flatten(0, 1))
                model.classify(glance.features, feats)
                sync()
                parts["focus head + classifier (all exits)"] = time.perf_counter() - t
        return parts

    def timed(fn):
        sync()
        t = time.perf_counter()
        fn()
        sync()
        return time.perf_counter() - t

    print(f"conditions: torch {torch.__version__}, {cpu_name()}, {os.cpu_count()} CPUs (they may be shared with "
          f"other work: times vary by tens of percent between runs; the alternated ratios less)")
    print(f"Uni-AdaFocus adaptive early exit vs full forward: C={args.num_classes}, P={args.patch_size}, "
          f"T0={model.num_segments}, T_G={model.num_glance}, T_L={model.num_focus}; device {device}, "
          f"{args.threads} threads (OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}), "
          f"amp={'on' if args.amp else 'off'}, inference copy={'off' if args.plain else 'on'}, "
          f"allocator tuning={'on' if tuned else 'off'}, "
          f"B={args.batch}, criterion {args.criterion}")
    print("\nmeasured FLOPs table (GFLOPs per video, stage k = after k focus frames):")
    print("  " + " ".join(f"{f:.3f}" for f in flops.tolist()))
    if p is not None:
        how = f"budget {args.budget} GFLOPs" if args.p is None else "given"
        print(f"\nexit distribution: geometric q_k ∝ p^k, p = {p:.6f} ({how})")
    else:
        print("\nexit distribution: given")
    print("  q = " + " ".join(f"{v:.4f}" for v in q.tolist()))
    print(f"  expected GFLOPs = {expected:.4f}")
    counts = torch.bincount(stages, minlength=k_stages)
    print(f"batch exits per stage: {counts.tolist()} -> mean {batch_cost:.4f} GFLOPs per video")

    # warm-up, and a check that the forced run returns the full pass's logits at the forced stages
    for _ in range(max(1, args.warmup)):
        out = full()
        res = adaptive()
    reference = out.stage_logits[torch.arange(args.batch), stages.to(device)]
    assert torch.equal(res.exit_stage, stages)
    err = float((res.logits.float() - reference.float()).abs().max())
    scale = float(reference.abs().max())
    print(f"check: adaptive logits vs full pass at the forced stages: max |diff| {err:.3g} (max |logit| {scale:.3g})")
    if not err <= 1e-3 * max(1.0, scale) + (1e-2 * scale if args.amp else 0.0):
        print("ERROR: the adaptive logits do not match the full pass")
        return 1

    last = torch.full_like(stages, k_stages - 1)
    no_exit = lambda: runner.run(video, forced_exits=last)  # noqa: E731
    runs = [("full", full), ("adaptive", adaptive)] + ([("no_exit", no_exit)] if args.runtime_baseline else [])
    times = {name: [] for name, _ in runs}
    for r in range(args.repeats):  # alternate the order so that load changes hit every path alike
        for name, fn in (runs if r % 2 == 0 else runs[::-1]):
            times[name].append(timed(fn))
    t_full, t_adaptive = times["full"], times["adaptive"]
    per_stage = adaptive(timing=True)
    full_parts = full_by_stage()

    med_full, med_adaptive = statistics.median(t_full), statistics.median(t_adaptive)
    measured = med_full / med_adaptive
    best = min(t_full) / min(t_adaptive)
    ratio = measured / predicted
    paired = statistics.median(f / a for f, a in zip(t_full, t_adaptive))  # robust to load changes
    def show(label, ts):
        print(f"{label:34s}: " + " ".join(f"{t:.3f}" for t in ts)
              + f"   median {statistics.median(ts):.3f}, best {min(ts):.3f}")

    print()
    show("full forward (s)", t_full)
    show("adaptive run (s)", t_adaptive)
    if args.runtime_baseline:
        show("runtime, all at the last stage (s)", times["no_exit"])
    print("\nadaptive run, one timed pass per stage (stage 1 includes the policy):")
    print("  videos : " + " ".join(f"{n:6d}" for n in per_stage.stage_batch_sizes))
    print("  seconds: " + " ".join(f"{s:6.3f}" for s in per_stage.stage_seconds))
    patches = sum(per_stage.stage_batch_sizes[1:])
    focus_s = sum(per_stage.stage_seconds[1:]) - (per_stage.policy_seconds or 0.0)
    print(f"  stage 0 (glance, last glance exit) {per_stage.stage_seconds[0]:.3f} s; policy "
          f"{per_stage.policy_seconds or 0.0:.3f} s; focus steps {focus_s:.3f} s for {patches} patches "
          f"({1e3 * focus_s / max(patches, 1):.1f} ms per patch)")
    print("full forward, one pass timed by part (the same stage functions):")
    for name, s in full_parts.items():
        print(f"  {name:36s} {s:7.3f} s")
    n_full = args.batch * model.num_focus
    print(f"  -> {1e3 * full_parts['focus crops + encoder'] / n_full:.1f} ms per patch "
          f"({n_full} patches in one encoder call)")
    print(f"\nmeasured speed-up (median / median)           : {measured:.3f}   (best / best: {best:.3f}; "
          f"median of per-repeat ratios: {paired:.3f})")
    print(f"FLOPs-predicted speed-up (distribution)       : {predicted:.3f}   "
          f"(= {float(flops[-1]):.4f} / {expected:.4f} GFLOPs)")
    print(f"FLOPs-predicted speed-up (this batch's exits) : {predicted_batch:.3f}   "
          f"(= {float(flops[-1]):.4f} / {batch_cost:.4f} GFLOPs)")
    print(f"ratio measured / predicted                    : {ratio:.3f}   "
          f"(vs this batch: {measured / predicted_batch:.3f}; best/best: {best / predicted:.3f}; "
          f"per-repeat: {paired / predicted:.3f})")
    if args.runtime_baseline:
        own = statistics.median(times["no_exit"]) / med_adaptive
        print(f"speed-up over the runtime's own no-exit run   : {own:.3f}   (ratio to the batch's prediction "
              f"{own / predicted_batch:.3f})")
    if args.no_check:
        return 0
    if ratio < args.target:
        print(f"FAIL: ratio {ratio:.3f} < target {args.target}")
        return 1
    print(f"OK: ratio {ratio:.3f} >= target {args.target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
