"""The policy ablation (the trained model with its policy replaced, at equal cost) and the coarse glance."""
import json

import pytest
import torch

import main
from models import frame_selection
from models.flops import flops_breakdown
from ops import policy_ablation
from support import random_video, tiny_model

TINY = ["--num_segments", "8", "--num_glance_segments", "4", "--num_focus_segments", "2", "--input_size", "64",
        "--patch_size", "32", "--focus_arch", "resnet18", "--classifier_dim", "32", "--stn_hidden_dim", "16",
        "--temporal_hidden_dim", "8", "--no-pretrained", "--workers", "0", "--device", "cpu", "--no-tensorboard",
        "--num_visualised", "0", "--batch_size", "4", "--val_batch_size", "3", "--epochs", "1"]
SYNTHETIC = {"train_videos": 8, "val_videos": 5, "frames_per_video": 10, "frame_size": 64, "num_classes": 4,
             "twin_classes": 1}


def test_keeping_the_policy_reproduces_the_model(monkeypatch):
    """The replacement machinery with nothing replaced gives the forward's own last-exit logits."""
    torch.manual_seed(0)
    model = tiny_model(num_focus_segments=3).eval()
    video = random_video(batch=3)
    with torch.no_grad():
        out = model(video)
    monkeypatch.setattr(policy_ablation, "SETTINGS", {"same": ("policy", "policy")})
    logits = policy_ablation.ablation_logits(model, video, out)
    torch.testing.assert_close(logits["same"][:, 0], out.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits["glance_exit"][:, 0], out.stage_logits[:, 0])


def test_uniform_frames_and_random_patches_are_the_shared_rules(monkeypatch):
    """The replacements are --frame_sampling uniform's frames and --patch_location random's positions (the
    shared rules of models/frame_selection.py and models/patches.py): one draw per copy, sizes kept."""
    from models import patches

    calls = []
    for module, name in ((frame_selection, "uniform_frame_indices"), (patches, "place_patches")):
        original = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *a, _f=original, _n=name, **k: calls.append((_n, a)) or _f(*a, **k))
    torch.manual_seed(0)
    model = tiny_model(num_focus_segments=3).eval()
    video = random_video(batch=2)
    with torch.no_grad():
        out = model(video)
    calls.clear()
    logits = policy_ablation.ablation_logits(model, video, out, draws=5, generator=torch.Generator().manual_seed(0))
    assert logits["random_patches"].shape[1] == 5 and logits["uniform_frames"].shape[1] == 1
    assert calls[0][0] == "uniform_frame_indices" and calls[0][1][1:3] == (8, 3)
    placed = [a for n, a in calls if n == "place_patches"]  # random_patches, uniform_frames_random_patches
    assert len(placed) == 2 and all(a[0].shape == (5, 2, 3, 4) and a[1] == "random" for a in placed)
    assert frame_selection.uniform_frame_indices(2, 16, 4).tolist() == [[2, 6, 10, 14]] * 2


def test_without_glance_feature_reuse_the_ablations_ignore_the_glance_features():
    """With --no-reuse_glance_features the classifier reads no e^G in the forward, nor when the policy
    ablation and the dynamics removal run it again: their logits do not depend on the glance features."""
    import dataclasses

    torch.manual_seed(0)
    model = tiny_model(num_focus_segments=3, reuse_glance_features=False).eval()
    video = random_video(batch=2)
    with torch.no_grad():
        out = model(video)
    other = dataclasses.replace(out, glance_features=torch.randn_like(out.glance_features) * 10)
    seeded = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    for a, b in zip(policy_ablation.ablation_logits(model, video, out, generator=seeded()).values(),
                    policy_ablation.ablation_logits(model, video, other, generator=seeded()).values()):
        torch.testing.assert_close(a, b)
    for removed in (["spatial"], ["temporal"], ["spatial", "temporal"]):
        torch.testing.assert_close(policy_ablation.dynamics_stage_logits(model, video, out, removed),
                                   policy_ablation.dynamics_stage_logits(model, video, other, removed))


