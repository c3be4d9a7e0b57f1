"""AdaFocusV2 (CVPR 2022), the form released for ActivityNet, FCVID and Mini-Kinetics.

One network, one patch per frame, one exit per frame (docs/adafocus-v2.md). For a video of T frames
(every frame is both a glance and a focus frame):

1. **glance** — every frame goes through the glance encoder: MobileNetV2 on the full frame, or
   ResNet-50 on a copy resized to ``glance_size`` (96 px, bilinear with ``align_corners=True``):
   feature maps (B*T, Dg, h, w), pooled features (B*T, Dg), and the glance head's logits per frame.
2. **policy** — :class:`RecurrentPatchPolicy`: each feature map is encoded to a vector, a GRU runs
   over the frames in model order, and a linear layer with a sigmoid gives one action per frame,
   ``(a_row, a_col)`` in (0, 1). In training the policy reads the *detached* maps.
3. **patch** — a fixed P x P box per frame, top-left corner ``a * (side - P)`` (rows, columns),
   resampled bilinearly (:func:`crop_fixed_patches`, the family's box sampler).
4. **focus** — ResNet-50 on each patch: pooled features (B*T, 2048) and the focus head's logits.
5. **classifier** — :class:`RunningMaxClassifier` on concat(glance, focus) features: an MLP per frame,
   a running maximum over the frames, one exit head per frame. Exit t has seen frames 0..t.

With ``sample`` (the official ``--sample``) the model visits the frames coarse to fine
(:func:`coarse_to_fine_order`): model frame t is temporal frame ``order[t]``, so the GRU, the running
maximum and exit t see an evenly spread subset of the clip. Every per-frame output is in model order.

In training the forward also runs a second focus pass on uniformly random patch positions
(``AdaFocusV2Output.random_pass``); the objective averages the two (the paper's diversity augmentation).
The official forward draws, in this order: the glance head's dropout, the random actions, then per
pass (policy first) the focus head's dropout and the exit heads' dropouts, heads 0..T-1.

This module also registers the variant: hyper-parameters, FLOPs of every exit counted from the
module (:func:`adafocus_v2_flops`) and the official checkpoint layout (``policy_stn``,
``global_CNN``, ``classifier.classifiers`` ...; :data:`OFFICIAL_CHECKPOINT`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterable, List, NamedTuple, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .backbones import (FOCUS_ARCHS, FocusEncoder, GlanceEncoder, glance_feature_size, mbv2_flat_to_torchvision,
                        mbv2_torchvision_to_flat)
from .classifier import ExitMLP, _heads
from .patches import sample_boxes
from .uni_adafocus import IMAGENET_MEAN, IMAGENET_STD, normalise_uint8, video_frames
from .outputs import EveryExitLogits, detach_output
from .variants import CheckpointLayout, PrefixMap, Variant, register_variant

#: Glance architectures: MobileNetV2 on the full frame, ResNet-50 on a small copy. ``res50`` is the
#: official spelling of ``resnet50``.
GLANCE_ARCHS = ("mbv2", "resnet50")
OFFICIAL_ARCH_NAMES = {"res50": "resnet50"}
#: The side the official ResNet-50 glance resizes frames to (hard-coded there; ``--glance_size`` unused).
RESNET_GLANCE_SIZE = 96
#: Output channels of the policy's 1x1 convolution (official constant).
POLICY_CONV_CHANNELS = 64


def coarse_to_fine_order(num_frames: int) -> List[int]:
    """The official ``--sample`` visiting order of T frames: [middle, first, last], then the midpoints of
    the 2, 4, 8 ... equal parts of [0, T-1] not yet visited, part by part.

    Breakpoints of q parts are ``floor(i (T-1) / q)``, i = 0..q; each pass over q parts is completed
    before the length is checked. E.g. T = 16 -> [7, 0, 15, 3, 11, 1, 5, 9, 13, 2, 4, 6, 8, 10, 12, 14].
    A permutation of 0..T-1 for T >= 3; T < 3 has no such order (the official list repeats frames).
    """
    if num_frames < 3:
        raise ValueError(f"the coarse-to-fine order (--sample) needs at least 3 frames, got {num_frames}")
    last = num_frames - 1
    order = [last // 2, 0, last]
    parts = 2
    while len(order) < num_frames:
        points = [(i * last) // parts for i in range(parts + 1)]
        for a, b in zip(points[:-1], points[1:]):
            if (a + b) // 2 not in order:
                order.append((a + b) // 2)
        parts *= 2
    return order


def crop_fixed_patches(frames: torch.Tensor, actions: torch.Tensor, patch_size: int) -> torch.Tensor:
    """One P x P patch per frame at its action's position.

    frames (N, C, H, W), actions (N, 2) ``(a_row, a_col)`` in [0, 1] -> patches (N, C, P, P). The
    box's top-left corner is ``(a_row (H - P), a_col (W - P))`` in continuous pixels, so output pixel
    (i, j) samples the frame at pixel-index position (y1 + i, x1 + j), bilinearly; the box never leaves
    the frame. Differentiable in frames and actions.
    """
    if frames.dim() != 4 or actions.shape != (frames.shape[0], 2):
        raise ValueError(f"frames must be (N, C, H, W) and actions (N, 2), got {tuple(frames.shape)} and "
                         f"{tuple(actions.shape)}")
    h, w = frames.shape[-2:]
    y1 = actions[:, 0] * (h - patch_size)
    x1 = actions[:, 1] * (w - patch_size)
    extent = torch.full_like(x1, float(patch_size))
    return sample_boxes(frames, x1, y1, extent, extent, patch_size, patch_size)


class ResNetGlanceEncoder(FocusEncoder):
    """A ResNet as the glance network: frames (N, 3, S, S) -> (layer4 map (N, D, s, s), its mean (N, D)),
    s = ceil(S / 32). Weights load as :class:`FocusEncoder`'s (torchvision layout)."""

    def forward(self, frames: torch.Tensor):
        x = self.maxpool(self.relu(self.bn1(self.conv1(frames.contiguous(memory_format=self.memory_format)))))
        fmap = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return fmap, fmap.mean(dim=(2, 3))


