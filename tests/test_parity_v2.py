"""AdaFocusV2 (ActivityNet / FCVID / Mini-Kinetics form) reproduces the official eval forward.

For every ``v2/parity_*.pt`` of the reference folder whose ``config['tree']`` is that form: the
configuration, manifest, checkpoint generator, seeds and glance architecture come from the file. The
synthetic checkpoint is built at test time (its digest checked), loaded through ``load_checkpoint``
(official layout, ``module.`` prefix), the input regenerated from ``input_seed`` (its checksum checked)
and the eval forward run as the fixture README's recipe says, with our own coarse-to-fine reordering.

Tolerances are the fixture README's (section 7). The focus side is compared stage by stage, tightly:
the crop given the recorded actions bit for bit, the focus encoder given those patches, the classifier
given the recorded features; end to end (where a 1e-5 change of an action moves a box on white-noise
frames) with the README's looser end-to-end tolerances. Fixtures of the Sth-Sth / Jester form skip.

Every ``v2/adafocus_v2_actnet_*_state_dict.json`` manifest is compared with ours, key for key in order,
for the configuration its shapes describe.
"""
from __future__ import annotations

import json
import math

import pytest
import torch

from models import get_variant
from models.adafocus_v2 import (OFFICIAL_KEYS, AdaFocusV2, coarse_to_fine_order, crop_fixed_patches,
                                official_glance_arch, official_manifest)
from ops.checkpoint import load_checkpoint
from ops.objective import UniAdaFocusObjective, step_cross_entropy, validation_loss
from ops.schedule import adjust_learning_rate, param_groups
from support import Capture, fixture_checkpoint, fixture_params, require_fixture

#: ``config['tree']`` of the fixtures of the form built here (the official folder name).
ACT_TREE = "Experiments on ActivityNet, FCVID and Mini-Kinetics"

GLANCE = dict(atol=5e-4, rtol=1e-4)
GLANCE_MAP = dict(atol=3e-3, rtol=0.0)
POLICY_INTERNALS = dict(atol=2e-3, rtol=0.0)
ACTIONS = dict(atol=1e-4, rtol=0.0)
PATCH_PIXELS = dict(atol=2e-2, rtol=0.0)
STAGE = dict(atol=1e-4, rtol=0.0)  # focus features given the patches, classifier given the features
END_TO_END_FEATURES = dict(atol=0.1, rtol=1e-2)
END_TO_END_LOGITS = dict(atol=5e-2, rtol=1e-2)
END_TO_END_PATCHES = dict(atol=5e-2, rtol=0.0)


def build_model(cfg) -> AdaFocusV2:
    """The model of a fixture's ``config`` (ACT form)."""
    return AdaFocusV2(num_classes=cfg["num_classes"], num_segments=cfg["num_segments"], patch_size=cfg["patch_size"],
                      input_size=cfg["input_size"], glance_arch=cfg["glance_arch"], glance_size=cfg.get("glance_size"),
                      stn_hidden_dim=cfg["stn_hidden_dim"], dropout=cfg["dropout"], fc_dropout=cfg["fc_dropout"],
                      sample=cfg["sample"])


def checksum(t: torch.Tensor) -> dict:
    """The fixture's checksum of a tensor: exactly rounded float64 sums, first and last 8 values, shape."""
    flat = t.detach().reshape(-1).double().tolist()
    return {"sum": math.fsum(flat), "abs_sum": math.fsum(abs(v) for v in flat), "sq_sum": math.fsum(v * v for v in flat),
            "first8": flat[:8], "last8": flat[-8:], "shape": list(t.shape)}


def assert_checksum_equal(t: torch.Tensor, recorded: dict, name: str):
    ours = checksum(t)
    for key in ("shape", "first8", "last8", "sum", "abs_sum", "sq_sum"):
        assert ours[key] == recorded[key], f"{name}: {key} {ours[key]} != recorded {recorded[key]}"


def regenerate_inputs(fx):
    """(raw clip (B, 3T, S, S) in loader order, target_full (B, 3)) from the fixture's recipe."""
    cfg = fx["config"]
    b, t, size = cfg["batch_size"], cfg["num_segments"], cfg["input_size"]
    g = torch.Generator().manual_seed(fx["input_seed"])
    raw = torch.randn((b, 3 * t, size, size), generator=g, dtype=torch.float32)
    labels = torch.randint(0, cfg["num_classes"], (3,), generator=g)
    target_full = torch.tensor([[labels[0], -1, -1], [labels[1], labels[2], -1]])
    return raw, target_full


