"""Classification metrics: top-k accuracy and (multi-label) mean average precision.

Targets come in two forms:

* **padded label lists**, the official format: an integer tensor (N, L) holding up to L label ids per
  video, padded with -1 (a 1-D integer tensor (N,) is one label per video);
* **multi-hot** matrices (N, C): a ``bool`` or floating tensor, non-zero = positive.

Integer tensors are always read as label lists, so a 0/1 *integer* matrix must be converted with
``.bool()`` first; :func:`labels_to_multi_hot` converts label lists to multi-hot.

Average precision (the official definition): for class k, rank the N samples by their score
for k in descending order; precision@i = (#positives among the first i) / i; AP_k is the mean of the
precision at the ranks of the positives. ``mean_average_precision`` computes it for all classes at once
(no Python loop over classes): each score column is sorted (values only, numpy's SIMD sort) and every
positive's rank is found with a batched binary search, so only ~N·C·log N work is needed.

**Ties.** The official ``cal_map`` orders tied scores with ``torch.sort`` (unspecified order), so its
AP under ties depends on the sort implementation. Here ties are order-free: all samples whose score
equals a positive's score count as ranked *at or above* it, i.e. the precision at a positive with
score s is ``#{positives with score >= s} / #{samples with score >= s}`` (the convention of the
precision-recall curve evaluated at each distinct threshold, as in scikit-learn). Without ties this
is exactly the official value. (The tests compare with a bug-for-bug transcription of the official
``cal_map``, ``tests/reference_math.py``.)

**Absent classes.** A class without any positive among the evaluated samples has no AP. By default
(``absent='exclude'``) it is left out of the mean (the correct mAP); ``absent='zero'`` counts it as 0
as the official code does. The returned per-class AP is NaN for such classes in both modes.

**Top-k ties.** :func:`topk_accuracy` counts a sample as a top-k hit when fewer than k classes score
strictly higher than its target (ties at the boundary count as hits). The official ``accuracy`` uses
``torch.topk``, whose order among tied logits is unspecified; without ties both agree.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import torch

from .packages import sibling

__all__ = [
    "METRICS",
    "head_metrics",
    "labels_to_multi_hot",
    "as_multi_hot",
    "topk_accuracy",
    "mean_average_precision",
    "AveragePrecision",
]

_ABSENT_MODES = ("exclude", "zero")

#: The two metrics, spelled as the dataset registry spells them, everywhere (evaluation, early exit,
#: files): mean average precision (ActivityNet, FCVID) and top-1 accuracy (Mini-Kinetics, synthetic).
METRICS = sibling("datasets.registry").METRICS


# ---------------------------------------------------------------------------------------------------
# Targets
# ---------------------------------------------------------------------------------------------------
def labels_to_multi_hot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Padded label lists (N, L) int (or (N,) single labels) with -1 padding -> multi-hot (N, C) bool.

    Raises ``ValueError`` for labels outside ``[-1, num_classes)`` or a non-integer tensor.
    """
    labels = torch.as_tensor(labels)
    if labels.is_floating_point() or labels.dtype == torch.bool or labels.is_complex():
        raise ValueError(f"labels must be an integer tensor, got {labels.dtype}")
    if labels.dim() == 1:
        labels = labels.unsqueeze(1)
    if labels.dim() != 2:
        raise ValueError(f"labels must be (N,) or (N, L), got shape {tuple(labels.shape)}")
    if num_classes <= 0:
        raise ValueError(f"num_classes must be positive, got {num_classes}")
    labels = labels.long().cpu()
    if labels.numel() and (int(labels.min()) < -1 or int(labels.max()) >= num_classes):
        raise ValueError(f"labels must lie in [-1, {num_classes}) (-1 = padding); got range "
                         f"[{int(labels.min())}, {int(labels.max())}]")
    n = labels.shape[0]
    out = torch.zeros(n, num_classes + 1, dtype=torch.bool)
    # -1 (padding) lands in the extra last column, which is dropped.
    out[torch.arange(n).unsqueeze(1).expand_as(labels), labels.remainder(num_classes + 1)] = True
    return out[:, :num_classes].contiguous()