class PolicySteps(NamedTuple):
    """What :class:`RecurrentPatchPolicy` computes for B videos of T frames."""

    actions: torch.Tensor  # (B, T, 2) (a_row, a_col) in (0, 1)
    encoded: torch.Tensor  # (B, T, H) the per-frame encoder output (GRU input)
    outputs: torch.Tensor  # (B, T, H) GRU outputs
    state: torch.Tensor  # (1, B, H) GRU state after the last frame


class RecurrentPatchPolicy(nn.Module):
    """Glance feature maps (B, T, C, h, w) -> one patch position per frame, causal in frame order.

    ``encoder``: Conv2d 1x1 (C -> 64, no bias), BN, Tanh, flatten, Linear(64 h w -> H), BN, Tanh;
    ``gru``: a one-layer GRU (H -> H) over the frames, starting from zeros; ``fc``: Linear(H -> 2), sigmoid.
    Layer indices follow the official ``policy_stn`` (encoder.0, .1, .4, .5; fc.0).
    """

    def __init__(self, in_channels: int, hidden_dim: int, feature_size: int):
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(in_channels, POLICY_CONV_CHANNELS, kernel_size=1, bias=False),
            nn.BatchNorm2d(POLICY_CONV_CHANNELS),
            nn.Tanh(),
            nn.Flatten(),
            nn.Linear(POLICY_CONV_CHANNELS * feature_size * feature_size, hidden_dim),
            nn.BatchNorm1d(hidden_dim),
            nn.Tanh(),
        )
        self.gru = nn.GRU(hidden_dim, hidden_dim, num_layers=1, batch_first=True)
        self.fc = nn.Sequential(nn.Linear(hidden_dim, 2), nn.Sigmoid())

    def forward(self, feature_maps: torch.Tensor, state: Optional[torch.Tensor] = None) -> PolicySteps:
        """feature_maps (B, T, C, h, w); ``state`` (1, B, H) continues an earlier call (None: zeros)."""
        b, t = feature_maps.shape[:2]
        encoded = self.encoder(feature_maps.flatten(0, 1)).view(b, t, -1)  # (B, T, H)
        outputs, state = self.gru(encoded, state)  # (B, T, H), (1, B, H)
        return PolicySteps(self.fc(outputs), encoded, outputs, state)


