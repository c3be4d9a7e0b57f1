"""The family members with one patch per video and two exits (TSM, X3D): their shared network.

Both official variants for Something-Something / Jester (TSM) and Kinetics-400 (X3D) work alike and
differ only in their encoders and heads (paper §5.2-5.3, App. H.1):

1. **glance** — T_G glance frames, sampled apart from the T0 focus candidates by the dataset, go
   through the glance encoder: feature maps (B, T_G, Dg, h, w) and per-frame features (B, T_G, Dg);
   a *live* per-frame head (trains the encoder) and a *prediction* part (glance side of f_C);
2. **policy** (float32, on detached features) — the temporal branch weights the T_G frames; the
   spatial branch reads all T_G maps at once (kernel (T_G, h, w)) and places **one box per video**;
   an auxiliary head classifies the glance maps cropped by that box (averaged over frames and space);
3. **frame selection** — T_L of the T0 candidates at the quantiles of the weights' CDF;
4. **focus** — the same box crops every selected frame; P x P patches through the focus encoder:
   a live per-frame head and the focus side of f_C. In training a second set of patches at random
   positions (native size) shares the encoder call;
5. **exits** — exit 0: the live glance head averaged over frames (the official early exit); exit 1:
   the prediction, glance part + focus part.

Subclasses provide the encoders and heads (:meth:`encode_glance`, :meth:`encode_focus`,
:meth:`glance_heads`, :meth:`focus_heads`); everything else is here, once.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Optional, Tuple

import torch
import torch.nn as nn

from . import frame_selection
from .inference import call_in_chunks
from .patches import PatchGeometry
from .uni_adafocus import normalise_uint8

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class RandomPatchPass:
    """The focus encoder's view of the random patches (training only)."""

    prediction: torch.Tensor  # (B, C) glance part + focus part of f_C
    focus_logits: torch.Tensor  # (B, T_L, C) live focus head per frame
    focus_actions: torch.Tensor  # (B, T_L, 4) the random box, repeated over the frames

    # What the objective's cross-entropies average over (see OnePatchOutput).
    @property
    def cat_logits(self) -> torch.Tensor:
        return self.prediction.unsqueeze(1)

    @property
    def focus_loss_logits(self) -> torch.Tensor:
        return self.focus_logits.mean(dim=1, keepdim=True)


@dataclass
class OnePatchOutput:
    """Everything one forward pass produces. ``random_pass`` is set in training only."""

    exit_logits: torch.Tensor  # (B, 2, C) exit 0: live glance head averaged; exit 1: the prediction
    glance_logits: torch.Tensor  # (B, T_G, C) live glance head per frame (trains the glance encoder)
    focus_logits: torch.Tensor  # (B, T_L, C) live focus head per frame (trains the focus encoder)
    glance_prediction: torch.Tensor  # (B, C) the glance part of the prediction
    focus_prediction: torch.Tensor  # (B, C) the focus part of the prediction
    spatial_logits: torch.Tensor  # (B, C) auxiliary head on the cropped, averaged glance maps
    frame_weights: torch.Tensor  # (B, T_G) temporal policy softmax
    selection_weights: torch.Tensor  # (B, T_G) softmax at the temperature, used for selection
    glance_indices: torch.Tensor  # (B, T_G) frames of the glance clip seen by the glance encoder
    focus_indices: torch.Tensor  # (B, T_L) candidate frames (of T0) seen by the focus encoder, increasing
    actions: torch.Tensor  # (B, 4) the spatial policy's one action per video
    focus_actions: torch.Tensor  # (B, T_L, 4) that action at every focus frame, detached
    patch_boxes: torch.Tensor  # (B, T_L, 4) focus patches as (x1, y1, x2, y2) in input pixels
    glance_features: torch.Tensor  # (B, T_G, Dg)
    focus_features: torch.Tensor  # (B, T_L, Df)
    random_pass: Optional[RandomPatchPass] = None

    @property
    def logits(self) -> torch.Tensor:
        """(B, C) the prediction: the last exit."""
        return self.exit_logits[:, -1]

    @property
    def stage_logits(self) -> torch.Tensor:
        """(B, 2, C) the early-exit stages: glance only, then glance and focus."""
        return self.exit_logits

    # What the objective's cross-entropies average over, (B, S, C) each: the prediction, and the
    # frame-averaged live heads (one CE per video, as officially). The Monte-Carlo temporal term reads
    # the live glance head's per-frame logits detached, so it trains the temporal policy alone.
    @property
    def cat_logits(self) -> torch.Tensor:
        return self.logits.unsqueeze(1)

    @property
    def glance_loss_logits(self) -> torch.Tensor:
        return self.glance_logits.mean(dim=1, keepdim=True)

    @property
    def focus_loss_logits(self) -> torch.Tensor:
        return self.focus_logits.mean(dim=1, keepdim=True)

    @property
    def temporal_frame_logits(self) -> torch.Tensor:
        return self.glance_logits.detach()

    @property
    def size_actions(self) -> torch.Tensor:
        """(B, 4): the one action per video that the patch-size regulariser reads."""
        return self.actions

    @property
    def validation_logits(self) -> torch.Tensor:
        """(B, 1, C): the official validation loss is the CE of the prediction."""
        return self.logits.unsqueeze(1)


