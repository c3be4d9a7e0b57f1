"""The training objective of Uni-AdaFocus (paper Eq. 12, 15, 21, 22; docs/official-behaviour.md, "Objective").

``UniAdaFocusObjective`` returns every term by name. With the official defaults

    total = ½ CE(exits | policy patches) + ½ CE(exits | random patches)      -> ``cat``
          + CE(glance head)                                                   -> ``glance``
          + ½ CE(focus head | policy patches) + ½ CE(focus head | random)     -> ``focus``
          + temporal Monte-Carlo term                                         -> ``temporal``
          + spatial feature-interpolation term                                -> ``spatial``
          + KL_ratio · KL(w || uniform)                                       -> ``kl``
          + norm_ratio · mean (a_size - 1)^2                                  -> ``norm``

where every CE is the mean over videos (and over steps / frames where there are several). The
official code writes the same total as (two-branch sums) / 2 + KL + norm. ``glance_form='video'``
replaces the glance head's per-frame CE (official, paper Eq. 11) by one CE per video, of the frames'
mean logits.

Two forms of the temporal term:

* ``'official'``: one cross-entropy of the Monte-Carlo average of weighted glance **logits**, with
  the weight normaliser detached (gradient reaches the weights and the glance network);
* ``'paper'``: Eq. 21, the Monte-Carlo average of weighted per-frame glance **losses** (the frame
  losses act as fixed signals for the policy; the normaliser is differentiated).

Both sample, per Monte-Carlo copy, frames without replacement with probability proportional to the
weights (Gumbel top-k, which is exactly sequential weighted sampling without replacement). The
official form draws a fresh set for each number of removed frames; the paper form removes prefixes of
one sequence. ``T1 = floor(T_L * T_G / T0)`` removal steps (App. C), 5 for the official sizes.

Training-time ablations (paper Tables 6, 7, 9; ``models.training_ablations.TrainingAblations``) reach the
objective through the forward output: a term whose input the output gives as None (``glance`` and
``focus`` without auxiliary supervision, ``spatial`` with the pixel-based spatial training, ``norm``
without the size regulariser) is zero, and an output with ``single_pass`` (no diversity augmentation)
has no random-patch pass, so ``cat`` and ``focus`` are the policy pass's cross-entropies alone.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Dict, Optional

import torch
import torch.nn.functional as F

from .packages import sibling


@dataclass
class ObjectiveTerms:
    """Scalar loss terms, already weighted; ``total`` is their sum."""

    total: torch.Tensor
    cat: torch.Tensor
    glance: torch.Tensor
    focus: torch.Tensor
    temporal: torch.Tensor
    spatial: torch.Tensor
    kl: torch.Tensor
    norm: torch.Tensor

    def as_floats(self) -> Dict[str, float]:
        return {f.name: float(getattr(self, f.name).detach()) for f in fields(self)}


def step_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean CE of logits (B, T, C) against one label per video (B,), broadcast over the T steps."""
    b, t, c = logits.shape
    return F.cross_entropy(logits.reshape(b * t, c), target.repeat_interleave(t))


