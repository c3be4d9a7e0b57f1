"""The adaptive early-exit runtime (ops.early_exit.adaptive) and the model's stage functions it is built on.

The runtime must give the predictions of the post-hoc simulation (full forward -> the K stage logits
-> ``exit_scores`` -> ``assign_exits`` -> chosen logits) while computing nothing more for a video once
it has exited. The tiny model has T_G = T_L = 4, so K = 5 stages.

Random default-initialised weights saturate the glance network (every video gets the same glance
state), so the model here first has its BatchNorm statistics recalibrated on random videos: the
weights stay random, but different videos get different predictions and exit at different stages.

Exactness: the runtime's logits come from batches of a different size than the full pass's, and
batched kernels may round differently for a different number of rows, so logits are compared to
1e-4 (``LOGITS``) and exit stages exactly. For the latter to be meaningful the thresholds are solved on
other random videos and moved into the gap between evaluation scores, and each test checks that no
score lies within ``MARGIN`` of its threshold.
"""
from __future__ import annotations

import pytest
import torch

from ops.early_exit import (LAST_STAGE_THRESHOLD, NO_EXIT_THRESHOLD, AdaptiveRunner, assign_exits, exit_scores,
                            geometric_exit_distribution, load_thresholds, save_thresholds, solve_thresholds)
from models.flops import count_gmacs, flops_breakdown
from models.uni_adafocus_outputs import stage_logits
from support import random_video, tiny_model

# The runner sees smaller batches than the one-pass simulation, and oneDNN's float32 kernels round by
# batch shape and thread count. Measured on an AMD EPYC (2026-12-07), the largest logit difference over
# the 10 comparisons of this file: 3.2e-5 with OMP_NUM_THREADS=1 and 4.8e-7 with 2 or 4 threads (on an
# Intel Xeon earlier: 1.8e-5 on one thread). 1e-4 leaves three times the worst of these. Scores closer
# than MARGIN to a threshold would make the exit comparison a matter of that rounding (_clear_of_scores).
LOGITS = dict(atol=1e-4, rtol=1e-4)
MARGIN = 1e-4
CRITERIA = ("confidence", "entropy", "max_prob")


def calibrated_tiny_model(seed: int = 0, **overrides):
    """tiny_model(**overrides) with random weights and BatchNorm statistics measured on random videos, in eval
    mode."""
    torch.manual_seed(seed)
    model = tiny_model(**overrides)
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # cumulative average over the calibration batches
    model.train()
    with torch.no_grad():
        for s in range(2):
            model(random_video(batch=8, seed=100 + s), generator=torch.Generator().manual_seed(s))
    return model.eval()


@pytest.fixture(scope="module")
def setup():
    model = calibrated_tiny_model()
    with torch.no_grad():
        threshold_set = stage_logits(model(random_video(batch=64, seed=5)).exit_logits, model.num_glance)
        video = random_video(batch=16, seed=9)
        out = model(video)
    return model, threshold_set, video, out


@pytest.fixture(scope="module")
def table(setup):
    """The tiny model's measured FLOPs table (counted once; the runner counts it when not given)."""
    return flops_breakdown(setup[0]).stages()


def _stages(model, out):
    return stage_logits(out.exit_logits, model.num_glance)  # (B, K, C)


def _solved(threshold_set, criterion, p):
    k = threshold_set.shape[1]
    return solve_thresholds(exit_scores(threshold_set, criterion), geometric_exit_distribution(p, k))


def _clear_of_scores(thresholds, stages, criterion):
    """The thresholds, each moved to the middle of the gap between the evaluation videos' scores that
    holds it: the same exits, with no score within rounding of its threshold (solved on other videos,
    a threshold lands anywhere, 5.5e-5 from a score in one case)."""
    scores = exit_scores(stages, criterion).double()
    moved = thresholds.clone()
    for k in range(len(thresholds) - 1):
        threshold = float(thresholds[k])
        if abs(threshold) >= abs(NO_EXIT_THRESHOLD):  # nobody / everybody exits here: nothing to move
            continue
        below, above = scores[:, k][scores[:, k] < threshold], scores[:, k][scores[:, k] >= threshold]
        if len(below) and len(above):
            moved[k] = (below.max() + above.min()) / 2
    return moved


def _check_margin(stages, thresholds, criterion):
    scores = exit_scores(stages, criterion)[:, :-1].double()
    margin = float((scores - thresholds[:-1].double()).abs().min())
    assert margin > MARGIN, f"a score lies within {margin:.2e} of its threshold: the comparison is not meaningful"