class OnePatchNetwork(nn.Module, abc.ABC):
    """Base of the one-patch-per-video networks; see the module docstring for the data flow.

    forward(video, generator=None, glance=None): ``video`` the T0 focus candidates (B, T0, 3, H, W)
    (or the official flattened (B, T0*3, H, W)); ``glance`` the T_G glance frames (B, T_G, 3, H, W)
    (or flattened), sampled apart from the candidates; None takes T_G evenly spaced candidates. uint8
    frames are normalised here, floating-point frames are taken as normalised. Training draws
    (stratified selection offsets, random patches) come from ``generator`` or the global RNG.

    Subclasses set ``self.geometry``, ``self.policy`` (with ``.spatial`` and ``.temporal``) and
    ``self.spatial_head`` and implement the four encoder/head methods.
    """

    #: Two exits: the glance alone, then glance and focus.
    num_exit_stages = 2

    def __init__(self, num_classes: int, num_segments: int, num_glance_segments: int, num_focus_segments: int,
                 temperature: float = 1.0):
        super().__init__()
        if num_focus_segments > num_segments:
            raise ValueError(f"num_focus_segments ({num_focus_segments}) > num_segments ({num_segments})")
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.num_classes = num_classes
        self.num_segments, self.num_glance, self.num_focus = num_segments, num_glance_segments, num_focus_segments
        self.temperature = temperature
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN).view(3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD).view(3, 1, 1), persistent=False)

    geometry: PatchGeometry

    @property
    def patch_size(self) -> int:
        return self.geometry.patch_size

    @property
    def input_size(self) -> int:
        return self.geometry.input_size

    # ------------------------------------------------------------------------------------------
    # what a subclass provides
    # ------------------------------------------------------------------------------------------
    @abc.abstractmethod
    def encode_glance(self, frames: torch.Tensor, amp) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        """Normalised glance frames (B, T_G, 3, H, W) -> (maps (B, T_G, Dg, h, w), features (B, T_G, Dg),
        clip-level state for :meth:`glance_heads` or None)."""

    @abc.abstractmethod
    def glance_heads(self, features: torch.Tensor, state) -> Tuple[torch.Tensor, torch.Tensor]:
        """-> (live per-frame logits (B, T_G, C), the glance part of the prediction (B, C))."""

    @abc.abstractmethod
    def encode_focus(self, patches: torch.Tensor, amp) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Patches (n, T_L, 3, P, P) -> (features (n, T_L, Df), clip-level state or None)."""

    @abc.abstractmethod
    def focus_heads(self, features: torch.Tensor, state) -> Tuple[torch.Tensor, torch.Tensor]:
        """-> (live per-frame logits (n, T_L, C), the focus part of the prediction (n, C))."""

    # ------------------------------------------------------------------------------------------
    # inputs
    # ------------------------------------------------------------------------------------------
    def _frames(self, video: torch.Tensor, count: int, name: str) -> torch.Tensor:
        """(B, count, 3, H, W) view of ``video`` in either accepted layout, with checks."""
        if video.dim() == 4:
            b, tc, h, w = video.shape
            if tc % 3:
                raise ValueError(f"flattened {name} needs a multiple of 3 channels, got {tc}")
            video = video.view(b, tc // 3, 3, h, w)
        if video.dim() != 5 or video.shape[2] != 3:
            raise ValueError(f"{name} must be (B, T, 3, H, W) or (B, T*3, H, W), got {tuple(video.shape)}")
        if video.shape[1] != count:
            raise ValueError(f"{name} has {video.shape[1]} frames, the model expects {count}")
        if video.shape[-2:] != (self.input_size, self.input_size):
            raise ValueError(f"{name} frames are {tuple(video.shape[-2:])}, the model expects "
                             f"input_size={self.input_size}")
        return video

    def _inputs(self, video: torch.Tensor, glance: Optional[torch.Tensor]):
        """(candidates (B, T0, 3, H, W), glance frames (B, T_G, 3, H, W)) in either layout, checked;
        without glance frames, T_G evenly spaced candidates stand in for a separately sampled clip."""
        video = self._frames(video, self.num_segments, "video")
        if glance is None:
            b, t0 = video.shape[:2]
            rows = frame_selection.glance_frame_indices(t0, self.num_glance, b, device=video.device)
            glance = video[torch.arange(b, device=video.device).unsqueeze(1), rows]
        return video, self._frames(glance, self.num_glance, "glance")

    def normalise(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 frames (..., 3, H, W) -> normalised float32; floating frames pass through."""
        return normalise_uint8(frames, self.pixel_mean, self.pixel_std)

    #: In evaluation, run the focus encoder on at most this many images at a time, in whole clips (at
    #: least one clip per call; None: all at once). ``models.inference.prepare_for_inference`` sets it on
    #: CPUs. The glance encoder always sees the whole batch, so that the features steering the policy
    #: are computed exactly as without it.
    focus_chunk: Optional[int] = None

    def chunk_rows(self, images_per_row: int = 1, rows_per_clip: int = 1) -> Optional[int]:
        """Rows of a focus-encoder input per call under ``focus_chunk`` (None: one call): whole clips of
        ``rows_per_clip`` rows of ``images_per_row`` images each. Never chunked in training (BatchNorm
        statistics)."""
        if self.training or not self.focus_chunk:
            return None
        return max(1, self.focus_chunk // (images_per_row * rows_per_clip)) * rows_per_clip

    def run_encoder(self, encoder, x: torch.Tensor, amp, rows: Optional[int] = None):
        """Run an encoder on frames ``x`` (N*T, ...) under the caller's autocast setting ``amp = (enabled,
        dtype)``, in calls of at most ``rows`` rows (None: one call; see :meth:`chunk_rows`); float32
        results."""
        enabled, dtype = amp

        def run(part):
            with torch.autocast(part.device.type, dtype=dtype, enabled=enabled):
                out = encoder(part)
            if isinstance(out, torch.Tensor):
                return out.float()
            return tuple(o.float() for o in out)

        return call_in_chunks(run, x, rows)

    # ------------------------------------------------------------------------------------------
    # stages (shared by forward and the adaptive early-exit runtime)
    # ------------------------------------------------------------------------------------------
    def glance_stage(self, glance: torch.Tensor, amp):
        """Step 1: glance frames (B, T_G, 3, H, W) -> maps (B, T_G, Dg, h, w) detached, features
        (B, T_G, Dg), clip-level state."""
        fmap, feats, state = self.encode_glance(self.normalise(glance), amp)
        return fmap.detach(), feats, state

    def policy_stage(self, fmap: torch.Tensor, feats: torch.Tensor, num_candidates: int,
                     generator: Optional[torch.Generator] = None, auxiliary: bool = True):
        """Steps 2-3 on detached glance maps and features (any subset of the batch, n videos).

        Returns (frame weights (n, T_G), selection weights (n, T_G), actions (n, 4), auxiliary spatial
        logits (n, C) or None, focus indices (n, T_L) into the ``num_candidates`` = T0 candidates).
        """
        n, g = feats.shape[:2]
        scores = self.policy.temporal(feats.detach())  # (n, T_G)
        frame_weights = torch.softmax(scores, dim=1)
        selection_weights = torch.softmax(scores / self.temperature, dim=1)
        actions = self.policy.spatial(fmap)[:, 0]  # (n, 4): one action per video
        spatial_logits = None
        if auxiliary:  # the glance maps cropped by that box, averaged over frames and space
            crops = self.geometry.crop_features(fmap.flatten(1, 2), actions)  # (n, T_G*Dg, p, p)
            spatial_logits = self.spatial_head(crops.view(n, g, -1, *crops.shape[-2:]).mean(dim=(1, 3, 4)))
        focus_indices = frame_selection.select_focus_frames(selection_weights, num_candidates, self.num_focus,
                                                            random=self.training, generator=generator)
        return frame_weights, selection_weights, actions, spatial_logits, focus_indices

    def focus_stage(self, video: torch.Tensor, focus_indices: torch.Tensor, action_sets: torch.Tensor, amp,
                    rows: Optional[torch.Tensor] = None):
        """Step 4: the focus encoder on the patches of the videos ``rows`` (n,) (default all) of
        ``video`` (B, T0, 3, H, W): focus_indices (n, T_L); action_sets (S, n, 4), S boxes per video that
        share one encoder call. Returns (features (S, n, T_L, Df), clip-level state for S*n clips)."""
        if rows is None:
            rows = torch.arange(video.shape[0], device=video.device)
        n, num_focus = focus_indices.shape
        frames = self.normalise(video[rows.unsqueeze(1), focus_indices.to(video.device)]).flatten(0, 1)  # (n*T_L, ...)
        boxes = action_sets.detach().unsqueeze(2).expand(-1, n, num_focus, 4)  # (S, n, T_L, 4)
        patches = torch.cat([self.geometry.crop(frames, a.reshape(-1, 4)) for a in boxes])  # (S*n*T_L, 3, P, P)
        feats, state = self.encode_focus(patches.view(len(boxes) * n, num_focus, *patches.shape[1:]), amp)
        return feats.view(len(boxes), n, num_focus, -1), state

    # ------------------------------------------------------------------------------------------
    def forward(self, video: torch.Tensor, generator: Optional[torch.Generator] = None,
                glance: Optional[torch.Tensor] = None) -> OnePatchOutput:
        video, glance = self._inputs(video, glance)
        device_type = video.device.type
        amp = torch.is_autocast_enabled(device_type), torch.get_autocast_dtype(device_type)
        with torch.autocast(device_type, enabled=False):
            return self._forward(video, glance, amp, generator)

    def _forward(self, video, glance, amp, generator) -> OnePatchOutput:
        b, g, num_focus = glance.shape[0], self.num_glance, self.num_focus
        fmap, gfeat, gstate = self.glance_stage(glance, amp)  # (B, T_G, Dg, h, w), (B, T_G, Dg)
        glance_logits, glance_prediction = self.glance_heads(gfeat, gstate)  # (B, T_G, C), (B, C)
        frame_weights, selection_weights, actions, spatial_logits, focus_indices = self.policy_stage(
            fmap, gfeat, video.shape[1], generator)

        # the policy's boxes (+ random boxes of native size in training, in the same encoder call)
        sets = [actions.detach()]
        if self.training:
            gen_device = generator.device if generator is not None else video.device
            random_actions = torch.rand(b, 4, generator=generator, device=gen_device).to(video.device)
            random_actions[:, 2:] = self.geometry.native_scale
            sets.append(random_actions)
        ffeat, fstate = self.focus_stage(video, focus_indices, torch.stack(sets), amp)  # (S, B, T_L, Df)
        focus_logits, focus_prediction = self.focus_heads(ffeat.flatten(0, 1), fstate)  # (S*B, T_L, C), (S*B, C)
        focus_logits = focus_logits.view(len(sets), b, num_focus, -1)
        focus_prediction = focus_prediction.view(len(sets), b, -1)
        predictions = glance_prediction + focus_prediction  # (S, B, C)

        focus_actions = sets[0].unsqueeze(1).expand(b, num_focus, 4)  # (B, T_L, 4)
        random_pass = None
        if self.training:
            random_pass = RandomPatchPass(predictions[1], focus_logits[1],
                                          sets[1].unsqueeze(1).expand(b, num_focus, 4))
        return OnePatchOutput(
            exit_logits=torch.stack((glance_logits.mean(dim=1), predictions[0]), dim=1),
            glance_logits=glance_logits, focus_logits=focus_logits[0],
            glance_prediction=glance_prediction, focus_prediction=focus_prediction[0],
            spatial_logits=spatial_logits, frame_weights=frame_weights, selection_weights=selection_weights,
            glance_indices=torch.arange(g, device=video.device).expand(b, g), focus_indices=focus_indices,
            actions=actions, focus_actions=focus_actions, patch_boxes=self.geometry.boxes(focus_actions),
            glance_features=gfeat, focus_features=ffeat[0], random_pass=random_pass)

    def early_exit_steps(self, video: torch.Tensor, amp, glance: Optional[torch.Tensor] = None, lap=None):
        """The two exits one at a time, for the adaptive runtime (a generator; evaluation only).

        Yields exit 0's logits (B, C) (the live glance head, averaged); sent the positions (m,) of the
        videos that continue, yields the prediction (m, C) for those only: the policy and the focus
        encoder never see a video that left at the glance. ``lap(name)`` marks the end of the policy.
        """
        video, glance = self._inputs(video, glance)
        fmap, gfeat, gstate = self.glance_stage(glance, amp)
        glance_logits, glance_prediction = self.glance_heads(gfeat, gstate)
        keep = yield glance_logits.mean(dim=1)
        fmap, gfeat, glance_prediction = fmap[keep], gfeat[keep], glance_prediction[keep]
        *_, actions, _, focus_indices = self.policy_stage(fmap, gfeat, video.shape[1], auxiliary=False)
        if lap is not None:
            lap("policy")
        ffeat, fstate = self.focus_stage(video, focus_indices, actions.unsqueeze(0), amp, rows=keep)
        yield glance_prediction + self.focus_heads(ffeat[0], fstate)[1]
