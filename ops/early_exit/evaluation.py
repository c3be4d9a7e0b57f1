"""Evaluating exits on logits: the metric, cost and exit ratios of one exit assignment, and baselines.

An exit assignment gives every sample the stage it leaves at; the sample's prediction is the
logits of that stage. Metrics (:data:`ops.metrics.METRICS`, the project's one vocabulary, re-exported
here): ``'mAP'`` is the official ActivityNet/FCVID metric (softmax of the chosen logits, then AP per
class, see :mod:`ops.metrics`; absent classes are excluded from the mean by default,
``absent='zero'`` counts them as 0 like the official), ``'top1'`` is top-1 accuracy on the first
label column (minik).

Official behaviour reproduced (see docs/official-behaviour.md, "Early exit"): the expected FLOPs
sum_k (count_k / N) * FLOPs_k are accumulated in float32 in stage order and the exit ratios are
``count / N`` in float32; the random baseline gives stage k to the samples ``perm[c_{k-1}:c_k]`` of a
permutation (c = cumulative counts), here drawn from a seeded generator; the fixed-exit curve is the
official (unused) ``fix_exit``.
"""
from __future__ import annotations

import random as _pyrandom
from dataclasses import dataclass
from typing import List, Optional, Sequence, Union

import numpy as np
import torch

from ..metrics import METRICS, AveragePrecision, topk_accuracy
from .criteria import exit_scores, softmax_table
from .solver import assign_exits, count_exits

__all__ = [
    "METRICS",
    "expected_gflops",
    "exit_ratios",
    "random_exit_baseline",
    "StageMetric",
    "ExitEvaluation",
    "evaluate_exits",
    "FixedExitPoint",
    "fixed_exit_curve",
]

#: What draws the random baseline's permutations; None is torch's global RNG.
Generator = Union[torch.Generator, np.random.Generator, _pyrandom.Random, None]


def check_metric(metric: str) -> None:
    """Raise ``ValueError`` unless ``metric`` is one of :data:`METRICS`."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; expected one of {METRICS}")


def check_logits(logits: torch.Tensor, name: str = "logits") -> torch.Tensor:
    """Exit logits as a contiguous CPU float (N, K, C) tensor; ``ValueError`` for another shape."""
    logits = torch.as_tensor(logits).detach().cpu()
    if logits.dim() != 3 or 0 in logits.shape:
        raise ValueError(f"{name} must be a non-empty (N, K, C) tensor, got {tuple(logits.shape)}")
    if logits.dtype not in (torch.float32, torch.float64):
        logits = logits.float()
    return logits.contiguous()


def _primary_labels(targets: torch.Tensor, n: int) -> torch.Tensor:
    targets = torch.as_tensor(targets).detach().cpu()
    if targets.dtype == torch.bool or targets.is_floating_point():
        raise ValueError("top-1 needs label ids ((N,) or padded (N, L)), not a multi-hot matrix")
    y = targets[:, 0] if targets.dim() == 2 else targets
    if y.shape != (n,):
        raise ValueError(f"targets must have {n} rows, got {tuple(targets.shape)}")
    return y.long()


def _check_exits(exits, num_samples: int, num_stages: int) -> np.ndarray:
    exits = torch.as_tensor(exits).long().reshape(-1).numpy()
    if exits.shape != (num_samples,) or (exits.size and (exits.min() < 0 or exits.max() >= num_stages)):
        raise ValueError(f"exits must be {num_samples} stage ids in [0, {num_stages})")
    return exits


# ---------------------------------------------------------------------------------------------------
# Cost and exit ratios
# ---------------------------------------------------------------------------------------------------
def expected_gflops(exit_counts: torch.Tensor, flops: Sequence[float]) -> float:
    """sum_k (count_k / N) * FLOPs_k, accumulated in float32 in stage order exactly as the official."""
    counts = torch.as_tensor(exit_counts).to(torch.float32).reshape(-1)
    flops = [float(f) for f in flops]
    if len(flops) != counts.numel():
        raise ValueError(f"{len(flops)} FLOPs values for {counts.numel()} stages")
    n = int(round(float(counts.double().sum())))
    if n <= 0:
        raise ValueError("no samples")
    total = torch.zeros((), dtype=torch.float32)
    for k in range(counts.numel()):
        total = total + (counts[k] * 1.0 / n) * flops[k]
    return float(total)


def exit_ratios(exit_counts: torch.Tensor) -> torch.Tensor:
    """count / N per stage, float32 (official ``ratio``)."""
    counts = torch.as_tensor(exit_counts).to(torch.float32)
    return counts * 1.0 / int(round(float(counts.double().sum())))


# ---------------------------------------------------------------------------------------------------
# Random-exit baseline
# ---------------------------------------------------------------------------------------------------
def _permutation(n: int, generator: Generator) -> torch.Tensor:
    if generator is None:
        return torch.randperm(n)
    if isinstance(generator, torch.Generator):
        return torch.randperm(n, generator=generator, device=generator.device).cpu()
    if isinstance(generator, np.random.Generator):
        return torch.from_numpy(generator.permutation(n).astype(np.int64))
    if isinstance(generator, _pyrandom.Random):
        idx = list(range(n))
        generator.shuffle(idx)                  # the official random_evaluate's draw
        return torch.tensor(idx, dtype=torch.long)
    raise TypeError(f"generator must be a torch.Generator, numpy Generator or random.Random, "
                    f"got {type(generator).__name__}")


def random_exit_baseline(exit_counts: torch.Tensor, generator: Generator = None, *,
                         permutation: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Random early exit with the same per-stage counts: exits (N,) int64.

    Samples ``perm[c_{k-1}:c_k]`` (c = cumulative counts) go to stage k, as the official
    ``random_evaluate``; ``perm`` is ``permutation`` when given, otherwise drawn from ``generator``
    (torch.Generator, numpy Generator, or random.Random, which reproduces the official
    ``random.shuffle``; None = torch's global RNG).
    """
    counts = torch.as_tensor(exit_counts).long().reshape(-1)
    if (counts < 0).any():
        raise ValueError("exit counts must be non-negative")
    n = int(counts.sum())
    if permutation is None:
        perm = _permutation(n, generator)
    else:
        perm = torch.as_tensor(permutation).long().reshape(-1)
        if perm.numel() != n or not torch.equal(torch.sort(perm).values, torch.arange(n)):
            raise ValueError(f"permutation must be a permutation of range({n})")
    exits = np.empty(n, dtype=np.int64)
    exits[perm.numpy()] = np.repeat(np.arange(counts.numel()), counts.numpy())
    return torch.from_numpy(exits)


