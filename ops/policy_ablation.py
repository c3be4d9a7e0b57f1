"""What the learned policy is worth: the trained model evaluated with its policy replaced, at equal cost.

The paper's Table 9 compares learned frame and patch selection with fixed rules. Here the *same*
trained network is evaluated once more on every video with one or both of its policy's decisions
replaced by a rule that needs no policy, keeping the number of focus frames and the patch sizes, so
every setting spends exactly the same GFLOPs as the full model:

* ``uniform_frames`` — the T_L evenly spaced frames that uniform frame weights select
  (``models.frame_selection.uniform_frame_indices``, the ``--frame_sampling uniform`` rule), instead of
  the temporal policy's choice (their patches: the spatial policy's, interpolated to those frames);
* ``random_patches`` — the spatial policy's patches moved to uniformly random positions in the frame
  (same width and height: ``models.patches.place_patches``, the ``--patch_location random`` rule), on
  the frames the temporal policy chose; the metric is averaged over ``draws`` independent draws;
* ``uniform_frames_random_patches`` — both.

Next to them, ``glance_exit`` is the model stopped after its glance (the classifier's last glance
exit, early-exit stage 0: the glance's GFLOPs only) and ``full`` the model as trained (its last exit).
A model without the glance exit (``UniAdaFocus.exits_at_glance``: trained without
``--reuse_glance_features``, its glance exits give every video the same logits) has no ``glance_exit``
entry.

The replacements reuse the forward pass's glance features and spatial actions, so only the focus
encoder and the classifier run again (the model's own ``classify``: without ``--reuse_glance_features``
the classifier reads no glance features, as in the forward). Available for models with the candidate-frame flow (the
``mn2_r50`` variant: ``glance_stage`` / ``policy_stage`` / ``focus_features``).

**Dynamics removed (the paper's Table 10, ``--remove_dynamics``).** The same model with any of its
three kinds of dynamic computation removed, compared at equal average GFLOPs per video:

* ``spatial`` — the focus encoder sees every focus frame whole, resampled to P x P (a box covering
  the frame: :func:`whole_frame_actions`), so each frame costs what a patch costs;
* ``temporal`` — the T_L uniformly spaced frames of ``--frame_sampling uniform`` (with the spatial
  policy's patches interpolated to them unless ``spatial`` is removed too);
* ``samplewise`` — random early exit: at each budget the adaptive policy's thresholds are solved on
  the threshold set (the training videos with the training augmentation, as the official early exit:
  ``ops.early_exit.thresholds_for_budget`` with the entropy criterion), its exit counts on the
  evaluation set are taken, and every video exits at a stage drawn at random so that exactly those
  counts exit at each stage (``ops.early_exit.random_exit_baseline``; the metric is the mean over
  ``draws`` seeded draws). With ``samplewise`` kept, the adaptive exits themselves are scored.

:func:`dynamics_stage_logits` gives the early-exit stage logits with the spatial and temporal
removals, :func:`dynamics_metrics` the metric at each budget (``metrics.json`` ``dynamics_ablation``).
"""
from __future__ import annotations

from typing import Dict, Iterable, Optional, Sequence

import torch

from . import early_exit
from .flags import DYNAMICS
from .packages import sibling

frame_selection = sibling("models.frame_selection")
patches = sibling("models.patches")
uni_adafocus_outputs = sibling("models.uni_adafocus_outputs")

#: setting -> (frames, patches); "policy" keeps the trained policy's decision.
SETTINGS = {
    "uniform_frames": ("uniform", "policy"),
    "random_patches": ("policy", "random"),
    "uniform_frames_random_patches": ("uniform", "random"),
}
#: Random-patch draws per video (the metric is their mean).
DEFAULT_DRAWS = 4


def supports(net) -> bool:
    """Whether ``net`` exposes the staged candidate-frame flow the replacements need (its variant declares
    ``evaluation_ablations``)."""
    variant = sibling("models").VARIANTS.get(getattr(net, "variant", None))
    return all(hasattr(net, name) for name in ("focus_features", "classify", "frames_view", "num_focus")) \
        and variant is not None and variant.evaluation_ablations