def _posthoc(model, out, thresholds, criterion):
    """The post-hoc simulation written out: stage logits -> criterion -> first confident stage."""
    stages = _stages(model, out)
    exits = assign_exits(exit_scores(stages, criterion), thresholds)
    return stages[torch.arange(stages.shape[0]), exits], exits


# ------------------------------------------------------------------------------------------------
# the model's stages
# ------------------------------------------------------------------------------------------------
def test_forward_equals_its_stage_functions():
    model = calibrated_tiny_model()
    video = random_video(batch=3, seed=2)
    with torch.no_grad():
        out = model(video)
        frames = model.frames_view(video)
        amp = model.autocast_setting("cpu")
        glance = model.glance_stage(frames, amp)
        policy = model.policy_stage(glance, frames.shape[1])
        feats = model.focus_features(frames, policy.focus_indices, policy.focus_actions, amp)
        exit_logits = model.classifier(glance.features, feats)
    assert torch.equal(out.exit_logits, exit_logits)
    assert torch.equal(out.glance_logits, glance.logits) and torch.equal(out.glance_features, glance.features)
    assert torch.equal(out.focus_features, feats) and torch.equal(out.focus_indices, policy.focus_indices)
    assert torch.equal(out.focus_actions, policy.focus_actions)
    assert torch.equal(out.spatial_frame_logits, policy.spatial_frame_logits)
    assert torch.equal(out.frame_weights, policy.frame_weights)
    # the lean variants skip only the heads
    lean = model.glance_stage(frames, amp, head=False)
    assert lean.logits is None and torch.equal(lean.features, glance.features)
    lean_policy = model.policy_stage(lean, frames.shape[1], auxiliary=False)
    assert lean_policy.spatial_frame_logits is None
    assert torch.equal(lean_policy.focus_indices, policy.focus_indices)


def test_training_forward_equals_its_stage_functions():
    """Same draws in the same order: glance frames, selection offsets, random patches (one encoder call)."""
    torch.manual_seed(0)
    model = tiny_model(dropout=0.0, fc_dropout=0.0).train()
    video = random_video(batch=2, seed=3)
    out = model(video, generator=torch.Generator().manual_seed(4))
    gen = torch.Generator().manual_seed(4)
    with torch.no_grad():
        frames = model.frames_view(video)
        amp = model.autocast_setting("cpu")
        glance = model.glance_stage(frames, amp, gen)
        policy = model.policy_stage(glance, frames.shape[1], gen)
        random_actions = model.random_actions((2, model.num_focus), "cpu", gen)
        feats = model.focus_features(frames, policy.focus_indices,
                                     torch.stack((policy.focus_actions, random_actions)), amp)
    assert feats.shape == (2, 2, model.num_focus, model.focus.feature_dim)
    assert torch.equal(out.glance_indices, glance.indices) and torch.equal(out.focus_indices, policy.focus_indices)
    assert torch.equal(out.random_pass.focus_actions, random_actions)
    torch.testing.assert_close(out.focus_features.detach(), feats[0], atol=0, rtol=0)


def test_focus_features_of_a_subset_of_videos_and_steps(setup):
    model, _, video, out = setup
    frames = model.frames_view(video)
    rows = torch.tensor([3, 7, 8, 15])
    with torch.no_grad():
        for k in range(model.num_focus):
            feats = model.focus_features(frames, out.focus_indices[rows, k:k + 1], out.focus_actions[rows, k:k + 1],
                                         model.autocast_setting("cpu"), rows=rows)
            assert feats.shape == (4, 1, model.focus.feature_dim)
            torch.testing.assert_close(feats[:, 0], out.focus_features[rows, k], **LOGITS)


def test_glance_stage_select(setup):
    model, _, video, _ = setup
    with torch.no_grad():
        glance = model.glance_stage(model.frames_view(video), model.autocast_setting("cpu"))
    sub = glance.select(torch.tensor([1, 4]))
    assert sub.batch_size == 2 and torch.equal(sub.features, glance.features[[1, 4]])
    assert torch.equal(sub.logits, glance.logits[[1, 4]])
    assert torch.equal(sub.feature_maps, glance.feature_maps[[1, 4]])


