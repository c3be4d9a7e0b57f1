"""Uni-AdaFocus-TSM reproduces the official release's numbers for the same weights and input.

For every ``parity_*.pt`` in the ``tsm/`` folder of the reference directory: the manifest, the
checkpoint generator, the seeds and the configuration come from the file itself. The synthetic
checkpoint is built at test time, loaded through ``load_checkpoint`` (official TSM layout, ``module.``
prefix), the recorded inputs (glance frames and focus candidates) run in eval mode, and every output
is compared within the fixture README's tolerances: logits and features ``atol=2e-3, rtol=1e-3``,
weights and actions ``atol=1e-5, rtol=1e-4``, indices exactly, focus-side values end to end
``atol=5e-3``. The recorded unit cases (temporal shift, frame selection) must match exactly.
"""
from __future__ import annotations

import pytest
import torch

from models import frame_selection
from models.inference import prepare_for_inference
from models.temporal_shift import temporal_shift
from models.tsm import UniAdaFocusTSM, official_manifest, tsm_flops
from ops.checkpoint import load_checkpoint
from support import fixture_checkpoint, fixture_params, require_fixture

LOGITS = dict(atol=2e-3, rtol=1e-3)
WEIGHTS = dict(atol=1e-5, rtol=1e-4)
FOCUS_END_TO_END = dict(atol=5e-3, rtol=1e-3)


#: The official ``policy_sample_indices`` seeded the global RNG with 7 right before each ``rand_sample`` call
#: (fixture README, unit cases); the file does not store the seed.
RAND_SAMPLE_SEED = 7


def fixtures():
    """One parameter per ``tsm/parity_*.pt`` of the reference folder."""
    return fixture_params("parity_*.pt", "tsm")


def build_model(cfg) -> UniAdaFocusTSM:
    return UniAdaFocusTSM(num_classes=cfg["num_classes"], num_segments=cfg["num_input_focus_segments"],
                          num_glance_segments=cfg["num_glance_segments"], num_focus_segments=cfg["num_focus_segments"],
                          patch_size=cfg["patch_size"], input_size=cfg["input_size"],
                          stn_hidden_dim=cfg["stn_hidden_dim"], temporal_hidden_dim=cfg["temporal_hidden_dim"],
                          dropout=cfg["dropout"], temperature=cfg["temperature"], shift_div=cfg["shift_div"])


def load_fixture(fixture_path, folder):
    """A parity fixture, its model with the fixture's synthetic official checkpoint loaded (written into
    ``folder``; CPU, eval mode) and its recorded inputs: (fx, model, glance, video, info, manifest)."""
    fx = torch.load(fixture_path, weights_only=True)
    cfg = fx["config"]
    model = build_model(cfg)
    path, manifest = fixture_checkpoint(fixture_path, fx, folder)
    info = load_checkpoint(str(path), model)

    b, size = cfg["batch_size"], cfg["input_size"]
    g = torch.Generator().manual_seed(fx["input_seed"])
    glance = torch.randn((b, 3 * cfg["num_glance_segments"], size, size), generator=g, dtype=torch.float32)
    video = torch.randn((b, 3 * cfg["num_input_focus_segments"], size, size), generator=g, dtype=torch.float32)
    return fx, model.eval(), glance, video, info, manifest


@pytest.fixture(scope="module", params=fixtures())
def run(request, tmp_path_factory):
    path = require_fixture(request.param)
    fx, model, glance, video, info, manifest = load_fixture(path, tmp_path_factory.mktemp("tsm_parity"))
    with torch.no_grad():
        out = model(video, glance=glance)
    return fx, model, glance, video, out, info, manifest


def test_checkpoint_loads_with_every_key(run):
    fx, model, glance, video, out, info, manifest = run
    assert info.format == "official" and info.dropped_keys == []
    assert len(manifest) == len(model.state_dict())


def test_our_manifest_is_the_official_one(run):
    fx, model, glance, video, out, info, manifest = run
    assert [tuple(e) for e in official_manifest(model)] == [(k, list(s), d) for k, s, d in manifest]


def test_inputs_match_the_recipe(run):
    fx, model, glance, video, out, info, manifest = run
    for name, tensor in (("images_glance", glance), ("images_input", video)):
        recorded = fx["input_checksum"][name]
        assert list(tensor.shape) == list(recorded["shape"])
        assert tensor.double().sum().item() == pytest.approx(recorded["sum"], abs=1e-2)


