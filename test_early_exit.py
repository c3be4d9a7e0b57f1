#!/usr/bin/env python
"""Sample-wise early exit: per-exit logits, threshold solving, budget sweeps and deployable thresholds.

Takes the arguments of main.py (the same command with ``--evaluate --resume CKPT``) plus its own:

    torchrun --nproc_per_node=4 test_early_exit.py --config configs/actnet_p128.yaml --data_dir DATA \\
        --root_log LOG --evaluate --resume ckpt/actnet_p128.pth.tar            # 19-budget sweep
    python test_early_exit.py ... --budget 18.1                                 # thresholds for 18.1 GFLOPs
    python test_early_exit.py --logits LOG/RUN/early_exit/logits_<key>.pt       # re-sweep, no model

The official early-exit scripts of the three releases are this one with ``--criterion confidence
entropy`` (docs/official-commands.md; ``python -m ops.official_commands "LINE"`` translates a line).

1. Logits. The exit logits of every video (stage 0 = the last glance exit, stage k = after k focus
   frames: T_L + 1 stages) are computed for the threshold set (the training videos with the training
   augmentation by default, as officially; ``--threshold_set val`` or a seeded ``--threshold_subset``
   as options) and for the evaluation set, through main.py's exact distributed evaluation (on a CPU
   the inference copy of ``models/inference.py``; ``--plain_model``, ``--bf16_focus``), and cached
   in ``{root_log}/{store_name}/early_exit/logits_<key>.pt`` (atomic; the key covers the checkpoint
   file and every setting that changes the logits), so a re-sweep never runs the model again.
2. Sweep. For each criterion (``entropy`` by default; ``confidence`` is the official max raw
   logit; ``max_prob``), thresholds for the geometric exit distributions of the variant's official grid
   (``ops.early_exit.P_GRIDS``: p = 0.05 .. 0.95 for mn2_r50; for adafocus_v2 its 16 exits, p = 5 .. 39
   over 10 with q_k proportional to (p/10)^(k+1)) are solved on the threshold set and evaluated on the
   evaluation set, next to a random-exit baseline with the same exit counts (where the variant's official
   sweep has one) and the fixed-exit curve. Written to ``early_exit/{criterion}.csv`` /
   ``.json`` / ``.png`` (metric against GFLOPs, paper Fig. 12) and the official
   ``log_early_exit_{criterion}.csv``.
3. Budget. ``--budget G`` searches p continuously so that the average cost on the threshold set is
   at most G GFLOPs and writes ``early_exit/thresholds_{criterion}_{G}gflops.json``, which
   ``main.py --thresholds``, the adaptive runtime (``ops.early_exit.adaptive``) and
   ``scripts/predict.py`` load.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import os
import shutil
import sys
import time
from typing import Dict, List, Optional

from ops.cpu import prefer_passive_omp_wait, tune_cpu_allocator

prefer_passive_omp_wait()  # before torch loads OpenMP, which reads OMP_WAIT_POLICY once (ops/cpu.py)

import torch  # noqa: E402

from datasets.files import atomic_write, write_text_atomic  # noqa: E402
from models import get_variant  # noqa: E402
from ops import build, cli, config, evaluation, flags, loaders, run_state  # noqa: E402
from ops import distributed as dist_ops  # noqa: E402
from ops import early_exit  # noqa: E402
from ops.checkpoint import atomic_save, read_checkpoint  # noqa: E402
from ops.run_log import RunLog  # noqa: E402

CACHE_VERSION = 1


def get_args_parser() -> argparse.ArgumentParser:
    parser = flags.get_args_parser()
    parser.prog = "test_early_exit.py"
    parser.description = ("Early-exit threshold solving and budget sweeps for every variant with exits (each with "
                          "its official grid).")
    g = flags.own_options_first(parser, "early exit", "the sweep and its thresholds; main.py's flags (further "
                                                      "below) give the data, the model and its checkpoint")
    g.add_argument("--criterion", nargs="+", default=["entropy"], choices=early_exit.CRITERIA,
                   help="exit criteria to sweep (entropy is the paper's; confidence the official max raw logit)")
    g.add_argument("--threshold_set", choices=("train", "val"), default="train",
                   help="videos the thresholds are fitted on (official: the training set)")
    g.add_argument("--threshold_augmentation", action=argparse.BooleanOptionalAction, default=True,
                   help="training-set threshold clips use the training augmentation (official); "
                        "--no-threshold_augmentation uses the evaluation transform")
    g.add_argument("--threshold_subset", type=int, default=0,
                   help="fit on a seeded random subset of this many threshold-set videos (0: all)")
    g.add_argument("--p_values", type=float, nargs="+", default=None,
                   help="geometric exit parameters of the sweep (default: the variant's official grid, "
                        "0.05..0.95 for mn2_r50, 1..399 and 4e3..4e6 over --p_scale 100 for tsm, 5..39 over "
                        "--p_scale 10 with q_k proportional to (p/10)^(k+1) for adafocus_v2)")
    g.add_argument("--p_scale", type=float, default=None,
                   help="the exit ratio of p is float32(p / p_scale) (default: the variant's official scale)")
    g.add_argument("--random_baseline", action=argparse.BooleanOptionalAction, default=None,
                   help="random exits with the same counts next to every budget (default: as the variant's "
                        "official sweep: on for mn2_r50, off for tsm and adafocus_v2)")
    g.add_argument("--budget", type=float, nargs="+", default=None,
                   help="GFLOPs budget(s): write deployable thresholds meeting each on the threshold set")
    g.add_argument("--logits", default=None, help="sweep from a cached logits file; no model or data needed")
    g.add_argument("--metric_mode", choices=("auto",) + early_exit.METRICS, default="auto",
                   help="metric of the sweep (auto: the dataset's, mAP or top-1)")
    g.add_argument("--absent_classes", choices=("exclude", "zero"), default="exclude",
                   help="mAP over classes present in the evaluation set (exclude) or official zeros")
    return parser


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    """The flags; the model sizes no flag sets come from ``--resume``'s saved configuration (our checkpoints)."""
    parser = get_args_parser()
    args = config.parse_args(argv, parser)
    if not args.logits:
        config.adopt_checkpoint_config(args, parser)
    return args


