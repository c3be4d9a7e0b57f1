"""CUDA checks, run by ``pytest -m gpu`` (and ``scripts/gpu_check.sh``); every test skips without CUDA.

* **Parity on CUDA**: every variant's parity fixtures, loaded by the CPU parity tests' own loaders, run
  on the GPU in IEEE float32 (TF32 off for convolutions and matrix products, cuDNN's default
  algorithms) and match the official outputs within the CPU tests' tolerances (mn2_r50's focus side end
  to end: see CUDA_ACTIONS); the 2-D variants also with channels-last encoders, the layout CUDA runs use
  by default.
* **AMP training steps**: float16 (with its gradient scaler) and bfloat16 steps of a small model through
  ``ops.training.train_one_epoch`` give finite losses and gradients, the mean total loss within 5 % of
  float32's (learning rate 0, so every step starts from the same weights).
* **Adaptive early exit**: ``AdaptiveRunner`` on CUDA gives the post-hoc simulation's exits and logits.
* **torchrun**: main.py trains and evaluates a tiny synthetic dataset on CUDA under torchrun, with
  bfloat16 AMP: on one process (which forms no process group: one process needs none), or on two
  processes over NCCL with ``--sync_bn`` where two GPUs exist.
"""
from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys

import pytest
import torch

import test_parity
import test_parity_tsm
import test_parity_x3d
from models.uni_adafocus_outputs import stage_logits
from ops import build, config, device_setup, evaluation, training
from ops import distributed as dist_ops
from ops.early_exit import AdaptiveRunner, assign_exits, exit_scores
from ops.run_log import RunLog
from support import REPO, random_video, random_video_loader, require_fixture
from test_adaptive import CRITERIA, _solved, calibrated_tiny_model
from test_main import SYNTHETIC, TINY

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device (torch.cuda.is_available() "
                                                                         "is False)")]


@pytest.fixture
def cuda_float32():
    """The first GPU, computing in IEEE float32: TF32 off for convolutions and matrix products, cuDNN's
    default algorithms (the settings are restored afterwards)."""
    saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.benchmark)
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.benchmark = False
    yield torch.device("cuda", 0)
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.benchmark = saved


def on_cpu(out):
    """A model output (a dataclass of tensors) with every tensor moved to the CPU."""
    return dataclasses.replace(out, **{f.name: getattr(out, f.name).cpu() for f in dataclasses.fields(out)
                                       if isinstance(getattr(out, f.name), torch.Tensor)})


# ------------------------------------------------------------------------------------------------
# Parity on CUDA
# ------------------------------------------------------------------------------------------------
#: CUDA's float32 kernels sum in other orders than the CPU's. Measured on an H200 (contiguous / channels-last):
#: glance actions moved by 3.8e-5 / 3.0e-5 (relative 1.4e-4, beyond ACTIONS' rtol) and glance features by
#: 5.1e-5 / 3.9e-5. The random ResNet-50 amplifies such patch
#: moves: end to end, focus features moved by 1.4e-2 / 8.8e-3, exit logits by 5.1e-3 / 4.1e-3 and the final
#: logits by 3.1e-3. Given the fixture's own patches, the CUDA focus features are within 7.6e-6 and the exit
#: logits within 2.0e-5 (asserted to LOGITS): the whole deviation is the patch positions.
CUDA_ACTIONS = dict(atol=1e-4, rtol=1e-4)
CUDA_FOCUS_END_TO_END = dict(atol=3e-2, rtol=1e-3)
CUDA_EXITS = dict(atol=1e-2, rtol=1e-3)


def _deviations(pairs):
    """Print the largest absolute deviation of each (name, got, expected) pair (read in the check's log)."""
    print(", ".join(f"{name} {(got.double() - want.double()).abs().max().item():.2e}" for name, got, want in pairs))


