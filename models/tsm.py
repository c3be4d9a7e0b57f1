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

The data flow (glance, policy, frame selection, focus, two exits) is the one of every
one-patch-per-video member, :class:`models.one_patch.OnePatchNetwork`; this module gives its
encoders and heads, the official checkpoint filter and the FLOPs of its exits.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import torch.nn as nn

from .backbones import (FocusEncoder, GlanceEncoder, glance_feature_size, mbv2_flat_to_torchvision,
                        mbv2_torchvision_to_flat)
from .one_patch import OnePatchNetwork
from .patches import PatchGeometry
from .policy import SpatialPolicy, TemporalPolicy
from .temporal_shift import shift_mobilenet_v2, shift_resnet
from .variants import CheckpointLayout, PrefixMap, Variant, register_variant


def shifted_encoders(num_glance: int, num_focus: int, shift_div: int = 8, glance_arch: str = "mbv2",
                     focus_arch: str = "resnet50", pretrained=False, glance_weights=None, focus_weights=None,
                     zero_init_residual: bool = False) -> Tuple[GlanceEncoder, FocusEncoder]:
    """The temporal-shift encoders of the Sth-Sth / Jester members: MobileNetV2 shifted over clips of
    ``num_glance`` frames (frames (N*T_G, 3, H, W) -> map, pooled) and a ResNet shifted over clips of
    ``num_focus`` frames (patches (N*T_L, 3, P, P) -> pooled). ImageNet weights load into the plain
    encoders; the shift then wraps their convolutions (official keys ``...conv.0.net.weight``).
    ``pretrained``: for both encoders, or a (glance, focus) pair."""
    glance_pretrained, focus_pretrained = pretrained if isinstance(pretrained, tuple) else (pretrained, pretrained)
    glance = GlanceEncoder(glance_arch, pretrained=glance_pretrained, weights=glance_weights,
                           zero_init_residual=zero_init_residual)
    shift_mobilenet_v2(glance.features, num_glance, shift_div)
    focus = FocusEncoder(focus_arch, pretrained=focus_pretrained, weights=focus_weights,
                         zero_init_residual=zero_init_residual)
    shift_resnet(focus, num_focus, shift_div)
    return glance, focus


def tsn_heads(num_classes: int, glance_dim: int, focus_dim: int) -> Tuple[nn.Linear, nn.Linear, nn.Linear, nn.Linear]:
    """The TSN heads of both encoders, official init N(0, 0.001), bias 0: (glance prediction head
    ``global_CNN.new_fc``, live glance head ``global_CNN.new_new_fc``, focus prediction head
    ``local_CNN.new_fc``, live focus head ``local_CNN.new_new_fc``); each (N, D) -> (N, C)."""
    heads = (nn.Linear(glance_dim, num_classes), nn.Linear(glance_dim, num_classes),
             nn.Linear(focus_dim, num_classes), nn.Linear(focus_dim, num_classes))
    for head in heads:
        nn.init.normal_(head.weight, 0.0, 0.001)
        nn.init.zeros_(head.bias)
    return heads


class UniAdaFocusTSM(OnePatchNetwork):
    """The Uni-AdaFocus-TSM network (the data flow is :class:`models.one_patch.OnePatchNetwork`'s).

    Encoders: MobileNetV2 (glance) and a ResNet (focus) with the temporal shift over the T_G glance
    frames and the T_L focus frames; dropout on their pooled features. Heads (TSN): per encoder a
    live linear head per frame and a prediction head on the detached features, frame-averaged.
    Keyword names match the command-line flags.
    """

    variant = "tsm"

    def __init__(self, num_classes: int, num_segments: int = 36, num_glance_segments: int = 8,
                 num_focus_segments: int = 12, patch_size: int = 128, input_size: int = 224,
                 stn_hidden_dim: int = 128, temporal_hidden_dim: int = 64, dropout: float = 0.5,
                 temperature: float = 1.0, shift_div: int = 8, glance_arch: str = "mbv2",
                 focus_arch: str = "resnet50", pretrained: bool = False, glance_weights=None, focus_weights=None,
                 zero_init_residual: bool = False):
        super().__init__(num_classes, num_segments, num_glance_segments, num_focus_segments, temperature)
        self.geometry = PatchGeometry(patch_size, input_size, glance_feature_size(input_size))

        self.glance, self.focus = shifted_encoders(num_glance_segments, num_focus_segments, shift_div, glance_arch,
                                                   focus_arch, pretrained, glance_weights, focus_weights,
                                                   zero_init_residual)
        self.feature_dropout = nn.Dropout(dropout)
        gdim, fdim = self.glance.feature_dim, self.focus.feature_dim
        (self.glance_prediction_head, self.glance_head,
         self.focus_prediction_head, self.focus_head) = tsn_heads(num_classes, gdim, fdim)
        self.spatial_head = nn.Linear(gdim, num_classes)  # official aux_fc
        self.policy = nn.Module()
        self.policy.spatial = SpatialPolicy(gdim, stn_hidden_dim, self.geometry.feature_size,
                                            temporal_kernel=num_glance_segments)
        self.policy.temporal = TemporalPolicy(gdim, temporal_hidden_dim)

    def encode_glance(self, frames, amp):
        b, g = frames.shape[:2]
        fmap, feats = self.run_encoder(self.glance, frames.flatten(0, 1), amp)  # (B*T_G, Dg, h, w), (B*T_G, Dg)
        return fmap.view(b, g, *fmap.shape[1:]), self.feature_dropout(feats).view(b, g, -1), None

    def glance_heads(self, features, state):
        return self.glance_head(features), self.glance_prediction_head(features.detach()).mean(dim=1)

    def encode_focus(self, patches, amp):
        n, num_focus = patches.shape[:2]
        feats = self.run_encoder(self.focus, patches.flatten(0, 1), amp,
                                 self.chunk_rows(rows_per_clip=num_focus))  # (n*T_L, Df)
        return self.feature_dropout(feats).view(n, num_focus, -1), None

    def focus_heads(self, features, state):
        return self.focus_head(features), self.focus_prediction_head(features.detach()).mean(dim=1)


