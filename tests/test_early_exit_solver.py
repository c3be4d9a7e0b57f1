"""Early exit (ops.early_exit): parity with the official results, brute-force checks, baselines,
budget fitting and the thresholds file."""
import json
import math
import random

import numpy as np
import pytest
import torch

from datasets import DATASETS
from ops.early_exit import (CRITERIA, LAST_STAGE_THRESHOLD, NO_EXIT_THRESHOLD, ThresholdsFileError,
                            assign_exits, budget_sweep, count_exits, descending_order,
                            evaluate_exits, exit_scores, expected_gflops, fixed_exit_curve,
                            geometric_exit_distribution, load_thresholds, random_exit_baseline,
                            save_thresholds, solve_thresholds, thresholds_for_budget)
from ops.metrics import mean_average_precision, topk_accuracy
from support import fixture_params, require_fixture


# ---------------------------------------------------------------------------------------------------
# Parity with the official early_exit(): every early_exit_*.pt in the reference folder itself
# ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module", params=fixture_params("early_exit_*.pt"))
def parity(request):
    """A fixture and our sweep of each of its runs, named ``{dataset}/{criterion}``: the dataset gives the
    metric (its registry entry's: mAP for actnet, top-1 for minik), the run its Python ``random`` seed."""
    data = torch.load(require_fixture(request.param), weights_only=True)
    inputs, results = data["inputs"], {}
    assert data["runs"], "the fixture records no run"
    for run in data["runs"]:
        dataset, criterion = run.split("/")
        # The fixture seeded Python's `random` with python_random_seed before each early_exit();
        # random.Random(seed) replays the same random.shuffle draws, one per p.
        seed = data["runs"][run].get("python_random_seed", 0)
        results[run] = budget_sweep(
            inputs["train_logits"], inputs["train_targets"], inputs["val_logits"], inputs["val_targets"],
            data["flops_table"], criterion=criterion, metric=DATASETS[dataset].metric,
            p_values=data["p_values"], generator=random.Random(seed))
    return data, results


def test_fixture_exit_counts_are_exact(parity):
    data, results = parity
    for run, res in results.items():
        ours = torch.tensor([pt.exit_counts for pt in res.points]).float()
        assert torch.equal(ours, data["runs"][run]["exit_counts"]), run


def test_fixture_thresholds(parity):
    data, results = parity
    for run, res in results.items():
        ours = torch.tensor([pt.thresholds for pt in res.points], dtype=torch.float64).float()
        ref = data["runs"][run]["thresholds"]
        if run.endswith("confidence"):
            assert torch.equal(ours, ref), run            # max logits: bit-exact
        else:
            # Entropy: our criterion is the official float32 expression and bit-identical to it on this
            # machine, but the fixture's values differ by <= 2 float32 ulps (measured 2.2e-7 relative):
            # exp/log kernels differ between CPUs. The 1e8 / -1e8 sentinels are exact.
            sentinel = ref.abs() >= 1e7
            assert torch.equal(ours[sentinel], ref[sentinel]), run
            assert torch.allclose(ours[~sentinel], ref[~sentinel], rtol=1e-6, atol=0), run


def test_fixture_exit_ratios_are_exact(parity):
    data, results = parity
    for run, res in results.items():
        ours = torch.tensor([pt.exit_ratios for pt in res.points], dtype=torch.float32)
        assert torch.equal(ours, data["runs"][run]["ratio_list"]), run


def test_fixture_expected_flops(parity):
    data, results = parity
    for run, res in results.items():
        assert res.flops_list == pytest.approx(data["runs"][run]["flops_list"], rel=1e-6, abs=0), run


def test_fixture_metric(parity):
    # mAP: ours is float64 from the same ranks, the official float32 (measured gap <= 5e-6).
    data, results = parity
    for run, res in results.items():
        assert res.metric_list == pytest.approx(data["runs"][run]["metric_list"], rel=0, abs=1e-4), run


