"""Early exit with two exits (glance only, full model), the official TSM and X3D procedure: parity
with the official results.

Every ``early_exit_*.pt`` in the ``tsm/`` and ``x3d/`` subfolders of the reference folder is one case
(the test ids name the file). Each file describes itself: the inputs (threshold-set and evaluation logits,
class ids), the p grid, the FLOPs table and, under ``runs``, one official result per criterion.
The sweep runs with ``p_scale=TSM_P_SCALE`` (r = float32(p / 100)), top-1 and no random baseline.
"""
from fractions import Fraction

import numpy as np
import pytest
import torch

from ops.early_exit import (LAST_STAGE_THRESHOLD, NO_EXIT_THRESHOLD, TSM_P_SCALE, TSM_P_VALUES, budget_sweep,
                            exit_scores, geometric_exit_distribution, normalised_distribution)
from support import fixture_params, require_fixture


#: Top-1 is a percentage; the official values went through float32 (e.g. 66.80000305 for our 66.8 = 334 / 500
#: exactly), which rounds a value below 128 by at most half a float32 spacing there. One spacing at 100
#: (2^-17, about 7.6e-6) covers that rounding and nothing else: one video more or less moves top-1 by
#: 100 / N, at least 1e-3 for any N below 1e5.
PERCENT_FLOAT32 = float(np.spacing(np.float32(100.0)))


def _load(path):
    path = require_fixture(path)
    data = torch.load(path, weights_only=True)
    inputs = data["inputs"]
    p_values = [float(p) for p in torch.as_tensor(data["p_values"]).tolist()]
    p_scale = float(data.get("p_scale", TSM_P_SCALE))
    flops = [float(f) for f in torch.as_tensor(data["flops_table"]).tolist()]
    metric = data.get("metric", "top1")
    sweeps = {
        criterion: budget_sweep(inputs["train_logits"], inputs["train_targets"], inputs["val_logits"],
                                inputs["val_targets"], flops, criterion=criterion, metric=metric,
                                p_values=p_values, p_scale=p_scale, random_baseline=False)
        for criterion in data["runs"]
    }
    return data, sweeps


@pytest.fixture(scope="module", params=fixture_params("early_exit_*.pt", "tsm", "x3d"))
def case(request):
    """One early-exit fixture and our sweeps of it, one per recorded criterion: (data, {criterion: sweep})."""
    return _load(request.param)


@pytest.fixture
def case_with_probs(case):
    """A fixture that also records the solver's normalised q (``probs``); the others skip."""
    data, _ = case
    if not all("probs" in run for run in data["runs"].values()):
        pytest.skip("this fixture does not record the solver's q (probs)")
    return case


def _stack(points, attr, dtype):
    return torch.tensor([getattr(pt, attr) for pt in points], dtype=dtype)


def test_grid_is_the_official_tsm_grid(case):
    data, _ = case
    assert tuple(float(p) for p in torch.as_tensor(data["p_values"]).tolist()) == TSM_P_VALUES


def test_thresholds(case):
    data, sweeps = case
    for criterion, res in sweeps.items():
        ours = _stack(res.points, "thresholds", torch.float64).float()
        ref = data["runs"][criterion]["thresholds"].float()
        assert ours.shape == ref.shape, criterion
        sentinel = ref.abs() >= 1e7                        # 1e8 (nobody exits) and -1e8 (last exit)
        assert torch.equal(ours[sentinel], ref[sentinel]), criterion
        assert (ref[:, -1] == LAST_STAGE_THRESHOLD).all() and torch.equal(ours[:, -1], ref[:, -1])
        assert ((ours == NO_EXIT_THRESHOLD) == (ref == NO_EXIT_THRESHOLD)).all(), criterion
        if criterion == "confidence":
            assert torch.equal(ours, ref)                  # max raw logits: bit-exact
        else:
            # Softmax-based scores: the official float32 expression, but exp/log kernels differ between
            # CPUs by an ulp or two (measured <= 1.3e-7 relative).
            assert torch.allclose(ours[~sentinel], ref[~sentinel], rtol=1e-6, atol=0), criterion


def test_exit_counts(case):
    data, sweeps = case
    for criterion, res in sweeps.items():
        ours = _stack(res.points, "exit_counts", torch.float64)
        assert torch.equal(ours, data["runs"][criterion]["exit_counts"].double()), criterion


def test_expected_flops(case):
    data, sweeps = case
    for criterion, res in sweeps.items():
        ref = torch.as_tensor(data["runs"][criterion]["flops_list"], dtype=torch.float64).tolist()
        assert res.flops_list == pytest.approx(ref, rel=1e-6, abs=0), criterion


def test_top1(case):
    data, sweeps = case
    for criterion, res in sweeps.items():
        ref = torch.as_tensor(data["runs"][criterion]["metric_list"], dtype=torch.float64).tolist()
        assert res.metric_list == pytest.approx(ref, rel=0, abs=PERCENT_FLOAT32), criterion


