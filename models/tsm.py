"""Uni-AdaFocus-TSM: temporal-shift encoders, one patch per video, two exits (paper §5.2, App. H.1).

The variant of the paper's Table 4 (Something-Something V1/V2, Jester). It shares the patch geometry,
frame selection, policy branches and checkpoint machinery of the main variant and differs in:

* **encoders** — MobileNetV2 (glance) and ResNet-50 (focus) with a temporal shift on the residual
  branch of their blocks (``models.temporal_shift``), over the T_G glance frames and the T_L focus
  frames of each video; dropout on the pooled features;
* **two frame sets** — the glance frames come with the video, sampled apart from the T0 focus
  candidates (``frame_source='separate'``); without them, T_G evenly spaced candidates are used;
* **one patch per video** — the spatial policy's last convolution spans all T_G glance maps
  (kernel (T_G, h, w)), and the same box crops every focus frame and the glance maps;
* **TSN heads** — each encoder has a *prediction head* on its detached features and a *live head*
  that trains it; the prediction is the sum of the two prediction heads' frame averages;
* **two exits** — after the glance (the live glance head's average, as the official early exit) and
  after the focus frames (the prediction).

Forward, for B videos (shapes in comments; H = W = input_size):

1. glance: (B, T_G, 3, H, W) -> maps (B*T_G, Dg, h, w), features (B*T_G, Dg) -> both glance heads;
2. policy (float32, on detached features): frame weights (B, T_G); one action (B, 4); the auxiliary
   head on the glance maps cropped by it and averaged over frames and space;
3. frame selection: T_L of the T0 candidates at the quantiles of the weights' CDF;
4. focus: the patches (B*T_L, 3, P, P) through the focus encoder -> both focus heads; in training a
   second pass with random patches of native size shares the encoder call.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn

from . import frame_selection
from .backbones import (FocusEncoder, GlanceEncoder, glance_feature_size, mbv2_flat_to_torchvision,
                        mbv2_torchvision_to_flat)
from .patches import PatchGeometry
from .policy import SpatialPolicy, TemporalPolicy
from .temporal_shift import shift_mobilenet_v2, shift_resnet
from .variants import CheckpointLayout, Variant, register_variant

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class TSMFocusPass:
    """The focus encoder's view of one set of patches."""

    prediction: torch.Tensor  # (B, C) glance + focus prediction heads, frame-averaged
    focus_logits: torch.Tensor  # (B, T_L, C) live focus head per frame
    focus_actions: torch.Tensor  # (B, T_L, 4) the patches' actions (one box repeated)

    # What the objective's cross-entropies average over (see TSMOutput).
    @property
    def cat_logits(self) -> torch.Tensor:
        return self.prediction.unsqueeze(1)

    @property
    def focus_loss_logits(self) -> torch.Tensor:
        return self.focus_logits.mean(dim=1, keepdim=True)


@dataclass
class TSMOutput:
    """Everything one forward pass produces. ``random_pass`` is set in training only."""

    exit_logits: torch.Tensor  # (B, 2, C) exit 0: live glance head averaged; exit 1: the prediction
    glance_logits: torch.Tensor  # (B, T_G, C) live glance head per frame (trains the glance encoder)
    focus_logits: torch.Tensor  # (B, T_L, C) live focus head per frame (trains the focus encoder)
    glance_prediction_logits: torch.Tensor  # (B, T_G, C) glance prediction head (detached input)
    focus_prediction_logits: torch.Tensor  # (B, T_L, C) focus prediction head (detached input)
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
    random_pass: Optional[TSMFocusPass] = None

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


