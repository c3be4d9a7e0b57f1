"""The inference copy (models.inference), CPU evaluation through it, and the CPU tuning (ops.cpu).

Every variant's copy must give the plain model's outputs to float rounding at any batch size (the focus
encoder's BatchNorm folded, channels-last, chunked focus calls; the glance and the policy the model's
own: tests/test_inference_decisions.py checks that the decisions are bit for bit the model's),
evaluation on a CPU must run a fresh copy of the current weights, ``--bf16_focus`` must put the focus
encoder alone in bfloat16, and the entry points must set a passive OpenMP wait policy while it can
still take effect.
"""
import argparse
import os
import subprocess
import sys

import pytest
import torch

from models import inference
from models.inference import AutocastEncoder, call_in_chunks, evaluation_model, fold_batchnorm, prepare_for_inference
from models.tsm import UniAdaFocusTSM
from models.uni_adafocus_x3d import UniAdaFocusX3D
from ops import cli, config, evaluation
from ops.cpu import openmp_loaded, prefer_passive_omp_wait, tune_cpu_allocator
import entry_points
from support import REPO, random_video, tiny_model

BATCHNORMS = (torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)
SAME = dict(atol=1e-4, rtol=1e-4)  # folding and channels-last reorder float32 sums (~1e-6 measured)


