"""AdaFocus V1 (Something-Something form) reproduces the official evaluation forward.

For every ``v1/parity_*.pt`` of the reference folder whose ``tree`` is that form: the configuration,
manifest, checkpoint generator and seeds come from the file. The synthetic checkpoint is built at test time
(its digest checked), saved in the official V1 layout (the actor-critic in its own ``policy`` entry) and
loaded through ``load_checkpoint``; both frame sets are regenerated from ``input_seed`` (their checksums
checked) and the evaluation forward is run as the fixture README's recipe says, with the official
evaluation's random-box baseline drawn as it draws it after ``forward_seed``. Fixtures of the ActivityNet
form skip (tests/test_parity_v1.py runs them).

Tolerances are the fixture README's (section 6): exact on patch coordinates and patches; ``atol=1e-5`` on the
continuous action means; ``atol=rtol=1e-3`` on features and logits. Stage by stage too: the crop at the
recorded coordinates, the focus encoder on the recorded boxes, the classifier given the recorded features,
the consensus of the recorded logits.

Beyond the fixture: another checkpoint seed at another patch size builds from the same manifest, loads with
every key and runs; the manifests of other configurations (grid policy, other G, glance size and classes)
have consistent shapes and load back; FLOPs against the official figures; the variant's registration.
"""
from __future__ import annotations

import math
import re

import pytest
import torch

from models import VARIANTS, get_variant
from models.adafocus_v1_sth import (OFFICIAL_KEYS, STH_ACTION_DIMS, AdaFocusV1TSM, adafocus_v1_tsm_flops,
                                    official_manifest)
from models.adafocus_v1 import crop_integer_patches
from models.flops import count_gmacs
from ops.checkpoint import CheckpointError, checkpoint_num_classes, load_checkpoint
from ops.config import official_variant
from support import (Capture, fixture_checkpoint, fixture_generator, fixture_manifest_path, fixture_params,
                     load_generator, manifest_entries, reference_dir, require_fixture, require_reference)
from test_adafocus_v1 import HELPER_MOBILENET_224, HELPER_RESNET50, batchnorm_outputs
from test_parity_v1 import assert_checksum_equal

#: ``tree`` of the fixtures of the form built here (the official folder name).
STH_TREE = "Experiments on Something-Something V1&V2"

MEANS = dict(atol=1e-5, rtol=0.0)  # continuous action means
FEATURES = dict(atol=1e-3, rtol=1e-3)  # features, encodings, GRU states and logits


def build_model(cfg) -> AdaFocusV1TSM:
    """The model of a fixture's ``config`` (Something-Something form)."""
    assert (cfg["base_model"], cfg["is_shift"], cfg["shift_place"]) == ("resnet50", True, "blockres"), cfg
    assert cfg["feature_map_channels"] == 1280 and cfg["policy_conv"], cfg
    return AdaFocusV1TSM(num_classes=cfg["num_classes"], num_segments=cfg["num_segments_focuser"],
                         num_glance_segments=cfg["num_segments_glancer"], patch_size=cfg["patch_size"],
                         input_size=cfg["input_size"], glance_size=cfg["glance_size"],
                         ppo_continuous=cfg["ppo_continuous"], action_dim=cfg["action_dim"],
                         action_std=cfg["action_std"], actorcritic_with_bn=cfg["actorcritic_with_bn"],
                         hidden_state_dim=cfg["hidden_state_dim"], dropout=cfg["dropout"], shift_div=cfg["shift_div"])


def regenerate_inputs(fx):
    """(glance frames (B, 3G, S, S), focus frames (B, 3L, S, S)), already normalised, from ``input_seed``: one
    generator, the glance frames drawn first."""
    g = torch.Generator().manual_seed(fx["input_seed"])
    glance = torch.randn(fx["input_checksum_glancer"]["shape"], generator=g, dtype=torch.float32)
    return glance, torch.randn(fx["input_checksum_focuser"]["shape"], generator=g, dtype=torch.float32)


class CaptureAll(Capture):
    """Forward hooks recording every output of named submodules, in call order: ``values[name]`` is a list."""

    def _hook(self, name):
        def record(module, inputs, output):
            self.values.setdefault(name, []).append(output)
        return record


