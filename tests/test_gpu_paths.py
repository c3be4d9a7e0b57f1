"""The GPU paths' structure, on the CPU: training reads the device only at print steps (and logs the same
averages), the device settings and their errors, channels-last and compiled encoders, the GPU benchmark's
code at toy sizes, and scripts/gpu_check.sh's exit without CUDA."""
from __future__ import annotations

import dataclasses
import json
import os
import sys

import pytest
import torch

import main
from ops import build, cli, config, device_setup, training
from ops import distributed as dist_ops
from ops.metrics import topk_accuracy
from ops.objective import ObjectiveTerms

import entry_points
from support import REPO, random_video, random_video_loader

TINY = ["--dataset", "synthetic", "--num_segments", "8", "--num_glance_segments", "4", "--num_focus_segments", "4",
        "--input_size", "64", "--patch_size", "32", "--focus_arch", "resnet18", "--classifier_dim", "32",
        "--stn_hidden_dim", "16", "--temporal_hidden_dim", "8", "--no-pretrained", "--workers", "0",
        "--no-tensorboard", "--num_visualised", "0"]
CPU = dist_ops.DistInfo(device=torch.device("cpu"))
CUDA_1 = dist_ops.DistInfo(device=torch.device("cuda", 0))  # settings only: nothing runs on it
CUDA_2 = dist_ops.DistInfo(rank=0, world_size=2, device=torch.device("cuda", 0))


class Lines:
    """A RunLog stand-in that keeps the lines."""

    def __init__(self):
        self.lines = []

    def info(self, message):
        self.lines.append(message)


# ------------------------------------------------------------------------------------------------
# training waits for the device only at print steps, and logs what it logged before
# ------------------------------------------------------------------------------------------------
#: Tensor methods that make the host wait for the device (on a GPU) when called on a device tensor.
SYNCING = ("item", "tolist", "cpu", "numpy", "__float__", "__int__", "__bool__", "__index__")
#: The training loop's own code (the model's and PyTorch's are not what these tests are about).
LOOP_FILES = {str(REPO / "ops" / "training.py"), str(REPO / "ops" / "metrics.py")}


@pytest.fixture(scope="module")
def spied_epoch():
    """One training epoch of 5 steps (print steps 0 and 4) with every syncing call of the loop attributed to
    its step, and the terms, top-1 and batch size of every step recorded as the old loop read them."""
    args = config.parse_args(TINY + ["--device", "cpu", "--print-freq", "4", "--iters_per_epoch", "5", "--lr", "0.01"])
    torch.manual_seed(0)
    model = build.build_model(args, 5, CPU)
    objective, optimizer = build.build_objective(args), build.build_optimizer(args, model)
    loader = random_video_loader(batch_size=2, size=10)
    step, calls, recorded, recording = [-1], {}, [], [False]

    def recording_objective(out, target, **kw):
        step[0] += 1
        terms = objective(out, target, **kw)
        recording[0] = True  # the test's own reads are not the loop's
        recorded.append((terms.as_floats(), topk_accuracy(out.logits.detach().float(), target, ks=(1,))[0],
                         target.shape[0]))
        recording[0] = False
        return terms

    originals = {name: getattr(torch.Tensor, name) for name in SYNCING}

    def spy(name):
        def call(self, *a, **kw):
            if not recording[0] and sys._getframe(1).f_code.co_filename in LOOP_FILES:
                calls[step[0]] = calls.get(step[0], 0) + 1
            return originals[name](self, *a, **kw)
        return call

    def as_floats(self):  # every loss term read at once, wherever it is called from
        if not recording[0]:
            calls[step[0]] = calls.get(step[0], 0) + 1
        return plain_as_floats(self)

    plain_as_floats = ObjectiveTerms.as_floats
    log = Lines()
    mp = pytest.MonkeyPatch()
    try:
        for name in SYNCING:
            mp.setattr(torch.Tensor, name, spy(name))
        mp.setattr(ObjectiveTerms, "as_floats", as_floats)
        stats = training.train_one_epoch(model, recording_objective, loader, optimizer, None, 0, args, CPU, log)
    finally:
        mp.undo()
    return stats, calls, recorded, log.lines


