"""The paper's ablation rows (configs/ablations/*.yaml) and the training-time ablation switches.

Every row file is loaded through the real parser with its base, trains one step and evaluates through
main.py on a tiny synthetic set; then one property test per alternative rule or switch.
"""
from __future__ import annotations

import json
import math
import re

import pytest
import torch

import main
from models import frame_selection, get_variant
from models.patches import GAUSSIAN_SPREAD, PatchGeometry, place_patches, size_patches
from ops import config, flags
from ops.objective import UniAdaFocusObjective
from support import REPO, TINY, random_video, tiny_model

ROWS = sorted((REPO / "configs" / "ablations").glob("*.yaml"))
#: The tiny synthetic run every row is put through (sizes override the row's preset, not its flags).
RUN = ["--dataset", "synthetic", "--num_segments", "8", "--num_glance_segments", "4", "--num_focus_segments", "4",
       "--input_size", "64", "--patch_size", "32", "--focus_arch", "resnet18", "--classifier_dim", "32",
       "--stn_hidden_dim", "16", "--temporal_hidden_dim", "8", "--no-pretrained", "--workers", "0", "--device", "cpu",
       "--no-tensorboard", "--num_visualised", "0", "--batch_size", "4", "--val_batch_size", "4", "--epochs", "1",
       "--print_freq", "1"]
SYNTHETIC = {"train_videos": 4, "val_videos": 4, "frames_per_video": 10, "frame_size": 64, "num_classes": 3}
#: What the tiny run overrides in a row's own flags.
RUN_OVERRIDES = {"epochs"}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    from datasets import synthetic

    root = tmp_path_factory.mktemp("ablation_rows") / "data"
    synthetic.ensure_generated(str(root), workers=1, **SYNTHETIC)
    return root


def test_the_tables_have_their_rows():
    names = {p.name for p in ROWS}
    for table, count in ((6, 4), (7, 4), (8, 2), (9, 15), (15, 5)):
        assert len([n for n in names if n.startswith(f"table{table}-")]) == count, table


@pytest.mark.parametrize("row", ROWS, ids=[p.stem for p in ROWS])
def test_row_file_has_the_header_and_only_its_flags(row):
    lines = row.read_text().splitlines()
    table = re.match(r"table(\d+)-", row.name).group(1)
    assert re.fullmatch(r"# Table (\d+): .+", lines[0]) and lines[0].startswith(f"# Table {table}: "), lines[0]
    assert lines[1].startswith("# paper: ") and "%" in lines[1]
    parser = flags.get_args_parser()
    own = config.load_config_file(str(row), parser, with_base=False)
    base = config.load_config_file(str(row), parser)
    assert (row.parent / re.search(r"^base: (.+)$", row.read_text(), re.M).group(1)).is_file()
    # nothing the row sets repeats its base's value: only the flags that make the row
    inherited = {k: v for k, v in base.items() if k not in own}
    assert set(base) == set(inherited) | set(own)


@pytest.mark.parametrize("row", ROWS, ids=[p.stem for p in ROWS])
def test_row_trains_a_step_and_evaluates(row, data_dir, tmp_path):
    argv = ["--config", str(row)] + RUN + ["--data_dir", str(data_dir), "--synthetic", json.dumps(SYNTHETIC),
                                           "--root_log", str(tmp_path), "--store_name", "run"]
    assert main.main(argv) == 0
    run = tmp_path / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["epochs_done"] == 1 and metrics["final"]["num_videos"] == SYNTHETIC["val_videos"]
    assert math.isfinite(metrics["final"]["loss"])
    import yaml

    saved = yaml.safe_load((run / "config.yaml").read_text())
    own = config.load_config_file(str(row), flags.get_args_parser(), with_base=False)
    for key, value in own.items():  # the row's flags reached the run
        if key not in RUN_OVERRIDES:
            assert saved[key] == value, key


# ------------------------------------------------------------------------------------------------
# The rules (models/patches.py, models/frame_selection.py)
# ------------------------------------------------------------------------------------------------
def _policy_actions(n=4000, seed=0):
    return torch.rand(n, 4, generator=torch.Generator().manual_seed(seed))


def _clamped_normal_moments(spread):
    """Mean and standard deviation of clamp(0.5 + spread * Z, 0, 1) for a standard normal Z."""
    c = 0.5 / spread
    phi = math.exp(-c * c / 2) / math.sqrt(2 * math.pi)
    inside = math.erf(c / math.sqrt(2))  # P(|Z| < c)
    second = inside - 2 * c * phi + c * c * (1 - inside)  # E[clamp(Z, -c, c)^2]
    return 0.5, spread * math.sqrt(second)