def default_mc_draws(num_segments: int, num_glance: int, num_focus: int) -> int:
    """Appendix C: T0 -> T_L sampling is approximated by T_G -> floor(T_L / T0 * T_G)."""
    return max(1, (num_focus * num_glance) // num_segments)


def _gumbel_ranks(weights: torch.Tensor, shape, generator: Optional[torch.Generator]) -> torch.Tensor:
    """Ranks (0 = drawn first) of a weighted sampling without replacement over the last dim.

    weights: (B, G); returns int64 ranks of shape ``shape + (G,)`` with shape[0] == B.
    """
    g = weights.shape[-1]
    full = tuple(shape) + (g,)
    gen_device = generator.device if generator is not None else weights.device
    u = torch.rand(full, generator=generator, device=gen_device, dtype=torch.float64).to(weights.device)
    exponential = (-torch.log(u.clamp_min(1e-300))).clamp_min(1e-300)  # Exp(1); -log of it is Gumbel(0, 1)
    log_w = torch.log(weights.detach().double()).view((weights.shape[0],) + (1,) * (len(full) - 2) + (g,))
    order = torch.argsort(log_w - torch.log(exponential), dim=-1, descending=True)
    return torch.argsort(order, dim=-1)


def temporal_mc_logits(frame_weights: torch.Tensor, glance_logits: torch.Tensor, num_draws: int,
                       num_samples: int = 128, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Official Monte-Carlo temporal logits (B, C).

    For each copy m and each i = 0..T1-1, i frames are drawn (fresh, weighted, without replacement)
    and their weights zeroed: ``z = sum_j w'_j logit_j / stopgrad(sum_j w'_j)``; the mean of z over
    (m, i) is returned. Because the normaliser is detached, this equals
    ``sum_j w_j A_j logit_j`` with the constant ``A_j = mean_{m,i} [j kept] / S_{m,i}``.

    frame_weights: (B, G); glance_logits: (B, G, C).
    """
    b, g = frame_weights.shape
    ranks = _gumbel_ranks(frame_weights, (b, num_samples, num_draws), generator)  # (B, M, T1, G)
    removed = torch.arange(num_draws, device=ranks.device).view(1, 1, num_draws, 1)
    kept = (ranks >= removed).to(frame_weights.dtype)  # (B, M, T1, G)
    w = frame_weights.detach().view(b, 1, 1, g)
    norm = (kept * w).sum(dim=-1, keepdim=True)  # (B, M, T1, 1), detached
    coeff = (kept / norm).mean(dim=(1, 2))  # (B, G)
    return torch.einsum("bg,bgc->bc", frame_weights * coeff, glance_logits)


def temporal_mc_paper_loss(frame_weights: torch.Tensor, frame_losses: torch.Tensor, num_draws: int,
                           num_samples: int = 128, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Paper Eq. 21: ``1/(T1 M) sum_i sum_m sum_j w_j^{m,(i)} / sum_j' w_j'^{m,(i)} * L_frame(j)``.

    For each copy m one weighted order without replacement is drawn; step i removes its first i
    frames. frame_weights: (B, G) (differentiated, quotient rule included); frame_losses: (B, G).
    Returns the mean over videos.
    """
    b, g = frame_weights.shape
    ranks = _gumbel_ranks(frame_weights, (b, num_samples), generator)  # (B, M, G)
    removed = torch.arange(num_draws, device=ranks.device).view(1, 1, num_draws, 1)
    kept = (ranks.unsqueeze(2) >= removed).to(frame_weights.dtype)  # (B, M, T1, G)
    w = frame_weights.view(b, 1, 1, g) * kept
    probs = w / w.sum(dim=-1, keepdim=True)  # (B, M, T1, G)
    return (probs * frame_losses.view(b, 1, 1, g)).sum(dim=-1).mean()


def patch_size_regulariser(glance_actions: torch.Tensor) -> torch.Tensor:
    """Mean of (a_h - 1)^2 and (a_w - 1)^2 over all glance frames: pushes patches to full size.

    Equals the paper's alpha[(H - H_p)^2 + (W - W_p)^2] (Eq. 15) up to a constant factor.
    """
    return ((glance_actions[..., 2:] - 1.0) ** 2).mean()


def kl_to_uniform(frame_weights: torch.Tensor, reference_size: Optional[int] = None) -> torch.Tensor:
    """KL(w || uniform) summed over frames, mean over videos (``kl_div(..., 'batchmean')``).

    The official code uses 1 / T_L as the uniform probability (``reference_size = T_L``) although the
    weights live on T_G frames; pass ``reference_size=None`` for the proper 1 / T_G.
    """
    b, g = frame_weights.shape
    n = g if reference_size is None else reference_size
    log_uniform = torch.full_like(frame_weights, -float(torch.log(torch.tensor(float(n)))))
    return F.kl_div(log_uniform, frame_weights, reduction="batchmean")


class UniAdaFocusObjective:
    """The training objective, configured once for a model's sizes and the loss options.

    ``objective(out, target, generator=None) -> ObjectiveTerms`` for a training-mode forward ``out``
    (a ``UniAdaFocusOutput`` with its ``random_pass``) and the class of each video, target (B,).

    kl_reference: ``'official'`` measures KL against 1 / T_L (the official constant), ``'glance'``
    against 1 / T_G (the uniform distribution over the frames the weights live on).
    """

    #: Every term, in the order of :class:`ObjectiveTerms` (after ``total``); variants name theirs.
    TERMS = sibling("models.variants").OBJECTIVE_TERMS

    def __init__(self, num_segments: int, num_glance_segments: int, num_focus_segments: int, *,
                 terms=TERMS, kl_ratio: float = 0.0, norm_ratio: float = 1.0, temporal_form: str = "official",
                 spatial_form: str = "official", mc_samples: int = 128, mc_draws: Optional[int] = None,
                 kl_reference: str = "official", glance_form: str = "frames"):
        if temporal_form not in ("official", "paper"):
            raise ValueError(f"temporal_form must be 'official' or 'paper', got {temporal_form!r}")
        if spatial_form not in ("official", "paper"):
            raise ValueError(f"spatial_form must be 'official' or 'paper', got {spatial_form!r}")
        if glance_form not in ("frames", "video"):
            raise ValueError(f"glance_form must be 'frames' or 'video', got {glance_form!r}")
        if kl_reference not in ("official", "glance"):
            raise ValueError(f"kl_reference must be 'official' or 'glance', got {kl_reference!r}")
        unknown = set(terms) - set(self.TERMS)
        if unknown:
            raise ValueError(f"unknown objective terms {sorted(unknown)}; known: {self.TERMS}")
        self.terms = frozenset(terms)
        self.kl_ratio, self.norm_ratio = kl_ratio, norm_ratio
        self.temporal_form, self.spatial_form, self.glance_form = temporal_form, spatial_form, glance_form
        self.mc_samples = mc_samples
        self.mc_draws = mc_draws or default_mc_draws(num_segments, num_glance_segments, num_focus_segments)
        self.kl_reference_size = num_focus_segments if kl_reference == "official" else None

    def __call__(self, out, target: torch.Tensor, generator: Optional[torch.Generator] = None) -> ObjectiveTerms:
        if out.random_pass is None and not getattr(out, "single_pass", False):
            raise ValueError("the objective needs a training-mode forward (with the random-patch pass)")
        zero = out.cat_logits.new_zeros(())  # (AdaFocusV2's output has no frame weights)
        values = {}
        for name in self.TERMS:
            value = getattr(self, f"_{name}")(out, target, generator) if name in self.terms else None
            values[name] = zero if value is None else value  # None: the output leaves the term out
        return ObjectiveTerms(total=sum(values.values()), **values)

    @staticmethod
    def _two_passes(out, policy_value: torch.Tensor, random_value) -> torch.Tensor:
        """Eq. 12: the mean of a cross-entropy over the policy's and the random patches (the policy's alone
        for a ``single_pass`` output; ``random_value(random_pass)`` is then not called)."""
        if getattr(out, "single_pass", False):
            return policy_value
        return 0.5 * (policy_value + random_value(out.random_pass))

    # one method per term, each already weighted ------------------------------------------------------
    def _cat(self, out, target, generator):
        return self._two_passes(out, step_cross_entropy(out.cat_logits, target),
                                lambda random_pass: step_cross_entropy(random_pass.cat_logits, target))

    def _glance(self, out, target, generator):
        logits = out.glance_loss_logits  # (B, S, C)
        if logits is None:
            return None
        if self.glance_form == "video":
            logits = logits.mean(dim=1, keepdim=True)  # one prediction per video: the frames' mean logits
        return step_cross_entropy(logits, target)

    def _focus(self, out, target, generator):
        if out.focus_loss_logits is None:
            return None
        return self._two_passes(out, step_cross_entropy(out.focus_loss_logits, target),
                                lambda random_pass: step_cross_entropy(random_pass.focus_loss_logits, target))

    def _temporal(self, out, target, generator):
        if self.temporal_form == "official":
            mc_logits = temporal_mc_logits(out.frame_weights, out.temporal_frame_logits, self.mc_draws,
                                           self.mc_samples, generator)
            return F.cross_entropy(mc_logits, target)
        b, num_glance, _ = out.glance_logits.shape
        frame_losses = F.cross_entropy(out.glance_logits.detach().flatten(0, 1), target.repeat_interleave(num_glance),
                                       reduction="none").view(b, num_glance)
        return temporal_mc_paper_loss(out.frame_weights, frame_losses, self.mc_draws, self.mc_samples, generator)

    def _spatial(self, out, target, generator):
        if out.spatial_logits is None:
            return None
        if self.spatial_form == "official":  # one CE per video of the frame-averaged crop
            return F.cross_entropy(out.spatial_logits, target)
        return step_cross_entropy(out.spatial_frame_logits, target)  # Eq. 14/15: one CE per glance frame

    def _kl(self, out, target, generator):
        if not self.kl_ratio:
            return out.frame_weights.new_zeros(())
        return self.kl_ratio * kl_to_uniform(out.frame_weights, self.kl_reference_size)

    def _norm(self, out, target, generator):
        if out.size_actions is None:
            return None
        return self.norm_ratio * patch_size_regulariser(out.size_actions)


def validation_loss(out, target: torch.Tensor) -> torch.Tensor:
    """The official validation loss: the mean CE of the output's ``validation_logits`` (every exit for the
    main variant, the prediction for TSM) against the label."""
    return step_cross_entropy(out.validation_logits, target)
