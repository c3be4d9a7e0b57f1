"""References the tests compare the library with: brute force and bug-for-bug transcriptions.

* :func:`official_map` — the official ``cal_map``, quirks included (labels re-mapped to their rank
  among the labels present; absent classes count 0; float32; ties broken by sample index).
* :func:`temporal_mc_exact_paper_loss` — the exact expectation that the Monte-Carlo paper-form
  temporal loss estimates, by enumerating every ordered draw (exponential: small cases only).
"""
from __future__ import annotations

import itertools
from typing import Tuple

import torch


def official_map(logits: torch.Tensor, padded_labels: torch.Tensor) -> Tuple[float, torch.Tensor]:
    """The official ``cal_map`` (docs/official-behaviour.md, "Metrics"), bug for bug, for comparisons only.

    softmax over classes; labels are first **re-mapped to their rank among the distinct labels
    present** (so when a class is absent every higher label is shifted onto the wrong score column);
    AP per column from the cumsum of the sorted truth, ``/ max(#positives, 1)`` (absent -> 0, kept in
    the mean). Computed in float32 like the official code; ties are broken by sample index.
    Returns ``(mAP percent, AP (C,) float32 percent)``.
    """
    logits = torch.as_tensor(logits).detach().cpu()
    labels = torch.as_tensor(padded_labels).detach().cpu().long().clone()
    if logits.dim() != 2:
        raise ValueError(f"logits must be (N, C), got {tuple(logits.shape)}")
    if labels.dim() == 1:
        labels = labels.unsqueeze(1)
    n, c = logits.shape
    if labels.dim() != 2 or labels.shape[0] != n:
        raise ValueError(f"labels must be ({n},) or ({n}, L), got {tuple(labels.shape)}")
    if labels.numel() and int(labels.min()) < -1:
        raise ValueError("labels must be >= -1 (-1 = padding)")
    valid = labels >= 0
    present = torch.unique(labels[valid])              # ascending
    if present.numel() > c:
        raise ValueError(f"{present.numel()} distinct labels for {c} score columns")
    if present.numel():
        lut = torch.full((int(present.max()) + 1,), -1, dtype=torch.long)
        lut[present] = torch.arange(present.numel())
        labels[valid] = lut[labels[valid]]
    gt = torch.zeros(n, c + 1, dtype=torch.float32)
    gt[torch.arange(n).unsqueeze(1).expand_as(labels), labels.remainder(c + 1)] = 1.0
    gt = gt[:, :c]
    probs = torch.softmax(logits.float(), dim=1)
    order = torch.sort(probs, dim=0, descending=True, stable=True).indices
    truth = gt.gather(0, order)
    precision = truth.cumsum(0) / torch.arange(1, n + 1, dtype=torch.float32).unsqueeze(1)
    ap = (precision * truth).sum(0) / truth.sum(0).clamp(min=1.0)
    return float(ap.mean() * 100), ap * 100


def temporal_mc_exact_paper_loss(frame_weights: torch.Tensor, frame_losses: torch.Tensor, num_draws: int) -> torch.Tensor:
    """The exact expectation that ``temporal_mc_paper_loss`` estimates, by enumerating orderings.

    Exponential in ``num_draws``; for checks on small cases. Inputs (B, G); returns the mean over B.
    """
    b, g = frame_weights.shape
    total = frame_weights.new_zeros(b)
    for i in range(num_draws):
        for prefix in itertools.permutations(range(g), i):
            prob = frame_weights.new_ones(b)
            remaining = frame_weights.clone()
            for j in prefix:  # probability of drawing this prefix in this order
                prob = prob * remaining[:, j] / remaining.sum(dim=1)
                remaining = remaining.index_fill(1, torch.tensor([j], device=remaining.device), 0.0)
            expected = (remaining / remaining.sum(dim=1, keepdim=True) * frame_losses).sum(dim=1)
            total = total + prob * expected
    return (total / num_draws).mean()