def test_central_patches_are_centred_and_keep_their_sizes():
    geometry = PatchGeometry(32, 64, 2)
    actions = _policy_actions(50)
    placed = place_patches(actions, "central")
    boxes = geometry.boxes(placed)
    torch.testing.assert_close((boxes[:, 0] + boxes[:, 2]) / 2, torch.full((50,), 32.0))
    torch.testing.assert_close((boxes[:, 1] + boxes[:, 3]) / 2, torch.full((50,), 32.0))
    assert torch.equal(placed[:, 2:], actions[:, 2:])


def test_random_patch_positions_are_uniform():
    placed = place_patches(_policy_actions(), "random", torch.Generator().manual_seed(1))
    pos = placed[:, :2]
    assert 0 <= pos.min() and pos.max() < 1
    assert abs(pos.mean().item() - 0.5) < 0.02 and abs(pos.std().item() - (1 / 12) ** 0.5) < 0.01


def test_gaussian_patch_positions_are_centred_with_the_stated_spread():
    placed = place_patches(_policy_actions(20000), "gaussian", torch.Generator().manual_seed(2))
    pos = placed[:, :2]
    mean, std = _clamped_normal_moments(GAUSSIAN_SPREAD)
    assert abs(pos.mean().item() - mean) < 0.01
    assert abs(pos.std().item() - std) < 0.005
    assert 0 <= pos.min() and pos.max() <= 1


@pytest.mark.parametrize("rule", ["fixed", "square", "random", "downsample"])
def test_patch_scale_rules(rule):
    geometry = PatchGeometry(32, 64, 2)
    actions = _policy_actions(500)
    sized = size_patches(actions, rule, geometry.native_scale, torch.Generator().manual_seed(3))
    assert torch.equal(sized[:, :2], actions[:, :2])
    boxes = geometry.boxes(sized)
    width, height = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    if rule == "fixed":  # P x P input pixels
        torch.testing.assert_close(width, torch.full_like(width, 32.0))
        torch.testing.assert_close(height, torch.full_like(height, 32.0))
    elif rule == "square":  # the policy's mean scale, both sides
        torch.testing.assert_close(width, height)
        torch.testing.assert_close(sized[:, 2], actions[:, 2:].mean(dim=1))
    elif rule == "random":
        assert abs(sized[:, 2:].mean().item() - 0.5) < 0.05 and not torch.equal(sized[:, 2], sized[:, 3])
    else:  # the whole frame
        torch.testing.assert_close(boxes, torch.tensor([0.0, 0.0, 64.0, 64.0]).expand(500, 4))


def test_downsampled_patch_is_the_whole_frame_resampled():
    geometry = PatchGeometry(32, 64, 2)
    frames = random_video(batch=1, frames=2, size=64)[0]  # (2, 3, 64, 64)
    actions = size_patches(_policy_actions(2), "downsample", geometry.native_scale)
    expected = torch.nn.functional.interpolate(frames, size=32, mode="bilinear", align_corners=False)
    torch.testing.assert_close(geometry.crop(frames, actions), expected, atol=1e-5, rtol=1e-5)


def test_uniform_frames_are_evenly_spaced():
    idx = frame_selection.uniform_frame_indices(3, 48, 16)
    assert idx.tolist() == [[1 + 3 * k for k in range(16)]] * 3
    idx = frame_selection.uniform_frame_indices(1, 10, 4)[0]
    assert idx.tolist() == [1, 3, 6, 8]  # floor((k + 0.5) * 10 / 4)


def test_random_frames_are_distinct_sorted_and_uniform():
    idx = frame_selection.random_frame_indices(4000, 12, 4, torch.Generator().manual_seed(4))
    assert (idx[:, 1:] > idx[:, :-1]).all()
    counts = torch.bincount(idx.flatten(), minlength=12).float() / idx.numel()
    assert (counts - 1 / 12).abs().max() < 0.01


def test_central_clip_is_the_middle_run():
    assert frame_selection.central_clip_indices(2, 48, 16).tolist() == [list(range(16, 32))] * 2
    assert frame_selection.central_clip_indices(1, 9, 4).tolist() == [[2, 3, 4, 5]]


def test_gaussian_frames_are_centred_and_distinct():
    idx = frame_selection.gaussian_frame_indices(4000, 48, 4, torch.Generator().manual_seed(5))
    assert (idx[:, 1:] > idx[:, :-1]).all()
    positions = (idx.float() + 0.5) / 48
    assert abs(positions.mean().item() - 0.5) < 0.01
    # the draws' spread (sorting and the distinct push barely move 4 of 48 frames)
    assert abs(positions.std().item() - _clamped_normal_moments(GAUSSIAN_SPREAD)[1]) < 0.02