# ------------------------------------------------------------------------------------------------
# the runtime equals the post-hoc simulation
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("criterion", CRITERIA)
@pytest.mark.parametrize("p", (0.5, 1.0, 2.0))
def test_runtime_matches_posthoc_simulation(setup, table, criterion, p):
    model, threshold_set, video, out = setup
    thresholds = _clear_of_scores(_solved(threshold_set, criterion, p), _stages(model, out), criterion)
    _check_margin(_stages(model, out), thresholds, criterion)
    expected_logits, expected_exits = _posthoc(model, out, thresholds, criterion)

    result = AdaptiveRunner(model, thresholds, criterion, flops=table).run(video)
    assert torch.equal(result.exit_stage, expected_exits)
    torch.testing.assert_close(result.logits, expected_logits, **LOGITS)
    expected_scores = exit_scores(_stages(model, out), criterion)[torch.arange(16), expected_exits]
    torch.testing.assert_close(result.scores, expected_scores, **LOGITS)


def test_solved_thresholds_spread_exits_over_many_stages(setup, table):
    model, threshold_set, video, out = setup
    for criterion in CRITERIA:
        result = AdaptiveRunner(model, _solved(threshold_set, criterion, 1.0), criterion, flops=table).run(video)
        assert len(result.exit_stage.unique()) >= 4, (criterion, result.exit_stage.tolist())


def test_everybody_exits_at_stage_0_without_policy_or_focus_work(setup, table):
    model, _, video, out = setup
    runner = AdaptiveRunner(model, [LAST_STAGE_THRESHOLD] * 5, "confidence", flops=table)
    calls = []
    hooks = [model.focus.register_forward_hook(lambda m, i, o: calls.append("focus")),
             model.policy.spatial.register_forward_hook(lambda m, i, o: calls.append("spatial")),
             model.policy.temporal.register_forward_hook(lambda m, i, o: calls.append("temporal")),
             model.classifier.focus_mlp.register_forward_hook(lambda m, i, o: calls.append("focus_mlp"))]
    try:
        result = runner.run(video)
    finally:
        for h in hooks:
            h.remove()
    assert calls == []
    assert result.exit_stage.tolist() == [0] * 16
    assert result.stage_batch_sizes == [16, 0, 0, 0, 0]
    torch.testing.assert_close(result.logits, out.exit_logits[:, model.num_glance - 1], **LOGITS)


@pytest.mark.parametrize("criterion", CRITERIA)
def test_nobody_exits_early(setup, table, criterion):
    model, _, video, out = setup
    thresholds = torch.tensor([NO_EXIT_THRESHOLD] * 4 + [LAST_STAGE_THRESHOLD])
    result = AdaptiveRunner(model, thresholds, criterion, flops=table).run(video)
    assert result.exit_stage.tolist() == [4] * 16
    assert result.stage_batch_sizes == [16] * 5
    torch.testing.assert_close(result.logits, out.exit_logits[:, -1], **LOGITS)
    torch.testing.assert_close(result.logits, out.logits, **LOGITS)


# ------------------------------------------------------------------------------------------------
# no work for exited videos; FLOPs
# ------------------------------------------------------------------------------------------------
def test_exited_videos_get_no_further_focus_compute(setup, table, monkeypatch):
    model, threshold_set, video, _ = setup
    runner = AdaptiveRunner(model, _solved(threshold_set, "entropy", 1.0), "entropy", flops=table)
    encoder_batches, policy_batches, step_rows = [], [], []
    hooks = [model.focus.register_forward_hook(lambda m, i, o: encoder_batches.append(i[0].shape[0])),
             model.policy.spatial.register_forward_hook(lambda m, i, o: policy_batches.append(i[0].shape[0]))]
    original = model.focus_features

    def recording(frames, indices, actions, amp, rows=None):
        step_rows.append(sorted(rows.tolist()))
        return original(frames, indices, actions, amp, rows=rows)

    monkeypatch.setattr(model, "focus_features", recording)
    try:
        result = runner.run(video)
    finally:
        for h in hooks:
            h.remove()
    exits = result.exit_stage
    still_running = [sorted((exits >= k).nonzero().squeeze(1).tolist()) for k in range(1, 5)]
    still_running = [r for r in still_running if r]
    assert step_rows == still_running  # step k processes exactly the videos that did not exit before it
    assert encoder_batches == [len(r) for r in still_running]  # one encoder call per step, those patches only
    assert policy_batches == [int((exits >= 1).sum())]  # the policy once, for the videos going on
    assert result.stage_batch_sizes == [16] + [int((exits >= k).sum()) for k in range(1, 5)]
    assert sum(encoder_batches) == int(exits.sum())  # patches = focus steps taken, summed over videos