@pytest.fixture(scope="module", params=fixture_params("parity_*.pt", "v2"))
def run(request, tmp_path_factory):
    path = require_fixture(request.param)
    fx = torch.load(path, weights_only=True)
    cfg = fx["config"]
    if cfg.get("tree") != ACT_TREE:
        pytest.skip("STH form: the adafocus_v2_tsm variant, tested by tests/test_parity_v2_sth.py")
    torch.set_num_threads(fx.get("num_threads", 1))
    model = build_model(cfg)
    ckpt_path, manifest = fixture_checkpoint(path, fx, tmp_path_factory.mktemp("v2_parity"))
    info = load_checkpoint(str(ckpt_path), model)
    model.eval()

    raw, target_full = regenerate_inputs(fx)
    capture = Capture({"glance": model.glance, "policy": model.policy.spatial})
    torch.manual_seed(fx["forward_seed"])
    rng_before = torch.get_rng_state()
    with torch.no_grad():
        out = model(raw)
    rng_untouched = torch.equal(rng_before, torch.get_rng_state())
    capture.remove()
    return dict(fx=fx, model=model, info=info, manifest=manifest, raw=raw, target_full=target_full, out=out,
                glance=capture.values["glance"], policy=capture.values["policy"], rng_untouched=rng_untouched)


def frames_in_model_order(run) -> torch.Tensor:
    """The fixture's clip as our model orders it: (B*T, 3, S, S)."""
    return run["model"].frames_in_model_order(run["raw"]).flatten(0, 1)


def test_checkpoint_loads_with_every_key(run):
    model, info, manifest = run["model"], run["info"], run["manifest"]
    assert info.format == "official"
    unused = sorted(k for k, _, _ in manifest if k.startswith(("global_CNN.classifier.", "global_CNN.fc.", "local_CNN.fc.")))
    assert sorted(info.dropped_keys) == unused
    assert len(model.state_dict()) == len(manifest) - len(unused)


def test_our_manifest_is_the_fixture_manifest(run):
    assert [tuple(e) for e in official_manifest(run["model"])] == [(k, list(s), d) for k, s, d in run["manifest"]]


def test_inputs_match_the_recipe(run):
    fx = run["fx"]
    assert_checksum_equal(run["raw"], fx["input_checksum"], "input")
    assert torch.equal(run["target_full"], fx["target_full"])
    assert torch.equal(run["target_full"][:, 0], fx["target"])


def test_coarse_to_fine_order_is_the_official_one(run):
    fx = run["fx"]
    for frames, order in fx["unit_cases"]["input_order_table"].items():
        assert coarse_to_fine_order(int(frames)) == list(order), f"T = {frames}"
    expected = fx["config"]["input_order"] if fx["config"]["sample"] else list(range(fx["config"]["num_segments"]))
    assert run["model"].frame_order.tolist() == expected
    assert run["out"].frame_order.tolist() == expected


def test_model_input_is_the_reordered_clip(run):
    fx = run["fx"]
    frames = frames_in_model_order(run)
    assert_checksum_equal(frames.reshape(fx["model_input_checksum"]["shape"]), fx["model_input_checksum"], "model input")
    glance_input = run["model"].glance_input(frames)
    assert_checksum_equal(glance_input, fx["glance_images_checksum"], "glance images")
    if "glance_images_frame0" in fx:
        t = fx["config"]["num_segments"]
        assert torch.equal(glance_input[::t], fx["glance_images_frame0"])


def test_eval_forward_draws_no_random_numbers(run):
    assert run["rng_untouched"] and run["fx"]["rng_untouched_by_eval_forward"]
    assert run["out"].random_pass is None


def test_glance_features_maps_and_logits(run):
    fx, out = run["fx"], run["out"]
    fmap, pooled = run["glance"]
    t = fx["config"]["num_segments"]
    torch.testing.assert_close(pooled, fx["global_feat"], **GLANCE)
    torch.testing.assert_close(out.glance_features.flatten(0, 1), fx["global_feat"], **GLANCE)
    torch.testing.assert_close(fmap[::t], fx["global_feat_map_frame0"], **GLANCE_MAP)
    assert list(fmap.shape) == fx["global_feat_map_checksum"]["shape"]
    assert fmap.double().sum().item() == pytest.approx(fx["global_feat_map_checksum"]["sum"], rel=1e-5)
    torch.testing.assert_close(out.glance_logits.flatten(0, 1), fx["outputs"]["global_logits"], **GLANCE)