@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
@pytest.mark.parametrize("path", test_parity.fixtures())
def test_mn2_r50_parity_on_cuda(path, channels_last, cuda_float32, tmp_path):
    fx, model, images, info, manifest = test_parity.load_fixture(require_fixture(path), tmp_path)
    model = model.to(cuda_float32)
    if channels_last:
        assert device_setup.use_channels_last(model) == ["glance", "focus"]
    b, c = fx["patches"].shape[0] // model.num_focus, model.num_classes
    with torch.no_grad():
        out = on_cpu(model(images.to(cuda_float32)))
        given_feat = model.focus(fx["patches"].to(cuda_float32))  # the focus path on the official patches
        given_exits = model.classifier(fx["global_feat"].view(b, model.num_glance, -1).to(cuda_float32),
                                       given_feat.view(b, model.num_focus, -1)).cpu()
        given_feat = given_feat.cpu()
    t, ref = test_parity, fx["outputs"]
    _deviations([("glance actions", out.glance_actions.flatten(0, 1), fx["glance_actions"]),
                 ("final logits", out.logits, ref["cat_pred"]),
                 ("focus actions", out.focus_actions.flatten(0, 1), fx["focus_actions"]),
                 ("glance features", out.glance_features.flatten(0, 1), fx["global_feat"]),
                 ("focus features", out.focus_features.flatten(0, 1), fx["local_feat"]),
                 ("exit logits", out.exit_logits.reshape(-1, c), ref["cat_logits"]),
                 ("focus features given patches", given_feat, fx["local_feat"]),
                 ("exit logits given patches", given_exits.reshape(-1, c), ref["cat_logits"])])
    assert torch.equal(out.glance_indices, fx["glance_indices"])
    assert torch.equal(out.focus_indices, fx["focus_indices"])
    torch.testing.assert_close(out.frame_weights, ref["weights"], **t.WEIGHTS)
    torch.testing.assert_close(out.selection_weights, fx["weights_T"], **t.WEIGHTS)
    torch.testing.assert_close(out.glance_actions.flatten(0, 1), fx["glance_actions"], **CUDA_ACTIONS)
    torch.testing.assert_close(out.focus_actions.flatten(0, 1), fx["focus_actions"], **CUDA_ACTIONS)
    torch.testing.assert_close(out.glance_features.flatten(0, 1), fx["global_feat"], **t.LOGITS)
    torch.testing.assert_close(out.glance_logits.reshape(-1, c), ref["global_logits"], **t.LOGITS)
    torch.testing.assert_close(out.spatial_logits, ref["spatial_sample_logits_3"], **t.LOGITS)
    torch.testing.assert_close(given_feat, fx["local_feat"], **t.LOGITS)
    torch.testing.assert_close(given_exits.reshape(-1, c), ref["cat_logits"], **t.LOGITS)
    torch.testing.assert_close(out.focus_features.flatten(0, 1), fx["local_feat"], **CUDA_FOCUS_END_TO_END)
    torch.testing.assert_close(out.focus_logits.reshape(-1, c), ref["local_logits"], **CUDA_FOCUS_END_TO_END)
    torch.testing.assert_close(out.exit_logits.reshape(-1, c), ref["cat_logits"], **CUDA_EXITS)
    torch.testing.assert_close(out.logits, ref["cat_pred"], **CUDA_EXITS)


