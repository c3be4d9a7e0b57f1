"""Uni-AdaFocus-X3D reproduces the official release's numbers for the same weights and input.

For every ``parity_*.pt`` in the ``x3d/`` folder of the reference directory: manifest, checkpoint
generator, seeds and configuration come from the file itself; the synthetic checkpoint is built at
test time and loaded through ``load_checkpoint`` (official X3D layout, ``module.`` prefix). Forward
fixtures run the recorded glance frames and focus candidates; three-crop fixtures slice the recorded
uint8 frames as the official GroupFullResSample does and evaluate every crop as its own video, then
average the raw logits per video (``ops.evaluation.average_views``). Tolerances (fixture README): logits
and pooled features ``atol=2e-3, rtol=1e-3``; maps and patches ``5e-3``; weights and actions
``1e-5``; indices exactly.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from models.inference import prepare_for_inference
from models.uni_adafocus_x3d import UniAdaFocusX3D, official_manifest, x3d_flops
from ops.checkpoint import load_checkpoint
from ops.evaluation import average_views
from support import fixture_checkpoint, fixture_params, require_fixture

LOGITS = dict(atol=2e-3, rtol=1e-3)
MAPS = dict(atol=5e-3, rtol=1e-3)
WEIGHTS = dict(atol=1e-5, rtol=1e-4)
MEAN, STD = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])


def fixtures():
    """One parameter per ``x3d/parity_*.pt`` of the reference folder (forward and three-crop fixtures)."""
    return fixture_params("parity_*.pt", "x3d")


def _model(fixture_path, fx, tmp_path):
    cfg = fx["config"]
    model = UniAdaFocusX3D(num_classes=cfg["num_classes"], num_segments=cfg["num_input_focus_segments"],
                           num_glance_segments=cfg["num_glance_segments"], num_focus_segments=cfg["num_focus_segments"],
                           patch_size=cfg["patch_size"], input_size=cfg["input_size"], glance_size=cfg["glance_size"],
                           stn_hidden_dim=cfg.get("stn_hidden_dim", 128), temporal_hidden_dim=cfg.get("temporal_hidden_dim", 64),
                           dropout=cfg.get("dropout", 0.5))
    path, manifest = fixture_checkpoint(fixture_path, fx, tmp_path)
    info = load_checkpoint(str(path), model)
    return model.eval(), manifest, info


def glance_input(fx):
    """A forward fixture's glance frames (B, 3G, S, S), drawn from ``glance_seed`` and scaled frame by frame
    where ``glance_frame_scale`` is a pair."""
    cfg, b = fx["config"], fx["config"]["batch_size"]
    g, size = cfg["num_glance_segments"], cfg["input_size"]
    glance = torch.randn((b, 3 * g, size, size), generator=torch.Generator().manual_seed(fx["glance_seed"]))
    if fx.get("glance_frame_scale") is not None:
        lo, hi = fx["glance_frame_scale"]
        glance = glance * torch.linspace(lo, hi, g).repeat_interleave(3).view(1, -1, 1, 1)
    return glance


def _forward_inputs(fx):
    cfg, b = fx["config"], fx["config"]["batch_size"]
    t0, size = cfg["num_input_focus_segments"], cfg["input_size"]
    video = torch.randn((b, 3 * t0, size, size), generator=torch.Generator().manual_seed(fx["input_seed"]))
    return glance_input(fx), video


def _three_crop_inputs(fx):
    """The official 3-crop evaluation input: each frame cut at the recorded offsets (left, right, centre),
    normalised; returns (glance (V, G, 3, 224, 224), video (V, T0, 3, 224, 224)), view c = crop c."""
    cfg = fx["config"]
    h, w = cfg["frame_hw"]
    g = torch.Generator().manual_seed(fx["frame_seed"])
    glance_u8 = torch.randint(0, 256, (cfg["num_glance_segments"], h, w, 3), generator=g, dtype=torch.uint8)
    focus_u8 = torch.randint(0, 256, (cfg["num_input_focus_segments"], h, w, 3), generator=g, dtype=torch.uint8)
    size = cfg["input_size"]

    def views(frames):
        out = []
        for x, y in fx["crop_offsets_xy"].tolist():
            crop = frames[:, y:y + size, x:x + size].permute(0, 3, 1, 2).float() / 255.0  # (T, 3, S, S)
            out.append((crop - MEAN.view(3, 1, 1)) / STD.view(3, 1, 1))
        return torch.stack(out)  # (V, T, 3, S, S)

    return views(glance_u8), views(focus_u8)


def _run(path, tmp_path_factory):
    path = require_fixture(path)
    fx = torch.load(path, weights_only=True)
    model, manifest, info = _model(path, fx, tmp_path_factory.mktemp("x3d_parity"))
    three_crop = "outputs_per_crop" in fx
    glance, video = _three_crop_inputs(fx) if three_crop else _forward_inputs(fx)
    with torch.no_grad():
        out = model(video, glance=glance)
    return fx, model, glance, video, out, info, manifest, three_crop


@pytest.fixture(scope="module", params=fixtures())
def run(request, tmp_path_factory):
    """Every fixture (forward and three-crop): (fx, model, glance, video, out, info, manifest, three_crop)."""
    return _run(request.param, tmp_path_factory)


@pytest.fixture
def forward_run(run):
    """The forward fixtures, which record the intermediates too (a three-crop fixture skips)."""
    if run[-1]:
        pytest.skip("a three-crop fixture: it records no forward intermediates")
    return run


@pytest.fixture
def crop_run(run):
    """The three-crop fixtures (a forward fixture skips)."""
    if not run[-1]:
        pytest.skip("a forward fixture: it records no per-crop outputs to average")
    return run


def test_checkpoint_loads_with_every_key(run):
    fx, model, glance, video, out, info, manifest, _ = run
    assert info.format == "official" and info.dropped_keys == [] and len(manifest) == len(model.state_dict())
    assert [tuple(e) for e in official_manifest(model)] == [(k, list(s), d) for k, s, d in manifest]


def test_inputs_match_the_recipe(run):
    fx, model, glance, video, out, info, manifest, three_crop = run
    keys = ("images_glance_checksum", "images_input_checksum") if three_crop else (
        "input_checksum_glance", "input_checksum_input")
    for tensor, key in zip((glance, video), keys):
        assert tensor.numel() == torch.Size(fx[key]["shape"]).numel()
        assert tensor.double().sum().item() == pytest.approx(fx[key]["sum"], rel=1e-7, abs=1e-2)


def _per_video(fx, name, three_crop):
    return fx["outputs_per_crop"][name] if three_crop else fx["outputs"][name]


def test_frame_indices_match_exactly(run):
    fx, model, glance, video, out, info, manifest, three_crop = run
    assert torch.equal(out.focus_indices, fx["focus_indices_per_crop"] if three_crop else fx["focus_indices"])


def test_temporal_weights_and_the_one_action_per_video(run):
    fx, model, glance, video, out, info, manifest, three_crop = run
    torch.testing.assert_close(out.frame_weights, fx["weights_per_crop"] if three_crop else fx["weights"], **WEIGHTS)
    torch.testing.assert_close(out.actions, _per_video(fx, "action", three_crop), **WEIGHTS)
    torch.testing.assert_close(out.actions, _per_video(fx, "action_3", three_crop), **WEIGHTS)


def test_every_head_and_the_prediction(run):
    fx, model, glance, video, out, info, manifest, three_crop = run
    torch.testing.assert_close(out.exit_logits[:, 0], _per_video(fx, "global_avg_logit", three_crop), **LOGITS)
    torch.testing.assert_close(out.focus_logits.mean(dim=1), _per_video(fx, "local_avg_logit", three_crop), **LOGITS)
    torch.testing.assert_close(out.spatial_logits, _per_video(fx, "spatial_sample_logits_3", three_crop), **LOGITS)
    torch.testing.assert_close(out.logits, _per_video(fx, "final_logits", three_crop), **LOGITS)


def test_glance_side_in_detail(forward_run):
    fx, model, glance, video, out, info, manifest, three_crop = forward_run
    b, g = out.glance_features.shape[:2]
    clip = F.interpolate(glance.view(b * g, 3, *glance.shape[-2:]), size=(model.glance_size,) * 2, mode="bilinear",
                         align_corners=False).view(b, g, 3, model.glance_size, model.glance_size)
    torch.testing.assert_close(clip[:, 0], fx["glance_clip_frame0"], atol=1e-6, rtol=0)
    torch.testing.assert_close(out.glance_prediction, fx["global_final_logit"], **LOGITS)
    torch.testing.assert_close(out.glance_features.flatten(0, 1), fx["global_feat"], **LOGITS)
    torch.testing.assert_close(out.glance_logits.flatten(0, 1), fx["global_logits"], **LOGITS)
    with torch.no_grad():
        maps, _, _ = model.glance_stage(glance.view(b, g, 3, *glance.shape[-2:]), (False, torch.float32))
        torch.testing.assert_close(maps.transpose(1, 2), fx["global_feat_maps"], **MAPS)
        crops = model.geometry.crop_features(maps.flatten(1, 2), fx["outputs"]["action"])  # round(5P/224) cells
    torch.testing.assert_close(crops, fx["aux_patches"], **MAPS)
    torch.testing.assert_close(crops.view(b, g, -1, *crops.shape[-2:]).mean(dim=(1, 3, 4)), fx["aux_global_feat_3"],
                               **LOGITS)


def test_focus_side_in_detail(forward_run):
    fx, model, glance, video, out, info, manifest, three_crop = forward_run
    torch.testing.assert_close(out.focus_prediction, fx["local_final_logit"], **LOGITS)
    torch.testing.assert_close(out.focus_features.flatten(0, 1), fx["local_feat"], **LOGITS)
    torch.testing.assert_close(out.focus_logits.flatten(0, 1), fx["local_logits"], **LOGITS)
    b, size = video.shape[0], model.input_size
    frames = video.view(b, -1, 3, size, size)[torch.arange(b).unsqueeze(1), fx["focus_indices"]]
    kept = frames[:, fx["patch_frames_kept"]].flatten(0, 1)  # (B*2, 3, S, S)
    actions = fx["outputs"]["action"].repeat_interleave(len(fx["patch_frames_kept"]), dim=0)
    patches = model.geometry.crop(kept, actions).view_as(fx["patches_kept"])
    assert torch.equal(patches, fx["patches_kept"])  # given the official action: bit for bit


def test_temporal_monte_carlo_deterministic_half(forward_run):
    fx, model, glance, video, out, info, manifest, three_crop = forward_run
    i0 = (out.frame_weights.unsqueeze(-1) * out.glance_logits).sum(dim=1)
    torch.testing.assert_close(i0, fx["temporal_sample_logits_i0_term"], **LOGITS)


def test_three_crops_average_raw_logits_per_video(crop_run):
    fx, model, glance, video, out, info, manifest, three_crop = crop_run
    views = len(fx["crop_offsets_xy"])
    averaged = average_views(out, views)
    torch.testing.assert_close(averaged.logits, fx["outputs_averaged"]["final_logits"], **LOGITS)
    torch.testing.assert_close(averaged.stage_logits, fx["early_exit_stage_logits"], **LOGITS)
    torch.testing.assert_close(averaged.focus_logits.mean(dim=1), fx["outputs_averaged"]["local_avg_logit"], **LOGITS)


# ------------------------------------------------------------------------------------------------
# The same checks through the inference copy (models.inference: the model's own glance and policy;
# X3D-L's BatchNorm3d folded into its 3-D convolutions, channels_last_3d, chunked focus calls in whole
# clips), which CPU evaluation runs by default, within the same tolerances.
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def inference_run(run):
    fx, model, glance, video, out, info, manifest, three_crop = run
    fast = prepare_for_inference(model)
    with torch.no_grad():
        return fx, fast, fast(video, glance=glance), three_crop


def test_inference_copy_frames_weights_and_actions_match(inference_run):
    fx, fast, out, three_crop = inference_run
    assert torch.equal(out.focus_indices, fx["focus_indices_per_crop"] if three_crop else fx["focus_indices"])
    torch.testing.assert_close(out.frame_weights, fx["weights_per_crop"] if three_crop else fx["weights"], **WEIGHTS)
    torch.testing.assert_close(out.actions, _per_video(fx, "action", three_crop), **WEIGHTS)


def test_inference_copy_every_head_and_the_prediction(inference_run):
    fx, fast, out, three_crop = inference_run
    torch.testing.assert_close(out.exit_logits[:, 0], _per_video(fx, "global_avg_logit", three_crop), **LOGITS)
    torch.testing.assert_close(out.focus_logits.mean(dim=1), _per_video(fx, "local_avg_logit", three_crop), **LOGITS)
    torch.testing.assert_close(out.spatial_logits, _per_video(fx, "spatial_sample_logits_3", three_crop), **LOGITS)
    torch.testing.assert_close(out.logits, _per_video(fx, "final_logits", three_crop), **LOGITS)
    if three_crop:
        averaged = average_views(out, len(fx["crop_offsets_xy"]))
        torch.testing.assert_close(averaged.logits, fx["outputs_averaged"]["final_logits"], **LOGITS)
        torch.testing.assert_close(averaged.stage_logits, fx["early_exit_stage_logits"], **LOGITS)
    else:
        torch.testing.assert_close(out.glance_features.flatten(0, 1), fx["global_feat"], **LOGITS)
        torch.testing.assert_close(out.focus_features.flatten(0, 1), fx["local_feat"], **LOGITS)
        torch.testing.assert_close(out.focus_prediction, fx["local_final_logit"], **LOGITS)


def test_flops_of_the_released_configuration_are_the_official_table():
    stages = x3d_flops(UniAdaFocusX3D(num_classes=400)).stages("official")
    assert stages[0] == pytest.approx(2.415453044, rel=1e-2)
    assert stages[1] == pytest.approx(8.777717208, rel=1e-2)