def _calibrated(model, seed=0):
    """``model`` with non-trivial BatchNorm statistics and affine parameters, in eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, BATCHNORMS):
                for t, lo, hi in ((m.running_mean, -0.2, 0.2), (m.running_var, 0.5, 1.5), (m.weight, 0.5, 1.5),
                                  (m.bias, -0.1, 0.1)):
                    t.copy_(torch.rand(t.shape, generator=g) * (hi - lo) + lo)
    return model.eval()


def tiny(variant: str, seed: int = 0):
    torch.manual_seed(seed)
    if variant == "mn2_r50":
        model = tiny_model()
    elif variant == "tsm":
        model = UniAdaFocusTSM(num_classes=4, num_segments=8, num_glance_segments=4, num_focus_segments=3,
                               patch_size=32, input_size=64, stn_hidden_dim=16, temporal_hidden_dim=8,
                               focus_arch="resnet18")
        for head in (model.glance_head, model.glance_prediction_head, model.focus_head, model.focus_prediction_head):
            torch.nn.init.normal_(head.weight, std=0.5)  # the official std 0.001 makes every logit ~0
    else:
        model = UniAdaFocusX3D(num_classes=4, num_segments=6, num_glance_segments=4, num_focus_segments=2,
                               patch_size=32, input_size=64, glance_size=32, stn_hidden_dim=8, temporal_hidden_dim=8)
    return _calibrated(model, seed)


def inputs(model, batch: int, seed: int = 0):
    """(video, forward keywords) for ``model``: the one-patch variants get their own glance frames."""
    video = random_video(batch=batch, frames=model.num_segments, size=model.input_size, seed=seed, dtype=torch.uint8)
    if model.variant == "mn2_r50":
        return video, {}
    glance = random_video(batch=batch, frames=model.num_glance, size=model.input_size, seed=seed + 1, dtype=torch.uint8)
    return video, {"glance": glance}


VARIANTS = ("mn2_r50", "tsm", "x3d")


# ------------------------------------------------------------------------------------------------
# the copy equals the plain model, for every variant
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", VARIANTS)
def test_prepared_copy_equals_the_plain_model_at_two_batch_sizes(variant):
    model = tiny(variant)
    fast = prepare_for_inference(model)
    for batch in (1, 3):
        video, extra = inputs(model, batch, seed=batch)
        with torch.no_grad():
            a, b = model(video, **extra), fast(video, **extra)
        torch.testing.assert_close(b.exit_logits, a.exit_logits, **SAME)
        torch.testing.assert_close(b.glance_features, a.glance_features, **SAME)
        torch.testing.assert_close(b.focus_features, a.focus_features, **SAME)
        assert torch.equal(a.focus_indices, b.focus_indices)
    assert not any(isinstance(m, BATCHNORMS) for m in fast.focus.modules())
    assert any(isinstance(m, BATCHNORMS) for m in model.focus.modules())  # the original is untouched
    assert not any(p.requires_grad for p in fast.focus.parameters())  # the folded encoder cannot be trained
    # Upstream of the decisions the copy is the model as it is, requires_grad included (CPU kernels may take
    # another path for parameters that require no gradient: AdaFocusV2's GRU policy moved by 2.4e-7).
    assert [p.requires_grad for n, p in fast.named_parameters() if not n.startswith("focus.")] == \
        [p.requires_grad for n, p in model.named_parameters() if not n.startswith("focus.")]


@pytest.mark.parametrize("variant", VARIANTS)
def test_fold_batchnorm_finds_every_encoder_batchnorm(variant):
    model = tiny(variant)
    count = sum(isinstance(m, BATCHNORMS) for enc in (model.glance, model.focus) for m in enc.modules())
    unfolded = prepare_for_inference(model, fold_bn=False, channels_last=False)
    assert fold_batchnorm(unfolded.glance) + fold_batchnorm(unfolded.focus) == count > 0


@pytest.mark.parametrize("variant, layout", [("mn2_r50", torch.channels_last), ("tsm", torch.channels_last),
                                             ("x3d", torch.channels_last_3d)])
def test_focus_encoder_runs_channels_last_and_the_glance_as_trained(variant, layout):
    model = tiny(variant)
    fast = prepare_for_inference(model)
    convs = [m for m in fast.focus.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d))]
    assert convs and all(c.weight.is_contiguous(memory_format=layout) for c in convs)
    assert getattr(fast.focus, "memory_format", layout) == layout
    # the glance encoder and the policy: the model's modules, tensors and memory layout, unchanged
    for name in ("glance", "policy"):
        ours, theirs = getattr(fast, name), getattr(model, name)
        assert [type(m) for m in ours.modules()] == [type(m) for m in theirs.modules()]
        mine, original = ours.state_dict(), theirs.state_dict()
        assert list(mine) == list(original)
        assert all(torch.equal(mine[k], original[k]) and mine[k].stride() == original[k].stride() for k in mine)
    assert getattr(fast.glance, "memory_format", None) == getattr(model.glance, "memory_format", None)


# ------------------------------------------------------------------------------------------------
# chunked encoder calls
# ------------------------------------------------------------------------------------------------
def test_call_in_chunks_concatenates_tensors_and_tuples():
    x = torch.arange(10.0).view(5, 2)
    sizes = []

    def fn(part):
        sizes.append(part.shape[0])
        return part * 2, part.sum(dim=1)

    doubled, sums = call_in_chunks(fn, x, 2)
    assert sizes == [2, 2, 1] and torch.equal(doubled, x * 2) and torch.equal(sums, x.sum(dim=1))
    assert torch.equal(call_in_chunks(lambda p: p + 1, x, None), x + 1)


#: (variant, focus_chunk) -> the batch sizes each encoder call gets for 3 videos: the glance the whole
#: batch at once, the focus encoder whole clips only.
CHUNKS = {
    "mn2_r50": (3, {"glance": [12], "focus": [3, 3, 3, 3]}),  # 12 frames, 12 patches
    "tsm": (5, {"glance": [12], "focus": [3, 3, 3]}),  # clips of T_G = 4 frames and T_L = 3 patches
    "x3d": (5, {"glance": [3], "focus": [2, 1]}),  # X3D takes clips: 4 glance frames, 2 patches each
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_focus_calls_are_chunked_in_whole_clips_and_the_glance_never(variant):
    model = tiny(variant, seed=1)
    video, extra = inputs(model, 3, seed=4)
    with torch.no_grad():
        whole = model(video, **extra)
        chunk, expected = CHUNKS[variant]
        model.focus_chunk = chunk
        calls = {"glance": [], "focus": []}
        hooks = [getattr(model, name).register_forward_hook(lambda m, i, o, n=name: calls[n].append(i[0].shape[0]))
                 for name in calls]
        chunked = model(video, **extra)
        for h in hooks:
            h.remove()
    assert calls == expected
    torch.testing.assert_close(chunked.exit_logits, whole.exit_logits, atol=1e-5, rtol=1e-5)
    assert torch.equal(chunked.focus_indices, whole.focus_indices)
    assert torch.equal(chunked.glance_features, whole.glance_features)


@pytest.mark.parametrize("variant", VARIANTS)
def test_training_is_never_chunked(variant):
    model = tiny(variant).train()
    model.focus_chunk = 1
    video, extra = inputs(model, 2)
    calls = []
    model.focus.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    model(video, generator=torch.Generator().manual_seed(0), **extra)
    assert len(calls) == 1  # one call: BatchNorm statistics over the whole batch


def test_cpu_evaluation_chunks_by_default():
    assert prepare_for_inference(tiny("tsm")).focus_chunk == inference.CPU_FOCUS_CHUNK == 32
    assert prepare_for_inference(tiny("tsm"), focus_chunk=8).focus_chunk == 8


# ------------------------------------------------------------------------------------------------
# bfloat16 focus
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", VARIANTS)
def test_bf16_focus_runs_the_focus_encoder_alone_in_bfloat16(variant):
    model = tiny(variant)
    fp32, bf16 = prepare_for_inference(model), prepare_for_inference(model, bf16_focus=True)
    assert isinstance(bf16.focus, AutocastEncoder) and not isinstance(bf16.glance, AutocastEncoder)
    dtypes = {"glance": set(), "focus": set()}
    for name in dtypes:
        encoder = getattr(bf16, name)
        encoder = getattr(encoder, "inner", encoder)
        for conv in (m for m in encoder.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d))):
            conv.register_forward_hook(lambda m, i, o, n=name: dtypes[n].add(o.dtype))
    video, extra = inputs(model, 2)
    with torch.no_grad():
        a, b = fp32(video, **extra), bf16(video, **extra)
    assert dtypes["focus"] == {torch.bfloat16}
    assert dtypes["glance"] == {torch.float32}
    assert torch.equal(a.glance_features, b.glance_features)  # the glance is untouched
    assert b.focus_features.dtype == torch.float32 and not torch.equal(a.focus_features, b.focus_features)
    scale = a.exit_logits.abs().max()
    assert (b.exit_logits - a.exit_logits).abs().max() <= 0.05 * scale  # measured here: <= 1 %


def test_bf16_focus_on_an_unsupported_cpu_is_one_error_naming_the_flag(monkeypatch, capsys):
    monkeypatch.setattr(inference, "bf16_support", lambda: "this CPU has no native bfloat16 arithmetic (test)")
    with pytest.raises(ValueError, match="--bf16_focus: this CPU has no native bfloat16"):
        evaluation_model(tiny("mn2_r50"), bf16_focus=True)
    with pytest.raises(SystemExit) as exit_info:
        config.parse_args(["--bf16_focus", "--device", "cpu"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "error: --bf16_focus: this CPU has no native bfloat16" in err[0]


@pytest.mark.parametrize("flags, message", [
    (["--plain_model"], "--plain_model turns that off"),
    (["--amp", "--eval_amp"], "--eval_amp puts both encoders under autocast"),
    (["--device", "cuda"], "--bf16_focus is for CPU evaluation"),
])
def test_bf16_focus_contradictions_are_one_error(flags, message, capsys):
    with pytest.raises(SystemExit):
        config.parse_args(["--bf16_focus"] + flags)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and "--bf16_focus" in err[0]


def test_bf16_support_is_detected():
    reason = inference.bf16_support()
    native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    assert (reason is None) == (native and torch.backends.mkldnn.is_available())
    if reason is None:
        args = config.parse_args(["--bf16_focus", "--device", "cpu"])
        assert args.bf16_focus and not args.plain_model


def test_predict_refuses_bf16_focus_with_the_plain_model_before_any_work(tmp_path, capsys):
    from scripts import predict

    status = cli.run_main(predict.main, [str(tmp_path / "v.mp4"), "--checkpoint", str(tmp_path / "none.pth"),
                                         "--device", "cpu", "--bf16_focus", "--plain_model"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1 and err[0].startswith("error: --bf16_focus") and "--plain_model" in err[0]


# ------------------------------------------------------------------------------------------------
# what evaluation runs
# ------------------------------------------------------------------------------------------------
def test_evaluation_model_choice():
    model = tiny("mn2_r50")
    fast, line = evaluation_model(model)
    assert fast is not model and "inference copy" in line and "the model's own glance and policy" in line
    assert "32 images per call; float32;" in line
    same, line = evaluation_model(model, plain=True)
    assert same is model and "plain model (--plain_model)" in line
    fast, line = evaluation_model(model, eval_amp=True)
    assert fast is not model and "both encoders under --eval_amp autocast" in line
    if inference.bf16_support() is None:
        _, line = evaluation_model(tiny("x3d"), bf16_focus=True)
        assert "focus in bfloat16 (--bf16_focus), glance in float32" in line


class _VideoSet(torch.utils.data.Dataset):
    """A few random uint8 videos with labels, as the evaluation loader yields them."""

    num_classes = 5

    def __init__(self, model, n=6):
        self.video, _ = inputs(model, n, seed=3)
        self.label = torch.arange(n) % self.num_classes

    def __len__(self):
        return self.video.shape[0]

    def __getitem__(self, i):
        return {"video": self.video[i], "label": self.label[i], "index": i,
                "labels": torch.nn.functional.one_hot(self.label[i], self.num_classes)}


class _Log:
    def __init__(self):
        self.lines = []

    def info(self, line):
        self.lines.append(line)


def test_evaluation_runs_a_fresh_inference_copy_of_the_current_weights():
    model = tiny("mn2_r50")
    dataset = _VideoSet(model)
    loader = torch.utils.data.DataLoader(dataset, batch_size=4)
    info = argparse.Namespace(is_main=False, distributed=False, rank=0, world_size=1, device=torch.device("cpu"))
    args = config.parse_args(["--device", "cpu", "--input_size", "64", "--patch_size", "32"])
    for step in range(2):  # validation after two "epochs": the second must see the changed weights
        log = _Log()
        result = evaluation.evaluate(model, loader, args, info, log=log)
        assert sum("evaluation runs the inference copy" in line for line in log.lines) == 1
        with torch.no_grad():
            expected = model.eval()(dataset.video).logits
        torch.testing.assert_close(result.rows["prediction"], expected, **SAME)
        with torch.no_grad():
            for p in model.classifier.parameters():
                p.add_(0.05)  # a training step
    log = _Log()
    plain = evaluation.evaluate(model, loader, config.parse_args(["--device", "cpu", "--plain_model"]), info, log=log)
    assert sum("evaluation runs the plain model (--plain_model)" in line for line in log.lines) == 1
    with torch.no_grad():
        torch.testing.assert_close(plain.rows["prediction"], model(dataset.video).logits, atol=1e-5, rtol=1e-5)


def test_early_exit_logits_cache_tells_the_evaluated_model_apart(tmp_path):
    import test_early_exit

    ckpt = tmp_path / "ckpt.pth.tar"
    ckpt.write_bytes(b"weights")
    parse = lambda *flags: config.parse_args(["--resume", str(ckpt), *flags],  # noqa: E731
                                             test_early_exit.get_args_parser())
    assert len({test_early_exit.cache_key(parse(*flags)) for flags in ([], ["--plain_model"])}) == 2


@pytest.mark.gpu
def test_cuda_evaluation_keeps_the_plain_model():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    model = tiny("mn2_r50").cuda()
    same, line = evaluation_model(model)
    assert same is model and "on cuda" in line
    fast = prepare_for_inference(model)  # still usable on a GPU: no chunking
    assert fast.focus_chunk is None
    video, _ = inputs(model, 2)
    with torch.no_grad():
        torch.testing.assert_close(fast(video.cuda()).exit_logits, model(video.cuda()).exit_logits, atol=1e-3,
                                   rtol=1e-3)


# ------------------------------------------------------------------------------------------------
# CPU tuning
# ------------------------------------------------------------------------------------------------
def test_allocator_tuning_is_reported_and_idempotent():
    first = tune_cpu_allocator()
    assert tune_cpu_allocator() == first
    assert isinstance(first, bool)


def test_passive_omp_wait_is_not_set_once_openmp_is_loaded(monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    assert openmp_loaded()  # torch is imported here
    assert prefer_passive_omp_wait() is False and "OMP_WAIT_POLICY" not in os.environ


def _spin_count(code, env_policy=None, *args):
    """GOMP_SPINCOUNT that libgomp settled on in a fresh interpreter running ``code`` (or a script)."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env.update(OMP_DISPLAY_ENV="VERBOSE", PYTHONPATH=str(REPO))
    if env_policy:
        env["OMP_WAIT_POLICY"] = env_policy
    command = [sys.executable] + (["-c", code] if code else list(args))
    run = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    lines = [line for line in run.stderr.splitlines() if "GOMP_SPINCOUNT" in line]
    if not lines:
        pytest.skip("this torch build's OpenMP runtime is not libgomp (no GOMP_SPINCOUNT display)")
    return lines[0].split("=")[1].strip().strip("'"), run.stdout