def test_gflops_are_the_flops_table_entries_of_the_exit_stages(setup, table):
    model, threshold_set, video, _ = setup
    # no flops=: the runner counts the model's table itself
    result = AdaptiveRunner(model, _solved(threshold_set, "confidence", 1.0), "confidence").run(video)
    assert result.gflops.dtype == torch.float64
    assert result.gflops.tolist() == [table[k] for k in result.exit_stage.tolist()]
    assert result.exit_counts.sum() == 16 and result.exit_counts.shape == (5,)


# ------------------------------------------------------------------------------------------------
# inputs and options
# ------------------------------------------------------------------------------------------------
def test_thresholds_file_gives_thresholds_and_criterion(setup, table, tmp_path):
    model, threshold_set, video, out = setup
    thresholds = _solved(threshold_set, "max_prob", 1.0)
    path = save_thresholds(tmp_path / "thr.json", thresholds, criterion="max_prob", flops=[1.0] * 5)
    from_file = AdaptiveRunner(model, load_thresholds(path))
    assert from_file.criterion == "max_prob"
    a = from_file.run(video)
    b = AdaptiveRunner(model, str(path), flops=table).run(video)
    c = AdaptiveRunner(model, thresholds, "max_prob", flops=table).run(video)
    assert torch.equal(a.exit_stage, c.exit_stage) and torch.equal(a.logits, c.logits)
    assert torch.equal(b.exit_stage, c.exit_stage)
    # the model's own FLOPs table is used, not the file's (unless given)
    assert a.gflops.tolist() == [table[k] for k in a.exit_stage.tolist()]
    with pytest.raises(ValueError, match="fitted for 'max_prob'"):
        AdaptiveRunner(model, path, criterion="entropy")


def test_forced_exits(setup, table):
    model, _, video, out = setup
    forced = torch.arange(16) % 5
    runner = AdaptiveRunner(model, [NO_EXIT_THRESHOLD] * 4 + [LAST_STAGE_THRESHOLD], flops=table)
    result = runner.run(video, forced_exits=forced, timing=True)
    assert torch.equal(result.exit_stage, forced)
    torch.testing.assert_close(result.logits, _stages(model, out)[torch.arange(16), forced], **LOGITS)
    assert len(result.stage_seconds) == 5 and all(s > 0 for s in result.stage_seconds)
    assert result.stage_batch_sizes == [16, 12, 9, 6, 3]


def test_uint8_and_flattened_videos(setup, table):
    model, threshold_set, _, _ = setup
    raw = random_video(batch=6, seed=11, dtype=torch.uint8)
    runner = AdaptiveRunner(model, _solved(threshold_set, "confidence", 1.0), "confidence", flops=table)
    a = runner.run(raw)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    b = runner.run(((raw.float() / 255 - mean) / std).flatten(1, 2))
    assert torch.equal(a.exit_stage, b.exit_stage)
    torch.testing.assert_close(a.logits, b.logits, **LOGITS)


def test_bad_arguments(setup, table):
    model, _, video, _ = setup
    with pytest.raises(ValueError, match="5 stages"):
        AdaptiveRunner(model, [0.0] * 4, flops=table)
    with pytest.raises(ValueError, match="unknown criterion"):
        AdaptiveRunner(model, [0.0] * 5, "margin", flops=table)
    with pytest.raises(ValueError, match="FLOPs values"):
        AdaptiveRunner(model, [0.0] * 5, flops=table[:4])
    runner = AdaptiveRunner(model, [0.0] * 5, flops=table)
    with pytest.raises(ValueError, match="forced_exits"):
        runner.run(video, forced_exits=torch.full((16,), 5))
    model.train()
    try:
        with pytest.raises(RuntimeError, match="eval mode"):
            runner.run(video)
    finally:
        model.eval()


# ------------------------------------------------------------------------------------------------
# without reuse of the glance features (--no-reuse_glance_features): no glance exit
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def no_reuse():
    """The calibrated tiny model trained without reuse of the glance features: its K = T_L = 4 stages are the
    focus exits; thresholds solved on other videos, its evaluation batch and output."""
    model = calibrated_tiny_model(reuse_glance_features=False)
    with torch.no_grad():
        threshold_set = model(random_video(batch=64, seed=5)).stage_logits
        video = random_video(batch=16, seed=9)
        out = model(video)
    return model, threshold_set, video, out