# ------------------------------------------------------------------------------------------------
# Logits
# ------------------------------------------------------------------------------------------------
LOGIT_SETTINGS = ("variant", "dataset", "data_dir", "dataset_config", "synthetic", "label_rule", "missing_frames",
                  "num_segments", "num_glance_segments", "num_focus_segments", "input_size", "patch_size",
                  "glance_arch", "focus_arch", "classifier_dim", "stn_hidden_dim", "temporal_hidden_dim",
                  "temperature", "glance_size", "shift_div", "test_crops", "seed", "amp", "amp_dtype", "eval_amp",
                  "threshold_set", "threshold_augmentation", "threshold_subset", "plain_model", "bf16_focus",
                  "gpu_decode")  # (not decode_all_frames: decoding the selected frames only gives identical logits)


def cache_key(args) -> str:
    """A digest of the checkpoint file and every setting that changes the logits."""
    stat = os.stat(args.resume)
    meta = {"checkpoint": os.path.abspath(args.resume), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
            "settings": {k: getattr(args, k, None) for k in LOGIT_SETTINGS}, "version": CACHE_VERSION}
    return hashlib.sha256(json.dumps(meta, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _threshold_loader(args, info, val_loader):
    """The loader of the threshold set (sharded without padding, like evaluation)."""
    if args.threshold_set == "val":
        return val_loader
    return loaders.threshold_set_loader(args, info, augmentation=args.threshold_augmentation,
                                        subset=args.threshold_subset)


def generate_logits(args, info, log: RunLog) -> Dict:
    """Run the model over the threshold and evaluation sets; returns the cache dictionary."""
    args.evaluate = True
    _, _, val_set, val_loader = loaders.build_loaders(args, info)
    model = build.build_model(args, val_set.num_classes, info)
    run_state.restore(args, model, None, None, log, "")
    flops = build.exit_gflops(model)
    sets = {}
    for name, loader in (("threshold", _threshold_loader(args, info, val_loader)), ("eval", val_loader)):
        started = time.time()
        result = evaluation.evaluate(model, loader, args, info, collect_stages=True, log=log)
        metrics, rows = result.metrics, result.rows
        log.info(f"{name} set: {rows['stages'].shape[0]} videos, {rows['stages'].shape[1]} exits in "
                 f"{time.time() - started:.1f}s; last exit {metrics['metric']} {metrics['score']:.3f}")
        sets[name] = {"logits": rows["stages"].float(), "label": rows["label"], "labels": rows["labels"].bool()}
    return {"version": CACHE_VERSION, "metric": evaluation.dataset_metric(val_set), "flops": flops,
            "exit_grid": get_variant(args.variant).exit_grid,
            "num_classes": val_set.num_classes, "settings": {k: getattr(args, k, None) for k in LOGIT_SETTINGS},
            "checkpoint": os.path.abspath(args.resume), **sets}


def read_logits(path: str) -> Dict:
    if not os.path.isfile(path):
        raise SystemExit(f"--logits {path}: file not found")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, corrupt or not a torch file at all
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SystemExit(f"--logits {path}: not a readable early-exit logits file ({detail})") from None
    if not isinstance(data, dict):
        raise SystemExit(f"--logits {path}: not an early-exit logits file (a {type(data).__name__})")
    missing = [k for k in ("threshold", "eval", "flops", "metric") if k not in data]
    if missing:
        raise SystemExit(f"{path} is not an early-exit logits file (missing {missing})")
    return data


# ------------------------------------------------------------------------------------------------
# Sweep, plots, budgets
# ------------------------------------------------------------------------------------------------
def targets_for(data_set: Dict, metric: str) -> torch.Tensor:
    return data_set["labels"] if metric == "mAP" else data_set["label"]


def write_csv(path: str, rows: List[Dict]) -> None:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]))
    writer.writeheader()
    for row in rows:
        writer.writerow({k: json.dumps(v) if isinstance(v, list) else v for k, v in row.items()})
    write_text_atomic(path, out.getvalue())