@pytest.fixture(scope="module", params=fixture_params("parity_*.pt", "v1"))
def run(request, tmp_path_factory):
    path = require_fixture(request.param)
    fx = torch.load(path, weights_only=True)
    if fx["tree"] != STH_TREE:
        pytest.skip(f"{path.name} is the ActivityNet form's fixture: tests/test_parity_v1.py tests it")
    if fx["config"]["video_div"] != 1:
        pytest.skip(f"{path.name} has video_div {fx['config']['video_div']}: only one policy step per video "
                    "(video_div 1, every official command's) is built")
    torch.set_num_threads(fx.get("num_threads", 1))
    model = build_model(fx["config"])
    ckpt_path, manifest = fixture_checkpoint(path, fx, tmp_path_factory.mktemp("v1_sth_parity"))
    info = load_checkpoint(str(ckpt_path), model)
    model.eval()

    glance, video = regenerate_inputs(fx)
    policy = model.policy.spatial
    hooked = {"glance": model.glance, "policy": policy, "focus": model.focus, "classifier": model.classifier,
              **{f"glance_stage_{n}": model.glance.features[int(n)] for n in fx["glance_stage_pooled"]},
              **{f"encoder_{i}": policy.state_encoder[i] for i in (0, 1, 2, 4, 5, 6)},
              **{f"focus_{name}": getattr(model.focus, name) for name in fx["local_stage_pooled"]}}
    capture = CaptureAll(hooked)
    torch.manual_seed(fx["forward_seed"])
    baseline_positions = model.official_baseline_positions(video.shape[0])
    rng_before = torch.get_rng_state()
    with torch.no_grad():
        out = model(video, glance=glance, baseline_positions=baseline_positions)
    rng_untouched = torch.equal(rng_before, torch.get_rng_state())
    capture.remove()
    return dict(fx=fx, path=path, model=model, info=info, manifest=manifest, glance=glance, video=video, out=out,
                captured=capture.values, rng_untouched=rng_untouched, baseline_positions=baseline_positions)


def per_frame(run, t: torch.Tensor) -> torch.Tensor:
    """(B*F, ...) rows in video-major order -> (B, F, ...)."""
    return t.reshape(run["out"].prediction.shape[0], -1, *t.shape[1:])


def test_checkpoint_loads_with_every_key(run):
    model, info, fx = run["model"], run["info"], run["fx"]
    generated = fixture_generator(run["path"], fx).make_state_dict(run["manifest"], fx["checkpoint_seed"])
    assert info.format == "official" and info.dropped_keys == []
    assert info.best_metric == 0.0 and set(info.extra) >= {"glancer", "focuser", "fc", "policy"}
    ours = model.state_dict()
    assert len(ours) == len(generated)
    for key, value in generated.items():  # the policy comes from the checkpoint's own ``policy`` entry
        assert torch.equal(ours[OFFICIAL_KEYS.to_ours(key)], value), key


def test_our_manifest_is_the_fixture_manifest(run):
    assert [tuple(e) for e in official_manifest(run["model"])] == [(k, list(s), d) for k, s, d in run["manifest"]]


def test_inputs_match_the_recipe(run):
    assert_checksum_equal(run["glance"], run["fx"]["input_checksum_glancer"], "glancer input")
    assert_checksum_equal(run["video"], run["fx"]["input_checksum_focuser"], "focuser input")


def test_the_forward_draws_nothing_and_the_baseline_replays_the_official_draws(run):
    """Ours acts by the mean without drawing; the official evaluation draws the Gaussian's noise (and discards
    the sample), then the random box: ``official_baseline_positions`` replays both."""
    fx, model, out = run["fx"], run["model"], run["out"]
    assert run["rng_untouched"]
    (random_index,) = fx["random_index_replayed"]
    assert torch.equal(run["baseline_positions"], random_index)
    assert torch.equal(out.baseline.corners, fx["baseline_patch_coords"][0])
    assert fx["config"]["ppo_continuous"] == model.ppo_continuous
    if model.ppo_continuous:  # the discarded draw: mean + std * eps, the Gaussian's scale the official one
        torch.manual_seed(fx["forward_seed"])
        eps = torch.empty(random_index.shape).normal_()
        assert torch.equal(eps, fx["mvn_eps_replayed"][0])
        dist = model.policy.spatial.distribution(out.actions)
        torch.testing.assert_close(dist.scale_tril, fx["mvn_scale_tril"], atol=0.0, rtol=0.0)
        torch.testing.assert_close(out.actions + model.policy.spatial.action_std * eps, fx["mvn_sample_discarded"][0],
                                   **MEANS)


