"""AdaFocusV2 (Something-Something / Jester form, variant ``adafocus_v2_tsm``) reproduces the official eval
forward.

For every ``v2/parity_*.pt`` of the reference folder whose ``config['tree']`` is that form (fixtures of
the ActivityNet form skip: tests/test_parity_v2.py runs them): the configuration, manifest, checkpoint
generator and seeds come from the file. The synthetic checkpoint is built at test time (its digest
checked), loaded through ``load_checkpoint`` (official layout, ``module.`` prefix), the two input clips
regenerated from ``input_seed`` (their checksums checked) and the eval forward run as the fixture
README's recipe says.

Tolerances are the fixture README's (section 7). Stage by stage, tightly: the crop given the recorded
action bit for bit, the temporal shift's unit cases exactly, the focus encoder given those patches and
the heads given the recorded features to 1e-4; end to end (where a 1e-5 change of the action moves the
box on white-noise frames) with the README's looser end-to-end tolerances.

Every ``v2/adafocus_v2_*_state_dict.json`` manifest of this form is compared with ours, key for key in
order, for the configuration its shapes describe.
"""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from models.adafocus_v2 import crop_fixed_patches
from models.adafocus_v2_sth import AdaFocusV2TSM, detect_official, official_manifest
from models.backbones import glance_feature_size
from models.temporal_shift import temporal_shift
from ops.checkpoint import load_checkpoint
from ops.objective import validation_loss
from support import Capture, fixture_checkpoint, fixture_params, require_fixture
from test_parity_v2 import (ACTIONS, END_TO_END_FEATURES, END_TO_END_LOGITS, END_TO_END_PATCHES, GLANCE, GLANCE_MAP,
                            PATCH_PIXELS, POLICY_INTERNALS, STAGE, assert_checksum_equal)

#: ``config['tree']`` of the fixtures of the form built here (the official folder name).
STH_TREE = "Experiments on Sth-Sth and Jester"
#: The MobileNetV2 blocks and ResNet stages whose spatial means the fixture records.
GLANCE_STAGES = ("features.1", "features.3", "features.6", "features.10", "features.13", "features.16", "features.18")
FOCUS_STAGES = ("maxpool", "layer1", "layer2", "layer3", "layer4")


def build_model(cfg) -> AdaFocusV2TSM:
    """The model of a fixture's ``config`` (Sth-Sth / Jester form)."""
    if not cfg.get("shift", True) or cfg.get("shift_place", "blockres") != "blockres":
        raise ValueError(f"only the README's temporal shift (blockres) is built, got shift={cfg.get('shift')} "
                         f"shift_place={cfg.get('shift_place')}")
    return AdaFocusV2TSM(num_classes=cfg["num_classes"], num_segments=cfg["num_focus_segments"],
                         num_glance_segments=cfg["num_glance_segments"], patch_size=cfg["patch_size"],
                         input_size=cfg["input_size"], dropout=cfg["dropout"], shift_div=cfg["shift_div"])


def regenerate_inputs(fx):
    """(glance clip (B, 3G, S, S), focus clip (B, 3L, S, S), target (B,)) from the fixture's recipe."""
    cfg = fx["config"]
    b, size = cfg["batch_size"], cfg["input_size"]
    g = torch.Generator().manual_seed(fx["input_seed"])
    glance = torch.randn((b, 3 * cfg["num_glance_segments"], size, size), generator=g, dtype=torch.float32)
    focus = torch.randn((b, 3 * cfg["num_focus_segments"], size, size), generator=g, dtype=torch.float32)
    target = torch.randint(0, cfg["num_classes"], (b,), generator=g)
    return glance, focus, target