def test_fixture_random_baseline_metric_with_the_official_draws(parity):
    data, results = parity
    for run, res in results.items():
        assert res.random_metric_list == pytest.approx(data["runs"][run]["random_metric_list"], rel=0, abs=1e-4), run


def test_fixture_last_stage_metric(parity):
    data, results = parity
    for run, res in results.items():
        assert res.last_stage_metric == pytest.approx(data["runs"][run]["last_stage_metric"], rel=0, abs=1e-4), run


# ---------------------------------------------------------------------------------------------------
# Brute force (plain Python loops) on independently generated logits
# ---------------------------------------------------------------------------------------------------
N_TRAIN, N_VAL, K, C = 257, 131, 5, 7


def _logits(n, seed):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, C, (n,), generator=g)
    x = 1.3 * torch.randn(n, K, C, generator=g)
    x[torch.arange(n), :, labels] += torch.linspace(0.5, 3.0, K) * (0.3 + torch.rand(n, 1, generator=g))
    return x, labels


@pytest.fixture(scope="module")
def own_data():
    train, _ = _logits(N_TRAIN, 11)
    val, val_labels = _logits(N_VAL, 12)
    flops = [1.0 + 2.5 * k for k in range(K)]
    return train, val, val_labels, flops


def _brute_quota(q, n):
    """Official quota: q normalised once more, floor(n * q_k) with the product in float32."""
    q = q / q.sum()
    return [math.floor(float(np.float32(n) * np.float32(v))) for v in q.tolist()]


def _brute_solve(scores, quota):
    """The official dynamic_eval_find_threshold as loops; ties in descending order by sample index."""
    rows = scores.tolist()
    n, k_stages = len(rows), len(rows[0])
    thresholds = [NO_EXIT_THRESHOLD] * k_stages
    exited = [False] * n
    for k in range(k_stages - 1):
        if quota[k] <= 0:
            continue
        order = sorted(range(n), key=lambda i: (-rows[i][k], i))
        count = 0
        for i in order:
            if exited[i]:
                continue
            count += 1
            exited[i] = True
            if count == quota[k]:
                thresholds[k] = rows[i][k]
                break
    thresholds[-1] = LAST_STAGE_THRESHOLD
    return thresholds


def _brute_assign(scores, thresholds):
    out = []
    for row in scores.tolist():
        stage = len(row) - 1
        for k, (s, t) in enumerate(zip(row, thresholds)):
            if s >= t:
                stage = k
                break
        out.append(stage)
    return out


P_GRID = [i / 20 for i in range(1, 20)] + [1.0, 1.7, 4.0]


@pytest.mark.parametrize("criterion", CRITERIA)
def test_solver_matches_brute_force(own_data, criterion):
    train = own_data[0]
    scores = exit_scores(train, criterion)
    for p in P_GRID:
        q = geometric_exit_distribution(p, K)
        ours = solve_thresholds(scores, q)
        ref = _brute_solve(scores, _brute_quota(q, N_TRAIN))
        assert ours.tolist() == ref, p


@pytest.mark.parametrize("criterion", CRITERIA)
def test_exit_assignment_matches_brute_force(own_data, criterion):
    train, val = own_data[0], own_data[1]
    train_scores, val_scores = exit_scores(train, criterion), exit_scores(val, criterion)
    for p in P_GRID:
        thresholds = solve_thresholds(train_scores, geometric_exit_distribution(p, K))
        assert assign_exits(val_scores, thresholds).tolist() == _brute_assign(val_scores, thresholds.tolist())


@pytest.mark.parametrize("criterion", CRITERIA)
def test_budget_sweep_matches_brute_force(own_data, criterion):
    train, val, val_labels, flops = own_data
    res = budget_sweep(train, None, val, val_labels, flops, criterion=criterion, metric="top1",
                       p_values=P_GRID)
    train_scores, val_scores = exit_scores(train, criterion), exit_scores(val, criterion)
    for point in res.points:
        q = geometric_exit_distribution(point.p, K)
        thresholds = _brute_solve(train_scores, _brute_quota(q, N_TRAIN))
        exits = _brute_assign(val_scores, thresholds)
        assert point.thresholds == thresholds
        assert point.exit_counts == [exits.count(k) for k in range(K)]
        hits = sum(int(val[i, e].argmax()) == int(val_labels[i]) for i, e in enumerate(exits))
        assert point.metric == pytest.approx(100.0 * hits / N_VAL, abs=1e-9)


