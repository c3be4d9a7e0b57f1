"""What the variants' forward outputs share: dataclasses of tensors (and of nested such dataclasses)."""
from __future__ import annotations

from dataclasses import fields, is_dataclass, replace
from typing import TypeVar

import torch

Output = TypeVar("Output")


def detach_output(output: Output) -> Output:
    """A copy of a forward output (a dataclass) with every tensor detached, nested dataclasses (such as
    the training forward's ``random_pass``) included; other fields are kept as they are."""
    def detached(value):
        if isinstance(value, torch.Tensor):
            return value.detach()
        if is_dataclass(value) and not isinstance(value, type):
            return detach_output(value)
        return value

    return replace(output, **{f.name: detached(getattr(output, f.name)) for f in fields(output) if f.init})


class EveryExitLogits:
    """For a focus pass (or a forward) with ``exit_logits`` (B, S, C) and ``focus_logits`` (B, L, C): what the
    objective's cross-entropies (``ops.objective``, terms cat and focus) average over, every exit and every
    patch."""

    @property
    def cat_logits(self) -> torch.Tensor:
        return self.exit_logits

    @property
    def focus_loss_logits(self) -> torch.Tensor:
        return self.focus_logits


class ClipPredictionLogits:
    """For an output with one prediction ``prediction`` (B, C) from a focus clip read whole (``focus_logits``
    (B, L, C), one per frame): the family's logits, its one exit (the prediction, also what the official loss
    and the objective's cat term read) and the focus frames read."""

    @property
    def logits(self) -> torch.Tensor:
        """(B, C) the prediction."""
        return self.prediction

    @property
    def exit_logits(self) -> torch.Tensor:
        """(B, 1, C): one exit, the prediction."""
        return self.prediction.unsqueeze(1)

    stage_logits = exit_logits
    validation_logits = exit_logits
    cat_logits = exit_logits

    @property
    def focus_indices(self) -> torch.Tensor:
        """(B, L) the focus frames read: every frame of the focus clip."""
        b, num_focus = self.focus_logits.shape[:2]
        return torch.arange(num_focus, device=self.prediction.device).unsqueeze(0).expand(b, -1)
