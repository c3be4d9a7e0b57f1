"""GMACs of every exit of AdaFocusV3 (:mod:`.adafocus_v3`), counted from the module on dummy inputs."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, List

from .adafocus_v3_cubes import shift_segments

if TYPE_CHECKING:  # (the network's module registers these counts, so it is not imported at run time)
    from .adafocus_v3 import AdaFocusV3


@dataclass
class AdaFocusV3Flops:
    """GMACs (the papers' GFLOPs) of each part, counted on dummy inputs of the configured size.

    Stage 0 (the glance exit) costs the glance on T_G frames, the policy and the glance exit; stage k adds
    the frames cubes 1..k processed (each a crop and the focus encoder on a P x P patch) and k classifier
    steps. A cube's frame count varies at inference when T' > 1 (covered frames are skipped); stage k counts
    at most ``min(k T', T)`` frames, its most (exact for T' = 1).
    """

    glance_frame: float  # glance encoder on one frame
    glance_classifier: float  # the classifier's glance MLP on one frame
    glance_exit: float  # the glance exit head
    policy: float  # the cube policy on the T_G maps
    patch_crop: float  # one P x P crop
    focus_patch: float  # focus encoder on one patch
    classifier_step: float  # the focus MLP on one cube and one exit head
    num_glance: int
    num_cubes: int
    cube_frames: int
    num_frames: int

    def cube_frames_upto(self, k: int) -> int:
        """Most frames processed by cubes 1..k."""
        return min(k * self.cube_frames, self.num_frames)

    def stages(self) -> List[float]:
        """GFLOPs of every exit: [glance exit, after 1 cube, ..., after K cubes]."""
        glance = self.num_glance * (self.glance_frame + self.glance_classifier) + self.policy + self.glance_exit
        return [glance + self.cube_frames_upto(k) * (self.patch_crop + self.focus_patch) + k * self.classifier_step
                for k in range(self.num_cubes + 1)]


def adafocus_v3_flops(model: AdaFocusV3) -> AdaFocusV3Flops:
    """Count every part of ``model`` (an :class:`AdaFocusV3`)."""
    from .flops import count_gmacs, counting  # models.flops imports the main network, not this one

    with counting(model) as zeros:
        size, p, fs, g = model.input_size, model.patch_size, model.feature_size, model.num_glance
        gdim, fdim = model.glance.feature_dim, model.focus.feature_dim
        classifier = model.classifier
        hidden = classifier.glance_exits[0][1].in_features
        with shift_segments(model.glance, 1), shift_segments(model.focus, 1):
            return AdaFocusV3Flops(
                glance_frame=count_gmacs(model.glance, zeros(1, 3, size, size)),
                glance_classifier=count_gmacs(classifier.glance_mlp, zeros(1, 1, gdim)),
                glance_exit=count_gmacs(classifier.glance_exits[0], zeros(1, hidden)),
                policy=count_gmacs(model.policy.spatial, zeros(1, g, gdim, fs, fs)),
                patch_crop=count_gmacs(lambda x: model.crop(x, zeros(1), zeros(1), p), zeros(1, 3, size, size)),
                focus_patch=count_gmacs(model.focus, zeros(1, 3, p, p)),
                classifier_step=count_gmacs(lambda x: classifier.focus_logits(classifier.focus_states(x),
                                                                             zeros(1, hidden)), zeros(1, 1, fdim)),
                num_glance=g, num_cubes=model.num_cubes, cube_frames=model.cube_frames,
                num_frames=model.num_segments)
