"""AdaFocus V1 (ICCV 2021), the form released for ActivityNet, FCVID and Mini-Kinetics: the evaluation forward.

One patch per frame, chosen by a reinforcement-learning policy over a fixed grid of positions, and a
recurrent classifier with a prediction after every frame (docs/adafocus-v1.md). For a video of T frames
(every frame is both a glance and a focus frame):

1. **glance** — every frame, resized to ``glance_size`` (nearest neighbour; the identity at the input
   size), goes through MobileNetV2: feature maps (B*T, 1280, s, s), s = ceil(glance_size / 32), and their
   spatial means (B*T, 1280).
2. **policy** — :class:`GridPatchPolicy`, an actor-critic: each map is encoded to a vector (1x1 conv to 32
   channels, ReLU, channel-major flatten, Linear, ReLU), a GRU runs over the frames from a zero state, and
   the actor gives a softmax over the A = n x n grid positions. Evaluation takes the most probable
   position (argmax); it draws no random number.
3. **patch** — grid position a is (a // n, a % n) / (n - 1) (vertical first); the top-left corner of the
   P x P patch is ``floor(position * (input_size - P))`` computed in float32, and the patch is an exact
   slice of the frame (:func:`crop_integer_patches`; no resampling).
4. **focus** — ResNet-50 (``focus_arch``; the family's ResNet-18 / 34 also offered) on each patch: pooled
   features (B*T, 2048).
5. **classifier** — :class:`RecurrentStepClassifier`: a GRU over concat(glance, focus) features of the
   frames (from a zero state), dropout, and a linear layer on every step: logits (B, T, C); the prediction
   is the last step's. Step t has seen frames 0..t.

The GRU of the policy and the policy are causal and the chosen positions never feed back into the policy's
state, so running every frame at once equals the official frame-by-frame loop. The adaptive early-exit
runtime (``ops.early_exit.adaptive``) runs that loop: :meth:`AdaFocusV1.early_exit_steps` processes frame
t for the videos that have not exited after frames 0..t-1 only.

This module also registers the variant: hyper-parameters, FLOPs of every step counted from the module
(:func:`adafocus_v1_flops`) and the official checkpoint layout (``glancer.net``, ``focuser.net``,
``focuser.policy.policy``, ``classifier.gru`` ...; :data:`OFFICIAL_KEYS`), and the official stage-2 episode
(:meth:`AdaFocusV1.stage2_rollout`: the policy's sampled positions and rewards into a rollout memory, which
``models.ppo.PPO.update`` turns into one PPO step). The official training stages 0-3 run in
``ops/staged_training.py`` (main.py ``--stage``) from these parts; the Something-Something form is
``models.adafocus_v1_sth``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Iterable, List, NamedTuple, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .adafocus_v1_policy import GridPatchPolicy, GridPolicySteps  # noqa: F401  (GridPolicySteps: re-exported)
from .backbones import FOCUS_ARCHS, FocusEncoder, GlanceEncoder, glance_feature_size
from .ppo import PPO, RolloutMemory
from .uni_adafocus import IMAGENET_MEAN, IMAGENET_STD, normalise_uint8, video_frames
from .variants import CheckpointLayout, PrefixMap, Variant, register_variant

#: The grid sizes the official action table offers (5 x 5, 6 x 6, 7 x 7 and 8 x 8 positions).
ACTION_DIMS = (25, 36, 49, 64)


# --------------------------------------------------------------------------------------------------
# The action grid and the patch crop
# --------------------------------------------------------------------------------------------------
def action_grid(action_dim: int, sizes: Tuple[int, ...] = ACTION_DIMS) -> torch.Tensor:
    """The grid positions of a discrete policy with ``action_dim`` = n * n actions: (A, 2) float32, row a =
    (a // n, a % n) / (n - 1), i.e. (vertical, horizontal) in [0, 1], row-major. ``sizes``: the grid sizes
    the form offers."""
    if action_dim not in sizes:
        raise ValueError(f"action_dim must be one of {sizes} (a square grid of patch positions), got {action_dim}")
    n = math.isqrt(action_dim)
    return torch.tensor([[i / (n - 1), j / (n - 1)] for i in range(n) for j in range(n)], dtype=torch.float32)


def patch_corners(positions: torch.Tensor, input_size: int, patch_size: int) -> torch.Tensor:
    """Grid positions (..., 2) float32 (vertical, horizontal) in [0, 1] -> top-left corners (..., 2) int64
    ``(y, x) = floor(position * (input_size - P))``, the product taken in float32."""
    return torch.floor(positions.float() * (input_size - patch_size)).long()


def crop_integer_patches(frames: torch.Tensor, corners: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Exact P x P slices: frames (N, C, H, W), corners (N, 2) int64 (y, x) -> patches (N, C, P, P) with
    ``patches[n] = frames[n, :, y:y+P, x:x+P]``. Differentiable in the frames."""
    if frames.dim() != 4 or corners.shape != (frames.shape[0], 2):
        raise ValueError(f"frames must be (N, C, H, W) and corners (N, 2), got {tuple(frames.shape)} and "
                         f"{tuple(corners.shape)}")
    h, w = frames.shape[-2:]
    if corners.numel() and (corners.min() < 0 or corners[:, 0].max() > h - patch_size
                            or corners[:, 1].max() > w - patch_size):
        raise ValueError(f"a {patch_size} x {patch_size} patch at corners {corners.tolist()} leaves the {h} x {w} frame")
    offsets = torch.arange(patch_size, device=frames.device)
    rows = (corners[:, 0:1] + offsets).unsqueeze(2)  # (N, P, 1)
    cols = (corners[:, 1:2] + offsets).unsqueeze(1)  # (N, 1, P)
    videos = torch.arange(frames.shape[0], device=frames.device).view(-1, 1, 1)
    return frames.permute(0, 2, 3, 1)[videos, rows, cols].permute(0, 3, 1, 2)  # (N, C, P, P)


# --------------------------------------------------------------------------------------------------
# The classifier (the policy is models.adafocus_v1_policy.GridPatchPolicy, shared with the other form)
# --------------------------------------------------------------------------------------------------
class RecurrentStepClassifier(nn.Module):
    """Per-frame features (B, T, D) -> logits (B, T, C): a one-layer GRU (D -> H, from zeros), dropout and
    Linear(H -> C) on every step. Step t has seen frames 0..t."""

    def __init__(self, in_dim: int, hidden_dim: int, num_classes: int, dropout: float):
        super().__init__()
        self.gru = nn.GRU(in_dim, hidden_dim, num_layers=1, batch_first=True)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(hidden_dim, num_classes)

    def states(self, features: torch.Tensor) -> torch.Tensor:
        """(B, T, D) -> GRU outputs (B, T, H)."""
        return self.gru(features)[0]

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(self.states(features)))


