"""What an evaluation reports: every key of ``metrics.json`` and what it means (:data:`METRICS_KEYS`), the
names older runs wrote mapped to today's when reading (:func:`current_names`), the figures beyond
``ops.metrics.head_metrics`` (the policy ablation's, early exit on the gathered stage logits with a
thresholds file) and the log line of an evaluation.
"""
from __future__ import annotations

from typing import Any, Dict, List

import torch

from . import early_exit
from .metrics import SECONDARY_HEADS, mean_average_precision, topk_accuracy
from . import policy_ablation

# ------------------------------------------------------------------------------------------------
# metrics.json: every key and what it means
# ------------------------------------------------------------------------------------------------
#: What each secondary head's figures (``{name}_top1``, ...; ``ops.metrics.SECONDARY_HEADS``) describe.
HEAD_MEANINGS = {
    "all_exits": "every exit's class probabilities averaged (the official Cat head)",
    "glance_head": "the auxiliary glance classifier's probabilities averaged over the glance frames (the official "
                   "Global head; not the glance exit)",
    "focus_head": "the auxiliary focus classifier's probabilities averaged over the focus patches (the official "
                  "Local head)",
}


def _figure_keys() -> Dict[str, str]:
    """The keys of one evaluation's figures (``final`` of metrics.json, ``metrics`` of metrics_{suffix}.json)."""
    keys = {"metric": "the data set's metric, mAP or top1", "score": "the prediction's value of that metric "
            "(what best tracks)", "loss": "the validation loss", "num_videos": "videos evaluated",
            "prediction_top1": "top-1 accuracy of the prediction (the last exit)",
            "prediction_top5": "top-5 accuracy of the prediction (five classes or more)",
            "prediction_mAP": "mAP of the prediction's softmax (as officially)"}
    for name in SECONDARY_HEADS.values():
        keys.update({f"{name}_top1": f"top-1 accuracy of {HEAD_MEANINGS[name]}",
                     f"{name}_top5": f"top-5 accuracy of {HEAD_MEANINGS[name]} (five classes or more)",
                     f"{name}_mAP": f"mAP of {HEAD_MEANINGS[name]}, softmaxed again as the official log does",
                     f"{name}_mean_prob_mAP": f"mAP of {HEAD_MEANINGS[name]}, the probabilities themselves"})
    keys.update({
        "stage_scores": "the metric when every video exits after t = 0..T_L focus frames (the exit stages; "
                        "null at a t where no stage stops)",
        "policy": "the policy against the ground truth (data with ground truth)",
        "policy_ablation": "--policy_ablation: the model with its policy replaced at equal GFLOPs",
        "dynamics_ablation": "--remove_dynamics: the metric at each budget with the named dynamics removed",
        "early_exit": "--evaluate --thresholds: early exit with the file's thresholds",
    })
    return keys


#: Every key of ``metrics.json`` / ``metrics_{eval_suffix}.json``, by the dictionary that holds it ('file':
#: the file itself; 'figures': one evaluation's figures; else the figure of that name), with its meaning.
#: docs/metrics.md documents each of them.
METRICS_KEYS: Dict[str, Dict[str, str]] = {
    "file": {"final": "the last validation's figures (training)", "best": "the best score and its epoch (training)",
             "epochs_done": "epochs trained", "gflops": "GFLOPs per video, all exits", "time_s": "seconds taken (a training run's across --resume)",
             "evaluated": "the checkpoint evaluated (--evaluate)", "metrics": "the figures (--evaluate)"},
    "best": {"score": "the best validation score", "epoch": "the epoch that reached it"},
    "figures": _figure_keys(),
    "policy": {
        "frames_show_object": "% of the chosen focus frames that show the object",
        "uniform_frames_show_object": "the same for T_L evenly spaced frames",
        "patches_cover_object": "% of the patches (on frames that show it) covering at least half of its box",
        "random_patches_cover_object": "the same for patches of those sizes at random positions",
        "videos_with_object_in_clip": "% of videos whose clip shows the object at all",
        "mean_patch_area_fraction": "the patches' mean area over the frame's", "frames_evaluated": "frames scored"},
    "policy_ablation": {
        "metric": "the metric's name", "full": "the model's own figure",
        "uniform_frames": "evenly spaced focus frames",
        "random_patches": "patches at random positions (mean of the draws)",
        "uniform_frames_random_patches": "both",
        "glance_exit": "the classifier's glance exit alone (early-exit stage 0; absent without one)"},
    "dynamics_ablation": {
        "removed": "the dynamics removed", "metric_name": "the metric's name", "criterion": "the exit criterion",
        "budgets": "the average-GFLOPs budgets", "gflops": "GFLOPs spent on the evaluation set per budget",
        "threshold_gflops": "GFLOPs spent on the threshold set per budget", "metric": "the metric per budget",
        "exit_counts": "videos exiting at each stage per budget",
        "stage_scores": "as the figures' stage_scores, with the dynamics removed",
        "threshold_set": "the videos the thresholds were fitted on"},
    "early_exit": {
        "criterion": "the exit criterion", "budget_gflops": "the budget the thresholds were solved for",
        "metric_name": "the metric's name", "metric": "the metric with early exit", "gflops": "GFLOPs per video",
        "exit_counts": "videos exiting at each stage"},
}

