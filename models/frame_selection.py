"""Which frames the glance and the focus encoders see (paper §4.2, App. C; docs/official-behaviour.md,
"Frame selection").

* ``glance_frame_indices``: the T_G frames (of T0) given to the glance encoder.
* ``interpolate_actions``: spatial actions of the T_G glance frames, linearly interpolated to all T0
  candidate frames.
* ``select_focus_frames``: the T_L focus frames, taken at uniformly spaced quantiles of the
  cumulative distribution of the temporal policy's frame weights (deterministic at test time,
  stratified random in training). Fully vectorised: no Python loop over steps or videos.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F


def glance_frame_indices(num_segments: int, num_glance: int, batch_size: int = 1,
                         random: bool = False, generator: Optional[torch.Generator] = None,
                         device=None) -> torch.Tensor:
    """Indices (B, T_G) into the T0 candidate frames.

    Evaluation (``random=False``): the official rule, frame ``1 + r*g`` with ``r = T0 // T_G`` (the
    middle frame of each triple when r = 3; frame ``g`` when r = 1). When T_G does not divide T0
    (the official code crashes there) the segment centres ``floor((g + 0.5) * T0 / T_G)`` are used.

    Training (``random=True``): one uniformly random frame in each of the T_G equal segments,
    ``floor((g + U_g) * T0 / T_G)``, which for divisible sizes is the official
    ``randint(0, r) + r*g``. Draws come from ``generator`` (or the global RNG when it is None).
    """
    if not 0 < num_glance <= num_segments:
        raise ValueError(f"need 0 < num_glance_segments ({num_glance}) <= num_segments ({num_segments})")
    # computed where the draws are (float64 arithmetic is the same on every device), segment numbers
    # included: copying them from the host would wait on the device
    draws_on = generator.device if random and generator is not None else torch.device("cpu")
    g = torch.arange(num_glance, dtype=torch.float64, device=draws_on)
    if random:
        u = torch.rand(batch_size, num_glance, generator=generator, dtype=torch.float64, device=draws_on)
        idx = torch.floor((g + u) * num_segments / num_glance).long()
    else:
        if num_segments % num_glance == 0:
            r = num_segments // num_glance
            idx = torch.arange(num_glance) * r + min(1, r - 1)
        else:
            idx = torch.floor((g + 0.5) * num_segments / num_glance).long()
        idx = idx.unsqueeze(0).expand(batch_size, num_glance)
    return idx.clamp(0, num_segments - 1).to(device)


def interpolate_actions(actions: torch.Tensor, num_segments: int) -> torch.Tensor:
    """Linear interpolation of per-glance-frame actions to all T0 frames.

    actions: (B, T_G, 4) -> (B, T0, 4). ``F.interpolate(mode='linear', align_corners=False)``, as
    the official code: frame j reads the source position ``(j + 0.5) * T_G / T0 - 0.5`` (clamped).
    """
    b, g, k = actions.shape
    out = F.interpolate(actions.transpose(1, 2), size=num_segments, mode="linear", align_corners=False)
    return out.transpose(1, 2)  # (B, T0, 4)


def quantile_positions(weights: torch.Tensor, num_focus: int, random: bool = False,
                       generator: Optional[torch.Generator] = None,
                       offsets: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Real-valued positions in [0, 1) of T_L quantiles of the piecewise-linear weight CDF.

    weights: (B, G) non-negative frame weights summing to 1 (the temporal policy's tempered
    softmax). The CDF is linear inside each of the G equal bins of [0, 1] and reaches the cumulative
    weight ``c_g`` at ``g / G`` (``c_G`` is forced to 1). Thresholds are ``tau_k = (k + 0.5) / T_L``
    (evaluation) or ``(k + U_k) / T_L`` (training, stratified; ``offsets`` (B, T_L) in [0, 1) gives
    the U_k instead of drawing them). Returns (B, T_L).
    """
    b, g = weights.shape
    w = weights.detach()
    cdf = torch.cat((w.new_zeros(b, 1), torch.cumsum(w, dim=1)), dim=1)  # (B, G+1), c_0 = 0
    cdf[:, -1] = 1.0
    k = torch.arange(num_focus, device=w.device, dtype=w.dtype)
    if offsets is not None:
        u = offsets.to(device=w.device, dtype=w.dtype)
    elif random:
        u = torch.rand(b, num_focus, generator=generator, dtype=w.dtype,
                       device=generator.device if generator is not None else w.device).to(w.device)
    else:
        u = torch.full((b, num_focus), 0.5, device=w.device, dtype=w.dtype)
    tau = (k + u) / num_focus  # (B, L)
    # First j with c_j >= tau (ties to the first), then the bin g = clamp(j, 1, G) - 1.
    reached = cdf.unsqueeze(1) >= tau.unsqueeze(2)  # (B, L, G+1)
    first = torch.argmax(reached.to(torch.uint8), dim=2)
    bin_idx = first.clamp(1, g) - 1
    c_lo = torch.gather(cdf, 1, bin_idx)
    c_hi = torch.gather(cdf, 1, bin_idx + 1)
    # Invert the line through (g/G, c_g) and ((g+1)/G, c_{g+1}).
    slope = (c_hi - c_lo) * g
    slope = torch.where(slope > 0, slope, torch.ones_like(slope))
    return bin_idx.to(w.dtype) / g + (tau - c_lo) / slope