def test_training_reads_the_device_only_at_print_steps(spied_epoch):
    stats, calls, recorded, lines = spied_epoch
    assert len(recorded) == 5
    assert calls.get(0, 0) > 0 and calls.get(4, 0) > 0  # the print steps read (the spy works)
    assert [calls.get(s, 0) for s in (1, 2, 3)] == [0, 0, 0]  # the steps between them never wait


def _old_averages(recorded):
    """The running means as the loop computed them at every step before: Python floats, sample-weighted."""
    sums, count = {}, 0
    for values, top1, n in recorded:
        for k, v in list(values.items()) + [("top1", top1)]:
            sums[k] = sums.get(k, 0.0) + float(v) * n
        count += n
    return {k: sums[k] / count for k in sorted(sums)}


def test_logged_averages_are_those_of_every_step(spied_epoch):
    stats, calls, recorded, lines = spied_epoch
    expected = _old_averages(recorded)
    assert {k: v for k, v in stats.items() if k != "time_s"} == expected  # bit for bit
    assert [line.split("]")[0] for line in lines] == ["epoch 0 [1/5", "epoch 0 [5/5"]
    assert lines[0].endswith(" ".join(f"{k} {v:.4f}" for k, v in _old_averages(recorded[:1]).items()))
    assert lines[1].endswith(" ".join(f"{k} {v:.4f}" for k, v in expected.items()))


def test_a_non_finite_loss_stops_at_the_next_print_step_naming_its_step_and_terms():
    args = config.parse_args(TINY + ["--device", "cpu", "--print-freq", "4", "--iters_per_epoch", "5"])
    torch.manual_seed(0)
    model = build.build_model(args, 5, CPU)
    objective, optimizer = build.build_objective(args), build.build_optimizer(args, model)
    seen = []

    def poisoned(out, target, **kw):  # step 3 (of 5, from 1) gets a NaN temporal term
        terms = objective(out, target, **kw)
        seen.append(1)
        if len(seen) == 3:
            nan = torch.tensor(float("nan"))
            terms = dataclasses.replace(terms, temporal=terms.temporal * nan, total=terms.total * nan)
        return terms

    with pytest.raises(FloatingPointError) as error:
        training.train_one_epoch(model, poisoned, random_video_loader(batch_size=2, size=10), optimizer, None, 0, args,
                                 CPU, Lines())
    assert len(seen) == 5  # it ran on to the print step
    assert str(error.value).startswith("non-finite loss at epoch 0, step 3/5 (terms: total, temporal; found when "
                                       "steps 2-5 were read, every --print-freq steps); the run stops")


def test_check_finite_reports_another_process(monkeypatch):
    monkeypatch.setattr(dist_ops, "all_reduce_sum", lambda tensor, info: tensor + 1)  # another rank saw one
    info = dist_ops.DistInfo(world_size=2)
    with pytest.raises(FloatingPointError, match=r"epoch 3, steps 21-40/60, on another process; .* --amp_dtype bfloat16"):
        training.check_finite(torch.zeros(20, 8, dtype=torch.float64), ["total"] * 8, info, 3, 20, 60, float16=True)
    training.check_finite(torch.zeros(20, 8, dtype=torch.float64), ["total"] * 8, CPU, 3, 20, 60)  # finite: no error


# ------------------------------------------------------------------------------------------------
# device settings and their errors
# ------------------------------------------------------------------------------------------------
def _settings(*flags, info=CPU, bf16_problem=lambda device: None):
    return device_setup.device_settings(config.parse_args(TINY + list(flags)), info, bf16_problem=bf16_problem)


def test_defaults_per_device():
    cpu = _settings()
    assert (cpu.channels_last, cpu.cudnn_benchmark, cpu.compile, cpu.train_autocast, cpu.grad_scaler) == \
        (False, False, False, None, False)
    cuda = _settings(info=CUDA_1)
    assert (cuda.channels_last, cuda.cudnn_benchmark) == (True, True)
    assert cuda.describe() == ("backbones in float32 for training, float32 for evaluation; channels-last 2-D encoders; "
                               "eager encoders; cudnn.benchmark on; pinned-memory loaders")
    off = _settings("--no-channels_last", "--no-cudnn_benchmark", "--compile", info=CUDA_1)
    assert (off.channels_last, off.cudnn_benchmark, off.compile) == (False, False, True)