# --------------------------------------------------------------------------------------------------
# The network
# --------------------------------------------------------------------------------------------------
#: The official stage-2 rewards (``reward``): ``random`` the confidence gain over a random patch (the
#: default, the paper's), ``prev`` the gain over the previous step, ``conf`` the confidence itself.
STAGE2_REWARDS = ("random", "prev", "conf")


class Stage2Rollout(NamedTuple):
    """What :meth:`AdaFocusV1.stage2_rollout` computed for B videos of T frames, in temporal order."""

    actions: torch.Tensor  # (B, T) int64 the sampled grid positions
    logprobs: torch.Tensor  # (B, T) their log-probabilities under the acting copy
    action_probs: torch.Tensor  # (B, T, A) the acting copy's softmax
    corners: torch.Tensor  # (B, T, 2) int64 (y, x) of the policy's patches
    step_logits: torch.Tensor  # (B, T, C) the classifier after frames 0..t with the policy's patches
    confidence: torch.Tensor  # (B, T) softmax(step_logits)[label]
    rewards: torch.Tensor  # (B, T) what went into the memory
    baseline_corners: Optional[torch.Tensor] = None  # (B, T, 2) int64 the random patches ("random" only)
    baseline_logits: Optional[torch.Tensor] = None  # (B, T, C) one classifier step on the random patch
    baseline_confidence: Optional[torch.Tensor] = None  # (B, T)


