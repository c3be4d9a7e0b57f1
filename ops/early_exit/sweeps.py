"""Budget sweeps: the official early-exit experiment, vectorised.

For every p of a grid the thresholds are solved on a threshold set for the exit distribution q_k
proportional to r**k, r = float32(p / p_scale) (:func:`.solver.geometric_exit_distribution`), the
evaluation set exits with them, and the sweep records the metric, the expected GFLOPs, the exit
counts, the normalised q and (optionally) a random baseline with the same counts
(:mod:`.evaluation`); the fixed-exit curve and the last-stage metric come with it. The per-stage
work (criterion, softmax table, sort) is done once for all budgets.

The two official grids:

* Uni-AdaFocus (17 exits, docs/official-behaviour.md, "Early exit"): :data:`DEFAULT_P_VALUES` =
  0.05, 0.10, ..., 0.95 with ``p_scale=1``; mAP (ActivityNet, FCVID) or top-1 (Mini-Kinetics), and
  a random baseline with the same exit counts.
* Uni-AdaFocus-TSM (2 exits: glance only, full model): :data:`TSM_P_VALUES` = 1, 2, ..., 399, 4e3,
  4e4, 4e5, 4e6 (403 values) with ``p_scale=TSM_P_SCALE`` (100), so q_0 is about 1 / (1 + p/100)
  (0.990 at p = 1 down to 2.5e-5 at p = 4e6); top-1 on the class ids; the official procedure has no
  random baseline (``random_baseline=False`` skips it). Thresholds and quotas follow the same
  float32 rules as Uni-AdaFocus (:mod:`.solver`).
* AdaFocusV2 (16 exits, one per frame): :data:`V2_P_VALUES` = 5, 6, ..., 39 with
  ``p_scale=V2_P_SCALE`` (10) and ``first_power=1``, so q_k is proportional to (p/10)**(k+1) (35
  budgets); mAP or top-1; no random baseline officially. Same float32 quota and threshold rules.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Sequence, Union

import torch

from ..packages import sibling
from .criteria import check_criterion, exit_scores, softmax_table
from .evaluation import (FixedExitPoint, Generator, StageMetric, check_logits, check_metric, expected_gflops,
                         exit_ratios, fixed_exit_curve, random_exit_baseline)
from .solver import (assign_exits, count_exits, descending_order, exit_quota, geometric_exit_distribution,
                     normalised_distribution, solve_thresholds)

write_text_atomic = sibling("datasets.files").write_text_atomic

__all__ = ["DEFAULT_P_VALUES", "TSM_P_VALUES", "TSM_P_SCALE", "V2_P_VALUES", "V2_P_SCALE", "ExitGrid", "P_GRIDS",
           "BudgetPoint", "SweepResult", "budget_sweep"]

#: Uni-AdaFocus grid (use with ``p_scale=1``): 1/20, ..., 19/20, q_k proportional to p**k.
DEFAULT_P_VALUES = tuple(i / 20 for i in range(1, 20))

#: Uni-AdaFocus-TSM grid (use with ``p_scale=TSM_P_SCALE``): 1, ..., 399, then 4e3, 4e4, 4e5, 4e6.
TSM_P_VALUES = tuple(float(i) for i in range(1, 400)) + (4e3, 4e4, 4e5, 4e6)

#: The TSM grid's divisor: r = float32(p / 100).
TSM_P_SCALE = 100.0

#: AdaFocusV2 grid (use with ``p_scale=V2_P_SCALE, first_power=1``): p = 5, ..., 39, q_k proportional to (p/10)**(k+1).
V2_P_VALUES = tuple(float(i) for i in range(5, 40))

#: The AdaFocusV2 grid's divisor: r = float32(p / 10).
V2_P_SCALE = 10.0


class ExitGrid(NamedTuple):
    """An official sweep: the p values, r = float32(p / p_scale), whether a random-exit baseline is drawn
    next to each point, and the power of r at stage 0 (q_k proportional to r**(k + first_power))."""
    p_values: Sequence[float]
    p_scale: float
    random_baseline: bool
    first_power: int = 0


#: The official sweep grid of each variant, by the name its registry entry gives (``Variant.exit_grid``).
P_GRIDS = {
    "geometric": ExitGrid(DEFAULT_P_VALUES, 1.0, True),  # the main variant: 19 budgets, 17 exits
    "tsm": ExitGrid(TSM_P_VALUES, TSM_P_SCALE, False),  # two exits, 403 budgets, no random baseline officially
    "v2": ExitGrid(V2_P_VALUES, V2_P_SCALE, False, first_power=1),  # AdaFocusV2: 16 exits, 35 budgets
}


@dataclass
class BudgetPoint:
    """One point of the sweep (one p)."""
    p: float
    expected_gflops: float         # on the evaluation set, float32 as the official
    metric: float                  # percent
    random_metric: float           # random exits with the same counts (NaN when not computed)
    exit_counts: List[int]         # evaluation-set exits per stage
    exit_ratios: List[float]       # float32 count / N, as floats
    thresholds: List[float]        # (K,) fitted on the threshold set; 1e8 = nobody, -1e8 = last
    quota: List[int]               # threshold-set quota floor(N_train * q_k)
    q: List[float] = field(default_factory=list)   # (K,) float32 q as the solver used it (normalised twice)


@dataclass
class SweepResult:
    """Result of :func:`budget_sweep`."""
    criterion: str
    metric: str
    absent: str
    num_stages: int
    num_train: int
    num_val: int
    flops: List[float]
    seed: Optional[int]
    points: List[BudgetPoint]
    fixed_exits: List[FixedExitPoint]
    last_stage_metric: float
    timings: Dict[str, float] = field(default_factory=dict)
    p_scale: float = 1.0           # r = float32(p / p_scale)
    first_power: int = 0           # q_k proportional to r**(k + first_power)

    # official-style lists
    @property
    def flops_list(self) -> List[float]:
        return [pt.expected_gflops for pt in self.points]

    @property
    def metric_list(self) -> List[float]:
        return [pt.metric for pt in self.points]

    @property
    def random_metric_list(self) -> List[float]:
        return [pt.random_metric for pt in self.points]

    def to_rows(self) -> List[dict]:
        """One flat dict per budget (CSV-ready): p, expected_gflops, metric, random_metric, then
        exit_count_k, exit_ratio_k and threshold_k for every stage."""
        rows = []
        for pt in self.points:
            row = {"criterion": self.criterion, "metric_name": self.metric, "p": pt.p,
                   "expected_gflops": pt.expected_gflops, "metric": pt.metric,
                   "random_metric": pt.random_metric}
            row.update({f"exit_count_{k}": v for k, v in enumerate(pt.exit_counts)})
            row.update({f"exit_ratio_{k}": v for k, v in enumerate(pt.exit_ratios)})
            row.update({f"threshold_{k}": v for k, v in enumerate(pt.thresholds)})
            rows.append(row)
        return rows

    def fixed_rows(self) -> List[dict]:
        """One dict per stage for the fixed-exit curve: stage, gflops, metric."""
        return [asdict(f) for f in self.fixed_exits]

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self, path: Optional[Union[str, os.PathLike]] = None, indent: int = 2) -> str:
        """JSON text of :meth:`to_dict`; also written (atomically) to ``path`` when given."""
        text = json.dumps(self.to_dict(), indent=indent, allow_nan=True)
        if path is not None:
            write_text_atomic(Path(path), text + "\n")
        return text


def _generator_from_seed(seed: Optional[int], generator: Generator) -> Generator:
    if generator is not None:
        return generator
    if seed is None:
        return None
    return torch.Generator().manual_seed(int(seed))


def budget_sweep(train_logits: torch.Tensor, train_targets: Optional[torch.Tensor],
                 val_logits: torch.Tensor, val_targets: torch.Tensor, flops: Sequence[float], *,
                 criterion: str = "confidence", metric: str = "mAP",
                 p_values: Sequence[float] = DEFAULT_P_VALUES, seed: Optional[int] = 0,
                 generator: Generator = None, absent: str = "exclude",
                 on_overflow: str = "clamp", p_scale: float = 1.0,
                 random_baseline: bool = True, first_power: int = 0) -> SweepResult:
    """The official early-exit experiment (``early_exit``), vectorised.

    For every p: q = :func:`.solver.geometric_exit_distribution` (p, K, p_scale=p_scale,
    first_power=first_power),
    thresholds from the threshold set (``train_logits`` (N1, K, C); ``train_targets`` is not used,
    as officially), exits of the evaluation set (``val_logits`` (N2, K, C)), its metric (``'mAP'``
    or ``'top1'``) and expected GFLOPs; then, when ``random_baseline``, the random baseline with the
    same counts (permutations drawn in budget order from ``generator``, by default
    ``torch.Generator().manual_seed(seed)``; pass ``random.Random(s)`` to replay the official
    ``random.shuffle`` draws); otherwise ``random_metric`` is NaN and nothing is drawn. Also the
    fixed-exit curve and the last-stage metric. ``timings`` holds a breakdown in seconds.

    Uni-AdaFocus: the defaults (``p_values=DEFAULT_P_VALUES``, ``p_scale=1``). Uni-AdaFocus-TSM
    (2 exits): ``p_values=TSM_P_VALUES, p_scale=TSM_P_SCALE, metric='top1',
    random_baseline=False``. AdaFocusV2 (16 exits): ``p_values=V2_P_VALUES, p_scale=V2_P_SCALE,
    first_power=1, random_baseline=False`` (``P_GRIDS['v2']``).
    """
    check_criterion(criterion)
    check_metric(metric)
    t_start = time.perf_counter()
    timings: Dict[str, float] = {}
    train_logits = check_logits(train_logits, "train_logits")
    val_logits = check_logits(val_logits, "val_logits")
    n1, k_stages, c = train_logits.shape
    n2 = val_logits.shape[0]
    if val_logits.shape[1:] != (k_stages, c):
        raise ValueError(f"val_logits {tuple(val_logits.shape)} does not match train_logits "
                         f"{tuple(train_logits.shape)} in stages/classes")
    flops = [float(f) for f in flops]
    if len(flops) != k_stages:
        raise ValueError(f"{len(flops)} FLOPs values for {k_stages} stages")

    t = time.perf_counter()
    train_scores = exit_scores(train_logits, criterion)
    timings["criterion_train"] = time.perf_counter() - t

    t = time.perf_counter()
    if metric == "top1":
        val_scores = exit_scores(val_logits, criterion)
        row_max = val_scores if criterion == "confidence" else None
        stage_metric = StageMetric(val_logits, val_targets, "top1", row_max=row_max)
    else:
        probs, val_scores = softmax_table(val_logits, criterion)
        stage_metric = StageMetric(val_logits, val_targets, "mAP", absent=absent, probs=probs)
    timings["criterion_val_and_metric_setup"] = time.perf_counter() - t

    t = time.perf_counter()
    order = descending_order(train_scores)
    timings["sort"] = time.perf_counter() - t

    gen = _generator_from_seed(seed, generator) if random_baseline else None
    points: List[BudgetPoint] = []
    t_solve = t_eval = t_rand = 0.0
    for p in p_values:
        t = time.perf_counter()
        q = geometric_exit_distribution(p, k_stages, p_scale=p_scale, first_power=first_power)
        quota = exit_quota(q, n1)
        thresholds = solve_thresholds(train_scores, quota=quota, order=order, on_overflow=on_overflow)
        t_solve += time.perf_counter() - t

        t = time.perf_counter()
        exits = assign_exits(val_scores, thresholds)
        counts = count_exits(exits, k_stages)
        value = stage_metric(exits)
        t_eval += time.perf_counter() - t

        t = time.perf_counter()
        random_value = (stage_metric(random_exit_baseline(counts, gen)) if random_baseline
                        else float("nan"))
        t_rand += time.perf_counter() - t

        points.append(BudgetPoint(
            p=float(p), expected_gflops=expected_gflops(counts, flops), metric=value,
            random_metric=random_value, exit_counts=counts.tolist(),
            exit_ratios=exit_ratios(counts).tolist(), thresholds=thresholds.tolist(),
            quota=quota.tolist(), q=normalised_distribution(q).tolist()))
    timings.update(solve=t_solve, evaluate=t_eval, random_baseline=t_rand)

    t = time.perf_counter()
    fixed = fixed_exit_curve(None, None, flops, stage_metric=stage_metric)
    timings["fixed_exits"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t_start
    return SweepResult(criterion=criterion, metric=metric, absent=absent, num_stages=k_stages,
                       num_train=n1, num_val=n2, flops=flops,
                       seed=None if (generator is not None or not random_baseline) else seed,
                       points=points, fixed_exits=fixed, last_stage_metric=fixed[-1].metric,
                       timings=timings, p_scale=float(p_scale), first_power=int(first_power))
