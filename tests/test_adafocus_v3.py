"""AdaFocusV3 (``adafocus_v3``, models/adafocus_v3.py): both gradient estimators of the cube centres, learning,
adaptive inference without repeated frames, the shapes of every stage, FLOPs per stage, and main.py /
test_early_exit.py on a tiny configuration. One property per test; tiny random-init models on the CPU."""
from __future__ import annotations

import argparse
import json
import sys

import pytest
import torch

from models import get_variant
from models.adafocus_v3 import FOCUS_STRIDE
from models.adafocus_v3_cubes import inference_windows
from models.adafocus_v3_flops import adafocus_v3_flops
from models.adafocus_v3_objective import AdaFocusV3Objective
from ops import build, config
from ops.early_exit import AdaptiveRunner
from ops.schedule import adjust_learning_rate
from test_main import SYNTHETIC, _main_args, _run, data_dir  # noqa: F401  (data_dir: the synthetic data fixture)

NUM_CLASSES = 3
#: 64-px frames, 32-px cubes (one 2 x 2 feature map enlarged), ResNet-18 focus, small policy and classifier.
TINY = dict(num_classes=NUM_CLASSES, num_segments=4, num_focus_segments=3, patch_size=32, input_size=64,
            focus_arch="resnet18", stn_hidden_dim=8, classifier_dim=16, dropout=0.0)


def _model(**overrides):
    torch.manual_seed(0)
    return get_variant("adafocus_v3").build(**{**TINY, **overrides})


def _video(model, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, model.num_segments, 3, model.input_size, model.input_size, generator=g,
                       dtype=next(model.parameters()).dtype)


def _centres(batch, cubes, seed=1, dtype=torch.float64):
    """Cube centres away from the interpolation nodes (so that finite differences stay inside one linear piece)."""
    g = torch.Generator().manual_seed(seed)
    return (0.15 + 0.7 * torch.rand(batch, cubes, 3, generator=g, dtype=dtype)).requires_grad_(True)


def _loss(model, glance_pooled, cube_features, target):
    out = argparse.Namespace(stage_logits=model.exits(glance_pooled, cube_features))
    return AdaFocusV3Objective()(out, target).total


# --------------------------------------------------------------------------------------------------
# gradient estimators
# --------------------------------------------------------------------------------------------------
def test_feature_gradient_equals_finite_differences_through_the_enlarged_cube_features():
    """Eqs. 5-6: the centres' gradient of the training loss is the derivative of the loss in the position where
    the enlarged cube's feature map is read (moved by span / stride cells per unit of x and y, T - T' frames per
    unit of z), with the enlarged map itself fixed: nothing reaches the centres through the pixels."""
    model = _model(v3_gradient="feature", cube_frames=2, num_segments=5, num_focus_segments=2).double().train()
    video, target = _video(model), torch.tensor([0, 2])
    with torch.no_grad():
        _, glance_pooled = model.glance_step(video)
    centres = _centres(2, 2)
    _loss(model, glance_pooled, model.train_cube_features(video, centres), target).backward()

    x1, y1, start = (v.detach().reshape(-1) for v in model.corners(centres))
    rows = torch.arange(2).repeat_interleave(2)
    with torch.no_grad():
        maps, offset = model.enlarged_maps(video, rows, x1, y1, start)
    span = model.input_size - model.patch_size
    cells_per_unit = {0: span / FOCUS_STRIDE, 1: span / FOCUS_STRIDE, 2: float(model.num_segments - model.cube_frames)}

    def loss_moved(cube, axis, h):  # the cube (flat index) read h units of its centre away, along one axis
        moved = [torch.zeros(4, dtype=torch.float64) for _ in range(3)]  # frames, rows, columns
        moved[{0: 2, 1: 1, 2: 0}[axis]][cube] = h * cells_per_unit[axis]
        with torch.no_grad():
            features = model.read_enlarged(maps, offset, *moved).view(2, 2, -1)
            return float(_loss(model, glance_pooled, features, target))

    h = 1e-6
    for cube in range(4):
        for axis in range(3):
            numeric = (loss_moved(cube, axis, h) - loss_moved(cube, axis, -h)) / (2 * h)
            analytic = float(centres.grad.view(4, 3)[cube, axis])
            assert analytic == pytest.approx(numeric, rel=1e-5, abs=1e-9), (cube, axis)
    assert centres.grad.abs().sum() > 0