def positions_to_indices(positions: torch.Tensor, num_segments: int) -> torch.Tensor:
    """Quantile positions (B, L) -> sorted, distinct frame indices (B, L) in [0, T0).

    ``floor(q * T0)``, then pushed right to be strictly increasing (``idx_k = max(idx_k,
    idx_{k-1} + 1)``, a cumulative maximum of ``idx_k - k``), then capped at ``T0 - L + k`` so that
    all T_L indices fit. This is the official rule, without its Python loop.
    """
    b, num_focus = positions.shape
    if num_focus > num_segments:
        raise ValueError(f"cannot select {num_focus} distinct frames out of {num_segments}")
    idx = torch.floor(positions * num_segments).long().clamp_(0, num_segments - 1)
    k = torch.arange(num_focus, device=idx.device)
    idx = torch.cummax(idx - k, dim=1).values + k
    return torch.minimum(idx, num_segments - num_focus + k)


def select_focus_frames(weights: torch.Tensor, num_segments: int, num_focus: int,
                        random: bool = False, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """T_L focus-frame indices (B, T_L) into the T0 frames from the frame weights (B, T_G)."""
    return positions_to_indices(quantile_positions(weights, num_focus, random, generator), num_segments)


# ------------------------------------------------------------------------------------------------
# Ablation rules (paper Table 9, ``--frame_sampling``): the T_L focus frames when the temporal policy
# does not choose them. Each returns sorted, distinct indices (B, T_L) into the T0 candidates.
# ------------------------------------------------------------------------------------------------
#: ``policy`` (the temporal policy's weights, default); ``uniform`` (evenly spaced); ``random`` (T_L distinct
#: frames drawn uniformly); ``central_clip`` (T_L consecutive frames in the middle); ``gaussian`` (positions
#: drawn from a normal distribution centred at the middle, ``models.patches.GAUSSIAN_SPREAD``);
#: ``mg_sampler`` (motion-guided sampling, :func:`motion_weights`).
FRAME_SAMPLINGS = ("policy", "uniform", "random", "central_clip", "gaussian", "mg_sampler")


def uniform_frame_indices(batch_size: int, num_segments: int, num_focus: int, device=None) -> torch.Tensor:
    """(B, T_L) evenly spaced frames: the ones uniform frame weights select, ``floor((k + 0.5) T0 / T_L)``."""
    weights = torch.full((batch_size, 1), 1.0, device=device)
    return select_focus_frames(weights, num_segments, num_focus)


def random_frame_indices(batch_size: int, num_segments: int, num_focus: int,
                         generator: Optional[torch.Generator] = None, device=None) -> torch.Tensor:
    """(B, T_L) distinct frames drawn uniformly at random (without replacement), sorted."""
    gen_device = generator.device if generator is not None else device
    keys = torch.rand(batch_size, num_segments, generator=generator, device=gen_device).to(device)
    return torch.sort(torch.argsort(keys, dim=1)[:, :num_focus], dim=1).values


def central_clip_indices(batch_size: int, num_segments: int, num_focus: int, device=None) -> torch.Tensor:
    """(B, T_L) the T_L consecutive frames in the middle of the T0 candidates."""
    start = (num_segments - num_focus) // 2
    return (torch.arange(num_focus, device=device) + start).unsqueeze(0).expand(batch_size, num_focus)


def gaussian_frame_indices(batch_size: int, num_segments: int, num_focus: int,
                           generator: Optional[torch.Generator] = None, device=None) -> torch.Tensor:
    """(B, T_L) frames at positions drawn from a normal distribution centred at the middle of the video
    (clamped to it), sorted and made distinct as :func:`positions_to_indices` does."""
    from .patches import draw_centred_gaussian

    positions = draw_centred_gaussian((batch_size, num_focus), generator, device).clamp_(max=1.0 - 1e-6)
    return positions_to_indices(torch.sort(positions, dim=1).values, num_segments)


def motion_weights(frames: torch.Tensor) -> torch.Tensor:
    """The motion distribution of MG Sampler (Zhi et al., ICCV 2021) over T0 frames: (B, T0, C, H, W) -> (B, T0).

    Frame t's motion is the mean absolute difference of its pixels from frame t - 1 (frame 0: none); the
    weights are the motions normalised to sum to 1 (uniform for a video without motion).
    """
    x = frames.float()
    motion = torch.zeros(x.shape[:2], device=x.device)
    motion[:, 1:] = (x[:, 1:] - x[:, :-1]).abs().flatten(2).mean(dim=2)
    total = motion.sum(dim=1, keepdim=True)
    uniform = torch.full_like(motion, 1.0 / motion.shape[1])
    return torch.where(total > 0, motion / total.clamp_min(1e-12), uniform)


def mg_sampler_indices(frames: torch.Tensor, num_focus: int, random: bool = False,
                       generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """MG Sampler's frames (B, T_L) of the T0 frames (B, T0, C, H, W): the cumulative motion
    (:func:`motion_weights`) is split into T_L parts of equal motion and one frame is taken from each,
    where the cumulative motion crosses the part's middle (evaluation) or a uniformly random point of the
    part (training), made distinct as :func:`positions_to_indices` does."""
    weights = motion_weights(frames)  # (B, T0): one bin per frame
    return select_focus_frames(weights, frames.shape[1], num_focus, random=random, generator=generator)


def rule_frame_indices(rule: str, batch_size: int, num_segments: int, num_focus: int, random: bool = False,
                       generator: Optional[torch.Generator] = None, device=None,
                       frames: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The focus frames (B, T_L) of a ``--frame_sampling`` rule other than ``policy`` (see
    :data:`FRAME_SAMPLINGS`). ``frames`` (B, T0, C, H, W): the candidates, for ``mg_sampler``; ``random``:
    training (MG Sampler then draws within each part)."""
    if rule == "uniform":
        return uniform_frame_indices(batch_size, num_segments, num_focus, device)
    if rule == "random":
        return random_frame_indices(batch_size, num_segments, num_focus, generator, device)
    if rule == "central_clip":
        return central_clip_indices(batch_size, num_segments, num_focus, device)
    if rule == "gaussian":
        return gaussian_frame_indices(batch_size, num_segments, num_focus, generator, device)
    if rule == "mg_sampler":
        if frames is None:
            raise ValueError("frame_sampling 'mg_sampler' needs the candidate frames")
        return mg_sampler_indices(frames, num_focus, random, generator)
    raise ValueError(f"frame_sampling must be one of {FRAME_SAMPLINGS[1:]} here, got {rule!r}")
