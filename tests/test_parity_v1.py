"""AdaFocus V1 (ActivityNet / FCVID / Mini-Kinetics form) reproduces the official eval forward.

For every ``v1/parity_*.pt`` of the reference folder whose ``tree`` is that form: the configuration,
manifest, checkpoint generator and seeds come from the file. The synthetic checkpoint is built at test time
(its digest checked), saved in the official V1 layout and loaded through ``load_checkpoint``, the input
regenerated from ``input_seed`` (its checksum checked) and the eval forward run as the fixture README's
recipe says. Fixtures of the Something-Something form skip.

Tolerances are the fixture README's (section 6): exact on actions, patch coordinates and patches;
``atol=1e-5`` on probabilities; ``atol=rtol=1e-3`` on features and logits. The focus and classifier side is
also compared stage by stage: the crop at the recorded coordinates, the focus encoder on the recorded
patches' frames, the classifier given the recorded features.
"""
from __future__ import annotations

import math

import pytest
import torch

from models.adafocus_v1 import AdaFocusV1, crop_integer_patches, official_manifest, patch_corners
from ops.checkpoint import load_checkpoint
from support import Capture, fixture_checkpoint, fixture_generator, fixture_params, require_fixture

#: ``tree`` of the fixtures of the form built here (the official folder name).
ACT_TREE = "Experiments on ActivityNet, FCVID and Mini-Kinetics"

PROBS = dict(atol=1e-5, rtol=0.0)
FEATURES = dict(atol=1e-3, rtol=1e-3)  # features, encodings, GRU states and logits


def build_model(cfg) -> AdaFocusV1:
    """The model of a fixture's ``config`` (ACT form)."""
    return AdaFocusV1(num_classes=cfg["num_classes"], num_segments=cfg["num_segments"], patch_size=cfg["patch_size"],
                      input_size=cfg["input_size"], glance_size=cfg["glance_size"], action_dim=cfg["action_dim"],
                      hidden_state_dim=cfg["hidden_state_dim"], hidden_dim=cfg["hidden_dim"], dropout=cfg["dropout"],
                      with_glancer=cfg["with_glancer"])


def assert_checksum_equal(t: torch.Tensor, recorded: dict, name: str):
    """The fixture's checksum: the shape, the first and last 8 values exactly, the float64 sums (of |t| too) to
    their rounding (the fixture's summation order is not recorded)."""
    flat = t.detach().reshape(-1).double().tolist()
    assert list(t.shape) == recorded["shape"], name
    assert torch.equal(t.reshape(-1)[:8], recorded["first8"]) and torch.equal(t.reshape(-1)[-8:], recorded["last8"]), name
    assert math.fsum(flat) == pytest.approx(recorded["sum"], rel=1e-12, abs=1e-9), name
    assert math.fsum(abs(v) for v in flat) == pytest.approx(recorded["abs_sum"], rel=1e-12), name


def regenerate_input(fx) -> torch.Tensor:
    """The fixture's frames (B, 3T, S, S), already normalised, from ``input_seed``."""
    shape = fx["input_checksum"]["shape"]
    return torch.randn(shape, generator=torch.Generator().manual_seed(fx["input_seed"]), dtype=torch.float32)


@pytest.fixture(scope="module", params=fixture_params("parity_*.pt", "v1"))
def run(request, tmp_path_factory):
    path = require_fixture(request.param)
    fx = torch.load(path, weights_only=True)
    if fx["tree"] != ACT_TREE:
        pytest.skip(f"{path.name} is the Something-Something form's fixture: tests/test_parity_v1_sth.py tests it")
    torch.set_num_threads(fx.get("num_threads", 1))
    cfg = fx["config"]
    model = build_model(cfg)
    ckpt_path, manifest = fixture_checkpoint(path, fx, tmp_path_factory.mktemp("v1_parity"))
    info = load_checkpoint(str(ckpt_path), model)
    model.eval()

    images = regenerate_input(fx)
    policy = model.policy.spatial
    capture = Capture({"glance": model.glance, "flat": policy.state_encoder[2], "policy": policy,
                       "focus": model.focus, "classifier_gru": model.classifier.gru})
    torch.manual_seed(fx["forward_seed"])
    rng_before = torch.get_rng_state()
    with torch.no_grad():
        out = model(images)
    rng_untouched = torch.equal(rng_before, torch.get_rng_state())
    capture.remove()
    return dict(fx=fx, path=path, model=model, info=info, manifest=manifest, images=images, out=out,
                captured=capture.values, rng_untouched=rng_untouched)


def per_step(run, t: torch.Tensor) -> torch.Tensor:
    """(B*T, ...) rows in video-major order -> (B, T, ...)."""
    b, steps = run["out"].actions.shape
    return t.reshape(b, steps, *t.shape[1:])


def test_checkpoint_loads_with_every_key(run):
    model, info, fx = run["model"], run["info"], run["fx"]
    generated = fixture_generator(run["path"], fx).make_state_dict(run["manifest"], fx["checkpoint_seed"])  # the official keys
    assert info.format == "official"
    acting_copy = sorted(k for k in generated if k.startswith("focuser.policy.policy_old."))
    assert acting_copy and sorted(info.dropped_keys) == acting_copy
    assert len(model.state_dict()) == len(generated) - len(acting_copy)
    ours = model.state_dict()
    for key, value in generated.items():
        if key.startswith("focuser.policy.policy."):
            assert torch.equal(ours["policy.spatial." + key[len("focuser.policy.policy."):]], value), key
        if key.startswith("classifier."):
            assert torch.equal(ours[key], value), key