def test_without_glance_reuse_there_is_no_glance_exit_to_report():
    """No glance exit without reuse of the glance features: no ``glance_exit`` entry, T_L stages with every
    dynamics removal, and the per-stage metric indexed by focus frames with nothing at t = 0."""
    torch.manual_seed(0)
    model = tiny_model(num_focus_segments=3, reuse_glance_features=False).eval()
    video = random_video(batch=4)
    with torch.no_grad():
        out = model(video)
    assert set(policy_ablation.ablation_logits(model, video, out, draws=2)) == set(policy_ablation.SETTINGS)
    for removed in ([], ["samplewise"], ["spatial"], ["temporal"], ["spatial", "temporal"]):
        stages = policy_ablation.dynamics_stage_logits(model, video, out, removed)
        assert stages.shape == (4, 3, model.num_classes), removed
    kept = policy_ablation.dynamics_stage_logits(model, video, out, ["spatial"])
    with torch.no_grad():
        whole = model.classify(out.glance_features, model.focus_features(
            model.frames_view(video), out.focus_indices,
            model.geometry.with_identity(policy_ablation.whole_frame_actions(out.focus_indices.shape, "cpu")),
            model.autocast_setting("cpu")))
    torch.testing.assert_close(kept, whole[:, model.num_glance:])
    targets = torch.arange(4) % model.num_classes
    flops = flops_breakdown(model).stages()
    result = policy_ablation.dynamics_metrics(kept, targets, kept, flops, ["spatial"], "top1",
                                              steps=model.exit_focus_frames)
    assert result["stage_scores"][0] is None and len(result["stage_scores"]) == 4
    assert result["stage_scores"][1:] == [policy_ablation.early_exit.StageMetric(kept, targets, "top1").stage(k)
                                          for k in range(3)]
    assert all(counts is None or len(counts) == 3 for counts in result["exit_counts"])
    with pytest.raises(ValueError, match="3 increasing counts"):
        policy_ablation.early_exit.StageMetric(kept, targets, "top1").stages([1, 1, 2])


def test_the_job_without_glance_reuse_reports_no_glance_exit(tmp_path):
    argv = TINY + ["--dataset", "synthetic", "--data_dir", str(tmp_path / "data"), "--synthetic", json.dumps(SYNTHETIC),
                   "--root_log", str(tmp_path / "exp"), "--store_name", "run", "--no-reuse_glance_features",
                   "--policy_ablation", "--remove_dynamics", "samplewise"]
    assert main.main(argv) == 0
    final = json.loads((tmp_path / "exp" / "run" / "metrics.json").read_text())["final"]
    assert set(final["policy_ablation"]) == {"metric", "full", "uniform_frames", "random_patches",
                                             "uniform_frames_random_patches"}
    assert final["stage_scores"][0] is None and len(final["stage_scores"]) == 3  # after t = 0, 1, 2 focus frames
    dynamics = final["dynamics_ablation"]
    assert dynamics["stage_scores"] == final["stage_scores"]
    assert [len(counts) for counts in dynamics["exit_counts"]] == [2] * len(dynamics["budgets"])  # T_L stages
    assert "no glance exit" in (tmp_path / "exp" / "run" / "log.txt").read_text()


def test_replaced_settings_spend_the_same_focus_compute(monkeypatch):
    """Every setting runs the focus encoder on exactly T_L patches of P x P per video (and draw)."""
    torch.manual_seed(0)
    model = tiny_model(num_focus_segments=2).eval()
    video = random_video(batch=2)
    with torch.no_grad():
        out = model(video)
    shapes = []
    forward = type(model.focus).forward
    monkeypatch.setattr(type(model.focus), "forward", lambda self, x: (shapes.append(tuple(x.shape)), forward(self, x))[1])
    logits = policy_ablation.ablation_logits(model, video, out, draws=3)
    assert shapes == [(2 * 2, 3, 32, 32), (3 * 2 * 2, 3, 32, 32), (3 * 2 * 2, 3, 32, 32)]
    assert {k: v.shape[1] for k, v in logits.items()} == {"glance_exit": 1, "uniform_frames": 1, "random_patches": 3,
                                                         "uniform_frames_random_patches": 3}