def _brute_solve_ties(scores, quota):
    """The solver's tie rule by enumeration: at each stage every threshold that splits the samples not yet
    taken (each of their distinct scores, or 1e8 for nobody) is tried, and the one whose exit count is closest
    to the quota wins (equally close: the smaller count); the samples it lets out are taken."""
    rows = scores.tolist()
    n, k_stages = len(rows), len(rows[0])
    thresholds = [NO_EXIT_THRESHOLD] * k_stages
    exited = [False] * n
    for k in range(k_stages - 1):
        if quota[k] <= 0:
            continue
        free = [i for i in range(n) if not exited[i]]
        candidates = [(sum(rows[i][k] >= t for i in free), t) for t in {rows[i][k] for i in free}]
        candidates.append((0, NO_EXIT_THRESHOLD))
        count, thresholds[k] = min(candidates, key=lambda c: (abs(c[0] - quota[k]), c[0]))
        for i in free:
            exited[i] = exited[i] or rows[i][k] >= thresholds[k]
    thresholds[-1] = LAST_STAGE_THRESHOLD
    return thresholds


def test_solver_with_tied_scores_matches_brute_force_over_the_two_choices():
    g = torch.Generator().manual_seed(3)
    scores = torch.randint(0, 4, (60, 4), generator=g).float()
    official_differs = 0
    for p in (0.2, 0.5, 0.8, 2.0):
        q = geometric_exit_distribution(p, 4)
        quota = _brute_quota(q, 60)
        ours = solve_thresholds(scores, q)
        assert ours.tolist() == _brute_solve_ties(scores, quota), p
        counts = count_exits(assign_exits(scores, ours), 4).tolist()
        official_differs += counts != count_exits(assign_exits(scores, torch.tensor(_brute_solve(scores, quota))), 4).tolist()
    assert official_differs  # the tables do exercise the rule


def test_tie_rule_on_a_hand_made_table():
    """Stage 0 has a group of four tied scores across the quota: with quota 3, one above the group and the group
    (5 exits) are 2 away from it, one alone (1 exit) 2 too: the tie goes to the smaller count; with quota 4, all
    five are closer. Stage 1 then takes its quota among the samples stage 0 left."""
    scores = torch.tensor([[0.9, 0.1], [0.5, 0.8], [0.5, 0.7], [0.5, 0.2], [0.5, 0.6], [0.3, 0.9], [0.1, 0.4]])
    cases = {3: ([0.9, 0.9], [1, 1, 5]), 4: ([0.5, 0.9], [5, 1, 1]), 1: ([0.9, 0.9], [1, 1, 5])}
    for want, (expected_thresholds, expected_counts) in cases.items():
        table = torch.cat((scores, torch.zeros(7, 1)), dim=1)  # a last stage that takes the rest
        thresholds = solve_thresholds(table, quota=torch.tensor([want, 1, 0]))
        assert thresholds.tolist()[:2] == pytest.approx(expected_thresholds), want
        assert thresholds.tolist() == _brute_solve_ties(table, [want, 1, 0]), want
        assert count_exits(assign_exits(table, thresholds), 3).tolist() == expected_counts, want


def test_a_constant_stage_sends_nobody_there_when_the_quota_is_under_half():
    """A classifier with a constant output at stage 0 (every score equal): officially any quota there lets
    everybody out; here nobody leaves unless the quota is more than half of the samples."""
    g = torch.Generator().manual_seed(5)
    scores = torch.cat((torch.full((40, 1), 0.25), torch.rand(40, 3, generator=g)), dim=1)
    for want, stage0 in ((1, 0), (19, 0), (20, 0), (21, 40), (40, 40)):
        thresholds = solve_thresholds(scores, quota=torch.tensor([want, 10, 10, 0]))
        assert int(count_exits(assign_exits(scores, thresholds), 4)[0]) == stage0, want


