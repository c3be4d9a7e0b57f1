"""What an evaluation reports beyond ``ops.metrics.head_metrics``: the policy ablation's figures, early exit
on the gathered stage logits with a thresholds file, and the log line of an evaluation.
"""
from __future__ import annotations

from typing import Dict, List

import torch

from . import early_exit
from .metrics import mean_average_precision, topk_accuracy
from . import policy_ablation


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
    keys = [k for k in ("score", "prediction_mAP", "prediction_top1", "prediction_top5", "exits_mAP", "glance_mAP",
                        "focus_mAP", "exits_top1", "glance_top1", "focus_top1", "loss") if k in metrics]
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