def test_policy_encoder_gru_and_actions(run):
    fx, steps, out = run["fx"], run["policy"], run["out"]
    torch.testing.assert_close(steps.encoded.flatten(0, 1), fx["stn_encoder_out"], **POLICY_INTERNALS)
    torch.testing.assert_close(steps.outputs, fx["gru_out"], **POLICY_INTERNALS)
    torch.testing.assert_close(steps.state, fx["gru_h_n"], **POLICY_INTERNALS)
    torch.testing.assert_close(out.actions.flatten(0, 1), fx["actions"], **ACTIONS)


def test_patch_positions_in_pixels(run):
    fx, model, out = run["fx"], run["model"], run["out"]
    boxes = out.patch_boxes.flatten(0, 1)  # (B*T, 4) x1, y1, x2, y2
    top_left = boxes[:, [1, 0]]  # the fixture's [row, col]
    torch.testing.assert_close(top_left, fx["patch_top_left_px"], **PATCH_PIXELS)
    torch.testing.assert_close(top_left + model.patch_size / 2, fx["patch_centres_px"], **PATCH_PIXELS)
    torch.testing.assert_close(boxes[:, 2:] - boxes[:, :2], torch.full_like(top_left, float(model.patch_size)))


def test_crop_given_the_recorded_actions_is_bit_exact(run):
    fx, model = run["fx"], run["model"]
    patches = model.crop(frames_in_model_order(run), fx["actions"])  # (B*T, 3, P, P)
    assert_checksum_equal(patches, fx["patches_checksum"], "patches")
    t = fx["config"]["num_segments"]
    kept = patches.view(-1, t, *patches.shape[1:])[:, fx["patch_frames_kept"]]
    assert torch.equal(kept, fx["patches_kept"])


def test_crop_of_the_ramp_unit_case_is_bit_exact(run):
    case = run["fx"]["unit_cases"]["patch_ramp16_p6"]
    assert case["frames"].shape[-1] == case["image_size"]
    assert torch.equal(crop_fixed_patches(case["frames"], case["actions"], case["patch_size"]), case["output"])


def test_focus_encoder_given_the_recorded_patches(run):
    fx, model = run["fx"], run["model"]
    with torch.no_grad():
        patches = model.crop(frames_in_model_order(run), fx["actions"])
        local_feat = model.focus(patches)
        local_logits = model.focus_head(local_feat)
    torch.testing.assert_close(local_feat, fx["local_feat"], **STAGE)
    torch.testing.assert_close(local_logits, fx["outputs"]["local_logits"], **STAGE)


def test_classifier_given_the_recorded_features(run):
    fx, model = run["fx"], run["model"]
    b, t = fx["config"]["batch_size"], fx["config"]["num_segments"]
    features = torch.cat((fx["global_feat"], fx["local_feat"]), dim=1).view(b, t, -1)
    with torch.no_grad():
        mlp_out = model.classifier.mlp(features)
        running_max = model.classifier.states(features)
        logits = model.classifier.logits(running_max)
    torch.testing.assert_close(mlp_out.flatten(0, 1), fx["mlp_out"], **STAGE)
    torch.testing.assert_close(running_max, fx["classifier_running_max"], **STAGE)
    torch.testing.assert_close(logits, fx["classifier_frame_logits"], **STAGE)
    torch.testing.assert_close(logits.flatten(0, 1), fx["outputs"]["cat_logits"], **STAGE)


def test_end_to_end_focus_side_and_exits(run):
    fx, model, out = run["fx"], run["model"], run["out"]
    t = fx["config"]["num_segments"]
    with torch.no_grad():
        patches = model.crop(frames_in_model_order(run), out.actions.flatten(0, 1))
    kept = patches.view(-1, t, *patches.shape[1:])[:, fx["patch_frames_kept"]]
    torch.testing.assert_close(kept, fx["patches_kept"], **END_TO_END_PATCHES)
    torch.testing.assert_close(out.focus_features.flatten(0, 1), fx["local_feat"], **END_TO_END_FEATURES)
    torch.testing.assert_close(out.focus_logits.flatten(0, 1), fx["outputs"]["local_logits"], **END_TO_END_LOGITS)
    torch.testing.assert_close(out.exit_logits.flatten(0, 1), fx["outputs"]["cat_logits"], **END_TO_END_LOGITS)
    torch.testing.assert_close(out.logits, fx["outputs"]["cat_pred"], **END_TO_END_LOGITS)


