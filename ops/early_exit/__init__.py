"""Sample-wise early exit: criteria, MSDNet-style threshold solving, evaluation, budget sweeps,
thresholds for a FLOPs budget and the adaptive runtime.

The network has K exits ("stages"; K = T_L + 1 = 17 for Uni-AdaFocus: stage 0 is the last glance
exit, stage k follows k focus frames). For every video and stage a criterion scores how confident
the prediction is; a video leaves at the first stage whose score reaches that stage's threshold, and
at the last stage otherwise. What the official code does, and what is fixed here, is described in
docs/official-behaviour.md, "Early exit".

Modules:

* :mod:`.criteria` — the exit criteria (``'confidence'``, ``'entropy'``, ``'max_prob'``) and
  :func:`exit_scores`.
* :mod:`.solver` — the geometric exit distribution, per-stage quotas, :func:`solve_thresholds`,
  :func:`assign_exits`, :func:`count_exits`.
* :mod:`.evaluation` — one exit assignment on logits: metric (``'mAP'`` or ``'top1'``), expected
  GFLOPs, exit ratios; the random-exit baseline and the fixed-exit curve.
* :mod:`.sweeps` — :func:`budget_sweep`, the official experiment over a grid of p.
* :mod:`.budget` — :func:`thresholds_for_budget`, thresholds whose cost fits a FLOPs budget.
* :mod:`.thresholds_file` — the JSON thresholds file (:func:`save_thresholds`, :func:`load_thresholds`).
* :mod:`.adaptive` — :class:`AdaptiveRunner`, inference that stops computing for a video once it exits.
"""
from .adaptive import AdaptiveResult, AdaptiveRunner
from .budget import BudgetThresholds, thresholds_for_budget
from .criteria import CRITERIA, exit_scores
from .evaluation import (METRICS, ExitEvaluation, FixedExitPoint, StageMetric, evaluate_exits, exit_ratios,
                         expected_gflops, fixed_exit_curve, random_exit_baseline)
from .solver import (LAST_STAGE_THRESHOLD, NO_EXIT_THRESHOLD, assign_exits, count_exits, descending_order,
                     exit_quota, geometric_exit_distribution, solve_thresholds)
from .sweeps import DEFAULT_P_VALUES, BudgetPoint, SweepResult, budget_sweep
from .thresholds_file import ThresholdsFile, ThresholdsFileError, load_thresholds, save_thresholds

__all__ = [
    # criteria
    "CRITERIA", "exit_scores",
    # solver
    "NO_EXIT_THRESHOLD", "LAST_STAGE_THRESHOLD", "geometric_exit_distribution", "exit_quota",
    "descending_order", "solve_thresholds", "assign_exits", "count_exits",
    # evaluation
    "METRICS", "expected_gflops", "exit_ratios", "random_exit_baseline", "StageMetric", "ExitEvaluation",
    "evaluate_exits", "FixedExitPoint", "fixed_exit_curve",
    # sweeps
    "DEFAULT_P_VALUES", "BudgetPoint", "SweepResult", "budget_sweep",
    # budget
    "BudgetThresholds", "thresholds_for_budget",
    # thresholds file
    "ThresholdsFile", "ThresholdsFileError", "save_thresholds", "load_thresholds",
    # adaptive runtime
    "AdaptiveResult", "AdaptiveRunner",
]
