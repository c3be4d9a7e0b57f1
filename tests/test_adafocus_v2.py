"""The adafocus_v2 variant on small configurations: its parts, its training forward, its checkpoint filter
and the FLOPs of its exits (against the official per-frame table of every ``v2/early_exit_*.pt``)."""
from __future__ import annotations

import argparse
import json
import sys

import pytest
import torch
import torch.nn.functional as F

from models import VARIANTS, get_variant
from models.adafocus_v2 import (AdaFocusV2, OFFICIAL_KEYS, RunningMaxClassifier, adafocus_v2_flops, coarse_to_fine_order,
                                crop_fixed_patches, detect_official, official_manifest)
from ops.checkpoint import CheckpointError, load_checkpoint
from support import fixture_params, require_fixture
from test_main import SYNTHETIC, _main_args, _run, data_dir  # noqa: F401  (data_dir: the synthetic data fixture)

TINY_V2 = dict(num_classes=5, num_segments=4, patch_size=32, input_size=64, stn_hidden_dim=16, classifier_dim=32,
               focus_arch="resnet18", sample=True)


def tiny_v2(**overrides) -> AdaFocusV2:
    torch.manual_seed(0)
    return AdaFocusV2(**{**TINY_V2, **overrides})


def clip(batch=2, frames=4, size=64, seed=1):
    return torch.randn(batch, frames, 3, size, size, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------------------------------
# parts
# --------------------------------------------------------------------------------------------------
def test_coarse_to_fine_order_is_a_permutation_and_refuses_short_clips():
    assert coarse_to_fine_order(8) == [3, 0, 7, 1, 5, 2, 4, 6]
    for t in range(3, 70):
        assert sorted(coarse_to_fine_order(t)) == list(range(t))
    with pytest.raises(ValueError, match="at least 3 frames"):
        AdaFocusV2(**{**TINY_V2, "num_segments": 2})
    assert AdaFocusV2(**{**TINY_V2, "num_segments": 2, "sample": False}).frame_order.tolist() == [0, 1]


def test_the_model_sees_frames_in_the_coarse_to_fine_order():
    model = tiny_v2().eval()
    video = clip()
    reordered = model.frames_in_model_order(video)
    assert torch.equal(reordered, video[:, [1, 0, 3, 2]])
    assert torch.equal(model.frames_in_model_order(video.flatten(1, 2)), reordered)  # official (B, 3T, H, W)
    plain = tiny_v2(sample=False).eval()
    plain.load_state_dict(model.state_dict())
    with torch.no_grad():  # the same network on the reordered clip without reordering gives the same outputs
        torch.testing.assert_close(model(video).exit_logits, plain(reordered).exit_logits, atol=1e-6, rtol=0)


def test_bad_inputs_are_one_clear_error():
    model = tiny_v2().eval()
    with pytest.raises(ValueError, match="num_segments=4"):
        model(clip(frames=5))
    with pytest.raises(ValueError, match="input_size=64"):
        model(clip(size=32))
    with pytest.raises(ValueError, match="glance_arch"):
        AdaFocusV2(**{**TINY_V2, "glance_arch": "x3d"})


def test_fixed_crop_samples_the_box_at_its_offsets():
    """Integer offsets give the frame's pixels, half offsets the mean of two (up to theta's float32 rounding)."""
    frames = torch.arange(2 * 3 * 10 * 10, dtype=torch.float32).view(2, 3, 10, 10)
    actions = torch.tensor([[0.0, 1.0], [0.5, 0.25]])  # rows 0, cols 6; rows 3, cols 1.5
    patches = crop_fixed_patches(frames, actions, 4)
    torch.testing.assert_close(patches[0], frames[0, :, 0:4, 6:10], atol=1e-3, rtol=0)
    torch.testing.assert_close(patches[1], (frames[1, :, 3:7, 1:5] + frames[1, :, 3:7, 2:6]) / 2, atol=1e-3, rtol=0)


def test_running_max_exit_t_depends_only_on_frames_up_to_t():
    torch.manual_seed(0)
    classifier = RunningMaxClassifier(6, 8, 5, 3, dropout=0.0).eval()
    features = torch.randn(2, 5, 6)
    full = classifier(features)
    for t in range(1, 6):
        torch.testing.assert_close(classifier(features[:, :t]), full[:, :t])
    z = classifier.mlp(features)
    torch.testing.assert_close(classifier.states(features)[:, 2], z[:, :3].max(dim=1).values)


@pytest.mark.parametrize("glance_arch", ["mbv2", "resnet50"])
def test_adaptive_runtime_gives_the_full_pass_exits(glance_arch):
    """AdaptiveRunner drives the model frame by frame: every video's logits are the full pass's exit at its
    stage, the stage is the post-hoc decision's, and videos that left are not processed further."""
    from ops.early_exit import AdaptiveRunner, assign_exits, exit_scores

    model = tiny_v2(glance_arch=glance_arch, glance_size=32).eval()
    video = clip(batch=6)
    with torch.no_grad():
        exits = model(video).exit_logits  # (B, T, C)
    scores = exit_scores(exits, "confidence")  # (B, T)
    thresholds = torch.quantile(scores, 0.55, dim=0)  # between two scores: rounding cannot flip a decision
    thresholds[-1] = -1e8
    result = AdaptiveRunner(model, thresholds, criterion="confidence", flops=[1.0, 2.0, 3.0, 4.0]).run(video)
    expected = assign_exits(scores, thresholds)
    assert torch.equal(result.exit_stage, expected)
    assert 0 < int((expected < model.num_exit_stages - 1).sum()) < video.shape[0]
    torch.testing.assert_close(result.logits, exits[torch.arange(6), expected], rtol=1e-5, atol=1e-5)
    assert result.stage_batch_sizes == [int((expected >= k).sum()) for k in range(model.num_exit_stages)]
    assert result.gflops.tolist() == [float(k + 1) for k in expected.tolist()]
    read = []
    AdaptiveRunner(model, thresholds, criterion="confidence", flops=[1.0] * 4).run(
        video, before_focus=lambda indices, rows: read.append((indices[:, 0].tolist(), rows.tolist())))
    assert [frames for frames, _ in read] == [[int(model.frame_order[k])] * len(rows) for k, (_, rows) in enumerate(read)]
    assert [rows for _, rows in read] == [(expected >= k).nonzero()[:, 0].tolist() for k in range(len(read))]


def test_resnet_glance_sees_a_bilinear_align_corners_copy():
    model = tiny_v2(glance_arch="res50", glance_size=32).eval()
    assert model.glance_arch == "resnet50" and model.feature_size == 1
    frames = clip().flatten(0, 1)
    expected = F.interpolate(frames, size=(32, 32), mode="bilinear", align_corners=True)
    assert torch.equal(model.glance_input(frames), expected)
    fmap, pooled = model.glance(expected)
    assert fmap.shape == (8, 2048, 1, 1) and pooled.shape == (8, 2048)
    assert AdaFocusV2(**{**TINY_V2, "glance_arch": "resnet50"}).glance_size == 96  # the official size
    assert tiny_v2().glance_size == 64  # MobileNetV2 sees the full frame


def test_uint8_frames_are_normalised_as_imagenet_frames():
    model = tiny_v2().eval()
    video = torch.randint(0, 256, (2, 4, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(model(video).exit_logits, model((video.float() / 255 - mean) / std).exit_logits)


# --------------------------------------------------------------------------------------------------
# training forward
# --------------------------------------------------------------------------------------------------
def test_training_forward_draws_only_the_random_actions_without_dropout():
    model = tiny_v2(dropout=0.0, fc_dropout=0.0).train()
    torch.manual_seed(3)
    out = model(clip())
    torch.manual_seed(3)
    expected = torch.rand((2, 4, 2))
    assert out.random_pass is not None
    assert torch.equal(out.random_pass.actions, expected)
    assert out.random_pass.exit_logits.shape == out.exit_logits.shape == (2, 4, 5)


def test_training_loop_generator_draws_the_random_actions():
    model = tiny_v2(dropout=0.0, fc_dropout=0.0).train()
    out = model(clip(), generator=torch.Generator().manual_seed(9))
    assert torch.equal(out.random_pass.actions, torch.rand((2, 4, 2), generator=torch.Generator().manual_seed(9)))


def test_policy_reads_detached_maps_in_training():
    model = tiny_v2(dropout=0.0, fc_dropout=0.0).train()
    out = model(clip())
    out.actions.sum().backward()
    assert all(p.grad is None for p in model.glance.parameters())
    assert model.policy.spatial.fc[0].weight.grad is not None


def test_both_focus_passes_train_the_glance_encoder_through_the_classifier():
    model = tiny_v2(dropout=0.0, fc_dropout=0.0).train()
    out = model(clip())
    out.random_pass.exit_logits.sum().backward()
    assert model.glance.features[0][0].weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.policy.parameters())  # the random pass does not reach the policy


# --------------------------------------------------------------------------------------------------
# registry and checkpoints
# --------------------------------------------------------------------------------------------------
def test_registered_with_its_hyper_parameters():
    variant = get_variant("adafocus_v2")
    config = argparse.Namespace(**{k: v for k, v in TINY_V2.items() if k != "num_classes"}, glance_arch="mbv2")
    model = variant.build_from(config, num_classes=5)
    assert isinstance(model, AdaFocusV2) and model.variant == "adafocus_v2"
    assert set(TINY_V2) - {"num_classes"} <= set(variant.hyper_parameters)
    assert variant.defaults["sample"] is True and "res50" in variant.encoders["glance"]
    assert len(variant.flops(model).stages()) == model.num_segments


def official_state(model: AdaFocusV2) -> dict:
    """Our model's weights in the official layout, with the unused ImageNet heads and ``module.``."""
    keys = OFFICIAL_KEYS[model.glance_arch]
    state = {"module." + keys.to_official(k): v.clone() for k, v in model.state_dict().items()}
    for key, shape, _ in official_manifest(model):
        if "module." + key not in state:
            state["module." + key] = torch.zeros(shape)
    return state


@pytest.mark.parametrize("manifest", fixture_params("adafocus_v2_actnet_*_state_dict.json", "v2"))
def test_an_official_file_alone_names_the_variant(manifest, tmp_path):
    """A synthetic official checkpoint (the fixtures' generator, the release's {'state_dict'} layout) is
    recognised as adafocus_v2 and nothing else, so ``main.py --evaluate --resume FILE --dataset actnet``
    builds the variant, with its defaults, without --variant; the other variants' manifests are not
    taken for it."""
    from ops import config, flags
    from ops.config import official_variant
    from support import load_generator, manifest_entries, reference_dir

    manifest = require_fixture(manifest)
    keys = [k for k, _, _ in manifest_entries(manifest)]
    assert [name for name, v in VARIANTS.items() if v.checkpoint.detect(keys)] == ["adafocus_v2"]
    generator = load_generator(manifest.parent / "make_parity_checkpoint_v2.py")
    state = generator.make_checkpoint(generator.load_manifest(manifest), 0)["state_dict"]
    path = tmp_path / "actnet_p128.pth.tar"
    torch.save({"state_dict": state}, path)  # all that main_v2.py writes
    assert official_variant({"state_dict": state}) == "adafocus_v2"
    parser = flags.get_args_parser()  # what main.py does before anything else
    args = config.parse_args(["--evaluate", "--resume", str(path), "--dataset", "actnet", "--data_dir",
                              str(tmp_path / "data")], parser)
    config.adopt_checkpoint_config(args, parser)
    assert args.variant == "adafocus_v2"
    assert (args.num_segments, args.stn_hidden_dim, args.sample) == (16, 2048, True)  # the variant's defaults
    for other in sorted(reference_dir().glob("*_state_dict.json")) + sorted(reference_dir().glob("*/*_state_dict.json")):
        if other.parent.name != "v2" or "_actnet_" not in other.name:
            assert not detect_official([k for k, _, _ in manifest_entries(other)]), other.name


@pytest.mark.parametrize("glance_arch", ["mbv2", "res50"])
def test_official_layout_loads_with_every_weight(glance_arch, tmp_path):
    source = tiny_v2(glance_arch=glance_arch, glance_size=32)
    state = official_state(source)
    assert detect_official([k[len("module."):] for k in state])
    path = tmp_path / "ckpt.pth.tar"
    torch.save({"state_dict": state}, path)  # what the official main_v2.py writes
    target = AdaFocusV2(**{**TINY_V2, "glance_arch": glance_arch, "glance_size": 32})
    info = load_checkpoint(str(path), target)
    assert info.format == "official"
    assert sorted(info.dropped_keys) == sorted(k for k, _, _ in official_manifest(source)
                                               if k.startswith(("global_CNN.classifier.", "global_CNN.fc.", "local_CNN.fc.")))
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key


def test_a_checkpoint_that_does_not_fit_names_every_bad_key(tmp_path):
    state = official_state(tiny_v2())
    del state["module.policy_stn.gru.bias_hh_l0"]
    state["module.policy_stn.gru.weight_ih_l1"] = torch.zeros(48, 16)
    state["module.classifier.classifiers.3.1.weight"] = torch.zeros(7, 32)
    path = tmp_path / "bad.pth.tar"
    torch.save({"state_dict": state}, path)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(str(path), tiny_v2())
    message = str(err.value)
    assert "missing keys (1): policy.spatial.gru.bias_hh_l0" in message
    assert "unexpected keys (1): policy.spatial.gru.weight_ih_l1" in message
    assert "mis-shaped: classifier.exits.3.1.weight: checkpoint (7, 32) vs model (5, 32)" in message


def test_keys_outside_the_official_layout_are_named(tmp_path):
    state = official_state(tiny_v2())
    state["module.aux_fc.weight"] = torch.zeros(5, 1280)  # a Uni-AdaFocus module
    path = tmp_path / "odd.pth.tar"
    torch.save({"state_dict": state}, path)
    with pytest.raises(CheckpointError, match="keys not in the official AdaFocusV2 layout: aux_fc.weight"):
        load_checkpoint(str(path), tiny_v2())


# --------------------------------------------------------------------------------------------------
# FLOPs
# --------------------------------------------------------------------------------------------------
#: The released ActivityNet configurations' GFLOPs (official README table; 16 frames, C = 200).
RELEASED_GFLOPS = {("mbv2", 96): 17.6, ("mbv2", 128): 27.0, ("mbv2", 160): 39.0,
                   ("res50", 96): 24.8, ("res50", 128): 34.1, ("res50", 160): 46.1}


@pytest.mark.parametrize("fixture_path", fixture_params("early_exit_*.pt", "v2"))
def test_every_exit_costs_the_official_flops_within_one_percent(fixture_path):
    """Exit t (after t + 1 frames) costs (t + 1) x the official per-frame constant (the ``get_flops`` table
    stored in the file; P values the official table refuses are left out), and the last exit matches the
    README's GFLOPs of the released configurations."""
    fx = torch.load(require_fixture(fixture_path), weights_only=True)
    _, num_exits, num_classes = fx["inputs"]["val_logits"].shape
    checked = 0
    for key, per_frame in fx["get_flops_per_frame"].items():
        if not isinstance(per_frame, float):
            continue
        arch, patch = key.split("/")
        model = AdaFocusV2(num_classes=num_classes, num_segments=num_exits, patch_size=int(patch), glance_arch=arch,
                           stn_hidden_dim=2048, sample=True)
        stages = adafocus_v2_flops(model).stages()
        assert len(stages) == num_exits
        for t, gflops in enumerate(stages):
            assert gflops == pytest.approx((t + 1) * per_frame, rel=0.01), f"{key} exit {t}"
        if (arch, int(patch)) in RELEASED_GFLOPS:
            assert stages[-1] == pytest.approx(RELEASED_GFLOPS[arch, int(patch)], rel=0.01), key
        checked += 1
    assert checked >= len(RELEASED_GFLOPS)


# --------------------------------------------------------------------------------------------------
# main.py
# --------------------------------------------------------------------------------------------------
def test_main_trains_and_evaluates_a_tiny_adafocus_v2(data_dir, tmp_path):
    """``main.py --variant adafocus_v2`` on the synthetic data: the V2 objective's terms are trained (both
    patch passes), every frame is an exit with its FLOPs, and ``--evaluate --resume`` reproduces the run's
    last validation."""
    root = tmp_path / "runs"
    _run([sys.executable] + _main_args(data_dir, root, "--variant", "adafocus_v2", "--epochs", "1", "--iters_per_epoch",
                                       "2", "--batch_size", "4", "--store_name", "v2"))
    log = (root / "v2" / "log.txt").read_text()
    assert "epoch 0 [2/2]" in log and " cat " in log and " focus " in log and " glance " in log
    ckpt = torch.load(root / "v2" / "ckpt.pth.tar", weights_only=True)
    assert ckpt["config"]["variant"] == "adafocus_v2" and ckpt["config"]["sample"] is True
    assert any(k.startswith("policy.spatial.gru.") for k in ckpt["model"])
    model = get_variant("adafocus_v2").build_from(argparse.Namespace(**ckpt["config"]), num_classes=SYNTHETIC["num_classes"])
    model.load_state_dict(ckpt["model"])
    stages = adafocus_v2_flops(model).stages()
    assert len(stages) == ckpt["config"]["num_segments"]
    metrics = json.loads((root / "v2" / "metrics.json").read_text())
    assert metrics["gflops"] == pytest.approx(stages[-1])  # the cost of the last exit: every frame
    # no --variant: the checkpoint's saved configuration names it
    _run([sys.executable] + _main_args(data_dir, root, "--evaluate", "--resume",
                                       str(root / "v2" / "ckpt.pth.tar"), "--store_name", "v2_eval"))
    evaluated = json.loads((root / "v2_eval" / "metrics_eval.json").read_text())
    assert evaluated["metrics"]["loss"] == pytest.approx(metrics["final"]["loss"], abs=1e-6)
    assert evaluated["metrics"]["prediction_top1"] == metrics["final"]["prediction_top1"]
    assert evaluated["gflops"] == pytest.approx(stages[-1])
    # test_early_exit.py on the run's checkpoint: V2's sweep (35 budgets over its T exits, no random baseline)
    early = _main_args(data_dir, root, "--evaluate", "--resume", str(root / "v2" / "ckpt.pth.tar"), "--store_name",
                       "v2_exit", "--criterion", "confidence", "--threshold_set", "val")
    _run([sys.executable, "test_early_exit.py"] + early[1:])
    sweep = json.loads((root / "v2_exit" / "early_exit" / "confidence.json").read_text())
    assert (sweep["num_stages"], len(sweep["points"]), sweep["first_power"], sweep["seed"]) == (
        ckpt["config"]["num_segments"], 35, 1, None)
    assert [pt["p"] for pt in sweep["points"]] == [float(p) for p in range(5, 40)]
    assert sweep["flops"] == pytest.approx(stages)