def test_our_manifest_is_the_fixture_manifest(run):
    assert [tuple(e) for e in official_manifest(run["model"])] == [(k, list(s), d) for k, s, d in run["manifest"]]


def test_input_matches_the_recipe(run):
    assert_checksum_equal(run["images"], run["fx"]["input_checksum"], "input")


def test_eval_forward_draws_no_random_numbers(run):
    assert run["rng_untouched"] and run["fx"]["rng_untouched_by_eval_forward"]


def test_glance_maps_and_vectors(run):
    fx, out = run["fx"], run["out"]
    fmap, pooled = run["captured"]["glance"]
    fmap = per_step(run, fmap)  # (B, T, 1280, s, s)
    torch.testing.assert_close(out.glance_features, fx["glance_feat_vec"], **FEATURES)
    torch.testing.assert_close(per_step(run, pooled), fx["glance_feat_vec"], **FEATURES)
    torch.testing.assert_close(fmap[:, fx["glance_feat_map_steps"]], fx["glance_feat_map_kept"], **FEATURES)
    torch.testing.assert_close(fmap.double().sum(dim=(2, 3, 4)), fx["glance_feat_map_sum"], atol=0.0, rtol=1e-5)
    torch.testing.assert_close(fmap.double().abs().sum(dim=(2, 3, 4)), fx["glance_feat_map_abs_sum"], atol=0.0, rtol=1e-5)


def test_policy_encoder_gru_actor_and_actions(run):
    fx, captured, out = run["fx"], run["captured"], run["out"]
    steps = captured["policy"]
    b, t = out.actions.shape
    flat = captured["flat"].view(t, b, -1).transpose(0, 1)  # the policy encodes its maps step-major
    torch.testing.assert_close(flat, fx["policy_conv_relu_flat"], **FEATURES)
    torch.testing.assert_close(steps.encoded, fx["policy_state_encoding"], **FEATURES)
    torch.testing.assert_close(steps.hidden, fx["policy_gru_hidden"], **FEATURES)
    torch.testing.assert_close(steps.logits, fx["actor_logits"], **FEATURES)
    torch.testing.assert_close(steps.probs, fx["actor_probs"], **PROBS)
    torch.testing.assert_close(out.action_probs, fx["actor_probs"], **PROBS)
    assert torch.equal(out.actions, fx["actions"])


def test_action_grid_and_patch_coordinates(run):
    fx, model, out = run["fx"], run["model"], run["out"]
    assert torch.equal(model.action_table, fx["action_table"])
    assert torch.equal(patch_corners(fx["action_table"], model.input_size, model.patch_size), fx["coord_table"])
    assert torch.equal(model.action_table[out.actions], fx["standard_actions"])
    assert torch.equal(out.corners, fx["patch_coords"])
    assert torch.equal(model.corners_of(fx["actions"]), fx["patch_coords"])


def test_patches_are_exact_slices_at_the_recorded_coordinates(run):
    fx, model = run["fx"], run["model"]
    frames = model.frames(run["images"])  # (B, T, 3, H, W)
    b, t = fx["actions"].shape
    patches = crop_integer_patches(frames.flatten(0, 1), fx["patch_coords"].flatten(0, 1), model.patch_size)
    patches = patches.view(b, t, *patches.shape[1:])
    assert torch.equal(patches[:, 0], fx["patches_step0"])
    # every step's patch: float64 sums agree to their rounding (one wrong pixel moves them by about 1)
    torch.testing.assert_close(patches.double().sum(dim=(2, 3, 4)), fx["patch_sum"], atol=1e-9, rtol=1e-12)
    torch.testing.assert_close(patches.double().abs().sum(dim=(2, 3, 4)), fx["patch_abs_sum"], atol=1e-9, rtol=1e-12)


def test_focus_features_given_the_patches(run):
    fx, model, out = run["fx"], run["model"], run["out"]
    torch.testing.assert_close(out.focus_features, fx["local_feat"], **FEATURES)
    with torch.no_grad():  # stage by stage: the focus encoder on the recorded step-0 patches
        step0 = model.focus(fx["patches_step0"])
    torch.testing.assert_close(step0, fx["local_feat"][:, 0], **FEATURES)


def test_classifier_input_gru_and_logits(run):
    fx, model, out = run["fx"], run["model"], run["out"]
    features = model.classifier_input(out.glance_features, out.focus_features)
    recorded = fx["classifier_input_checksum"]
    assert list(features.shape) == recorded["shape"]
    assert math.fsum(features.double().reshape(-1).tolist()) == pytest.approx(recorded["sum"], rel=1e-6)
    torch.testing.assert_close(features.reshape(-1)[:8], recorded["first8"], **FEATURES)
    torch.testing.assert_close(features.reshape(-1)[-8:], recorded["last8"], **FEATURES)
    gru_out, _ = run["captured"]["classifier_gru"]
    torch.testing.assert_close(gru_out, fx["classifier_gru_out"], **FEATURES)
    with torch.no_grad():  # stage by stage: the classifier given the recorded features
        given = model.classifier(model.classifier_input(fx["glance_feat_vec"], fx["local_feat"]))
    torch.testing.assert_close(given, fx["logits_per_step"], **FEATURES)


def test_outputs_in_the_official_order(run):
    fx, out = run["fx"], run["out"]
    assert fx["output_order"] == ["logits", "pred"]
    b, t, c = out.step_logits.shape
    torch.testing.assert_close(out.step_logits.reshape(b * t, c), fx["outputs"]["logits"], **FEATURES)
    torch.testing.assert_close(out.step_logits, fx["logits_per_step"], **FEATURES)
    torch.testing.assert_close(out.logits, fx["outputs"]["pred"], **FEATURES)