def test_channels_last_on_a_cpu_is_honoured():
    assert _settings("--channels_last").channels_last


def test_precision_per_phase():
    fp16 = _settings("--amp", "--amp_dtype", "float16", info=CUDA_1)
    assert (fp16.train_autocast, fp16.eval_autocast, fp16.grad_scaler) == (torch.float16, None, True)
    bf16 = _settings("--amp", "--eval_amp")
    assert (bf16.train_autocast, bf16.eval_autocast, bf16.grad_scaler) == (torch.bfloat16, torch.bfloat16, False)
    assert "bfloat16 autocast for training, bfloat16 autocast for evaluation" in bf16.describe()
    # --amp_dtype alone changes nothing (it is the type --amp uses); the settings line shows float32
    alone = _settings("--amp_dtype", "float16")
    assert (alone.train_autocast, alone.eval_autocast) == (None, None)
    assert alone.describe().startswith("backbones in float32 for training, float32 for evaluation")
    # an evaluation of a float16 preset on a CPU is float32, as officially
    assert _settings("--amp", "--amp_dtype", "float16", "--evaluate").train_autocast is None


def test_float16_training_on_a_cpu_is_one_clear_error():
    with pytest.raises(SystemExit, match=r"^--amp --amp_dtype float16: float16 training needs CUDA's gradient scaler "
                                         r"and this run trains on the CPU; pass --amp_dtype bfloat16"):
        _settings("--amp", "--amp_dtype", "float16")


def test_bfloat16_on_a_gpu_without_it_is_one_clear_error():
    problem = lambda device: "Tesla V100 (compute capability 7.0) has no bfloat16 arithmetic (8.0 or later)"  # noqa: E731
    with pytest.raises(SystemExit, match=r"^--amp_dtype bfloat16: Tesla V100 .*; pass --amp_dtype float16$"):
        _settings("--amp", info=CUDA_1, bf16_problem=problem)
    with pytest.raises(SystemExit, match="--amp_dtype bfloat16"):
        _settings("--amp", "--eval_amp", "--evaluate", info=CUDA_1, bf16_problem=problem)
    assert _settings("--amp", "--amp_dtype", "float16", info=CUDA_1, bf16_problem=problem).grad_scaler
    assert _settings(info=CUDA_1, bf16_problem=problem).train_autocast is None  # not asked: no error


def test_sync_bn_needs_several_cuda_processes_in_training_only():
    for info in (CPU, CUDA_1):
        with pytest.raises(SystemExit, match=r"^--sync_bn synchronises BatchNorm over several CUDA processes"):
            _settings("--sync_bn", info=info)
    assert _settings("--sync_bn", info=CUDA_2).sync_bn
    assert not _settings("--sync_bn", "--evaluate", info=CPU).sync_bn  # evaluation uses running statistics