# ---------------------------------------------------------------------------------------------------
# The metric of exit assignments
# ---------------------------------------------------------------------------------------------------
class StageMetric:
    """The metric of "every sample takes the logits of its exit", with per-stage work done once.

    For evaluating many exit assignments of the same logits (a budget sweep). top1: one pass finds,
    per sample and stage, whether the first-label logit is the row maximum (ties count as hits, like
    :func:`ops.metrics.topk_accuracy`). mAP: the softmax of every stage is kept (N, K, C) and each
    call gathers the chosen rows and runs :class:`ops.metrics.AveragePrecision`. ``row_max`` (N, K)
    / ``probs`` (N, K, C) may be passed in when already computed.
    """

    def __init__(self, logits: torch.Tensor, targets: torch.Tensor, metric: str = "mAP", *,
                 absent: str = "exclude", row_max: Optional[torch.Tensor] = None,
                 probs: Optional[torch.Tensor] = None):
        check_metric(metric)
        logits = check_logits(logits)
        self.metric = metric
        self.num_samples, self.num_stages, self.num_classes = logits.shape
        self._rows = np.arange(self.num_samples)
        if metric == "top1":
            y = _primary_labels(targets, self.num_samples)
            if int(y.min()) < 0 or int(y.max()) >= self.num_classes:
                raise ValueError(f"top-1 labels must lie in [0, {self.num_classes})")
            idx = y.view(-1, 1, 1).expand(-1, self.num_stages, 1)
            target_logit = logits.gather(2, idx).squeeze(2)
            mx = logits.amax(-1) if row_max is None else row_max
            self.correct = (target_logit >= mx).numpy()   # NaN anywhere in the row -> miss
        else:
            if probs is None:
                probs = softmax_table(logits)[0]
            self.probs = probs
            self._table = probs.reshape(-1, self.num_classes).numpy()
            self._base = self._rows * self.num_stages
            self.ap = AveragePrecision(targets, self.num_classes, absent=absent)

    def __call__(self, exits: torch.Tensor) -> float:
        """The metric (percent) when sample i takes the logits of stage ``exits[i]``."""
        exits = _check_exits(exits, self.num_samples, self.num_stages)
        if self.metric == "top1":
            return float(self.correct[self._rows, exits].sum()) * 100.0 / self.num_samples
        return self.ap.evaluate_rows(self._table, self._base + exits)[0]

    def stage(self, k: int) -> float:
        """The metric when everybody exits at stage k."""
        if self.metric == "top1":
            return float(self.correct[:, k].sum()) * 100.0 / self.num_samples
        return self.ap.evaluate_rows(self._table, self._base + k)[0]

    def stages(self, steps: Optional[Sequence[int]] = None) -> List[Optional[float]]:
        """:meth:`stage` of every stage: the metric after t = 0..K-1 steps (the paper's "after t frames").

        ``steps`` (K,): the steps each stage has taken, increasing (a model's ``exit_focus_frames``), when
        they are not 0..K-1: the list is then indexed by steps, entry t the metric after t steps, None
        where no stage stops (a Uni-AdaFocus without the glance exit: entry 0)."""
        if steps is None:
            return [self.stage(k) for k in range(self.num_stages)]
        steps = [int(t) for t in steps]
        if len(steps) != self.num_stages or steps != sorted(set(steps)) or steps[0] < 0:
            raise ValueError(f"steps must be {self.num_stages} increasing counts, got {steps}")
        by_step: List[Optional[float]] = [None] * (steps[-1] + 1)
        for k, t in enumerate(steps):
            by_step[t] = self.stage(k)
        return by_step