class RunningMaxClassifier(nn.Module):
    """Per-frame features (B, T, D) -> exit logits (B, T, C), one exit per frame (FrameExit-style).

    z_t = MLP(x_t) (Linear, BN over all B*T rows, ReLU: the family's :class:`ExitMLP`); m_t =
    max(z_0..z_t) elementwise; exit t = Linear(Dropout(m_t)) with its own head. A clip stopped after t
    frames gets exactly exit t of the full pass.
    """

    def __init__(self, in_dim: int, hidden_dim: int, num_exits: int, num_classes: int, dropout: float):
        super().__init__()
        self.mlp = ExitMLP(in_dim, hidden_dim)
        self.exits = _heads(num_exits, hidden_dim, num_classes, dropout)

    def states(self, features: torch.Tensor) -> torch.Tensor:
        """(B, T, D) -> running-max states (B, T, hidden)."""
        return torch.cummax(self.mlp(features), dim=1).values

    def logits(self, states: torch.Tensor) -> torch.Tensor:
        """Exit heads 0..T-1 on states (B, T, hidden) -> (B, T, C)."""
        return torch.stack([head(states[:, t]) for t, head in enumerate(self.exits[:states.shape[1]])], dim=1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.logits(self.states(features))


@dataclass
class FocusPathV2(EveryExitLogits):
    """One focus pass: patches at ``actions`` through the focus encoder, its head and the classifier; the
    objective's cross-entropies average over every exit and every patch."""

    exit_logits: torch.Tensor  # (B, T, C) exit t after frames 0..t
    focus_logits: torch.Tensor  # (B, T, C) focus head per patch
    actions: torch.Tensor  # (B, T, 2) the patches' (a_row, a_col)
    focus_features: torch.Tensor  # (B, T, Df)


@dataclass
class AdaFocusV2Output(EveryExitLogits):
    """Everything one forward produces, per frame in model order (``frame_order``). ``random_pass`` is
    the training forward's second pass on random patch positions (None in evaluation)."""

    exit_logits: torch.Tensor  # (B, T, C) the policy pass's exits
    glance_logits: torch.Tensor  # (B, T, C) glance head per frame
    focus_logits: torch.Tensor  # (B, T, C) focus head per policy patch
    actions: torch.Tensor  # (B, T, 2) policy actions (a_row, a_col)
    glance_features: torch.Tensor  # (B, T, Dg)
    focus_features: torch.Tensor  # (B, T, Df)
    frame_order: torch.Tensor  # (T,) temporal index of model frame t
    random_pass: Optional[FocusPathV2] = None
    input_size: int = 0  # frame side and patch size: the geometry of ``patch_boxes``
    patch_size: int = 0

    @property
    def logits(self) -> torch.Tensor:
        """(B, C) the prediction: the last exit."""
        return self.exit_logits[:, -1]

    @property
    def stage_logits(self) -> torch.Tensor:
        """(B, T, C) the early-exit stages: exit t after t + 1 frames."""
        return self.exit_logits

    @property
    def focus_indices(self) -> torch.Tensor:
        """(B, T) the temporal index of each policy patch's frame (the family's name)."""
        return self.frame_order.unsqueeze(0).expand(self.actions.shape[0], -1)

    @property
    def patch_boxes(self) -> torch.Tensor:
        """(B, T, 4) the policy patches as (x1, y1, x2, y2) in input pixels (pixel i covers [i, i+1))."""
        return self.patch_boxes_of(self.actions)

    def patch_boxes_of(self, actions: torch.Tensor) -> torch.Tensor:
        """actions (..., 2) (a_row, a_col) -> boxes (..., 4) (x1, y1, x2, y2) in input pixels."""
        y1 = actions[..., 0] * (self.input_size - self.patch_size)
        x1 = actions[..., 1] * (self.input_size - self.patch_size)
        return torch.stack((x1, y1, x1 + self.patch_size, y1 + self.patch_size), dim=-1)

    @property
    def validation_logits(self) -> torch.Tensor:
        """(B, T, C): the official validation loss is the CE of every exit."""
        return self.exit_logits

    # What the objective's cross-entropies average over (``ops.objective``, terms cat, glance, focus): every
    # exit, every glance frame, every policy patch; the random pass gives the other half of cat and focus.
    @property
    def glance_loss_logits(self) -> torch.Tensor:
        return self.glance_logits

    def detach(self) -> "AdaFocusV2Output":
        return detach_output(self)


class AdaFocusV2(nn.Module):
    """The AdaFocusV2 network (ActivityNet / FCVID / Mini-Kinetics form). Keyword names match the
    command-line flags.

    forward(video, generator=None) with video (B, T, 3, H, W) or the official flattened layout (B, 3T, H, W)
    in temporal order, H = W = input_size; uint8 frames are normalised here (ImageNet mean/std), floating
    frames are taken as normalised. Returns :class:`AdaFocusV2Output`. In training, the random patch
    positions come from ``generator`` (None: the global RNG, as officially). ``before_focus(indices (B, T),
    rows=None)`` is called with every frame before any is read (the family's hook for deferred decoding).

    ``glance_size``: the side the glance encoder sees (default: the input size for MobileNetV2, 96 for
    ResNet-50). ``classifier_dim``: the classifier MLP width (official 4096). ``sample``: visit the
    frames coarse to fine (:func:`coarse_to_fine_order`).
    """

    variant = "adafocus_v2"

    def __init__(self, num_classes: int, num_segments: int = 16, patch_size: int = 128, input_size: int = 224,
                 glance_arch: str = "mbv2", glance_size: Optional[int] = None, focus_arch: str = "resnet50",
                 stn_hidden_dim: int = 2048, classifier_dim: int = 4096, dropout: float = 0.2,
                 fc_dropout: float = 0.2, sample: bool = False, pretrained: bool = False,
                 glance_weights: Optional[str] = None, focus_weights: Optional[str] = None,
                 zero_init_residual: bool = False):
        super().__init__()
        glance_arch = OFFICIAL_ARCH_NAMES.get(glance_arch, glance_arch)
        if glance_arch not in GLANCE_ARCHS:
            raise ValueError(f"glance_arch must be one of {GLANCE_ARCHS} (or res50), got {glance_arch!r}")
        if not 0 < patch_size <= input_size:
            raise ValueError(f"patch_size must be in 1..input_size ({input_size}), got {patch_size}")
        if num_segments < 1:
            raise ValueError(f"num_segments must be at least 1, got {num_segments}")
        order = coarse_to_fine_order(num_segments) if sample else list(range(num_segments))
        self.num_classes, self.num_segments, self.patch_size, self.input_size = num_classes, num_segments, patch_size, input_size
        self.glance_arch, self.sample = glance_arch, sample
        self.glance_size = glance_size or (input_size if glance_arch == "mbv2" else RESNET_GLANCE_SIZE)
        self.feature_size = glance_feature_size(self.glance_size)
        self.register_buffer("frame_order", torch.tensor(order, dtype=torch.long), persistent=False)
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN).view(3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD).view(3, 1, 1), persistent=False)

        if glance_arch == "mbv2":
            self.glance = GlanceEncoder("mbv2", pretrained=pretrained, weights=glance_weights,
                                        zero_init_residual=zero_init_residual)
            glance_dim = self.glance.feature_dim
        else:  # the official ResNet-50 glance starts from random weights or from --glance_ckpt_path
            self.glance = ResNetGlanceEncoder(glance_arch, weights=glance_weights, zero_init_residual=zero_init_residual)
            glance_dim = self.glance.feature_dim
        self.focus = FocusEncoder(focus_arch, pretrained=pretrained, weights=focus_weights,
                                  zero_init_residual=zero_init_residual)
        focus_dim = self.focus.feature_dim
        self.glance_head = nn.Sequential(nn.Dropout(fc_dropout), nn.Linear(glance_dim, num_classes))
        self.focus_head = nn.Sequential(nn.Dropout(fc_dropout), nn.Linear(focus_dim, num_classes))
        self.policy = nn.Module()  # the family's policy container; V2 has only a spatial branch
        self.policy.spatial = RecurrentPatchPolicy(glance_dim, stn_hidden_dim, self.feature_size)
        self.classifier = RunningMaxClassifier(glance_dim + focus_dim, classifier_dim, num_segments, num_classes,
                                               dropout)

    # ------------------------------------------------------------------------------------------
    # inputs
    # ------------------------------------------------------------------------------------------
    def frames_in_model_order(self, video: torch.Tensor) -> torch.Tensor:
        """(B, T, 3, H, W) or (B, 3T, H, W) in temporal order -> (B, T, 3, H, W) in model order, checked."""
        video = video_frames(video, self.num_segments, self.input_size)
        if self.sample:
            video = video.index_select(1, self.frame_order)
        return video

    def normalise(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 frames (..., 3, H, W) -> normalised float32; floating frames pass through."""
        return normalise_uint8(frames, self.pixel_mean, self.pixel_std)

    def glance_input(self, frames: torch.Tensor) -> torch.Tensor:
        """Normalised frames (N, 3, H, W) -> what the glance encoder sees (N, 3, S_g, S_g): the frames
        themselves, or (official ResNet-50 glance) a bilinear resize with ``align_corners=True``."""
        if frames.shape[-1] == self.glance_size and frames.shape[-2] == self.glance_size:
            return frames
        return F.interpolate(frames, size=(self.glance_size, self.glance_size), mode="bilinear", align_corners=True)

    # ------------------------------------------------------------------------------------------
    # stages
    # ------------------------------------------------------------------------------------------
    def crop(self, frames: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """P x P patches: frames (N, 3, H, W), actions (N, 2) -> (N, 3, P, P)."""
        return crop_fixed_patches(frames, actions, self.patch_size)

    def focus_path(self, frames: torch.Tensor, actions: torch.Tensor, glance_features: torch.Tensor) -> FocusPathV2:
        """frames (B, T, 3, H, W) normalised, actions (B, T, 2), glance features (B, T, Dg) -> one focus pass."""
        b, t = actions.shape[:2]
        patches = self.crop(frames.flatten(0, 1), actions.flatten(0, 1))  # (B*T, 3, P, P)
        focus_features = self.focus(patches)  # (B*T, Df)
        focus_logits = self.focus_head(focus_features)  # (B*T, C)
        focus_features = focus_features.view(b, t, -1)
        exit_logits = self.classifier(torch.cat((glance_features, focus_features), dim=2))  # (B, T, C)
        return FocusPathV2(exit_logits, focus_logits.view(b, t, -1), actions, focus_features)

    @property
    def num_exit_stages(self) -> int:
        """T: one exit after each frame (in model order)."""
        return self.num_segments

    @property
    def exit_focus_frames(self) -> Tuple[int, ...]:
        """The focus frames each exit has processed, (1, 2, ..., T): exit t after t + 1 frames, each frame
        both a glance and a focus frame (no exit before the first patch, unlike Uni-AdaFocus's glance exit)."""
        return tuple(range(1, self.num_segments + 1))

    @torch.no_grad()
    def early_exit_steps(self, video: torch.Tensor, amp, lap=None, before_focus=None):
        """The T exits one frame at a time, for the adaptive runtime (a generator; evaluation only).

        Yields exit 0's logits (B, C), computed from model frame 0 alone: glance encoder, one policy step
        (encoder, one GRU step from zeros, action), the crop, the focus encoder, the classifier MLP and exit
        head 0 (no glance or focus head: only the exits predict). Each time it is sent the positions (m,)
        (long, on the device) of the videos of its last yield that continue, it yields the next exit's
        logits (m, C) for those only, continuing each video's GRU state and running maximum; so a video
        that leaves after t + 1 frames has had only those frames processed. The policy is causal and the
        classifier's state is a running maximum, so exit t equals exit t of the full pass (to the
        batched kernels' rounding). ``amp``: the caller's (enabled, dtype) autocast setting, applied to
        the two backbones. ``lap`` is not called (there is no separate policy stage).
        ``before_focus(indices (n, 1), rows (n,))`` is called before each frame is read with its
        temporal index and the rows of ``video`` still running.
        """
        frames = self.frames_in_model_order(video)  # (B, T, 3, H, W), model order
        device_type, (amp_on, amp_dtype) = frames.device.type, amp
        policy, classifier = self.policy.spatial, self.classifier
        rows = torch.arange(frames.shape[0], device=frames.device)
        state = running_max = None  # (1, n, H) GRU state; (n, hidden) running maximum of the MLP outputs
        for t in range(self.num_segments):
            if before_focus is not None:
                before_focus(self.frame_order[t].view(1, 1).expand(rows.numel(), 1), rows)
            frame = self.normalise(frames[rows, t])  # (n, 3, H, W)
            with torch.autocast(device_type, dtype=amp_dtype, enabled=amp_on):
                fmap, glance_features = self.glance(self.glance_input(frame))
            encoded = policy.encoder(fmap.float())  # (n, H)
            outputs, state = policy.gru(encoded.unsqueeze(1), state)  # (n, 1, H), (1, n, H)
            patch = self.crop(frame, policy.fc(outputs[:, 0]))  # (n, 3, P, P)
            with torch.autocast(device_type, dtype=amp_dtype, enabled=amp_on):
                focus_features = self.focus(patch)
            step = classifier.mlp(torch.cat((glance_features.float(), focus_features.float()), 1).unsqueeze(1))[:, 0]
            running_max = step if running_max is None else torch.maximum(running_max, step)
            keep = yield classifier.exits[t](running_max)  # (n, C)
            if keep is not None and keep.numel() < rows.numel():
                rows, state, running_max = rows[keep], state[:, keep], running_max[keep]

    def forward(self, video: torch.Tensor, generator: Optional[torch.Generator] = None,
                before_focus=None) -> AdaFocusV2Output:
        if before_focus is not None:  # every frame is read: the caller's frame source completes them all
            before_focus(self.frame_order.sort().values.unsqueeze(0).expand(video.shape[0], -1), None)
        frames = self.normalise(self.frames_in_model_order(video))  # (B, T, 3, H, W)
        b, t = frames.shape[:2]
        fmap, glance_features = self.glance(self.glance_input(frames.flatten(0, 1)))  # (B*T, Dg, h, w), (B*T, Dg)
        glance_logits = self.glance_head(glance_features).view(b, t, -1)  # (B, T, C)
        fmap = fmap.view(b, t, *fmap.shape[1:])
        glance_features = glance_features.view(b, t, -1)
        actions = self.policy.spatial(fmap.detach() if self.training else fmap).actions  # (B, T, 2)
        random_actions = None
        if self.training:  # official: rand_like on the global RNG; the training loop passes its generator
            random_actions = (torch.rand_like(actions) if generator is None else
                              torch.rand(actions.shape, generator=generator, device=actions.device, dtype=actions.dtype))
        policy_pass = self.focus_path(frames, actions, glance_features)
        random_pass = self.focus_path(frames, random_actions, glance_features) if self.training else None
        return AdaFocusV2Output(policy_pass.exit_logits, glance_logits, policy_pass.focus_logits, actions,
                                glance_features, policy_pass.focus_features, self.frame_order, random_pass,
                                self.input_size, self.patch_size)


# --------------------------------------------------------------------------------------------------
# FLOPs of every exit, counted from the module
# --------------------------------------------------------------------------------------------------
@dataclass
class AdaFocusV2Flops:
    """GMACs (the papers' GFLOPs) of what the forward runs for one frame, counted on dummy inputs of the
    configured size. Every frame costs the same, so exit t (after t + 1 frames) costs (t + 1) x the sum."""

    glance_frame: float  # glance encoder on one frame (incl. the ResNet glance's resize)
    glance_head: float  # glance head on one frame
    policy_step: float  # policy encoder, one GRU step and the action layer
    patch_crop: float  # one P x P patch
    focus_patch: float  # focus encoder on one patch
    focus_head: float  # focus head on one patch
    classifier_step: float  # classifier MLP on one frame, the running max and one exit head
    num_frames: int

    @property
    def per_frame(self) -> float:
        return (self.glance_frame + self.glance_head + self.policy_step + self.patch_crop + self.focus_patch
                + self.focus_head + self.classifier_step)

    def stages(self) -> List[float]:
        """GFLOPs of every exit: [after 1 frame, ..., after T frames]."""
        return [(t + 1) * self.per_frame for t in range(self.num_frames)]


def adafocus_v2_flops(model: AdaFocusV2) -> AdaFocusV2Flops:
    """Count every per-frame component of ``model`` (an :class:`AdaFocusV2`)."""
    from .flops import count_gmacs, counting  # models.flops imports the main network, not this one

    with counting(model) as zeros:
        size, p, fs = model.input_size, model.patch_size, model.feature_size
        gdim, fdim = model.glance.feature_dim, model.focus.feature_dim
        policy, classifier = model.policy.spatial, model.classifier
        return AdaFocusV2Flops(
            glance_frame=count_gmacs(lambda x: model.glance(model.glance_input(x)), zeros(1, 3, size, size)),
            glance_head=count_gmacs(model.glance_head, zeros(1, gdim)),
            policy_step=count_gmacs(lambda x: policy.fc(policy.gru(policy.encoder(x).unsqueeze(1))[0]),
                                    zeros(1, gdim, fs, fs)),
            patch_crop=count_gmacs(model.crop, zeros(1, 3, size, size), zeros(1, 2) + 0.5),
            focus_patch=count_gmacs(model.focus, zeros(1, 3, p, p)),
            focus_head=count_gmacs(model.focus_head, zeros(1, fdim)),
            classifier_step=count_gmacs(lambda x: classifier.exits[-1](classifier.states(x)[:, -1]),
                                        zeros(1, 1, gdim + fdim)),
            num_frames=model.num_segments)


#: The official early-exit script's per-frame GFLOPs table (its ``get_flops``), by glance architecture and
#: patch size: glance encoder + ResNet-50 on one P x P patch + a constant share for the policy and the
#: classifier. The official script knows no other patch size (ValueError there) and no ResNet-50 glance at 192.
OFFICIAL_FLOPS_PER_FRAME = {
    "mbv2": {96: 1.10096541, 128: 1.684842018, 160: 2.435540514, 192: 3.353060898},
    "resnet50": {96: 1.547401154, 128: 2.131277762, 160: 2.881976258},
}


def official_flops_per_frame(glance_arch: str, patch_size: int) -> float:
    """The official table's GFLOPs per frame (:data:`OFFICIAL_FLOPS_PER_FRAME`); ``ValueError`` (one line)
    for a configuration the table lacks."""
    arch = OFFICIAL_ARCH_NAMES.get(glance_arch, glance_arch)
    table = OFFICIAL_FLOPS_PER_FRAME.get(arch)
    if table is None or patch_size not in table:
        known = ", ".join(f"{a} P={p}" for a, t in OFFICIAL_FLOPS_PER_FRAME.items() for p in t)
        raise ValueError(f"the official AdaFocusV2 FLOPs table has no entry for glance_arch={glance_arch} "
                         f"patch_size={patch_size} (it has: {known})")
    return table[patch_size]


def linear_exit_flops(per_frame: float, num_exits: int) -> List[float]:
    """GFLOPs of exits 0..K-1 when every frame costs ``per_frame``: exit k costs (k + 1) frames, rounded
    to float32 as the official early-exit script (``(k + 1) * per_frame`` in float32)."""
    if num_exits < 1:
        raise ValueError(f"num_exits must be >= 1, got {num_exits}")
    frames = torch.arange(1, num_exits + 1, dtype=torch.float32)
    return (frames * torch.tensor(float(per_frame), dtype=torch.float32)).tolist()


# --------------------------------------------------------------------------------------------------
# The official checkpoint layout (696 keys with the MobileNetV2 glance, 702 with ResNet-50, T = 16)
# --------------------------------------------------------------------------------------------------
def _official_keys(glance_arch: str) -> PrefixMap:
    """The official layout for one glance architecture: (official prefix, our prefix), most specific
    first. The backbones' ImageNet classifiers (``global_CNN.classifier`` / ``global_CNN.fc``,
    ``local_CNN.fc``) are never used by the official forward and have no counterpart here."""
    glance_unused = "global_CNN.classifier." if glance_arch == "mbv2" else "global_CNN.fc."
    inner = {"global_CNN.": (mbv2_flat_to_torchvision, mbv2_torchvision_to_flat)} if glance_arch == "mbv2" else {}
    return PrefixMap(
        pairs=(
            ("global_CNN_fc.", "glance_head."),
            ("global_CNN.", "glance."),
            ("local_CNN_fc.", "focus_head."),
            ("local_CNN.", "focus."),
            ("policy_stn.", "policy.spatial."),
            ("classifier.mlp.", "classifier.mlp."),
            ("classifier.classifiers.", "classifier.exits."),
        ),
        detect_prefixes=("policy_stn.gru.",),
        order=("global_CNN.", glance_unused, "global_CNN_fc.", "local_CNN.", "local_CNN.fc.", "local_CNN_fc.",
               "policy_stn.", "classifier.mlp.", "classifier.classifiers."),
        inner=inner,
        unused=(glance_unused, "local_CNN.fc."),
    )


OFFICIAL_KEYS = {arch: _official_keys(arch) for arch in GLANCE_ARCHS}


def official_glance_arch(keys: Iterable[str]) -> str:
    """The glance architecture of an official state dict's keys (ResNet keys have ``global_CNN.layer1``)."""
    return "resnet50" if any(k.startswith("global_CNN.layer1.") for k in keys) else "mbv2"


def detect_official(keys: Iterable[str]) -> bool:
    """Whether state-dict keys (without wrapper prefixes) are an official AdaFocusV2 (ACT) state dict."""
    return OFFICIAL_KEYS["mbv2"].detect(keys)


def convert_official(state: Dict[str, torch.Tensor]) -> Tuple[Dict[str, torch.Tensor], List[str], List[str]]:
    """Official state dict -> (our state dict, dropped unused keys, unknown keys)."""
    return OFFICIAL_KEYS[official_glance_arch(state)].convert(state)


def official_manifest(model: AdaFocusV2) -> List[Tuple[str, List[int], str]]:
    """The official state-dict manifest ``[key, shape, dtype]`` of a configuration, in official order,
    including the unused ImageNet heads (so a synthetic checkpoint made from it has the official keys)."""
    gdim, fdim = model.glance.feature_dim, model.focus.feature_dim
    glance_head = "global_CNN.classifier." if model.glance_arch == "mbv2" else "global_CNN.fc."
    return OFFICIAL_KEYS[model.glance_arch].manifest(model, extra=(
        (glance_head + "weight", [1000, gdim], "float32"), (glance_head + "bias", [1000], "float32"),
        ("local_CNN.fc.weight", [1000, fdim], "float32"), ("local_CNN.fc.bias", [1000], "float32")))


ADAFOCUS_V2 = register_variant(Variant(
    name="adafocus_v2",
    summary="AdaFocusV2 (ActivityNet / FCVID / Mini-Kinetics form): MobileNetV2 or 96-px ResNet-50 glance, "
            "recurrent policy placing one P x P patch per frame, ResNet-50 focus, one exit per frame",
    build=AdaFocusV2,
    hyper_parameters=("num_segments", "patch_size", "input_size", "glance_arch", "glance_size", "focus_arch",
                      "stn_hidden_dim", "classifier_dim", "dropout", "fc_dropout", "sample", "pretrained",
                      "glance_weights", "focus_weights", "zero_init_residual"),
    encoders={"glance": GLANCE_ARCHS + tuple(OFFICIAL_ARCH_NAMES), "focus": FOCUS_ARCHS},
    policy="spatial: a GRU over the frames' encoded glance maps places one fixed P x P patch per frame; "
           "no temporal policy (every frame is processed)",
    classifier="running max-pooling over concat(glance, focus) features of the frames, one exit head per frame",
    exits="T stages: the exit after each frame (in the coarse-to-fine order with --sample)",
    frame_source="candidates",
    objective_terms=("cat", "glance", "focus"),
    flops=adafocus_v2_flops,
    checkpoint=CheckpointLayout(name="official AdaFocusV2", detect=detect_official, convert=convert_official,
                                manifest=official_manifest,
                                class_weight_keys=("glance_head.1.weight", "global_CNN_fc.1.weight")),
    datasets=("actnet", "fcvid", "minik"),
    exit_grid="v2",  # 16 exits, p = 5..39 over 10, q_k proportional to (p/10)^(k+1), no random baseline
    # One preset per released checkpoint (configs/v2_{dataset}_{glance}_p{P}.yaml).
    presets=tuple(f"v2_actnet_{glance}_p{p}" for p in (96, 128, 160) for glance in ("mbv2", "res50"))
    + tuple(f"v2_{dataset}_{glance}_p128" for dataset in ("fcvid", "minik") for glance in ("mbv2", "res50")),
    # The README commands' architecture and rates (ActivityNet, P = 128, MobileNetV2 glance; lr 0.002 is the default).
    defaults={"num_segments": 16, "patch_size": 128, "stn_hidden_dim": 2048, "sample": True, "weight_decay": 1e-4,
              "stn_lr_ratio": 0.1, "global_lr_ratio": 0.5, "classifier_lr_ratio": 5.0},
))
