"""The adafocus_v2_tsm variant (AdaFocusV2, Something-Something / Jester form) on small configurations: its
data flow, its training forward, its checkpoint filter and detection, and the FLOPs of its exit against
the released configurations' GFLOPs."""
from __future__ import annotations

import argparse
import json
import sys

import pytest
import torch
import torch.nn.functional as F

from models import VARIANTS, get_variant
from models.adafocus_v2_sth import (OFFICIAL_KEYS, AdaFocusV2TSM, adafocus_v2_tsm_flops, detect_official,
                                    official_manifest)
from models.tsm import OFFICIAL_KEYS as TSM_KEYS
from models.inference import prepare_for_inference
from models.tsm import UniAdaFocusTSM
from ops.checkpoint import CheckpointError, load_checkpoint
from ops.config import official_variant
from ops.objective import UniAdaFocusObjective
from support import manifest_entries, reference_dir, require_reference
from test_main import SYNTHETIC, _main_args, _run, data_dir  # noqa: F401  (data_dir: the synthetic data fixture)

TINY = dict(num_classes=5, num_glance_segments=4, num_segments=6, patch_size=32, input_size=64, focus_arch="resnet18")


def tiny(**overrides) -> AdaFocusV2TSM:
    torch.manual_seed(0)
    return AdaFocusV2TSM(**{**TINY, **overrides})


