"""Uni-AdaFocus-X3D: X3D-S glance, X3D-L focus, one patch per video, two exits (paper §5.3, Table 5).

The variant for Kinetics-400. Its data flow is :class:`models.one_patch.OnePatchNetwork`'s (glance,
policy with one box per video, frame selection, focus, two exits); this module gives its encoders and
heads, its official checkpoint filter and the FLOPs of its exits:

* **glance** — the T_G glance frames (I x I) are resized to ``glance_size`` (160, bilinear, inside
  the model as officially) and go through X3D-S as one clip: feature maps (B, 432, T_G, 5, 5);
* **focus** — the T_L patches of a video go through X3D-L as one clip (B, 432, T_L, P/32, P/32);
* **heads** — each X3D's clip head (global pool of the *detached* map, ``lin_5``, ``projection``)
  gives its part of the prediction, prediction = X3D-S part + X3D-L part; a per-frame MLP head
  (Linear 432->2048 without bias, ReLU, dropout, Linear 2048->C), initialised from the X3D clip head,
  is the live head that trains each encoder and gives exit 0;
* **policy** — both branches read X3D-S's 432-channel features; the feature-map crop is
  round(5 P / 224) cells (3 for P = 128), which, as officially, may exceed the 5 x 5 map for large
  size actions (grid_sample reads zeros there);
* **objective** — the one-patch members' terms, with T1 = round(T_G / 3) Monte-Carlo removal steps.

Pretrained initialisation comes from SlowFast ``.pyth`` files (``glance_weights`` for X3D-S,
``focus_weights`` for X3D-L); there is no download.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn

from .backbones import downscale
from .inference import call_in_chunks
from .one_patch import OnePatchNetwork
from .patches import PatchGeometry
from .policy import SpatialPolicy, TemporalPolicy
from .variants import CheckpointLayout, PrefixMap, Variant, register_variant
from .x3d import X3D, X3DWeightsError, load_x3d_pyth, x3d_l, x3d_s


def _frame_head(feature_dim: int, hidden: int, num_classes: int, dropout: float) -> nn.Sequential:
    """The per-frame MLP head (official ``*_CNN_head``): keys ``0.weight``, ``3.weight``, ``3.bias``."""
    return nn.Sequential(nn.Linear(feature_dim, hidden, bias=False), nn.ReLU(inplace=True), nn.Dropout(dropout),
                         nn.Linear(hidden, num_classes))


class UniAdaFocusX3D(OnePatchNetwork):
    """The Uni-AdaFocus-X3D network. Keyword names match the command-line flags."""

    variant = "x3d"

    def __init__(self, num_classes: int, num_segments: int = 96, num_glance_segments: int = 16,
                 num_focus_segments: int = 32, patch_size: int = 128, input_size: int = 224, glance_size: int = 160,
                 stn_hidden_dim: int = 128, temporal_hidden_dim: int = 64, dropout: float = 0.5,
                 temperature: float = 1.0, pretrained: bool = False, glance_weights: Optional[str] = None,
                 focus_weights: Optional[str] = None):
        super().__init__(num_classes, num_segments, num_glance_segments, num_focus_segments, temperature)
        if not 0 < glance_size <= input_size:
            raise ValueError(f"glance_size must be in 1..input_size ({input_size}), got {glance_size}")
        self.glance_size = glance_size
        feature_size = -(-glance_size // 32)  # X3D-S map side: 5 for 160
        self.geometry = PatchGeometry(patch_size, input_size, feature_size,
                                      feature_patch=max(1, round(feature_size * patch_size / input_size)))
        self.glance = x3d_s(num_classes)
        self.focus = x3d_l(num_classes)
        if pretrained or glance_weights or focus_weights:
            if not (glance_weights and focus_weights):
                raise X3DWeightsError("X3D weights are not downloaded: pass the SlowFast files with --glance_weights "
                                      "x3d_s.pyth --focus_weights x3d_l.pyth, or train from scratch with --no-pretrained")
            for encoder, path in ((self.glance, glance_weights), (self.focus, focus_weights)):
                for note in load_x3d_pyth(encoder, path):  # e.g. a projection for another class count
                    warnings.warn(note)
        dim, hidden = self.glance.feature_dim, self.glance.head_dim
        self.glance_head = _frame_head(dim, hidden, num_classes, dropout)  # official global_CNN_head
        self.focus_head = _frame_head(dim, hidden, num_classes, dropout)  # official local_CNN_head
        self.spatial_head = nn.Linear(dim, num_classes)  # official aux_head.0
        self.policy = nn.Module()
        self.policy.spatial = SpatialPolicy(dim, stn_hidden_dim, feature_size, temporal_kernel=num_glance_segments)
        self.policy.temporal = TemporalPolicy(dim, temporal_hidden_dim)
        self.copy_clip_heads()

    def copy_clip_heads(self) -> None:
        """Start each per-frame head from its X3D's clip head (official ``share_head_params``: a copy at
        construction, not tied weights)."""
        for x3d, head in ((self.glance, self.glance_head), (self.focus, self.focus_head)):
            head.load_state_dict(x3d.head_linear_weights())

    # ------------------------------------------------------------------------------------------
    def _clip(self, encoder: X3D, frames: torch.Tensor, amp, rows: Optional[int] = None):
        """Frames (n, T, 3, H, W) as one clip each -> (maps (n, T, 432, h, w), features (n, T, 432), clip
        logits (n, C)), float32; the encoder runs under the caller's autocast setting ``amp``, on at most
        ``rows`` clips per call (None: all at once; see :meth:`chunk_rows`)."""
        enabled, dtype = amp

        def run(clips):  # (m, T, 3, H, W)
            with torch.autocast(clips.device.type, dtype=dtype, enabled=enabled):
                out = encoder(clips.transpose(1, 2))  # clip (m, 3, T, H, W)
            return out.feature_maps.float().transpose(1, 2), out.frame_features.float(), out.final_logits.float()

        return call_in_chunks(run, frames, rows)

    def encode_glance(self, frames, amp):
        b, g = frames.shape[:2]
        small = downscale(frames.flatten(0, 1), self.glance_size, antialias=False)  # (B*T_G, 3, S_g, S_g)
        return self._clip(self.glance, small.view(b, g, *small.shape[1:]), amp)

    def glance_heads(self, features, state):
        return self.glance_head(features), state  # live per-frame head; X3D-S's clip logits

    def encode_focus(self, patches, amp):
        rows = self.chunk_rows(images_per_row=patches.shape[1])  # whole clips of T_L patches
        _, feats, final_logits = self._clip(self.focus, patches, amp, rows)
        return feats, final_logits

    def focus_heads(self, features, state):
        return self.focus_head(features), state  # live per-frame head; X3D-L's clip logits


# --------------------------------------------------------------------------------------------------
# The official checkpoint layout (1754 keys for C = 400, T_G = 16)
# --------------------------------------------------------------------------------------------------
OFFICIAL_KEYS = PrefixMap(
    pairs=(
        ("global_CNN_head.", "glance_head."),
        ("global_CNN.", "glance."),
        ("local_CNN_head.", "focus_head."),
        ("local_CNN.", "focus."),
        ("aux_head.0.", "spatial_head."),
        ("spatial_policy.encoder.", "policy.spatial.layers."),
        ("temporal_policy.Tconv.", "policy.temporal.layers."),
    ),
    detect_prefixes=("global_CNN.s1.", "global_CNN_head."),
    order=("global_CNN.", "global_CNN_head.", "local_CNN.", "local_CNN_head.", "aux_head.", "spatial_policy.",
           "temporal_policy."),
)
official_manifest = OFFICIAL_KEYS.manifest


# --------------------------------------------------------------------------------------------------
# FLOPs of the two exits, counted from the module
# --------------------------------------------------------------------------------------------------
@dataclass
class X3DFlops:
    """GMACs (the papers' GFLOPs) of each component, on dummy inputs of the configured size."""

    glance_clip: float  # X3D-S up to its feature map, on the T_G-frame clip at glance_size
    glance_clip_head: float  # X3D-S's clip head (the glance part of the prediction)
    glance_frame_heads: float  # the per-frame glance head on all T_G frames (exit 0)
    spatial_policy: float
    temporal_policy: float
    patch_crop: float  # T_L patches
    focus_clip: float  # X3D-L up to its feature map, on the T_L-patch clip
    focus_clip_head: float  # X3D-L's clip head (the focus part of the prediction)

    def stages(self, accounting: str = "measured") -> list:
        """[exit 0, exit 1]. ``measured``: what inference spends to reach each exit (exit 0 needs the
        per-frame glance head; exit 1 the clip heads, the policy and the crops too). ``official``: the
        official table's composition (the backbones and the policies only)."""
        if accounting == "official":
            glance = self.glance_clip + self.glance_clip_head
            return [glance, glance + self.spatial_policy + self.temporal_policy + self.focus_clip + self.focus_clip_head]
        if accounting != "measured":
            raise ValueError(f"accounting must be 'measured' or 'official', got {accounting!r}")
        glance = self.glance_clip + self.glance_frame_heads  # (the bilinear resize counts no MACs)
        return [glance, glance + self.glance_clip_head + self.spatial_policy + self.temporal_policy
                + self.patch_crop + self.focus_clip + self.focus_clip_head]


def x3d_flops(model: UniAdaFocusX3D) -> X3DFlops:
    """Count every component of ``model`` (a :class:`UniAdaFocusX3D`)."""
    from .flops import count_gmacs, counting  # models.flops imports the main network, not this one

    with counting(model) as zeros:
        g, num_focus, size, p, s = model.num_glance, model.num_focus, model.input_size, model.patch_size, model.glance_size
        dim, fs = model.glance.feature_dim, model.geometry.feature_size
        glance_maps = model.glance.feature_map(zeros(1, 3, g, s, s))
        focus_maps = model.focus.feature_map(zeros(1, 3, num_focus, p, p))
        return X3DFlops(
            glance_clip=count_gmacs(model.glance.feature_map, zeros(1, 3, g, s, s)),
            glance_clip_head=count_gmacs(model.glance.clip_logits, glance_maps),
            glance_frame_heads=count_gmacs(model.glance_head, zeros(g, dim)),
            spatial_policy=count_gmacs(model.policy.spatial, zeros(1, g, dim, fs, fs)),
            temporal_policy=count_gmacs(model.policy.temporal, zeros(1, g, dim)),
            patch_crop=num_focus * count_gmacs(model.geometry.crop, zeros(1, 3, size, size), zeros(1, 4) + 0.5),
            focus_clip=count_gmacs(model.focus.feature_map, zeros(1, 3, num_focus, p, p)),
            focus_clip_head=count_gmacs(model.focus.clip_logits, focus_maps))


def _draws(num_segments: int, num_glance: int, num_focus: int) -> int:
    return round(num_glance / 3)  # official T1 = round(T_G / 3) whatever T0 and T_L


X3D_VARIANT = register_variant(Variant(
    name="x3d",
    summary="Uni-AdaFocus-X3D: X3D-S glance on 160-px frames + X3D-L focus, one patch per video "
            "(paper Table 5: Kinetics-400)",
    build=UniAdaFocusX3D,
    hyper_parameters=("num_segments", "num_glance_segments", "num_focus_segments", "patch_size", "input_size",
                      "glance_size", "stn_hidden_dim", "temporal_hidden_dim", "dropout", "temperature", "pretrained",
                      "glance_weights", "focus_weights"),
    encoders={"glance": ("x3d_s",), "focus": ("x3d_l",)},
    policy="spatial: one deformable patch per video from all T_G X3D-S maps (5 x 5 x 432); temporal: frame "
           "weights over the T_G glance frames (detached input), T_L of the T0 candidates at their CDF quantiles",
    classifier="the sum of X3D-S's and X3D-L's clip heads; per-frame MLP heads train the encoders",
    exits="2 stages: the glance alone (per-frame glance head), then glance and focus (the prediction)",
    frame_source="separate",
    objective_terms=("cat", "glance", "focus", "temporal", "spatial", "norm"),
    flops=x3d_flops,
    checkpoint=CheckpointLayout(name="official X3D", detect=OFFICIAL_KEYS.detect, convert=OFFICIAL_KEYS.convert,
                                manifest=OFFICIAL_KEYS.manifest, class_weight_keys=("spatial_head.weight", "aux_head.0.weight")),
    datasets=("kinetics",),
    presets=("k400_p128_16x32",),
    exit_grid="tsm",  # the same 2-exit solver and 403-budget grid as tsm
    mc_draws=_draws,
    defaults={"num_segments": 96, "num_glance_segments": 16, "num_focus_segments": 32, "patch_size": 128,
              "glance_size": 160, "dropout": 0.5, "dataset": "kinetics", "glance_arch": "x3d_s", "focus_arch": "x3d_l"},
    choices={"spatial_objective": ("official",)},
))