@dataclass
class AdaFocusV1Output:
    """Everything the evaluation forward produces, per frame in temporal order."""

    step_logits: torch.Tensor  # (B, T, C) the classifier after frames 0..t
    actions: torch.Tensor  # (B, T) int64 grid positions
    action_probs: torch.Tensor  # (B, T, A) the actor's softmax
    corners: torch.Tensor  # (B, T, 2) int64 top-left (y, x) of each patch in input pixels
    glance_features: torch.Tensor  # (B, T, Dg)
    focus_features: torch.Tensor  # (B, T, Df)
    patch_size: int = 0
    glance_logits: Optional[torch.Tensor] = None  # (B, T, C) the glance encoder's own head (stage 0) per frame
    focus_logits: Optional[torch.Tensor] = None  # (B, T, C) the focus encoder's own head (stage 0) per patch

    @property
    def exit_logits(self) -> torch.Tensor:
        """(B, T, C) every exit: the classifier after frames 0..t."""
        return self.step_logits

    @property
    def logits(self) -> torch.Tensor:
        """(B, C) the prediction: the last step."""
        return self.step_logits[:, -1]

    @property
    def stage_logits(self) -> torch.Tensor:
        """(B, T, C) the prediction after each frame."""
        return self.step_logits

    @property
    def validation_logits(self) -> torch.Tensor:
        """(B, T, C): the official loss is the cross-entropy of every step."""
        return self.step_logits

    @property
    def cat_logits(self) -> torch.Tensor:
        return self.step_logits

    @property
    def focus_indices(self) -> torch.Tensor:
        """(B, T) the temporal index of each patch's frame."""
        b, t = self.actions.shape
        return torch.arange(t, device=self.actions.device).unsqueeze(0).expand(b, t)

    @property
    def patch_boxes(self) -> torch.Tensor:
        """(B, T, 4) the patches as (x1, y1, x2, y2) in input pixels (pixel i covers [i, i+1))."""
        y1, x1 = self.corners[..., 0].float(), self.corners[..., 1].float()
        return torch.stack((x1, y1, x1 + self.patch_size, y1 + self.patch_size), dim=-1)


