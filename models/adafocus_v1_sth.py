"""AdaFocus V1 (ICCV 2021), the form released for Something-Something V1/V2: the evaluation forward.

The same glance-then-focus idea as the ActivityNet form (:mod:`models.adafocus_v1`), built on
temporal-shift (TSM) encoders, with one patch box per video and TSN average consensus
(docs/adafocus-v1.md, "Something-Something form"). A video comes as two separately sampled frame
sets: G glance frames and L focus frames (officially G = 8, L = 12).

1. **glance** — each glance frame, resized to ``glance_size`` (nearest neighbour; the identity at the
   input size), goes through MobileNetV2 with a temporal shift over the G frames of its video: feature
   maps (B*G, 1280, s, s), s = ceil(glance_size / 32), and class logits of their spatial means through
   ``glance_head`` (B, G, C). The glance's "global feature" is these logits.
2. **policy** — the G maps of a video stacked on the channels, (B, G*1280, s, s) with channel
   g*1280 + c, are the state of one actor-critic step from a zero GRU state
   (:mod:`models.adafocus_v1_policy`): the Gaussian policy's mean, (vertical, horizontal) in (0, 1)
   (``ppo_continuous``, the official commands' setting), or the grid policy's most probable of A = n x n
   positions (a // n, a % n) / (n - 1). **One position per video.** Evaluation draws no random number
   (the official one draws a Gaussian sample and discards it, see :meth:`AdaFocusV1TSM.official_baseline_positions`).
3. **patch** — the top-left corner is ``floor(position * (input_size - P))`` in float32 and the same
   exact P x P slice is cut from all L focus frames (:func:`models.adafocus_v1.crop_integer_patches`):
   (B*L, 3, P, P), video-major.
4. **focus** — ResNet-50 with a temporal shift over the L patches of a video: pooled features
   (B, L, 2048), dropout (identity in evaluation), the linear ``classifier``: (B, L, C).
5. **consensus** — prediction = mean over the G glance logits + mean over the L focus logits (B, C).
   It is the only exit.

The official evaluation also classifies a uniformly random box per video (the baseline of its reported
reward, softmax(prediction)[y] - softmax(baseline)[y]); ``forward(..., baseline_positions=...)`` runs that
pass too. It is not part of the model's cost.

The official training runs in three stages (``main.py --variant adafocus_v1_tsm --stage 1..3``, assembled
from this model's parts in ``ops/staged_training.py``); the stage-2 episode, one PPO step per video with the
reward of the prediction over a random box, is :meth:`AdaFocusV1TSM.stage2_rollout`.

The official stage 1 starts from the encoders the TSM repository pre-trained on Something-Something
(``mobilenetv2_segment8.pth.tar``, ``resnet50_segment12.pth.tar``); ``glance_weights`` / ``focus_weights``
read those files (:func:`read_encoder_file`, :meth:`AdaFocusV1TSM.load_tsm_repository`) as well as ImageNet ones.

This module also registers the variant ``adafocus_v1_tsm``: hyper-parameters, the FLOPs of its one step
counted from the module (:func:`adafocus_v1_tsm_flops`) and the official checkpoint layout
(``glancer.net``, ``focuser.net.base_model.N``, ``classifier``, ``policy``; :data:`OFFICIAL_KEYS`). Only one
policy step per video is built (the official ``video_div`` = 1 of every command).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterable, List, NamedTuple, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .adafocus_v1 import action_grid, crop_integer_patches, patch_corners
from .adafocus_v1_policy import (DEFAULT_ACTION_STD, STH_CONV_CHANNELS, GaussianPatchPolicy, GridPatchPolicy,
                                 SampledActions)
from .backbones import (BackboneWeightsError, glance_feature_size, mbv2_flat_to_torchvision,
                        mbv2_torchvision_to_flat, read_state_dict)
from .outputs import ClipPredictionLogits, detach_output
from .ppo import PPO, RolloutMemory
from .tsm import OFFICIAL_KEYS as TSN_OFFICIAL_KEYS, shifted_encoders
from .uni_adafocus import IMAGENET_MEAN, IMAGENET_STD, normalise_uint8, video_frames
from .variants import CheckpointLayout, PrefixMap, Variant, register_variant
from .weights import fit_problems


# --------------------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------------------
@dataclass
class BaselinePass:
    """The official evaluation's reward baseline: the focus side on one uniformly random box per video."""

    prediction: torch.Tensor  # (B, C) glance logits' mean + focus logits' mean on the random box
    focus_logits: torch.Tensor  # (B, L, C)
    positions: torch.Tensor  # (B, 2) the random (vertical, horizontal) in [0, 1)
    corners: torch.Tensor  # (B, 2) int64 top-left (y, x) in input pixels