def _motion_video(motion):
    """A video whose frame t differs from frame t - 1 by ``motion[t]`` grey levels everywhere (uint8)."""
    levels = torch.cumsum(torch.tensor(motion, dtype=torch.float32), 0) * 10
    return levels.to(torch.uint8).view(1, -1, 1, 1, 1).expand(1, len(motion), 3, 8, 8).contiguous()


def test_mg_sampler_takes_one_frame_per_equal_motion_part():
    # motion 16 in all, parts of 4 each: [frames 1 (1), 2 (3)], [frame 6 (4)], [8 (1), 9 (3)], [10 (1), 11 (3)]
    motion = [0, 1, 3, 0, 0, 0, 4, 0, 1, 3, 1, 3]
    video = _motion_video(motion)
    weights = frame_selection.motion_weights(video)
    torch.testing.assert_close(weights[0], torch.tensor(motion, dtype=torch.float32) / 16)
    # evaluation: where the cumulative motion crosses each part's middle (2, 6, 10, 14 of 16)
    assert frame_selection.mg_sampler_indices(video, 4).tolist() == [[2, 6, 9, 11]]
    # training: a random point of each part, so one frame of each part, every frame of a part in turn
    gen = torch.Generator().manual_seed(6)
    seen = torch.cat([frame_selection.mg_sampler_indices(video, 4, random=True, generator=gen) for _ in range(200)])
    parts = ({1, 2}, {6}, {8, 9}, {10, 11})
    for k, part in enumerate(parts):
        assert set(seen[:, k].tolist()) == part
    # a still video: uniform weights, evenly spaced frames
    still = _motion_video([0] * 12)
    assert frame_selection.mg_sampler_indices(still, 4).tolist() == frame_selection.uniform_frame_indices(1, 12, 4).tolist()


# ------------------------------------------------------------------------------------------------
# The switches in the model and the objective
# ------------------------------------------------------------------------------------------------
def _train_forward(**ablations):
    torch.manual_seed(0)
    model = tiny_model(**ablations).train()
    out = model(random_video(batch=2, dtype=torch.uint8), generator=torch.Generator().manual_seed(0))
    return model, out


def _objective():
    return UniAdaFocusObjective(TINY["num_segments"], TINY["num_glance_segments"], TINY["num_focus_segments"])


TARGET = torch.tensor([1, 3])


def _grads(loss, params):
    grads = torch.autograd.grad(loss, list(params), retain_graph=True, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for g, p in zip(grads, params)]


def _norm(grads):
    return sum(g.abs().sum() for g in grads).item()


def test_defaults_are_the_full_model_and_terms_match():
    _, full = _train_forward()
    _, same = _train_forward(aux_supervision=True, diversity_augmentation=True, policy_stop_gradient=True,
                             spatial_training="features", patch_scale="policy", size_regulariser=True,
                             patch_location="policy", frame_sampling="policy", reuse_glance_features=True,
                             spatial_supervision="glance", enlarged_patch_margin=0, seed=7)
    a, b = _objective()(full, TARGET, torch.Generator().manual_seed(0)), _objective()(same, TARGET, torch.Generator().manual_seed(0))
    assert a.as_floats() == b.as_floats()


def test_no_size_regulariser_removes_exactly_the_eq15_term():
    _, on = _train_forward()
    _, off = _train_forward(size_regulariser=False)
    a = _objective()(on, TARGET, torch.Generator().manual_seed(0))
    b = _objective()(off, TARGET, torch.Generator().manual_seed(0))
    assert a.norm.item() > 0 and b.norm.item() == 0
    for name in ("cat", "glance", "focus", "temporal", "spatial", "kl"):
        assert getattr(a, name).item() == getattr(b, name).item(), name
    torch.testing.assert_close(a.total - a.norm, b.total)


def test_no_aux_supervision_drops_the_heads_terms_only():
    _, off = _train_forward(aux_supervision=False)
    terms = _objective()(off, TARGET)
    assert terms.glance.item() == 0 and terms.focus.item() == 0
    assert terms.cat.item() > 0 and terms.temporal.item() > 0 and terms.spatial.item() > 0