@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
@pytest.mark.parametrize("path", test_parity_tsm.fixtures())
def test_tsm_parity_on_cuda(path, channels_last, cuda_float32, tmp_path):
    fx, model, glance, video, info, manifest = test_parity_tsm.load_fixture(require_fixture(path), tmp_path)
    model = model.to(cuda_float32)
    if channels_last:
        assert device_setup.use_channels_last(model) == ["glance", "focus"]  # the shift works on channels-last maps
    with torch.no_grad():
        out = on_cpu(model(video.to(cuda_float32), glance=glance.to(cuda_float32)))
    t = test_parity_tsm
    assert torch.equal(out.glance_indices, fx["glance_indices"])
    assert torch.equal(out.focus_indices, fx["focus_indices"])
    torch.testing.assert_close(out.frame_weights, fx["weights"], **t.WEIGHTS)
    torch.testing.assert_close(out.selection_weights, fx["weights_T"], **t.WEIGHTS)
    torch.testing.assert_close(out.actions, fx["action"], **t.WEIGHTS)
    torch.testing.assert_close(out.glance_features.flatten(0, 1), fx["global_feat"], **t.LOGITS)
    torch.testing.assert_close(out.glance_prediction, fx["global_final_logit"], **t.LOGITS)
    torch.testing.assert_close(out.glance_logits, fx["global_frame_logits_new_new_fc"], **t.LOGITS)
    torch.testing.assert_close(out.spatial_logits, fx["spatial_sample_logits_3"], **t.LOGITS)
    torch.testing.assert_close(out.focus_features.flatten(0, 1), fx["local_feat"], **t.FOCUS_END_TO_END)
    torch.testing.assert_close(out.focus_prediction, fx["local_final_logit"], **t.FOCUS_END_TO_END)
    torch.testing.assert_close(out.focus_logits, fx["local_frame_logits_new_new_fc"], **t.FOCUS_END_TO_END)
    torch.testing.assert_close(out.logits, fx["outputs"]["prediction"], **t.FOCUS_END_TO_END)
    torch.testing.assert_close(out.stage_logits[:, 0], fx["global_avg_logit"], **t.LOGITS)


@pytest.mark.parametrize("path", test_parity_x3d.fixtures())
def test_x3d_parity_on_cuda(path, cuda_float32, tmp_path):
    path = require_fixture(path)
    t = test_parity_x3d
    fx = torch.load(path, weights_only=True)
    model, manifest, info = t._model(path, fx, tmp_path)
    three_crop = "outputs_per_crop" in fx
    glance, video = t._three_crop_inputs(fx) if three_crop else t._forward_inputs(fx)
    model = model.to(cuda_float32)
    assert device_setup.use_channels_last(model) == []  # X3D's 3-D encoders keep their layout
    with torch.no_grad():
        out = on_cpu(model(video.to(cuda_float32), glance=glance.to(cuda_float32)))

    def per_video(name):
        return t._per_video(fx, name, three_crop)

    assert torch.equal(out.focus_indices, fx["focus_indices_per_crop"] if three_crop else fx["focus_indices"])
    torch.testing.assert_close(out.frame_weights, fx["weights_per_crop"] if three_crop else fx["weights"], **t.WEIGHTS)
    torch.testing.assert_close(out.actions, per_video("action"), **t.WEIGHTS)
    torch.testing.assert_close(out.exit_logits[:, 0], per_video("global_avg_logit"), **t.LOGITS)
    torch.testing.assert_close(out.focus_logits.mean(dim=1), per_video("local_avg_logit"), **t.LOGITS)
    torch.testing.assert_close(out.spatial_logits, per_video("spatial_sample_logits_3"), **t.LOGITS)
    torch.testing.assert_close(out.logits, per_video("final_logits"), **t.LOGITS)
    if three_crop:
        averaged = evaluation.average_views(out, len(fx["crop_offsets_xy"]))
        torch.testing.assert_close(averaged.logits, fx["outputs_averaged"]["final_logits"], **t.LOGITS)
        torch.testing.assert_close(averaged.stage_logits, fx["early_exit_stage_logits"], **t.LOGITS)
    else:
        torch.testing.assert_close(out.glance_features.flatten(0, 1), fx["global_feat"], **t.LOGITS)
        torch.testing.assert_close(out.glance_prediction, fx["global_final_logit"], **t.LOGITS)
        torch.testing.assert_close(out.focus_features.flatten(0, 1), fx["local_feat"], **t.LOGITS)
        torch.testing.assert_close(out.focus_prediction, fx["local_final_logit"], **t.LOGITS)


