"""AdaFocusV3's video cubes (:mod:`.adafocus_v3`): the frames each cube processes at inference
(:func:`inference_windows`), the trilinear read of a cube's feature map (:func:`trilinear_read`, the
feature gradient estimator's) and the temporal shift set to a cube's frames (:func:`shift_segments`).
"""
from __future__ import annotations

import contextlib
from typing import List

import torch
import torch.nn as nn
import torch.nn.functional as F

from .temporal_shift import TemporalShift


def inference_windows(starts: torch.Tensor, num_frames: int, cube_frames: int) -> List[List[List[int]]]:
    """The frames each cube processes at inference: starts (B, K) continuous first frames in [0, T - T'].

    Cube k takes the T'-frame window ``[w, w + T')`` nearest its start (ties: the earlier) among those
    that hold a frame no earlier cube covered, and processes only those uncovered frames. Returns, per
    video, per cube, the sorted frame indices (never empty while a frame is uncovered; the builder
    guarantees that: T' + K - 1 <= T).
    """
    plans = []
    for row in starts.detach().double().cpu().tolist():
        covered = [False] * num_frames
        cubes = []
        for start in row:
            windows = sorted(range(num_frames - cube_frames + 1), key=lambda w: (abs(w - start), w))
            new: List[int] = []
            for w in windows:
                new = [f for f in range(w, w + cube_frames) if not covered[f]]
                if new:
                    break
            for f in new:
                covered[f] = True
            cubes.append(new)
        plans.append(cubes)
    return plans


def trilinear_read(maps: torch.Tensor, t: torch.Tensor, r: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Trilinear samples of feature maps at continuous cell coordinates (cell centres at 0, 1, ...).

    maps (N, D, Tm, Hm, Wm); t (N, To), r (N, Ho), c (N, Wo) the coordinates along each axis (a separable
    grid). Returns (N, D, To, Ho, Wo), differentiable in ``maps`` and the coordinates.
    """
    n, _, tm, hm, wm = maps.shape

    def normalised(u, size):  # align_corners=True: -1 and 1 are the first and last cell centres
        return u * (2.0 / (size - 1)) - 1.0 if size > 1 else torch.zeros_like(u)

    to, ho, wo = t.shape[1], r.shape[1], c.shape[1]
    gt = normalised(t, tm).view(n, to, 1, 1).expand(n, to, ho, wo)
    gr = normalised(r, hm).view(n, 1, ho, 1).expand(n, to, ho, wo)
    gc = normalised(c, wm).view(n, 1, 1, wo).expand(n, to, ho, wo)
    grid = torch.stack((gc, gr, gt), dim=-1).to(maps.dtype)  # (N, To, Ho, Wo, 3): x (W), y (H), z (T)
    return F.grid_sample(maps, grid, mode="bilinear", padding_mode="border", align_corners=True)


@contextlib.contextmanager
def shift_segments(encoder: nn.Module, count: int):
    """Set every :class:`TemporalShift` of ``encoder`` to clips of ``count`` frames for the block."""
    shifts = [m for m in encoder.modules() if isinstance(m, TemporalShift)]
    saved = [m.num_segments for m in shifts]
    for m in shifts:
        m.num_segments = count
    try:
        yield
    finally:
        for m, n in zip(shifts, saved):
            m.num_segments = n
