"""How well the learned policy finds the object, on data with ground truth (the synthetic dataset).

Two questions, each answered next to a baseline that has no policy:

* **frames** — how often do the selected focus frames show the object? Baseline: the T_L evenly
  spaced frames that uniform weights select.
* **patches** — on selected frames that show the object, how often does the patch cover it (at
  least ``min_coverage`` of the object's box inside the patch)? Baseline: patches of the same size
  at uniformly random positions (so a policy cannot win by growing its patches to the whole frame).
"""
from __future__ import annotations

from typing import Dict, Optional

import torch

from .packages import sibling

select_focus_frames = sibling("models.frame_selection").select_focus_frames


def box_coverage(patches: torch.Tensor, objects: torch.Tensor) -> torch.Tensor:
    """Fraction of each object box's area inside the matching patch box; boxes (..., 4) as x1, y1, x2, y2."""
    ix = (torch.minimum(patches[..., 2], objects[..., 2]) - torch.maximum(patches[..., 0], objects[..., 0])).clamp_min(0)
    iy = (torch.minimum(patches[..., 3], objects[..., 3]) - torch.maximum(patches[..., 1], objects[..., 1])).clamp_min(0)
    area = ((objects[..., 2] - objects[..., 0]) * (objects[..., 3] - objects[..., 1])).clamp_min(1e-6)
    return ix * iy / area


def random_position_like(patches: torch.Tensor, height: int, width: int, draws: int,
                         generator: Optional[torch.Generator]) -> torch.Tensor:
    """``draws`` copies of each patch box moved to a uniformly random position inside the frame: (draws, ..., 4)."""
    w = patches[..., 2] - patches[..., 0]
    h = patches[..., 3] - patches[..., 1]
    u = torch.rand((draws,) + tuple(patches.shape[:-1]) + (2,), generator=generator, dtype=patches.dtype)
    x1 = u[..., 0] * (width - w)
    y1 = u[..., 1] * (height - h)
    return torch.stack((x1, y1, x1 + w, y1 + h), dim=-1)


def policy_quality(focus_indices: torch.Tensor, patch_boxes: torch.Tensor, object_boxes: torch.Tensor,
                   object_visible: torch.Tensor, frame_size, min_coverage: float = 0.5, random_draws: int = 16,
                   seed: int = 0) -> Dict[str, float]:
    """Rates in percent for N videos.

    focus_indices (N, T_L) into the T0 clip frames; patch_boxes (N, T_L, 4) in clip pixels;
    object_boxes (N, T0, 4) in clip pixels; object_visible (N, T0) bool; frame_size (H, W).
    """
    n, num_focus = focus_indices.shape
    t0 = object_visible.shape[1]
    height, width = frame_size
    visible = object_visible.bool()
    chosen_visible = torch.gather(visible, 1, focus_indices.long())  # (N, T_L)
    uniform = select_focus_frames(torch.full((1, num_focus), 1.0 / num_focus), t0, num_focus).expand(n, -1)
    uniform_visible = torch.gather(visible, 1, uniform)
    frames_any = visible.any(dim=1)

    objects = torch.gather(object_boxes.double(), 1, focus_indices.long().unsqueeze(-1).expand(-1, -1, 4))
    patches = patch_boxes.double()
    covered = box_coverage(patches, objects) >= min_coverage  # (N, T_L)
    generator = torch.Generator().manual_seed(seed)
    moved = random_position_like(patches, height, width, random_draws, generator)
    random_covered = (box_coverage(moved, objects.unsqueeze(0)) >= min_coverage).double().mean(dim=0)
    mask = chosen_visible
    shown = int(mask.sum())

    def pct(x):
        return float(100.0 * x)

    patch_area = ((patches[..., 2] - patches[..., 0]) * (patches[..., 3] - patches[..., 1])).mean() / (height * width)
    return {
        "frames_show_object": pct(chosen_visible.double().mean()),
        "uniform_frames_show_object": pct(uniform_visible.double().mean()),
        "videos_with_object_in_clip": pct(frames_any.double().mean()),
        "patches_cover_object": pct(covered[mask].double().mean()) if shown else float("nan"),
        "random_patches_cover_object": pct(random_covered[mask].mean()) if shown else float("nan"),
        "mean_patch_area_fraction": float(patch_area),
        "frames_evaluated": shown,
    }