class AdaFocusV1(nn.Module):
    """The AdaFocus V1 network (ActivityNet / FCVID / Mini-Kinetics form). Keyword names match the official
    configuration keys.

    forward(video) with video (B, T, 3, H, W) or the official flattened layout (B, 3T, H, W), H = W =
    input_size; uint8 frames are normalised here (ImageNet mean/std), floating frames are taken as
    normalised. Returns :class:`AdaFocusV1Output`. The forward is the evaluation (evaluation mode); the
    official training stages use the parts directly (``ops/staged_training.py``), and :meth:`stage2_rollout`
    is the stage-2 episode of the policy's PPO.

    ``glance_head`` (Dropout 0.2, Linear) and ``focus_head`` (Linear) are the backbones' own classifiers,
    which only the official stage 0 trains; the forward reports their logits (``glance_logits`` /
    ``focus_logits``, the evaluation's secondary heads) but the prediction does not use them. ``hidden_state_dim``: the policy's
    width; ``hidden_dim``: the classifier GRU's; ``focus_arch``: the focus ResNet (official: resnet50);
    ``zero_init_residual``: every residual block of both encoders starts as the identity (random initialisation);
    ``with_glancer=False`` feeds the classifier the focus
    features alone.
    """

    variant = "adafocus_v1"

    def __init__(self, num_classes: int, num_segments: int = 16, patch_size: int = 128, input_size: int = 224,
                 glance_size: int = 224, action_dim: int = 49, hidden_state_dim: int = 1024, hidden_dim: int = 1024,
                 dropout: float = 0.8, with_glancer: bool = True, focus_arch: str = "resnet50",
                 zero_init_residual: bool = False, pretrained: bool = False, glance_weights=None, focus_weights=None):
        super().__init__()
        if not 0 < patch_size <= input_size:
            raise ValueError(f"patch_size must be in 1..input_size ({input_size}), got {patch_size}")
        if num_segments < 1:
            raise ValueError(f"num_segments must be at least 1, got {num_segments}")
        if glance_size < 1:
            raise ValueError(f"glance_size must be positive, got {glance_size}")
        self.num_classes, self.num_segments, self.patch_size, self.input_size = num_classes, num_segments, patch_size, input_size
        self.glance_size, self.action_dim, self.with_glancer = glance_size, action_dim, with_glancer
        self.feature_size = glance_feature_size(glance_size)
        self.register_buffer("action_table", action_grid(action_dim), persistent=False)
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN).view(3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD).view(3, 1, 1), persistent=False)

        self.glance = GlanceEncoder("mbv2", pretrained=pretrained, weights=glance_weights,
                                    zero_init_residual=zero_init_residual)
        self.glance_head = nn.Sequential(nn.Dropout(0.2), nn.Linear(self.glance.feature_dim, num_classes))
        self.focus = FocusEncoder(focus_arch, pretrained=pretrained, weights=focus_weights,
                                  zero_init_residual=zero_init_residual)
        self.focus_head = nn.Linear(self.focus.feature_dim, num_classes)
        self.policy = nn.Module()  # the family's policy container; V1 has only a spatial policy
        self.policy.spatial = GridPatchPolicy(self.glance.feature_dim, self.feature_size, hidden_state_dim, action_dim)
        classifier_in = self.focus.feature_dim + (self.glance.feature_dim if with_glancer else 0)
        self.classifier = RecurrentStepClassifier(classifier_in, hidden_dim, num_classes, dropout)

    # ------------------------------------------------------------------------------------------
    # inputs
    # ------------------------------------------------------------------------------------------
    def frames(self, video: torch.Tensor) -> torch.Tensor:
        """(B, T, 3, H, W) or (B, 3T, H, W) -> normalised (B, T, 3, H, W), checked."""
        return self.normalise(self.frames_view(video))

    def frames_view(self, video: torch.Tensor) -> torch.Tensor:
        """(B, T, 3, H, W) or (B, 3T, H, W) -> (B, T, 3, H, W) as given (uint8 or normalised), checked."""
        return video_frames(video, self.num_segments, self.input_size)

    def normalise(self, frames: torch.Tensor) -> torch.Tensor:
        """Frames (..., 3, H, W): uint8 -> normalised with the ImageNet mean/std; floating frames unchanged."""
        return normalise_uint8(frames, self.pixel_mean, self.pixel_std)

    def glance_input(self, frames: torch.Tensor) -> torch.Tensor:
        """Normalised frames (N, 3, H, W) -> (N, 3, g, g), g = glance_size: nearest-neighbour resize."""
        if frames.shape[-2:] == (self.glance_size, self.glance_size):
            return frames
        return F.interpolate(frames, size=(self.glance_size, self.glance_size), mode="nearest")

    # ------------------------------------------------------------------------------------------
    # stages
    # ------------------------------------------------------------------------------------------
    def corners_of(self, actions: torch.Tensor) -> torch.Tensor:
        """Grid indices (...) int64 -> patch corners (..., 2) int64 (y, x) in input pixels."""
        return patch_corners(self.action_table[actions], self.input_size, self.patch_size)

    def crop(self, frames: torch.Tensor, corners: torch.Tensor) -> torch.Tensor:
        """Frames (N, 3, H, W), corners (N, 2) (y, x) -> patches (N, 3, P, P)."""
        return crop_integer_patches(frames, corners, self.patch_size)

    def classifier_input(self, glance_features: torch.Tensor, focus_features: torch.Tensor) -> torch.Tensor:
        """(B, T, Dg), (B, T, Df) -> the classifier's per-frame input (B, T, Dg + Df), or (B, T, Df)."""
        return torch.cat((glance_features, focus_features), dim=2) if self.with_glancer else focus_features

    @property
    def num_exit_stages(self) -> int:
        """T: a prediction after each frame."""
        return self.num_segments

    @property
    def exit_focus_frames(self) -> Tuple[int, ...]:
        """The frames each exit has processed, (1, 2, ..., T): exit t after t + 1 frames, each frame both a
        glance and a focus frame."""
        return tuple(range(1, self.num_segments + 1))

    @torch.no_grad()
    def early_exit_steps(self, video: torch.Tensor, amp, lap=None, before_focus=None):
        """The T exits one frame at a time, for the adaptive runtime (a generator; evaluation only).

        Yields exit 0's logits (B, C), computed from frame 0 alone: the glance encoder, one policy step (state
        encoder, one GRU step from zeros, actor, argmax), the patch, the focus encoder, one classifier GRU
        step and its linear layer (no critic, no glance or focus head: only the exits predict). Each time
        it is sent the positions (m,) (long, on the device) of the videos of its last yield that continue,
        it yields the next exit's logits (m, C) for those only, continuing their two GRU states; so a video
        that leaves after t + 1 frames has had only those frames processed. The policy and the classifier
        are causal, so exit t equals step t of the full forward (to the batched kernels' rounding).
        ``amp``: the caller's (enabled, dtype) autocast setting, applied to the two backbones. ``lap`` is
        not called (there is no separate policy stage). ``before_focus(indices (n, 1), rows (n,))`` is
        called before each frame is read with its temporal index and the rows of ``video`` still running.
        """
        frames = self.frames_view(video)  # (B, T, 3, H, W), normalised frame by frame below
        device_type, (amp_on, amp_dtype) = frames.device.type, amp
        policy, classifier = self.policy.spatial, self.classifier
        rows = torch.arange(frames.shape[0], device=frames.device)
        policy_state = classifier_state = None  # (1, n, H) GRU states; None: zeros (the first frame)
        for t in range(self.num_segments):
            if before_focus is not None:
                before_focus(torch.full((rows.numel(), 1), t, dtype=torch.long, device=rows.device), rows)
            frame = self.normalise(frames[rows, t])  # (n, 3, H, W)
            with torch.autocast(device_type, dtype=amp_dtype, enabled=amp_on):
                fmap, glance_features = self.glance(self.glance_input(frame))  # (n, Dg, s, s), (n, Dg)
            encoded = policy.state_encoder(fmap.float())  # (n, H)
            hidden, policy_state = policy.gru(encoded.unsqueeze(0), policy_state)  # step-major (1, n, H)
            actions = policy.actor(hidden[0]).argmax(dim=-1)  # (n,)
            patch = self.crop(frame, self.corners_of(actions))  # (n, 3, P, P)
            with torch.autocast(device_type, dtype=amp_dtype, enabled=amp_on):
                focus_features = self.focus(patch)  # (n, Df)
            features = self.classifier_input(glance_features.float().unsqueeze(1), focus_features.float().unsqueeze(1))
            states, classifier_state = classifier.gru(features, classifier_state)  # (n, 1, H), (1, n, H)
            keep = yield classifier.fc(classifier.dropout(states[:, 0]))  # (n, C)
            if keep is not None and keep.numel() < rows.numel():
                rows, policy_state, classifier_state = rows[keep], policy_state[:, keep], classifier_state[:, keep]

    def forward(self, video: torch.Tensor, generator: Optional[torch.Generator] = None,
                before_focus=None, corners: Optional[torch.Tensor] = None) -> AdaFocusV1Output:
        """The evaluation forward (see the class docstring). ``generator`` is unused (nothing is drawn);
        ``before_focus(indices (B, T), None)`` is called first with every frame (each is a glance and a focus
        frame), for a caller whose frames are decoded on demand. ``corners`` (B, T, 2) int64 (y, x): patches
        to use instead of the policy's (e.g. :meth:`random_corners`, the policy's ablation); the policy's
        ``actions`` and ``action_probs`` are still reported."""
        if self.training:
            raise RuntimeError("adafocus_v1's forward runs in evaluation mode only (model.eval()); it trains in the "
                               "official stages (ops/staged_training.py: main.py --stage 0..3)")
        if before_focus is not None:
            before_focus(torch.arange(self.num_segments, device=video.device).unsqueeze(0).expand(video.shape[0], -1),
                         None)
        frames = self.frames(video)  # (B, T, 3, H, W)
        b, t = frames.shape[:2]
        fmap, glance_features = self.glance(self.glance_input(frames.flatten(0, 1)))  # (B*T, Dg, s, s), (B*T, Dg)
        steps = self.policy.spatial(fmap.view(b, t, *fmap.shape[1:]))
        if corners is None:
            corners = self.corners_of(steps.actions)  # (B, T, 2)
        elif corners.shape != (b, t, 2):
            raise ValueError(f"corners must be (B, T, 2) = {(b, t, 2)}, got {tuple(corners.shape)}")
        patches = self.crop(frames.flatten(0, 1), corners.flatten(0, 1))  # (B*T, 3, P, P)
        focus_features = self.focus(patches).view(b, t, -1)  # (B, T, Df)
        glance_features = glance_features.view(b, t, -1)
        step_logits = self.classifier(self.classifier_input(glance_features, focus_features))  # (B, T, C)
        return AdaFocusV1Output(step_logits, steps.actions, steps.probs, corners, glance_features, focus_features,
                                self.patch_size, self.glance_head(glance_features), self.focus_head(focus_features))


    # ------------------------------------------------------------------------------------------
    # the official stage 2: the policy's rollout (the update is models.ppo.PPO.update)
    # ------------------------------------------------------------------------------------------
    def random_corners(self, steps: int, batch: int, crop_rng=None) -> torch.Tensor:
        """The official random patch of every step and video: (B, T, 2) int64 (y, x), drawn for t = 0..T-1,
        for b = 0..B-1 as ``y = randint(0, H - P)`` then ``x = randint(0, W - P)`` from ``crop_rng`` (a
        ``numpy.random.RandomState``; numpy's global generator, as the official code, when None). The
        upper bound is exclusive, so the last offset H - P is never drawn (as official)."""
        if self.patch_size >= self.input_size:
            raise ValueError(f"the random-patch reward needs patch_size < input_size, got {self.patch_size} and "
                             f"{self.input_size}")
        rng = np.random if crop_rng is None else crop_rng
        span = self.input_size - self.patch_size
        draws = [[[rng.randint(0, span), rng.randint(0, span)] for _ in range(batch)] for _ in range(steps)]
        return torch.tensor(draws, dtype=torch.int64).transpose(0, 1)  # (B, T, 2)

    def stage2_rollout(self, video: torch.Tensor, target: torch.Tensor, ppo: PPO, memory: RolloutMemory,
                       generator: Optional[torch.Generator] = None, crop_rng=None,
                       reward: str = "random") -> Stage2Rollout:
        """One official stage-2 episode on a batch (``GFV.one_step_act`` for every frame, and the rewards):
        the acting copy ``ppo.policy_old`` samples a grid position per frame (its draws from ``generator``, a
        generator on the model's device, or the global torch generator when None), stored with the glance maps
        in ``memory`` (``ppo.act``); the focus encoder and the classifier run on the chosen patches; the reward
        of step t (``reward``, one of
        :data:`STAGE2_REWARDS`) goes into ``memory`` too. Then ``ppo.update(memory)`` and ``memory.clear()``
        finish the iteration. Everything runs without gradients.

        video (B, T, 3, H, W) or (B, 3T, H, W); target (B,) or the official (B, K) label rows (column 0 is
        the label, as official). With c_t = softmax(logits_t)[label]: ``random`` r_t = c_t - b_t, where b_t
        is the confidence of one classifier step from the state after frames < t on the frame's glance
        features and a random patch's focus features (:meth:`random_corners`, from ``crop_rng``); ``prev``
        r_t = c_t - c_(t-1) (c_(-1) = 0); ``conf`` r_t = c_t. The caller sets the modes, as the official
        stage 2 does: the model in evaluation mode, both policy copies in training mode."""
        if reward not in STAGE2_REWARDS:
            raise ValueError(f"reward must be one of {STAGE2_REWARDS}, got {reward!r} (the official reward "
                             "function has no other branch)")
        frames = self.frames(video)  # (B, T, 3, H, W)
        b, t = frames.shape[:2]
        labels = target[:, 0] if target.dim() == 2 else target
        if labels.shape != (b,):
            raise ValueError(f"target must be (B,) or (B, K) with B = {b}, got {tuple(target.shape)}")
        with torch.no_grad():
            fmap, glance_features = self.glance(self.glance_input(frames.flatten(0, 1)))
            fmap, glance_features = fmap.view(b, t, *fmap.shape[1:]), glance_features.view(b, t, -1)
            acted = [ppo.act(fmap[:, step], memory, restart=(step == 0), generator=generator) for step in range(t)]
            actions = torch.stack([a.actions for a in acted], dim=1)  # (B, T)
            corners = self.corners_of(actions)
            focus_features = self.focus(self.crop(frames.flatten(0, 1), corners.flatten(0, 1))).view(b, t, -1)
            states = self.classifier.states(self.classifier_input(glance_features, focus_features))  # (B, T, H)
            step_logits = self.classifier.fc(self.classifier.dropout(states))
            confidence = step_logits.softmax(dim=-1).gather(2, labels.view(b, 1, 1).expand(b, t, 1)).squeeze(2)
            baseline = {}
            if reward == "random":
                baseline_corners = self.random_corners(t, b, crop_rng).to(frames.device)
                baseline_focus = self.focus(self.crop(frames.flatten(0, 1), baseline_corners.flatten(0, 1)))
                baseline_input = self.classifier_input(glance_features, baseline_focus.view(b, t, -1))
                # one GRU step per frame from the policy path's state after the frames before it
                previous = torch.cat((torch.zeros_like(states[:, :1]), states[:, :-1]), dim=1)  # (B, T, H)
                baseline_states, _ = self.classifier.gru(baseline_input.reshape(b * t, 1, -1),
                                                         previous.reshape(1, b * t, -1).contiguous())
                baseline_logits = self.classifier.fc(self.classifier.dropout(baseline_states.view(b, t, -1)))
                baseline_confidence = baseline_logits.softmax(dim=-1).gather(
                    2, labels.view(b, 1, 1).expand(b, t, 1)).squeeze(2)
                rewards = confidence - baseline_confidence
                baseline = dict(baseline_corners=baseline_corners, baseline_logits=baseline_logits,
                                baseline_confidence=baseline_confidence)
            elif reward == "prev":
                rewards = confidence - torch.cat((torch.zeros_like(confidence[:, :1]), confidence[:, :-1]), dim=1)
            else:
                rewards = confidence
        for step in range(t):
            memory.add_reward(rewards[:, step])
        return Stage2Rollout(actions, torch.stack([a.logprobs for a in acted], dim=1),
                             torch.stack([a.actor_output for a in acted], dim=1), corners, step_logits, confidence,
                             rewards, **baseline)