# --------------------------------------------------------------------------------------------------
# The official checkpoint layout (672 keys for T_G = 8; only C and T_G change shapes)
# --------------------------------------------------------------------------------------------------
#: The TSN-wrapped encoders and their two heads each (official prefix, ours): the official TSM trees of
#: Uni-AdaFocus and of AdaFocusV2 name them alike. No unused keys: the wrappers replace the ImageNet heads.
TSN_KEY_PAIRS = (
        ("global_CNN.base_model.", "glance."),
        ("global_CNN.new_fc.", "glance_prediction_head."),
        ("global_CNN.new_new_fc.", "glance_head."),
        ("local_CNN.base_model.", "focus."),
        ("local_CNN.new_fc.", "focus_prediction_head."),
        ("local_CNN.new_new_fc.", "focus_head."),
)
#: (official prefix, our prefix), most specific first; MobileNetV2's inner names are converted from the
#: official flat layout.
OFFICIAL_KEYS = PrefixMap(
    pairs=TSN_KEY_PAIRS + (
        ("aux_fc.", "spatial_head."),
        ("spatial_policy.encoder.", "policy.spatial.layers."),
        ("temporal_policy.Tconv.", "policy.temporal.layers."),
    ),
    detect_prefixes=("global_CNN.base_model.", "local_CNN.base_model."),
    order=("global_CNN.", "local_CNN.", "aux_fc.", "spatial_policy.", "temporal_policy."),
    inner={"global_CNN.base_model.": (mbv2_flat_to_torchvision, mbv2_torchvision_to_flat)},
)
official_manifest = OFFICIAL_KEYS.manifest


def detect_official(keys) -> bool:
    """Whether state-dict keys (without wrapper prefixes) are an official Uni-AdaFocus-TSM state dict: the
    TSN-wrapped backbones without a ``policy_stn`` (AdaFocusV2's Sth-Sth / Jester checkpoints wrap the same
    backbones and carry ``policy_stn``, see ``models.adafocus_v2_sth``)."""
    keys = list(keys)
    return OFFICIAL_KEYS.detect(keys) and not any(k.startswith("policy_stn.") for k in keys)


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


def tsm_flops(model: "UniAdaFocusTSM") -> "TSMFlops":
    """Count every component of ``model`` (a :class:`UniAdaFocusTSM`)."""
    from .flops import count_gmacs, counting  # models.flops imports the main network, not this one

    with counting(model) as zeros:
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


TSM = register_variant(Variant(
    name="tsm",
    summary="Uni-AdaFocus-TSM: temporal-shift MobileNetV2 glance + ResNet-50 focus, one patch per video "
            "(paper Table 4: Something-Something V1/V2, Jester)",
    build=UniAdaFocusTSM,
    hyper_parameters=("num_segments", "num_glance_segments", "num_focus_segments", "patch_size", "input_size",
                      "stn_hidden_dim", "temporal_hidden_dim", "dropout", "temperature", "shift_div", "glance_arch",
                      "focus_arch", "pretrained", "glance_weights", "focus_weights", "zero_init_residual"),
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
    checkpoint=CheckpointLayout(name="official TSM", detect=detect_official, convert=OFFICIAL_KEYS.convert,
                                manifest=OFFICIAL_KEYS.manifest, class_weight_keys=("spatial_head.weight", "aux_fc.weight")),
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
