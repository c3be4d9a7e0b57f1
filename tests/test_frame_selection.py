"""Properties of glance-frame sampling, action interpolation and CDF-quantile focus-frame selection."""
import math

import pytest
import torch

from models.frame_selection import (glance_frame_indices, interpolate_actions, positions_to_indices,
                                 quantile_positions, select_focus_frames)


def _official_selection(weights, t0, num_focus, offsets):
    """Plain-Python restatement of the official rule, one video and one step at a time.

    The rule: docs/official-behaviour.md, "Frame selection".
    """
    out = []
    for w, u in zip(weights.tolist(), offsets.tolist()):
        g = len(w)
        cdf = [0.0]
        for x in w:
            cdf.append(cdf[-1] + x)
        cdf[-1] = 1.0
        idx = []
        for k in range(num_focus):
            tau = (k + u[k]) / num_focus
            j = next(j for j in range(g + 1) if cdf[j] >= tau)
            b = min(max(j, 1), g) - 1
            q = (b + (tau - cdf[b]) / (cdf[b + 1] - cdf[b])) / g
            idx.append(int(math.floor(q * t0)))
        for k in range(1, num_focus):
            if idx[k] <= idx[k - 1]:
                idx[k] = idx[k - 1] + 1
        out.append([min(i, t0 - num_focus + k) for k, i in enumerate(idx)])
    return torch.tensor(out)


@pytest.mark.parametrize("t0,g,l", [(48, 16, 16), (48, 16, 8), (32, 8, 12), (20, 10, 20), (9, 4, 3)])
def test_vectorised_selection_equals_the_official_loop(t0, g, l):
    gen = torch.Generator().manual_seed(t0 * 100 + g * 10 + l)
    for sharpness in (0.1, 1.0, 5.0, 30.0):
        weights = torch.softmax(sharpness * torch.randn(16, g, generator=gen, dtype=torch.float64), dim=1)
        for offsets in (torch.full((16, l), 0.5, dtype=torch.float64), torch.rand(16, l, generator=gen, dtype=torch.float64)):
            ours = positions_to_indices(quantile_positions(weights, l, offsets=offsets), t0)
            assert torch.equal(ours, _official_selection(weights, t0, l, offsets))


def test_indices_are_sorted_distinct_and_in_range():
    gen = torch.Generator().manual_seed(0)
    for random in (False, True):
        w = torch.softmax(10 * torch.randn(64, 16, generator=gen), dim=1)
        idx = select_focus_frames(w, 48, 16, random=random, generator=gen)
        assert idx.shape == (64, 16)
        assert (idx[:, 1:] > idx[:, :-1]).all()
        assert idx.min() >= 0 and idx.max() < 48


def test_uniform_weights_give_evenly_spaced_frames():
    idx = select_focus_frames(torch.full((2, 16), 1 / 16), 48, 16)
    assert idx[0].tolist() == list(range(1, 48, 3))
    idx = select_focus_frames(torch.full((1, 8), 1 / 8), 64, 8)
    assert idx[0].tolist() == list(range(4, 64, 8))


def test_concentrated_weights_give_a_contiguous_block():
    w = torch.full((1, 16), 1e-9)
    w[0, 5] = 1.0
    w = w / w.sum()
    assert select_focus_frames(w, 48, 16)[0].tolist() == list(range(15, 31))
    w = torch.zeros(1, 16)
    w[0, 15] = 1.0  # mass on the last glance frame: the block is pushed left to fit
    assert select_focus_frames(w, 48, 16)[0].tolist() == list(range(32, 48))


def test_training_selection_is_stratified_and_seeded():
    w = torch.full((4000, 16), 1 / 16)
    idx = select_focus_frames(w, 48, 16, random=True, generator=torch.Generator().manual_seed(1))
    # uniform weights: step k lands uniformly in frames 3k .. 3k+2
    for k in (0, 7, 15):
        counts = torch.bincount(idx[:, k] - 3 * k, minlength=3).float() / 4000
        torch.testing.assert_close(counts, torch.full((3,), 1 / 3), atol=0.03, rtol=0)
    again = select_focus_frames(w, 48, 16, random=True, generator=torch.Generator().manual_seed(1))
    assert torch.equal(idx, again)


def test_evaluation_selection_draws_no_random_numbers():
    state = torch.random.get_rng_state()
    select_focus_frames(torch.softmax(torch.arange(16.0).unsqueeze(0), 1), 48, 16)
    glance_frame_indices(48, 16, 2)
    assert torch.equal(state, torch.random.get_rng_state())


def test_glance_indices_follow_the_official_rule():
    assert glance_frame_indices(48, 16, 2)[1].tolist() == list(range(1, 48, 3))
    assert glance_frame_indices(32, 8, 1)[0].tolist() == list(range(1, 32, 4))
    assert glance_frame_indices(8, 8, 1)[0].tolist() == list(range(8))
    assert glance_frame_indices(10, 4, 1)[0].tolist() == [1, 3, 6, 8]  # not divisible: segment centres


def test_training_glance_indices_take_one_frame_per_segment():
    idx = glance_frame_indices(48, 16, 500, random=True, generator=torch.Generator().manual_seed(0))
    seg = idx - 3 * torch.arange(16)
    assert seg.min() == 0 and seg.max() == 2
    assert set(seg.flatten().tolist()) == {0, 1, 2}


def test_action_interpolation_hits_glance_frames_and_clamps_ends():
    actions = torch.rand(2, 16, 4, generator=torch.Generator().manual_seed(0))
    interp = interpolate_actions(actions, 48)
    torch.testing.assert_close(interp[:, 1::3], actions)  # frame 3g+1 is glance frame g
    torch.testing.assert_close(interp[:, 0], actions[:, 0])
    torch.testing.assert_close(interp[:, 47], actions[:, 15])
    torch.testing.assert_close(interp[:, 2], actions[:, 0] * 2 / 3 + actions[:, 1] / 3)
