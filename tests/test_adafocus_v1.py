"""AdaFocus V1 (ActivityNet / FCVID / Mini-Kinetics form): the variant's parts, its checkpoint layout and FLOPs.

The eval forward against the official numbers is in tests/test_parity_v1.py; here: the crop and the action
grid, input layouts, causality of the per-step predictions, the official key layout (every reference
manifest is taken for this variant exactly when it is the ACT form's), loading official checkpoints, and the
FLOPs against the figures of the official FLOPs helper.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from models import VARIANTS, get_variant
from models.adafocus_v1 import (OFFICIAL_KEYS, AdaFocusV1, action_grid, crop_integer_patches, detect_official,
                                official_manifest, patch_corners)
from models.flops import count_gmacs
from ops.checkpoint import CheckpointError, checkpoint_num_classes, load_checkpoint
from ops.config import official_variant
from support import fixture_params, load_generator, manifest_entries, reference_dir, require_fixture, require_reference

TINY_V1 = dict(num_classes=5, num_segments=4, patch_size=32, input_size=64, glance_size=64, action_dim=25,
               hidden_state_dim=16, hidden_dim=12, dropout=0.5)
TRAINED, ACTING = "focuser.policy.policy.", "focuser.policy.policy_old."


def tiny_v1(seed: int = 0, **overrides) -> AdaFocusV1:
    torch.manual_seed(seed)
    model = AdaFocusV1(**{**TINY_V1, **overrides})
    with torch.no_grad():  # random BatchNorm statistics, so that evaluation is not the identity there
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def random_clip(model: AdaFocusV1, batch: int = 2, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, model.num_segments, 3, model.input_size, model.input_size, generator=g)


# --------------------------------------------------------------------------------------------------
# Parts
# --------------------------------------------------------------------------------------------------
def test_action_grid_is_row_major_vertical_first():
    grid = action_grid(49)
    assert grid.shape == (49, 2) and grid.dtype == torch.float32
    assert grid[0].tolist() == [0.0, 0.0] and grid[6].tolist() == [0.0, 1.0] and torch.equal(grid[7], torch.tensor([1 / 6, 0.0]))
    assert grid[48].tolist() == [1.0, 1.0]
    corners = patch_corners(grid, 224, 128)
    assert sorted(set(corners[:, 0].tolist())) == [0, 16, 32, 48, 64, 80, 96]
    assert torch.equal(corners[:, 0].view(7, 7), corners[:, 1].view(7, 7).t())


def test_an_action_dim_without_a_grid_is_refused_in_one_line():
    with pytest.raises(ValueError, match=r"action_dim must be one of \(25, 36, 49, 64\).*got 30") as info:
        action_grid(30)
    assert "\n" not in str(info.value)


def test_crop_is_an_exact_slice_and_stays_in_the_frame():
    frames = torch.randn(3, 3, 20, 24)
    corners = torch.tensor([[0, 0], [5, 11], [12, 16]])
    patches = crop_integer_patches(frames, corners, 8)
    for n, (y, x) in enumerate(corners.tolist()):
        assert torch.equal(patches[n], frames[n, :, y:y + 8, x:x + 8])
    with pytest.raises(ValueError, match="leaves the 20 x 24 frame"):
        crop_integer_patches(frames, torch.tensor([[0, 0], [13, 0], [0, 0]]), 8)


def test_both_input_layouts_and_uint8_frames_give_the_same_result():
    model = tiny_v1()
    clip = random_clip(model)
    with torch.no_grad():
        out = model(clip)
        flat = model(clip.flatten(1, 2))  # the official (B, 3T, H, W)
        raw = torch.randint(0, 256, clip.shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
        normalised = (raw.float() / 255.0 - model.pixel_mean) / model.pixel_std
        assert torch.equal(model(raw).step_logits, model(normalised).step_logits)
    assert torch.equal(out.step_logits, flat.step_logits) and torch.equal(out.actions, flat.actions)
    b, t = out.actions.shape
    assert out.step_logits.shape == (b, t, TINY_V1["num_classes"]) and torch.equal(out.logits, out.step_logits[:, -1])
    assert out.action_probs.shape == (b, t, TINY_V1["action_dim"])
    torch.testing.assert_close(out.action_probs.sum(-1), torch.ones(b, t))
    boxes = out.patch_boxes
    assert torch.equal(boxes[..., 2] - boxes[..., 0], torch.full((b, t), 32.0))


def test_the_prediction_after_frame_t_depends_on_frames_up_to_t_only():
    model = tiny_v1()
    clip = random_clip(model)
    changed = clip.clone()
    changed[:, 2:] = torch.randn_like(changed[:, 2:])
    with torch.no_grad():
        a, b = model(clip), model(changed)
    torch.testing.assert_close(a.step_logits[:, :2], b.step_logits[:, :2], atol=1e-5, rtol=1e-5)
    assert torch.equal(a.actions[:, :2], b.actions[:, :2])
    assert not torch.allclose(a.step_logits[:, 2:], b.step_logits[:, 2:])


def test_without_the_glancer_the_classifier_reads_the_focus_features_alone():
    model = tiny_v1(with_glancer=False)
    assert model.classifier.gru.input_size == model.focus.feature_dim
    with torch.no_grad():
        assert model(random_clip(model)).step_logits.shape == (2, 4, 5)


def test_the_familys_smaller_focus_resnets_are_offered():
    model = tiny_v1(focus_arch="resnet18", zero_init_residual=True)
    assert model.focus.feature_dim == 512 and model.classifier.gru.input_size == 512 + model.glance.feature_dim
    assert model.focus.layer1[0].bn2.weight.abs().sum() == 0  # the residual blocks start as the identity
    assert "resnet18" in get_variant("adafocus_v1").encoders["focus"]
    with torch.no_grad():
        assert model(random_clip(model)).step_logits.shape == (2, 4, 5)


def test_given_corners_replace_the_policys_patches():
    model = tiny_v1()
    video = random_clip(model)
    with torch.no_grad():
        out = model(video)
        corners = model.random_corners(4, 2, np.random.RandomState(0))
        moved = model(video, corners=corners)
        assert torch.equal(model(video, corners=out.corners).step_logits, out.step_logits)
        patches = model.crop(model.frames(video).flatten(0, 1), corners.flatten(0, 1))
        assert torch.allclose(moved.focus_features, model.focus(patches).view(2, 4, -1), atol=1e-6)
    assert torch.equal(moved.corners, corners) and torch.equal(moved.actions, out.actions)
    assert not torch.equal(moved.corners, out.corners)
    with pytest.raises(ValueError, match="corners must be"):
        model(video, corners=corners[:, :2])


def test_training_mode_is_refused_in_one_line():
    model = tiny_v1().train()
    with pytest.raises(RuntimeError, match="evaluation mode only") as info:
        model(random_clip(model))
    assert "\n" not in str(info.value)


def test_bad_inputs_name_the_setting():
    model = tiny_v1()
    with pytest.raises(ValueError, match="num_segments=4"):
        model(torch.zeros(1, 3, 3, 64, 64))
    with pytest.raises(ValueError, match="input_size=64"):
        model(torch.zeros(1, 4, 3, 32, 32))


def test_registered_with_its_hyper_parameters():
    variant = get_variant("adafocus_v1")
    assert variant.build is AdaFocusV1 and AdaFocusV1.variant == "adafocus_v1"
    assert set(TINY_V1) - {"num_classes"} <= set(variant.hyper_parameters)
    assert variant.objective_terms == ("cat",) and variant.datasets == ("actnet", "fcvid", "minik")


# --------------------------------------------------------------------------------------------------
# Official checkpoint layout
# --------------------------------------------------------------------------------------------------
def config_from_manifest(entries) -> dict:
    """The ACT configuration whose shapes a manifest has, or {} when it has no ACT actor-critic."""
    shapes = {k: s for k, s, _ in entries}
    actor = shapes.get(TRAINED + "actor.0.weight")
    if actor is None or "focuser.net.conv1.weight" not in shapes:
        return {}
    side = int(round((shapes[TRAINED + "state_encoder.3.weight"][1] // 32) ** 0.5))
    gru_in = shapes["classifier.gru.weight_ih_l0"][1]
    return dict(num_classes=shapes["classifier.fc.weight"][0], action_dim=actor[0], hidden_state_dim=actor[1],
                hidden_dim=shapes["classifier.fc.weight"][1], glance_size=32 * side, with_glancer=gru_in != 2048)


def test_this_variant_takes_no_other_variants_manifest():
    """Every reference manifest outside v1/ is detected by at most one variant, never by this one."""
    root = require_reference()
    others = [p for p in sorted(root.glob("*_state_dict.json")) + sorted(root.glob("*/*_state_dict.json"))
              if p.parent.name != "v1"]
    assert others
    for path in others:
        keys = [k for k, _, _ in manifest_entries(path)]
        assert not detect_official(keys), path.name
        assert len([n for n, v in VARIANTS.items() if v.checkpoint.detect(keys)]) <= 1, path.name


@pytest.mark.parametrize("manifest", fixture_params("*_state_dict.json", "v1"))
def test_v1_manifests_are_taken_for_this_variant_exactly_when_they_are_the_act_form(manifest, tmp_path):
    """An ACT manifest is detected by this variant alone, equals ours key for key in order for the
    configuration its shapes describe, and a synthetic official checkpoint made from it (the fixtures'
    generator) names the variant and its class count and loads with every tensor; a manifest of another form
    is not detected by this variant (the Something-Something form's: tests/test_parity_v1_sth.py)."""
    path = require_fixture(manifest)
    entries = manifest_entries(path)
    keys = [k for k, _, _ in entries]
    detected = [name for name, v in VARIANTS.items() if v.checkpoint.detect(keys)]
    cfg = config_from_manifest(entries)
    if not cfg:
        assert "adafocus_v1" not in detected, path.name
        return
    assert detected == ["adafocus_v1"]
    model = AdaFocusV1(**cfg)
    assert [tuple(e) for e in official_manifest(model)] == [(k, list(s), d) for k, s, d in entries]
    generator = load_generator(reference_dir() / "v1" / "make_parity_checkpoint_v1.py")
    ckpt = generator.make_checkpoint(generator.load_manifest(path), 0)
    assert official_variant(ckpt) == "adafocus_v1"
    assert checkpoint_num_classes(ckpt) == cfg["num_classes"]
    torch.save(ckpt, tmp_path / "ckpt.pth.tar")
    info = load_checkpoint(str(tmp_path / "ckpt.pth.tar"), model)
    assert info.format == "official" and info.best_metric == ckpt["best_acc"]
    assert sorted(info.dropped_keys) == sorted(k for k in keys if k.startswith(ACTING))
    ours = model.state_dict()
    for key in ("glancer.net.features.0.0.weight", "focuser.net.layer4.2.bn3.weight", TRAINED + "gru.weight_hh_l0",
                "classifier.gru.weight_ih_l0", "glancer.net.classifier.1.weight", "focuser.net.fc.weight"):
        converted = get_variant("adafocus_v1").checkpoint.convert({key: ckpt["model_state_dict"][key]})[0]
        (name, value), = converted.items()
        assert torch.equal(ours[name], value), key


def official_state(model: AdaFocusV1) -> dict:
    """Our weights in the official layout, both actor-critic copies, with a ``module.`` prefix."""
    state = {"module." + OFFICIAL_KEYS.to_official(k): v.clone() for k, v in model.state_dict().items()}
    state.update({k.replace(TRAINED, ACTING): v.clone() for k, v in state.items() if TRAINED in k})
    return state


def test_official_layout_loads_with_every_weight(tmp_path):
    source, target = tiny_v1(seed=0), tiny_v1(seed=1)
    path = tmp_path / "ckpt.pth.tar"
    torch.save({"epoch": 3, "model_state_dict": official_state(source), "best_acc": 0.25}, path)
    info = load_checkpoint(str(path), target)
    assert (info.format, info.epoch, info.best_metric) == ("official", 3, 0.25)
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key
    with torch.no_grad():
        clip = random_clip(source)
        assert torch.equal(source(clip).step_logits, target(clip).step_logits)


def test_a_checkpoint_without_the_policy_names_the_missing_keys(tmp_path):
    """The official stage-1 checkpoints have no policy yet: they do not make an evaluable model."""
    state = {k: v for k, v in official_state(tiny_v1()).items() if ".policy." not in k}
    path = tmp_path / "stage1.pth.tar"
    torch.save({"model_state_dict": state}, path)
    with pytest.raises(CheckpointError, match="policy.spatial.actor.0.weight"):
        load_checkpoint(str(path), tiny_v1())


# --------------------------------------------------------------------------------------------------
# FLOPs
# --------------------------------------------------------------------------------------------------
#: The official FLOPs helper's figures (``get_gflops_params``, thop, C = 200): MobileNetV2 at 224 px and
#: ResNet-50 at P px, and the per-video total of the README configuration (T = 16, P = 128, A = 49).
HELPER_MOBILENET_224 = 0.3265
HELPER_RESNET50 = {96: 0.7593, 128: 1.3495, 144: 1.7766, 160: 2.1084, 176: 2.6343, 192: 3.0359, 224: 4.1321}
POLICY_STEP_GMACS, CLASSIFIER_STEP_GMACS, VIDEO_GFLOPS_P128 = 9.95e-3, 13.57e-3, 27.2


def batchnorm_outputs(module: nn.Module, x: torch.Tensor) -> float:
    """Output elements of every BatchNorm of ``module`` on ``x``, in G (thop charges 4 per element: normalise
    and affine, 2 each)."""
    count = [0]
    handles = [m.register_forward_hook(lambda m, i, o: count.__setitem__(0, count[0] + o.numel()))
               for m in module.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        module(x)
    for h in handles:
        h.remove()
    return count[0] / 1e9


@pytest.fixture(scope="module")
def readme_model():
    return AdaFocusV1(num_classes=200).eval()


def test_step_components_match_the_official_figures(readme_model):
    """Policy and classifier steps are plain multiply-accumulates: within 1 % of the hand count. The
    backbones are MACs only here; the official helper (thop) also charges 4 per BatchNorm output element,
    and with that added they match it within 1 %."""
    model = readme_model
    flops = get_variant("adafocus_v1").flops(model)
    assert flops.policy_step == pytest.approx(POLICY_STEP_GMACS, rel=0.01)
    assert flops.classifier_step == pytest.approx(CLASSIFIER_STEP_GMACS, rel=0.01)
    frame = torch.zeros(1, 3, 224, 224)
    head = 1280 * 200 / 1e9  # the helper's model keeps its classifier
    assert flops.glance_frame + head + 4 * batchnorm_outputs(model.glance, frame) == pytest.approx(
        HELPER_MOBILENET_224, rel=0.01)
    for p, reference in HELPER_RESNET50.items():
        patch = torch.zeros(1, 3, p, p)
        ours = count_gmacs(model.focus, patch) + 2048 * 200 / 1e9 + 4 * batchnorm_outputs(model.focus, patch)
        assert ours == pytest.approx(reference, rel=0.01), p


def test_every_step_costs_the_same_and_the_video_matches_the_official_figure(readme_model):
    model = readme_model
    flops = get_variant("adafocus_v1").flops(model)
    stages = flops.stages()
    assert len(stages) == model.num_segments == 16
    assert stages == pytest.approx([(t + 1) * stages[0] for t in range(16)], rel=1e-9)
    assert flops.focus_patch == pytest.approx(count_gmacs(model.focus, torch.zeros(1, 3, 128, 128)))
    thop_extra = 4 * (batchnorm_outputs(model.glance, torch.zeros(1, 3, 224, 224))
                      + batchnorm_outputs(model.focus, torch.zeros(1, 3, 128, 128)))
    assert stages[-1] + 16 * thop_extra == pytest.approx(VIDEO_GFLOPS_P128, rel=0.01)
    assert stages[-1] == pytest.approx(VIDEO_GFLOPS_P128, rel=0.03)  # MACs alone: 2.5 % below the helper's


def test_main_py_refuses_training_without_a_stage_in_one_line(tmp_path):
    """The variant trains in the official stages only: main.py without --stage says so in one line and leaves
    no run folder (the stages themselves, evaluation and early exit: tests/test_v1_training.py)."""
    import subprocess
    import sys

    from support import REPO

    synthetic = '{"train_videos": 8, "val_videos": 4, "frames_per_video": 8, "frame_size": 64, "num_classes": 3}'
    result = subprocess.run([sys.executable, "main.py", "--variant", "adafocus_v1", "--dataset", "synthetic",
                             "--data_dir", str(tmp_path / "data"), "--root_log", str(tmp_path / "runs"), "--synthetic",
                             synthetic, "--num_segments", "4", "--input_size", "64", "--patch_size", "32",
                             "--no-pretrained", "--workers", "0", "--device", "cpu", "--epochs", "1", "--batch_size", "4"],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith("error: --variant adafocus_v1 trains in the official stages: "
                                                     "pass --stage 0, 1, 2 or 3"), result.stderr[-3000:]
    assert not (tmp_path / "runs").exists()
