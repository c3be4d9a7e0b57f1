"""Exit criteria: how confident each exit's prediction is, per sample and stage.

A criterion maps the logits of one exit, (C,), to a score; larger means more confident, and a
sample leaves at a stage whose score reaches that stage's threshold (:mod:`.solver`).

* ``'confidence'``: the maximum raw logit (official).
* ``'entropy'``: the negative entropy sum_c p_c log p_c of the softmax p (the official formula,
  bit-identical wherever the official value is finite). Unlike the official, 0 * log 0 counts as 0,
  so the score stays finite when a softmax probability underflows (the official returns NaN for,
  e.g., logits [0, 120, 0]; see docs/official-behaviour.md, "Early exit"). NaN logits still give NaN,
  and a NaN score never reaches a threshold.
* ``'max_prob'``: the maximum softmax probability.

Softmax-based criteria are computed in chunks of rows, so memory stays O(chunk * C) however many
samples and stages there are.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

__all__ = ["CRITERIA", "exit_scores"]

CRITERIA = ("confidence", "entropy", "max_prob")
_CHUNK_ROWS = 4096


def check_criterion(criterion: str) -> None:
    """Raise ``ValueError`` unless ``criterion`` is one of :data:`CRITERIA`."""
    if criterion not in CRITERIA:
        raise ValueError(f"unknown criterion {criterion!r}; expected one of {CRITERIA}")


def _float_rows(x: torch.Tensor) -> torch.Tensor:
    """(..., C) -> (rows, C) in float32, or float64 when given float64."""
    if x.dtype not in (torch.float32, torch.float64):
        x = x.float()
    return x.reshape(-1, x.shape[-1])


def _neg_entropy(p: torch.Tensor) -> torch.Tensor:
    """sum_c p log p with 0 log 0 := 0: the official expression, bit for bit where it is finite."""
    t = torch.log(p)
    t.mul_(p)
    t.masked_fill_(p == 0, 0.0)
    return t.sum(-1)


def _max_prob(p: torch.Tensor) -> torch.Tensor:
    return p.amax(-1)


# The softmax-based criteria, as functions of the softmax probabilities (rows, C) -> (rows,).
_FROM_PROBS = {"entropy": _neg_entropy, "max_prob": _max_prob}


def exit_scores(logits: torch.Tensor, criterion: str = "confidence") -> torch.Tensor:
    """Criterion per sample and stage: logits (..., C) -> scores (...); larger = more confident.

    Works on (N, K, C) exit logits (-> (N, K)) or any leading shape. Half precision is upcast to
    float32.
    """
    check_criterion(criterion)
    logits = torch.as_tensor(logits).detach()
    if logits.dim() < 1 or logits.shape[-1] == 0:
        raise ValueError(f"logits must have a non-empty class dimension, got {tuple(logits.shape)}")
    lead = logits.shape[:-1]
    rows = _float_rows(logits)
    if criterion == "confidence":
        return rows.amax(-1).reshape(lead)
    from_probs = _FROM_PROBS[criterion]
    out = torch.empty(rows.shape[0], dtype=rows.dtype)
    for s in range(0, rows.shape[0], _CHUNK_ROWS):
        out[s:s + _CHUNK_ROWS] = from_probs(torch.softmax(rows[s:s + _CHUNK_ROWS], -1))
    return out.reshape(lead)


def softmax_table(logits: torch.Tensor, criterion: Optional[str] = None):
    """softmax(logits) over the last dim, plus ``exit_scores(logits, criterion)`` from the same pass.

    Returns (probabilities with the shape of ``logits``, scores or None when ``criterion`` is None).
    Computed in row chunks into one numpy-allocated buffer (numpy asks for transparent huge pages,
    so filling ~1 GB does not pay a page fault per 4 KiB as a fresh torch tensor does); the scores
    are bit-identical to :func:`exit_scores`.
    """
    lead, c = logits.shape[:-1], logits.shape[-1]
    rows = _float_rows(logits)
    probs = torch.from_numpy(np.empty(tuple(rows.shape), dtype=np.float64 if rows.dtype == torch.float64
                                      else np.float32))
    from_probs = _FROM_PROBS.get(criterion)
    scores = torch.empty(rows.shape[0], dtype=rows.dtype)
    for s in range(0, rows.shape[0], _CHUNK_ROWS):
        p = torch.softmax(rows[s:s + _CHUNK_ROWS], -1)
        probs[s:s + _CHUNK_ROWS] = p
        if from_probs is not None:
            scores[s:s + _CHUNK_ROWS] = from_probs(p)
    if criterion == "confidence":
        scores = rows.amax(-1)
    return probs.reshape(*lead, c), (scores.reshape(lead) if criterion is not None else None)