def plot_sweep(path: str, sweep, title: str, budgets=()) -> None:
    """Metric against GFLOPs: dynamic exits, random exits with the same counts, fixed exits, and each
    ``--budget``'s deployed thresholds (``budgets``: (GFLOPs, metric) on the evaluation set).

    The y axis stays inside the metric's range (0-100); markers differ in shape and size and the early-exit
    curve is drawn last, so a curve that coincides with another stays visible."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2), dpi=120)
    points = sorted(sweep.points, key=lambda p: p.expected_gflops)
    gf = [p.expected_gflops for p in points]
    values = [p.metric for p in points] + [f.metric for f in sweep.fixed_exits]
    ax.plot([f.gflops for f in sweep.fixed_exits], [f.metric for f in sweep.fixed_exits], "^:", color="tab:blue",
            markersize=8, markerfacecolor="none", label="fixed exit (stage k)", zorder=2, clip_on=False)
    if sweep.seed is not None:  # with a random baseline
        ax.plot(gf, [p.random_metric for p in points], "s--", color="tab:gray", markersize=9, markerfacecolor="none",
                label="random exits (same counts)", zorder=3, clip_on=False)
        values += [p.random_metric for p in points]
    ax.plot(gf, [p.metric for p in points], "o-", color="tab:red", markersize=4, linewidth=1.5,
            label=f"early exit ({sweep.criterion})", zorder=4, clip_on=False)
    for k, (gflops, metric) in enumerate(budgets):
        ax.plot([gflops], [metric], "*", color="black", markersize=14, zorder=5, clip_on=False,
                label="--budget thresholds" if k == 0 else None)
        ax.annotate(f"{metric:.1f} at {gflops:.3g}", (gflops, metric), textcoords="offset points", xytext=(6, -14),
                    fontsize=8)
        values.append(metric)
    low, high = min(values), max(values)
    pad = max(1.0, 0.08 * (high - low))
    ax.set_ylim(max(0.0, low - pad), min(100.0, high + pad))
    ax.set_xlabel("GFLOPs / video")
    ax.set_ylabel("mAP (%)" if sweep.metric == "mAP" else "top-1 accuracy (%)")
    ax.set_title(title, pad=12)  # (markers on the top edge are drawn unclipped)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png")
    plt.close(fig)


def sweep_and_write(data: Dict, args, out_dir: str, log: RunLog) -> Dict[str, object]:
    metric = data["metric"] if args.metric_mode == "auto" else args.metric_mode
    thr, ev = data["threshold"], data["eval"]
    results = {}
    for criterion in args.criterion:
        started = time.time()
        grid = early_exit.P_GRIDS[data.get("exit_grid", "geometric")]
        sweep = early_exit.budget_sweep(thr["logits"], targets_for(thr, metric), ev["logits"], targets_for(ev, metric),
                                        data["flops"], criterion=criterion, metric=metric,
                                        p_values=args.p_values or grid.p_values, seed=args.seed,
                                        absent=args.absent_classes, p_scale=args.p_scale or grid.p_scale,
                                        first_power=grid.first_power,
                                        random_baseline=grid.random_baseline if args.random_baseline is None
                                        else args.random_baseline)
        elapsed = time.time() - started
        base = os.path.join(out_dir, criterion)
        write_csv(base + ".csv", sweep.to_rows())
        sweep.to_json(base + ".json")
        write_csv(base + "_fixed_exits.csv", sweep.fixed_rows())
        official = "flops_list,metric_list\n" + "".join(f"{p.expected_gflops:.6f},{p.metric:.6f}\n" for p in sweep.points)
        write_text_atomic(os.path.join(os.path.dirname(out_dir), f"log_early_exit_{criterion}.csv"), official)
        log.info(f"{criterion}: swept {len(sweep.points)} budgets in {elapsed:.2f}s; last exit {metric} "
                 f"{sweep.last_stage_metric:.3f} at {data['flops'][-1]:.2f} GFLOPs")
        for p in sweep.points:
            log.info(f"  p={p.p:.2f}  {p.expected_gflops:7.3f} GFLOPs  {metric} {p.metric:7.3f}"
                     + (f"  (random exits {p.random_metric:7.3f})" if sweep.seed is not None else ""))
        results[criterion] = sweep
        budgets = [solve_budget(data, criterion, metric, budget, out_dir, args, log)[1] for budget in args.budget or ()]
        plot_sweep(base + ".png", sweep, f"{os.path.basename(os.path.dirname(out_dir))}: {criterion}",
                   budgets=[(e.expected_gflops, e.metric) for e in budgets])
    return results


def solve_budget(data: Dict, criterion: str, metric: str, budget: float, out_dir: str, args, log: RunLog):
    thr, ev = data["threshold"], data["eval"]
    scores = early_exit.exit_scores(thr["logits"], criterion)
    try:
        found = early_exit.thresholds_for_budget(scores, data["flops"], budget)
    except ValueError as exc:
        raise SystemExit(f"--budget {budget}: {exc}") from None
    evaluation = early_exit.evaluate_exits(ev["logits"], targets_for(ev, metric), data["flops"],
                                           thresholds=found.thresholds, criterion=criterion, metric=metric,
                                           absent=args.absent_classes)
    path = os.path.join(out_dir, f"thresholds_{criterion}_{budget:g}gflops.json")
    early_exit.save_thresholds(path, found.thresholds, criterion=criterion, flops=data["flops"],
                               budget_gflops=budget, p=found.p, expected_gflops=found.expected_gflops)
    log.info(f"--budget {budget:g} ({criterion}): p={found.p:.4g}, {found.expected_gflops:.3f} GFLOPs on the "
             f"threshold set; evaluation set {evaluation.expected_gflops:.3f} GFLOPs, {metric} "
             f"{evaluation.metric:.3f}; thresholds -> {path}")
    return path, evaluation


# ------------------------------------------------------------------------------------------------
def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    if args.thresholds:
        raise SystemExit("--thresholds evaluates given thresholds: use main.py --evaluate --resume CKPT --thresholds "
                         "FILE (this script solves thresholds: --budget)")
    if args.logits:
        data = read_logits(args.logits)
        out_dir = os.path.dirname(os.path.abspath(args.logits))
        log = RunLog(os.path.dirname(out_dir), tensorboard=False)
        try:
            sweep_and_write(data, args, out_dir, log)
        finally:
            log.close()
        return 0
    if not args.resume:
        raise SystemExit("test_early_exit.py needs --resume CHECKPOINT (or --logits FILE)")
    if not os.path.isfile(args.resume):
        raise SystemExit(f"--resume {args.resume}: checkpoint not found")
    read_checkpoint(args.resume)  # a clear error before any work or folder
    info = dist_ops.init_distributed(args.local_rank, args.device, args.dist_url)
    if info.device.type == "cpu":
        tune_cpu_allocator()
    try:
        run_dir = config.run_folder(args)
        out_dir = os.path.join(run_dir, "early_exit")
        created = [d for d in (run_dir, out_dir) if not os.path.isdir(d)]
        if info.is_main:
            os.makedirs(out_dir, exist_ok=True)
            for name in os.listdir(out_dir):  # what an interrupted atomic write left
                if name.startswith(".tmp-"):
                    os.remove(os.path.join(out_dir, name))
        dist_ops.barrier(info)
        log = RunLog(run_dir, enabled=info.is_main, tensorboard=False)
        try:
            path = os.path.join(out_dir, f"logits_{cache_key(args)}.pt")
            if os.path.isfile(path):
                log.info(f"using cached logits {path}")
                data = read_logits(path)
            else:
                data = generate_logits(args, info, log)
                if info.is_main:
                    atomic_save(data, path)
                    log.info(f"cached logits -> {path}")
            if info.is_main:
                sweep_and_write(data, args, out_dir, log)
        except BaseException:
            log.close()
            if info.is_main:  # a failure before anything was written leaves no folder behind
                for folder in reversed(created):
                    if os.path.isdir(folder) and all(n == "log.txt" or n.startswith(".tmp-") for n in os.listdir(folder)):
                        shutil.rmtree(folder, ignore_errors=True)
            raise
        finally:
            log.close()
    finally:
        dist_ops.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(cli.run_main(main))