def test_budget_on_a_constant_first_stage_pays_for_later_stages():
    """thresholds_for_budget facing identical stage-0 scores (a glance exit that reads no glance features): a
    budget that a geometric distribution with q_0 < 1/2 fits (here 3 stages: p > 0.62, costing 2.69 GFLOPs
    and more) sends nobody to stage 0 and spends it on the later stages; below that only stage 0 fits. The
    official tie rule let every sample out at stage 0 whenever its quota was positive (cost 1.0 at every budget
    below 3.0)."""
    g = torch.Generator().manual_seed(6)
    n, flops = 192, [1.0, 2.0, 3.0]
    scores = torch.cat((torch.full((n, 1), -0.7), -torch.rand(n, 2, generator=g)), dim=1)
    for budget in (2.75, 2.85, 2.95):
        found = thresholds_for_budget(scores, flops, budget)
        assert found.exit_counts[0] == 0, budget
        assert budget - 0.02 <= found.expected_gflops <= budget, budget
    assert thresholds_for_budget(scores, flops, 2.6).exit_counts.tolist() == [n, 0, 0]


def test_solver_takes_exactly_the_quota_and_puts_the_rest_last():
    g = torch.Generator().manual_seed(4)
    scores = torch.randn(40, 4, generator=g)
    thresholds = solve_thresholds(scores, quota=torch.tensor([10, 7, 5, 0]))
    assert count_exits(assign_exits(scores, thresholds), 4).tolist() == [10, 7, 5, 18]


def test_solver_clamps_a_quota_larger_than_the_samples_left():
    scores = torch.tensor([[4.0, 1.0, 0.0], [3.0, 2.0, 0.0], [2.0, 3.0, 0.0], [1.0, 4.0, 0.0]])
    thresholds = solve_thresholds(scores, quota=torch.tensor([3, 3, 0]))
    assert thresholds.tolist() == [2.0, 4.0, LAST_STAGE_THRESHOLD]


def test_solver_overflow_error_mode_raises():
    scores = torch.tensor([[4.0, 1.0, 0.0], [3.0, 2.0, 0.0], [2.0, 3.0, 0.0], [1.0, 4.0, 0.0]])
    with pytest.raises(ValueError, match="exceeds"):
        solve_thresholds(scores, quota=torch.tensor([3, 3, 0]), on_overflow="error")


def test_shared_order_gives_the_same_thresholds():
    scores = exit_scores(_logits(100, 5)[0], "confidence")
    q = geometric_exit_distribution(0.6, K)
    assert torch.equal(solve_thresholds(scores, q, order=descending_order(scores)), solve_thresholds(scores, q))


# ---------------------------------------------------------------------------------------------------
# Criteria, distribution, assignment
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("criterion", CRITERIA)
def test_exit_scores_match_per_row_float64_formulas(criterion):
    x, _ = _logits(20, 6)
    ours = exit_scores(x, criterion)
    ref = torch.empty(20, K, dtype=torch.float64)
    for i in range(20):
        for k in range(K):
            row = x[i, k].double().tolist()
            m = max(row)
            z = sum(math.exp(v - m) for v in row)
            probs = [math.exp(v - m) / z for v in row]
            ref[i, k] = {"confidence": m, "max_prob": max(probs),
                         "entropy": sum(p * math.log(p) for p in probs if p > 0)}[criterion]
    assert torch.allclose(ours.double(), ref, rtol=1e-5, atol=1e-6)


def test_entropy_is_finite_when_the_softmax_underflows():
    x = torch.tensor([[[0.0, 120.0, 0.0]]])
    p = torch.softmax(x, -1)
    assert torch.isnan((p * torch.log(p)).sum(-1)).all()      # the official expression
    score = exit_scores(x, "entropy")
    assert torch.isfinite(score).all() and float(score) == pytest.approx(0.0, abs=1e-30)