class UniAdaFocusTSM(nn.Module):
    """The Uni-AdaFocus-TSM network. Keyword names match the command-line flags.

    forward(video, generator=None, glance=None): ``video`` the T0 focus candidates (B, T0, 3, H, W) (or
    the official flattened (B, T0*3, H, W)); ``glance`` the T_G glance frames (B, T_G, 3, H, W) (or
    flattened), sampled apart from the candidates; None takes T_G evenly spaced candidates. uint8
    frames are normalised here, floating-point frames are taken as normalised. Training draws
    (stratified selection offsets, random patches) come from ``generator`` or the global RNG.
    """

    variant = "tsm"

    def __init__(self, num_classes: int, num_segments: int = 36, num_glance_segments: int = 8,
                 num_focus_segments: int = 12, patch_size: int = 128, input_size: int = 224,
                 stn_hidden_dim: int = 128, temporal_hidden_dim: int = 64, dropout: float = 0.5,
                 temperature: float = 1.0, shift_div: int = 8, glance_arch: str = "mbv2",
                 focus_arch: str = "resnet50", pretrained: bool = False, glance_weights: Optional[str] = None,
                 focus_weights: Optional[str] = None):
        super().__init__()
        if num_focus_segments > num_segments:
            raise ValueError(f"num_focus_segments ({num_focus_segments}) > num_segments ({num_segments})")
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.num_classes = num_classes
        self.num_segments, self.num_glance, self.num_focus = num_segments, num_glance_segments, num_focus_segments
        self.temperature = temperature
        self.geometry = PatchGeometry(patch_size, input_size, glance_feature_size(input_size))

        # ImageNet weights load into the plain encoders; the shift then wraps their convolutions.
        self.glance = GlanceEncoder(glance_arch, pretrained=pretrained, weights=glance_weights)
        shift_mobilenet_v2(self.glance.features, num_glance_segments, shift_div)
        self.focus = FocusEncoder(focus_arch, pretrained=pretrained, weights=focus_weights)
        shift_resnet(self.focus, num_focus_segments, shift_div)
        self.feature_dropout = nn.Dropout(dropout)
        gdim, fdim = self.glance.feature_dim, self.focus.feature_dim
        self.glance_prediction_head = nn.Linear(gdim, num_classes)  # official global_CNN.new_fc
        self.glance_head = nn.Linear(gdim, num_classes)  # official global_CNN.new_new_fc
        self.focus_prediction_head = nn.Linear(fdim, num_classes)  # official local_CNN.new_fc
        self.focus_head = nn.Linear(fdim, num_classes)  # official local_CNN.new_new_fc
        for head in (self.glance_prediction_head, self.glance_head, self.focus_prediction_head, self.focus_head):
            nn.init.normal_(head.weight, 0.0, 0.001)
            nn.init.zeros_(head.bias)
        self.spatial_head = nn.Linear(gdim, num_classes)  # official aux_fc
        feature_size = self.geometry.feature_size
        self.policy = nn.Module()
        self.policy.spatial = SpatialPolicy(gdim, stn_hidden_dim, feature_size, temporal_kernel=num_glance_segments)
        self.policy.temporal = TemporalPolicy(gdim, temporal_hidden_dim)
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN).view(3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD).view(3, 1, 1), persistent=False)

    #: Two exits: the glance alone, then glance and focus.
    num_exit_stages = 2

    @property
    def patch_size(self) -> int:
        return self.geometry.patch_size

    @property
    def input_size(self) -> int:
        return self.geometry.input_size

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

    def normalise(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 frames (..., 3, H, W) -> normalised float32; floating frames pass through."""
        if frames.dtype == torch.uint8:
            return (frames.float().div_(255.0) - self.pixel_mean) / self.pixel_std
        return frames

    def _inputs(self, video: torch.Tensor, glance: Optional[torch.Tensor]):
        """(candidates (B, T0, 3, H, W), glance frames (B, T_G, 3, H, W)) in either layout, checked;
        without glance frames, T_G evenly spaced candidates stand in for a separately sampled clip."""
        video = self._frames(video, self.num_segments, "video")
        if glance is None:
            b, t0 = video.shape[:2]
            rows = frame_selection.glance_frame_indices(t0, self.num_glance, b, device=video.device)
            glance = video[torch.arange(b, device=video.device).unsqueeze(1), rows]
        return video, self._frames(glance, self.num_glance, "glance")

    def forward(self, video: torch.Tensor, generator: Optional[torch.Generator] = None,
                glance: Optional[torch.Tensor] = None) -> TSMOutput:
        video, glance = self._inputs(video, glance)
        device_type = video.device.type
        amp = torch.is_autocast_enabled(device_type), torch.get_autocast_dtype(device_type)
        with torch.autocast(device_type, enabled=False):
            return self._forward(video, glance, amp, generator)

    def _encode(self, encoder: nn.Module, images: torch.Tensor, amp):
        """Run an encoder under the caller's autocast setting; float32 results."""
        enabled, dtype = amp
        with torch.autocast(images.device.type, dtype=dtype, enabled=enabled):
            out = encoder(images)
        return tuple(o.float() for o in out) if isinstance(out, tuple) else out.float()

    # ------------------------------------------------------------------------------------------
    # stages (shared by forward and the adaptive early-exit runtime)
    # ------------------------------------------------------------------------------------------
    def glance_stage(self, glance: torch.Tensor, amp):
        """Step 1: glance frames (B, T_G, 3, H, W) -> maps (B, T_G, Dg, h, w) detached, features (B, T_G, Dg)
        (after dropout)."""
        b, g = glance.shape[:2]
        fmap, feats = self._encode(self.glance, self.normalise(glance).flatten(0, 1), amp)
        return fmap.detach().view(b, g, *fmap.shape[1:]), self.feature_dropout(feats).view(b, g, -1)

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
                    rows: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Step 4: the focus encoder on the patches of the videos ``rows`` (n,) (default all) of
        ``video`` (B, T0, 3, H, W): focus_indices (n, T_L); action_sets (S, n, 4), S boxes per video that
        share one encoder call. Returns features (S, n, T_L, Df) after dropout."""
        if rows is None:
            rows = torch.arange(video.shape[0], device=video.device)
        n, num_focus = focus_indices.shape
        frames = self.normalise(video[rows.unsqueeze(1), focus_indices.to(video.device)]).flatten(0, 1)  # (n*T_L, ...)
        boxes = action_sets.detach().unsqueeze(2).expand(-1, n, num_focus, 4)  # (S, n, T_L, 4)
        patches = torch.cat([self.geometry.crop(frames, a.reshape(-1, 4)) for a in boxes])  # (S*n*T_L, 3, P, P)
        feats = self._encode(self.focus, patches, amp)
        return self.feature_dropout(feats).view(len(action_sets), n, num_focus, -1)

    def _forward(self, video, glance, amp, generator) -> TSMOutput:
        b, g, num_focus = glance.shape[0], self.num_glance, self.num_focus
        fmap, gfeat = self.glance_stage(glance, amp)  # (B, T_G, Dg, h, w), (B, T_G, Dg)
        glance_logits = self.glance_head(gfeat)  # (B, T_G, C)
        glance_prediction = self.glance_prediction_head(gfeat.detach())  # (B, T_G, C)
        frame_weights, selection_weights, actions, spatial_logits, focus_indices = self.policy_stage(
            fmap, gfeat, video.shape[1], generator)

        # the policy's boxes (+ random boxes of native size in training, in the same encoder call)
        sets = [actions.detach()]
        if self.training:
            gen_device = generator.device if generator is not None else video.device
            random_actions = torch.rand(b, 4, generator=generator, device=gen_device).to(video.device)
            random_actions[:, 2:] = self.geometry.native_scale
            sets.append(random_actions)
        ffeat = self.focus_stage(video, focus_indices, torch.stack(sets), amp)  # (S, B, T_L, Df)
        focus_logits = self.focus_head(ffeat)  # (S, B, T_L, C)
        focus_prediction = self.focus_prediction_head(ffeat.detach())
        predictions = glance_prediction.mean(dim=1) + focus_prediction.mean(dim=2)  # (S, B, C)

        focus_actions = sets[0].unsqueeze(1).expand(b, num_focus, 4)  # (B, T_L, 4)
        random_pass = None
        if self.training:
            random_pass = TSMFocusPass(predictions[1], focus_logits[1], sets[1].unsqueeze(1).expand(b, num_focus, 4))
        return TSMOutput(
            exit_logits=torch.stack((glance_logits.mean(dim=1), predictions[0]), dim=1),
            glance_logits=glance_logits, focus_logits=focus_logits[0],
            glance_prediction_logits=glance_prediction, focus_prediction_logits=focus_prediction[0],
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
        fmap, gfeat = self.glance_stage(glance, amp)
        keep = yield self.glance_head(gfeat).mean(dim=1)
        fmap, gfeat = fmap[keep], gfeat[keep]
        *_, actions, _, focus_indices = self.policy_stage(fmap, gfeat, video.shape[1], auxiliary=False)
        if lap is not None:
            lap("policy")
        ffeat = self.focus_stage(video, focus_indices, actions.unsqueeze(0), amp, rows=keep)[0]  # (m, T_L, Df)
        yield self.glance_prediction_head(gfeat).mean(dim=1) + self.focus_prediction_head(ffeat).mean(dim=1)


# --------------------------------------------------------------------------------------------------
# The official checkpoint layout (672 keys for T_G = 8; only C and T_G change shapes)
# --------------------------------------------------------------------------------------------------
#: (official prefix, our prefix), most specific first; the key's remainder is kept (MobileNetV2's inner
#: names are converted from the official flat layout).
PREFIXES = (
    ("global_CNN.base_model.", "glance."),
    ("global_CNN.new_fc.", "glance_prediction_head."),
    ("global_CNN.new_new_fc.", "glance_head."),
    ("local_CNN.base_model.", "focus."),
    ("local_CNN.new_fc.", "focus_prediction_head."),
    ("local_CNN.new_new_fc.", "focus_head."),
    ("aux_fc.", "spatial_head."),
    ("spatial_policy.encoder.", "policy.spatial.layers."),
    ("temporal_policy.Tconv.", "policy.temporal.layers."),
)


def _translate(key: str, to_ours: bool) -> str:
    for official, ours in PREFIXES:
        source, target = (official, ours) if to_ours else (ours, official)
        if key.startswith(source):
            rest = key[len(source):]
            if official == "global_CNN.base_model.":
                rest = (mbv2_flat_to_torchvision if to_ours else mbv2_torchvision_to_flat)(rest)
            return target + rest
    raise KeyError(key)


def is_official_layout(keys) -> bool:
    """Whether state-dict keys (without 'module.') are in the official TSM layout (TSN wrappers)."""
    return any(k.startswith(("global_CNN.base_model.", "local_CNN.base_model.")) for k in keys)


def convert_official_state_dict(state_dict):
    """Official TSM state dict -> (our state dict, dropped keys (none: no unused heads), unknown keys)."""
    converted, unknown = {}, []
    for key, value in state_dict.items():
        try:
            converted[_translate(key, to_ours=True)] = value
        except KeyError:
            unknown.append(key)
    return converted, [], unknown


def official_manifest(model):
    """The official ``[key, shape, dtype]`` list of a configuration, in the official module order."""
    order = ("global_CNN.", "local_CNN.", "aux_fc.", "spatial_policy.", "temporal_policy.")
    entries = [(_translate(k, to_ours=False), list(v.shape), str(v.dtype).replace("torch.", ""))
               for k, v in model.state_dict().items()]
    return sorted(entries, key=lambda e: next(i for i, prefix in enumerate(order) if e[0].startswith(prefix)))


# --------------------------------------------------------------------------------------------------
# FLOPs of the two exits, counted from the module
# --------------------------------------------------------------------------------------------------
@dataclass
class TSMFlops:
    """GMACs (the papers' GFLOPs) of each component, counted on dummy inputs of the configured size."""

    glance_frame: float  # shifted MobileNetV2 on one frame (x T_G)
    glance_heads: float  # live + prediction glance heads on one frame (x T_G)
    spatial_policy: float  # on all T_G maps, once
    temporal_policy: float  # on all T_G features, once
    spatial_head: float  # auxiliary head (not needed at inference; not charged)
    patch_crop: float  # one P x P patch (x T_L)
    focus_patch: float  # shifted ResNet on one patch (x T_L)
    focus_heads: float  # prediction focus head on one patch (x T_L)
    num_glance: int
    num_focus: int

    def stages(self) -> list:
        """[exit 0 (glance only), exit 1 (T_L focus frames)]: what inference spends to reach each exit."""
        glance = self.num_glance * (self.glance_frame + self.glance_heads)
        focus = self.spatial_policy + self.temporal_policy + self.num_focus * (
            self.patch_crop + self.focus_patch + self.focus_heads)
        return [glance, glance + focus]


def tsm_flops(model: UniAdaFocusTSM) -> TSMFlops:
    """Count every component of ``model`` (a :class:`UniAdaFocusTSM`)."""
    from .flops import count_gmacs  # models.flops imports the main network, not this one

    was_training = model.training
    model.eval()
    try:
        param = next(model.parameters())
        zeros = lambda *shape: torch.zeros(*shape, device=param.device, dtype=param.dtype)  # noqa: E731
        g, num_focus, size, p = model.num_glance, model.num_focus, model.input_size, model.patch_size
        gdim, fdim, fs = model.glance.feature_dim, model.focus.feature_dim, model.geometry.feature_size
        return TSMFlops(
            glance_frame=count_gmacs(model.glance, zeros(g, 3, size, size)) / g,
            glance_heads=count_gmacs(lambda x: (model.glance_head(x), model.glance_prediction_head(x)), zeros(1, gdim)),
            spatial_policy=count_gmacs(model.policy.spatial, zeros(1, g, gdim, fs, fs)),
            temporal_policy=count_gmacs(model.policy.temporal, zeros(1, g, gdim)),
            spatial_head=count_gmacs(model.spatial_head, zeros(1, gdim)),
            patch_crop=count_gmacs(model.geometry.crop, zeros(1, 3, size, size), zeros(1, 4) + 0.5),
            focus_patch=count_gmacs(model.focus, zeros(num_focus, 3, p, p)) / num_focus,
            focus_heads=count_gmacs(model.focus_prediction_head, zeros(1, fdim)),
            num_glance=g, num_focus=num_focus)
    finally:
        model.train(was_training)


TSM = register_variant(Variant(
    name="tsm",
    summary="Uni-AdaFocus-TSM: temporal-shift MobileNetV2 glance + ResNet-50 focus, one patch per video "
            "(paper Table 4: Something-Something V1/V2, Jester)",
    build=UniAdaFocusTSM,
    hyper_parameters=("num_segments", "num_glance_segments", "num_focus_segments", "patch_size", "input_size",
                      "stn_hidden_dim", "temporal_hidden_dim", "dropout", "temperature", "shift_div", "glance_arch",
                      "focus_arch", "pretrained", "glance_weights", "focus_weights"),
    encoders={"glance": ("mbv2",), "focus": ("resnet18", "resnet34", "resnet50")},
    policy="spatial: one deformable patch per video from all T_G glance maps, the same box on every focus "
           "frame; temporal: frame weights over the T_G glance frames (detached input), T_L of the T0 "
           "candidates at their CDF quantiles",
    classifier="TSN heads: the prediction is the sum of the frame-averaged glance and focus heads on detached "
               "features; live heads train the encoders",
    exits="2 stages: the glance alone (live glance head), then glance and focus (the prediction)",
    frame_source="separate",
    objective_terms=("cat", "glance", "focus", "temporal", "spatial", "norm"),
    flops=tsm_flops,
    checkpoint=CheckpointLayout(name="official TSM", detect=is_official_layout, convert=convert_official_state_dict,
                                manifest=official_manifest, class_weight_keys=("spatial_head.weight", "aux_fc.weight")),
    datasets=("something", "somethingv2", "jester"),
    presets=tuple(f"{name}_p{patch}_8x{focus}" for name in ("sthv1", "sthv2") for patch, focus in
                  ((96, 8), (96, 12), (128, 12), (128, 16))) + ("jester_p128_8x12",),
    exit_grid="tsm",
    mc_draws=lambda num_segments, num_glance, num_focus: num_glance // 3,  # official: T_G // 3 whatever T0 and T_L
    # The official tsm defaults of the architecture (the README commands set the rest).
    defaults={"num_segments": 36, "num_glance_segments": 8, "num_focus_segments": 12, "patch_size": 128,
              "dropout": 0.5, "dataset": "something"},
    choices={"spatial_objective": ("official",)},  # one patch per video: no per-frame spatial term
))