def clips(batch=2, glance=4, focus=6, size=64, seed=1):
    """(focus clip (B, L, 3, S, S), glance clip (B, G, 3, S, S)) of normalised random frames."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, focus, 3, size, size, generator=g), torch.randn(batch, glance, 3, size, size, generator=g)


# --------------------------------------------------------------------------------------------------
# the network
# --------------------------------------------------------------------------------------------------
def test_focus_frames_default_to_one_and_a_half_glance_frames():
    assert tiny(num_segments=None, num_glance_segments=8).num_focus == 12
    assert tiny(num_segments=None, num_glance_segments=3).num_focus == 4
    assert tiny(num_segments=None, num_focus_segments=5).num_focus == 5
    with pytest.raises(ValueError, match=r"num_focus_segments \(5\) must equal num_segments \(6\)"):
        tiny(num_focus_segments=5)


def test_eval_forward_one_box_per_video_and_the_detached_prediction():
    model = tiny().eval()
    video, glance = clips()
    rng = torch.get_rng_state()
    with torch.no_grad():
        out = model(video, glance=glance)
        flat = model(video.flatten(1, 2), glance=glance.flatten(1, 2))  # the official (B, 3T, H, W) layout
    assert torch.equal(rng, torch.get_rng_state())  # evaluation draws nothing
    assert out.random_pass is None
    torch.testing.assert_close(flat.prediction, out.prediction, atol=0, rtol=0)
    assert out.prediction.shape == (2, 5) and out.glance_logits.shape == (2, 4, 5) and out.focus_logits.shape == (2, 6, 5)
    assert out.exit_logits.shape == out.stage_logits.shape == (2, 1, 5)
    torch.testing.assert_close(out.prediction, out.glance_prediction + out.focus_prediction, atol=0, rtol=0)
    torch.testing.assert_close(out.glance_prediction, model.glance_prediction_head(out.glance_features).mean(dim=1))
    torch.testing.assert_close(out.focus_reg_logits, model.focus_head(out.focus_features).mean(dim=1))
    boxes = out.patch_boxes  # (B, L, 4): the same box on every focus frame
    assert boxes.shape == (2, 6, 4) and torch.equal(boxes, boxes[:, :1].expand_as(boxes))
    torch.testing.assert_close(boxes[:, 0, [1, 0]], out.actions * (64 - 32))  # (a_row, a_col) -> (y1, x1)
    assert out.focus_indices.tolist() == [list(range(6))] * 2


def test_without_a_glance_clip_evenly_spaced_focus_frames_stand_in():
    model = tiny().eval()
    video, _ = clips()
    with torch.no_grad():
        torch.testing.assert_close(model(video).prediction, model(video, glance=video[:, [0, 1, 3, 4]]).prediction,
                                   atol=0, rtol=0)


def test_bad_inputs_are_one_clear_error():
    model = tiny().eval()
    video, glance = clips()
    with pytest.raises(ValueError, match="video has 5 frames, the model expects 6"):
        model(video[:, :5], glance=glance)
    with pytest.raises(ValueError, match="glance has 3 frames, the model expects 4"):
        model(video, glance=glance[:, :3])
    with pytest.raises(ValueError, match="input_size=64"):
        model(video[..., :32, :32], glance=glance)


def test_uint8_frames_are_normalised_as_imagenet_frames():
    model = tiny().eval()
    frames = torch.randint(0, 256, (2, 6, 3, 64, 64), dtype=torch.uint8)
    with torch.no_grad():
        ours = model(frames).prediction
        normalised = model(model.normalise(frames)).prediction
    torch.testing.assert_close(ours, normalised, atol=0, rtol=0)


def test_the_cpu_inference_copy_equals_the_plain_model_and_chunks_whole_clips():
    model = tiny().eval()
    video, glance = clips(batch=3)
    fast = prepare_for_inference(model, focus_chunk=8)  # 8 patches per call: one clip of L = 6 at a time
    calls = []
    fast.focus.register_forward_hook(lambda module, inputs, output: calls.append(inputs[0].shape[0]))
    with torch.no_grad():
        plain, copy = model(video, glance=glance), fast(video, glance=glance)
    assert calls == [6, 6, 6]
    torch.testing.assert_close(copy.prediction, plain.prediction, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(copy.actions, plain.actions, atol=0, rtol=0)  # the glance and policy are the model's


def test_training_forward_draws_in_the_official_order():
    """Glance feature dropout (B*G x 1280), then the random box torch.rand(B, 2), random pass first."""
    model = tiny(dropout=0.5).train()
    video, glance = clips()
    torch.manual_seed(3)
    out = model(video, glance=glance)
    torch.manual_seed(3)
    torch.empty(2 * 4, 1280).bernoulli_(0.5)
    assert torch.equal(out.random_pass.actions, torch.rand(2, 2))
    no_dropout = tiny(dropout=0.0).train()
    torch.manual_seed(3)
    out = no_dropout(video, glance=glance)
    torch.manual_seed(3)
    assert torch.equal(out.random_pass.actions, torch.rand(2, 2))  # without dropout the only draw
    out = no_dropout(video, glance=glance, generator=torch.Generator().manual_seed(9))
    assert torch.equal(out.random_pass.actions, torch.rand(2, 2, generator=torch.Generator().manual_seed(9)))


def test_random_pass_updates_the_focus_statistics_before_the_policy_pass():
    """The focus encoder runs once per pass (BatchNorm sees each pass alone), the random pass first."""
    model = tiny(dropout=0.0).train()
    video, glance = clips()
    bn = model.focus.bn1
    calls = []
    handle = bn.register_forward_hook(lambda module, inputs, output: calls.append(inputs[0].detach().clone()))
    out = model(video, glance=glance)
    handle.remove()
    assert len(calls) == 2 and int(bn.num_batches_tracked) == 2
    with torch.no_grad():
        first = model.focus.conv1(model.crop(video.flatten(1, 2), out.random_pass.actions).view(12, 3, 32, 32))
    torch.testing.assert_close(calls[0], first)


def test_gradients_follow_the_official_paths():
    model = tiny(dropout=0.0).train()
    video, glance = clips()
    out = model(video, glance=glance)
    out.actions.sum().backward()  # the policy reads detached maps
    assert all(p.grad is None for p in model.glance.parameters())
    assert model.policy.spatial.layers[10].weight.grad is not None
    model.zero_grad(set_to_none=True)
    out = model(video, glance=glance)
    out.prediction.sum().backward()  # the prediction heads read detached features: no encoder gradient
    assert all(p.grad is None for p in model.glance.parameters()) and all(p.grad is None for p in model.focus.parameters())
    assert model.glance_prediction_head.weight.grad is not None and model.focus_prediction_head.weight.grad is not None
    model.zero_grad(set_to_none=True)
    out = model(video, glance=glance)
    (out.glance_loss_logits.sum() + out.focus_loss_logits.sum()).backward()  # the live heads train the encoders
    assert model.glance.features[0][0].weight.grad.abs().sum() > 0 and model.focus.conv1.weight.grad.abs().sum() > 0
    assert model.policy.spatial.layers[10].weight.grad.abs().sum() > 0  # through the policy box's crop


# --------------------------------------------------------------------------------------------------
# registry, checkpoints, detection
# --------------------------------------------------------------------------------------------------
def test_registered_with_its_hyper_parameters():
    variant = get_variant("adafocus_v2_tsm")
    config = argparse.Namespace(**{k: v for k, v in TINY.items() if k != "num_classes"}, glance_arch="mbv2",
                                num_focus_segments=6)
    model = variant.build_from(config, num_classes=5)
    assert isinstance(model, AdaFocusV2TSM) and model.variant == "adafocus_v2_tsm"
    assert set(TINY) - {"num_classes"} <= set(variant.hyper_parameters)
    assert variant.frame_source == "separate" and variant.objective_terms == ("cat", "glance", "focus")
    assert variant.defaults["num_glance_segments"] == 8 and variant.defaults["num_segments"] == 12
    assert len(variant.flops(model).stages()) == 1


def official_state(model: AdaFocusV2TSM) -> dict:
    """Our model's weights in the official layout, with ``module.``."""
    return {"module." + OFFICIAL_KEYS.to_official(k): v.clone() for k, v in model.state_dict().items()}