def test_validation_loss_of_every_exit(run):
    fx, out = run["fx"], run["out"]
    t = fx["config"]["num_segments"]
    target = run["target_full"][:, 0]
    recorded = fx["outputs"]["cat_logits"].view(-1, t, fx["config"]["num_classes"])
    from_fixture = step_cross_entropy(recorded, target)  # what validation_loss computes, on the recorded exits
    torch.testing.assert_close(from_fixture, fx["eval_loss_all_exits"], atol=1e-4, rtol=0.0)
    torch.testing.assert_close(validation_loss(out, target), fx["eval_loss_all_exits"], atol=2e-2, rtol=0.0)


# --------------------------------------------------------------------------------------------------
# manifests
# --------------------------------------------------------------------------------------------------
def model_of_manifest(entries) -> AdaFocusV2:
    """The configuration an official (ACT) manifest's shapes describe: classes, frames (exit heads),
    policy width, classifier width and glance architecture. (The patch size changes no shape.)"""
    shapes = {k: s for k, s, _ in entries}
    num_exits = len({k.split(".")[2] for k in shapes if k.startswith("classifier.classifiers.")})
    return AdaFocusV2(num_classes=shapes["global_CNN_fc.1.weight"][0], num_segments=num_exits,
                      glance_arch=official_glance_arch(shapes), stn_hidden_dim=shapes["policy_stn.gru.weight_hh_l0"][1],
                      classifier_dim=shapes["classifier.mlp.layers.0.weight"][0],
                      sample=num_exits >= 3)


@pytest.mark.parametrize("manifest_path", fixture_params("adafocus_v2_actnet_*_state_dict.json", "v2"))
def test_our_manifest_equals_the_official_manifest(manifest_path):
    path = require_fixture(manifest_path)
    entries = json.loads(path.read_text())
    model = model_of_manifest(entries)
    assert [list(e) for e in official_manifest(model)] == [[k, list(s), d] for k, s, d in entries]


# --------------------------------------------------------------------------------------------------
# one training step (v2/train_loss_*.pt)
# --------------------------------------------------------------------------------------------------
#: The fixture's SGD groups (official names) and ours, in the official order.
OFFICIAL_GROUPS = {"policy_stn": "spatial_policy", "global_CNN": "glance", "global_CNN_fc": "glance_head",
                   "local_CNN": "focus", "local_CNN_fc": "focus_head", "pooling_classifier": "classifier"}
TRAIN_LOSS = dict(atol=5e-3, rtol=0.0)
RANDOM_PATH_TERMS = dict(atol=1e-4, rtol=0.0)
RANDOM_PATH_TENSORS = dict(atol=1e-3, rtol=1e-3)
BN_AFTER_STEP = dict(atol=1e-3, rtol=0.0)


def official_name(our_key: str, model: AdaFocusV2) -> str:
    return OFFICIAL_KEYS[model.glance_arch].to_official(our_key)


def training_step(path, run_name, folder):
    """One official training step of ``runs[run_name]`` of a ``train_loss_*.pt`` fixture, ours: the model of
    its configuration and dropout, the synthetic checkpoint, SGD over the family's groups at epoch 0's rate,
    ``torch.manual_seed(forward_seed)``, a training forward on the regenerated clip, the variant's objective,
    backward and one step."""
    fx = torch.load(path, weights_only=True)
    cfg, recorded = fx["config"], fx["runs"][run_name]
    torch.set_num_threads(fx.get("num_threads", 1))
    model = build_model({**cfg, "dropout": recorded["dropout"], "fc_dropout": recorded["fc_dropout"]})
    load_checkpoint(str(fixture_checkpoint(path, fx, folder)[0]), model)

    groups = param_groups(model, stn_lr_ratio=cfg["stn_lr_ratio"], global_lr_ratio=cfg["global_lr_ratio"],
                          classifier_lr_ratio=cfg["classifier_lr_ratio"])
    optimizer = torch.optim.SGD(groups, lr=cfg["lr"], momentum=cfg["momentum"], weight_decay=cfg["weight_decay"])
    adjust_learning_rate(optimizer, cfg["epoch"], cfg["lr"], cfg.get("epochs", 50), cfg["lr_type"],
                         weight_decay=cfg["weight_decay"])
    raw, target_full = regenerate_inputs(fx)
    target = target_full[:, 0]
    objective = UniAdaFocusObjective(cfg["num_segments"], cfg["num_segments"], cfg["num_segments"],
                                     terms=get_variant("adafocus_v2").objective_terms)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    model.train()
    torch.manual_seed(fx["forward_seed"])
    out = model(raw)
    out.actions.retain_grad()
    terms = objective(out, target)
    optimizer.zero_grad()
    terms.total.backward()
    grads = {k: None if p.grad is None else p.grad.detach().clone() for k, p in model.named_parameters()}
    optimizer.step()
    updates = {k: (p.detach() - before[k]).norm().item() for k, p in model.named_parameters()}
    return dict(fx=fx, recorded=recorded, model=model, out=out, terms=terms, target=target, grads=grads,
                updates=updates, optimizer=optimizer)


