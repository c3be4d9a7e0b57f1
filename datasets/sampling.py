"""Temporal segment sampling and the per-sample random generators.

A video of ``n`` frames is cut into ``S`` equal segments ``[k·n/S, (k+1)·n/S)``, k = 0..S-1,
and one frame is taken from each:

* training: ``floor((k + U_k)·n/S)``, with ``U_k`` uniform in [0, 1), one random frame per segment;
* evaluation: the segment centres ``floor((k + 1/2)·n/S)``.

Both are evaluated as the official code does, in float64 and in this order: ``(k + U_k)`` or
``(k + 0.5)``, **divided by S, then multiplied by n**, then floored. The order matters where the
exact value is an integer: for the centres at S = 48 exact arithmetic differs for 74 lengths below
20,000 (n = 480: exact 245.0, official 244.99999999999997 for segment 24), at S = 36 for n = 216
(segment 18: 110.99999999999999, frame 111 instead of 112) and n = 360; a released checkpoint is
evaluated on the official frames, and the training draws reproduce the official ones given the same
uniforms.

Indices are then shifted by ``start_index`` (1 for the official 1-based frame names). When
``n < S`` indices repeat. The result is always non-decreasing.

The TSM variant samples two sets per video, the G glance frames and the T0 focus candidates, each
tiling the whole video on its own (:func:`glance_focus_indices`); in training the glance set's
uniforms are drawn first, then the focus set's, from the same generator.

Random choices come from :func:`sample_rng`, a numpy ``Generator`` seeded from
``(seed, epoch, sample index, stream)``: a sample's randomness does not depend on which worker
loads it, in what order, or on how many workers there are, and a resumed run that sets the same
epoch reproduces an uninterrupted one. Separate streams keep the temporal offsets, the crop/flip
draw and the label choice independent of each other. :func:`segment_indices` accepts any object
with a ``random(size)`` method, e.g. ``numpy.random.RandomState(seed)``, which reproduces the
official global-numpy draws (``np.random.seed(seed)`` then ``np.random.rand(S)``).
"""
from __future__ import annotations

from typing import Any, Optional, Tuple

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


def segment_indices(num_frames: int, num_segments: int, *, rng: Optional[Any] = None,
                    start_index: int = 1) -> np.ndarray:
    """Frame indices ``(num_segments,)`` int64 for one video.

    ``rng`` given (anything with a ``random(size)`` method returning uniforms in [0, 1): a numpy
    ``Generator`` or ``RandomState``): training sampling, one uniformly random frame per segment,
    ``num_segments`` uniforms drawn in one call. ``rng=None``: evaluation sampling (segment
    centres). Returned values lie in ``[start_index, start_index + num_frames)``.
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be at least 1, got {num_frames}")
    if num_segments < 1:
        raise ValueError(f"num_segments must be at least 1, got {num_segments}")
    k = np.arange(num_segments, dtype=np.int64)
    if rng is None:
        position = k + 0.5
    else:
        position = k + np.asarray(rng.random(num_segments), dtype=np.float64)
    # The official float64 expression, operation for operation: divide by S first, then multiply by n
    # (not the exact (2k+1)n // 2S, nor (k + u)·n / S).
    offsets = np.floor(position / num_segments * num_frames).astype(np.int64)
    # (k + u) / S < 1 in exact arithmetic; guard the float rounding of u close to 1 in the last segment.
    np.minimum(offsets, num_frames - 1, out=offsets)
    return offsets + start_index


def glance_focus_indices(num_frames: int, focus_segments: int, glance_segments: Optional[int] = None, *,
                         rng: Optional[Any] = None, start_index: int = 1
                         ) -> Tuple[Optional[np.ndarray], np.ndarray]:
    """The two frame sets of one video: ``(glance (G,) or None, focus (T0,))``, int64.

    Each set tiles the whole video with :func:`segment_indices`. In training (``rng`` given) the
    glance set's G uniforms are drawn first, then the focus set's T0 uniforms, from the same
    generator, as the official TSM dataset does. ``glance_segments=None``: no glance set, and the
    focus set is exactly ``segment_indices(num_frames, focus_segments, rng=rng)``.
    """
    glance = None
    if glance_segments is not None:
        glance = segment_indices(num_frames, glance_segments, rng=rng, start_index=start_index)
    focus = segment_indices(num_frames, focus_segments, rng=rng, start_index=start_index)
    return glance, focus
