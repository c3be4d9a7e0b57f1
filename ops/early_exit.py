"""Sample-wise early exit: criteria, MSDNet-style threshold solving, evaluation and budget sweeps.

The network has K exits ("stages"; K = 17 for Uni-AdaFocus: stage 0 is the last glance exit, stage k
follows k focus frames). For every video and stage a *criterion* scores how confident the prediction
is (larger = more confident); a video leaves at the first stage whose score reaches that stage's
threshold, and at the last stage otherwise. Thresholds are fitted on a threshold set (the official
code uses the augmented training clips) so that a prescribed fraction q_k of it leaves at stage k, with
q_k proportional to p**k (SPEC §5.2). Everything is vectorised over samples; only the K stages are
looped over.

Official behaviour reproduced (SPEC §5; checked against ``early_exit_parity.pt``):

* q comes from ``exp(log(p) * k)`` in float32, normalised once by :func:`geometric_exit_distribution`
  and once more inside :func:`solve_thresholds` (the official normalises twice); the per-stage quota
  is ``floor(N * q_k)`` with the product rounded to float32. (Rounding in float64 instead changes the
  quota at p = 0.05, 0.10, 0.30 for N = 300 and breaks parity.)
* At stage k < K-1 with quota n > 0, the n samples with the largest stage-k score among those not yet
  taken are taken (ties: lower sample index first; the official's ``torch.sort`` leaves the order
  of ties unspecified), and the threshold is the n-th of those scores. Stages with quota 0 keep 1e8;
  the last stage gets -1e8. When the quota exceeds the samples left, the official code raises
  ``IndexError``; here ``on_overflow='clamp'`` (default) takes all that are left and ``'error'``
  raises ``ValueError``. (With geometric q this happens only through float rounding.)
* Expected FLOPs = sum_k (count_k / N) * FLOPs_k accumulated in float32 in stage order, and the exit
  ratios are ``count / N`` in float32, exactly as the official.

Fixed (SPEC §5.4): the entropy criterion is NaN-free (0 * log 0 := 0; the official returns NaN when a
softmax probability underflows, e.g. logits [0, 120, 0]); a sample always has an exit (the official
fallback ``logits[k]`` crashes); the random baseline is seeded; thresholds can be saved, loaded and
fitted to a FLOPs budget.

Criteria (``exit_scores``): ``'confidence'`` max raw logit (official), ``'entropy'`` negative entropy
sum_c p_c log p_c of the softmax (official formula, bit-identical where the official is finite),
``'max_prob'`` max softmax probability.

Metrics: ``'map'`` is the official ActivityNet/FCVID metric (softmax of the chosen logits, then AP per
class, see :mod:`.metrics`; absent classes are excluded from the mean by default, ``absent='zero'``
counts them as 0 like the official), ``'top1'`` top-1 accuracy on the first label column (minik).
"""
from __future__ import annotations

import json
import math
import os
import random as _pyrandom
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import torch

from .files import write_text_atomic
from .metrics import AveragePrecision, topk_accuracy

__all__ = [
    "CRITERIA",
    "METRICS",
    "exit_scores",
    "geometric_exit_distribution",
    "exit_quota",
    "descending_order",
    "solve_thresholds",
    "assign_exits",
    "count_exits",
    "expected_gflops",
    "exit_ratios",
    "random_exit_baseline",
    "StageMetric",
    "ExitEvaluation",
    "evaluate_exits",
    "FixedExitPoint",
    "fixed_exit_curve",
    "BudgetPoint",
    "SweepResult",
    "budget_sweep",
    "BudgetThresholds",
    "thresholds_for_budget",
    "ThresholdsFile",
    "ThresholdsFileError",
    "save_thresholds",
    "load_thresholds",
    "DEFAULT_P_VALUES",
    "NO_EXIT_THRESHOLD",
    "LAST_STAGE_THRESHOLD",
]