def test_passive_omp_wait_takes_effect_only_before_torch_loads():
    before, out = _spin_count("from ops.cpu import prefer_passive_omp_wait as p; print(p()); import torch")
    assert before == "0" and out.strip() == "True"  # passive: no spinning
    after, out = _spin_count("import torch; from ops.cpu import prefer_passive_omp_wait as p; print(p())")
    assert after != "0" and out.strip() == "False"  # the runtime had already read the environment
    explicit, out = _spin_count("from ops.cpu import prefer_passive_omp_wait as p; print(p()); import torch", "ACTIVE")
    assert explicit != "0" and out.strip() == "False"  # an explicit setting wins


@pytest.mark.parametrize("entry", [["main.py"], ["test_early_exit.py"], ["-m", "scripts.predict"]])
def test_entry_points_wait_passively_unless_told_otherwise(entry):
    spin, _ = _spin_count(None, None, *entry, "--help")
    assert spin == "0"


def test_adaptive_runtime_on_the_copy_counts_the_original_flops_and_matches_it():
    from models.flops import flops_breakdown
    from ops.early_exit import LAST_STAGE_THRESHOLD, NO_EXIT_THRESHOLD, AdaptiveRunner

    model = tiny("mn2_r50")
    fast = prepare_for_inference(model)
    thresholds = [NO_EXIT_THRESHOLD] * 4 + [LAST_STAGE_THRESHOLD]
    table = flops_breakdown(model).stages()
    assert AdaptiveRunner(fast, thresholds).flops.tolist() == table  # folding moves no multiply-add
    video, _ = inputs(model, 5)
    forced = torch.tensor([0, 1, 2, 3, 4])
    a = AdaptiveRunner(model, thresholds, flops=table).run(video, forced_exits=forced)
    b = AdaptiveRunner(fast, thresholds, flops=table).run(video, forced_exits=forced)
    torch.testing.assert_close(b.logits, a.logits, **SAME)
    assert b.gflops.tolist() == a.gflops.tolist()