def test_official_layout_loads_with_every_weight(tmp_path):
    source = tiny()
    state = official_state(source)
    assert sorted(k for k, _, _ in official_manifest(source)) == sorted(k[len("module."):] for k in state)
    assert "module.policy_stn.10.weight" in state and "module.global_CNN.base_model.features.3.conv.0.net.weight" in state
    path = tmp_path / "ckpt.pth.tar"
    torch.save({"epoch": 3, "arch": "resnet50", "state_dict": state, "optimizer": {}, "best_prec1": 1.0}, path)
    target = AdaFocusV2TSM(**TINY)
    info = load_checkpoint(str(path), target)
    assert info.format == "official" and info.dropped_keys == []
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key


def test_a_checkpoint_that_does_not_fit_names_every_bad_key(tmp_path):
    state = official_state(tiny())
    del state["module.policy_stn.8.running_var"]
    state["module.policy_stn.13.weight"] = torch.zeros(2, 2)
    state["module.local_CNN.new_fc.weight"] = torch.zeros(7, 512)
    path = tmp_path / "bad.pth.tar"
    torch.save({"state_dict": state}, path)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(str(path), tiny())
    message = str(err.value)
    assert "missing keys (1): policy.spatial.layers.8.running_var" in message
    assert "unexpected keys (1): policy.spatial.layers.13.weight" in message
    assert "mis-shaped: focus_prediction_head.weight: checkpoint (7, 512) vs model (5, 512)" in message


def test_keys_outside_the_official_layout_are_named(tmp_path):
    state = official_state(tiny())
    state["module.aux_fc.weight"] = torch.zeros(5, 1280)  # a Uni-AdaFocus-TSM module
    path = tmp_path / "odd.pth.tar"
    torch.save({"state_dict": state}, path)
    with pytest.raises(CheckpointError, match="keys not in the official AdaFocusV2 Sth-Sth/Jester layout: aux_fc.weight"):
        load_checkpoint(str(path), tiny())


def test_detection_does_not_collide_with_uni_adafocus_tsm():
    ours = [k[len("module."):] for k in official_state(tiny())]
    torch.manual_seed(0)
    tsm = UniAdaFocusTSM(5, num_segments=6, num_glance_segments=4, num_focus_segments=3, patch_size=32, input_size=64,
                         focus_arch="resnet18")
    theirs = [TSM_KEYS.to_official(k) for k in tsm.state_dict()]
    assert [name for name, v in VARIANTS.items() if v.checkpoint.detect(ours)] == ["adafocus_v2_tsm"]
    assert not detect_official(theirs) and get_variant("tsm").checkpoint.detect(theirs)
    assert official_variant({"state_dict": {"module." + k: torch.zeros(1) for k in ours}}) == "adafocus_v2_tsm"


def reference_manifests():
    """Every ``*_state_dict.json`` of the reference folder (all variants' official layouts)."""
    root = require_reference()
    return sorted(root.glob("*_state_dict.json")) + sorted(root.glob("*/*_state_dict.json"))


def is_sth_v2_manifest(path) -> bool:
    return path.parent.name == "v2" and "_sth" in path.name


def test_only_the_sth_manifests_are_detected_as_this_layout():
    paths = reference_manifests()
    sth = [p for p in paths if is_sth_v2_manifest(p)]
    assert sth, f"no AdaFocusV2 Sth-Sth manifest in {reference_dir() / 'v2'}"
    for path in paths:
        keys = [k for k, _, _ in manifest_entries(path)]
        detected = [name for name, v in VARIANTS.items() if v.checkpoint.detect(keys)]
        if is_sth_v2_manifest(path):
            assert detected == ["adafocus_v2_tsm"], path.name
        else:
            assert "adafocus_v2_tsm" not in detected, path.name


# --------------------------------------------------------------------------------------------------
# FLOPs
# --------------------------------------------------------------------------------------------------
#: The released Something-Something V1 configurations' GFLOPs (official README table; G = 8, L = 12, C = 174).
RELEASED_GFLOPS = {128: 18.5, 144: 23.5, 160: 27.5, 176: 33.7}


