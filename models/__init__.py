"""Networks of the Uni-AdaFocus family and the model math they share.

Self-contained: nothing here imports ``ops`` or ``datasets``. The variants register themselves in
``models.variants.VARIANTS`` when this package is imported::

    from models import get_variant
    variant = get_variant("mn2_r50")
    model = variant.build(num_classes=200, patch_size=128)
"""
from . import mn2_r50, tsm, uni_adafocus_x3d  # noqa: F401  (register the variants)
from . import adafocus_v2  # noqa: F401  (registered last: earlier layouts are tried first)
from . import adafocus_v2_sth  # noqa: F401  (the Sth-Sth / Jester form of AdaFocusV2)
from . import adafocus_v1  # noqa: F401  (AdaFocus V1, ActivityNet / FCVID / Mini-Kinetics form)
from . import adafocus_v3  # noqa: F401  (AdaFocusV3, from its paper)
from . import adafocus_v1_sth  # noqa: F401  (the Something-Something form of AdaFocus V1)
from .backbones import FOCUS_ARCHS, GLANCE_ARCHS, BackboneWeightsError, FocusEncoder, GlanceEncoder
from .classifier import ExitClassifier
from .patches import PatchGeometry
from .policy import Policy, SpatialPolicy, TemporalPolicy
from .uni_adafocus import UniAdaFocus
from .uni_adafocus_outputs import FocusPass, UniAdaFocusOutput
from .variants import VARIANTS, Variant, get_variant, variant_of
from .weights import WeightsError

__all__ = [
    "UniAdaFocus", "UniAdaFocusOutput", "FocusPass", "GlanceEncoder", "FocusEncoder", "ExitClassifier",
    "Policy", "SpatialPolicy", "TemporalPolicy", "PatchGeometry", "BackboneWeightsError", "WeightsError",
    "GLANCE_ARCHS", "FOCUS_ARCHS", "VARIANTS", "Variant", "get_variant", "variant_of",
]