@torch.no_grad()
def ablation_logits(net, video: torch.Tensor, out, draws: int = DEFAULT_DRAWS,
                    generator: Optional[torch.Generator] = None) -> Dict[str, torch.Tensor]:
    """Last-exit logits of every setting for one evaluated batch.

    net: the (unwrapped, evaluation-mode) model; video: the batch it was given; out: its output.
    Returns ``{setting: (B, S, C)}`` (S = 1 for the settings without random patches, ``draws`` for
    the others) and ``glance_exit`` (B, 1, C) where the model has that exit (``net.exits_at_glance``). Runs
    under the caller's autocast setting, as the forward.
    """
    frames = net.frames_view(video)
    b, t0 = frames.shape[:2]
    amp = net.autocast_setting(frames.device.type)
    all_actions = frame_selection.interpolate_actions(out.glance_actions, t0)  # (B, T0, 4)
    frame_choice = {"policy": out.focus_indices,
                    "uniform": frame_selection.uniform_frame_indices(b, t0, net.num_focus, frames.device)}
    result = {"glance_exit": out.stage_logits[:, :1]} if net.exits_at_glance else {}
    with torch.autocast(frames.device.type, enabled=False):
        for name, (frames_rule, patches_rule) in SETTINGS.items():
            indices = frame_choice[frames_rule]  # (B, T_L)
            actions = net.gather_frames(all_actions, indices)  # (B, T_L, 4)
            if patches_rule == "random":  # draws copies, each moved: (S, B, T_L, 4)
                actions = patches.place_patches(actions.unsqueeze(0).expand(draws, *actions.shape), "random", generator)
            feats = net.focus_features(frames, indices, actions, amp)  # (B, T_L, Df) or (S, B, T_L, Df)
            sets = feats.unsqueeze(0) if feats.dim() == 3 else feats
            logits = torch.stack([net.classify(out.glance_features, f)[:, -1] for f in sets.unbind(0)], dim=1)
            result[name] = logits.float()  # (B, S, C)
    return result


# ------------------------------------------------------------------------------------------------
# Table 10: dynamics removed
# ------------------------------------------------------------------------------------------------
#: Table 10's rows in the paper's order, each as the dynamics it removes.
TABLE10_ROWS = (("spatial", "temporal", "samplewise"), ("spatial", "temporal"), ("spatial", "samplewise"),
                ("temporal", "samplewise"), ("spatial",), ("temporal",), ("samplewise",), ())
#: The criterion of the adaptive exits (the paper's).
DYNAMICS_CRITERION = "entropy"


def removed_dynamics(names: Iterable[str]) -> tuple:
    """``--remove_dynamics`` values as a tuple in :data:`DYNAMICS` order (repeats collapse); ValueError on
    another name."""
    names = set(names)
    unknown = sorted(names - set(DYNAMICS))
    if unknown:
        raise ValueError(f"unknown dynamics {unknown}; expected any of {list(DYNAMICS)}")
    return tuple(d for d in DYNAMICS if d in names)


def whole_frame_actions(shape, device: torch.device) -> torch.Tensor:
    """Actions (*shape, 4) whose boxes cover the whole frame (size actions 1, extent = the side): the crop
    is the frame resampled to P x P, bilinear on cell centres (``F.interpolate(..., mode='bilinear',
    align_corners=False)`` of the frame)."""
    actions = torch.zeros(*shape, 4, device=device)
    actions[..., 2:] = 1.0
    return actions


@torch.no_grad()
def dynamics_stage_logits(net, video: torch.Tensor, out, removed: Iterable[str]) -> torch.Tensor:
    """(B, K, C) float early-exit stage logits of one evaluated batch with the ``spatial`` and/or ``temporal``
    dynamics removed (``samplewise`` concerns the exits, not the logits; with neither of the other two:
    the forward's own ``out.stage_logits``).

    net, video, out: as :func:`ablation_logits`. Only the focus encoder and the classifier run again, on
    T_L frames of P x P per video, as the forward (equal GFLOPs).
    """
    removed = removed_dynamics(removed)
    if "spatial" not in removed and "temporal" not in removed:
        return out.stage_logits.float()
    frames = net.frames_view(video)
    b, t0 = frames.shape[:2]
    amp = net.autocast_setting(frames.device.type)
    if "temporal" in removed:
        indices = frame_selection.uniform_frame_indices(b, t0, net.num_focus, frames.device)  # (B, T_L)
    else:
        indices = out.focus_indices
    if "spatial" in removed:
        actions = net.geometry.with_identity(whole_frame_actions(indices.shape, frames.device))  # (B, T_L, 4 + k)
    else:
        actions = net.gather_frames(frame_selection.interpolate_actions(out.glance_actions, t0), indices)
    with torch.autocast(frames.device.type, enabled=False):
        feats = net.focus_features(frames, indices, actions, amp)  # (B, T_L, Df)
        exit_logits = net.classify(out.glance_features, feats)  # (B, T_G + T_L, C)
    return uni_adafocus_outputs.stage_logits(exit_logits, out.glance_features.shape[1], net.exits_at_glance).float()