def test_no_diversity_augmentation_is_one_pass():
    _, on = _train_forward()
    _, off = _train_forward(diversity_augmentation=False)
    assert off.random_pass is None and off.single_pass
    terms = _objective()(off, TARGET)
    ce = torch.nn.functional.cross_entropy
    torch.testing.assert_close(terms.cat, ce(off.exit_logits.flatten(0, 1), TARGET.repeat_interleave(off.exit_logits.shape[1])))
    torch.testing.assert_close(terms.focus, ce(off.focus_logits.flatten(0, 1), TARGET.repeat_interleave(4)))
    with pytest.raises(ValueError, match="training-mode forward"):  # an evaluation output is still refused
        model = tiny_model(diversity_augmentation=False).eval()
        _objective()(model(random_video(batch=2, dtype=torch.uint8)), TARGET)


def test_no_reuse_makes_the_classifier_independent_of_glance_features():
    for reuse in (True, False):
        _, out = _train_forward(reuse_glance_features=reuse)
        (grad,) = _grads(out.exit_logits.sum(), [out.glance_features])
        assert (grad.abs().sum().item() > 0) == reuse


def test_policy_stop_gradient_keeps_the_spatial_term_off_the_glance_encoder():
    for stop in (True, False):
        model, out = _train_forward(policy_stop_gradient=stop)
        spatial = _objective()(out, TARGET).spatial
        glance_params = list(model.glance.parameters())
        assert (_norm(_grads(spatial, glance_params)) > 0) == (not stop)


def _spatial_policy_grads(model, loss):
    return _norm(_grads(loss, list(model.policy.spatial.parameters())))


def test_pixel_training_reaches_the_policy_through_the_patches_and_features_through_eg_only():
    # pixels: the exits' cross-entropy (patch pixels -> focus encoder) trains the spatial policy; no spatial term
    model, out = _train_forward(spatial_training="pixels")
    terms = _objective()(out, TARGET)
    assert out.spatial_logits is None and terms.spatial.item() == 0
    assert _spatial_policy_grads(model, terms.cat) > 0
    # features: the patches carry no gradient to the policy; the spatial term (e^G crops) does
    model, out = _train_forward(spatial_training="features")
    terms = _objective()(out, TARGET)
    assert _spatial_policy_grads(model, terms.cat + terms.focus) == 0
    assert _spatial_policy_grads(model, terms.spatial) > 0


def test_local_supervision_trains_the_policy_through_el_of_enlarged_patches(monkeypatch):
    from models.backbones import FocusEncoder

    sizes = []
    real = FocusEncoder.feature_maps

    def spy(self, patches):
        sizes.append(patches.shape[-1])
        return real(self, patches)

    monkeypatch.setattr(FocusEncoder, "feature_maps", spy)
    model, out = _train_forward(spatial_supervision="local", enlarged_patch_margin=16)
    assert sizes == [32 + 16]  # training: (P + margin)^2 patches, both passes in one call
    assert out.spatial_frame_logits.shape == (2, TINY["num_focus_segments"], TINY["num_classes"])
    terms = _objective()(out, TARGET)
    assert _spatial_policy_grads(model, terms.spatial) > 0
    assert _norm(_grads(terms.spatial, list(model.focus.parameters()))) == 0  # e^L read, not trained, by it
    model.eval()
    with torch.no_grad():
        evaluated = model(random_video(batch=2, dtype=torch.uint8))
    assert evaluated.spatial_logits is None  # evaluation: P x P patches, no spatial term


