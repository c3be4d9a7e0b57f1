"""The training-time ablations of Uni-AdaFocus (:class:`TrainingAblations`) and their settings.

Training-time ablations (paper Tables 6-9 and 15; the keywords of the :mod:`.uni_adafocus` constructor after
``zero_init_residual``, each defaulting to the full model's behaviour): the training techniques of §3.3.2
(``aux_supervision``, ``diversity_augmentation``, ``policy_stop_gradient``), how the spatial policy is trained
(``spatial_training``: through e^G's interpolation, or V2's gradient through the patch pixels;
``spatial_supervision``: e^G or AdaFocusV3's e^L of enlarged patches, ``enlarged_patch_margin``), what
decides patches and frames (``patch_location``, ``patch_scale``, ``frame_sampling``: the policy or a rule of
``models.patches`` / ``models.frame_selection``), ``size_regulariser`` (Eq. 15) and
``reuse_glance_features`` (§3.1). Rules that draw at random use the training generator, and in evaluation
a generator of the model's own, seeded with ``seed`` each time the model is put in evaluation mode.
"""
from __future__ import annotations

from dataclasses import dataclass

from . import frame_selection
from .patches import PATCH_LOCATIONS, PATCH_SCALES


@dataclass(frozen=True)
class TrainingAblations:
    """The training-time ablations of paper Tables 6-9 and 15 (see the module doc); the defaults are the
    full model, and each field is the command-line flag of the same name."""

    aux_supervision: bool = True  # Eq. 11: the glance and focus heads' cross-entropies
    diversity_augmentation: bool = True  # Eq. 12: the second, random-patch training pass
    policy_stop_gradient: bool = True  # the spatial policy reads detached glance feature maps
    spatial_training: str = "features"  # 'features' (Eq. 13-14) or 'pixels' (AdaFocusV2's gradient)
    patch_scale: str = "policy"  # models.patches.PATCH_SCALES
    size_regulariser: bool = True  # Eq. 15
    patch_location: str = "policy"  # models.patches.PATCH_LOCATIONS
    frame_sampling: str = "policy"  # models.frame_selection.FRAME_SAMPLINGS
    reuse_glance_features: bool = True  # §3.1: the classifier reads e^G too
    spatial_supervision: str = "glance"  # the spatial term's features: e^G ('glance') or e^L ('local')
    enlarged_patch_margin: int = 0  # training: the focus encoder sees (P + margin)^2 patches

    def __post_init__(self):
        for name, allowed in (("spatial_training", SPATIAL_TRAININGS), ("patch_scale", PATCH_SCALES),
                              ("patch_location", PATCH_LOCATIONS), ("frame_sampling", frame_selection.FRAME_SAMPLINGS),
                              ("spatial_supervision", SPATIAL_SUPERVISIONS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.enlarged_patch_margin < 0:
            raise ValueError(f"enlarged_patch_margin must be 0 or more, got {self.enlarged_patch_margin}")
        if self.spatial_training == "pixels" and self.spatial_supervision == "local":
            raise ValueError("spatial_supervision 'local' trains the spatial policy through features; "
                             "spatial_training 'pixels' trains it through the patch pixels instead")

    @property
    def ablated_terms(self) -> frozenset:
        """The objective terms a training forward leaves out (``UniAdaFocusOutput.ablated_terms``)."""
        return frozenset(({"glance", "focus"} if not self.aux_supervision else set())
                         | ({"spatial"} if self.spatial_training == "pixels" else set())
                         | ({"norm"} if not self.size_regulariser else set()))


SPATIAL_TRAININGS = ("features", "pixels")
SPATIAL_SUPERVISIONS = ("glance", "local")
#: The constructor's keywords of the ablations (the variant registry's hyper-parameters): every field of
#: :class:`TrainingAblations`, and ``seed``, which seeds the evaluation draws of the random rules.
ABLATION_KEYWORDS = tuple(TrainingAblations.__dataclass_fields__) + ("seed",)