# --------------------------------------------------------------------------------------------------
# FLOPs of every step, counted from the module
# --------------------------------------------------------------------------------------------------
@dataclass
class AdaFocusV1Flops:
    """GMACs (the papers' GFLOPs) of what one frame costs, counted on dummy inputs of the configured size: the
    work :meth:`AdaFocusV1.early_exit_steps` does for it (the forward's as well, less the critic and the
    backbones' own heads, which do not predict). Every frame costs the same, so the prediction after t + 1
    frames costs (t + 1) x the sum."""

    glance_frame: float  # the resize and MobileNetV2 on one frame
    policy_step: float  # state encoder, one GRU step and the actor (the critic only trains)
    focus_patch: float  # the focus ResNet on one P x P patch (the crop is a slice: no arithmetic)
    classifier_step: float  # one classifier GRU step and its linear layer
    num_frames: int

    @property
    def per_frame(self) -> float:
        return self.glance_frame + self.policy_step + self.focus_patch + self.classifier_step

    def stages(self) -> List[float]:
        """GFLOPs of every prediction: [after 1 frame, ..., after T frames]."""
        return [(t + 1) * self.per_frame for t in range(self.num_frames)]


def adafocus_v1_flops(model: AdaFocusV1) -> AdaFocusV1Flops:
    """Count every per-frame component of ``model`` (an :class:`AdaFocusV1`)."""
    from .flops import count_gmacs, counting  # models.flops imports the main network, not this one

    policy, classifier = model.policy.spatial, model.classifier
    with counting(model) as zeros:
        return AdaFocusV1Flops(
            glance_frame=count_gmacs(lambda x: model.glance(model.glance_input(x)),
                                     zeros(1, 3, model.input_size, model.input_size)),
            policy_step=count_gmacs(lambda x: policy.actor(policy.gru(policy.state_encoder(x).unsqueeze(0))[0]),
                                    zeros(1, model.glance.feature_dim, model.feature_size, model.feature_size)),
            focus_patch=count_gmacs(model.focus, zeros(1, 3, model.patch_size, model.patch_size)),
            classifier_step=count_gmacs(classifier, zeros(1, 1, classifier.gru.input_size)),
            num_frames=model.num_segments)