def test_glance_stages_maps_and_logits(run):
    fx, captured, out = run["fx"], run["captured"], run["out"]
    for n, recorded in fx["glance_stage_pooled"].items():  # where a misplaced temporal shift would show first
        (stage,) = captured[f"glance_stage_{n}"]
        torch.testing.assert_close(per_frame(run, stage.mean(dim=(2, 3))), recorded, **FEATURES, msg=f"features.{n}")
    (glance,) = captured["glance"]
    torch.testing.assert_close(per_frame(run, glance[0]), fx["glance_feat_map"], **FEATURES)
    torch.testing.assert_close(out.glance_logits, fx["glance_logits"], **FEATURES)


def test_policy_state_encoder_gru_actor_and_action(run):
    fx, captured, out, model = run["fx"], run["captured"], run["out"], run["model"]
    (state,) = fx["policy_state_checksum"]  # the G maps stacked on the channels, frame-major
    stacked = per_frame(run, captured["glance"][0][0]).flatten(1, 2)
    assert list(stacked.shape) == state["shape"]
    assert math.fsum(stacked.double().reshape(-1).tolist()) == pytest.approx(state["sum"], rel=1e-5)
    torch.testing.assert_close(stacked.reshape(-1)[:8], state["first8"], **FEATURES)
    torch.testing.assert_close(stacked.reshape(-1)[-8:], state["last8"], **FEATURES)
    names = {0: "policy_encoder_0_conv", 1: "policy_encoder_1_bn", 2: "policy_encoder_2_relu",
             4: "policy_encoder_4_linear", 5: "policy_encoder_5_bn1d", 6: "policy_encoder_6_relu2"}
    for index, name in names.items():  # the fixture's leading axis is the step (one per video here)
        (value,) = captured[f"encoder_{index}"]
        torch.testing.assert_close(value.unsqueeze(0), fx[name], **FEATURES, msg=name)
    (steps,) = captured["policy"]
    torch.testing.assert_close(steps.hidden.transpose(0, 1), fx["policy_gru_hidden"], **FEATURES)
    torch.testing.assert_close(steps.logits.transpose(0, 1), fx["actor_logits"], **FEATURES)
    assert model.ppo_continuous, "the fixture's policy is the Gaussian one"
    torch.testing.assert_close(out.actions.unsqueeze(0), fx["action_mean"], **MEANS)
    torch.testing.assert_close(out.actions.unsqueeze(0), fx["actions"], **MEANS)


def test_patch_coordinates_and_patches(run):
    """One box per video on every focus frame; a recorded coordinate is 0.42 px from a floor boundary at the
    least (``patch_coord_min_margin``), so a mean error within the tolerance cannot move it."""
    fx, model, out = run["fx"], run["model"], run["out"]
    assert fx["patch_coord_min_margin"] * 1.0 > MEANS["atol"] * (model.input_size - model.patch_size)
    assert torch.equal(out.corners, fx["patch_coords"][0])
    assert torch.equal(model.corners_of(fx["actions"][0]), fx["patch_coords"][0])
    assert torch.equal(out.patch_boxes[:, 0, :2].flip(-1).long(), fx["patch_coords"][0])
    b, num_focus = out.focus_logits.shape[:2]
    frames = model.frames(run["video"], model.num_focus, "video")  # (B, L, 3, H, W)
    for coords, sums in (("patch_coords", "patch_sum"), ("baseline_patch_coords", "baseline_patch_sum")):
        patches = crop_integer_patches(frames.flatten(1, 2), fx[coords][0], model.patch_size)
        patches = patches.view(b, num_focus, 3, model.patch_size, model.patch_size)
        if coords == "patch_coords":
            assert torch.equal(patches[:, 0], fx["patches_frame0"])
        # every frame's patch: float64 sums agree to their rounding (one wrong pixel moves them by about 1)
        torch.testing.assert_close(patches.double().sum(dim=(2, 3, 4)), fx[sums][0], atol=1e-9, rtol=1e-12)