@pytest.fixture(scope="module", params=fixture_params("parity_*.pt", "v2"))
def run(request, tmp_path_factory):
    path = require_fixture(request.param)
    fx = torch.load(path, weights_only=True)
    cfg = fx["config"]
    if cfg.get("tree") != STH_TREE:
        pytest.skip(f"{path.name} is of the tree {cfg.get('tree')!r}: tests/test_parity_v2.py runs it")
    torch.set_num_threads(fx.get("num_threads", 1))
    model = build_model(cfg)
    ckpt_path, manifest = fixture_checkpoint(path, fx, tmp_path_factory.mktemp("v2_sth_parity"))
    info = load_checkpoint(str(ckpt_path), model)
    model.eval()

    glance, focus, target = regenerate_inputs(fx)
    layers = model.policy.spatial.layers
    modules = {"glance": model.glance, "tanh1": layers[2], "tanh2": layers[6], "tanh3": layers[9]}
    modules.update({"glance." + name: model.glance.get_submodule(name) for name in GLANCE_STAGES})
    modules.update({"focus." + name: model.focus.get_submodule(name) for name in FOCUS_STAGES})
    capture = Capture(modules)
    torch.manual_seed(fx["forward_seed"])
    rng_before = torch.get_rng_state()
    with torch.no_grad():
        out = model(focus, glance=glance)  # official: model(images_glance, images_focus)
    rng_untouched = torch.equal(rng_before, torch.get_rng_state())
    capture.remove()
    return dict(fx=fx, model=model, info=info, manifest=manifest, glance=glance, focus=focus, target=target, out=out,
                captured=capture.values, rng_untouched=rng_untouched)


def fixture_patches(run) -> torch.Tensor:
    """The crop of the regenerated focus clip at the fixture's own action: (B, 3L, P, P)."""
    return run["model"].crop(run["focus"], run["fx"]["action"])


def test_checkpoint_loads_with_every_key(run):
    model, info, manifest = run["model"], run["info"], run["manifest"]
    assert info.format == "official" and info.dropped_keys == []
    assert len(model.state_dict()) == len(manifest)


def test_our_manifest_is_the_fixture_manifest(run):
    assert [tuple(e) for e in official_manifest(run["model"])] == [(k, list(s), d) for k, s, d in run["manifest"]]


def test_inputs_match_the_recipe(run):
    fx = run["fx"]
    assert_checksum_equal(run["glance"], fx["input_checksum"]["images_glance"], "images_glance")
    assert_checksum_equal(run["focus"], fx["input_checksum"]["images_focus"], "images_focus")
    assert torch.equal(run["target"], fx["target"])


def test_eval_forward_draws_no_random_numbers(run):
    assert run["rng_untouched"] and run["fx"]["rng_untouched_by_eval_forward"]
    assert run["out"].random_pass is None


def test_temporal_shift_unit_cases_are_exact(run):
    cases = [c for name, c in run["fx"]["unit_cases"].items() if name.startswith("temporal_shift_")]
    assert cases
    for case in cases:
        assert torch.equal(temporal_shift(case["input"], case["n_segment"], case["fold_div"]), case["output"])


def test_crop_of_the_ramp_unit_case_is_bit_exact(run):
    case = run["fx"]["unit_cases"]["patch_grid_ramp16_p6"]
    assert case["frames"].shape[-1] == case["image_size"]
    assert torch.equal(crop_fixed_patches(case["frames"], case["action"], case["patch_size"]), case["output"])


