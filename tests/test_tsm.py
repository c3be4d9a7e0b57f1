"""Uni-AdaFocus-TSM beyond the official fixtures: any configuration trains, the shift moves channels
between the frames of one video only, and early exit saves the focus network for videos that leave at
the glance."""
import pytest
import torch

from models import get_variant
from models.temporal_shift import temporal_shift
from models.tsm import UniAdaFocusTSM
from ops import build, config
from ops.early_exit import AdaptiveRunner, assign_exits, exit_scores
from support import random_video

TINY = dict(num_classes=4, num_segments=8, num_glance_segments=4, num_focus_segments=3, patch_size=32,
            input_size=64, stn_hidden_dim=16, temporal_hidden_dim=8, focus_arch="resnet18")


def tiny_tsm(**overrides):
    return UniAdaFocusTSM(**{**TINY, **overrides})


def test_shift_moves_one_fold_each_way_with_zero_padding():
    x = torch.arange(2 * 3 * 16, dtype=torch.float32).view(6, 16, 1, 1)  # 2 videos x 3 frames, 16 channels
    out = temporal_shift(x, num_segments=3, fold_div=8).view(2, 3, 16)
    clips = x.view(2, 3, 16)
    assert torch.equal(out[:, :2, :2], clips[:, 1:, :2]) and (out[:, 2, :2] == 0).all()  # from the future
    assert torch.equal(out[:, 1:, 2:4], clips[:, :2, 2:4]) and (out[:, 0, 2:4] == 0).all()  # from the past
    assert torch.equal(out[..., 4:], clips[..., 4:])


def test_videos_do_not_leak_into_each_other():
    """Changing one video changes nothing of the other's outputs (the shift stays within a clip)."""
    model = tiny_tsm().eval()
    video, glance = random_video(batch=2, frames=8, size=64, seed=1), random_video(batch=2, frames=4, size=64, seed=2)
    with torch.no_grad():
        a = model(video, glance=glance)
        video[1], glance[1] = random_video(batch=1, frames=8, size=64, seed=3)[0], random_video(1, 4, 64, 4)[0]
        b = model(video, glance=glance)
    torch.testing.assert_close(a.exit_logits[0], b.exit_logits[0])
    assert not torch.allclose(a.exit_logits[1], b.exit_logits[1])


def test_training_forward_has_both_patch_sets_and_the_official_terms():
    model = tiny_tsm().train()
    out = model(random_video(batch=2, frames=8, size=64), generator=torch.Generator().manual_seed(0),
                glance=random_video(batch=2, frames=4, size=64, seed=5))
    assert out.exit_logits.shape == (2, 2, 4) and out.random_pass.prediction.shape == (2, 4)
    assert out.actions.shape == (2, 4) and out.focus_indices.shape == (2, 3)
    assert (out.random_pass.focus_actions[..., 2:] == model.geometry.native_scale).all()
    args = config.parse_args(["--variant", "tsm", "--num_segments", "8", "--num_glance_segments", "4",
                              "--num_focus_segments", "3"])
    terms = build.build_objective(args)(out, torch.tensor([1, 3]), generator=torch.Generator().manual_seed(1))
    assert terms.kl.item() == 0 and set(get_variant("tsm").objective_terms) == {
        "cat", "glance", "focus", "temporal", "spatial", "norm"}
    expected = terms.cat + terms.glance + terms.focus + terms.temporal + terms.spatial + terms.norm
    torch.testing.assert_close(terms.total, expected)


def test_prediction_heads_train_only_themselves():
    """The prediction reads detached features: its loss reaches the two prediction heads only."""
    model = tiny_tsm().train()
    out = model(random_video(batch=2, frames=8, size=64), generator=torch.Generator().manual_seed(0))
    torch.nn.functional.cross_entropy(out.logits, torch.tensor([0, 1])).backward()
    assert model.glance_prediction_head.weight.grad.abs().sum() > 0
    assert model.focus_prediction_head.weight.grad.abs().sum() > 0
    for module in (model.glance, model.focus, model.glance_head, model.focus_head, model.policy):
        assert all(p.grad is None or p.grad.abs().sum() == 0 for p in module.parameters())