def test_inference_benchmark_runs_and_reports_ratios():
    """scripts/bench_inference.py on a small configuration (what it prints, not how fast anything is)."""
    run = entry_points.run([sys.executable, "-m", "scripts.bench_inference", "--input_size", "64", "--patch_size",
                            "32", "--num_segments", "8", "--num_glance_segments", "4", "--num_focus_segments", "4",
                            "--batches", "1", "2", "--repeats", "1", "--warmup", "1", "--threads", "1"], timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    out = run.stdout
    assert "OMP_WAIT_POLICY=" in out and "1 threads" in out and "random weights" in out
    ratios = {}  # (side, B) -> time relative to the plain model
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 5 and parts[0] in ("plain", "copy", "copy+bf16") and parts[1] in ("1", "2"):
            ratios[(parts[0], parts[1])] = parts[4]
    assert {("plain", "1"), ("copy", "1"), ("plain", "2"), ("copy", "2")} <= set(ratios)
    assert ratios[("plain", "1")] == ratios[("plain", "2")] == "1.000x"
    assert all(value.endswith("x") and float(value[:-1]) > 0 for value in ratios.values())
    assert "time per video at B=2 / at B=1" in out
    if inference.bf16_support() is None:
        assert ("copy+bf16", "2") in ratios
    else:
        assert "copy+bf16: skipped" in out