def test_the_job_reports_the_ablation(tmp_path):
    argv = TINY + ["--dataset", "synthetic", "--data_dir", str(tmp_path / "data"), "--synthetic", json.dumps(SYNTHETIC),
                   "--root_log", str(tmp_path / "exp"), "--store_name", "run", "--policy_ablation"]
    assert main.main(argv) == 0
    final = json.loads((tmp_path / "exp" / "run" / "metrics.json").read_text())["final"]
    ablation = final["policy_ablation"]
    assert set(ablation) == {"metric", "full", "glance_exit", "uniform_frames", "random_patches",
                             "uniform_frames_random_patches"}
    assert ablation["full"] == final["prediction_top1"] and ablation["metric"] == "top1"
    for key in ("glance_exit", "uniform_frames", "random_patches", "uniform_frames_random_patches"):
        assert 0.0 <= ablation[key] <= 100.0
    log = (tmp_path / "exp" / "run" / "log.txt").read_text()
    assert "top1 at equal GFLOPs: uniform frames" in log


def test_the_ablation_needs_the_candidate_frame_flow(tmp_path, capsys):
    """Refused in one line when the flags are read: nothing is built, trained or written."""
    argv = TINY + ["--dataset", "synthetic", "--data_dir", str(tmp_path / "data"), "--synthetic", json.dumps(SYNTHETIC),
                   "--root_log", str(tmp_path / "exp"), "--policy_ablation", "--variant", "tsm", "--glance_arch",
                   "mbv2", "--focus_arch", "resnet50"]
    with pytest.raises(SystemExit):
        main.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--policy_ablation: the tsm variant has no candidate-frame policy" in err[0], err
    assert not (tmp_path / "exp").exists() and not (tmp_path / "data").exists()


def test_a_coarse_glance_sees_downscaled_frames_and_costs_less():
    """--glance_size: the glance encoder sees antialiased downscaled frames (the paper's coarse glance);
    the patches are still cut from the full-resolution frames."""
    torch.manual_seed(0)
    full, coarse = tiny_model(), tiny_model(glance_size=32)
    seen = []
    coarse.glance.register_forward_hook(lambda m, i, o: seen.append(tuple(i[0].shape)))
    coarse.focus.register_forward_hook(lambda m, i, o: seen.append(tuple(i[0].shape)))
    with torch.no_grad():
        coarse.eval()(random_video(batch=1))
    assert seen == [(4, 3, 32, 32), (4, 3, 32, 32)]  # 4 glance frames at 32 px, 4 patches of P = 32
    assert coarse.feature_size == 1 and full.feature_size == 2
    assert flops_breakdown(coarse).glance_frame < 0.3 * flops_breakdown(full).glance_frame
    # Fine detail is averaged away, not aliased: a 1-pixel checker becomes flat grey.
    checker = ((torch.arange(64)[:, None] + torch.arange(64)[None]) % 2).float().expand(1, 3, 64, 64)
    from models.backbones import downscale
    small = downscale(checker, 32, antialias=True)
    inner = small[..., 1:-1, 1:-1]  # (the border pixels see the frame edge)
    assert torch.allclose(inner, torch.full_like(inner, 0.5), atol=1e-6)
    with pytest.raises(ValueError, match="glance_size must be in 1..input_size"):
        tiny_model(glance_size=65)


def test_a_coarse_glance_resizes_uint8_frames_before_normalising_them_with_the_same_result():
    """uint8 frames are resized first and normalised at the glance size (a fraction of the work); the
    glance sees the same values as from frames normalised first, so both layouts give the same outputs."""
    model = tiny_model(glance_size=32).eval()
    video = random_video(batch=2, dtype=torch.uint8)  # (B, T0, 3, 64, 64)
    normalised = (video.float() / 255.0 - model.pixel_mean) / model.pixel_std
    seen = []
    model.glance.register_forward_hook(lambda m, i, o: seen.append(i[0].clone()))
    with torch.no_grad():
        from_uint8, from_float = model(video), model(normalised)
    assert seen[0].shape == (2 * model.num_glance, 3, 32, 32)
    torch.testing.assert_close(seen[0], seen[1], atol=1e-5, rtol=0)
    torch.testing.assert_close(from_uint8.exit_logits, from_float.exit_logits, atol=1e-4, rtol=1e-4)