def test_frame_indices_match_exactly(run):
    fx, model, glance, video, out, info, manifest = run
    assert torch.equal(out.glance_indices, fx["glance_indices"])
    assert torch.equal(out.focus_indices, fx["focus_indices"])


def test_temporal_policy_weights_and_spatial_actions(run):
    fx, model, glance, video, out, info, manifest = run
    torch.testing.assert_close(out.frame_weights, fx["weights"], **WEIGHTS)
    torch.testing.assert_close(out.selection_weights, fx["weights_T"], **WEIGHTS)
    torch.testing.assert_close(out.actions, fx["action"], **WEIGHTS)
    torch.testing.assert_close(out.actions, fx["action_3"], **WEIGHTS)


def test_glance_features_and_both_glance_heads(run):
    fx, model, glance, video, out, info, manifest = run
    torch.testing.assert_close(out.glance_features.flatten(0, 1), fx["global_feat"], **LOGITS)
    torch.testing.assert_close(out.glance_prediction, fx["global_final_logit"], **LOGITS)
    torch.testing.assert_close(out.glance_logits, fx["global_frame_logits_new_new_fc"], **LOGITS)
    torch.testing.assert_close(out.glance_logits.mean(dim=1), fx["global_avg_logit"], **LOGITS)


def test_spatial_auxiliary_logits(run):
    fx, model, glance, video, out, info, manifest = run
    torch.testing.assert_close(out.spatial_logits, fx["spatial_sample_logits_3"], **LOGITS)


def test_patches_given_the_official_action_are_bit_identical(run):
    fx, model, glance, video, out, info, manifest = run
    cfg = fx["config"]
    b, num_focus, size = cfg["batch_size"], cfg["num_focus_segments"], cfg["input_size"]
    frames = video.view(b, -1, 3, size, size)[torch.arange(b).unsqueeze(1), fx["focus_indices"]].flatten(0, 1)
    actions = fx["action"].unsqueeze(1).expand(b, num_focus, 4).reshape(-1, 4)
    patches = model.geometry.crop(frames, actions).view(b, num_focus * 3, model.patch_size, model.patch_size)
    assert torch.equal(patches, fx["patches"])


def test_focus_features_both_focus_heads_and_the_prediction(run):
    fx, model, glance, video, out, info, manifest = run
    torch.testing.assert_close(out.focus_features.flatten(0, 1), fx["local_feat"], **FOCUS_END_TO_END)
    torch.testing.assert_close(out.focus_prediction, fx["local_final_logit"], **FOCUS_END_TO_END)
    torch.testing.assert_close(out.focus_logits, fx["local_frame_logits_new_new_fc"], **FOCUS_END_TO_END)
    torch.testing.assert_close(out.logits, fx["outputs"]["prediction"], **FOCUS_END_TO_END)
    torch.testing.assert_close(out.stage_logits[:, 0], fx["global_avg_logit"], **LOGITS)


def test_focus_path_given_the_official_patches(run):
    """The shifted ResNet and both focus heads on the fixture's own patches, to rounding."""
    fx, model, glance, video, out, info, manifest = run
    b, num_focus = fx["patches"].shape[0], fx["config"]["num_focus_segments"]
    with torch.no_grad():
        feats = model.focus(fx["patches"].reshape(b * num_focus, 3, model.patch_size, model.patch_size))
        torch.testing.assert_close(feats, fx["local_feat"], atol=2e-4, rtol=1e-4)
        torch.testing.assert_close(model.focus_head(feats).view(b, num_focus, -1), fx["local_frame_logits_new_new_fc"],
                                   atol=2e-4, rtol=1e-4)


def test_temporal_monte_carlo_logits_from_the_recorded_draws(run):
    """The objective's Monte-Carlo logits (T1 = 2) rebuilt from the official multinomial draws."""
    fx, model, glance, video, out, info, manifest = run
    w, logits = out.frame_weights, fx["global_frame_logits_new_new_fc"]  # the live head's, detached
    i0 = (w.unsqueeze(-1) * logits).sum(dim=1)
    torch.testing.assert_close(i0, fx["temporal_sample_logits_i0_term"], **LOGITS)
    draws = fx["mc_multinomial_draws"][0].view(w.shape[0], -1)  # (B, 128): the frame dropped by each copy
    kept = torch.ones(*draws.shape, w.shape[1]).scatter_(2, draws.unsqueeze(-1), 0.0) * w.unsqueeze(1)
    z1 = (kept.unsqueeze(-1) * logits.unsqueeze(1)).sum(dim=2) / kept.sum(dim=2, keepdim=True)
    torch.testing.assert_close((i0 + z1.mean(dim=1)) / 2, fx["temporal_sample_logits"], **LOGITS)