# --------------------------------------------------------------------------------------------------
# The official checkpoint layout (662 keys for ActivityNet, A = 49, 224-px glance)
# --------------------------------------------------------------------------------------------------
#: The official acting copy of the actor-critic. The official code loads the same checkpoint entry into it
#: and into the trained copy and copies the trained one over it after every update, so the two are equal
#: in every checkpoint; only the trained copy is kept here.
ACTING_COPY = "focuser.policy.policy_old."

OFFICIAL_KEYS = PrefixMap(
    pairs=(
        ("glancer.net.classifier.", "glance_head."),
        ("glancer.net.", "glance."),
        ("focuser.net.fc.", "focus_head."),
        ("focuser.net.", "focus."),
        ("focuser.policy.policy.", "policy.spatial."),
        ("classifier.", "classifier."),
    ),
    # The torchvision-layout ResNet-50 focuser and the actor-critic inside it are this tree's alone.
    detect_prefixes=("focuser.net.conv1.", "focuser.policy.policy."),
    order=("glancer.net.", "glancer.net.classifier.", "focuser.net.", "focuser.net.fc.", "focuser.policy.policy.",
           ACTING_COPY, "classifier."),
    unused=(ACTING_COPY,),
)


def detect_official(keys: Iterable[str]) -> bool:
    """Whether state-dict keys (without wrapper prefixes) are an official AdaFocus V1 (ACT) state dict."""
    return OFFICIAL_KEYS.detect(keys)