@pytest.mark.parametrize("criterion", CRITERIA)
def test_fused_softmax_pass_gives_the_same_scores_as_exit_scores(criterion):
    from ops.early_exit.criteria import softmax_table
    x = 3 * _logits(3000, 8)[0]                       # > one chunk of rows
    probs, scores = softmax_table(x, criterion)
    assert torch.equal(scores, exit_scores(x, criterion))
    assert torch.equal(probs, torch.softmax(x, -1))


def test_entropy_of_nan_logits_is_nan_so_the_sample_moves_on():
    x = torch.tensor([[[float("nan"), 1.0, 0.0], [3.0, 0.0, 0.0]]])
    score = exit_scores(x, "entropy")
    assert torch.isnan(score[0, 0]) and torch.isfinite(score[0, 1])
    assert assign_exits(score, torch.tensor([-10.0, LAST_STAGE_THRESHOLD])).tolist() == [1]


def test_geometric_distribution_is_normalised_powers_of_p():
    for p, k in ((0.05, 17), (0.5, 17), (0.95, 17), (3.0, 6)):
        q = geometric_exit_distribution(p, k).double()
        ref = torch.tensor([p ** j for j in range(k)], dtype=torch.float64)
        assert torch.allclose(q, ref / ref.sum(), rtol=1e-5, atol=1e-30)   # float32 exp(k log p)


def test_geometric_distribution_does_not_overflow_for_large_p():
    q = geometric_exit_distribution(1e4, 17)
    assert torch.isfinite(q).all() and float(q[-1]) == pytest.approx(1.0, abs=1e-3)


def test_exit_is_the_first_stage_reaching_its_threshold():
    scores = torch.tensor([[0.9, 0.1, 0.5], [0.1, 0.8, 0.9], [0.1, 0.1, 0.1], [float("nan"), 0.7, 0.0]])
    thresholds = torch.tensor([0.9, 0.7, LAST_STAGE_THRESHOLD])
    assert assign_exits(scores, thresholds).tolist() == [0, 1, 2, 1]


def test_last_stage_takes_every_sample_left_even_with_nan_scores():
    scores = torch.full((3, 3), float("nan"))
    assert assign_exits(scores, torch.tensor([0.0, 0.0, 0.0])).tolist() == [2, 2, 2]


# ---------------------------------------------------------------------------------------------------
# Evaluation and baselines
# ---------------------------------------------------------------------------------------------------
def test_expected_flops_is_the_exit_weighted_mean():
    counts = torch.tensor([5, 0, 3, 2])
    flops = [1.5, 2.0, 3.25, 10.0]
    assert expected_gflops(counts, flops) == pytest.approx((5 * 1.5 + 3 * 3.25 + 2 * 10.0) / 10, rel=1e-6)


def test_evaluate_exits_map_is_the_map_of_the_softmax_of_the_chosen_logits(own_data):
    _, val, val_labels, flops = own_data
    exits = torch.randint(0, K, (N_VAL,), generator=torch.Generator().manual_seed(0))
    ev = evaluate_exits(val, val_labels, flops, exits=exits, metric="mAP")
    chosen = torch.stack([val[i, e] for i, e in enumerate(exits.tolist())])
    assert torch.equal(ev.outputs, chosen)
    assert ev.metric == mean_average_precision(torch.softmax(chosen, 1), val_labels)[0]


def test_evaluate_exits_top1_uses_the_first_label_column(own_data):
    _, val, val_labels, flops = own_data
    padded = torch.stack((val_labels, torch.full_like(val_labels, -1)), 1)
    exits = torch.randint(0, K, (N_VAL,), generator=torch.Generator().manual_seed(1))
    ev = evaluate_exits(val, padded, flops, exits=exits, metric="top1")
    assert ev.metric == topk_accuracy(ev.outputs, val_labels, ks=(1,))[0]