def test_pixel_gradient_equals_finite_differences_of_the_loss_through_the_pixels():
    """Eqs. 2-4: with trilinear pixels the training loss is a function of the centres through the cube's pixels,
    and its gradient is that function's derivative (central differences, float64)."""
    model = _model(v3_gradient="pixel", cube_frames=2, num_segments=5, num_focus_segments=2).double().train()
    video, target = _video(model), torch.tensor([1, 0])
    with torch.no_grad():
        _, glance_pooled = model.glance_step(video)
    centres = _centres(2, 2, seed=3)
    _loss(model, glance_pooled, model.train_cube_features(video, centres), target).backward()

    def loss_at(c):
        with torch.no_grad():
            return float(_loss(model, glance_pooled, model.train_cube_features(video, c), target))

    h = 1e-8  # a random network on noise has many kinks (ReLU, max-pooling): stay within one linear piece
    base = centres.detach()
    for index in [(0, 0, 0), (0, 1, 1), (1, 0, 2), (1, 1, 0), (1, 1, 2)]:
        plus, minus = base.clone(), base.clone()
        plus[index] += h
        minus[index] -= h
        numeric = (loss_at(plus) - loss_at(minus)) / (2 * h)
        assert float(centres.grad[index]) == pytest.approx(numeric, rel=1e-4, abs=1e-8), index
    assert centres.grad[..., 2].abs().sum() > 0  # the time coordinate moves too (frames mixed linearly)


# --------------------------------------------------------------------------------------------------
# learning
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("gradient", ["feature", "pixel"])
def test_a_tiny_v3_overfits_a_few_videos(gradient):
    """main.py's pieces (parsed flags, the variant's objective Eq. 1, its optimiser groups): four random videos,
    each a colour under pixel noise, are learned in 30 steps: the loss falls below a tenth and every exit of the
    training forward classifies them. With the pixel estimator (the same P x P cubes in training and at test) the
    evaluation forward classifies them too; the feature estimator trains on cubes enlarged to twice the side here
    (32 + 32 px), which the 32-px evaluation cubes do not match (docs/adafocus-v3.md)."""
    torch.manual_seed(0)
    args = config.parse_args(["--variant", "adafocus_v3", "--dataset", "synthetic", "--num_segments", "4",
                              "--num_glance_segments", "4", "--num_focus_segments", "3", "--input_size", "64",
                              "--patch_size", "32", "--focus_arch", "resnet18", "--stn_hidden_dim", "8",
                              "--classifier_dim", "16", "--no-pretrained", "--lr", "0.01", "--epochs", "1",
                              "--v3_gradient", gradient])
    model = get_variant("adafocus_v3").build_from(args, num_classes=4)
    objective = build.build_objective(args)
    optimizer = build.build_optimizer(args, model)
    adjust_learning_rate(optimizer, 0, args.lr, args.epochs, args.lr_type, args.lr_steps, args.weight_decay)
    g = torch.Generator().manual_seed(0)
    video = torch.randn(4, 1, 3, 1, 1, generator=g) + 0.5 * torch.randn(4, 4, 3, 64, 64, generator=g)
    target = torch.arange(4)
    losses = []
    model.train()
    for _ in range(30):
        terms = objective(model(video), target)
        optimizer.zero_grad(set_to_none=True)
        terms.total.backward()
        optimizer.step()
        losses.append(float(terms.total.detach()))
    assert set(vars(terms)) == {"total", "glance_exit", "cubes"}
    end = sum(losses[-3:]) / 3
    assert end < 0.1 * losses[0], losses
    with torch.no_grad():
        assert model(video).stage_logits.argmax(dim=2).eq(target.unsqueeze(1)).all()
        if gradient == "pixel":
            # BatchNorm's running statistics lag 30 steps behind (momentum 0.1): take this batch's, then evaluate
            for module in model.modules():
                if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                    module.reset_running_stats()
                    module.momentum = None
            model(video)
            model.eval()
            assert model(video).logits.argmax(dim=1).tolist() == target.tolist()


def test_the_objective_sums_the_cross_entropy_of_every_exit():
    """Eq. 1: sum over p0..pK of the CE (mean over videos); 'mean' divides by the K + 1 steps."""
    logits = torch.randn(3, 4, 5)
    target = torch.tensor([0, 4, 2])
    out = argparse.Namespace(stage_logits=logits)
    expected = sum(torch.nn.functional.cross_entropy(logits[:, t], target) for t in range(4))
    terms = AdaFocusV3Objective("sum")(out, target)
    assert float(terms.total) == pytest.approx(float(expected), rel=1e-6)
    assert float(terms.glance_exit) == pytest.approx(float(torch.nn.functional.cross_entropy(logits[:, 0], target)))
    assert float(AdaFocusV3Objective("mean")(out, target).total) == pytest.approx(float(expected) / 4, rel=1e-6)