def convert_official(state: Dict[str, torch.Tensor]) -> Tuple[Dict[str, torch.Tensor], List[str], List[str]]:
    """Official state dict -> (our state dict, dropped acting-copy keys, unknown keys)."""
    return OFFICIAL_KEYS.convert(state)


def official_manifest(model: AdaFocusV1) -> List[Tuple[str, List[int], str]]:
    """The official state-dict manifest ``[key, shape, dtype]`` of a configuration, in official order,
    including the acting copy of the actor-critic (the trained copy's entries again)."""
    trained = "focuser.policy.policy."
    acting = [(ACTING_COPY + key[len(trained):], shape, dtype) for key, shape, dtype in OFFICIAL_KEYS.manifest(model)
              if key.startswith(trained)]
    return OFFICIAL_KEYS.manifest(model, extra=acting)


ADAFOCUS_V1 = register_variant(Variant(
    name="adafocus_v1",
    summary="AdaFocus V1 (ActivityNet / FCVID / Mini-Kinetics form): MobileNetV2 glance, an actor-critic "
            "choosing one of A grid positions per frame for a P x P patch, ResNet-50 focus (or ResNet-18 / 34), GRU classifier",
    build=AdaFocusV1,
    hyper_parameters=("num_segments", "patch_size", "input_size", "glance_size", "action_dim", "hidden_state_dim",
                      "hidden_dim", "dropout", "with_glancer", "focus_arch", "zero_init_residual", "pretrained",
                      "glance_weights", "focus_weights"),
    # ResNet-50 is the official focus network; the smaller ResNets of the family train faster from scratch
    encoders={"glance": ("mbv2",), "focus": FOCUS_ARCHS},
    policy="spatial: a GRU actor-critic over the frames' encoded glance maps picks one of A = n x n grid "
           "positions per frame (argmax in evaluation); no temporal policy (every frame is processed)",
    classifier="a GRU over concat(glance, focus) features of the frames, a linear layer on every step",
    exits="T stages: the prediction after each frame",
    frame_source="candidates",
    objective_terms=("cat",),
    flops=adafocus_v1_flops,
    checkpoint=CheckpointLayout(name="official AdaFocus V1", detect=detect_official, convert=convert_official,
                                manifest=official_manifest, class_weight_keys=("classifier.fc.weight",)),
    datasets=("actnet", "fcvid", "minik"),
    # The README's four training stages at the released patch sizes (configs/v1_{dataset}_p{P}_stage{N}.yaml).
    presets=tuple(f"v1_{dataset}_p{patch}_stage{stage}" for dataset in ("actnet", "fcvid", "minik")
                  for patch in (128, 160, 192) for stage in range(4)),
    # The README evaluation command (ActivityNet, P = 128, A = 49).
    # (dropout and weight decay: the README's and the official configuration's; training: --stage, presets
    # configs/v1_*_stage*.yaml)
    defaults={"num_segments": 16, "patch_size": 128, "dropout": 0.8, "weight_decay": 1e-4},
))