def test_a_tiny_configuration_overfits_a_fixed_batch():
    torch.manual_seed(0)
    model = tiny_tsm(dropout=0.0).train()
    video, glance = random_video(batch=4, frames=8, size=64, seed=1), random_video(batch=4, frames=4, size=64, seed=2)
    target = torch.tensor([0, 1, 2, 3])
    args = config.parse_args(["--variant", "tsm", "--num_segments", "8", "--num_glance_segments", "4",
                              "--num_focus_segments", "3", "--norm_ratio", "0"])
    objective = build.build_objective(args)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(12):  # under a quarter by step 6 over seeds 0-3
        terms = objective(model(video, generator=gen, glance=glance), target, generator=gen)
        optimizer.zero_grad()
        terms.total.backward()
        optimizer.step()
        losses.append(terms.cat.item())
    assert losses[-1] < 0.25 * losses[0], losses


@pytest.mark.parametrize("criterion", ["confidence", "entropy"])
def test_adaptive_runtime_matches_the_full_pass_and_skips_the_focus_for_glance_exits(criterion, monkeypatch):
    torch.manual_seed(0)
    model = tiny_tsm(dropout=0.0)
    for head in (model.glance_head, model.glance_prediction_head, model.focus_prediction_head):
        torch.nn.init.normal_(head.weight, std=1.0)  # the official init (std 0.001) makes every score alike
    video, glance = random_video(batch=6, frames=8, size=64, seed=7), random_video(batch=6, frames=4, size=64, seed=8)
    for bn in (m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)):
        bn.reset_running_stats()
        bn.momentum = None  # BatchNorm statistics of these videos, so that features are far from zero
    with torch.no_grad():
        model.train()(video, glance=glance, generator=torch.Generator().manual_seed(0))
    model.eval()
    with torch.no_grad():
        stages = model(video, glance=glance).stage_logits  # (6, 2, C)
    scores = exit_scores(stages, criterion)
    ordered = scores[:, 0].sort().values
    threshold = ((ordered[2] + ordered[3]) / 2).item()  # half leave at the glance
    thresholds = torch.tensor([threshold, -1e8], dtype=torch.float64)
    expected = assign_exits(scores, thresholds)
    assert 0 < int((expected == 0).sum()) < 6
    runner = AdaptiveRunner(model, thresholds, criterion)  # (counts its FLOPs table first)
    patches_seen = []
    forward = type(model.focus).forward
    monkeypatch.setattr(type(model.focus), "forward", lambda self, x: patches_seen.append(x.shape[0]) or forward(self, x))
    result = runner.run(video, glance=glance)
    assert torch.equal(result.exit_stage, expected)
    torch.testing.assert_close(result.logits, stages[torch.arange(6), expected], atol=1e-5, rtol=1e-5)
    staying = int((expected == 1).sum())
    assert patches_seen == [staying * model.num_focus] and result.stage_batch_sizes == [6, staying]


def test_monte_carlo_removal_steps_follow_each_variant():
    """T1: T_G // 3 for tsm whatever T0 and T_L (official); App. C's floor(T_L T_G / T0) for mn2_r50."""
    sizes = ["--num_segments", "8", "--num_glance_segments", "8", "--num_focus_segments", "4"]
    assert build.build_objective(config.parse_args(["--variant", "tsm"] + sizes)).mc_draws == 2
    assert build.build_objective(config.parse_args(sizes)).mc_draws == 4


def test_prediction_reports_focus_frames_of_the_two_exits():
    from scripts.predict import exit_focus_frames

    model = tiny_tsm()
    assert exit_focus_frames(model, model.num_exit_stages) == [0, model.num_focus]


def test_zero_init_residual_reaches_both_shifted_encoders():
    """--zero_init_residual through the tsm variant: the BatchNorm closing every residual block of the
    shifted glance and focus networks starts at zero; without the flag none does."""
    def closing_norms(model):
        glance = [block.conv[-1] for block in model.glance.features if getattr(block, "use_res_connect", False)]
        focus = [block.bn2 for name in ("layer1", "layer2", "layer3", "layer4") for block in getattr(model.focus, name)]
        return glance + focus

    zeroed = get_variant("tsm").build_from(config.parse_args(
        ["--variant", "tsm", "--no-pretrained", "--zero_init_residual", "--focus_arch", "resnet18",
         "--num_segments", "8", "--num_glance_segments", "4", "--num_focus_segments", "3", "--patch_size", "32",
         "--input_size", "64"]), num_classes=4)
    norms = closing_norms(zeroed)
    assert len(norms) == 10 + 8  # MobileNetV2's shortcut blocks, ResNet-18's blocks
    assert all(torch.count_nonzero(norm.weight) == 0 for norm in norms)
    assert all(torch.count_nonzero(norm.weight) > 0 for norm in closing_norms(tiny_tsm()))