CRITERIA = ("confidence", "entropy", "max_prob")
METRICS = ("map", "top1")
DEFAULT_P_VALUES = tuple(i / 20 for i in range(1, 20))
NO_EXIT_THRESHOLD = 1e8          # a stage nobody is assigned to (official)
LAST_STAGE_THRESHOLD = -1e8      # the last stage accepts everyone (official)
_CHUNK_ROWS = 4096

Generator = Union[torch.Generator, np.random.Generator, _pyrandom.Random, None]


# ---------------------------------------------------------------------------------------------------
# Criteria
# ---------------------------------------------------------------------------------------------------
def _check_criterion(criterion: str) -> None:
    if criterion not in CRITERIA:
        raise ValueError(f"unknown criterion {criterion!r}; expected one of {CRITERIA}")


def _float_rows(x: torch.Tensor) -> torch.Tensor:
    if x.dtype not in (torch.float32, torch.float64):
        x = x.float()
    return x.reshape(-1, x.shape[-1])


def _neg_entropy_from_probs(p: torch.Tensor) -> torch.Tensor:
    # sum_c p log p with 0 log 0 := 0: the official expression (bit for bit where it is finite);
    # a NaN probability (NaN logits) still gives NaN, so such a sample never exits there.
    t = torch.log(p)
    t.mul_(p)
    t.masked_fill_(p == 0, 0.0)
    return t.sum(-1)


def _chunked(rows: torch.Tensor, fn, out_dtype) -> torch.Tensor:
    out = torch.empty(rows.shape[0], dtype=out_dtype)
    for s in range(0, rows.shape[0], _CHUNK_ROWS):
        out[s:s + _CHUNK_ROWS] = fn(rows[s:s + _CHUNK_ROWS])
    return out


def exit_scores(logits: torch.Tensor, criterion: str = "confidence") -> torch.Tensor:
    """Criterion per sample and stage: logits (..., C) -> scores (...); larger = more confident.

    Works on (N, K, C) exit logits (-> (N, K)) or any leading shape. Half precision is upcast to
    float32. Softmax-based criteria are computed in row chunks, so memory stays O(chunk * C).
    """
    _check_criterion(criterion)
    logits = torch.as_tensor(logits).detach()
    if logits.dim() < 1 or logits.shape[-1] == 0:
        raise ValueError(f"logits must have a non-empty class dimension, got {tuple(logits.shape)}")
    lead = logits.shape[:-1]
    rows = _float_rows(logits)
    if criterion == "confidence":
        out = rows.amax(-1)
    elif criterion == "entropy":
        out = _chunked(rows, lambda x: _neg_entropy_from_probs(torch.softmax(x, -1)), rows.dtype)
    else:
        out = _chunked(rows, lambda x: torch.softmax(x, -1).amax(-1), rows.dtype)
    return out.reshape(lead)


def _softmax_table(logits: torch.Tensor, criterion: Optional[str] = None):
    """softmax(logits) over the last dim, plus ``exit_scores(logits, criterion)`` from the same pass.

    Computed in row chunks into one numpy-allocated buffer (numpy asks for transparent huge pages,
    so filling ~1 GB does not pay a page fault per 4 KiB as a fresh torch tensor does); the
    criterion values are bit-identical to :func:`exit_scores`.
    """
    lead, c = logits.shape[:-1], logits.shape[-1]
    rows = _float_rows(logits)
    probs = torch.from_numpy(np.empty(tuple(rows.shape), dtype=np.float64 if rows.dtype == torch.float64
                                      else np.float32))
    scores = torch.empty(rows.shape[0], dtype=rows.dtype)
    for s in range(0, rows.shape[0], _CHUNK_ROWS):
        p = torch.softmax(rows[s:s + _CHUNK_ROWS], -1)
        probs[s:s + _CHUNK_ROWS] = p
        if criterion == "entropy":
            scores[s:s + _CHUNK_ROWS] = _neg_entropy_from_probs(p)
        elif criterion == "max_prob":
            scores[s:s + _CHUNK_ROWS] = p.amax(-1)
    if criterion == "confidence":
        scores = rows.amax(-1)
    return probs.reshape(*lead, c), (scores.reshape(lead) if criterion is not None else None)