def test_a_flag_the_device_cannot_honour_stops_main_with_one_line(tmp_path, capsys):
    argv = TINY + ["--device", "cpu", "--amp", "--amp_dtype", "float16", "--root_log", str(tmp_path / "runs"),
                   "--data_dir", str(tmp_path / "data")]
    assert cli.run_main(main.main, argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --amp --amp_dtype float16: float16 training needs CUDA's")
    assert not (tmp_path / "runs").exists()  # stopped before anything was written or generated
    assert not (tmp_path / "data").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message for a machine without CUDA")
def test_device_cuda_without_cuda_is_one_clear_error():
    with pytest.raises(SystemExit, match=r"^--device cuda: no CUDA device is available"):
        dist_ops.init_distributed(device="cuda")


# ------------------------------------------------------------------------------------------------
# channels-last and compiled encoders
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", ["mn2_r50", "tsm"])
def test_channels_last_encoders_compute_the_same(variant):
    args = config.parse_args(TINY + ["--device", "cpu", "--variant", variant, "--channels_last"])
    torch.manual_seed(0)
    model = build.build_model(args, 5, CPU).eval()
    plain = build.build_model(config.parse_args(TINY + ["--device", "cpu", "--variant", variant]), 5, CPU).eval()
    plain.load_state_dict(model.state_dict())
    conv = next(m for m in model.focus.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_contiguous()
    assert model.glance.memory_format == model.focus.memory_format == torch.channels_last
    video = random_video(batch=2, seed=1)
    with torch.no_grad():
        torch.testing.assert_close(model(video).exit_logits, plain(video).exit_logits, atol=1e-5, rtol=1e-5)


def test_x3d_encoders_keep_their_layout():
    args = config.parse_args(TINY + ["--device", "cpu", "--variant", "x3d", "--glance_arch", "x3d_s", "--focus_arch",
                                     "x3d_l", "--glance_size", "32", "--channels_last"])
    assert device_setup.use_channels_last(build.build_model(args, 5, CPU)) == []


@pytest.fixture(scope="module")
def synthetic_data(tmp_path_factory):
    from datasets import synthetic

    root = tmp_path_factory.mktemp("synthetic") / "data"
    options = {"train_videos": 4, "val_videos": 2, "frames_per_video": 10, "frame_size": 64, "num_classes": 3}
    synthetic.ensure_generated(str(root), workers=1, **options)
    return root, options


def _dynamo_problem():
    """Why torch.compile cannot run here (this Python or platform), or None."""
    try:
        torch._dynamo.eval_frame.check_if_dynamo_supported()
    except RuntimeError as exc:
        return str(exc)
    return None


@pytest.mark.skipif(_dynamo_problem() is not None, reason=f"torch.compile unavailable: {_dynamo_problem()}")
def test_compile_trains_and_saves_the_uncompiled_keys(synthetic_data, tmp_path, monkeypatch):
    """--compile through main.py: a training step runs the encoders through torch.compile and the checkpoint has
    the keys of an uncompiled run. TorchDynamo traces as always; the backend is ``aot_eager`` (inductor's own
    code generation took 145 s for this tiny model on a 2-core CPU; the GPU check compiles with inductor)."""
    data, options = synthetic_data
    graphs = []
    aot_eager = torch._dynamo.lookup_backend("aot_eager")

    def recording_backend(gm, example_inputs):
        graphs.append(gm)
        return aot_eager(gm, example_inputs)

    plain_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: plain_compile(fn, backend=recording_backend))
    common = TINY + ["--device", "cpu", "--data_dir", str(data), "--synthetic", json.dumps(options), "--root_log",
                     str(tmp_path), "--epochs", "1", "--iters_per_epoch", "1", "--batch_size", "2", "--eval_freq", "0"]
    torch._dynamo.reset()
    try:
        assert main.main(common + ["--store_name", "compiled", "--compile"]) == 0
    finally:
        torch._dynamo.reset()
    assert graphs  # the training step went through the compiled encoders
    assert main.main(common + ["--store_name", "eager"]) == 0
    log = (tmp_path / "compiled" / "log.txt").read_text()
    assert "--compile: the glance and focus encoders compile at their first call" in log
    assert "torch.compile'd encoders" in log
    compiled = torch.load(tmp_path / "compiled" / "ckpt.pth.tar", weights_only=True)["model"]
    eager = torch.load(tmp_path / "eager" / "ckpt.pth.tar", weights_only=True)["model"]
    assert list(compiled) == list(eager) and not any("_orig_mod" in k for k in compiled)
    for key in eager:  # the same training, compiled or not
        torch.testing.assert_close(compiled[key], eager[key], atol=1e-4, rtol=1e-4)


# ------------------------------------------------------------------------------------------------
# the GPU benchmark's code and the GPU check, on a CPU
# ------------------------------------------------------------------------------------------------
def _script(args, timeout=300):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return entry_points.run(args, env=env, timeout=timeout)


def test_benchmark_runs_its_sides_alternated_at_toy_sizes(tmp_path):
    out = tmp_path / "model.json"
    run = _script([sys.executable, "-m", "scripts.bench_gpu", "--device", "cpu", "--tiny", "--batch", "2", "--steps",
                   "2", "--warmup_steps", "1", "--eval_batch", "2", "--eval_iters", "1", "--rounds", "2", "--json",
                   str(out)])
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(out.read_text())
    assert list(result["sides"]) == ["fp32", "fast"]
    assert all(len(side["rounds"]["train"]) == 2 and side["train_videos_per_s"] > 0 for side in result["sides"].values())
    assert "bfloat16 autocast" in result["sides"]["fast"]["settings"]
    assert set(result["ratios"]["fast/fp32"]) == {"train", "eval"}
    assert "round 2: fp32 train" in run.stdout and "x fp32)" in run.stdout


def test_benchmark_takes_a_presets_sizes_and_the_channels_last_side(tmp_path):
    out = tmp_path / "preset.json"
    run = _script([sys.executable, "-m", "scripts.bench_gpu", "--device", "cpu", "--config", "configs/synthetic.yaml",
                   "--sides", "fp32", "channels_last", "adamw_loop", "--batch", "1", "--steps", "1",
                   "--warmup_steps", "1", "--eval_batch", "1", "--eval_iters", "1", "--rounds", "1", "--json", str(out)])
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["config"].startswith("configs/synthetic.yaml: mn2_r50, P=56, T0=16, T_G=16, T_L=2, 160 px")
    assert "encoders in the default memory format" in result["sides"]["fp32"]["settings"]
    assert "channels-last 2-D encoders" in result["sides"]["channels_last"]["settings"]
    assert "float32 for training" in result["sides"]["channels_last"]["settings"]
    assert set(result["ratios"]["channels_last/fp32"]) == {"train", "eval"}
    assert result["sides"]["channels_last"]["optimizer"] == "AdamW (fused)"  # the preset's AdamW, on a CPU
    assert result["sides"]["adamw_loop"]["optimizer"] == "AdamW"


def test_loader_benchmark_reads_written_jpeg_folders(tmp_path):
    out = tmp_path / "loader.json"
    run = _script([sys.executable, "-m", "scripts.bench_gpu", "--device", "cpu", "--tiny", "--loader", "--workers",
                   "2", "--videos", "2", "--frames", "10", "--frame_size", "96x64", "--repeat", "4", "--batch", "2",
                   "--loader_seconds", "1", "--json", str(out)])
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["clips"] > 0 and result["clips_per_s"] > 0 and result["workers"] == 2
    assert result["pin_memory"] is False  # pinned memory is for CUDA runs


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the exit of a machine without CUDA")
def test_gpu_check_without_cuda_says_so_and_exits_0(tmp_path):
    out = tmp_path / "check"
    run = _script(["bash", "scripts/gpu_check.sh", str(out), "--no-tests"], timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "no CUDA device: nothing to check" in run.stdout
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["environment"]["cuda"] is False and report["message"] == "no CUDA device: nothing to check"
    assert "**no CUDA device: nothing to check.**" in (out / "gpu_check.md").read_text()


def test_gpu_check_usage():
    run = _script(["bash", "scripts/gpu_check.sh"], timeout=60)
    assert run.returncode == 2 and run.stderr.startswith("usage: ")


def test_gpu_check_summary_and_verdict(tmp_path):
    from scripts import gpu_check

    xml = tmp_path / "t.xml"
    xml.write_text('<testsuites><testsuite><testcase classname="tests.test_gpu" name="a"/>'
                   '<testcase classname="tests.test_gpu" name="b"><failure message="x"/></testcase>'
                   '<testcase classname="tests.test_gpu" name="c"><skipped message="no fixtures"/></testcase>'
                   '<testcase classname="tests.test_gpu" name="d"><skipped message="no fixtures"/></testcase>'
                   '</testsuite></testsuites>')
    tests = {"status": "exit status 1", "seconds": 12.0, **gpu_check.junit_counts(xml)}
    assert (tests["passed"], tests["failed"], tests["skipped"]) == (1, 1, 2)
    assert tests["failures"] == ["tests.test_gpu::b"] and tests["skip_reasons"] == {"no fixtures": 2}
    side = {"train_videos_per_s": 10.0, "eval_videos_per_s": 40.0, "warmup_s": 3.0}
    model = {"status": "ok", "result": {"config": "mn2_r50, P=128", "sides": {"fp32": side, "fast": {
        **side, "train_videos_per_s": 25.0, "eval_videos_per_s": 120.0}}, "ratios": {"fast/fp32": {"train": 2.5,
                                                                                                    "eval": 3.0}},
        "syncs_per_training_step": {"side": "fast", "count": 1.0,
                                    "sites": {"ops/training.py:12 (x.item())": 1.0}}}}
    loader = {"status": "ok", "result": {"clips_per_s": 50.0, "clip": "T0=48", "workers": 16, "batch": 8,
                                         "pin_memory": True}}
    report = {"environment": {"torch": "2.x", "cuda_runtime": "13.0", "cudnn": 9, "python": "3.11", "cpus": 16,
                              "cuda": True, "gpus": [{"name": "NVIDIA H200", "capability": "9.0", "memory_gib": 139.8}]},
              "seconds": 300.0, "tests": tests, "model": model, "loader": loader, "compile_skipped": "--no-compile"}
    text = gpu_check.summary_markdown(report)
    assert "* device: NVIDIA H200 (compute capability 9.0, 139.8 GiB)" in text
    assert "1 passed, 1 failed, 0 errors, 2 skipped" in text and "* failed: `tests.test_gpu::b`" in text
    assert "| settings: fast | 25.0 | 120.0 | 2.50x | 3.00x | 3 s |" in text
    assert "Host synchronisations per training step outside the print steps (fast): 1.0." in text
    assert "* 1 per step at `ops/training.py:12 (x.item())`" in text
    assert "the loader delivers 2.00x that (enough)" in text and "torch.compile: not measured (--no-compile)" in text
    assert not gpu_check.passed(report)
    tests.update(failed=0, failures=[], status="ok")
    assert gpu_check.passed(report)
    report["compile"] = {"status": "timed out after 100 s"}
    assert gpu_check.passed(report)
    report["compile"] = {"status": "exit status 1"}
    assert not gpu_check.passed(report)


def test_gpu_check_runs_the_loader_benchmark_as_its_loader_part(tmp_path, monkeypatch):
    """The loader part is ``bench_gpu --loader`` (without the flag it would time the model a second time), and a
    loader part without clips/s fails the check instead of breaking the summary."""
    from scripts import gpu_check

    calls = {}

    def fake_bench(name, args, out_dir, timeout):
        calls[name] = args
        side = {"train_videos_per_s": 10.0, "eval_videos_per_s": 40.0, "warmup_s": 3.0, "flags": []}
        if "--loader" in args:
            return {"status": "ok", "seconds": 1.0, "result": {"clips_per_s": 50.0, "clip": "T0=48", "workers": 16,
                                                               "batch": 8, "pin_memory": True}}
        return {"status": "ok", "seconds": 1.0, "result": {"config": "c", "sides": {"fp32": side}, "ratios": {}}}

    environment = {"torch": "2.x", "cuda_runtime": "13.0", "cudnn": 9, "python": "3.11", "cpus": 16, "cuda": True,
                   "gpus": [{"name": "NVIDIA H200", "capability": "9.0", "memory_gib": 139.8}]}
    monkeypatch.setattr(gpu_check, "environment", lambda: environment)
    monkeypatch.setattr(gpu_check, "run_bench", fake_bench)
    assert gpu_check.main([str(tmp_path), "--no-tests", "--no-compile"]) == 0
    assert "--loader" in calls["loader"] and "--loader" not in calls["model"]
    assert "Loader: 50.0 clips/s" in (tmp_path / "gpu_check.md").read_text()

    report = json.loads((tmp_path / "gpu_check.json").read_text())
    report["loader"]["result"] = {"config": "c", "sides": {}, "ratios": {}}  # the model's figures, as before the fix
    assert "Loader: ok: no clips/s in its figures." in gpu_check.summary_markdown(report)
    assert not gpu_check.passed(report)