#: Names older runs wrote -> today's (the secondary heads were named after their rows).
RENAMED_KEYS = {f"{row}_{suffix}": f"{name}_{suffix}" for row, name in SECONDARY_HEADS.items()
                for suffix in ("top1", "top5", "mAP", "mean_prob_mAP")}


def current_names(value: Any) -> Any:
    """A ``metrics.json`` (or any part of it) read back with today's key names (:data:`RENAMED_KEYS`); a
    key already under its new name wins over an old one."""
    if isinstance(value, dict):
        renamed = {RENAMED_KEYS.get(k, k): current_names(v) for k, v in value.items() if k not in RENAMED_KEYS}
        for k, v in value.items():
            if k in RENAMED_KEYS:
                renamed.setdefault(RENAMED_KEYS[k], current_names(v))
        return renamed
    if isinstance(value, list):
        return [current_names(v) for v in value]
    return value


# ------------------------------------------------------------------------------------------------
# The figures beyond the heads', and the log line
# ------------------------------------------------------------------------------------------------


def exit_targets(rows: Dict[str, torch.Tensor], metric: str) -> torch.Tensor:
    """The targets early exit scores gathered rows against: multi-hot labels (mAP) or label ids (top1)."""
    return rows["labels"].bool() if metric == "mAP" else rows["label"]


def ablation_metrics(rows: Dict[str, torch.Tensor], metrics: Dict) -> Dict[str, float]:
    """The dataset's metric for the full model and every ``ablation_*`` row (B, S, C), averaged over the S draws."""
    metric = metrics["metric"]

    def value(logits: torch.Tensor) -> float:
        if metric == "mAP":
            return mean_average_precision(torch.softmax(logits.float(), dim=-1), rows["labels"].bool())[0]
        return topk_accuracy(logits, rows["label"], ks=(1,))[0]

    out = {"metric": metric, "full": metrics["score"]}
    for key, logits in rows.items():
        if key.startswith("ablation_"):
            out[key[len("ablation_"):]] = sum(value(draw) for draw in logits.unbind(1)) / logits.shape[1]
    return out


def summarise(metrics: Dict) -> str:
    """One log line of an evaluation's figures."""
    keys = [k for k in ("score", "prediction_mAP", "prediction_top1", "prediction_top5", "all_exits_mAP",
                        "glance_head_mAP", "focus_head_mAP", "all_exits_top1", "glance_head_top1", "focus_head_top1",
                        "loss") if k in metrics]
    text = "  ".join(f"{k} {metrics[k]:.3f}" for k in keys)
    if "policy" in metrics:
        p = metrics["policy"]
        text += (f"  | frames show object {p['frames_show_object']:.1f}% (uniform {p['uniform_frames_show_object']:.1f}%)"
                 f", patches cover it {p['patches_cover_object']:.1f}% (random {p['random_patches_cover_object']:.1f}%)")
    if "policy_ablation" in metrics:
        a = metrics["policy_ablation"]
        text += (f"  | {a['metric']} at equal GFLOPs: uniform frames {a['uniform_frames']:.1f}, random patches "
                 f"{a['random_patches']:.1f}, both {a['uniform_frames_random_patches']:.1f}; "
                 + (f"glance exit alone {a['glance_exit']:.1f}" if "glance_exit" in a else "no glance exit"))
    if "dynamics_ablation" in metrics:
        text += "  | " + policy_ablation.describe_dynamics(metrics["dynamics_ablation"])
    return text


def load_exit_thresholds(path: str, num_stages: int):
    """A thresholds file for a model with ``num_stages`` exit stages, or a clear exit."""
    try:
        found = early_exit.load_thresholds(path)
    except early_exit.ThresholdsFileError as exc:
        raise SystemExit(f"--thresholds: {exc}") from None
    if found.thresholds.numel() != num_stages:
        raise SystemExit(f"--thresholds {path}: {found.thresholds.numel()} thresholds for a model with {num_stages} "
                         f"exits (the last glance exit and one per focus frame)")
    return found


def early_exit_metrics(rows: Dict[str, torch.Tensor], thresholds, flops: List[float], metric: str) -> Dict:
    """Early exit with ``thresholds`` on the gathered stage logits (exact: the exits are running maxima)."""
    result = early_exit.evaluate_exits(rows["stages"].float(), exit_targets(rows, metric), flops,
                                       thresholds=thresholds.thresholds, criterion=thresholds.criterion, metric=metric)
    return {"criterion": thresholds.criterion, "budget_gflops": thresholds.budget_gflops, "metric_name": metric,
            "metric": result.metric, "gflops": result.expected_gflops, "exit_counts": result.exit_counts.tolist()}
