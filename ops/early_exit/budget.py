"""Thresholds for a FLOPs budget: the geometric exit distribution whose cost fits a budget.

The official code only sweeps a fixed grid of p; deployment needs one set of thresholds whose
average cost stays within a given number of GFLOPs. :func:`thresholds_for_budget` searches p for
that, on the threshold set itself; :mod:`.thresholds_file` stores the result.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from .solver import (assign_exits, check_scores, count_exits, descending_order, exit_quota,
                     geometric_exit_distribution, solve_thresholds)

__all__ = ["BudgetThresholds", "thresholds_for_budget", "geometric_p_for_cost", "quantile_exit_stages",
           "evenly_spaced_budgets"]


@dataclass
class BudgetThresholds:
    """Result of :func:`thresholds_for_budget`."""
    thresholds: torch.Tensor       # (K,)
    p: float                       # geometric parameter that produced them
    expected_gflops: float         # average cost on the threshold set itself (float64)
    budget_gflops: float
    exit_counts: torch.Tensor      # (K,) threshold-set exits
    evaluations: int               # solver runs used by the search


def thresholds_for_budget(train_scores: torch.Tensor, flops: Sequence[float], budget_gflops: float, *,
                          tol: float = 1e-6, p_range=(1e-9, None), grid: int = 49,
                          max_iter: int = 64, order: Optional[torch.Tensor] = None,
                          on_overflow: str = "clamp") -> BudgetThresholds:
    """Thresholds whose average cost on the threshold set is <= ``budget_gflops`` and as close as found.

    Method: the cost c(p) = mean FLOPs of the threshold set's own exits (with thresholds solved for
    the geometric distribution of parameter p, :func:`.solver.solve_thresholds`) is a step function
    that grows with p (q shifts mass to later stages) apart from small non-monotone steps caused by
    the floor() quotas. The search (1) evaluates c on ``grid`` log-spaced p in [p_lo, p_hi] (p_hi
    defaults to max(1e6, 10 N), where nobody exits early, p_lo = 1e-9 where everybody leaves at
    stage 0); (2) in every grid interval where c crosses the budget (c(lo) <= budget < c(hi)) bisects
    log p, keeping lo feasible and hi infeasible, until c(lo) is within ``tol`` of the budget, the
    interval is below float resolution, or ``max_iter`` steps; (3) returns the feasible (c <= budget)
    candidate with the largest cost among everything evaluated. At a bisection's limit the two sides
    differ by one quota step, i.e. usually one sample moving to the last stage, so the result is
    within (max FLOPs - min FLOPs) / N of the budget whenever the budget is reachable. Raises
    ``ValueError`` when even the cheapest assignment found exceeds the budget.
    """
    scores = check_scores(train_scores)
    n, k_stages = scores.shape
    flops_t = torch.tensor([float(f) for f in flops], dtype=torch.float64)
    if flops_t.numel() != k_stages:
        raise ValueError(f"{flops_t.numel()} FLOPs values for {k_stages} stages")
    budget = float(budget_gflops)
    if not math.isfinite(budget):
        raise ValueError(f"budget must be finite, got {budget}")
    if order is None:
        order = descending_order(scores)
    p_lo = float(p_range[0])
    p_hi = float(p_range[1]) if p_range[1] is not None else max(1e6, 10.0 * n)
    if not 0 < p_lo < p_hi:
        raise ValueError(f"need 0 < p_lo < p_hi, got {p_lo}, {p_hi}")

    cache: Dict[float, tuple] = {}   # log p -> (cost, p, thresholds, exit counts)

    def cost(u: float) -> float:
        if u not in cache:
            p = math.exp(u)
            quota = exit_quota(geometric_exit_distribution(p, k_stages), n)
            thr = solve_thresholds(scores, quota=quota, order=order, on_overflow=on_overflow)
            counts = count_exits(assign_exits(scores, thr), k_stages)
            cache[u] = (float((counts.double() * flops_t).sum() / n), p, thr, counts)
        return cache[u][0]

    us = np.linspace(math.log(p_lo), math.log(p_hi), max(2, grid)).tolist()
    costs = [cost(u) for u in us]
    for j in range(len(us) - 1):
        if not (costs[j] <= budget < costs[j + 1]):
            continue
        lo, hi = us[j], us[j + 1]
        for _ in range(max_iter):
            if budget - cost(lo) <= tol:
                break
            mid = 0.5 * (lo + hi)
            if mid <= lo or mid >= hi:
                break
            if cost(mid) <= budget:
                lo = mid
            else:
                hi = mid
    feasible = [v for v in cache.values() if v[0] <= budget]
    if not feasible:
        cheapest = min(v[0] for v in cache.values())
        raise ValueError(f"budget {budget} GFLOPs is below the cheapest cost reachable on this "
                         f"threshold set ({cheapest:.6f} GFLOPs)")
    best = max(feasible, key=lambda v: (v[0], -v[1]))
    return BudgetThresholds(thresholds=best[2], p=best[1], expected_gflops=best[0],
                            budget_gflops=budget, exit_counts=best[3], evaluations=len(cache))


def geometric_p_for_cost(flops: Sequence[float], budget_gflops: float, low: float = 1e-4, high: float = 1e4) -> float:
    """p of the geometric exit distribution over ``len(flops)`` stages whose expected cost is ``budget_gflops``
    (no threshold set involved: for simulations and benchmarks). Raises ValueError outside the reachable range."""
    flops = torch.as_tensor(flops, dtype=torch.float64)

    def cost(p: float) -> float:
        return float((geometric_exit_distribution(p, flops.numel()).double() * flops).sum())

    if not cost(low) <= budget_gflops <= cost(high):
        raise ValueError(f"budget {budget_gflops} GFLOPs is outside [{cost(low):.4f}, {cost(high):.4f}] "
                         f"(geometric exit distributions over these stages)")
    a, b = math.log(low), math.log(high)
    for _ in range(200):  # the expected cost grows with p
        mid = 0.5 * (a + b)
        a, b = (mid, b) if cost(math.exp(mid)) < budget_gflops else (a, mid)
    return math.exp(0.5 * (a + b))


def quantile_exit_stages(q: torch.Tensor, count: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """(count,) exit stages that follow the distribution q (K,) as closely as ``count`` videos can: the
    (i + 0.5) / count quantiles of q, in a random order."""
    cdf = torch.cumsum(q.double(), 0)
    cdf[-1] = 1.0
    stages = torch.searchsorted(cdf, (torch.arange(count, dtype=torch.float64) + 0.5) / count).clamp_(max=q.numel() - 1)
    return stages[torch.randperm(count, generator=generator)]


def evenly_spaced_budgets(flops: Sequence[float], count: int = 6) -> List[float]:
    """``count`` average costs (GFLOPs per video) evenly spaced above the cheapest exit, the last one the full
    cost: ``flops[0] + (flops[-1] - flops[0]) * i / count`` for i = 1..count (the paper's Table 10 reports
    six such budgets)."""
    if count < 1:
        raise ValueError(f"count must be positive, got {count}")
    low, high = float(flops[0]), float(flops[-1])
    return [low + (high - low) * i / count for i in range(1, count + 1)]