def test_focus_stages_features_and_logits(run):
    """The policy's box (the first focus pass), stage by stage: the shifted ResNet-50's stages, the pooled
    features, the classifier; then the focus side on the recorded coordinates and the classifier on the
    recorded features."""
    fx, captured, out, model = run["fx"], run["captured"], run["out"], run["model"]
    for name, recorded in fx["local_stage_pooled"].items():
        policy_pass = captured[f"focus_{name}"][0]
        torch.testing.assert_close(policy_pass.mean(dim=(2, 3)), recorded, **FEATURES, msg=name)
    torch.testing.assert_close(captured["focus"][0].unsqueeze(0), fx["local_feat"], **FEATURES)
    torch.testing.assert_close(out.focus_features.flatten(0, 1).unsqueeze(0), fx["local_feat"], **FEATURES)
    torch.testing.assert_close(out.focus_logits.flatten(0, 1).unsqueeze(0), fx["local_logits"], **FEATURES)
    video = model.frames(run["video"], model.num_focus, "video")
    with torch.no_grad():
        features, _ = model.focus_pass(video, fx["patch_coords"][0])
        logits = model.classifier(fx["local_feat"][0])
    torch.testing.assert_close(features.flatten(0, 1), fx["local_feat"][0], **FEATURES)
    torch.testing.assert_close(logits, fx["local_logits"][0], **FEATURES)


def test_baseline_pass_on_the_random_box(run):
    fx, captured, out = run["fx"], run["captured"], run["out"]
    assert len(captured["focus"]) == 2  # the policy's box, then the random one (official order)
    torch.testing.assert_close(captured["focus"][1].unsqueeze(0), fx["baseline_local_feat"], **FEATURES)
    torch.testing.assert_close(out.baseline.focus_logits.flatten(0, 1).unsqueeze(0), fx["baseline_local_logits"],
                               **FEATURES)
    torch.testing.assert_close(out.baseline.prediction, fx["outputs"]["baseline_logit"], **FEATURES)
    torch.testing.assert_close(out.baseline.prediction.unsqueeze(0), fx["baseline_logit_per_step"], **FEATURES)


def test_outputs_in_the_official_order_and_the_consensus(run):
    fx, out = run["fx"], run["out"]
    assert fx["output_order"] == ["pred", "baseline_logit"]
    torch.testing.assert_close(out.prediction, fx["outputs"]["pred"], **FEATURES)
    torch.testing.assert_close(out.prediction.unsqueeze(0), fx["pred_per_step"], **FEATURES)
    torch.testing.assert_close(out.logits, fx["outputs"]["pred"], **FEATURES)
    # the consensus of the recorded logits: mean over the glance frames plus mean over the focus frames
    consensus = fx["glance_logits"].mean(dim=1) + per_frame(run, fx["local_logits"][0]).mean(dim=1)
    torch.testing.assert_close(consensus, fx["outputs"]["pred"], **FEATURES)
    torch.testing.assert_close(out.glance_prediction + out.focus_prediction, out.prediction, atol=1e-5, rtol=0.0)


# --------------------------------------------------------------------------------------------------
# Beyond the fixture
# --------------------------------------------------------------------------------------------------
def sth_manifests() -> list:
    """The Something-Something form's manifests of the v1 reference folder (named by its parity fixtures)."""
    root = require_reference()
    found = []
    for path in sorted((root / "v1").glob("parity_*.pt")):
        fx = torch.load(path, weights_only=True)
        if fx["tree"] == STH_TREE:
            found.append((fixture_manifest_path(path, fx), fx["config"]))
    assert found, f"no Something-Something parity fixture in {root / 'v1'}"
    return found


def test_another_seed_and_patch_size_build_load_and_run(tmp_path):
    """The manifest is valid for every patch size: a checkpoint of another seed loads with every key into the
    model with another P and the forward runs (one box per video, inside the frame, the consensus)."""
    (manifest_path, cfg), *_ = sth_manifests()
    generator = load_generator(reference_dir() / "v1" / "make_parity_checkpoint_v1.py")
    manifest = generator.load_manifest(manifest_path)
    torch.save(generator.make_checkpoint(manifest, 3), tmp_path / "ckpt.pth.tar")
    patch_size = 176 if cfg["patch_size"] != 176 else 160
    model = build_model(dict(cfg, patch_size=patch_size))
    load_checkpoint(str(tmp_path / "ckpt.pth.tar"), model)
    state = generator.make_state_dict(manifest, 3)
    assert torch.equal(model.state_dict()["policy.spatial.actor.0.weight"], state["policy.actor.0.weight"])
    model.eval()
    g = torch.Generator().manual_seed(5)
    side = cfg["input_size"]
    glance = torch.randn(1, model.num_glance, 3, side, side, generator=g)
    video = torch.randn(1, model.num_focus, 3, side, side, generator=g)
    with torch.no_grad():
        out = model(video, glance=glance)
    assert out.prediction.shape == (1, cfg["num_classes"]) and torch.isfinite(out.prediction).all()
    assert ((out.actions > 0) & (out.actions < 1)).all()
    assert torch.equal(out.corners, torch.floor(out.actions * (side - patch_size)).long())
    assert (out.corners >= 0).all() and (out.corners <= side - patch_size).all()
    torch.testing.assert_close(out.prediction, out.glance_prediction + out.focus_prediction, atol=1e-5, rtol=0.0)