def as_multi_hot(targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Either target form -> multi-hot (N, C) bool (see the module docstring for the rule)."""
    targets = torch.as_tensor(targets)
    if targets.dtype == torch.bool or targets.is_floating_point():
        if targets.dim() != 2 or targets.shape[1] != num_classes:
            raise ValueError(f"multi-hot targets must be (N, {num_classes}), got {tuple(targets.shape)}")
        return (targets != 0).cpu()
    return labels_to_multi_hot(targets, num_classes)


# ---------------------------------------------------------------------------------------------------
# Top-k accuracy
# ---------------------------------------------------------------------------------------------------
def topk_accuracy(logits: torch.Tensor, target: torch.Tensor, ks: Sequence[int] = (1, 5)) -> list:
    """Top-k accuracy in percent for every k in ``ks`` (list of floats).

    ``target`` is (N,) class ids. A sample is a top-k hit when fewer than k classes have a logit
    strictly larger than the target's (ties count as hits). NaN logits in a row make it a miss.
    """
    logits = torch.as_tensor(logits)
    target = torch.as_tensor(target).long()
    if logits.dim() != 2:
        raise ValueError(f"logits must be (N, C), got {tuple(logits.shape)}")
    if target.shape != (logits.shape[0],):
        raise ValueError(f"target must be ({logits.shape[0]},), got {tuple(target.shape)}")
    n, c = logits.shape
    if n == 0:
        raise ValueError("no samples")
    if int(target.min()) < 0 or int(target.max()) >= c:
        raise ValueError(f"target ids must lie in [0, {c})")
    tgt = logits.gather(1, target.to(logits.device).unsqueeze(1))
    rank = (logits > tgt).sum(1)                      # classes strictly above the target
    rank = torch.where(torch.isnan(logits).any(1), torch.full_like(rank, c), rank)
    return [float((rank < k).sum()) * 100.0 / n for k in ks]


# ---------------------------------------------------------------------------------------------------
# Average precision
# ---------------------------------------------------------------------------------------------------
_POOL: Optional[ThreadPoolExecutor] = None
_BLOCK_BYTES = 4 << 20          # class block size for the column sorts (fits in the L2/L3 caches)


def _pool() -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1)),
                                   thread_name_prefix="uniadafocus-ap")
    return _POOL


def _as_float_array(scores) -> np.ndarray:
    if isinstance(scores, torch.Tensor):
        scores = scores.detach().cpu()
        if scores.dtype not in (torch.float32, torch.float64):
            scores = scores.float()
        return scores.numpy()
    arr = np.asarray(scores)
    return arr if arr.dtype in (np.float32, np.float64) else arr.astype(np.float32)


class AveragePrecision:
    """Per-class AP for many score matrices that share one target set.

    The (sample, class) positive pairs are indexed once. Each evaluation then sorts every score
    column (values only: numpy's vectorised sort, ~10x faster than ``torch.sort`` here, run on
    blocks of classes in a few threads since it releases the GIL) and finds the rank of every
    positive with a batched binary search, so only ~N·C·log N work is done and no Python loop runs
    over classes. Work buffers are kept between calls (an instance is not thread-safe).

    ``__call__(scores (N, C)) -> (mAP percent, AP (C,) float64 percent, NaN for absent classes)``.
    """

    def __init__(self, targets: torch.Tensor, num_classes: int, *, absent: str = "exclude"):
        if absent not in _ABSENT_MODES:
            raise ValueError(f"absent must be one of {_ABSENT_MODES}, got {absent!r}")
        truth = as_multi_hot(targets, num_classes)
        self.absent = absent
        self.num_samples, self.num_classes = truth.shape
        pairs = truth.t().nonzero()                    # (P, 2) = (class, sample), sorted by class
        self.pos_class = pairs[:, 0].numpy()
        self.pos_sample = pairs[:, 1].numpy()
        num_pos = truth.sum(0).numpy()                 # (C,)
        start = np.cumsum(num_pos) - num_pos
        self.pos_slot = np.arange(pairs.shape[0]) - start[self.pos_class]
        self.num_pos = num_pos
        self.max_pos = int(num_pos.max()) if self.num_classes else 0
        self.present = num_pos > 0
        self._valid = np.arange(self.max_pos)[None, :] < num_pos[:, None]
        self._buffers: dict = {}

    def __call__(self, scores) -> Tuple[float, torch.Tensor]:
        arr = _as_float_array(scores)
        if arr.shape != (self.num_samples, self.num_classes):
            raise ValueError(f"scores must be ({self.num_samples}, {self.num_classes}), "
                             f"got {tuple(arr.shape)}")
        ap = self._ap(arr, None)
        return self._mean(ap), ap

    def evaluate_rows(self, table: np.ndarray, rows: Optional[np.ndarray]) -> Tuple[float, torch.Tensor]:
        """Like ``__call__`` on ``table[rows]`` (rows: (N,) int indices into a (M, C) float array),
        without materialising a new array each time."""
        ap = self._ap(table, rows)
        return self._mean(ap), ap

    def _mean(self, ap: torch.Tensor) -> float:
        if self.absent == "zero":
            return float(torch.nan_to_num(ap, nan=0.0).mean()) if ap.numel() else float("nan")
        present = ap[torch.from_numpy(self.present)]
        return float(present.mean()) if present.numel() else float("nan")

    def _buffer(self, name: str, shape, dtype) -> np.ndarray:
        key = (name, shape, np.dtype(dtype).str)
        if key not in self._buffers:
            self._buffers = {k: v for k, v in self._buffers.items() if k[0] != name}
            self._buffers[key] = np.empty(shape, dtype=dtype)
        return self._buffers[key]

    def _ap(self, table: np.ndarray, rows: Optional[np.ndarray]) -> torch.Tensor:
        n, c = self.num_samples, self.num_classes
        ap = torch.full((c,), float("nan"), dtype=torch.float64)
        if self.pos_class.size == 0:
            return ap
        dtype = table.dtype
        if rows is None:
            src = table                                # (N, C), any strides
        else:
            src = np.take(table, rows, axis=0, out=self._buffer("nc", (n, c), dtype), mode="clip")
        queries = self._buffer("q", (c, self.max_pos), dtype)
        queries.fill(np.inf)                           # padding sorts last and is never "below"
        queries[self.pos_class, self.pos_slot] = src[self.pos_sample, self.pos_class]
        queries.sort(axis=1)
        if np.isnan(queries[:, -1]).any():
            raise ValueError("scores contain NaN")
        cols = self._buffer("cn", (c, n), dtype)
        below = self._buffer("below", (c, self.max_pos), np.int64)
        q_t = torch.from_numpy(queries)

        def block(bounds):
            lo, hi = bounds
            part = cols[lo:hi]
            np.copyto(part, src[:, lo:hi].T)
            part.sort(axis=1)                          # each column ascending (values only)
            if np.isnan(part[:, -1]).any():
                return False
            # samples strictly below each positive; the rest score >= it (ties count as above)
            torch.searchsorted(torch.from_numpy(part), q_t[lo:hi], side="left",
                               out=torch.from_numpy(below[lo:hi]))
            return True

        per_block = max(1, _BLOCK_BYTES // max(1, n * table.itemsize))
        bounds = [(lo, min(lo + per_block, c)) for lo in range(0, c, per_block)]
        workers = min(torch.get_num_threads(), len(bounds), 8)
        ok = list(_pool().map(block, bounds)) if workers > 1 else [block(b) for b in bounds]
        if not all(ok):
            raise ValueError("scores contain NaN")
        all_ge = n - torch.from_numpy(below)
        pos_ge = torch.from_numpy(self.num_pos).unsqueeze(1) - torch.searchsorted(q_t, q_t, side="left")
        prec = torch.where(torch.from_numpy(self._valid), pos_ge.double() / all_ge.clamp(min=1).double(), 0.0)
        present = torch.from_numpy(self.present)
        ap[present] = prec.sum(1)[present] / torch.from_numpy(self.num_pos)[present].double() * 100.0
        return ap


def mean_average_precision(scores: torch.Tensor, targets: torch.Tensor, *,
                           absent: str = "exclude") -> Tuple[float, torch.Tensor]:
    """mAP of ``scores`` (N, C) against ``targets`` (padded label lists or multi-hot).

    Scores are ranked as given (pass softmax probabilities to get the official metric, which applies
    the softmax itself). Returns ``(mAP in percent, per-class AP (C,) float64 in percent)``; the
    per-class AP is NaN for classes without positives, which ``absent='exclude'`` (default) leaves out
    of the mean and ``absent='zero'`` counts as 0 (official). NaN scores raise ``ValueError``.
    """
    scores = torch.as_tensor(scores)
    if scores.dim() != 2:
        raise ValueError(f"scores must be (N, C), got {tuple(scores.shape)}")
    return AveragePrecision(targets, scores.shape[1], absent=absent)(scores)


# ---------------------------------------------------------------------------------------------------
# The figures an evaluation reports
# ---------------------------------------------------------------------------------------------------
#: The secondary heads (the official validation's Cat, Global and Local heads): the row of per-video class
#: probabilities averaged over every exit, over the glance head's glance frames or over the focus head's
#: patches -> the name their figures carry (``{name}_top1``, ...; ``glance_head`` is the auxiliary glance
#: classifier, not the glance exit). ``ops.evaluation_report.METRICS_KEYS`` says what every key means.
SECONDARY_HEADS = {"exits": "all_exits", "glance": "glance_head", "focus": "focus_head"}


def head_metrics(rows: Dict[str, torch.Tensor], metric: str, loss: float) -> Dict:
    """The metrics of one evaluation: the prediction's and each secondary head's.

    rows (dataset order, N videos): ``prediction`` (N, C) logits of the last exit; ``exits``,
    ``glance``, ``focus`` (N, C) averaged softmax probabilities; ``label`` (N,) the first label;
    ``labels`` (N, C) multi-hot. ``metric``: one of :data:`METRICS`, the one ``score`` reports.

    Keys: ``{head}_top1`` (and ``_top5`` with five classes or more) for the prediction and every
    secondary head (named by :data:`SECONDARY_HEADS`); with mAP, ``prediction_mAP`` (softmax of the
    logits, as officially) and, for each secondary head, ``{head}_mAP`` as the official log computes
    it — its ``cal_map`` applies a softmax to whatever it is given, so the averaged probabilities are
    softmaxed once more before ranking — and ``{head}_mean_prob_mAP``, the mAP of the averaged
    probabilities themselves. (Top-k accuracy is the same either way: a softmax keeps each row's order.)
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    out: Dict = {"loss": loss, "num_videos": int(rows["label"].shape[0]), "metric": metric}
    heads = {"prediction": torch.softmax(rows["prediction"].float(), dim=-1),
             **{name: rows[row] for row, name in SECONDARY_HEADS.items()}}
    if metric == "mAP":
        targets = rows["labels"].bool()
        out["prediction_mAP"] = mean_average_precision(heads["prediction"], targets)[0]
        for name in SECONDARY_HEADS.values():
            out[f"{name}_mAP"] = mean_average_precision(torch.softmax(heads[name].float(), dim=-1), targets)[0]
            out[f"{name}_mean_prob_mAP"] = mean_average_precision(heads[name], targets)[0]
    ks = (1, 5) if rows["prediction"].shape[1] >= 5 else (1,)
    for name, scores in heads.items():
        for k, value in zip(ks, topk_accuracy(scores, rows["label"], ks=ks)):
            out[f"{name}_top{k}"] = value
    out["score"] = out["prediction_mAP"] if metric == "mAP" else out["prediction_top1"]
    return out
