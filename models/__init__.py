"""Networks: glance and focus encoders, the two-branch policy, the exit classifier and Uni-AdaFocus."""
from .backbones import FOCUS_ARCHS, GLANCE_ARCHS, BackboneWeightsError, FocusEncoder, GlanceEncoder
from .classifier import ExitClassifier
from .policy import Policy, SpatialPolicy, TemporalPolicy
from .uni_adafocus import FocusPass, UniAdaFocus, UniAdaFocusOutput

__all__ = [
    "UniAdaFocus", "UniAdaFocusOutput", "FocusPass", "GlanceEncoder", "FocusEncoder", "ExitClassifier",
    "Policy", "SpatialPolicy", "TemporalPolicy", "BackboneWeightsError", "GLANCE_ARCHS", "FOCUS_ARCHS",
]