def dynamics_metrics(eval_stages: torch.Tensor, targets: torch.Tensor, threshold_stages: torch.Tensor,
                     flops: Sequence[float], removed: Iterable[str], metric: str,
                     budgets: Optional[Sequence[float]] = None, seed: int = 0, draws: int = DEFAULT_DRAWS,
                     criterion: str = DYNAMICS_CRITERION, steps: Optional[Sequence[int]] = None) -> Dict:
    """The metric of one Table 10 row at each average-GFLOPs budget.

    eval_stages (N, K, C) / threshold_stages (M, K, C): the stage logits of the evaluation and threshold
    sets with the row's spatial / temporal removals (:func:`dynamics_stage_logits`); targets: the
    evaluation set's multi-hot labels (mAP) or label ids (top1); flops (K,): each stage's GFLOPs;
    budgets: default :func:`ops.early_exit.evenly_spaced_budgets`. At each budget the thresholds are
    solved on the threshold set and the evaluation set exits with them (the ordinary early exit); with
    ``samplewise`` removed, ``draws`` seeded random assignments with exactly those exit counts are scored
    instead (their mean). A budget below the cheapest exit gives ``metric`` None.

    Returns ``{"removed", "metric_name", "criterion", "budgets", "gflops", "threshold_gflops", "metric",
    "exit_counts", "stage_scores"}``: per budget the GFLOPs spent on the evaluation set (and on the threshold
    set, at most the budget), the metric (percent) and the evaluation set's exit counts (K,);
    ``stage_scores`` the metric when every video exits after t focus frames (t = 0..T_L; ``steps``: the focus
    frames of each stage, the model's ``exit_focus_frames``, when they are not 0..K-1: None at a t where
    no stage stops, t = 0 without the glance exit).
    """
    removed = removed_dynamics(removed)
    budgets = [float(b) for b in (budgets or early_exit.evenly_spaced_budgets(flops))]
    if any(not b > 0 for b in budgets):
        raise ValueError(f"budgets must be positive GFLOPs, got {budgets}")
    scores = early_exit.exit_scores(threshold_stages, criterion)
    scored = early_exit.StageMetric(eval_stages, targets, metric)
    generator = torch.Generator().manual_seed(seed)
    result = {"removed": list(removed), "metric_name": metric, "criterion": criterion, "budgets": budgets,
              "gflops": [], "threshold_gflops": [], "metric": [], "exit_counts": [],
              "stage_scores": scored.stages(steps)}
    for budget in budgets:
        try:
            found = early_exit.thresholds_for_budget(scores, flops, budget)
        except ValueError:  # below the cheapest exit
            result["gflops"].append(None)
            result["threshold_gflops"].append(None)
            result["metric"].append(None)
            result["exit_counts"].append(None)
            continue
        adaptive = early_exit.evaluate_exits(eval_stages, targets, flops, thresholds=found.thresholds,
                                             criterion=criterion, metric=metric)
        if "samplewise" in removed:
            value = sum(scored(early_exit.random_exit_baseline(adaptive.exit_counts, generator))
                        for _ in range(draws)) / draws
        else:
            value = adaptive.metric
        result["gflops"].append(adaptive.expected_gflops)
        result["threshold_gflops"].append(found.expected_gflops)
        result["metric"].append(value)
        result["exit_counts"].append(adaptive.exit_counts.tolist())
    return result


def describe_dynamics(result: Dict) -> str:
    """One log line of :func:`dynamics_metrics`' result."""
    removed = ", ".join(result["removed"]) or "nothing"
    points = ", ".join(f"{m:.1f} at {g:.3f}" if m is not None else f"- at {b:.3f} (below the cheapest exit)"
                       for b, g, m in zip(result["budgets"], result["gflops"], result["metric"]))
    return f"{result['metric_name']} with {removed} removed, at GFLOPs budgets: {points}"