OTHER_CONFIGS = [
    dict(ppo_continuous=False, action_dim=16),  # the grid policy (official evaluate.yaml), a 4 x 4 grid
    dict(num_glance_segments=4, glance_size=160, hidden_state_dim=256),
    dict(num_classes=10, actorcritic_with_bn=False),
]


@pytest.mark.parametrize("overrides", OTHER_CONFIGS, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
def test_other_configurations_have_manifests_of_consistent_shapes(overrides, tmp_path):
    """The keys of the fixture's manifest (less or more BatchNorm) with every shape following from the
    configuration; a synthetic official checkpoint made from it loads back with every key."""
    (manifest_path, cfg), *_ = sth_manifests()
    reference = {k: s for k, s, _ in manifest_entries(manifest_path)}
    c = dict(num_classes=cfg["num_classes"], num_glance_segments=cfg["num_segments_glancer"],
             glance_size=cfg["glance_size"], hidden_state_dim=cfg["hidden_state_dim"], ppo_continuous=True,
             actorcritic_with_bn=True, action_dim=2)
    c.update(overrides)
    model = AdaFocusV1TSM(**c)  # action_dim: the grid policy's; the Gaussian policy's actor has 2 outputs
    entries = official_manifest(model)
    shapes = {k: s for k, s, _ in entries}
    side, hidden = math.ceil(c["glance_size"] / 32), c["hidden_state_dim"]
    expected = {
        "glancer.net.classifier.weight": [c["num_classes"], 1280],
        "classifier.weight": [c["num_classes"], 2048],
        "policy.state_encoder.0.weight": [64, 1280 * c["num_glance_segments"], 1, 1],
        "policy.actor.0.weight": [c["action_dim"], hidden],
        "policy.gru.weight_hh_l0": [3 * hidden, hidden],
    }
    with_bn = c["actorcritic_with_bn"] or not c["ppo_continuous"]  # the grid policy of this form always has it
    linear = "policy.state_encoder.4.weight" if with_bn else "policy.state_encoder.3.weight"
    expected[linear] = [hidden, 64 * side * side]
    for key, shape in expected.items():
        assert shapes[key] == shape, key
    backbone = [k for k in reference if not k.startswith(("policy.", "glancer.net.classifier.", "classifier."))]
    assert all(shapes[k] == reference[k] for k in backbone)  # C, G, the policy and the glance size change no other
    policy_keys = {k for k in shapes if k.startswith("policy.")}
    assert (policy_keys == {k for k in reference if k.startswith("policy.")}) == with_bn
    generator = load_generator(reference_dir() / "v1" / "make_parity_checkpoint_v1.py")
    ckpt = generator.make_checkpoint([[k, s, d] for k, s, d in entries], 1)
    assert official_variant(ckpt) == "adafocus_v1_tsm" and checkpoint_num_classes(ckpt) == c["num_classes"]
    torch.save(ckpt, tmp_path / "ckpt.pth.tar")
    info = load_checkpoint(str(tmp_path / "ckpt.pth.tar"), model)
    assert info.format == "official"
    assert torch.equal(model.state_dict()["policy.spatial.critic.0.weight"], ckpt["policy"]["critic.0.weight"])


def test_the_sth_manifests_are_detected_as_this_layout_alone():
    root = require_reference()
    paths = sorted(root.glob("*_state_dict.json")) + sorted(root.glob("*/*_state_dict.json"))
    sth = {path for path, _ in sth_manifests()}
    for path in paths:
        detected = [name for name, v in VARIANTS.items() if v.checkpoint.detect([k for k, _, _ in manifest_entries(path)])]
        if path in sth:
            assert detected == ["adafocus_v1_tsm"], path.name
        else:
            assert "adafocus_v1_tsm" not in detected, path.name


def test_a_checkpoint_without_the_policy_names_the_missing_keys(tmp_path):
    """An official stage-1 checkpoint has no ``policy`` entry yet: it does not make an evaluable model."""
    (manifest_path, cfg), *_ = sth_manifests()
    generator = load_generator(reference_dir() / "v1" / "make_parity_checkpoint_v1.py")
    ckpt = generator.make_checkpoint(generator.load_manifest(manifest_path), 0)
    policy_keys = [k for k, _, _ in manifest_entries(manifest_path) if k.startswith("policy.")]
    del ckpt["policy"]
    torch.save(ckpt, tmp_path / "stage1.pth.tar")
    missing = f"missing keys ({len(policy_keys)}): {OFFICIAL_KEYS.to_ours(policy_keys[0])}"
    with pytest.raises(CheckpointError, match=re.escape(missing)):
        load_checkpoint(str(tmp_path / "stage1.pth.tar"), build_model(cfg))


# --------------------------------------------------------------------------------------------------
# Small models: the forward's contract
# --------------------------------------------------------------------------------------------------
TINY = dict(num_classes=5, num_segments=4, num_glance_segments=4, patch_size=32, input_size=64, glance_size=64,
            hidden_state_dim=16)


def tiny(seed: int = 0, **overrides) -> AdaFocusV1TSM:
    """A small model with every parameter and BatchNorm statistic drawn at random, as the synthetic checkpoints
    are (He-normal weights, BatchNorm around the identity), so that different videos get different boxes."""
    torch.manual_seed(seed)
    model = AdaFocusV1TSM(**dict(TINY, **overrides))
    with torch.no_grad():
        for name, value in model.state_dict().items():
            if not value.is_floating_point():
                continue
            if value.dim() >= 2:
                value.copy_(torch.randn_like(value) * math.sqrt(2.0 / value[0].numel()))
            elif name.endswith("running_var"):
                value.copy_(torch.rand_like(value) + 0.5)
            elif name.endswith("weight"):
                value.copy_(1.0 + 0.1 * torch.randn_like(value))
            else:
                value.copy_(0.1 * torch.randn_like(value))
    return model.eval()


def test_the_grid_policy_takes_the_most_probable_position():
    model = tiny(ppo_continuous=False, action_dim=16)
    video = torch.randn(3, 4, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = model(video)
    assert torch.equal(out.action_indices, out.action_probs.argmax(dim=1))
    n = 4
    rows, cols = out.action_indices // n, out.action_indices % n
    assert torch.equal(out.actions, torch.stack((rows, cols), dim=1).float() / (n - 1))
    assert torch.equal(out.corners, torch.floor(out.actions * 32).long())
    with pytest.raises(ValueError, match=re.escape(f"action_dim must be one of {STH_ACTION_DIMS}")):
        AdaFocusV1TSM(**dict(TINY, ppo_continuous=False, action_dim=20))


def test_one_box_crops_every_focus_frame_and_both_layouts_and_uint8_agree():
    model = tiny()
    g = torch.Generator().manual_seed(2)
    video = torch.randint(0, 256, (2, 4, 3, 64, 64), generator=g, dtype=torch.uint8)
    glance = torch.randint(0, 256, (2, 4, 3, 64, 64), generator=g, dtype=torch.uint8)
    with torch.no_grad():
        out = model(video, glance=glance)
        flat = model(video.flatten(1, 2), glance=glance.flatten(1, 2))
        normalised = model(model.frames(video, 4, "video"), glance=model.frames(glance, 4, "glance"))
    assert torch.equal(out.prediction, flat.prediction) and torch.equal(out.prediction, normalised.prediction)
    assert out.patch_boxes.shape == (2, 4, 4) and torch.equal(out.patch_boxes[:, 0], out.patch_boxes[:, 3])
    with torch.no_grad():  # the focus side is the crop of the same box on each frame, then the classifier
        frames = model.frames(video, 4, "video")
        y, x = out.corners[1].tolist()
        features = model.focus(frames[1, :, :, y:y + 32, x:x + 32])
    torch.testing.assert_close(out.focus_features[1], features, atol=1e-5, rtol=0.0)
    assert not torch.equal(out.corners[0], out.corners[1])  # a decision per video


def test_without_glance_frames_evenly_spaced_focus_frames_stand_in():
    model = tiny(num_segments=8)
    video = torch.randn(1, 8, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        alone = model(video)
        given = model(video, glance=video[:, [0, 2, 4, 6]])
    assert torch.equal(alone.prediction, given.prediction)


def test_the_baseline_pass_and_the_reward():
    model = tiny()
    video = torch.randn(2, 4, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        out = model(video, baseline_positions=model.official_baseline_positions(2, torch.Generator().manual_seed(0)))
        same = model(video, baseline_positions=out.actions)
    assert out.baseline.positions.shape == (2, 2) and torch.equal(out.baseline.corners,
                                                                  torch.floor(out.baseline.positions * 32).long())
    torch.testing.assert_close(same.baseline.prediction, same.prediction, atol=1e-6, rtol=0.0)  # same box: reward 0
    assert torch.equal(same.rewards(torch.tensor([0, 3])), torch.zeros(2))
    labels = torch.tensor([1, 2])
    expected = out.prediction.softmax(1)[[0, 1], labels] - out.baseline.prediction.softmax(1)[[0, 1], labels]
    assert torch.equal(out.rewards(labels), expected)
    with pytest.raises(ValueError, match="baseline_positions"):
        model(video).rewards(labels)


def test_training_mode_and_bad_inputs_are_refused_in_one_line():
    model = tiny()
    with pytest.raises(RuntimeError, match="evaluation mode only"):
        model.train()(torch.zeros(1, 4, 3, 64, 64))
    model.eval()
    with pytest.raises(ValueError, match="video has 5 frames, the model expects 4"):
        model(torch.zeros(1, 5, 3, 64, 64))
    with pytest.raises(ValueError, match="glance frames are"):
        model(torch.zeros(1, 4, 3, 64, 64), glance=torch.zeros(1, 4, 3, 32, 32))
    with pytest.raises(ValueError, match="num_focus_segments"):
        AdaFocusV1TSM(**dict(TINY, num_focus_segments=6))


# --------------------------------------------------------------------------------------------------
# Registration and FLOPs
# --------------------------------------------------------------------------------------------------
def test_registered_with_its_hyper_parameters():
    """(Its evaluation through main.py and the refusal of its training: tests/test_v1_training.py.)"""
    variant = get_variant("adafocus_v1_tsm")
    assert variant.build is AdaFocusV1TSM and AdaFocusV1TSM.variant == "adafocus_v1_tsm"
    assert set(TINY) - {"num_classes"} <= set(variant.hyper_parameters)
    assert variant.datasets == ("something", "somethingv2") and variant.frame_source == "separate"
    variant.require_entry_points()  # main.py --evaluate runs it


#: The official per-video figure of the README configuration by the official helper's counting (SPEC §9):
#: 8 x MobileNetV2 at 224 px + 12 x ResNet-50 at 144 px + the policy step (about 42 M), P = 144.
POLICY_GMACS, VIDEO_GFLOPS_P144 = 42e-3, 23.97


def test_flops_of_the_step_match_the_official_figures():
    """The policy step is plain multiply-accumulates (within 1 % of the hand count). The backbones are MACs
    only here; the official helper (thop) also charges 4 per BatchNorm output element and counts C = 200
    heads, and with those added each frame and the video match it within 1 %."""
    model = AdaFocusV1TSM(num_classes=200, patch_size=144)
    flops = adafocus_v1_tsm_flops(model)
    assert get_variant("adafocus_v1_tsm").flops is adafocus_v1_tsm_flops
    assert (flops.num_glance, flops.num_focus) == (8, 12) and len(flops.stages()) == 1
    assert flops.policy == pytest.approx(POLICY_GMACS, rel=0.01)
    frame, patch = torch.zeros(model.num_glance, 3, 224, 224), torch.zeros(model.num_focus, 3, 144, 144)
    glance_bn = 4 * batchnorm_outputs(model.glance, frame) / model.num_glance
    focus_bn = 4 * batchnorm_outputs(model.focus, patch) / model.num_focus
    assert flops.glance_frame + flops.glance_head + glance_bn == pytest.approx(HELPER_MOBILENET_224, rel=0.01)
    assert flops.focus_patch + flops.focus_head + focus_bn == pytest.approx(HELPER_RESNET50[144], rel=0.01)
    assert flops.focus_patch == pytest.approx(count_gmacs(model.focus, patch) / model.num_focus)
    video = flops.stages()[-1] + model.num_glance * glance_bn + model.num_focus * focus_bn
    assert video == pytest.approx(VIDEO_GFLOPS_P144, rel=0.01)
