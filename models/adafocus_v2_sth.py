"""AdaFocusV2 (CVPR 2022), the form released for Something-Something V1/V2 and Jester.

The same end-to-end idea as the ActivityNet form (:mod:`models.adafocus_v2`), built on TSM encoders
and TSN heads (docs/adafocus-v2.md, "Something-Something and Jester form"). A video comes as two
separately sampled frame sets: G glance frames and L focus frames (officially G = ``--num_segments``
= 8 and L = int(1.5 G) = 12).

1. **glance** — MobileNetV2 with a temporal shift over the G frames (the Uni-AdaFocus-TSM glance
   encoder): feature maps (B*G, 1280, h, w) and pooled features, then dropout (B, G, 1280).
2. **policy** — :class:`StackedMapPolicy` reads the G maps stacked along the channels (B, G*1280, h, w)
   and gives **one action per video**, ``(a_row, a_col)`` in (0, 1). It always reads detached maps.
3. **patch** — the same P x P box crops all L focus frames (:func:`models.adafocus_v2.crop_fixed_patches`
   on the (B, 3L, H, W) clip, one box per video).
4. **focus** — ResNet-50 with a temporal shift over the L patches, pooled features, dropout (B, L, 2048).
5. **heads (TSN)** — per encoder a *prediction head* on the detached features and a *live head*
   (trains the encoder); each is averaged over the frames. The prediction is glance prediction head +
   focus prediction head; it is the only exit (the official release has no early exit for this form).

In training the forward runs two focus passes: first on a uniformly random box per video, then on the
policy's box (official order). The official forward draws, in this order: the glance features'
dropout, the random actions (``torch.rand(B, 2)``), the random pass's focus dropout, the policy pass's.

This module also registers the variant ``adafocus_v2_tsm``: hyper-parameters, the FLOPs of its exit
counted from the module (:func:`adafocus_v2_tsm_flops`) and the official checkpoint layout
(``global_CNN.base_model``, ``local_CNN.new_fc``, ``policy_stn.N`` ...; :data:`OFFICIAL_KEYS`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Tuple

import torch
import torch.nn as nn

from .adafocus_v2 import POLICY_CONV_CHANNELS, crop_fixed_patches
from .backbones import FOCUS_ARCHS, glance_feature_size, mbv2_flat_to_torchvision, mbv2_torchvision_to_flat
from .inference import call_in_chunks
from .tsm import TSN_KEY_PAIRS, shifted_encoders, tsn_heads
from .uni_adafocus import IMAGENET_MEAN, IMAGENET_STD, normalise_uint8, video_frames
from .outputs import ClipPredictionLogits, detach_output
from .variants import CheckpointLayout, PrefixMap, Variant, register_variant

#: Widths of the policy's two hidden linear layers (official constants).
POLICY_HIDDEN = (1024, 512)


def default_focus_segments(num_glance_segments: int) -> int:
    """The official focus frame count for G glance frames: int(1.5 G)."""
    return int(1.5 * num_glance_segments)


class StackedMapPolicy(nn.Module):
    """Glance feature maps of all G frames (B, G, C, h, w) -> one patch position per video (B, 2).

    ``layers`` (official ``policy_stn`` indices): 0 Conv2d 1x1 (G*C -> 64, no bias), 1 BN, 2 Tanh,
    3 Flatten (64 h w), 4 Linear (-> 1024), 5 BN, 6 Tanh, 7 Linear (-> 512), 8 BN, 9 Tanh, 10 Linear
    (-> 2), 11 Sigmoid. The maps are stacked frame-major along the channels (channel g*C + c). Not
    causal: every frame's map informs the one box.
    """

    def __init__(self, in_channels: int, num_frames: int, feature_size: int):
        super().__init__()
        first, second = POLICY_HIDDEN
        self.layers = nn.Sequential(
            nn.Conv2d(in_channels * num_frames, POLICY_CONV_CHANNELS, kernel_size=1, bias=False),
            nn.BatchNorm2d(POLICY_CONV_CHANNELS),
            nn.Tanh(),
            nn.Flatten(),
            nn.Linear(POLICY_CONV_CHANNELS * feature_size * feature_size, first),
            nn.BatchNorm1d(first),
            nn.Tanh(),
            nn.Linear(first, second),
            nn.BatchNorm1d(second),
            nn.Tanh(),
            nn.Linear(second, 2),
            nn.Sigmoid(),
        )

    def forward(self, feature_maps: torch.Tensor) -> torch.Tensor:
        """feature_maps (B, G, C, h, w) -> actions (B, 2) (a_row, a_col)."""
        return self.layers(feature_maps.flatten(1, 2))


@dataclass
class FocusPassV2TSM:
    """One focus pass: all L focus frames cropped by one box per video, through the focus side."""

    prediction: torch.Tensor  # (B, C) glance prediction head + focus prediction head (frame averages)
    focus_logits: torch.Tensor  # (B, L, C) live focus head per frame
    focus_prediction: torch.Tensor  # (B, C) focus prediction head, frame average
    actions: torch.Tensor  # (B, 2) the box's (a_row, a_col)
    focus_features: torch.Tensor  # (B, L, Df)

    # What the objective's cross-entropies average over (``ops.objective``): the prediction, and the live
    # focus head's frame average (the official local_reg_logit).
    @property
    def cat_logits(self) -> torch.Tensor:
        return self.prediction.unsqueeze(1)

    @property
    def focus_loss_logits(self) -> torch.Tensor:
        return self.focus_logits.mean(dim=1, keepdim=True)


@dataclass
class AdaFocusV2TSMOutput(ClipPredictionLogits):
    """Everything one forward produces. ``random_pass`` is the training forward's pass on a random box
    (None in evaluation)."""

    prediction: torch.Tensor  # (B, C) the official prediction (glance + focus prediction heads)
    glance_logits: torch.Tensor  # (B, G, C) live glance head per frame
    focus_logits: torch.Tensor  # (B, L, C) live focus head per frame (policy box)
    glance_prediction: torch.Tensor  # (B, C) glance prediction head, frame average
    focus_prediction: torch.Tensor  # (B, C) focus prediction head, frame average (policy box)
    actions: torch.Tensor  # (B, 2) the policy's box (a_row, a_col)
    glance_features: torch.Tensor  # (B, G, Dg) after the feature dropout
    focus_features: torch.Tensor  # (B, L, Df) after the feature dropout
    random_pass: Optional[FocusPassV2TSM] = None
    input_size: int = 0  # frame side and patch size: the geometry of ``patch_boxes``
    patch_size: int = 0

    @property
    def glance_reg_logits(self) -> torch.Tensor:
        """(B, C) the live glance head's frame average (official ``global_reg_logit``)."""
        return self.glance_logits.mean(dim=1)

    @property
    def focus_reg_logits(self) -> torch.Tensor:
        """(B, C) the live focus head's frame average (official ``local_reg_logit``)."""
        return self.focus_logits.mean(dim=1)

    @property
    def patch_boxes(self) -> torch.Tensor:
        """(B, L, 4) the policy box at every focus frame as (x1, y1, x2, y2) in input pixels."""
        side = self.input_size - self.patch_size
        y1, x1 = self.actions[:, 0] * side, self.actions[:, 1] * side
        box = torch.stack((x1, y1, x1 + self.patch_size, y1 + self.patch_size), dim=-1)  # (B, 4)
        return box.unsqueeze(1).expand(-1, self.focus_logits.shape[1], -1)

    # What the objective's cross-entropies average over (``ops.objective``, terms cat, glance, focus): the
    # prediction (``cat_logits``), the live heads' frame averages; the random pass gives the other half of cat
    # and focus.
    @property
    def glance_loss_logits(self) -> torch.Tensor:
        return self.glance_logits.mean(dim=1, keepdim=True)

    @property
    def focus_loss_logits(self) -> torch.Tensor:
        return self.focus_logits.mean(dim=1, keepdim=True)

    def detach(self) -> "AdaFocusV2TSMOutput":
        return detach_output(self)


