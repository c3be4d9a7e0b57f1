"""Sample-wise early exit: criteria, MSDNet-style threshold solving, evaluation, budget sweeps,
thresholds for a FLOPs budget and the adaptive runtime.

The network has K exits ("stages"; K = T_L + 1 = 17 for Uni-AdaFocus: stage 0 is the last glance exit,
stage k follows k focus frames; K = T_L, stage k after k + 1 focus frames, for a model trained without
``--reuse_glance_features``, whose glance exits give every video the same logits). For every video and
stage a criterion scores how confident the prediction is; a video leaves at the first stage whose score
reaches that stage's threshold, and at the last stage otherwise. What the official code does, and what
is fixed here, is described in docs/official-behaviour.md, "Early exit".

The same machinery runs the official Uni-AdaFocus-TSM procedure, which has K = 2 exits: stage 0 is
the glance-only prediction (the glance network's auxiliary head, averaged over frames), stage 1 the
full model. Its grid is :data:`TSM_P_VALUES` (p = 1..399, 4e3, 4e4, 4e5, 4e6) with q proportional
to (1, r), r = float32(p / 100) (``p_scale=TSM_P_SCALE``), so about 1/(1 + p/100) of the threshold
set should leave at stage 0; the quota floor(N q_0) is taken in float32 (p = 275, N = 300 gives 79,
not 80); T_0 is the score of that many-th most confident threshold-set sample (1e8 when the quota is
0) and T_1 = -1e8; the metric is top-1 and there is no random baseline. Run it with
``budget_sweep(..., metric='top1', p_values=TSM_P_VALUES, p_scale=TSM_P_SCALE,
random_baseline=False)``.

AdaFocusV2 (``P_GRIDS['v2']``) has K = 16 exits, one after each frame: q_k proportional to
(p/10)**(k+1) for p = 5..39 (``first_power=1``, r = float32(p / 10)), linear FLOPs (exit k costs
k + 1 frames), top-1 or mAP, no random baseline; the same quota and threshold rules.

Modules:

* :mod:`.criteria` — the exit criteria (``'confidence'``, ``'entropy'``, ``'max_prob'``) and
  :func:`exit_scores`.
* :mod:`.solver` — the geometric exit distribution (both grids, ``p_scale``), per-stage quotas,
  :func:`solve_thresholds`, :func:`assign_exits`, :func:`count_exits`.
* :mod:`.evaluation` — one exit assignment on logits: metric (``'mAP'`` or ``'top1'``), expected
  GFLOPs, exit ratios; the random-exit baseline and the fixed-exit curve.
* :mod:`.sweeps` — :func:`budget_sweep`, the official experiment over a grid of p
  (:data:`DEFAULT_P_VALUES`, :data:`TSM_P_VALUES`).
* :mod:`.budget` — :func:`thresholds_for_budget`, thresholds whose cost fits a FLOPs budget;
  :func:`evenly_spaced_budgets` between a model's cheapest exit and its full cost.
* :mod:`.thresholds_file` — the JSON thresholds file (:func:`save_thresholds`, :func:`load_thresholds`).
* :mod:`.adaptive` — :class:`AdaptiveRunner`, inference that stops computing for a video once it exits.
"""
from .adaptive import AdaptiveResult, AdaptiveRunner
from .budget import (BudgetThresholds, evenly_spaced_budgets, geometric_p_for_cost, quantile_exit_stages,
                     thresholds_for_budget)
from .criteria import CRITERIA, exit_scores
from .evaluation import (METRICS, ExitEvaluation, FixedExitPoint, StageMetric, evaluate_exits, exit_ratios,
                         expected_gflops, fixed_exit_curve, random_exit_baseline)
from .solver import (LAST_STAGE_THRESHOLD, NO_EXIT_THRESHOLD, assign_exits, count_exits, descending_order,
                     exit_distribution_ratio, exit_quota, geometric_exit_distribution, normalised_distribution,
                     solve_thresholds)
from .sweeps import (DEFAULT_P_VALUES, P_GRIDS, TSM_P_SCALE, TSM_P_VALUES, V2_P_SCALE, V2_P_VALUES, BudgetPoint,
                     ExitGrid, SweepResult, budget_sweep)
from .thresholds_file import ThresholdsFile, ThresholdsFileError, load_thresholds, save_thresholds

__all__ = [
    # criteria
    "CRITERIA", "exit_scores",
    # solver
    "NO_EXIT_THRESHOLD", "LAST_STAGE_THRESHOLD", "exit_distribution_ratio", "geometric_exit_distribution",
    "normalised_distribution", "exit_quota", "descending_order", "solve_thresholds", "assign_exits", "count_exits",
    # evaluation
    "METRICS", "expected_gflops", "exit_ratios", "random_exit_baseline", "StageMetric", "ExitEvaluation",
    "evaluate_exits", "FixedExitPoint", "fixed_exit_curve",
    # sweeps
    "DEFAULT_P_VALUES", "TSM_P_VALUES", "TSM_P_SCALE", "V2_P_VALUES", "V2_P_SCALE", "ExitGrid", "P_GRIDS", "BudgetPoint", "SweepResult", "budget_sweep",
    # budget
    "BudgetThresholds", "thresholds_for_budget", "geometric_p_for_cost", "quantile_exit_stages", "evenly_spaced_budgets",
    # thresholds file
    "ThresholdsFile", "ThresholdsFileError", "save_thresholds", "load_thresholds",
    # adaptive runtime
    "AdaptiveResult", "AdaptiveRunner",
]
