"""The official release's state-dict layout and its mapping onto ours (SPEC §3.1).

Official checkpoints name the modules ``global_CNN`` (MobileNetV2 in an older flat key layout, with
its unused 1000-way ImageNet ``classifier``), ``global_CNN_fc``, ``aux_fc``, ``local_CNN`` (ResNet
with its unused ImageNet ``fc``), ``local_CNN_fc``, ``spatial_policy.encoder``,
``temporal_policy.Tconv`` and ``classifier.{global,local}_{mlp,classifiers}``. Ours are named after
what they are (``glance``, ``focus``, ``policy.spatial`` ...); this module converts between the two.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch

from .backbones import mbv2_flat_to_torchvision, mbv2_torchvision_to_flat

# (official prefix, our prefix), most specific first; the key's remainder is kept.
PREFIXES: Tuple[Tuple[str, str], ...] = (
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
)

#: Official keys with no counterpart in our model: the backbones' ImageNet classifiers, which the
#: official forward never uses (they only force DDP's find_unused_parameters).
UNUSED_PREFIXES = ("global_CNN.classifier.", "local_CNN.fc.")


def is_official_layout(keys) -> bool:
    """Whether state-dict keys (without 'module.') are in the official layout."""
    return any(k.startswith(("global_CNN.", "local_CNN.", "spatial_policy.", "temporal_policy.")) for k in keys)


def official_to_ours(key: str) -> Optional[str]:
    """Our name for an official key; None for the unused ImageNet heads. Raises KeyError if unknown."""
    if key.startswith(UNUSED_PREFIXES):
        return None
    for official, ours in PREFIXES:
        if key.startswith(official):
            rest = key[len(official):]
            if official == "global_CNN.":
                rest = mbv2_flat_to_torchvision(rest)
            return ours + rest
    raise KeyError(key)


def ours_to_official(key: str) -> str:
    """The official name of one of our keys. Raises KeyError if it has none."""
    for official, ours in PREFIXES:
        if key.startswith(ours):
            rest = key[len(ours):]
            if official == "global_CNN.":
                rest = mbv2_torchvision_to_flat(rest)
            return official + rest
    raise KeyError(key)


def convert_official_state_dict(state_dict: Dict[str, torch.Tensor]):
    """Official state dict -> (our state dict, dropped unused keys, unknown keys)."""
    converted, dropped, unknown = {}, [], []
    for key, value in state_dict.items():
        try:
            ours = official_to_ours(key)
        except KeyError:
            unknown.append(key)
            continue
        if ours is None:
            dropped.append(key)
        else:
            converted[ours] = value
    return converted, dropped, unknown


def official_manifest(model) -> List[Tuple[str, List[int], str]]:
    """The official state-dict manifest ``[key, shape, dtype]`` of a configuration, in official order.

    It includes the unused ImageNet heads, so a synthetic checkpoint made from it
    (``make_parity_checkpoint.py``) has exactly the official keys.
    """
    ours = model.state_dict()
    order = ["global_CNN.features.", "global_CNN.classifier.", "global_CNN_fc.", "aux_fc.", "local_CNN.",
             "local_CNN.fc.", "local_CNN_fc.", "spatial_policy.", "temporal_policy.", "classifier.global_mlp.",
             "classifier.local_mlp.", "classifier.global_classifiers.", "classifier.local_classifiers."]
    entries = {name: [] for name in order}
    for key, value in ours.items():
        official = ours_to_official(key)
        group = max((g for g in order if official.startswith(g)), key=len)
        entries[group].append([official, list(value.shape), str(value.dtype).replace("torch.", "")])
    glance_dim, focus_dim = model.glance.feature_dim, model.focus.feature_dim
    entries["global_CNN.classifier."] = [["global_CNN.classifier.weight", [1000, glance_dim], "float32"],
                                         ["global_CNN.classifier.bias", [1000], "float32"]]
    entries["local_CNN.fc."] = [["local_CNN.fc.weight", [1000, focus_dim], "float32"],
                                ["local_CNN.fc.bias", [1000], "float32"]]
    return [tuple(e) for name in order for e in entries[name]]