class TSMStage2Rollout(NamedTuple):
    """What :meth:`AdaFocusV1TSM.stage2_rollout` computed for B videos (one policy step each)."""

    sampled: SampledActions  # the acting copy's draw: raw (B, 2), actions, logprobs (B,), actor_output
    positions: torch.Tensor  # (B, 2) the sampled box positions (vertical, horizontal) in [0, 1]
    corners: torch.Tensor  # (B, 2) int64 (y, x) of the policy's box
    prediction: torch.Tensor  # (B, C) mean glance logits + mean focus logits on the policy's box
    baseline_corners: torch.Tensor  # (B, 2) int64 (y, x) of the random box
    baseline_prediction: torch.Tensor  # (B, C) the same on the random box
    confidence: torch.Tensor  # (B,) softmax(prediction)[label]
    baseline_confidence: torch.Tensor  # (B,) softmax(baseline_prediction)[label]
    rewards: torch.Tensor  # (B,) confidence - baseline_confidence: what went into the memory


@dataclass
class AdaFocusV1TSMOutput(ClipPredictionLogits):
    """Everything the evaluation forward produces. ``baseline`` is the random-box pass (None unless asked)."""

    prediction: torch.Tensor  # (B, C) mean glance logits + mean focus logits
    glance_logits: torch.Tensor  # (B, G, C) per glance frame
    focus_logits: torch.Tensor  # (B, L, C) per focus frame (the policy's box)
    actions: torch.Tensor  # (B, 2) the box's position (vertical, horizontal) in [0, 1]
    corners: torch.Tensor  # (B, 2) int64 top-left (y, x) of the box in input pixels
    focus_features: torch.Tensor  # (B, L, Df) pooled focus features (before the dropout)
    action_indices: Optional[torch.Tensor] = None  # (B,) int64 grid positions (grid policy only)
    action_probs: Optional[torch.Tensor] = None  # (B, A) the grid policy's softmax (grid policy only)
    baseline: Optional[BaselinePass] = None
    patch_size: int = 0

    @property
    def glance_prediction(self) -> torch.Tensor:
        """(B, C) the glance logits' frame average."""
        return self.glance_logits.mean(dim=1)

    @property
    def focus_prediction(self) -> torch.Tensor:
        """(B, C) the focus logits' frame average."""
        return self.focus_logits.mean(dim=1)

    @property
    def patch_boxes(self) -> torch.Tensor:
        """(B, L, 4) the box at every focus frame as (x1, y1, x2, y2) in input pixels (pixel i covers [i, i+1))."""
        y1, x1 = self.corners[:, 0].float(), self.corners[:, 1].float()
        box = torch.stack((x1, y1, x1 + self.patch_size, y1 + self.patch_size), dim=-1)  # (B, 4)
        return box.unsqueeze(1).expand(-1, self.focus_logits.shape[1], -1)

    def rewards(self, labels: torch.Tensor) -> torch.Tensor:
        """(B,) the official evaluation's reward softmax(prediction)[y] - softmax(baseline)[y] for labels (B,)."""
        if self.baseline is None:
            raise ValueError("rewards need the baseline pass: call the model with baseline_positions")
        rows = torch.arange(labels.shape[0], device=labels.device)
        return (self.prediction.softmax(dim=1)[rows, labels]
                - self.baseline.prediction.softmax(dim=1)[rows, labels])

    def detach(self) -> "AdaFocusV1TSMOutput":
        return detach_output(self)


# --------------------------------------------------------------------------------------------------
# The network
# --------------------------------------------------------------------------------------------------
#: The grid sizes the official Something-Something tree accepts for its grid policy (4 x 4 ... 10 x 10).
STH_ACTION_DIMS = (16, 25, 36, 49, 64, 81, 100)