@dataclass
class ExitEvaluation:
    """Result of :func:`evaluate_exits`."""
    exits: torch.Tensor            # (N,) int64 exit stage per sample
    outputs: torch.Tensor          # (N, C) the logits of each sample's exit
    exit_counts: torch.Tensor      # (K,) int64
    exit_ratios: torch.Tensor      # (K,) float32, count / N
    expected_gflops: float         # float32-accumulated, as the official
    metric: float                  # percent
    metric_name: str


def evaluate_exits(logits: torch.Tensor, targets: torch.Tensor, flops: Sequence[float], *,
                   exits: Optional[torch.Tensor] = None, thresholds: Optional[torch.Tensor] = None,
                   criterion: str = "confidence", metric: str = "mAP",
                   absent: str = "exclude") -> ExitEvaluation:
    """Evaluate one exit assignment on (N, K, C) logits.

    Give either ``exits`` (N,) or ``thresholds`` (K,) (then ``criterion`` scores the logits and
    :func:`.solver.assign_exits` picks the exits). ``metric='mAP'``: mAP of softmax(chosen logits)
    against ``targets`` (padded label lists or multi-hot); ``'top1'``: top-1 on the first label column.
    """
    check_metric(metric)
    logits = check_logits(logits)
    n, k_stages, c = logits.shape
    if len(flops) != k_stages:
        raise ValueError(f"{len(flops)} FLOPs values for {k_stages} stages")
    if (exits is None) == (thresholds is None):
        raise ValueError("give exactly one of exits= or thresholds=")
    if exits is None:
        exits = assign_exits(exit_scores(logits, criterion), thresholds)
    exits = torch.from_numpy(_check_exits(exits, n, k_stages))
    outputs = logits[torch.arange(n), exits]
    counts = count_exits(exits, k_stages)
    if metric == "top1":
        value = topk_accuracy(outputs, _primary_labels(targets, n), ks=(1,))[0]
    else:
        value = AveragePrecision(targets, c, absent=absent)(torch.softmax(outputs, -1))[0]
    return ExitEvaluation(exits=exits, outputs=outputs, exit_counts=counts,
                          exit_ratios=exit_ratios(counts), expected_gflops=expected_gflops(counts, flops),
                          metric=value, metric_name=metric)


# ---------------------------------------------------------------------------------------------------
# Fixed exits
# ---------------------------------------------------------------------------------------------------
@dataclass
class FixedExitPoint:
    """Everybody exits at ``stage``."""
    stage: int
    gflops: float
    metric: float


def fixed_exit_curve(logits: torch.Tensor, targets: torch.Tensor, flops: Sequence[float], *,
                     metric: str = "mAP", absent: str = "exclude",
                     stage_metric: Optional[StageMetric] = None) -> List[FixedExitPoint]:
    """Metric and FLOPs of always exiting at stage k, for every k (the official, unused ``fix_exit``).

    ``stage_metric`` replaces ``logits``, ``targets``, ``metric`` and ``absent`` when given.
    """
    sm = stage_metric if stage_metric is not None else StageMetric(logits, targets, metric, absent=absent)
    if len(flops) != sm.num_stages:
        raise ValueError(f"{len(flops)} FLOPs values for {sm.num_stages} stages")
    return [FixedExitPoint(k, float(flops[k]), sm.stage(k)) for k in range(sm.num_stages)]
