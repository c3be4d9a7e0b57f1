"""MSDNet-style threshold solving: which stage every sample of a threshold set leaves at.

The network has K exits ("stages"). Uni-AdaFocus has K = 17: stage 0 is the last glance exit, stage
k follows k focus frames. Uni-AdaFocus-TSM has K = 2: stage 0 is the glance-only prediction (the
glance network's auxiliary head averaged over frames), stage 1 the full model (glance plus focus
heads). Thresholds are fitted on a threshold set (the official code uses the augmented training
clips) so that a prescribed fraction q_k of it leaves at stage k, with q_k proportional to r**k
(:func:`geometric_exit_distribution`; r = p for Uni-AdaFocus, r = p/100 for the TSM grid); a sample
then leaves at the first stage whose score reaches that stage's threshold, and at the last stage
otherwise. Everything is vectorised over samples; only the K stages are looped over.

Official behaviour reproduced (see docs/official-behaviour.md, "Early exit"; checked against
``early_exit_parity.pt`` and, for the TSM procedure, ``early_exit_tsm_parity.pt``):

* q comes from ``exp(log(r) * k)`` in float32 with r = float32(p / p_scale), normalised once by
  :func:`geometric_exit_distribution` and once more inside :func:`solve_thresholds` (the official
  normalises twice, :func:`normalised_distribution`); the per-stage quota is ``floor(N * q_k)``
  with the product rounded to float32. Both float32 steps matter: a float64 product changes the
  quota at p = 0.05, 0.10, 0.30 for N = 300 on the Uni-AdaFocus grid and at p = 20, 140 on the TSM
  grid (250 and 125 officially); q itself in float64 (or exactly) changes it at p = 275 on the TSM
  grid, where float32 q_0 = 0.26666665 lies just below 4/15 and the official quota is 79, not 80.
* At stage k < K-1 with quota n > 0, the n samples with the largest stage-k score among those not yet
  taken are taken (ties: lower sample index first; the official's ``torch.sort`` leaves the order
  of ties unspecified), and the threshold is the n-th of those scores. Stages with quota 0 keep 1e8;
  the last stage gets -1e8.
* Departure, for ties only: when samples not yet taken share the n-th score and some of them lie
  beyond the quota (the tie group straddles it), no threshold can split them: officially the whole
  group then exits at stage k (a classifier with a constant output sends every sample out at once).
  Here the group exits whole or not at all, whichever count is closer to n (equally close: not at all,
  the later, dearer and more accurate side), and the samples taken are the ones that exit. Without such
  ties the result is the official one. With K = 2 this is the TSM rule: T_0 is the score of the
  floor(N q_0)-th most confident sample (1e8 if that is 0), T_1 = -1e8. When the quota exceeds the
  samples left, the official code raises ``IndexError``; here ``on_overflow='clamp'`` (default)
  takes all that are left and ``'error'`` raises ``ValueError``. (With geometric q this happens
  only through float rounding.)
* Every sample has an exit: the last stage takes whoever is left, NaN scores included (the official
  fallback ``logits[k]`` crashes).
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch

__all__ = [
    "NO_EXIT_THRESHOLD",
    "LAST_STAGE_THRESHOLD",
    "exit_distribution_ratio",
    "geometric_exit_distribution",
    "normalised_distribution",
    "exit_quota",
    "descending_order",
    "solve_thresholds",
    "assign_exits",
    "count_exits",
]

NO_EXIT_THRESHOLD = 1e8          # a stage nobody is assigned to (official)
LAST_STAGE_THRESHOLD = -1e8      # the last stage accepts everyone (official)


def exit_distribution_ratio(p: float, p_scale: float = 1.0) -> float:
    """The ratio r of the geometric exit distribution for grid value ``p``: float32(p / p_scale).

    The division is done in float64 (Python floats), then rounded to float32, as the official
    ``FloatTensor(1).fill_(p * 1.0 / scale)``. Raises ``ValueError`` unless r is positive and finite
    in float32.
    """
    p, p_scale = float(p), float(p_scale)
    if not (p_scale > 0 and math.isfinite(p_scale)):
        raise ValueError(f"p_scale must be a positive finite number, got {p_scale}")
    if not (p > 0 and math.isfinite(p)):
        raise ValueError(f"p must be a positive finite number, got {p}")
    with np.errstate(over="ignore", under="ignore"):
        ratio = float(np.float32(p / p_scale))
    if not (ratio > 0 and math.isfinite(ratio)):
        raise ValueError(f"p / p_scale = {p / p_scale} is not a positive finite float32 number")
    return ratio


def geometric_exit_distribution(p: float, num_stages: int, *, p_scale: float = 1.0,
                                first_power: int = 0) -> torch.Tensor:
    """Target exit distribution q_k proportional to r**(k + first_power), k = 0..K-1, normalised (float32).

    r = float32(p / p_scale) (:func:`exit_distribution_ratio`). q is the official float32
    expression ``exp(log(r) * [first_power, first_power + 1, ..., first_power + K-1])`` divided by its
    sum: the same distribution for every ``first_power`` in exact arithmetic, but the float32 values
    (and hence the quotas) differ, so each procedure uses its own. This one function is the exit
    distribution of the three official procedures:

    * Uni-AdaFocus (K = 17): grid p = 1/20, ..., 19/20 with ``p_scale=1`` (the same float32 r as the
      official p = 1..19 divided by 20), so q_k is proportional to p**k
      (docs/official-behaviour.md, "Early exit");
    * Uni-AdaFocus-TSM (K = 2, glance-only exit and full model): grid p = 1..399, 4e3, 4e4, 4e5,
      4e6 with ``p_scale=100``, i.e. q = (1, r) / (1 + r), q_0 about 1 / (1 + p/100);
    * AdaFocusV2 (K = 16, one exit per frame): grid p = 5, 6, ..., 39 with ``p_scale=10`` and
      ``first_power=1``, i.e. q_k proportional to (p/10)**(k+1), the official ``exp(log(p/10) * [1..16])``.

    The official expression overflows (or underflows to all zeros) in float32 when r**(largest
    power) does (r far from 1 and K large; no official grid gets there); only then is the exponent
    shifted by the largest (r > 1) or smallest (r < 1) power first (the same q up to rounding), so
    the result stays finite.
    """
    if num_stages < 1:
        raise ValueError(f"num_stages must be >= 1, got {num_stages}")
    if int(first_power) != first_power:
        raise ValueError(f"first_power must be an integer, got {first_power}")
    ratio = exit_distribution_ratio(p, p_scale)
    log_r = torch.log(torch.tensor([ratio], dtype=torch.float32))
    k = torch.arange(int(first_power), int(first_power) + num_stages, dtype=torch.float32)
    q = torch.exp(log_r * k)
    total = q.sum()
    if not torch.isfinite(total) or float(total) == 0.0:
        q = torch.exp(log_r * (k - (k[-1] if ratio > 1 else k[0])))
        total = q.sum()
    return q / total


def normalised_distribution(q: torch.Tensor) -> torch.Tensor:
    """q as the official solver uses it: float32, divided by its sum once more (in place officially).

    :func:`geometric_exit_distribution` already normalises; the official threshold solver divides
    again, which can move q by an ulp, and the quota is taken from this second result (it is the
    ``probs`` the official leaves behind).
    """
    q = torch.as_tensor(q, dtype=torch.float32).detach().cpu().reshape(-1)
    if not torch.isfinite(q).all() or (q < 0).any() or float(q.sum()) <= 0:
        raise ValueError("q must be finite, non-negative and not all zero")
    return q / q.sum()


def exit_quota(q: torch.Tensor, num_samples: int) -> torch.Tensor:
    """Official per-stage quota floor(N * q_k), with q normalised (again) and the product in float32.

    q goes through :func:`normalised_distribution` first. Float32 matters (see the module notes):
    for N = 300 and the TSM grid value p = 275, float32 q_0 is just below 4/15 and the quota is 79
    where exact arithmetic gives 80. The last entry is informative only (the last stage takes
    whatever is left).
    """
    return torch.floor(normalised_distribution(q) * num_samples).long()


def descending_order(scores: torch.Tensor) -> torch.Tensor:
    """(N, K) scores -> (K, N) sample indices by descending score per stage (ties: lower index first).

    Compute it once and pass it to :func:`solve_thresholds` to share it across budgets.
    """
    return torch.sort(scores.t(), dim=1, descending=True, stable=True).indices


def check_scores(scores: torch.Tensor) -> torch.Tensor:
    """Scores as a CPU floating-point (N, K) tensor; ``ValueError`` for another shape."""
    scores = torch.as_tensor(scores).detach().cpu()
    if scores.dim() != 2 or scores.shape[1] < 1:
        raise ValueError(f"scores must be (N, K), got {tuple(scores.shape)}")
    if not scores.is_floating_point():
        scores = scores.float()
    return scores


def _greedy_thresholds(scores: torch.Tensor, quota: torch.Tensor, order: torch.Tensor,
                       on_overflow: str) -> torch.Tensor:
    """Greedy stage-by-stage selection of the quotas: thresholds (K,) in the scores' dtype.

    A tie group that straddles a quota exits whole or not at all (see the module notes; :func:`_tie_choice`).
    numpy, single-threaded: these are many small O(N) steps, where torch's thread hand-offs cost
    more than the work.
    """
    sc, od = scores.numpy(), order.numpy()
    n, k_stages = sc.shape
    thresholds = np.full(k_stages, NO_EXIT_THRESHOLD, dtype=sc.dtype)
    free = np.ones(n, dtype=bool)
    for k, want in enumerate(quota.tolist()[:k_stages - 1]):
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
        taken = order_k[:last + 1][avail[:last + 1]]
        thresholds[k] = sc[order_k[last], k]
        if want < have and sc[order_k[int(np.searchsorted(rank, want + 1))], k] == thresholds[k]:
            free_scores = sc[order_k[avail], k]            # (have,) descending: a tie across the quota
            exiting, threshold = _tie_choice(free_scores, want)
            if exiting != want:
                taken, thresholds[k] = order_k[avail][:exiting], threshold
        free[taken] = False
    thresholds[k_stages - 1] = LAST_STAGE_THRESHOLD
    return torch.from_numpy(thresholds)


def _tie_choice(free_scores: np.ndarray, want: int):
    """How many of the free samples exit at a stage with quota ``want`` (0 < want < their number), and the
    threshold that makes exactly them exit.

    free_scores (M,): the stage's scores of the samples not yet taken, descending. Without a tie at the
    want-th score across the quota: (want, that score). With one, the a samples scoring above the tied
    value s exit, or those a and the whole group (b samples with score >= s), whichever count is closer to
    ``want`` (equally close: a); the threshold is s for b, the a-th score for a > 0, and 1e8 (nobody) for
    a = 0. A non-finite s is left to the official rule.
    """
    s = free_scores[want - 1]
    if free_scores[want] != s or not np.isfinite(s):
        return want, s
    above = int(np.count_nonzero(free_scores > s))
    group_end = int(np.count_nonzero(free_scores >= s))
    if group_end - want < want - above:
        return group_end, s
    if above == 0:
        return 0, (NO_EXIT_THRESHOLD if s < NO_EXIT_THRESHOLD else np.inf)
    return above, free_scores[above - 1]


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
    scores = check_scores(scores)
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
    return _greedy_thresholds(scores, quota, order, on_overflow)


def assign_exits(scores: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """Exit stage per sample (N,) int64: the first k with score_k >= T_k; the last stage otherwise.

    A NaN score never qualifies (the sample moves on), so every sample gets an exit.
    """
    sc = check_scores(scores).numpy()
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