def test_without_glance_reuse_the_stages_are_the_focus_steps(no_reuse, setup):
    model, _, _, out = no_reuse
    t_g, t_l = model.num_glance, model.num_focus
    assert not model.exits_at_glance and setup[0].exits_at_glance
    assert model.num_exit_stages == t_l and model.exit_focus_frames == tuple(range(1, t_l + 1))
    assert setup[0].num_exit_stages == t_l + 1 and setup[0].exit_focus_frames == tuple(range(t_l + 1))
    # the glance exit reads zeros: the same logits for every video, hence no stage
    glance_exit = out.exit_logits[:, t_g - 1]
    assert torch.equal(glance_exit, glance_exit[:1].expand_as(glance_exit))
    assert torch.equal(out.stage_logits, out.exit_logits[:, t_g:]) and out.stage_logits.shape[1] == t_l
    assert torch.equal(stage_logits(out.exit_logits, t_g, model.exits_at_glance), out.stage_logits)
    # FLOPs: the stages after 1..T_L focus frames, without the glance exit head the runtime no longer runs
    default, ours = flops_breakdown(setup[0]), flops_breakdown(model)
    assert ours.stages() == pytest.approx([default.stage(k) - default.glance_exit for k in range(1, t_l + 1)])
    with pytest.raises(ValueError, match="stage must be in 1..4"):
        ours.stage(0)


@pytest.mark.parametrize("reuse", (True, False))
def test_counted_flops_of_the_runtime_are_the_flops_table(reuse):
    """FlopCounterMode around the adaptive runtime with every video sent out at stage k counts B times the
    table's stage k, with and without the glance exit."""
    model = calibrated_tiny_model(reuse_glance_features=reuse)
    table, k_stages, b = flops_breakdown(model).stages(), model.num_exit_stages, 3
    video = random_video(batch=b, seed=1)
    runner = AdaptiveRunner(model, [NO_EXIT_THRESHOLD] * (k_stages - 1) + [LAST_STAGE_THRESHOLD], flops=table)
    for k in range(k_stages):
        counted = count_gmacs(lambda: runner.run(video, forced_exits=torch.full((b,), k)))
        assert counted == pytest.approx(b * table[k], rel=1e-9), k


@pytest.mark.parametrize("criterion", CRITERIA)
@pytest.mark.parametrize("p", (0.5, 1.0, 2.0))
def test_runtime_without_glance_exit_matches_posthoc_simulation(no_reuse, criterion, p):
    model, threshold_set, video, out = no_reuse
    stages = out.stage_logits
    thresholds = _clear_of_scores(_solved(threshold_set, criterion, p), stages, criterion)
    _check_margin(stages, thresholds, criterion)
    expected_exits = assign_exits(exit_scores(stages, criterion), thresholds)
    result = AdaptiveRunner(model, thresholds, criterion).run(video)
    assert torch.equal(result.exit_stage, expected_exits)
    torch.testing.assert_close(result.logits, stages[torch.arange(16), expected_exits], **LOGITS)
    assert result.gflops.tolist() == [flops_breakdown(model).stages()[k] for k in expected_exits.tolist()]


def test_the_glance_exit_is_never_taken(no_reuse):
    """Thresholds that let everybody out at the first stage: without the glance exit that is after one focus
    frame, with the policy run once for every video, and the glance exit head never runs."""
    model, threshold_set, video, out = no_reuse
    runner = AdaptiveRunner(model, [LAST_STAGE_THRESHOLD] * 4, "confidence")
    calls = []
    hooks = [model.classifier.glance_exits[-1].register_forward_hook(lambda m, i, o: calls.append("glance_exit")),
             model.focus.register_forward_hook(lambda m, i, o: calls.append(("focus", i[0].shape[0]))),
             model.policy.temporal.register_forward_hook(lambda m, i, o: calls.append(("policy", i[0].shape[0])))]
    try:
        result = runner.run(video)
    finally:
        for h in hooks:
            h.remove()
    assert calls == [("policy", 16), ("focus", 16)]
    assert result.exit_stage.tolist() == [0] * 16 and result.stage_batch_sizes == [16, 0, 0, 0]
    torch.testing.assert_close(result.logits, out.exit_logits[:, model.num_glance], **LOGITS)
    # solved on the threshold set, the exits spread over the focus stages
    spread = AdaptiveRunner(model, _solved(threshold_set, "entropy", 1.0), "entropy").run(video)
    assert len(spread.exit_stage.unique()) >= 3, spread.exit_stage.tolist()
