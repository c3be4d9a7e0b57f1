"""Temporal segment sampling and the per-sample random generators.

A video of ``n`` frames is cut into ``T0`` equal segments ``[k·n/T0, (k+1)·n/T0)``, k = 0..T0-1,
and one frame is taken from each:

* training: ``floor((k + U_k)·n/T0)``, with ``U_k`` uniform in [0, 1), one random frame per segment;
* evaluation: the segment centres ``floor((k + 1/2)·n/T0)``, evaluated as the official code does,
  ``floor(((k + 0.5) / T0) · n)`` in float64. Exact arithmetic differs from it for 74 lengths below
  20,000 at T0 = 48 (n = 480: exact 245.0, official 244.99999999999997 for segment 24), and a
  released checkpoint is evaluated on the official frames.

Indices are then shifted by ``start_index`` (1 for the official 1-based frame names). When
``n < T0`` indices repeat. The result is always non-decreasing.

Random choices come from :func:`sample_rng`, a numpy ``Generator`` seeded from
``(seed, epoch, sample index, stream)``: a sample's randomness does not depend on which worker
loads it, in what order, or on how many workers there are, and a resumed run that sets the same
epoch reproduces an uninterrupted one. Separate streams keep the temporal offsets, the crop/flip
draw and the label choice independent of each other.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

#: Stream ids for :func:`sample_rng`.
STREAM_TEMPORAL = 0
STREAM_SPATIAL = 1
STREAM_LABEL = 2


def sample_rng(seed: int, epoch: int, index: int, stream: int) -> np.random.Generator:
    """A fresh generator for one random decision about one sample in one epoch.

    All four arguments must be non-negative integers.
    """
    for name, value in (("seed", seed), ("epoch", epoch), ("index", index), ("stream", stream)):
        if int(value) < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {value}")
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(
        [int(seed), int(epoch), int(index), int(stream)])))


def segment_indices(num_frames: int, num_segments: int, *, rng: Optional[np.random.Generator] = None,
                    start_index: int = 1) -> np.ndarray:
    """Frame indices ``(num_segments,)`` int64 for one video.

    ``rng`` given: training sampling (one uniformly random frame per segment). ``rng=None``:
    evaluation sampling (segment centres). Returned values lie in
    ``[start_index, start_index + num_frames)``.
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be at least 1, got {num_frames}")
    if num_segments < 1:
        raise ValueError(f"num_segments must be at least 1, got {num_segments}")
    k = np.arange(num_segments, dtype=np.int64)
    if rng is None:
        # The official float64 expression, operation for operation (not the exact (2k+1)n // 2T0).
        offsets = np.floor((k + 0.5) / num_segments * num_frames).astype(np.int64)
    else:
        u = rng.random(num_segments)
        offsets = np.floor((k + u) * num_frames / num_segments).astype(np.int64)
        # (k + u) * n / T0 < (k + 1) * n / T0 <= n in exact arithmetic; guard the float rounding.
        np.minimum(offsets, num_frames - 1, out=offsets)
    return offsets + start_index