class AdaFocusV2TSM(nn.Module):
    """The AdaFocusV2 network (Something-Something / Jester form). Keyword names match the command-line
    flags.

    forward(video, generator=None, glance=None): ``video`` the L focus frames (B, L, 3, H, W) or the
    official flattened layout (B, 3L, H, W); ``glance`` the G glance frames in either layout (None: G
    evenly spaced focus frames stand in). uint8 frames are normalised here (ImageNet mean/std), floating
    frames are taken as normalised. Returns :class:`AdaFocusV2TSMOutput`. In training the random box
    comes from ``generator`` (None: the global RNG, as officially).

    ``num_segments`` = ``num_focus_segments``: L, the focus frames (the clip the data loader samples;
    default int(1.5 G)); ``num_glance_segments``: G. ``dropout``: on both encoders' pooled features. ``shift_div``: 1 / the
    fraction of channels shifted each way.
    """

    variant = "adafocus_v2_tsm"

    #: In evaluation, run the focus encoder on at most this many patches at a time, in whole clips
    #: (``models.inference.prepare_for_inference`` sets it on CPUs; None: all at once).
    focus_chunk: Optional[int] = None

    def __init__(self, num_classes: int, num_segments: Optional[int] = None, num_glance_segments: int = 8,
                 num_focus_segments: Optional[int] = None, patch_size: int = 144, input_size: int = 224, dropout: float = 0.5, shift_div: int = 8,
                 glance_arch: str = "mbv2", focus_arch: str = "resnet50", pretrained: bool = False,
                 glance_weights: Optional[str] = None, focus_weights: Optional[str] = None,
                 zero_init_residual: bool = False):
        super().__init__()
        if num_glance_segments < 1:
            raise ValueError(f"num_glance_segments must be at least 1, got {num_glance_segments}")
        if None not in (num_segments, num_focus_segments) and num_segments != num_focus_segments:
            raise ValueError(f"num_focus_segments ({num_focus_segments}) must equal num_segments ({num_segments}): "
                             "every frame of the focus clip is a focus frame")
        num_focus = next((n for n in (num_focus_segments, num_segments) if n is not None),
                         default_focus_segments(num_glance_segments))
        if num_focus < 1:
            raise ValueError(f"num_segments (the focus frames) must be at least 1, got {num_focus}")
        if not 0 < patch_size <= input_size:
            raise ValueError(f"patch_size must be in 1..input_size ({input_size}), got {patch_size}")
        self.num_classes, self.num_glance, self.num_focus = num_classes, num_glance_segments, num_focus
        self.num_segments = num_focus
        self.patch_size, self.input_size = patch_size, input_size
        self.feature_size = glance_feature_size(input_size)
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN).view(3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD).view(3, 1, 1), persistent=False)

        self.glance, self.focus = shifted_encoders(num_glance_segments, num_focus, shift_div, glance_arch,
                                                   focus_arch, pretrained, glance_weights, focus_weights,
                                                   zero_init_residual)
        self.feature_dropout = nn.Dropout(dropout)
        gdim, fdim = self.glance.feature_dim, self.focus.feature_dim
        (self.glance_prediction_head, self.glance_head,
         self.focus_prediction_head, self.focus_head) = tsn_heads(num_classes, gdim, fdim)
        self.policy = nn.Module()  # the family's policy container; this form has only a spatial branch
        self.policy.spatial = StackedMapPolicy(gdim, num_glance_segments, self.feature_size)

    # ------------------------------------------------------------------------------------------
    # inputs
    # ------------------------------------------------------------------------------------------
    def frames(self, video: torch.Tensor, count: int, name: str) -> torch.Tensor:
        """(B, count, 3, H, W) view of ``video`` given in either layout, checked."""
        return video_frames(video, count, self.input_size, name)

    def inputs(self, video: torch.Tensor, glance: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        """(focus frames (B, L, 3, H, W), glance frames (B, G, 3, H, W)), normalised; without glance
        frames, G evenly spaced focus frames (``i * L // G``) stand in."""
        video = self.normalise(self.frames(video, self.num_focus, "video"))
        if glance is None:
            rows = torch.arange(self.num_glance, device=video.device) * self.num_focus // self.num_glance
            return video, video.index_select(1, rows)
        return video, self.normalise(self.frames(glance, self.num_glance, "glance"))

    def normalise(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 frames (..., 3, H, W) -> normalised float32; floating frames pass through."""
        return normalise_uint8(frames, self.pixel_mean, self.pixel_std)

    # ------------------------------------------------------------------------------------------
    # stages
    # ------------------------------------------------------------------------------------------
    def crop(self, clips: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """One box per video on every frame: clips (B, 3L, H, W), actions (B, 2) -> (B, 3L, P, P)."""
        return crop_fixed_patches(clips, actions, self.patch_size)

    def glance_pass(self, glance: torch.Tensor):
        """Normalised glance frames (B, G, 3, H, W) -> (maps (B, G, Dg, h, w), features (B, G, Dg) after
        the dropout, live logits (B, G, C), prediction-head frame average (B, C))."""
        b, g = glance.shape[:2]
        fmap, pooled = self.glance(glance.flatten(0, 1))  # (B*G, Dg, h, w), (B*G, Dg)
        features = self.feature_dropout(pooled).view(b, g, -1)
        return (fmap.view(b, g, *fmap.shape[1:]), features, self.glance_head(features),
                self.glance_prediction_head(features.detach()).mean(dim=1))

    def focus_pass(self, video: torch.Tensor, actions: torch.Tensor, glance_prediction: torch.Tensor) -> FocusPassV2TSM:
        """Normalised focus frames (B, L, 3, H, W), one box per video (B, 2) -> one focus pass."""
        b, num_focus = video.shape[:2]
        patches = self.crop(video.flatten(1, 2), actions).view(b * num_focus, 3, self.patch_size, self.patch_size)
        rows = None if self.training or not self.focus_chunk else max(1, self.focus_chunk // num_focus) * num_focus
        features = self.feature_dropout(call_in_chunks(self.focus, patches, rows)).view(b, num_focus, -1)
        focus_prediction = self.focus_prediction_head(features.detach()).mean(dim=1)
        return FocusPassV2TSM(glance_prediction + focus_prediction, self.focus_head(features), focus_prediction,
                              actions, features)

    def forward(self, video: torch.Tensor, generator: Optional[torch.Generator] = None,
                glance: Optional[torch.Tensor] = None) -> AdaFocusV2TSMOutput:
        video, glance = self.inputs(video, glance)
        fmap, glance_features, glance_logits, glance_prediction = self.glance_pass(glance)
        b = video.shape[0]
        random_pass = None
        if self.training:  # official: the random box first, torch.rand(B, 2) on the global RNG
            random_actions = (torch.rand(b, 2, device=video.device) if generator is None else
                              torch.rand(b, 2, generator=generator, device=generator.device).to(video.device))
            random_pass = self.focus_pass(video, random_actions, glance_prediction)
        actions = self.policy.spatial(fmap.detach())  # (B, 2)
        policy_pass = self.focus_pass(video, actions, glance_prediction)
        return AdaFocusV2TSMOutput(policy_pass.prediction, glance_logits, policy_pass.focus_logits, glance_prediction,
                                   policy_pass.focus_prediction, actions, glance_features, policy_pass.focus_features,
                                   random_pass, self.input_size, self.patch_size)


# --------------------------------------------------------------------------------------------------
# FLOPs of the exit, counted from the module
# --------------------------------------------------------------------------------------------------
@dataclass
class AdaFocusV2TSMFlops:
    """GMACs (the papers' GFLOPs) of each component, counted on dummy inputs of the configured size."""

    glance_frame: float  # shifted MobileNetV2 on one glance frame (x G)
    glance_heads: float  # live + prediction glance heads on one frame (x G)
    policy: float  # on all G maps, once
    patch_crop: float  # one box on all L frames, once
    focus_patch: float  # shifted ResNet on one patch (x L)
    focus_heads: float  # live + prediction focus heads on one patch (x L)
    num_glance: int
    num_focus: int

    def stages(self) -> List[float]:
        """[the one exit]: everything the eval forward runs (both heads of both encoders, as it does)."""
        return [self.num_glance * (self.glance_frame + self.glance_heads) + self.policy + self.patch_crop
                + self.num_focus * (self.focus_patch + self.focus_heads)]


def adafocus_v2_tsm_flops(model: AdaFocusV2TSM) -> AdaFocusV2TSMFlops:
    """Count every component of ``model`` (an :class:`AdaFocusV2TSM`)."""
    from .flops import count_gmacs, counting  # models.flops imports the main network, not this one

    with counting(model) as zeros:
        g, num_focus, size, p = model.num_glance, model.num_focus, model.input_size, model.patch_size
        gdim, fdim, fs = model.glance.feature_dim, model.focus.feature_dim, model.feature_size
        return AdaFocusV2TSMFlops(
            glance_frame=count_gmacs(model.glance, zeros(g, 3, size, size)) / g,
            glance_heads=count_gmacs(lambda x: (model.glance_head(x), model.glance_prediction_head(x)), zeros(1, gdim)),
            policy=count_gmacs(model.policy.spatial, zeros(1, g, gdim, fs, fs)),
            patch_crop=count_gmacs(model.crop, zeros(1, 3 * num_focus, size, size), zeros(1, 2) + 0.5),
            focus_patch=count_gmacs(model.focus, zeros(num_focus, 3, p, p)) / num_focus,
            focus_heads=count_gmacs(lambda x: (model.focus_head(x), model.focus_prediction_head(x)), zeros(1, fdim)),
            num_glance=g, num_focus=num_focus)


# --------------------------------------------------------------------------------------------------
# The official checkpoint layout (660 keys for G = 8; only C and G change shapes)
# --------------------------------------------------------------------------------------------------
#: (official prefix, our prefix), most specific first: the TSN encoders and heads as in the tsm variant's
#: layout, and the policy; MobileNetV2's inner names are converted from the official flat layout.
OFFICIAL_KEYS = PrefixMap(
    pairs=TSN_KEY_PAIRS + (
        ("policy_stn.", "policy.spatial.layers."),
    ),
    detect_prefixes=("policy_stn.",),
    order=("global_CNN.", "local_CNN.", "policy_stn."),
    inner={"global_CNN.base_model.": (mbv2_flat_to_torchvision, mbv2_torchvision_to_flat)},
)


def detect_official(keys: Iterable[str]) -> bool:
    """Whether state-dict keys (without wrapper prefixes) are an official AdaFocusV2 Sth-Sth / Jester state
    dict: TSN-wrapped backbones (``global_CNN.base_model.``) and a ``policy_stn`` without a GRU (the
    ActivityNet form's ``policy_stn`` has ``policy_stn.gru.``; Uni-AdaFocus-TSM has no ``policy_stn``)."""
    keys = list(keys)
    return (any(k.startswith("global_CNN.base_model.") for k in keys) and OFFICIAL_KEYS.detect(keys)
            and not any(k.startswith("policy_stn.gru.") for k in keys))


def convert_official(state: Dict[str, torch.Tensor]) -> Tuple[Dict[str, torch.Tensor], List[str], List[str]]:
    """Official state dict -> (our state dict, dropped unused keys (none), unknown keys)."""
    return OFFICIAL_KEYS.convert(state)


def official_manifest(model: AdaFocusV2TSM) -> List[Tuple[str, List[int], str]]:
    """The official state-dict manifest ``[key, shape, dtype]`` of a configuration, in official order."""
    return OFFICIAL_KEYS.manifest(model)


ADAFOCUS_V2_TSM = register_variant(Variant(
    name="adafocus_v2_tsm",
    summary="AdaFocusV2 (Something-Something V1/V2 / Jester form): temporal-shift MobileNetV2 glance on G frames, "
            "one P x P box per video from the stacked glance maps, temporal-shift ResNet-50 focus on L = int(1.5 G) "
            "frames, TSN heads",
    build=AdaFocusV2TSM,
    hyper_parameters=("num_segments", "num_glance_segments", "num_focus_segments", "patch_size", "input_size", "dropout", "shift_div",
                      "glance_arch", "focus_arch", "pretrained", "glance_weights", "focus_weights",
                      "zero_init_residual"),
    encoders={"glance": ("mbv2",), "focus": FOCUS_ARCHS},
    policy="spatial: a convolution + MLP over the stacked maps of all G glance frames places one fixed P x P box "
           "per video, the same on every focus frame; no temporal policy (every focus frame is processed)",
    classifier="TSN heads: the prediction is the sum of the frame-averaged glance and focus heads on detached "
               "features; live heads train the encoders",
    exits="1 stage: the prediction after all L focus frames (the official form has no early exit)",
    frame_source="separate",
    objective_terms=("cat", "glance", "focus"),
    flops=adafocus_v2_tsm_flops,
    checkpoint=CheckpointLayout(name="official AdaFocusV2 Sth-Sth/Jester", detect=detect_official,
                                convert=convert_official, manifest=official_manifest,
                                class_weight_keys=("glance_prediction_head.weight", "global_CNN.new_fc.weight")),
    datasets=("something", "somethingv2", "jester"),
    # One per released checkpoint (configs/v2_*.yaml: Sth-Sth V1 / V2 at P = 128 ... 176, Jester at 128 and 176).
    presets=tuple(f"v2_{name}_p{p}" for name in ("sthv1", "sthv2") for p in (128, 144, 160, 176))
    + ("v2_jester_p128", "v2_jester_p176"),
    # The README command's architecture and rates (lr 0.01, weight decay 5e-4, clip 20, stn 0.01, global 0.5).
    defaults={"num_segments": 12, "num_glance_segments": 8, "num_focus_segments": 12, "patch_size": 144,
              "dropout": 0.5, "dataset": "something", "weight_decay": 5e-4, "clip_gradient": 20.0,
              "stn_lr_ratio": 0.01, "global_lr_ratio": 0.5},
))
