"""What an AdaFocusV3 forward returns (:class:`AdaFocusV3Output`) and the paper's objective on it (Eq. 1,
:class:`AdaFocusV3Objective`), for the network of :mod:`.adafocus_v3`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from .outputs import detach_output


@dataclass
class AdaFocusV3Output:
    """Everything one forward produces. Stage 0 is the glance exit p0, stage k (1..K) the exit after cube k."""

    stage_logits: torch.Tensor  # (B, K + 1, C)
    centres: torch.Tensor  # (B, K, 3) the policy's (x, y, z) in (0, 1)
    cube_starts: torch.Tensor  # (B, K) continuous first frame z (T - T')
    focus_indices: torch.Tensor  # (B, K) the first frame each cube processed (inference) or starts at (training)
    frames_used: torch.Tensor  # (B, K) frames each cube processed (inference); T' in training
    patch_boxes: torch.Tensor  # (B, K, 4) the cubes' boxes (x1, y1, x2, y2) in input pixels

    @property
    def exit_logits(self) -> torch.Tensor:
        return self.stage_logits

    @property
    def logits(self) -> torch.Tensor:
        """(B, C) the prediction: the last exit."""
        return self.stage_logits[:, -1]

    @property
    def glance_logits(self) -> torch.Tensor:
        """(B, 1, C) p0, the glance exit."""
        return self.stage_logits[:, :1]

    @property
    def focus_logits(self) -> torch.Tensor:
        """(B, K, C) the exits after each cube."""
        return self.stage_logits[:, 1:]

    @property
    def validation_logits(self) -> torch.Tensor:
        """(B, K + 1, C): the validation loss is the CE of every exit, as the training objective."""
        return self.stage_logits

    def detach(self) -> "AdaFocusV3Output":
        return detach_output(self)


@dataclass
class AdaFocusV3Terms:
    """Scalar loss terms; ``total`` is their sum."""

    total: torch.Tensor
    glance_exit: torch.Tensor  # CE of p0
    cubes: torch.Tensor  # the CEs of p1..pK (summed, or averaged with the glance exit's share)


class AdaFocusV3Objective:
    """Paper Eq. 1: the cross-entropy of every prediction p_0 .. p_K, summed over the steps and averaged
    over the videos (``reduction='sum'``); ``'mean'`` divides by the K + 1 steps.

    ``objective(out, target, generator=None) -> AdaFocusV3Terms`` for an :class:`AdaFocusV3Output`.
    """

    def __init__(self, reduction: str = "sum"):
        if reduction not in ("sum", "mean"):
            raise ValueError(f"--v3_loss must be 'sum' or 'mean', got {reduction!r}")
        self.reduction = reduction

    def __call__(self, out: AdaFocusV3Output, target: torch.Tensor,
                 generator: Optional[torch.Generator] = None) -> AdaFocusV3Terms:
        logits = out.stage_logits  # (B, K + 1, C); half precision (autocast) is computed in float32
        logits = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
        b, steps, c = logits.shape
        losses = F.cross_entropy(logits.reshape(b * steps, c), target.repeat_interleave(steps),
                                 reduction="none").view(b, steps).mean(dim=0)  # (K + 1,)
        scale = 1.0 if self.reduction == "sum" else 1.0 / steps
        glance, cubes = losses[0] * scale, losses[1:].sum() * scale
        return AdaFocusV3Terms(total=glance + cubes, glance_exit=glance, cubes=cubes)


def build_objective(args) -> AdaFocusV3Objective:
    """The variant's objective from parsed flags (``--v3_loss``)."""
    return AdaFocusV3Objective(getattr(args, "v3_loss", "sum"))