# ---------------------------------------------------------------------------------------------------
# Threshold solving
# ---------------------------------------------------------------------------------------------------
def geometric_exit_distribution(p: float, num_stages: int) -> torch.Tensor:
    """Target exit distribution q_k proportional to p**k, k = 0..K-1, normalised (float32).

    Computed as the official: ``exp(log(p) * k)`` in float32, divided by its sum. For p > 1 the
    exponent is shifted by its maximum first (same q up to rounding, no float32 overflow for large p;
    the official sweep only uses p < 1, where nothing is shifted).
    """
    p = float(p)
    if not (p > 0 and math.isfinite(p)):
        raise ValueError(f"p must be a positive finite number, got {p}")
    if num_stages < 1:
        raise ValueError(f"num_stages must be >= 1, got {num_stages}")
    log_p = torch.log(torch.tensor([p], dtype=torch.float32))
    k = torch.arange(num_stages, dtype=torch.float32)
    if p > 1:
        k = k - (num_stages - 1)
    q = torch.exp(log_p * k)
    return q / q.sum()


def exit_quota(q: torch.Tensor, num_samples: int) -> torch.Tensor:
    """Official per-stage quota floor(N * q_k), with q normalised (again) and the product in float32.

    The last entry is informative only (the last stage takes whatever is left).
    """
    q = torch.as_tensor(q, dtype=torch.float32).detach().cpu().reshape(-1)
    if not torch.isfinite(q).all() or (q < 0).any() or float(q.sum()) <= 0:
        raise ValueError("q must be finite, non-negative and not all zero")
    q = q / q.sum()
    return torch.floor(q * num_samples).long()


def descending_order(scores: torch.Tensor) -> torch.Tensor:
    """(N, K) scores -> (K, N) sample indices by descending score per stage (ties: lower index first).

    Compute it once and pass it to :func:`solve_thresholds` to share it across budgets.
    """
    return torch.sort(scores.t(), dim=1, descending=True, stable=True).indices


def _check_scores(scores: torch.Tensor) -> torch.Tensor:
    scores = torch.as_tensor(scores).detach().cpu()
    if scores.dim() != 2 or scores.shape[1] < 1:
        raise ValueError(f"scores must be (N, K), got {tuple(scores.shape)}")
    if not scores.is_floating_point():
        scores = scores.float()
    return scores


def _solve(scores: torch.Tensor, quota: torch.Tensor, order: torch.Tensor, on_overflow: str):
    """Greedy stage-by-stage selection. Returns (thresholds (K,), stage that took each sample (N,)).

    numpy, single-threaded: these are many small O(N) steps, where torch's thread hand-offs cost
    more than the work.
    """
    sc, od = scores.numpy(), order.numpy()
    n, k_stages = sc.shape
    thresholds = np.full(k_stages, NO_EXIT_THRESHOLD, dtype=sc.dtype)
    taken = np.full(n, k_stages - 1, dtype=np.int64)
    free = np.ones(n, dtype=bool)
    for k, want in enumerate(torch.as_tensor(quota).tolist()[:k_stages - 1]):
        if want <= 0:
            continue
        order_k = od[k]
        avail = free[order_k]                              # free samples, in descending-score order
        rank = np.cumsum(avail)                            # running count of free samples
        have = int(rank[-1]) if n else 0
        if want > have:
            if on_overflow == "error":
                raise ValueError(f"stage {k}: quota {want} exceeds the {have} samples not yet exited")
            want = have
            if want == 0:
                continue
        last = int(np.searchsorted(rank, want))            # position of the want-th free sample
        thresholds[k] = sc[order_k[last], k]
        pick = order_k[:last + 1][avail[:last + 1]]
        free[pick] = False
        taken[pick] = k
    thresholds[k_stages - 1] = LAST_STAGE_THRESHOLD
    return torch.from_numpy(thresholds), torch.from_numpy(taken)