@pytest.mark.parametrize("patch_size", sorted(RELEASED_GFLOPS))
def test_the_exit_costs_the_released_gflops_within_one_percent(patch_size):
    model = AdaFocusV2TSM(num_classes=174, num_glance_segments=8, patch_size=patch_size)
    flops = adafocus_v2_tsm_flops(model)
    assert (flops.num_glance, flops.num_focus) == (8, 12)
    assert flops.stages()[-1] == pytest.approx(RELEASED_GFLOPS[patch_size], rel=0.01)
    assert flops.policy > 0 and flops.patch_crop > 0 and flops.glance_heads > 0


# --------------------------------------------------------------------------------------------------
# training objective and main.py
# --------------------------------------------------------------------------------------------------
def test_the_variant_objective_is_the_official_loss():
    """(loss_1 + loss_2) / 2, loss_i = CE(prediction_i) + CE(global_reg_logit) + CE(local_reg_logit_i), path 1
    the random box, path 2 the policy's (official main.py's training step)."""
    model = tiny(dropout=0.0).train()
    video, glance = clips()
    target = torch.tensor([1, 4])
    out = model(video, glance=glance, generator=torch.Generator().manual_seed(0))
    variant = get_variant("adafocus_v2_tsm")
    terms = UniAdaFocusObjective(6, 4, 6, terms=variant.objective_terms)(out, target)
    rand, policy = out.random_pass, out
    loss_1 = (F.cross_entropy(rand.prediction, target) + F.cross_entropy(out.glance_reg_logits, target)
              + F.cross_entropy(rand.focus_logits.mean(dim=1), target))
    loss_2 = (F.cross_entropy(policy.prediction, target) + F.cross_entropy(out.glance_reg_logits, target)
              + F.cross_entropy(policy.focus_reg_logits, target))
    torch.testing.assert_close(terms.total, (loss_1 + loss_2) / 2)
    assert float(terms.temporal) == float(terms.spatial) == float(terms.kl) == float(terms.norm) == 0.0
    terms.total.backward()  # the prediction reaches the heads only; the policy learns through the live focus head
    assert model.policy.spatial.layers[10].weight.grad.abs().sum() > 0


def test_main_trains_and_evaluates_a_tiny_adafocus_v2_tsm(data_dir, tmp_path):
    """``main.py --variant adafocus_v2_tsm`` on the synthetic data (glance clip sampled apart from the focus
    clip): the README's rates and clipping are the variant's defaults, the objective's cat / glance / focus
    terms are trained, its one exit costs its FLOPs, and ``--evaluate --resume`` reproduces the last
    validation."""
    root = tmp_path / "runs"
    sizes = ["--variant", "adafocus_v2_tsm", "--num_segments", "6", "--num_glance_segments", "4",
             "--num_focus_segments", "6"]
    _run([sys.executable] + _main_args(data_dir, root, *sizes, "--epochs", "1", "--iters_per_epoch", "2",
                                       "--batch_size", "4", "--store_name", "sth"))
    log = (root / "sth" / "log.txt").read_text()
    assert "epoch 0 [2/2]" in log and " cat " in log and " focus " in log and " glance " in log
    ckpt = torch.load(root / "sth" / "ckpt.pth.tar", weights_only=True)
    config = ckpt["config"]
    assert config["variant"] == "adafocus_v2_tsm" and (config["num_glance_segments"], config["num_segments"]) == (4, 6)
    assert (config["clip_gradient"], config["weight_decay"], config["stn_lr_ratio"], config["global_lr_ratio"]) == \
        (20.0, 5e-4, 0.01, 0.5)
    assert any(k.startswith("policy.spatial.layers.") for k in ckpt["model"])
    model = get_variant("adafocus_v2_tsm").build_from(argparse.Namespace(**config), num_classes=SYNTHETIC["num_classes"])
    model.load_state_dict(ckpt["model"])
    gflops = adafocus_v2_tsm_flops(model).stages()[-1]
    metrics = json.loads((root / "sth" / "metrics.json").read_text())
    assert metrics["gflops"] == pytest.approx(gflops)
    _run([sys.executable] + _main_args(data_dir, root, *sizes, "--evaluate", "--resume",
                                       str(root / "sth" / "ckpt.pth.tar"), "--store_name", "sth_eval"))
    evaluated = json.loads((root / "sth_eval" / "metrics_eval.json").read_text())
    assert evaluated["metrics"]["loss"] == pytest.approx(metrics["final"]["loss"], abs=1e-6)
    assert evaluated["metrics"]["prediction_top1"] == metrics["final"]["prediction_top1"]
