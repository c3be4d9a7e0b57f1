"""The variant registry: one entry for each member of the Uni-AdaFocus family this project builds.

A variant is a configuration of shared parts, never a copied tree. It names what differs between
the family's members (paper §5; the official release ships three, with MobileNetV2 + ResNet-50,
TSM and X3D encoders):

* the model it builds and the hyper-parameters (command-line flags) the builder takes;
* its encoders (glance and focus architectures), policy, classifier, exit stages and where its
  glance frames come from;
* the terms of its training objective (by name, as ``ops.objective`` computes them);
* how its exits are counted in GFLOPs (a function of a built model);
* the key layout of its official checkpoints (detection, conversion, the official manifest);
* the datasets it was released for and the presets (``configs/*.yaml``) that reproduce those runs.

A variant lives in a module of its own (``models/mn2_r50.py`` for the first) that calls
:func:`register_variant`; adding one touches no other variant's code.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

import torch
import torch.nn as nn

#: Every term ``ops.objective`` knows, by name (see that module for their definitions).
OBJECTIVE_TERMS = ("cat", "glance", "focus", "temporal", "spatial", "kl", "norm")
#: Where the glance frames come from: 'candidates' — T_G evenly spaced (or, in training, randomly
#: drawn) among the T0 candidate frames the dataset samples; 'separate' — a glance clip that the
#: dataset samples on its own, apart from the focus candidates.
FRAME_SOURCES = ("candidates", "separate")


@dataclass(frozen=True)
class CheckpointLayout:
    """The state-dict layout of a variant's official checkpoints and its mapping onto ours.

    ``detect(keys)``: whether keys (without wrapper prefixes) are in this layout.
    ``convert(state)``: -> (our state dict, dropped keys with no counterpart, unknown keys).
    ``manifest(model)``: the official ``[key, shape, dtype]`` list of a configuration, in official order.
    ``class_weight_keys``: keys (ours or official) whose first dimension is the class count.
    """

    name: str
    detect: Callable[[Iterable[str]], bool]
    convert: Callable[[Dict[str, torch.Tensor]], Tuple[Dict[str, torch.Tensor], List[str], List[str]]]
    manifest: Callable[[nn.Module], List[Tuple[str, List[int], str]]]
    class_weight_keys: Tuple[str, ...] = ()

    def num_classes(self, state: Dict[str, Any]) -> Optional[int]:
        """The class count of a state dict in either layout, or None when it cannot be told."""
        for key, value in state.items():
            if key.endswith(self.class_weight_keys) and isinstance(value, torch.Tensor):
                return int(value.shape[0])
        return None


@dataclass(frozen=True)
class Variant:
    """One member of the family. See the module docstring for what each field is for."""

    name: str
    summary: str
    build: Callable[..., nn.Module]  # build(num_classes=..., **hyper_parameters) -> model
    hyper_parameters: Tuple[str, ...]  # flag names build() takes besides num_classes
    encoders: Dict[str, Tuple[str, ...]]  # 'glance' / 'focus' -> the architectures it offers
    policy: str  # what the policy decides
    classifier: str  # how the exits predict
    exits: str  # the early-exit stages inference may stop at
    frame_source: str  # one of FRAME_SOURCES
    objective_terms: Tuple[str, ...]  # a subset of OBJECTIVE_TERMS
    flops: Callable[[nn.Module], Any]  # model -> breakdown with .stages(): GFLOPs of every exit stage
    checkpoint: CheckpointLayout
    datasets: Tuple[str, ...]  # the datasets of its released checkpoints
    presets: Tuple[str, ...] = field(default=())  # configs/{name}.yaml reproducing the paper's runs
    exit_grid: str = "geometric"  # the official early-exit sweep grid (``ops.early_exit.P_GRIDS``)
    #: T1, the Monte-Carlo temporal term's removal steps, from (T0, T_G, T_L); None: paper App. C,
    #: floor(T_L * T_G / T0) (``ops.objective.default_mc_draws``).
    mc_draws: Optional[Callable[[int, int, int], int]] = None
    #: A training objective of the variant's own, built from the parsed flags (``objective(args)``, called
    #: as ``objective(args)(out, target, generator=...)`` -> terms with a ``total``); None: ``ops.objective``'s
    #: family objective with ``objective_terms``.
    objective: Optional[Callable[[Any], Any]] = None
    defaults: Dict[str, Any] = field(default_factory=dict)  # flag values when the command line sets none
    #: Why the entry points (main.py, test_early_exit.py, the scripts) cannot run this variant yet ("" when
    #: they can): :meth:`require_entry_points` refuses it in one line; the model itself is usable from Python.
    not_in_entry_points: str = ""

    def require_entry_points(self) -> None:
        """Stop with one line when the entry points cannot run this variant yet."""
        if self.not_in_entry_points:
            raise SystemExit(f"--variant {self.name}: {self.not_in_entry_points}")
    choices: Dict[str, Tuple[Any, ...]] = field(default_factory=dict)  # flags this variant restricts
    #: Whether the evaluation-time ablations (``--policy_ablation``, ``--remove_dynamics``) can replace its
    #: policy's decisions (its staged candidate-frame flow: ``ops.policy_ablation``).
    evaluation_ablations: bool = False

    def __post_init__(self):
        if self.frame_source not in FRAME_SOURCES:
            raise ValueError(f"variant {self.name}: frame_source must be one of {FRAME_SOURCES}")
        unknown = set(self.objective_terms) - set(OBJECTIVE_TERMS)
        if unknown:
            raise ValueError(f"variant {self.name}: unknown objective terms {sorted(unknown)}")

    def build_from(self, config: Any, num_classes: int) -> nn.Module:
        """The model for a configuration with the hyper-parameters as attributes (parsed flags)."""
        kwargs = {n: getattr(config, n) for n in self.hyper_parameters if getattr(config, n, None) is not None}
        return self.build(num_classes=num_classes, **kwargs)


VARIANTS: Dict[str, Variant] = {}


def register_variant(variant: Variant) -> Variant:
    """Add ``variant`` to the registry (names are unique)."""
    if variant.name in VARIANTS:
        raise ValueError(f"variant {variant.name!r} is registered already")
    VARIANTS[variant.name] = variant
    return variant


def get_variant(name: str) -> Variant:
    """The registered variant ``name``, or a ``KeyError`` that lists the known ones."""
    try:
        return VARIANTS[name]
    except KeyError:
        raise KeyError(f"unknown variant {name!r}; known: {', '.join(sorted(VARIANTS))}") from None


def variant_of(model: nn.Module) -> Variant:
    """The variant a built model belongs to (its ``variant`` attribute)."""
    name = getattr(model, "variant", None)
    if name is None:
        raise ValueError(f"{type(model).__name__} names no variant")
    return get_variant(name)


@dataclass(frozen=True)
class PrefixMap:
    """An official key layout that maps onto ours by key prefixes: the checkpoint filter of a variant.

    ``pairs``: (official prefix, our prefix), most specific first; the rest of a key is kept, or
    converted by ``inner[official prefix] = (to ours, to official)`` (e.g. MobileNetV2's flat names).
    ``unused``: official prefixes with no counterpart here (dropped on loading). ``detect``: prefixes
    that only this layout has. ``order``: the official module order, for manifests.
    """

    pairs: Tuple[Tuple[str, str], ...]
    detect_prefixes: Tuple[str, ...]
    order: Tuple[str, ...]
    inner: Dict[str, Tuple[Callable[[str], str], Callable[[str], str]]] = field(default_factory=dict)
    unused: Tuple[str, ...] = ()

    def _rename(self, key: str, to_ours: bool) -> str:
        for official, ours in self.pairs:
            source, target = (official, ours) if to_ours else (ours, official)
            if key.startswith(source):
                rest = key[len(source):]
                if official in self.inner:
                    rest = self.inner[official][0 if to_ours else 1](rest)
                return target + rest
        raise KeyError(key)

    def to_ours(self, key: str) -> Optional[str]:
        """Our name for an official key; None for an unused one. Raises KeyError if unknown."""
        return None if key.startswith(self.unused) else self._rename(key, to_ours=True)

    def to_official(self, key: str) -> str:
        """The official name of one of our keys. Raises KeyError if it has none."""
        return self._rename(key, to_ours=False)

    def detect(self, keys: Iterable[str]) -> bool:
        """Whether state-dict keys (without wrapper prefixes) are in this layout."""
        return any(k.startswith(self.detect_prefixes) for k in keys)

    def convert(self, state: Dict[str, torch.Tensor]):
        """Official state dict -> (our state dict, dropped unused keys, unknown keys)."""
        converted, dropped, unknown = {}, [], []
        for key, value in state.items():
            try:
                ours = self.to_ours(key)
            except KeyError:
                unknown.append(key)
                continue
            if ours is None:
                dropped.append(key)
            else:
                converted[ours] = value
        return converted, dropped, unknown

    def manifest(self, model: nn.Module, extra: Iterable[Tuple[str, List[int], str]] = ()) -> List[Tuple[str, List[int], str]]:
        """The official ``(key, shape, dtype)`` list of a model, in the official module order; ``extra``
        entries (official keys with no counterpart here) join their module's group."""
        entries = [(self.to_official(k), list(v.shape), str(v.dtype).replace("torch.", ""))
                   for k, v in model.state_dict().items()] + [tuple(e) for e in extra]

        def group(entry):  # the longest matching module prefix
            return self.order.index(max((p for p in self.order if entry[0].startswith(p)), key=len))

        return sorted(entries, key=group)
