"""What Uni-AdaFocus's forward and its stages (:mod:`.uni_adafocus`) return: :class:`GlanceStage` (step 1),
:class:`PolicyStage` (steps 2-4), :class:`FocusPass` (one set of patches through the focus encoder and the
classifier), :class:`UniAdaFocusOutput` (everything one forward produces) and :func:`stage_logits` (the
early-exit stages of the exit logits).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from .outputs import EveryExitLogits, detach_output


def stage_logits(exit_logits: torch.Tensor, num_glance: int, exits_at_glance: bool = True) -> torch.Tensor:
    """The K = T_L + 1 early-exit stages of a full pass: (B, T_G + T_L, C) -> (B, T_L + 1, C).

    Stage 0 is the last glance exit (row T_G - 1), stage k the focus exit k - 1 (row T_G + k - 1):
    inference may stop after the glance, or after any number of focus frames. Without ``exits_at_glance``
    (the model's rule, ``UniAdaFocus.exits_at_glance``) the K = T_L stages are the focus exits alone,
    (B, T_L, C): stage k follows k + 1 focus frames.
    """
    return exit_logits[:, num_glance - 1 if exits_at_glance else num_glance:]


@dataclass
class FocusPass(EveryExitLogits):
    """What the focus encoder and the classifier made of one set of patches (the objective's cross-entropies
    average over every exit and every patch, see UniAdaFocusOutput)."""

    exit_logits: torch.Tensor  # (B, T_G + T_L, C)
    focus_logits: torch.Tensor  # (B, T_L, C) focus head on each patch
    focus_actions: torch.Tensor  # (B, T_L, 4) the patches' actions


@dataclass
class GlanceStage:
    """Step 1 for a batch of B videos: the glance encoder on T_G frames of each.

    ``logits`` is the glance head (FC_G) per frame, computed only when asked for (the training loss
    and :class:`UniAdaFocusOutput` need it; early-exit inference does not).
    """

    indices: torch.Tensor  # (B, T_G) frames (of T0) seen by the glance encoder
    features: torch.Tensor  # (B, T_G, Dg) pooled glance features (float32)
    feature_maps: torch.Tensor  # (B, T_G, Dg, h, w) glance feature maps, detached (policy_stop_gradient)
    logits: Optional[torch.Tensor] = None  # (B, T_G, C) glance head per frame, or None

    @property
    def batch_size(self) -> int:
        return self.features.shape[0]

    def select(self, rows: torch.Tensor) -> "GlanceStage":
        """The same stage for the videos ``rows`` (n,) (long indices or a (B,) bool mask)."""
        return GlanceStage(*(None if t is None else t[rows] for t in
                             (self.indices, self.features, self.feature_maps, self.logits)))


@dataclass
class PolicyStage:
    """Steps 2-4 for a batch of videos: the policy's patches and frame weights, and the focus frames.

    ``spatial_frame_logits`` (the auxiliary head on each glance map cropped by its own patch) feeds
    the spatial training objective only; it is computed when asked for.
    """

    glance_actions: torch.Tensor  # (B, T_G, 4) spatial policy output per glance frame
    all_actions: torch.Tensor  # (B, T0, 4) the same interpolated to every candidate frame
    frame_weights: torch.Tensor  # (B, T_G) temporal policy softmax
    selection_weights: torch.Tensor  # (B, T_G) softmax at the temperature, used for selection
    focus_indices: torch.Tensor  # (B, T_L) focus frames (of T0), increasing
    focus_actions: torch.Tensor  # (B, T_L, 4) actions at the focus frames, detached (but spatial_training pixels)
    spatial_frame_logits: Optional[torch.Tensor] = None  # (B, T_G, C) or None


@dataclass
class UniAdaFocusOutput:
    """Everything one forward pass produces. ``random_pass`` is set in training only."""

    exit_logits: torch.Tensor  # (B, T_G + T_L, C) glance exits, then focus exits
    glance_logits: torch.Tensor  # (B, T_G, C) glance head per glance frame
    focus_logits: torch.Tensor  # (B, T_L, C) focus head per focus patch
    spatial_frame_logits: Optional[torch.Tensor]  # (B, T_G, C) auxiliary head on each cropped feature map
    spatial_logits: Optional[torch.Tensor]  # (B, C) the same averaged over glance frames (official)
    frame_weights: torch.Tensor  # (B, T_G) temporal policy softmax
    selection_weights: torch.Tensor  # (B, T_G) softmax at the temperature, used for selection
    glance_indices: torch.Tensor  # (B, T_G) frames (of T0) seen by the glance encoder
    focus_indices: torch.Tensor  # (B, T_L) frames (of T0) seen by the focus encoder, increasing
    glance_actions: torch.Tensor  # (B, T_G, 4) spatial policy output per glance frame
    focus_actions: torch.Tensor  # (B, T_L, 4) interpolated actions at the focus frames
    patch_boxes: torch.Tensor  # (B, T_L, 4) focus patches as (x1, y1, x2, y2) in input pixels
    glance_features: torch.Tensor  # (B, T_G, Dg)
    focus_features: torch.Tensor  # (B, T_L, Df)
    random_pass: Optional[FocusPass] = None
    #: Training-time ablations (:mod:`.training_ablations`): the objective terms this forward leaves out (their
    #: inputs below read None), and whether a training forward has a single pass (no random patches).
    ablated_terms: frozenset = frozenset()
    single_pass: bool = False
    #: Whether the early-exit stages start with the last glance exit (the model's ``exits_at_glance``).
    exits_at_glance: bool = True

    @property
    def logits(self) -> torch.Tensor:
        """(B, C) the prediction: the last exit."""
        return self.exit_logits[:, -1]

    def _unless(self, term: str, value):
        return None if term in self.ablated_terms else value

    @property
    def stage_logits(self) -> torch.Tensor:
        """(B, K, C) the early-exit stages, K = T_L + 1 or, without the glance exit, T_L (see :func:`stage_logits`)."""
        return stage_logits(self.exit_logits, self.exit_logits.shape[1] - self.focus_logits.shape[1],
                            self.exits_at_glance)

    # What the objective's cross-entropies average over, (B, S, C) each (one CE per row, averaged):
    # every exit, every glance frame, every focus patch (official). The Monte-Carlo temporal term reads
    # the per-frame glance logits (not detached: it trains the glance network too, as officially).
    @property
    def cat_logits(self) -> torch.Tensor:
        return self.exit_logits

    # (None: the term is left out, ``ablated_terms``.)
    @property
    def glance_loss_logits(self) -> Optional[torch.Tensor]:
        return self._unless("glance", self.glance_logits)

    @property
    def focus_loss_logits(self) -> Optional[torch.Tensor]:
        return self._unless("focus", self.focus_logits)

    @property
    def temporal_frame_logits(self) -> torch.Tensor:
        return self.glance_logits

    @property
    def size_actions(self) -> Optional[torch.Tensor]:
        """The actions the patch-size regulariser reads: (B, T_G, 4), one per glance frame (the box terms;
        None: no regulariser)."""
        return self._unless("norm", self.glance_actions[..., :4])

    @property
    def validation_logits(self) -> torch.Tensor:
        """(B, T_G + T_L, C): the official validation loss is the CE of every exit."""
        return self.exit_logits

    def detach(self) -> "UniAdaFocusOutput":
        return detach_output(self)