def test_random_baseline_keeps_the_exit_counts():
    counts = torch.tensor([40, 0, 17, 3, 71])
    exits = random_exit_baseline(counts, torch.Generator().manual_seed(0))
    assert torch.equal(count_exits(exits, 5), counts)


def test_random_baseline_is_reproducible_under_a_seed():
    counts = torch.tensor([40, 0, 17, 3, 71])
    for make in (lambda: torch.Generator().manual_seed(7), lambda: np.random.default_rng(7),
                 lambda: random.Random(7)):
        assert torch.equal(random_exit_baseline(counts, make()), random_exit_baseline(counts, make()))


def test_random_baseline_depends_on_the_seed():
    counts = torch.tensor([40, 0, 17, 3, 71])
    a = random_exit_baseline(counts, torch.Generator().manual_seed(1))
    b = random_exit_baseline(counts, torch.Generator().manual_seed(2))
    assert not torch.equal(a, b)


def test_random_baseline_assigns_permutation_slices_in_stage_order():
    # the official rule: samples perm[c_{k-1}:c_k] exit at stage k
    perm = torch.tensor([3, 0, 4, 1, 2])
    exits = random_exit_baseline(torch.tensor([2, 0, 3]), permutation=perm)
    assert exits.tolist() == [0, 2, 2, 0, 2]


@pytest.mark.parametrize("metric", ["mAP", "top1"])
def test_stage_metric_equals_the_metric_of_the_gathered_logits(own_data, metric):
    from ops.early_exit import StageMetric
    _, val, val_labels, _ = own_data
    exits = torch.randint(0, K, (N_VAL,), generator=torch.Generator().manual_seed(2))
    chosen = val[torch.arange(N_VAL), exits]
    expected = (mean_average_precision(torch.softmax(chosen, 1), val_labels)[0] if metric == "mAP"
                else topk_accuracy(chosen, val_labels, ks=(1,))[0])
    assert StageMetric(val, val_labels, metric)(exits) == pytest.approx(expected, abs=1e-12)


def test_fixed_exit_curve_is_the_metric_of_each_stage(own_data):
    _, val, val_labels, flops = own_data
    curve = fixed_exit_curve(val, val_labels, flops, metric="mAP")
    for k, point in enumerate(curve):
        assert point.gflops == flops[k]
        assert point.metric == mean_average_precision(torch.softmax(val[:, k], 1), val_labels)[0]


def test_sweep_rows_and_json_hold_every_budget(own_data):
    train, val, val_labels, flops = own_data
    res = budget_sweep(train, None, val, val_labels, flops, metric="mAP", p_values=(0.3, 0.6))
    rows = res.to_rows()
    assert [r["p"] for r in rows] == [0.3, 0.6] and f"threshold_{K - 1}" in rows[0]
    doc = json.loads(res.to_json())
    assert len(doc["points"]) == 2 and len(doc["fixed_exits"]) == K


# ---------------------------------------------------------------------------------------------------
# Thresholds for a FLOPs budget
# ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def budget_case():
    scores = exit_scores(_logits(600, 21)[0], "entropy")
    flops = [1.0 + 2.5 * k for k in range(K)]
    return scores, flops


def _train_cost(scores, thresholds, flops):
    counts = count_exits(assign_exits(scores, thresholds), len(flops)).double()
    return float((counts * torch.tensor(flops, dtype=torch.float64)).sum()) / scores.shape[0]


@pytest.mark.parametrize("budget", [1.2, 2.0, 3.7, 6.0, 9.9])
def test_budget_thresholds_cost_at_most_the_budget(budget_case, budget):
    scores, flops = budget_case
    res = thresholds_for_budget(scores, flops, budget)
    assert _train_cost(scores, res.thresholds, flops) == pytest.approx(res.expected_gflops, abs=1e-12)
    assert res.expected_gflops <= budget


@pytest.mark.parametrize("budget", [1.2, 2.0, 3.7, 6.0, 9.9])
def test_budget_thresholds_are_within_one_sample_of_the_budget(budget_case, budget):
    scores, flops = budget_case
    res = thresholds_for_budget(scores, flops, budget)
    one_sample = (max(flops) - min(flops)) / scores.shape[0]
    assert budget - res.expected_gflops <= one_sample + 1e-9