def test_exit_ratio(case):
    data, sweeps = case
    for criterion, res in sweeps.items():
        ours = torch.tensor([pt.exit_ratios[0] for pt in res.points], dtype=torch.float32)
        assert torch.equal(ours, data["runs"][criterion]["ratio_list"].float()), criterion


def test_probs(case_with_probs):
    """q as the official solver leaves it (normalised twice, float32), and the quota it gives."""
    data, sweeps = case_with_probs
    n_train = data["inputs"]["train_logits"].shape[0]
    for criterion, res in sweeps.items():
        ref = data["runs"][criterion]["probs"].float()
        ours = _stack(res.points, "q", torch.float32)
        # exp(log r) differs by an ulp between CPUs' float32 kernels (the official ran elsewhere)
        assert torch.allclose(ours, ref, rtol=1e-6, atol=0), criterion
        official_quota = torch.floor(ref * n_train).long()         # official out_n: float32 product
        assert torch.equal(_stack(res.points, "quota", torch.int64)[:, :-1], official_quota[:, :-1]), criterion
        k_stages = ref.shape[1]
        for pt in res.points[:5] + res.points[-5:]:          # the sweep's q is the solver's function's
            q = normalised_distribution(geometric_exit_distribution(pt.p, k_stages, p_scale=res.p_scale))
            assert q.tolist() == pt.q


def _exact_quota(p, p_scale, n, k_stages):
    r = Fraction(p) / Fraction(p_scale)
    weights = [r ** k for k in range(k_stages)]
    total = sum(weights)
    return [(n * w / total).__floor__() for w in weights]


def test_float32_out_n(case_with_probs):
    """Where float32 and exact arithmetic disagree on floor(N q_0), the official (float32) count wins. A fixture
    whose grid has no such p cannot tell the two rules apart and skips."""
    data, sweeps = case_with_probs
    train = data["inputs"]["train_logits"]
    n_train, k_stages = train.shape[0], train.shape[1]
    p_values = [float(p) for p in torch.as_tensor(data["p_values"]).tolist()]
    p_scale = float(data.get("p_scale", TSM_P_SCALE))
    checked = 0
    for criterion, res in sweeps.items():
        ref = data["runs"][criterion]["probs"].float()
        official = torch.floor(ref * n_train).long().tolist()
        sensitive = [(i, p) for i, p in enumerate(p_values)
                     if _exact_quota(p, p_scale, n_train, k_stages)[:-1] != official[i][:-1]]
        if n_train == 300 and 275.0 in p_values and p_scale == 100.0:   # the case the fixture README names
            i = p_values.index(275.0)
            assert (i, 275.0) in sensitive
            assert res.points[i].quota[0] == official[i][0] == 79
            assert _exact_quota(275.0, 100.0, 300, k_stages)[0] == 80
        for i, p in sensitive:
            assert res.points[i].quota[:-1] == official[i][:-1], (criterion, p)
        if criterion == "confidence":
            # the official threshold of each such p lets exactly the float32 quota of the threshold set exit
            scores = exit_scores(train, "confidence")
            thresholds = data["runs"][criterion]["thresholds"].float()
            for i, p in sensitive:
                taken = int((scores[:, 0] >= thresholds[i, 0]).sum())
                assert taken == res.points[i].quota[0], p
        checked += len(sensitive)
    if not checked:
        pytest.skip(f"no p of this fixture's grid changes the quota in float32 (N = {n_train}), so it cannot "
                    "tell the float32 rule from exact arithmetic")


def test_fixed_exit_top1(case):
    """Top-1 of every video leaving at the glance-only exit, and at the full model (the tsm fixture
    records them at the top level, the x3d one per criterion)."""
    data, sweeps = case
    for criterion, res in sweeps.items():
        run = data["runs"][criterion]
        glance = data.get("glance_stage_top1", run.get("stage0_acc1"))
        last = data.get("last_stage_top1", run.get("last_stage_acc1"))
        assert glance is not None and last is not None
        assert res.fixed_exits[0].metric == pytest.approx(float(glance), abs=PERCENT_FLOAT32)
        assert res.last_stage_metric == pytest.approx(float(last), abs=PERCENT_FLOAT32)


def test_official_thresholds_let_the_float32_quota_exit(case):
    """Confidence thresholds: exactly the solver's float32 quota of the threshold set reaches each
    official threshold (the float32 out_n, e.g. 200 rather than 199 for p = 50 and N = 300 in x3d)."""
    data, sweeps = case
    scores = exit_scores(data["inputs"]["train_logits"], "confidence")
    thresholds = data["runs"]["confidence"]["thresholds"].float()
    for i, point in enumerate(sweeps["confidence"].points):
        if thresholds[i, 0] < NO_EXIT_THRESHOLD:
            assert int((scores[:, 0] >= thresholds[i, 0]).sum()) == point.quota[0], point.p