def test_glance_stages_features_maps_and_heads(run):
    fx, out, model, captured = run["fx"], run["out"], run["model"], run["captured"]
    g = fx["config"]["num_glance_segments"]
    for name in GLANCE_STAGES:  # a wrong temporal shift shows first where it enters
        torch.testing.assert_close(captured["glance." + name].mean(dim=(2, 3)), fx["global_stage_pooled"][name],
                                   **GLANCE, msg=lambda m, name=name: f"{name}: {m}")
    fmap, pooled = captured["glance"]
    torch.testing.assert_close(pooled, fx["global_feat"], **GLANCE)
    torch.testing.assert_close(out.glance_features.flatten(0, 1), fx["global_feat"], **GLANCE)
    torch.testing.assert_close(fmap[::g], fx["global_feat_map_frame0"], **GLANCE_MAP)
    assert list(fmap.shape) == fx["global_feat_map_checksum"]["shape"]
    assert fmap.double().sum().item() == pytest.approx(fx["global_feat_map_checksum"]["sum"], rel=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(model.glance_prediction_head(out.glance_features), fx["global_frame_logits_new_fc"],
                                   **GLANCE)
    torch.testing.assert_close(out.glance_logits, fx["global_frame_logits_new_new_fc"], **GLANCE)
    torch.testing.assert_close(out.glance_prediction, fx["global_logit"], **GLANCE)
    torch.testing.assert_close(out.glance_reg_logits, fx["outputs"]["global_reg_logit"], **GLANCE)


def test_policy_layers_and_the_action(run):
    fx, out, captured = run["fx"], run["out"], run["captured"]
    torch.testing.assert_close(captured["tanh1"], fx["stn_tanh1"], **POLICY_INTERNALS)
    torch.testing.assert_close(captured["tanh2"], fx["stn_tanh2"], **POLICY_INTERNALS)
    torch.testing.assert_close(captured["tanh3"], fx["stn_tanh3"], **POLICY_INTERNALS)
    torch.testing.assert_close(out.actions, fx["action"], **ACTIONS)


def test_patch_position_and_theta(run):
    fx, model, out = run["fx"], run["model"], run["out"]
    box = out.patch_boxes[:, 0]  # (B, 4) x1, y1, x2, y2: the one box of each video
    top_left = box[:, [1, 0]]  # the fixture's [row, col]
    torch.testing.assert_close(top_left, fx["patch_top_left_px"], **PATCH_PIXELS)
    torch.testing.assert_close(top_left + model.patch_size / 2, fx["patch_centres_px"], **PATCH_PIXELS)
    side, p = model.input_size, model.patch_size
    scale = torch.full_like(box[:, 0], p / side)
    theta = torch.stack((torch.stack((scale, torch.zeros_like(scale), (box[:, 0] + box[:, 2]) / side - 1), dim=1),
                         torch.stack((torch.zeros_like(scale), scale, (box[:, 1] + box[:, 3]) / side - 1), dim=1)), dim=1)
    torch.testing.assert_close(theta, fx["theta"], **ACTIONS)


def test_crop_given_the_recorded_action_is_bit_exact(run):
    fx = run["fx"]
    patches = fixture_patches(run)  # (B, 3L, P, P): one box on every focus frame
    assert_checksum_equal(patches, fx["patches_checksum"], "patches")
    b, num_focus = patches.shape[0], fx["config"]["num_focus_segments"]
    kept = patches.view(b, num_focus, 3, *patches.shape[-2:])[:, fx["patch_frames_kept"]]
    assert torch.equal(kept, fx["patches_kept"])


def test_focus_encoder_and_heads_given_the_recorded_patches(run):
    fx, model = run["fx"], run["model"]
    b, num_focus = fx["config"]["batch_size"], fx["config"]["num_focus_segments"]
    patches = fixture_patches(run).view(b * num_focus, 3, model.patch_size, model.patch_size)
    with torch.no_grad():
        capture = Capture({name: model.focus.get_submodule(name) for name in FOCUS_STAGES})
        local_feat = model.focus(patches)
        capture.remove()
        frame_new_fc = model.focus_prediction_head(local_feat).view(b, num_focus, -1)
        frame_new_new_fc = model.focus_head(local_feat).view(b, num_focus, -1)
    for name in FOCUS_STAGES:
        torch.testing.assert_close(capture.values[name].mean(dim=(2, 3)), fx["local_stage_pooled"][name], **STAGE,
                                   msg=lambda m, name=name: f"{name}: {m}")
    torch.testing.assert_close(local_feat, fx["local_feat"], **STAGE)
    torch.testing.assert_close(frame_new_fc, fx["local_frame_logits_new_fc"], **STAGE)
    torch.testing.assert_close(frame_new_new_fc, fx["local_frame_logits_new_new_fc"], **STAGE)
    torch.testing.assert_close(frame_new_fc.mean(dim=1), fx["local_logit"], **STAGE)


def test_prediction_and_auxiliary_logits_given_the_recorded_features(run):
    fx, model = run["fx"], run["model"]
    cfg = fx["config"]
    b = cfg["batch_size"]
    glance_feat = fx["global_feat"].view(b, cfg["num_glance_segments"], -1)
    local_feat = fx["local_feat"].view(b, cfg["num_focus_segments"], -1)
    with torch.no_grad():
        prediction = (model.glance_prediction_head(glance_feat).mean(dim=1)
                      + model.focus_prediction_head(local_feat).mean(dim=1))
        glance_reg = model.glance_head(glance_feat).mean(dim=1)
        local_reg = model.focus_head(local_feat).mean(dim=1)
    torch.testing.assert_close(prediction, fx["outputs"]["prediction"], **STAGE)
    torch.testing.assert_close(glance_reg, fx["outputs"]["global_reg_logit"], **STAGE)
    torch.testing.assert_close(local_reg, fx["outputs"]["local_reg_logit"], **STAGE)


def test_end_to_end_focus_side_and_prediction(run):
    fx, model, out = run["fx"], run["model"], run["out"]
    b, num_focus = fx["config"]["batch_size"], fx["config"]["num_focus_segments"]
    with torch.no_grad():
        patches = model.crop(run["focus"], out.actions)
    kept = patches.view(b, num_focus, 3, *patches.shape[-2:])[:, fx["patch_frames_kept"]]
    torch.testing.assert_close(kept, fx["patches_kept"], **END_TO_END_PATCHES)
    torch.testing.assert_close(out.focus_features.flatten(0, 1), fx["local_feat"], **END_TO_END_FEATURES)
    torch.testing.assert_close(out.focus_logits, fx["local_frame_logits_new_new_fc"], **END_TO_END_LOGITS)
    torch.testing.assert_close(out.focus_prediction, fx["local_logit"], **END_TO_END_LOGITS)
    torch.testing.assert_close(out.focus_reg_logits, fx["outputs"]["local_reg_logit"], **END_TO_END_LOGITS)
    torch.testing.assert_close(out.prediction, fx["outputs"]["prediction"], **END_TO_END_LOGITS)
    torch.testing.assert_close(out.logits, fx["outputs"]["prediction"], **END_TO_END_LOGITS)


def test_validation_loss_of_the_prediction(run):
    fx, out, target = run["fx"], run["out"], run["target"]
    from_fixture = F.cross_entropy(fx["outputs"]["prediction"], target)  # what validation_loss computes
    torch.testing.assert_close(from_fixture, fx["eval_loss"], atol=1e-4, rtol=0.0)
    torch.testing.assert_close(validation_loss(out, target), fx["eval_loss"], atol=2e-2, rtol=0.0)


# --------------------------------------------------------------------------------------------------
# manifests
# --------------------------------------------------------------------------------------------------
def model_of_manifest(entries) -> AdaFocusV2TSM:
    """The configuration an official (Sth-Sth / Jester) manifest's shapes describe: classes, glance frames
    (the policy's input channels) and the glance map size (the policy's flattened width). The patch size
    and the focus frame count change no shape."""
    shapes = {k: s for k, s, _ in entries}
    glance_dim = shapes["global_CNN.new_fc.weight"][1]
    conv_out, stacked = shapes["policy_stn.0.weight"][:2]
    feature_size = round((shapes["policy_stn.4.weight"][1] / conv_out) ** 0.5)
    input_size = next(s for s in range(32, 1025, 32) if glance_feature_size(s) == feature_size)
    return AdaFocusV2TSM(num_classes=shapes["global_CNN.new_fc.weight"][0], num_glance_segments=stacked // glance_dim,
                         input_size=input_size, patch_size=min(144, input_size))


@pytest.mark.parametrize("manifest_path", fixture_params("adafocus_v2_*_state_dict.json", "v2"))
def test_our_manifest_equals_the_official_manifest(manifest_path):
    path = require_fixture(manifest_path)
    entries = json.loads(path.read_text())
    keys = [k for k, _, _ in entries]
    if any(k.startswith("policy_stn.gru.") for k in keys):
        pytest.skip(f"{path.name} is in the ActivityNet form's layout: tests/test_parity_v2.py checks it")
    assert detect_official(keys)
    model = model_of_manifest(entries)
    assert [list(e) for e in official_manifest(model)] == [[k, list(s), d] for k, s, d in entries]


def test_inference_copy_decides_as_the_model(run):
    """CPU evaluation's inference copy (models.inference) keeps the glance and the policy as trained: the
    same box bit for bit; only the focus side is folded, to float rounding."""
    from models.inference import prepare_for_inference

    with torch.no_grad():
        fast = prepare_for_inference(run["model"])(run["focus"], glance=run["glance"])
    plain = run["out"]
    assert torch.equal(fast.actions, plain.actions) and torch.equal(fast.glance_features, plain.glance_features)
    torch.testing.assert_close(fast.prediction, plain.prediction, atol=1e-4, rtol=1e-4)