#: The fixture's two runs: without dropout (the random actions are the only draw), with the README's.
TRAIN_RUNS = ("no_dropout", "readme_dropout")


@pytest.fixture(scope="module", params=[pytest.param((p.values[0], r), id=f"{p.id}-{r}")
                                        for p in fixture_params("train_loss_*.pt", "v2") for r in TRAIN_RUNS])
def step(request, tmp_path_factory):
    path, run_name = request.param
    path = require_fixture(path)
    fx_config = torch.load(path, weights_only=True)["config"]
    if fx_config.get("tree") != ACT_TREE:
        pytest.skip("STH form: the adafocus_v2_tsm variant, tested by tests/test_parity_v2_sth.py")
    if run_name not in torch.load(path, weights_only=True)["runs"]:
        pytest.skip(f"{path.name} has no run {run_name}")
    return training_step(path, run_name, tmp_path_factory.mktemp("v2_train"))


def test_training_forward_random_actions_and_policy_actions(step):
    recorded, out = step["recorded"], step["out"]
    assert torch.equal(out.random_pass.actions.flatten(0, 1), recorded["random_actions"])
    assert torch.equal(recorded["paths"]["random_path"]["actions"], recorded["random_actions"])
    torch.testing.assert_close(out.actions.flatten(0, 1), recorded["policy_actions"], **ACTIONS)
    torch.testing.assert_close(out.glance_features.flatten(0, 1), recorded["global_feat"], **GLANCE)
    torch.testing.assert_close(out.glance_logits.flatten(0, 1), recorded["global_logits"], **GLANCE)


def test_training_loss_terms_of_both_paths(step):
    recorded, out, terms, target = step["recorded"], step["out"], step["terms"], step["target"]
    policy, random = recorded["loss_terms"]["policy_path"], recorded["loss_terms"]["random_path"]
    ce = step_cross_entropy
    torch.testing.assert_close(ce(out.cat_logits, target), policy["cat_logits"], **TRAIN_LOSS)
    torch.testing.assert_close(ce(out.focus_logits, target), policy["local_logits"], **TRAIN_LOSS)
    torch.testing.assert_close(ce(out.glance_logits, target), policy["global_logits"], **RANDOM_PATH_TERMS)
    torch.testing.assert_close(ce(out.glance_logits, target), random["global_logits"], **RANDOM_PATH_TERMS)
    torch.testing.assert_close(ce(out.random_pass.cat_logits, target), random["cat_logits"], **RANDOM_PATH_TERMS)
    torch.testing.assert_close(ce(out.random_pass.focus_logits, target), random["local_logits"], **RANDOM_PATH_TERMS)
    # total = ½ (loss_1 + loss_2), loss_i = CE(exits_i) + CE(glance) + CE(focus_i): terms cat + glance + focus
    torch.testing.assert_close(terms.total, recorded["loss"], **TRAIN_LOSS)
    torch.testing.assert_close(terms.cat, 0.5 * (policy["cat_logits"] + random["cat_logits"]), **TRAIN_LOSS)
    torch.testing.assert_close(terms.focus, 0.5 * (policy["local_logits"] + random["local_logits"]), **TRAIN_LOSS)
    assert float(terms.temporal) == float(terms.spatial) == float(terms.kl) == float(terms.norm) == 0.0


def test_training_random_path_tensors(step):
    recorded, out = step["recorded"], step["out"]
    path = recorded["paths"]["random_path"]
    torch.testing.assert_close(out.random_pass.focus_features.flatten(0, 1), path["local_feat"], **RANDOM_PATH_TENSORS)
    torch.testing.assert_close(out.random_pass.focus_logits.flatten(0, 1), path["local_logits"], **RANDOM_PATH_TENSORS)
    torch.testing.assert_close(out.random_pass.exit_logits.flatten(0, 1), path["cat_logits"], **RANDOM_PATH_TENSORS)