# ------------------------------------------------------------------------------------------------
# AMP training steps
# ------------------------------------------------------------------------------------------------
#: float16 / bfloat16 against float32: the mean total loss of the steps, relative. Gradients are only checked
#: to be finite: BatchNorm in training mode amplifies rounding in randomly initialised encoders (on a CPU, the
#: bfloat16 features of these encoders are 4-22 % off float32's, and the gradients' cosine with float32's
#: was 0.43), so the direction of a random network's gradient is no reference; the total loss was 1.3 % off.
AMP_LOSS_RTOL = 5e-2
#: A small model at learning rate 0: every step starts from the same weights, whichever steps the float16
#: scaler skips. Temperature 1000 makes the frame selection nearly uniform, so that rounding cannot move a
#: focus frame to another (a discrete change no tolerance would cover); no dropout.
AMP_FLAGS = ["--num_segments", "8", "--num_glance_segments", "4", "--num_focus_segments", "4", "--input_size", "64",
             "--patch_size", "32", "--focus_arch", "resnet18", "--classifier_dim", "32", "--stn_hidden_dim", "16",
             "--temporal_hidden_dim", "8", "--no-pretrained", "--device", "cuda", "--lr", "0", "--dropout", "0",
             "--fc_dropout", "0", "--temperature", "1000", "--print-freq", "4"]
#: Steps per run: float16's scaler starts at a scale of 2**16 and halves it at every step whose gradients
#: overflow; on an H200 this model's first steps all overflowed (2 steps were too few for any to be taken).
AMP_STEPS = 16


def _training_steps(extra, device, tmp_path):
    """(epoch averages, [flattened gradients at every optimizer step], scaler) of AMP_STEPS training steps."""
    args = config.parse_args(AMP_FLAGS + extra)
    info = dist_ops.DistInfo(device=device)
    torch.manual_seed(0)
    model = build.build_model(args, 5, info)
    objective, optimizer, scaler = build.build_objective(args), build.build_optimizer(args, model), \
        build.build_scaler(args, info)
    grads, plain_step = [], optimizer.step

    def recording_step(*a, **kw):  # the scaler calls it with unscaled gradients, and only for finite ones
        grads.append(torch.cat([p.grad.flatten().float() for p in model.parameters() if p.grad is not None]).cpu())
        return plain_step(*a, **kw)

    optimizer.step = recording_step
    loader = random_video_loader(batch_size=2, pin_memory=True, size=2 * AMP_STEPS)
    stats = training.train_one_epoch(model, objective, loader, optimizer, scaler, 0, args, info,
                                     RunLog(str(tmp_path), enabled=False))
    return stats, grads, scaler


@pytest.mark.parametrize("amp_dtype", ["float16", "bfloat16"])
def test_amp_training_steps_are_finite_and_close_to_float32(amp_dtype, cuda_float32, tmp_path):
    if amp_dtype == "bfloat16" and dist_ops.cuda_bf16_problem(cuda_float32):
        pytest.skip(dist_ops.cuda_bf16_problem(cuda_float32))
    reference, _, no_scaler = _training_steps([], cuda_float32, tmp_path)
    stats, grads, scaler = _training_steps(["--amp", "--amp_dtype", amp_dtype], cuda_float32, tmp_path)
    assert no_scaler is None and (scaler is not None) == (amp_dtype == "float16")
    assert all(math.isfinite(v) for v in stats.values()), stats
    assert stats["total"] != reference["total"]  # autocast took effect
    assert stats["total"] == pytest.approx(reference["total"], rel=AMP_LOSS_RTOL)
    assert grads, f"the gradient scaler skipped all {AMP_STEPS} steps (scale now {scaler and scaler.get_scale()})"
    print(f"{amp_dtype}: {len(grads)} of {AMP_STEPS} steps taken; mean total loss {stats['total']:.4f} "
          f"(float32 {reference['total']:.4f})")
    assert all(torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)