def solve_thresholds(scores: torch.Tensor, q: Optional[torch.Tensor] = None, *,
                     quota: Optional[torch.Tensor] = None, order: Optional[torch.Tensor] = None,
                     on_overflow: str = "clamp") -> torch.Tensor:
    """Official threshold solving on a threshold set: scores (N, K), target distribution q (K,).

    For k = 0..K-2 with quota n = floor(N * q_k) > 0 (see :func:`exit_quota`), the n highest-scoring
    samples not taken at an earlier stage are taken at stage k and T_k is the n-th of their scores;
    T_k = 1e8 when n = 0 and T_{K-1} = -1e8. Instead of q, explicit per-stage counts may be given as
    ``quota`` (K,) (the last entry is ignored). ``order`` is :func:`descending_order` (scores),
    computed here when omitted. ``on_overflow``: what to do when n exceeds the samples left (the
    official raises IndexError): ``'clamp'`` takes them all, ``'error'`` raises ``ValueError``.
    Returns thresholds (K,) in the scores' dtype.
    """
    if on_overflow not in ("clamp", "error"):
        raise ValueError(f"on_overflow must be 'clamp' or 'error', got {on_overflow!r}")
    scores = _check_scores(scores)
    if (q is None) == (quota is None):
        raise ValueError("give exactly one of q or quota=")
    if quota is None:
        q = torch.as_tensor(q).reshape(-1)
        if q.numel() != scores.shape[1]:
            raise ValueError(f"q has {q.numel()} entries for {scores.shape[1]} stages")
        quota = exit_quota(q, scores.shape[0])
    else:
        quota = torch.as_tensor(quota).long().reshape(-1)
        if quota.numel() != scores.shape[1]:
            raise ValueError(f"quota has {quota.numel()} entries for {scores.shape[1]} stages")
    if order is None:
        order = descending_order(scores)
    return _solve(scores, quota, order, on_overflow)[0]