def test_budget_above_the_full_model_sends_everyone_to_the_last_stage(budget_case):
    scores, flops = budget_case
    res = thresholds_for_budget(scores, flops, 100.0)
    assert res.expected_gflops == pytest.approx(flops[-1])


def test_budget_below_the_cheapest_exit_raises(budget_case):
    scores, flops = budget_case
    with pytest.raises(ValueError, match="below the cheapest"):
        thresholds_for_budget(scores, flops, 0.5)


# ---------------------------------------------------------------------------------------------------
# Thresholds file
# ---------------------------------------------------------------------------------------------------
def test_thresholds_file_round_trips(tmp_path):
    thr = torch.tensor([3.2328, 1e8, 0.1234567, -1e8], dtype=torch.float32)
    path = save_thresholds(tmp_path / "sub" / "t.json", thr, criterion="entropy", flops=[1, 2, 3, 4.5],
                           budget_gflops=2.5, p=0.35, expected_gflops=2.49)
    loaded = load_thresholds(path)
    assert torch.equal(loaded.thresholds.float(), thr) and loaded.criterion == "entropy"
    assert (loaded.flops, loaded.budget_gflops, loaded.p, loaded.expected_gflops) == ([1, 2, 3, 4.5], 2.5, 0.35, 2.49)


def test_thresholds_file_write_leaves_no_temporary_file(tmp_path):
    for _ in range(2):                                   # second write replaces the first
        save_thresholds(tmp_path / "t.json", [0.5, -1e8], criterion="confidence", flops=[1, 2])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.json"]


def _valid_doc(tmp_path):
    path = save_thresholds(tmp_path / "t.json", [0.5, 0.25, -1e8], criterion="confidence", flops=[1, 2, 3])
    return path, json.loads(path.read_text())


@pytest.mark.parametrize("corrupt, message", [
    (lambda p, d: p.write_text(p.read_text()[:40]), "not a valid JSON"),
    (lambda p, d: p.write_text(json.dumps({**d, "version": 99})), "unsupported version"),
    (lambda p, d: p.write_text(json.dumps({k: v for k, v in d.items() if k != "flops"})), "missing key"),
    (lambda p, d: p.write_text(json.dumps({**d, "criterion": "margin"})), "unknown criterion"),
    (lambda p, d: p.write_text(json.dumps({**d, "thresholds": [0.5, "x", -1e8]})), "finite numbers"),
    (lambda p, d: p.write_text(p.read_text().replace("0.25", "NaN")), "non-finite"),
    (lambda p, d: p.write_text(json.dumps({**d, "flops": [1, 2]})), "2 FLOPs values"),
    (lambda p, d: p.write_text(json.dumps({**d, "format": "other"})), "'format' must be"),
])
def test_corrupted_thresholds_file_is_rejected_with_a_clear_error(tmp_path, corrupt, message):
    path, doc = _valid_doc(tmp_path)
    corrupt(path, doc)
    with pytest.raises(ThresholdsFileError, match=message):
        load_thresholds(path)


def test_geometric_p_for_a_cost_meets_it_and_quantile_stages_follow_the_distribution():
    from ops.early_exit import geometric_exit_distribution, geometric_p_for_cost, quantile_exit_stages

    flops = torch.tensor([5.0, 6.3, 7.7, 9.0, 10.4])
    p = geometric_p_for_cost(flops, 7.1)
    q = geometric_exit_distribution(p, 5).double()
    assert float((q * flops.double()).sum()) == pytest.approx(7.1, abs=1e-6)  # q is float32
    with pytest.raises(ValueError, match="outside"):
        geometric_p_for_cost(flops, 11.0)
    stages = quantile_exit_stages(q, 1000, torch.Generator().manual_seed(0))
    counts = torch.bincount(stages, minlength=5).double() / 1000
    assert torch.allclose(counts, q, atol=1e-3)