# ------------------------------------------------------------------------------------------------
# The adaptive early-exit runtime
# ------------------------------------------------------------------------------------------------
#: Different batch sizes may run different cuDNN algorithms: logits agree to rounding, and a video whose
#: score lies within that rounding of its threshold may exit elsewhere (at most 2 of 16 are allowed to).
ADAPTIVE_LOGITS = dict(atol=1e-4, rtol=1e-4)
ADAPTIVE_MARGIN = 1e-4


@pytest.mark.parametrize("criterion", CRITERIA)
def test_adaptive_runtime_equals_the_posthoc_simulation_on_cuda(criterion, cuda_float32):
    model = calibrated_tiny_model().to(cuda_float32)
    with torch.no_grad():
        threshold_set = stage_logits(model(random_video(batch=64, seed=5).to(cuda_float32)).exit_logits,
                                     model.num_glance).cpu()
        video = random_video(batch=16, seed=9).to(cuda_float32)
        stages = stage_logits(model(video).exit_logits, model.num_glance).cpu()  # (16, K, C)
    thresholds = _solved(threshold_set, criterion, 1.0)
    scores = exit_scores(stages, criterion)
    exits = assign_exits(scores, thresholds)  # the post-hoc simulation
    assert len(exits.unique()) >= 3, exits.tolist()  # the thresholds spread the exits: a meaningful comparison
    near = ((scores[:, :-1].double() - thresholds[:-1].double()).abs() < ADAPTIVE_MARGIN).any(dim=1)
    assert int(near.sum()) <= 2, f"{int(near.sum())} videos score within {ADAPTIVE_MARGIN} of a threshold"

    result = AdaptiveRunner(model, thresholds, criterion).run(video)
    keep = ~near
    assert torch.equal(result.exit_stage[keep], exits[keep])
    expected = stages[torch.arange(16), exits]
    torch.testing.assert_close(result.logits.cpu()[keep], expected[keep], **ADAPTIVE_LOGITS)


# ------------------------------------------------------------------------------------------------
# torchrun (NCCL with two GPUs)
# ------------------------------------------------------------------------------------------------
def test_torchrun_trains_and_evaluates_on_cuda(tmp_path):
    from datasets import synthetic

    processes = min(2, torch.cuda.device_count())
    device = torch.device("cuda", 0)
    amp_dtype = "bfloat16" if dist_ops.cuda_bf16_problem(device) is None else "float16"
    data, root = tmp_path / "data", tmp_path / "runs"
    synthetic.ensure_generated(str(data), workers=1, **SYNTHETIC)
    flags = TINY.replace("--device cpu", "--device cuda").replace("--workers 0", "--workers 2").split()
    flags += ["--data_dir", str(data), "--synthetic", json.dumps(SYNTHETIC), "--root_log", str(root),
              "--store_name", "nccl", "--epochs", "1", "--iters_per_epoch", "2", "--batch_size", str(2 * processes),
              "--amp", "--amp_dtype", amp_dtype] + (["--sync_bn"] if processes > 1 else [])
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={processes}", "--standalone", "main.py",
           *flags]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"STDOUT\n{result.stdout[-3000:]}\nSTDERR\n{result.stderr[-3000:]}"
    log = (root / "nccl" / "log.txt").read_text()
    assert f"training on {processes} process(es), device cuda:0" in log
    assert f"device settings: backbones in {amp_dtype} autocast" in log
    assert "channels-last 2-D encoders" in log and "cudnn.benchmark on" in log and "pinned-memory loaders" in log
    assert ("synchronised BatchNorm" in log) == (processes > 1)
    assert "epoch 0 [2/2]" in log
    ckpt = torch.load(root / "nccl" / "ckpt.pth.tar", weights_only=True)
    assert ckpt["epoch"] == 1 and not any(k.startswith("module.") or "_orig_mod" in k for k in ckpt["model"])
    metrics = json.loads((root / "nccl" / "metrics.json").read_text())
    assert metrics["final"]["num_videos"] == SYNTHETIC["val_videos"]  # every video once, over the processes