def test_unit_cases_temporal_shift(run):
    fx = run[0]
    cases = {name: case for name, case in fx.get("unit_cases", {}).items() if name.startswith("temporal_shift")}
    if not cases:
        pytest.skip("this fixture records no temporal-shift unit case")
    for name, case in cases.items():
        assert torch.equal(temporal_shift(case["x"], case["n_segment"], case["fold_div"]), case["out"]), name


def test_unit_cases_frame_selection(run):
    fx = run[0]
    if not fx.get("unit_cases", {}).get("policy_sample_indices"):
        pytest.skip("this fixture records no frame-selection unit case")
    for case in fx["unit_cases"]["policy_sample_indices"]:
        weights = case["weights"]
        if case["rand_sample"]:
            torch.manual_seed(RAND_SAMPLE_SEED)  # the official call's only RNG use is one rand_like of (B, L)
        indices = frame_selection.select_focus_frames(weights, case["T0"], case["L"], random=case["rand_sample"])
        flat = (indices + case["T0"] * torch.arange(weights.shape[0]).unsqueeze(1)).flatten()
        assert torch.equal(flat, case["out"]), (case["T0"], case["G"], case["L"], case["rand_sample"])


# ------------------------------------------------------------------------------------------------
# The same checks through the inference copy (models.inference: the model's own glance and policy;
# the focus encoder's BatchNorm folded into the shifted convolutions too, channels-last, chunked focus
# calls in whole clips), which CPU evaluation runs by default, within the same tolerances.
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def inference_run(run):
    fx, model, glance, video, out, info, manifest = run
    fast = prepare_for_inference(model)
    with torch.no_grad():
        return fx, model, fast, fast(video, glance=glance)


def test_inference_copy_frames_weights_and_actions_match(inference_run):
    fx, model, fast, out = inference_run
    assert torch.equal(out.focus_indices, fx["focus_indices"])
    torch.testing.assert_close(out.frame_weights, fx["weights"], **WEIGHTS)
    torch.testing.assert_close(out.selection_weights, fx["weights_T"], **WEIGHTS)
    torch.testing.assert_close(out.actions, fx["action"], **WEIGHTS)


def test_inference_copy_logits_and_features_match(inference_run):
    fx, model, fast, out = inference_run
    torch.testing.assert_close(out.glance_features.flatten(0, 1), fx["global_feat"], **LOGITS)
    torch.testing.assert_close(out.glance_prediction, fx["global_final_logit"], **LOGITS)
    torch.testing.assert_close(out.glance_logits, fx["global_frame_logits_new_new_fc"], **LOGITS)
    torch.testing.assert_close(out.spatial_logits, fx["spatial_sample_logits_3"], **LOGITS)
    torch.testing.assert_close(out.focus_features.flatten(0, 1), fx["local_feat"], **FOCUS_END_TO_END)
    torch.testing.assert_close(out.focus_prediction, fx["local_final_logit"], **FOCUS_END_TO_END)
    torch.testing.assert_close(out.focus_logits, fx["local_frame_logits_new_new_fc"], **FOCUS_END_TO_END)
    torch.testing.assert_close(out.logits, fx["outputs"]["prediction"], **FOCUS_END_TO_END)
    torch.testing.assert_close(out.stage_logits[:, 0], fx["global_avg_logit"], **LOGITS)


def test_inference_copy_focus_path_given_the_official_patches(inference_run):
    fx, model, fast, out = inference_run
    b, num_focus = fx["patches"].shape[0], fx["config"]["num_focus_segments"]
    with torch.no_grad():
        feats = fast.focus(fx["patches"].reshape(b * num_focus, 3, model.patch_size, model.patch_size))
    torch.testing.assert_close(feats, fx["local_feat"], atol=2e-4, rtol=1e-4)


OFFICIAL_GFLOPS = {(96, 8): 8.824464128, (96, 12): 11.830215168, (128, 12): 18.836734464, (128, 16): 24.177991936}


@pytest.mark.parametrize("patch, focus", sorted(OFFICIAL_GFLOPS))
def test_flops_of_both_exits_are_the_official_table(patch, focus):
    stages = tsm_flops(UniAdaFocusTSM(num_classes=174, num_segments=3 * focus, num_focus_segments=focus,
                                      patch_size=patch)).stages()
    assert stages[0] == pytest.approx(2.399654144, rel=1e-2)
    assert stages[1] == pytest.approx(OFFICIAL_GFLOPS[(patch, focus)], rel=1e-2)