def assign_exits(scores: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """Exit stage per sample (N,) int64: the first k with score_k >= T_k; the last stage otherwise.

    A NaN score never qualifies (the sample moves on), so every sample gets an exit.
    """
    sc = _check_scores(scores).numpy()
    thr = torch.as_tensor(thresholds).detach().cpu().reshape(-1).numpy()
    if thr.size != sc.shape[1]:
        raise ValueError(f"{thr.size} thresholds for {sc.shape[1]} stages")
    narrow = thr.astype(sc.dtype)
    if np.array_equal(narrow, thr, equal_nan=True):      # exact in the scores' dtype: compare there
        thr = narrow
    ok = sc >= thr                                       # mixed float32/float64 compares exactly
    ok[:, -1] = True
    return torch.from_numpy(ok.argmax(1).astype(np.int64))


def count_exits(exits: torch.Tensor, num_stages: int) -> torch.Tensor:
    """Exit counts per stage (K,) int64."""
    exits = torch.as_tensor(exits).reshape(-1).numpy()
    return torch.from_numpy(np.bincount(exits, minlength=num_stages)[:num_stages].astype(np.int64))


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
# Evaluation
# ---------------------------------------------------------------------------------------------------
def _check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; expected one of {METRICS}")


def _primary_labels(targets: torch.Tensor, n: int) -> torch.Tensor:
    targets = torch.as_tensor(targets).detach().cpu()
    if targets.dtype == torch.bool or targets.is_floating_point():
        raise ValueError("top-1 needs label ids ((N,) or padded (N, L)), not a multi-hot matrix")
    y = targets[:, 0] if targets.dim() == 2 else targets
    if y.shape != (n,):
        raise ValueError(f"targets must have {n} rows, got {tuple(targets.shape)}")
    return y.long()


def _check_logits(logits: torch.Tensor, name: str = "logits") -> torch.Tensor:
    logits = torch.as_tensor(logits).detach().cpu()
    if logits.dim() != 3 or 0 in logits.shape:
        raise ValueError(f"{name} must be a non-empty (N, K, C) tensor, got {tuple(logits.shape)}")
    if logits.dtype not in (torch.float32, torch.float64):
        logits = logits.float()
    return logits.contiguous()


class StageMetric:
    """The metric of "every sample takes the logits of its exit", with per-stage work done once.

    top1: one pass finds, per sample and stage, whether the first-label logit is the row maximum
    (ties count as hits, like :func:`.metrics.topk_accuracy`). map: the softmax of every stage is
    kept (N, K, C) and each call gathers the chosen rows and runs :class:`.metrics.AveragePrecision`.
    ``row_max`` (N, K) / ``probs`` (N, K, C) may be passed in when already computed.
    """

    def __init__(self, logits: torch.Tensor, targets: torch.Tensor, metric: str = "map", *,
                 absent: str = "exclude", row_max: Optional[torch.Tensor] = None,
                 probs: Optional[torch.Tensor] = None):
        _check_metric(metric)
        logits = _check_logits(logits)
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
                probs = _softmax_table(logits)[0]
            self.probs = probs
            self._table = probs.reshape(-1, self.num_classes).numpy()
            self._base = self._rows * self.num_stages
            self.ap = AveragePrecision(targets, self.num_classes, absent=absent)

    def __call__(self, exits: torch.Tensor) -> float:
        exits = torch.as_tensor(exits).reshape(-1).numpy()
        if exits.shape != (self.num_samples,) or (exits.size and (exits.min() < 0 or exits.max() >= self.num_stages)):
            raise ValueError(f"exits must be {self.num_samples} stage ids in [0, {self.num_stages})")
        if self.metric == "top1":
            return float(self.correct[self._rows, exits].sum()) * 100.0 / self.num_samples
        return self.ap.evaluate_rows(self._table, self._base + exits)[0]

    def stage(self, k: int) -> float:
        """The metric when everybody exits at stage k."""
        if self.metric == "top1":
            return float(self.correct[:, k].sum()) * 100.0 / self.num_samples
        return self.ap.evaluate_rows(self._table, self._base + k)[0]


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
                   criterion: str = "confidence", metric: str = "map",
                   absent: str = "exclude") -> ExitEvaluation:
    """Evaluate one exit assignment on (N, K, C) logits.

    Give either ``exits`` (N,) or ``thresholds`` (K,) (then ``criterion`` scores the logits and
    :func:`assign_exits` picks the exits). ``metric='map'``: mAP of softmax(chosen logits) against
    ``targets`` (padded label lists or multi-hot); ``'top1'``: top-1 on the first label column.
    """
    _check_metric(metric)
    logits = _check_logits(logits)
    n, k_stages, c = logits.shape
    if len(flops) != k_stages:
        raise ValueError(f"{len(flops)} FLOPs values for {k_stages} stages")
    if (exits is None) == (thresholds is None):
        raise ValueError("give exactly one of exits= or thresholds=")
    if exits is None:
        exits = assign_exits(exit_scores(logits, criterion), thresholds)
    exits = torch.as_tensor(exits).long().reshape(-1)
    if exits.numel() != n or (exits.numel() and (int(exits.min()) < 0 or int(exits.max()) >= k_stages)):
        raise ValueError(f"exits must be {n} stage ids in [0, {k_stages})")
    outputs = logits[torch.arange(n), exits]
    counts = count_exits(exits, k_stages)
    if metric == "top1":
        y = _primary_labels(targets, n)
        value = topk_accuracy(outputs, y, ks=(1,))[0]
    else:
        value = AveragePrecision(targets, c, absent=absent)(torch.softmax(outputs, -1))[0]
    return ExitEvaluation(exits=exits, outputs=outputs, exit_counts=counts,
                          exit_ratios=exit_ratios(counts), expected_gflops=expected_gflops(counts, flops),
                          metric=value, metric_name=metric)


@dataclass
class FixedExitPoint:
    """Everybody exits at ``stage``."""
    stage: int
    gflops: float
    metric: float