def test_enlarged_margin_patches_are_centred_on_the_patch():
    geometry = PatchGeometry(32, 64, 2)
    frames = random_video(batch=1, frames=1, size=64)[0]
    actions = torch.tensor([[0.5, 0.4, 0.2, 0.3]])
    big = geometry.crop_enlarged(frames, actions, 32)  # the box grown twice about its centre, on 64 cells
    assert big.shape[-2:] == (64, 64)
    # the same sampling density as the P x P patch: its middle 32 x 32 cells are the patch itself
    torch.testing.assert_close(big[..., 16:48, 16:48], geometry.crop(frames, actions), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("rules", [dict(patch_location="random"), dict(patch_location="gaussian"),
                                   dict(patch_scale="random"), dict(frame_sampling="random"),
                                   dict(frame_sampling="gaussian")])
def test_random_rules_are_deterministic_in_evaluation_given_the_seed(rules):
    torch.manual_seed(0)
    model = tiny_model(seed=11, **rules).eval()
    video = random_video(batch=3, dtype=torch.uint8)
    with torch.no_grad():
        first = model(video)
        model.eval()
        again = model(video)
        model.seed = 12
        model.eval()
        other = model(video)
    assert torch.equal(first.focus_actions, again.focus_actions) and torch.equal(first.focus_indices, again.focus_indices)
    assert not (torch.equal(first.focus_actions, other.focus_actions) and torch.equal(first.focus_indices, other.focus_indices))


def test_rules_replace_the_policy_in_the_forward():
    model, out = _train_forward(patch_location="central", patch_scale="fixed", frame_sampling="central_clip")
    assert torch.equal(out.focus_indices, frame_selection.central_clip_indices(2, 8, 4))
    torch.testing.assert_close(out.glance_actions[..., :2], torch.full((2, 4, 2), 0.5))
    torch.testing.assert_close(out.glance_actions[..., 2:], torch.full((2, 4, 2), model.geometry.native_scale))


def test_mg_sampler_in_the_forward_decodes_every_candidate_first():
    torch.manual_seed(0)
    model = tiny_model(frame_sampling="mg_sampler").eval()
    video = _motion_video([0, 1, 3, 0, 0, 4, 0, 2]).expand(2, -1, -1, -1, -1)
    video = torch.nn.functional.interpolate(video.flatten(0, 1).float(), size=64).to(torch.uint8).view(2, 8, 3, 64, 64)
    asked = []
    with torch.no_grad():
        out = model(video, before_focus=lambda indices, rows: asked.append(indices.shape))
    assert asked[0] == (2, 8)  # every candidate, before the motion is read
    assert torch.equal(out.focus_indices, frame_selection.mg_sampler_indices(video, 4))


def test_flags_reach_the_model_and_other_variants_refuse_them(capsys):
    args = config.parse_args(["--no-pretrained", "--frame_sampling", "mg_sampler", "--no-size_regulariser",
                              "--patch_scale", "square", "--seed", "5"])
    model = get_variant(args.variant).build_from(args, 3)
    assert (model.ablations.frame_sampling, model.ablations.size_regulariser, model.ablations.patch_scale,
            model.seed) == ("mg_sampler", False, "square", 5)
    for flags in (["--variant", "tsm", "--patch_scale", "fixed"], ["--variant", "x3d", "--no-aux_supervision"]):
        with pytest.raises(SystemExit):
            config.parse_args(flags)
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "does not offer this ablation" in err and flags[1] in err
    with pytest.raises(SystemExit):
        config.parse_args(["--spatial_supervision", "local", "--spatial_training", "pixels"])
    assert "choose one" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["table15-adafocusv3", "table9-central-patches"])
def test_a_rows_checkpoint_evaluates_with_its_saved_rules(name, data_dir, tmp_path):
    """--evaluate --resume takes the row's rules (and the auxiliary head's width) from the checkpoint's
    saved configuration: the same metrics as the run's final evaluation."""
    row = REPO / "configs" / "ablations" / f"{name}.yaml"
    argv = ["--config", str(row)] + RUN + ["--data_dir", str(data_dir), "--synthetic", json.dumps(SYNTHETIC),
                                           "--root_log", str(tmp_path), "--store_name", "run"]
    assert main.main(argv) == 0
    final = json.loads((tmp_path / "run" / "metrics.json").read_text())["final"]
    assert main.main(["--evaluate", "--resume", str(tmp_path / "run" / "ckpt.pth.tar"), "--workers", "0",
                      "--device", "cpu", "--no-tensorboard", "--num_visualised", "0"]) == 0
    evaluated = json.loads((tmp_path / "run" / "metrics_eval.json").read_text())["metrics"]
    assert evaluated["metric"] == final["metric"] and evaluated["loss"] == pytest.approx(final["loss"], abs=1e-6)


@pytest.mark.parametrize("rules", [dict(frame_sampling="mg_sampler", reuse_glance_features=False),
                                   dict(patch_location="central", patch_scale="downsample",
                                        frame_sampling="central_clip")])
def test_the_adaptive_runtime_applies_the_rules_as_the_forward(rules):
    """Stage by stage (ops.early_exit.adaptive's path), deterministic rules give the full forward's stages (T_L
    of them without reuse of the glance features: no glance exit)."""
    torch.manual_seed(0)
    model = tiny_model(**rules).eval()
    video = random_video(batch=3, dtype=torch.uint8)
    with torch.no_grad():
        full = model(video).stage_logits
        steps = model.early_exit_steps(video, (False, torch.bfloat16))
        stages, everyone = [next(steps)], torch.arange(3)
        for _ in range(model.num_exit_stages - 1):
            stages.append(steps.send(everyone))
    assert model.num_exit_stages == TINY["num_focus_segments"] + model.exits_at_glance
    torch.testing.assert_close(torch.stack(stages, dim=1), full, atol=1e-5, rtol=1e-5)