class AdaFocusV1TSM(nn.Module):
    """The AdaFocus V1 network (Something-Something form), evaluation only. The V1-specific keyword names
    match the official configuration keys (``ppo_continuous``, ``action_dim``, ``action_std``,
    ``actorcritic_with_bn``, ``hidden_state_dim``); the frame counts are the family's flags.

    forward(video, glance=None, baseline_positions=None): ``video`` the L focus frames (B, L, 3, H, W) or the
    official flattened layout (B, 3L, H, W), H = W = ``input_size``; ``glance`` the G glance frames in either
    layout (None: G evenly spaced focus frames, ``i * L // G``, stand in); uint8 frames are normalised here
    (ImageNet mean/std), floating frames are taken as normalised. ``baseline_positions`` (B, 2) in [0, 1]:
    also run the official evaluation's baseline pass on those boxes. Returns :class:`AdaFocusV1TSMOutput`.
    The forward needs evaluation mode; the training stages use the parts (:meth:`stage2_rollout` for stage 2).

    ``num_segments`` (= ``num_focus_segments``): L; ``num_glance_segments``: G. ``ppo_continuous``: the
    Gaussian policy (True, the official commands') or the grid policy over ``action_dim`` positions.
    ``action_std``: the Gaussian's standard deviation (only sampling uses it; evaluation takes the mean).
    ``actorcritic_with_bn``: BatchNorm in the Gaussian policy's encoder (the grid policy of this form always
    has it). ``dropout``: on the focus features before the classifier. ``shift_div``: 1 / the fraction of
    channels shifted each way. ``glance_weights`` / ``focus_weights``: a file of ImageNet weights of the plain
    encoder (torchvision's layout; MobileNetV2 also in its flat one), or the TSM repository's file of the shifted
    encoder (the official stage 1's ``pretrained_glancer`` / ``pretrained_focuser``), told apart by its keys; a
    TSM glance file also gives ``glance_head`` (:meth:`load_tsm_repository`). ``pretrained``: ImageNet weights
    for an encoder given no file.
    """

    variant = "adafocus_v1_tsm"

    def __init__(self, num_classes: int, num_segments: int = 12, num_glance_segments: int = 8,
                 num_focus_segments: Optional[int] = None, patch_size: int = 144, input_size: int = 224,
                 glance_size: int = 224, ppo_continuous: bool = True, action_dim: int = 25,
                 action_std: float = DEFAULT_ACTION_STD, actorcritic_with_bn: bool = True, hidden_state_dim: int = 1024,
                 dropout: float = 0.5, shift_div: int = 8, pretrained: bool = False,
                 glance_weights: Optional[str] = None, focus_weights: Optional[str] = None):
        super().__init__()
        if num_focus_segments is not None and num_focus_segments != num_segments:
            raise ValueError(f"num_focus_segments ({num_focus_segments}) must equal num_segments ({num_segments}): "
                             "every frame of the focus clip is a focus frame")
        if num_segments < 1 or num_glance_segments < 1:
            raise ValueError(f"num_segments and num_glance_segments must be at least 1, got {num_segments} and "
                             f"{num_glance_segments}")
        if not 0 < patch_size <= input_size:
            raise ValueError(f"patch_size must be in 1..input_size ({input_size}), got {patch_size}")
        if glance_size < 1:
            raise ValueError(f"glance_size must be positive, got {glance_size}")
        table = None if ppo_continuous else action_grid(action_dim, STH_ACTION_DIMS)  # checks action_dim first
        self.num_classes, self.num_glance, self.num_focus = num_classes, num_glance_segments, num_segments
        self.num_segments = num_segments
        self.patch_size, self.input_size, self.glance_size = patch_size, input_size, glance_size
        self.ppo_continuous = ppo_continuous
        self.feature_size = glance_feature_size(glance_size)
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN).view(3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD).view(3, 1, 1), persistent=False)

        # a TSM repository file loads into the shifted encoder once the model is built; an ImageNet one before the shift
        tsm_files = {}
        for side, path in (("glance", glance_weights), ("focus", focus_weights)):
            state = read_encoder_file(path, side) if path else None
            if state is not None:
                tsm_files[side] = (path, state)
        self.glance, self.focus = shifted_encoders(
            num_glance_segments, num_segments, shift_div, "mbv2", "resnet50",
            (pretrained and "glance" not in tsm_files, pretrained and "focus" not in tsm_files),
            None if "glance" in tsm_files else glance_weights, None if "focus" in tsm_files else focus_weights)
        gdim, fdim = self.glance.feature_dim, self.focus.feature_dim
        self.glance_head = nn.Linear(gdim, num_classes)  # official glancer.net.classifier
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(fdim, num_classes)
        self.policy = nn.Module()  # the family's policy container; this form has only a spatial policy
        state_channels = gdim * num_glance_segments
        if ppo_continuous:
            self.policy.spatial = GaussianPatchPolicy(state_channels, self.feature_size, hidden_state_dim, action_std,
                                                      with_bn=actorcritic_with_bn)
        else:
            self.policy.spatial = GridPatchPolicy(state_channels, self.feature_size, hidden_state_dim, action_dim,
                                                  conv_channels=STH_CONV_CHANNELS, with_bn=True)
        # (A, 2) the grid positions (vertical, horizontal) of the grid policy; None for the Gaussian one
        self.register_buffer("action_table", table, persistent=False)
        for side, (path, state) in tsm_files.items():
            self.load_tsm_repository(state, side, f"{ENCODER_FILES[side][0]} {path}")

    def load_tsm_repository(self, state: Dict[str, torch.Tensor], side: str, source: str) -> None:
        """Load a TSM repository file's state dict (keys without ``module.``) as the official stage 1 does:
        side ``glance``: ``base_model.*`` into the glance encoder and ``new_fc.*`` into ``glance_head`` (officially
        strict); side ``focus``: ``base_model.*`` into the focus encoder (officially strict=False, which leaves out
        ``new_fc.*``: the README's ``load_pretrained_focuser_fc=False``, and the ResNet's own ``fc``). Here every
        tensor of those modules must come from the file (BatchNorm's ``num_batches_tracked`` counters may be
        absent) and every other key of the file is refused, in one line naming ``source`` and each missing,
        unexpected and mis-shaped key by its name in the file."""
        to_ours, to_file = TSM_FILE_KEYS[side]
        own = {to_file(k): v for k, v in self.state_dict().items() if k.startswith(TSM_FILE_MODULES[side])}
        own = {k: v for k, v in own.items() if k in state or not k.endswith(".num_batches_tracked")}
        given = {k: v for k, v in state.items() if not k.startswith(TSM_FILE_UNREAD[side])}
        problems = fit_problems(own, given, kind="file")
        if problems:
            raise BackboneWeightsError(f"{source}: a TSM repository {ENCODER_FILES[side][1]} file that does not fit "
                                       f"the model's {' and '.join(m.rstrip('.') for m in TSM_FILE_MODULES[side])}: "
                                       + "; ".join(line.strip() for line in problems))
        self.load_state_dict({to_ours(k): v for k, v in given.items()}, strict=False)

    # ------------------------------------------------------------------------------------------
    # inputs
    # ------------------------------------------------------------------------------------------
    def frames(self, video: torch.Tensor, count: int, name: str) -> torch.Tensor:
        """(B, count, 3, H, W) normalised, from ``video`` in either layout, checked."""
        return normalise_uint8(video_frames(video, count, self.input_size, name), self.pixel_mean, self.pixel_std)

    def inputs(self, video: torch.Tensor, glance: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        """(focus frames (B, L, 3, H, W), glance frames (B, G, 3, H, W)), normalised."""
        video = self.frames(video, self.num_focus, "video")
        if glance is None:
            rows = torch.arange(self.num_glance, device=video.device) * self.num_focus // self.num_glance
            return video, video.index_select(1, rows)
        return video, self.frames(glance, self.num_glance, "glance")

    def glance_input(self, frames: torch.Tensor) -> torch.Tensor:
        """Normalised frames (N, 3, H, W) -> (N, 3, g, g), g = glance_size: nearest-neighbour resize."""
        if frames.shape[-2:] == (self.glance_size, self.glance_size):
            return frames
        return F.interpolate(frames, size=(self.glance_size, self.glance_size), mode="nearest")

    # ------------------------------------------------------------------------------------------
    # stages
    # ------------------------------------------------------------------------------------------
    def glance_pass(self, glance: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Normalised glance frames (B, G, 3, H, W) -> (maps (B, G, Dg, s, s), logits (B, G, C))."""
        b, g = glance.shape[:2]
        fmap, pooled = self.glance(self.glance_input(glance.flatten(0, 1)))  # (B*G, Dg, s, s), (B*G, Dg)
        return fmap.view(b, g, *fmap.shape[1:]), self.glance_head(pooled).view(b, g, -1)

    def decide(self, maps: torch.Tensor):
        """Glance maps (B, G, Dg, s, s) -> (positions (B, 2) in [0, 1], grid indices (B,) or None, grid
        probabilities (B, A) or None): one policy step on the maps stacked along the channels."""
        steps = self.policy.spatial(maps.detach().flatten(1, 2).unsqueeze(1))  # one step: (B, 1, ...)
        if self.ppo_continuous:
            return steps.actions[:, 0], None, None
        indices = steps.actions[:, 0]
        return self.action_table[indices], indices, steps.probs[:, 0]

    def corners_of(self, positions: torch.Tensor) -> torch.Tensor:
        """Positions (..., 2) in [0, 1] -> top-left corners (..., 2) int64 (y, x) in input pixels."""
        return patch_corners(positions, self.input_size, self.patch_size)

    def focus_pass(self, video: torch.Tensor, corners: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Normalised focus frames (B, L, 3, H, W), one corner per video (B, 2) -> (pooled features
        (B, L, Df), logits (B, L, C)): the same box on every frame."""
        b, num_focus = video.shape[:2]
        patches = crop_integer_patches(video.flatten(1, 2), corners, self.patch_size)  # (B, 3L, P, P)
        features = self.focus(patches.reshape(b * num_focus, 3, self.patch_size, self.patch_size))
        features = features.view(b, num_focus, -1)
        return features, self.classifier(self.dropout(features))

    def official_baseline_positions(self, batch: int, generator: Optional[torch.Generator] = None,
                                    device=None) -> torch.Tensor:
        """The random boxes (B, 2) of the official evaluation's baseline, drawn as it draws them: with the
        Gaussian policy, first the discarded evaluation sample's noise (B, 2) (one ``normal_``), then
        ``torch.rand(B, 2)``; both from ``generator`` (None: the global generator). On a CPU this replays the
        official numbers after the same seed (on a GPU the official discarded sample comes from the CUDA
        generator instead)."""
        device = generator.device if generator is not None else device
        if self.ppo_continuous:
            torch.empty(batch, 2, device=device).normal_(generator=generator)
        return torch.rand(batch, 2, generator=generator, device=device)

    def positions_of(self, actions: torch.Tensor) -> torch.Tensor:
        """The policy's actions -> box positions (B, 2) in [0, 1]: the Gaussian's are positions already, the
        grid policy's indices (B,) are looked up in the grid."""
        return actions if self.ppo_continuous else self.action_table[actions]

    def stage2_rollout(self, video: torch.Tensor, glance: Optional[torch.Tensor], labels: torch.Tensor, ppo: PPO,
                       memory: RolloutMemory, generator: Optional[torch.Generator] = None) -> TSMStage2Rollout:
        """One official stage-2 episode of this form (``video_div`` = 1: one step per video): the acting copy
        ``ppo.policy_old`` samples one box per video from the stacked glance maps (``ppo.act``, which stores
        the maps, the action and its log-probability in ``memory``); a random box comes from
        ``torch.rand(B, 2)`` after the act's draw (both from ``generator``, a generator on the model's device,
        or the global one when None); the reward, stored in ``memory`` too, is the prediction's confidence in
        the label minus the random box's (both predictions: mean glance logits + mean focus logits). Then
        ``ppo.update(memory)`` and ``memory.clear()`` finish the iteration. Everything runs without
        gradients; the caller sets the modes, as the official stage 2 does: the model in evaluation mode,
        both policy copies in training mode (the acting copy's BatchNorm normalises with the B videos'
        statistics and moves its running statistics).

        video (B, L, 3, H, W) or (B, 3L, H, W), glance as in :meth:`forward`; labels (B,) int64."""
        video, glance = self.inputs(video, glance)
        b = video.shape[0]
        if labels.shape != (b,):
            raise ValueError(f"labels must be (B,) with B = {b}, got {tuple(labels.shape)}")
        with torch.no_grad():
            maps, glance_logits = self.glance_pass(glance)
            glance_prediction = glance_logits.mean(dim=1)
            sampled = ppo.act(maps.flatten(1, 2), memory, restart=True, generator=generator)
            positions = self.positions_of(sampled.actions)
            corners = self.corners_of(positions)
            prediction = glance_prediction + self.focus_pass(video, corners)[1].mean(dim=1)
            device = generator.device if generator is not None else video.device
            baseline_corners = self.corners_of(torch.rand(b, 2, generator=generator, device=device).to(video.device))
            baseline = glance_prediction + self.focus_pass(video, baseline_corners)[1].mean(dim=1)
            rows = torch.arange(b, device=labels.device)
            confidence = prediction.softmax(dim=-1)[rows, labels]
            baseline_confidence = baseline.softmax(dim=-1)[rows, labels]
            rewards = confidence - baseline_confidence
        memory.add_reward(rewards)
        return TSMStage2Rollout(sampled, positions, corners, prediction, baseline_corners, baseline, confidence,
                                baseline_confidence, rewards)

    @property
    def num_exit_stages(self) -> int:
        """One exit: the prediction."""
        return 1

    def forward(self, video: torch.Tensor, glance: Optional[torch.Tensor] = None,
                baseline_positions: Optional[torch.Tensor] = None) -> AdaFocusV1TSMOutput:
        if self.training:
            raise RuntimeError("adafocus_v1_tsm's forward runs in evaluation mode only (model.eval()); its training "
                               "runs in stages from the model's parts (ops/staged_training.py)")
        video, glance = self.inputs(video, glance)
        maps, glance_logits = self.glance_pass(glance)
        glance_prediction = glance_logits.mean(dim=1)
        positions, indices, probs = self.decide(maps)
        corners = self.corners_of(positions)
        focus_features, focus_logits = self.focus_pass(video, corners)
        baseline = None
        if baseline_positions is not None:
            if baseline_positions.shape != positions.shape:
                raise ValueError(f"baseline_positions must be (B, 2) = {tuple(positions.shape)}, got "
                                 f"{tuple(baseline_positions.shape)}")
            baseline_positions = baseline_positions.to(positions.device)
            baseline_corners = self.corners_of(baseline_positions)
            baseline_logits = self.focus_pass(video, baseline_corners)[1]
            baseline = BaselinePass(glance_prediction + baseline_logits.mean(dim=1), baseline_logits,
                                    baseline_positions, baseline_corners)
        return AdaFocusV1TSMOutput(glance_prediction + focus_logits.mean(dim=1), glance_logits, focus_logits,
                                   positions, corners, focus_features, indices, probs, baseline, self.patch_size)


# --------------------------------------------------------------------------------------------------
# Encoder weight files: ImageNet's and the TSM repository's
# --------------------------------------------------------------------------------------------------
#: The TSM repository's files (a ``state_dict`` entry; keys ``module.`` + these, ``module.`` removed on reading):
#: a TSN wrapping the backbone, whose own last layer is replaced, and its new classifier.
TSM_BACKBONE, TSM_HEAD = "base_model.", "new_fc."
#: Per side: its flag, the architecture, and a key prefix of only that architecture's weights (TSN prefix removed).
ENCODER_FILES = {"glance": ("--glance_weights", "MobileNetV2", "features."),
                 "focus": ("--focus_weights", "ResNet-50", "layer1.")}
#: Per side: the modules a TSM repository file loads, and the keys of the file the official stage 1 does not read
#: (the focus file's classifier: ``load_pretrained_focuser_fc=False``; the ResNet's own ``fc``).
TSM_FILE_MODULES = {"glance": ("glance.", "glance_head."), "focus": ("focus.",)}
TSM_FILE_UNREAD = {"glance": (), "focus": (TSM_HEAD, TSM_BACKBONE + "fc.")}


def _glance_key(key: str) -> str:
    """A TSM MobileNetV2 file's key -> ours: the official stage 1 loads ``base_model.X`` as ``X`` and ``new_fc.X`` as
    ``classifier.X`` into ``glancer.net``, whose names :data:`OFFICIAL_KEYS` converts."""
    if key.startswith(TSM_HEAD):
        return OFFICIAL_KEYS.to_ours("glancer.net.classifier." + key[len(TSM_HEAD):])
    if key.startswith(TSM_BACKBONE):
        return OFFICIAL_KEYS.to_ours("glancer.net." + key[len(TSM_BACKBONE):])
    raise KeyError(key)


def _glance_file_key(key: str) -> str:
    """Inverse of :func:`_glance_key`."""
    official = OFFICIAL_KEYS.to_official(key)
    if official.startswith("glancer.net.classifier."):
        return TSM_HEAD + official[len("glancer.net.classifier."):]
    return TSM_BACKBONE + official[len("glancer.net."):]


def _focus_key(key: str) -> str:
    """A TSM ResNet-50 file's key -> ours: ``base_model.X`` is the TSN backbone that the Uni-AdaFocus-TSM
    checkpoints hold as ``local_CNN.base_model.X`` (the ResNet's named layers, shifted ``conv1.net``)."""
    if key.startswith(TSM_BACKBONE):
        return TSN_OFFICIAL_KEYS.to_ours("local_CNN." + key)
    raise KeyError(key)


def _focus_file_key(key: str) -> str:
    """Inverse of :func:`_focus_key`."""
    return TSN_OFFICIAL_KEYS.to_official(key)[len("local_CNN."):]


#: Per side: (file key -> ours, ours -> file key) of the TSM repository's files.
TSM_FILE_KEYS = {"glance": (_glance_key, _glance_file_key), "focus": (_focus_key, _focus_file_key)}


def weights_side(state: Dict[str, torch.Tensor]) -> Optional[str]:
    """Which encoder's architecture a weight file's state dict (keys without ``module.``) holds, by its keys:
    ``glance`` (MobileNetV2), ``focus`` (ResNet), or None when it tells neither (the loader then names the keys)."""
    keys = [k[len(TSM_BACKBONE):] if k.startswith(TSM_BACKBONE) else k for k in state]
    sides = [side for side, (_, _, marker) in ENCODER_FILES.items() if any(k.startswith(marker) for k in keys)]
    return sides[0] if len(sides) == 1 else None


def read_encoder_file(path: str, side: str) -> Optional[Dict[str, torch.Tensor]]:
    """The state dict (keys without ``module.``) of the weight file ``path`` given for the ``side`` encoder when it
    is a TSM repository file (keys ``base_model.*``, loaded by :meth:`AdaFocusV1TSM.load_tsm_repository`), None
    for an ImageNet file (loaded by the encoder itself). A file of the other encoder's architecture, or one that
    cannot be read, is refused in one line (:class:`BackboneWeightsError`)."""
    flag, arch, _ = ENCODER_FILES[side]
    try:
        state = read_state_dict(path)
    except BackboneWeightsError as exc:
        raise BackboneWeightsError(f"{flag}: {exc}") from None
    tsm = any(k.startswith(TSM_BACKBONE) for k in state)
    found = weights_side(state)
    if found is not None and found != side:
        other_flag, other_arch, marker = ENCODER_FILES[found]
        raise BackboneWeightsError(f"{flag} {path}: {'a TSM repository' if tsm else 'an ImageNet'} {other_arch} "
                                   f"file (keys {TSM_BACKBONE if tsm else ''}{marker}*), but the {side} encoder is "
                                   f"{arch}: it is the {found} encoder's file ({other_flag})")
    return state if tsm else None


# --------------------------------------------------------------------------------------------------
# FLOPs of the one step, counted from the module
# --------------------------------------------------------------------------------------------------
@dataclass
class AdaFocusV1TSMFlops:
    """GMACs (the papers' GFLOPs) of each component, counted on dummy inputs of the configured size. The
    crop is an exact slice (no arithmetic); the official evaluation's baseline pass is not the model's cost."""

    glance_frame: float  # the resize and the shifted MobileNetV2 on one glance frame (x G)
    glance_head: float  # the glance classifier on one frame (x G)
    policy: float  # one actor-critic step on the stacked maps, once per video
    focus_patch: float  # the shifted ResNet-50 on one patch (x L)
    focus_head: float  # the classifier on one patch's features (x L)
    num_glance: int
    num_focus: int

    def stages(self) -> List[float]:
        """[the one exit]: everything the evaluation forward runs for a video."""
        return [self.num_glance * (self.glance_frame + self.glance_head) + self.policy
                + self.num_focus * (self.focus_patch + self.focus_head)]


def adafocus_v1_tsm_flops(model: AdaFocusV1TSM) -> AdaFocusV1TSMFlops:
    """Count every component of ``model`` (an :class:`AdaFocusV1TSM`)."""
    from .flops import count_gmacs, counting  # models.flops imports the main network, not this one

    with counting(model) as zeros:
        g, num_focus, size, p, fs = model.num_glance, model.num_focus, model.input_size, model.patch_size, model.feature_size
        gdim, fdim = model.glance.feature_dim, model.focus.feature_dim
        return AdaFocusV1TSMFlops(
            glance_frame=count_gmacs(lambda x: model.glance(model.glance_input(x)), zeros(g, 3, size, size)) / g,
            glance_head=count_gmacs(model.glance_head, zeros(1, gdim)),
            policy=count_gmacs(model.policy.spatial, zeros(1, 1, g * gdim, fs, fs)),
            focus_patch=count_gmacs(model.focus, zeros(num_focus, 3, p, p)) / num_focus,
            focus_head=count_gmacs(model.classifier, zeros(1, fdim)),
            num_glance=g, num_focus=num_focus)


# --------------------------------------------------------------------------------------------------
# The official checkpoint layout (655 keys for Sth-Sth, G = 8; C, G, the policy and glance_size change shapes)
# --------------------------------------------------------------------------------------------------
#: (official prefix, our prefix), most specific first. The official ResNet-50 is the children of a torchvision
#: ResNet-50 without its classifier, numbered (0 conv1, 1 bn1, 2 relu, 3 maxpool, 4-7 layer1-4); MobileNetV2's
#: inner names are converted from the official flat layout. The actor-critic is the checkpoint's ``policy``
#: entry, under ``policy.`` in the official manifest.
OFFICIAL_KEYS = PrefixMap(
    pairs=(
        ("glancer.net.classifier.", "glance_head."),
        ("glancer.net.", "glance."),
        ("focuser.net.base_model.0.", "focus.conv1."),
        ("focuser.net.base_model.1.", "focus.bn1."),
        ("focuser.net.base_model.4.", "focus.layer1."),
        ("focuser.net.base_model.5.", "focus.layer2."),
        ("focuser.net.base_model.6.", "focus.layer3."),
        ("focuser.net.base_model.7.", "focus.layer4."),
        ("classifier.", "classifier."),
        ("policy.", "policy.spatial."),
    ),
    # The numbered TSN ResNet-50 inside a focuser is this tree's alone.
    detect_prefixes=("focuser.net.base_model.",),
    order=("glancer.net.", "glancer.net.classifier.", "focuser.net.", "classifier.", "policy."),
    inner={"glancer.net.": (mbv2_flat_to_torchvision, mbv2_torchvision_to_flat)},
)


def detect_official(keys: Iterable[str]) -> bool:
    """Whether state-dict keys (without wrapper prefixes) are an official AdaFocus V1 Something-Something state
    dict (``model_state_dict``, with or without the ``policy`` entry under ``policy.``)."""
    return OFFICIAL_KEYS.detect(keys)


def convert_official(state: Dict[str, torch.Tensor]) -> Tuple[Dict[str, torch.Tensor], List[str], List[str]]:
    """Official state dict -> (our state dict, dropped keys (none), unknown keys)."""
    return OFFICIAL_KEYS.convert(state)


def official_manifest(model: AdaFocusV1TSM) -> List[Tuple[str, List[int], str]]:
    """The official state-dict manifest ``[key, shape, dtype]`` of a configuration, in official order (the
    model's state dict, then the actor-critic under ``policy.``)."""
    return OFFICIAL_KEYS.manifest(model)


ADAFOCUS_V1_TSM = register_variant(Variant(
    name="adafocus_v1_tsm",
    summary="AdaFocus V1 (Something-Something V1/V2 form): temporal-shift MobileNetV2 glance on G frames, an "
            "actor-critic placing one P x P box per video from the stacked glance maps, temporal-shift ResNet-50 "
            "focus on L frames, TSN average consensus of glance and focus logits",
    build=AdaFocusV1TSM,
    hyper_parameters=("num_segments", "num_glance_segments", "num_focus_segments", "patch_size", "input_size",
                      "glance_size", "ppo_continuous", "action_dim", "action_std", "actorcritic_with_bn",
                      "hidden_state_dim", "dropout", "shift_div", "pretrained", "glance_weights", "focus_weights"),
    encoders={"glance": ("mbv2",), "focus": ("resnet50",)},
    policy="spatial: one step of a GRU actor-critic on the stacked maps of all G glance frames places one P x P box "
           "per video (the Gaussian policy's mean, or the grid policy's argmax), the same on every focus frame; "
           "no temporal policy (every focus frame is processed)",
    classifier="TSN average consensus: the mean of the G glance logits plus the mean of the L focus logits",
    exits="1 stage: the prediction after all L focus frames",
    frame_source="separate",
    objective_terms=("cat",),
    flops=adafocus_v1_tsm_flops,
    checkpoint=CheckpointLayout(name="official AdaFocus V1 Sth-Sth", detect=detect_official, convert=convert_official,
                                manifest=official_manifest,
                                class_weight_keys=("glance_head.weight", "glancer.net.classifier.weight")),
    # Sth-Sth V1 and V2 (the official tree's somethingv1 / somethingv2).
    datasets=("something", "somethingv2"),
    # The README's three training stages at the released patch sizes (configs/v1_{sthv1,sthv2}_p{P}_stage{N}.yaml).
    presets=tuple(f"v1_{dataset}_p{patch}_stage{stage}" for dataset in ("sthv1", "sthv2")
                  for patch in (144, 160, 176) for stage in (1, 2, 3)),
    # The README evaluation command (evaluate.sh: Sth-Sth V1, G = 8, L = 12, P = 144, Gaussian policy, std 0.25);
    # weight decay: the official configuration's. main.py --evaluate runs it (one exit: no early exit);
    # training: main.py --stage 1..3 (ops/staged_training.py)
    defaults={"num_segments": 12, "num_glance_segments": 8, "num_focus_segments": 12, "patch_size": 144,
              "dropout": 0.5, "dataset": "something", "weight_decay": 1e-4},
))