def fixed_exit_curve(logits: torch.Tensor, targets: torch.Tensor, flops: Sequence[float], *,
                     metric: str = "map", absent: str = "exclude",
                     stage_metric: Optional[StageMetric] = None) -> List[FixedExitPoint]:
    """Metric and FLOPs of always exiting at stage k, for every k (the official, unused ``fix_exit``)."""
    sm = stage_metric if stage_metric is not None else StageMetric(logits, targets, metric, absent=absent)
    if len(flops) != sm.num_stages:
        raise ValueError(f"{len(flops)} FLOPs values for {sm.num_stages} stages")
    return [FixedExitPoint(k, float(flops[k]), sm.stage(k)) for k in range(sm.num_stages)]


# ---------------------------------------------------------------------------------------------------
# Budget sweep
# ---------------------------------------------------------------------------------------------------
@dataclass
class BudgetPoint:
    """One point of the sweep (one p)."""
    p: float
    expected_gflops: float         # on the evaluation set, float32 as the official
    metric: float                  # percent
    random_metric: float           # random exits with the same counts
    exit_counts: List[int]         # evaluation-set exits per stage
    exit_ratios: List[float]       # float32 count / N, as floats
    thresholds: List[float]        # (K,) fitted on the threshold set; 1e8 = nobody, -1e8 = last
    quota: List[int]               # threshold-set quota floor(N_train * q_k)


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

    # official-style lists
    @property
    def p_values(self) -> List[float]:
        return [pt.p for pt in self.points]

    @property
    def flops_list(self) -> List[float]:
        return [pt.expected_gflops for pt in self.points]

    @property
    def metric_list(self) -> List[float]:
        return [pt.metric for pt in self.points]

    @property
    def random_metric_list(self) -> List[float]:
        return [pt.random_metric for pt in self.points]

    def thresholds_tensor(self) -> torch.Tensor:
        return torch.tensor([pt.thresholds for pt in self.points], dtype=torch.float64)

    def exit_counts_tensor(self) -> torch.Tensor:
        return torch.tensor([pt.exit_counts for pt in self.points], dtype=torch.long)

    def exit_ratios_tensor(self) -> torch.Tensor:
        return torch.tensor([pt.exit_ratios for pt in self.points], dtype=torch.float32)

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
                 criterion: str = "confidence", metric: str = "map",
                 p_values: Sequence[float] = DEFAULT_P_VALUES, seed: Optional[int] = 0,
                 generator: Generator = None, absent: str = "exclude",
                 on_overflow: str = "clamp") -> SweepResult:
    """The official early-exit experiment (``early_exit``), vectorised.

    For every p: q = :func:`geometric_exit_distribution` (p, K), thresholds from the threshold set
    (``train_logits`` (N1, K, C); ``train_targets`` is not used, as officially), exits of the
    evaluation set (``val_logits`` (N2, K, C)), its metric and expected GFLOPs; then the random
    baseline with the same counts (permutations drawn in budget order from ``generator``, by default
    ``torch.Generator().manual_seed(seed)``; pass ``random.Random(s)`` to replay the official
    ``random.shuffle`` draws). Also the fixed-exit curve and the last-stage metric. ``timings``
    holds a breakdown in seconds.
    """
    _check_criterion(criterion)
    _check_metric(metric)
    t_start = time.perf_counter()
    timings: Dict[str, float] = {}
    train_logits = _check_logits(train_logits, "train_logits")
    val_logits = _check_logits(val_logits, "val_logits")
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
        probs, val_scores = _softmax_table(val_logits, criterion)
        stage_metric = StageMetric(val_logits, val_targets, "map", absent=absent, probs=probs)
    timings["criterion_val_and_metric_setup"] = time.perf_counter() - t

    t = time.perf_counter()
    order = descending_order(train_scores)
    timings["sort"] = time.perf_counter() - t

    gen = _generator_from_seed(seed, generator)
    points: List[BudgetPoint] = []
    t_solve = t_eval = t_rand = 0.0
    for p in p_values:
        t = time.perf_counter()
        quota = exit_quota(geometric_exit_distribution(p, k_stages), n1)
        thresholds, _ = _solve(train_scores, quota, order, on_overflow)
        t_solve += time.perf_counter() - t

        t = time.perf_counter()
        exits = assign_exits(val_scores, thresholds)
        counts = count_exits(exits, k_stages)
        value = stage_metric(exits)
        t_eval += time.perf_counter() - t

        t = time.perf_counter()
        random_value = stage_metric(random_exit_baseline(counts, gen))
        t_rand += time.perf_counter() - t

        points.append(BudgetPoint(
            p=float(p), expected_gflops=expected_gflops(counts, flops), metric=value,
            random_metric=random_value, exit_counts=counts.tolist(),
            exit_ratios=exit_ratios(counts).tolist(), thresholds=thresholds.tolist(),
            quota=quota.tolist()))
    timings.update(solve=t_solve, evaluate=t_eval, random_baseline=t_rand)

    t = time.perf_counter()
    fixed = fixed_exit_curve(None, None, flops, stage_metric=stage_metric)
    timings["fixed_exits"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t_start
    return SweepResult(criterion=criterion, metric=metric, absent=absent, num_stages=k_stages,
                       num_train=n1, num_val=n2, flops=flops,
                       seed=None if generator is not None else seed, points=points,
                       fixed_exits=fixed, last_stage_metric=fixed[-1].metric, timings=timings)


# ---------------------------------------------------------------------------------------------------
# Thresholds for a FLOPs budget
# ---------------------------------------------------------------------------------------------------
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
    the geometric distribution of parameter p, :func:`solve_thresholds`) is a step function that
    grows with p (q shifts mass to later stages) apart from small non-monotone steps caused by the
    floor() quotas. The search (1) evaluates c on ``grid`` log-spaced p in [p_lo, p_hi] (p_hi
    defaults to max(1e6, 10 N), where nobody exits early, p_lo = 1e-9 where everybody leaves at
    stage 0); (2) in every grid interval where c crosses the budget (c(lo) <= budget < c(hi)) bisects
    log p, keeping lo feasible and hi infeasible, until c(lo) is within ``tol`` of the budget, the
    interval is below float resolution, or ``max_iter`` steps; (3) returns the feasible (c <= budget)
    candidate with the largest cost among everything evaluated. At a bisection's limit the two sides
    differ by one quota step, i.e. usually one sample moving to the last stage, so the result is
    within (max FLOPs - min FLOPs) / N of the budget whenever the budget is reachable. Raises
    ``ValueError`` when even the cheapest assignment found exceeds the budget.
    """
    scores = _check_scores(train_scores)
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

    cache: Dict[float, tuple] = {}

    def cost(u: float):
        if u not in cache:
            p = math.exp(u)
            quota = exit_quota(geometric_exit_distribution(p, k_stages), n)
            thr, _ = _solve(scores, quota, order, on_overflow)
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


# ---------------------------------------------------------------------------------------------------
# Thresholds file
# ---------------------------------------------------------------------------------------------------
THRESHOLDS_FORMAT = "uniadafocus-early-exit-thresholds"
THRESHOLDS_VERSION = 1


class ThresholdsFileError(ValueError):
    """A thresholds file that cannot be read or does not validate."""


@dataclass
class ThresholdsFile:
    """Content of a thresholds file (see :func:`save_thresholds`)."""
    criterion: str
    thresholds: torch.Tensor       # (K,) float64 (exact for float32 thresholds)
    flops: List[float]
    budget_gflops: Optional[float] = None
    p: Optional[float] = None
    expected_gflops: Optional[float] = None
    version: int = THRESHOLDS_VERSION

    @property
    def num_stages(self) -> int:
        return int(self.thresholds.numel())


def _finite_or_none(name: str, value) -> Optional[float]:
    if value is None:
        return None
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def save_thresholds(path: Union[str, os.PathLike], thresholds: torch.Tensor, *, criterion: str,
                    flops: Sequence[float], budget_gflops: Optional[float] = None,
                    p: Optional[float] = None, expected_gflops: Optional[float] = None) -> Path:
    """Write a thresholds file (JSON) atomically (temp file in the same folder + ``os.replace``).

    Keys: ``format``, ``version``, ``criterion``, ``num_stages``, ``thresholds``, ``flops``,
    ``budget_gflops``, ``p``, ``expected_gflops`` (the last three may be null).
    """
    _check_criterion(criterion)
    thr = [float(v) for v in torch.as_tensor(thresholds).detach().cpu().reshape(-1).tolist()]
    fl = [float(v) for v in flops]
    if len(thr) != len(fl) or not thr:
        raise ValueError(f"{len(thr)} thresholds for {len(fl)} FLOPs values")
    if not all(math.isfinite(v) for v in thr + fl):
        raise ValueError("thresholds and FLOPs must be finite")
    doc = {
        "format": THRESHOLDS_FORMAT, "version": THRESHOLDS_VERSION, "criterion": criterion,
        "num_stages": len(thr), "thresholds": thr, "flops": fl,
        "budget_gflops": _finite_or_none("budget_gflops", budget_gflops),
        "p": _finite_or_none("p", p), "expected_gflops": _finite_or_none("expected_gflops", expected_gflops),
    }
    path = Path(path)
    write_text_atomic(path, json.dumps(doc, indent=2, allow_nan=False) + "\n")
    return path


def _reject_constant(name: str):
    raise ValueError(f"non-finite number {name}")


def load_thresholds(path: Union[str, os.PathLike]) -> ThresholdsFile:
    """Read and validate a thresholds file; raises :class:`ThresholdsFileError` naming the problem."""
    path = Path(path)

    def fail(msg: str):
        raise ThresholdsFileError(f"{path}: {msg}")

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        fail(f"cannot read thresholds file ({exc})")
    try:
        doc = json.loads(text, parse_constant=_reject_constant)
    except ValueError as exc:
        fail(f"not a valid JSON thresholds file ({exc})")
    if not isinstance(doc, dict):
        fail("top level must be a JSON object")
    if doc.get("format") != THRESHOLDS_FORMAT:
        fail(f"'format' must be {THRESHOLDS_FORMAT!r}, got {doc.get('format')!r}")
    version = doc.get("version")
    if not isinstance(version, int) or isinstance(version, bool):
        fail(f"'version' must be an integer, got {version!r}")
    if version != THRESHOLDS_VERSION:
        fail(f"unsupported version {version} (this code reads version {THRESHOLDS_VERSION})")
    missing = [k for k in ("criterion", "thresholds", "flops") if k not in doc]
    if missing:
        fail(f"missing key(s): {', '.join(missing)}")
    if doc["criterion"] not in CRITERIA:
        fail(f"unknown criterion {doc['criterion']!r}; expected one of {CRITERIA}")

    def numbers(key: str) -> List[float]:
        vals = doc[key]
        if not isinstance(vals, list) or not vals:
            fail(f"'{key}' must be a non-empty list of numbers")
        for v in vals:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                fail(f"'{key}' must hold finite numbers, found {v!r}")
        return [float(v) for v in vals]

    thr, fl = numbers("thresholds"), numbers("flops")
    if len(thr) != len(fl):
        fail(f"{len(thr)} thresholds but {len(fl)} FLOPs values")
    if "num_stages" in doc and doc["num_stages"] != len(thr):
        fail(f"'num_stages' is {doc['num_stages']!r} but there are {len(thr)} thresholds")
    if any(f < 0 for f in fl):
        fail("FLOPs must be non-negative")
    optional = {}
    for key in ("budget_gflops", "p", "expected_gflops"):
        v = doc.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)):
            fail(f"'{key}' must be a finite number or null, got {v!r}")
        optional[key] = None if v is None else float(v)
    if optional["p"] is not None and optional["p"] <= 0:
        fail(f"'p' must be positive, got {optional['p']}")
    return ThresholdsFile(criterion=doc["criterion"], thresholds=torch.tensor(thr, dtype=torch.float64),
                          flops=fl, version=version, **optional)