# --------------------------------------------------------------------------------------------------
# inference
# --------------------------------------------------------------------------------------------------
def test_inference_never_repeats_a_frame():
    """Cubes that all want the same frames get the nearest windows with uncovered frames, and process only those."""
    starts = torch.tensor([[2.0, 2.0, 2.2, 1.9], [0.0, 0.4, 5.0, 0.0]])
    for cube_frames in (1, 2, 3):
        plans = inference_windows(starts.clamp(max=8 - cube_frames), 8, cube_frames)
        for plan in plans:
            frames = [f for cube in plan for f in cube]
            assert len(frames) == len(set(frames)) and all(cube for cube in plan)
            assert all(max(cube) - min(cube) < cube_frames for cube in plan)
            assert len(plan[0]) == cube_frames
    assert inference_windows(starts, 8, 1)[0] == [[2], [1], [3], [0]]  # ties go to the earlier frame


def test_the_evaluation_forward_processes_distinct_frames_when_the_policy_repeats_itself():
    model = _model(num_segments=6, num_focus_segments=4).eval()
    with torch.no_grad():
        model.policy.spatial.layers[-2].bias.view(4, 3)[:, 2] = 0.0  # every cube centred on the same time
        out = model(_video(model, batch=3))
    for row in out.focus_indices.tolist():
        assert len(set(row)) == 4
    assert out.frames_used.eq(1).all()


