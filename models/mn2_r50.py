"""The ``mn2_r50`` variant: MobileNetV2 glance, ResNet-50 focus, FrameExit-style exit classifier.

The variant of the paper's Table 2 (ActivityNet, FCVID, Mini-Kinetics; ``models.uni_adafocus``
holds the network). This module registers it and holds its checkpoint filter: the official
release's state-dict layout and its mapping onto ours (docs/official-behaviour.md,
"Model: backbones and checkpoint layout").

Official checkpoints name the modules ``global_CNN`` (MobileNetV2 in an older flat key layout, with
its unused 1000-way ImageNet ``classifier``), ``global_CNN_fc``, ``aux_fc``, ``local_CNN`` (ResNet
with its unused ImageNet ``fc``), ``local_CNN_fc``, ``spatial_policy.encoder``,
``temporal_policy.Tconv`` and ``classifier.{global,local}_{mlp,classifiers}``. Ours are named after
what they are (``glance``, ``focus``, ``policy.spatial`` ...); this module converts between the two.
"""
from __future__ import annotations

from typing import Iterable, List, Tuple

from .backbones import FOCUS_ARCHS, GLANCE_ARCHS, mbv2_flat_to_torchvision, mbv2_torchvision_to_flat
from .training_ablations import ABLATION_KEYWORDS
from .uni_adafocus import UniAdaFocus
from .variants import CheckpointLayout, PrefixMap, Variant, register_variant

#: The official key layout: (official prefix, our prefix), most specific first; MobileNetV2's inner
#: names are converted from the official flat layout. The backbones' ImageNet classifiers have no
#: counterpart here: the official forward never uses them (they only force DDP's
#: find_unused_parameters), so loading drops them.
OFFICIAL_KEYS = PrefixMap(
    pairs=(
        ("global_CNN_fc.", "glance_head."),
        ("global_CNN.", "glance."),
        ("aux_fc.", "spatial_head."),
        ("local_CNN_fc.", "focus_head."),
        ("local_CNN.", "focus."),
        ("spatial_policy.encoder.", "policy.spatial.layers."),
        ("temporal_policy.Tconv.", "policy.temporal.layers."),
        ("classifier.global_mlp.", "classifier.glance_mlp."),
        ("classifier.local_mlp.", "classifier.focus_mlp."),
        ("classifier.global_classifiers.", "classifier.glance_exits."),
        ("classifier.local_classifiers.", "classifier.focus_exits."),
    ),
    detect_prefixes=("global_CNN.features.", "local_CNN.layer1."),
    order=("global_CNN.features.", "global_CNN.classifier.", "global_CNN_fc.", "aux_fc.", "local_CNN.",
           "local_CNN.fc.", "local_CNN_fc.", "spatial_policy.", "temporal_policy.", "classifier.global_mlp.",
           "classifier.local_mlp.", "classifier.global_classifiers.", "classifier.local_classifiers."),
    inner={"global_CNN.": (mbv2_flat_to_torchvision, mbv2_torchvision_to_flat)},
    unused=("global_CNN.classifier.", "local_CNN.fc."),
)
ours_to_official = OFFICIAL_KEYS.to_official
#: Keys of other official layouts that share these backbones' names: AdaFocusV2's recurrent policy.
FOREIGN_PREFIXES = ("policy_stn.",)


def detect_official(keys: Iterable[str]) -> bool:
    """Whether state-dict keys (without wrapper prefixes) are in this layout: its backbones' keys, and none
    of :data:`FOREIGN_PREFIXES` (an AdaFocusV2 file has the same ``global_CNN`` / ``local_CNN`` keys)."""
    keys = list(keys)
    return OFFICIAL_KEYS.detect(keys) and not any(k.startswith(FOREIGN_PREFIXES) for k in keys)


def official_manifest(model) -> List[Tuple[str, List[int], str]]:
    """The official state-dict manifest ``[key, shape, dtype]`` of a configuration, in official order.

    It includes the unused ImageNet heads, so a synthetic checkpoint made from it
    (``make_parity_checkpoint.py``) has exactly the official keys.
    """
    glance_dim, focus_dim = model.glance.feature_dim, model.focus.feature_dim
    return OFFICIAL_KEYS.manifest(model, extra=(
        ("global_CNN.classifier.weight", [1000, glance_dim], "float32"), ("global_CNN.classifier.bias", [1000], "float32"),
        ("local_CNN.fc.weight", [1000, focus_dim], "float32"), ("local_CNN.fc.bias", [1000], "float32")))


def _flops(model):
    """The FLOPs breakdown of ``models.flops`` (imported on use, so that ``python -m models.flops`` does not
    find its own module imported by the package first)."""
    from .flops import flops_breakdown

    return flops_breakdown(model)


MN2_R50 = register_variant(Variant(
    name="mn2_r50",
    summary="MobileNetV2 glance + ResNet-50 focus + FrameExit-style exit classifier (paper Table 2)",
    build=UniAdaFocus,
    hyper_parameters=("num_segments", "num_glance_segments", "num_focus_segments", "patch_size", "input_size",
                      "stn_hidden_dim", "temporal_hidden_dim", "classifier_dim", "dropout", "fc_dropout",
                      "temperature", "glance_arch", "focus_arch", "pretrained", "glance_weights", "focus_weights",
                      "detach_temporal_input", "glance_size", "zero_init_residual", "patch_transform")
    + ABLATION_KEYWORDS,
    encoders={"glance": GLANCE_ARCHS, "focus": FOCUS_ARCHS},
    policy="spatial: one deformable patch per glance frame, interpolated to every candidate frame; "
           "temporal: frame weights over the T_G glance frames, T_L focus frames at their CDF quantiles",
    classifier="running max-pooling over glance then focus steps, one exit head per step",
    exits="T_L + 1 stages: the last glance exit, then the exit after each focus frame (without "
          "--reuse_glance_features, T_L: the focus exits alone)",
    frame_source="candidates",
    objective_terms=("cat", "glance", "focus", "temporal", "spatial", "kl", "norm"),
    flops=_flops,
    checkpoint=CheckpointLayout(name="official", detect=detect_official, convert=OFFICIAL_KEYS.convert,
                                manifest=official_manifest, class_weight_keys=("spatial_head.weight", "aux_fc.weight")),
    datasets=("actnet", "fcvid", "minik"),
    presets=tuple(f"{d}_p{p}" for d in ("actnet", "fcvid", "minik") for p in (96, 128, 160)),
    evaluation_ablations=True,
))
