"""What the learned policy is worth: the trained model evaluated with its policy replaced, at equal cost.

The paper's Table 9 compares learned frame and patch selection with fixed rules. Here the *same*
trained network is evaluated once more on every video with one or both of its policy's decisions
replaced by a rule that needs no policy, keeping the number of focus frames and the patch sizes, so
every setting spends exactly the same GFLOPs as the full model:

* ``uniform_frames`` — the T_L evenly spaced frames that uniform frame weights select, instead of the
  temporal policy's choice (their patches: the spatial policy's, interpolated to those frames);
* ``random_patches`` — the spatial policy's patches moved to uniformly random positions in the frame
  (same width and height), on the frames the temporal policy chose; the metric is averaged over
  ``draws`` independent draws;
* ``uniform_frames_random_patches`` — both.

Next to them, ``glance_exit`` is the model stopped after its glance (the classifier's last glance
exit, early-exit stage 0: the glance's GFLOPs only) and ``full`` the model as trained (its last exit).

The replacements reuse the forward pass's glance features and spatial actions, so only the focus
encoder and the classifier run again. Available for models with the candidate-frame flow (the
``mn2_r50`` variant: ``glance_stage`` / ``policy_stage`` / ``focus_features``).
"""
from __future__ import annotations

from typing import Dict, Optional

import torch

from .packages import sibling

frame_selection = sibling("models.frame_selection")

#: setting -> (frames, patches); "policy" keeps the trained policy's decision.
SETTINGS = {
    "uniform_frames": ("uniform", "policy"),
    "random_patches": ("policy", "random"),
    "uniform_frames_random_patches": ("uniform", "random"),
}
#: Random-patch draws per video (the metric is their mean).
DEFAULT_DRAWS = 4


def supports(net) -> bool:
    """Whether ``net`` exposes the staged candidate-frame flow the replacements need."""
    return all(hasattr(net, name) for name in ("focus_features", "classifier", "frames_view", "num_focus")) \
        and getattr(net, "variant", None) == "mn2_r50"


def uniform_frames(batch_size: int, num_glance: int, num_frames: int, num_focus: int,
                   device: torch.device) -> torch.Tensor:
    """(B, T_L) the focus frames (of T0) that uniform frame weights select."""
    weights = torch.full((batch_size, num_glance), 1.0 / num_glance, device=device)
    return frame_selection.select_focus_frames(weights, num_frames, num_focus)


def random_positions(actions: torch.Tensor, draws: int, generator: Optional[torch.Generator]) -> torch.Tensor:
    """``draws`` copies of actions (B, K, 4) with uniformly random positions and the same sizes: (S, B, K, 4).

    An action's position components (a_y, a_x) place its box anywhere inside the frame whatever its size.
    """
    moved = actions.unsqueeze(0).repeat(draws, 1, 1, 1)
    gen_device = generator.device if generator is not None else actions.device
    moved[..., :2] = torch.rand(moved.shape[:-1] + (2,), generator=generator, device=gen_device).to(actions)
    return moved


@torch.no_grad()
def ablation_logits(net, video: torch.Tensor, out, draws: int = DEFAULT_DRAWS,
                    generator: Optional[torch.Generator] = None) -> Dict[str, torch.Tensor]:
    """Last-exit logits of every setting for one evaluated batch.

    net: the (unwrapped, evaluation-mode) model; video: the batch it was given; out: its output.
    Returns ``{setting: (B, S, C)}`` (S = 1 for the settings without random patches, ``draws`` for
    the others) and ``glance_exit`` (B, 1, C). Runs under the caller's autocast setting, as the forward.
    """
    frames = net.frames_view(video)
    b, t0 = frames.shape[:2]
    amp = net.autocast_setting(frames.device.type)
    all_actions = frame_selection.interpolate_actions(out.glance_actions, t0)  # (B, T0, 4)
    frame_choice = {"policy": out.focus_indices,
                    "uniform": uniform_frames(b, out.glance_features.shape[1], t0, net.num_focus, frames.device)}
    result = {"glance_exit": out.stage_logits[:, :1]}
    with torch.autocast(frames.device.type, enabled=False):
        for name, (frames_rule, patches_rule) in SETTINGS.items():
            indices = frame_choice[frames_rule]  # (B, T_L)
            actions = net.gather_frames(all_actions, indices)  # (B, T_L, 4)
            if patches_rule == "random":
                actions = random_positions(actions, draws, generator)  # (S, B, T_L, 4)
            feats = net.focus_features(frames, indices, actions, amp)  # (B, T_L, Df) or (S, B, T_L, Df)
            sets = feats.unsqueeze(0) if feats.dim() == 3 else feats
            logits = torch.stack([net.classifier(out.glance_features, f)[:, -1] for f in sets.unbind(0)], dim=1)
            result[name] = logits.float()  # (B, S, C)
    return result