def test_adaptive_inference_skips_the_cubes_of_videos_that_exit():
    """AdaptiveRunner on the model's early_exit_steps: a video that exits at stage k has had k cubes encoded (one
    clip per cube), and its logits are the full pass's exit k."""
    model = _model(cube_frames=2, num_segments=5, num_focus_segments=3, tsm_encoders=True).eval()
    video = _video(model, batch=4)
    with torch.no_grad():
        full = model(video).stage_logits
    encoded = []
    original = model.encode_clips

    def spy(clips, frames_per_clip):
        encoded.append(clips.shape[0] // frames_per_clip)
        return original(clips, frames_per_clip)

    model.encode_clips = spy
    forced = torch.tensor([0, 1, 3, 2])
    result = AdaptiveRunner(model, torch.zeros(4), criterion="entropy").run(video, forced_exits=forced)
    assert result.exit_stage.tolist() == forced.tolist()
    assert sum(encoded) == int(forced.sum())  # cubes run only for the videos still there
    for i, stage in enumerate(forced.tolist()):
        assert torch.allclose(result.logits[i], full[i, stage], atol=1e-5)


# --------------------------------------------------------------------------------------------------
# shapes and FLOPs
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cube_frames,tsm", [(1, False), (2, True)])
@pytest.mark.parametrize("gradient", ["feature", "pixel"])
def test_the_shapes_of_every_stage(cube_frames, tsm, gradient):
    model = _model(cube_frames=cube_frames, tsm_encoders=tsm, v3_gradient=gradient, num_segments=5,
                   num_glance_segments=3)
    video = _video(model, batch=2)
    b, k, c = 2, model.num_cubes, NUM_CLASSES
    fmap, pooled, centres = model.train().policy_step(video)
    assert fmap.shape[:3] == (b, 3, 1280) and pooled.shape == (b, 3, 1280) and centres.shape == (b, k, 3)
    assert model.train_cube_features(video, centres).shape == (b, k, model.focus.feature_dim)
    for mode in (True, False):
        model.train(mode)
        with torch.no_grad():
            out = model(video)
        assert out.stage_logits.shape == (b, k + 1, c) and out.logits.shape == (b, c)
        assert out.glance_logits.shape == (b, 1, c) and out.focus_logits.shape == (b, k, c)
        assert out.focus_indices.shape == (b, k) and out.frames_used.shape == (b, k)
        assert out.patch_boxes.shape == (b, k, 4) and out.cube_starts.shape == (b, k)
    steps = model.early_exit_steps(video, (False, torch.bfloat16))
    shapes = [tuple(next(steps).shape)]
    for _ in range(k):
        shapes.append(tuple(steps.send(torch.arange(b)).shape))
    assert shapes == [(b, c)] * (k + 1) and model.num_exit_stages == k + 1


def test_flops_per_stage_increase_by_one_cube_each():
    model = _model(num_segments=6, num_focus_segments=5)
    flops = adafocus_v3_flops(model)
    stages = flops.stages()
    assert len(stages) == model.num_exit_stages == 6
    steps = [b - a for a, b in zip(stages, stages[1:])]
    assert all(step > 0 for step in steps)
    assert steps == pytest.approx([flops.focus_patch + flops.patch_crop + flops.classifier_step] * 5)
    assert stages[0] == pytest.approx(6 * (flops.glance_frame + flops.glance_classifier) + flops.policy
                                      + flops.glance_exit)
    assert flops.focus_patch > 10 * flops.classifier_step  # the focus network dominates a cube
    longer = adafocus_v3_flops(_model(cube_frames=3, num_segments=6, num_focus_segments=2)).stages()
    assert longer[1] - longer[0] == pytest.approx(3 * (flops.focus_patch + flops.patch_crop) + flops.classifier_step)
    assert longer[2] - longer[1] == pytest.approx(3 * (flops.focus_patch + flops.patch_crop) + flops.classifier_step)


def test_bad_cube_settings_are_refused_in_one_line():
    for overrides, flag in [({"cube_frames": 4}, "--cube_frames"), ({"num_focus_segments": 5}, "--num_focus_segments"),
                            ({"patch_size": 48}, "--patch_size"), ({"v3_gradient": "both"}, "--v3_gradient")]:
        with pytest.raises(ValueError, match=flag) as exc:
            _model(**overrides)
        assert "\n" not in str(exc.value)


# --------------------------------------------------------------------------------------------------
# main.py and test_early_exit.py
# --------------------------------------------------------------------------------------------------
def test_main_trains_and_evaluates_a_tiny_v3_and_test_early_exit_runs_on_it(data_dir, tmp_path):
    """``main.py --variant adafocus_v3`` on the synthetic data trains Eq. 1's terms and evaluates every exit with
    its FLOPs; ``--evaluate --resume`` reproduces the last validation, with the cubes' frames decoded on demand or
    every frame decoded; test_early_exit.py sweeps the K + 1 exits."""
    root = tmp_path / "runs"
    _run([sys.executable] + _main_args(data_dir, root, "--variant", "adafocus_v3", "--epochs", "1", "--iters_per_epoch",
                                       "2", "--batch_size", "4", "--store_name", "v3"))
    log = (root / "v3" / "log.txt").read_text()
    assert "epoch 0 [2/2]" in log and " glance_exit " in log and " cubes " in log
    ckpt = torch.load(root / "v3" / "ckpt.pth.tar", weights_only=True)
    assert ckpt["config"]["variant"] == "adafocus_v3"
    model = get_variant("adafocus_v3").build_from(argparse.Namespace(**ckpt["config"]),
                                                  num_classes=SYNTHETIC["num_classes"])
    model.load_state_dict(ckpt["model"])
    stages = adafocus_v3_flops(model).stages()
    assert len(stages) == ckpt["config"]["num_focus_segments"] + 1
    metrics = json.loads((root / "v3" / "metrics.json").read_text())
    assert metrics["gflops"] == pytest.approx(stages[-1])
    # no --variant: the checkpoint's configuration names it; the frames the cubes read are decoded on demand,
    # and decoding every frame gives the same evaluation
    for name, extra in (("v3_eval", []), ("v3_eval_all", ["--decode_all_frames"])):
        _run([sys.executable] + _main_args(data_dir, root, "--evaluate", "--resume", str(root / "v3" / "ckpt.pth.tar"),
                                           "--store_name", name, *extra))
        evaluated = json.loads((root / name / "metrics_eval.json").read_text())
        assert evaluated["metrics"]["loss"] == pytest.approx(metrics["final"]["loss"], abs=1e-6), name
    early = _main_args(data_dir, root, "--variant", "adafocus_v3", "--evaluate", "--resume",
                       str(root / "v3" / "ckpt.pth.tar"), "--store_name", "v3_exit", "--threshold_set", "val")
    _run([sys.executable, "test_early_exit.py"] + early[1:])
    sweep = json.loads((root / "v3_exit" / "early_exit" / "entropy.json").read_text())
    assert sweep["num_stages"] == len(stages) and sweep["flops"] == pytest.approx(stages)
    spent = [p["expected_gflops"] for p in sweep["points"]]  # float32 sums of the stages' FLOPs
    assert spent and all(stages[0] * (1 - 1e-6) <= g <= stages[-1] * (1 + 1e-6) for g in spent)
