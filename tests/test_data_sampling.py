"""Temporal segment sampling against the official rule and the seeded generators."""
from fractions import Fraction
import math

import numpy as np
import pytest

from datasets.sampling import STREAM_SPATIAL, STREAM_TEMPORAL, sample_rng, segment_indices

CASES = [(n, t) for n in (1, 2, 5, 16, 32, 47, 48, 49, 96, 100, 143, 1000, 3001) for t in (1, 3, 8, 16, 48)]


@pytest.mark.parametrize("n, t0", CASES)
def test_eval_indices_are_segment_centres(n, t0):
    got = segment_indices(n, t0)
    # floor((k + 0.5) * n / T0) + 1; the official float64 rounding moves it by at most one frame down.
    exact = [math.floor((k + Fraction(1, 2)) * n / t0) + 1 for k in range(t0)]
    assert got.dtype == np.int64
    assert all(e - 1 <= g <= e for g, e in zip(got.tolist(), exact))


@pytest.mark.parametrize("t0", [8, 16, 48])
def test_eval_indices_equal_the_official_float64_rule_for_every_length(t0):
    # A plain transcription of the official expression, one Python float operation at a time.
    mismatches = [n for n in range(1, 20_001)
                  if segment_indices(n, t0).tolist() != [int(math.floor((k + 0.5) / t0 * n)) + 1 for k in range(t0)]]
    assert mismatches == []


def test_eval_indices_follow_official_rounding_where_exact_arithmetic_differs():
    # 24.5 / 48 * 480 = 244.99999999999997 in float64: the official frame is 245 (1-based), not 246.
    assert segment_indices(480, 48)[24] == 245
    differing = [n for n in range(1, 20_001)
                 if segment_indices(n, 48, start_index=0).tolist() != [((2 * k + 1) * n) // 96 for k in range(48)]]
    assert len(differing) == 74


def test_eval_hand_checked_values():
    assert segment_indices(100, 4).tolist() == [13, 38, 63, 88]
    assert segment_indices(3, 6).tolist() == [1, 1, 2, 2, 3, 3]          # n < T0: indices repeat
    assert segment_indices(32, 48, start_index=0)[1] == 1                 # exact (2k+1)n/(2T0) = 1 boundary


@pytest.mark.parametrize("n, t0", [(n, t) for n, t in CASES if n >= 1])
def test_train_indices_stay_in_their_segment(n, t0):
    rng = np.random.default_rng(n * 100 + t0)
    for _ in range(20):
        idx = segment_indices(n, t0, rng=rng)
        k = np.arange(t0)
        low = np.floor(k * n / t0).astype(int) + 1          # first frame of segment k (1-based)
        high = np.ceil((k + 1) * n / t0).astype(int)        # last frame touching segment k
        assert np.all(idx >= low) and np.all(idx <= np.maximum(high, low))
        assert np.all(np.diff(idx) >= 0) and idx.min() >= 1 and idx.max() <= n


def test_train_offsets_cover_each_segment_uniformly():
    n, t0 = 480, 48                     # 10 frames per segment
    rng = np.random.default_rng(0)
    draws = np.stack([segment_indices(n, t0, rng=rng) for _ in range(2000)])
    offsets = draws - (np.arange(t0) * 10 + 1)          # position inside the segment, 0..9
    counts = np.bincount(offsets.ravel(), minlength=10)
    assert offsets.min() == 0 and offsets.max() == 9
    assert counts.min() > 0.9 * counts.mean()           # ~uniform: 9600 per value expected


def test_train_indices_match_the_formula_with_the_same_uniforms():
    n, t0 = 123, 16
    u = np.random.default_rng(5).random(t0)
    # The official operation order: (k + U_k) divided by T0, then multiplied by n, in float64.
    want = np.floor((np.arange(t0) + u) / t0 * n).astype(int) + 1
    assert segment_indices(n, t0, rng=np.random.default_rng(5)).tolist() == want.tolist()
    # Any generator with random(size) works, e.g. the legacy RandomState of the official code.
    u = np.random.RandomState(5).random(t0)
    want = np.floor((np.arange(t0) + u) / t0 * n).astype(int) + 1
    assert segment_indices(n, t0, rng=np.random.RandomState(5)).tolist() == want.tolist()


def test_train_operation_order_matters_where_the_exact_value_is_an_integer():
    class Constant:
        def __init__(self, value):
            self.value = value

        def random(self, size):
            return np.full(size, self.value)

    # U = 0.5 at T0 = 48, n = 480, k = 24: 24.5 / 48 * 480 = 244.99999999999997 (frame 245), while
    # 24.5 * 480 / 48 = 245.0 exactly (frame 246): the official order gives the segment centres.
    assert segment_indices(480, 48, rng=Constant(0.5))[24] == 245
    assert segment_indices(480, 48, rng=Constant(0.5)).tolist() == segment_indices(480, 48).tolist()


def test_start_index_and_validation():
    assert segment_indices(10, 2, start_index=0).tolist() == [2, 7]
    with pytest.raises(ValueError, match="num_frames"):
        segment_indices(0, 4)
    with pytest.raises(ValueError, match="num_segments"):
        segment_indices(4, 0)


def test_sample_rng_is_a_pure_function_of_its_key():
    a = sample_rng(1, 2, 3, STREAM_TEMPORAL).random(5)
    assert np.array_equal(a, sample_rng(1, 2, 3, STREAM_TEMPORAL).random(5))
    for other in [(0, 2, 3, STREAM_TEMPORAL), (1, 3, 3, STREAM_TEMPORAL), (1, 2, 4, STREAM_TEMPORAL),
                  (1, 2, 3, STREAM_SPATIAL)]:
        assert not np.array_equal(a, sample_rng(*other).random(5))
    with pytest.raises(ValueError, match="epoch"):
        sample_rng(0, -1, 0, 0)