def test_training_gradient_norms_and_sgd_updates(step):
    recorded, model, grads, updates = step["recorded"], step["model"], step["grads"], step["updates"]
    skip = set(step["fx"]["grad_zero_in_exact_arithmetic"])
    noise = recorded["grad_norm_noise"]
    official_grads = {name: norm for name, norm in recorded["grad_norms"]}
    official_updates = {name: norm for name, norm in recorded["sgd_step"]["update_norms"]}
    checked = 0
    for key, grad in grads.items():
        name = official_name(key, model)
        if name in skip:
            continue
        rtol = max(10 * noise.get(name, 0.0), 1e-4)
        assert official_grads[name] is not None and grad is not None, name
        assert grad.norm().item() == pytest.approx(official_grads[name], rel=rtol, abs=1e-6), f"grad {name}"
        assert updates[key] == pytest.approx(official_updates[name], rel=rtol, abs=1e-8), f"update {name}"
        checked += 1
    ours = {official_name(k, model) for k in grads}
    assert all(norm is None for name, norm in official_grads.items() if name not in ours)  # the unused ImageNet heads
    assert checked == len(grads) - len(skip & ours)
    for name in ("global_CNN_fc.1.bias", "local_CNN_fc.1.bias", "classifier.classifiers.0.1.bias",
                 "classifier.classifiers.15.1.bias", "classifier.mlp.layers.1.weight"):
        key = OFFICIAL_KEYS[model.glance_arch].to_ours(name)
        torch.testing.assert_close(grads[key], recorded["grads"][name], atol=1e-4, rtol=1e-3)


def test_training_sgd_groups_and_rates(step):
    recorded, optimizer = step["recorded"], step["optimizer"]
    ours = {g["name"]: g for g in optimizer.param_groups}
    official = recorded["sgd_step"]["param_groups"]
    assert [OFFICIAL_GROUPS[g["name"]] for g in official] == [g["name"] for g in optimizer.param_groups]
    for group in official:
        mine = ours[OFFICIAL_GROUPS[group["name"]]]
        assert mine["lr"] == pytest.approx(group["lr"], rel=1e-12) and mine["weight_decay"] == group["weight_decay"]
        assert mine["momentum"] == group["momentum"] and mine["lr_mult"] == group["lr_mult"]


def test_training_batch_norm_statistics_after_the_step(step):
    recorded, model = step["recorded"], step["model"]
    keys = OFFICIAL_KEYS[model.glance_arch]
    modules = dict(model.named_modules())
    for name, stats in recorded["bn_after_step"].items():
        bn = modules[keys.to_ours(name + ".running_mean")[: -len(".running_mean")]]
        torch.testing.assert_close(bn.running_mean, stats["running_mean"], **BN_AFTER_STEP)
        torch.testing.assert_close(bn.running_var, stats["running_var"], **BN_AFTER_STEP)
    for name, count in recorded["bn_num_batches_tracked"].items():
        bn = modules[keys.to_ours(name + ".num_batches_tracked")[: -len(".num_batches_tracked")]]
        assert int(bn.num_batches_tracked) == int(count), name


@pytest.mark.parametrize("fixture_path", fixture_params("train_loss_*.pt", "v2"))
def test_crop_gradient_unit_case_is_exact(fixture_path):
    fx = torch.load(require_fixture(fixture_path), weights_only=True)
    case = fx["unit_cases"]["patch_grad"]
    actions = case["actions"].clone().requires_grad_(True)
    patches = crop_fixed_patches(case["frames"], actions, case["patch_size"])
    loss = (patches * case["weights"]).sum()
    loss.backward()
    assert case["frames"].shape[-1] == case["image_size"]
    assert torch.equal(patches.detach(), case["patches"])
    assert torch.equal(loss.detach(), case["loss"])
    assert torch.equal(actions.grad, case["actions_grad"])


def test_inference_copy_decides_as_the_model(run):
    """CPU evaluation's inference copy (models.inference) keeps the glance and the policy as trained: the
    same patch positions bit for bit; only the focus side is folded, to float rounding."""
    from models.inference import prepare_for_inference

    with torch.no_grad():
        fast = prepare_for_inference(run["model"])(run["raw"])
    plain = run["out"]
    assert torch.equal(fast.actions, plain.actions) and torch.equal(fast.patch_boxes, plain.patch_boxes)
    assert torch.equal(fast.glance_features, plain.glance_features)
    torch.testing.assert_close(fast.exit_logits, plain.exit_logits, atol=1e-4, rtol=1e-4)
