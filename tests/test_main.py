"""main.py: command line, launchers, exact distributed evaluation, resuming after a crash (CPU, gloo)."""
import json
import os
import shlex
import signal
import sys
import time

import pytest
import torch

import entry_points
from support import REPO

from ops import config, flags

OFFICIAL_ACTNET = """
  --glance_arch mbv2 --dataset actnet --data_dir PATH_TO_DATASET   \\
  --root_log LOG_DIR  \\
  --workers 16 --num_segments 48 --dropout 0.2  --fc_dropout 0.2   \\
  --epochs 50 --lr 0.002 --lr_type cos --lr_steps 0 0   \\
  --batch_size 32 --momentum 0.9 --weight_decay 2e-4   \\
  --patch_size 128 --global_lr_ratio 0.5 --stn_lr_ratio 0.2 --classifier_lr_ratio 20.0 --temporal_lr_ratio 0.2 --KL_ratio 0.0 --norm_ratio 1.00  \\
  --hidden_dim 1024 --stn_hidden_dim 128 --temporal_hidden_dim 64 \\
  --num_glance_segments 16 --num_focus_segments 16 --temperature 1.0
"""


def _argv(text):
    return shlex.split(text.replace("\\\n", " "))


def test_official_command_parses_with_the_official_meaning():
    args = config.parse_args(["--local-rank=3"] + _argv(OFFICIAL_ACTNET) + ["--evaluate", "--resume", "ckpt/actnet_p128.pth.tar"])
    assert args.local_rank == 3 and args.evaluate and args.resume == "ckpt/actnet_p128.pth.tar"
    assert (args.dataset, args.patch_size, args.batch_size, args.lr, args.weight_decay) == ("actnet", 128, 32, 0.002, 2e-4)
    assert args.classifier_dim == 4096 and args.lr_steps == [0.0, 0.0] and args.KL_ratio == 0.0
    assert "hidden_dim" in args.explicit
    assert config.parse_args(["--local_rank", "1"]).local_rank == 1


def test_every_flag_parses_under_its_yaml_key_too():
    # A YAML key (the flag's dest) is also a command-line spelling, next to the official one (--print-freq).
    actions = [a for a in flags.get_args_parser()._actions if a.option_strings and a.dest != "help"]
    assert [a.dest for a in actions if f"--{a.dest}" not in a.option_strings] == []
    for flag in ("--print-freq", "--print_freq", "-p"):
        assert config.parse_args([flag, "7"]).print_freq == 7


def test_config_file_sets_defaults_and_the_command_line_wins(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("dataset: fcvid\nlr: 0.004\nbatch_size: 64\n")
    args = config.parse_args(["--config", str(cfg), "--lr", "0.01"])
    assert (args.dataset, args.lr, args.batch_size) == ("fcvid", 0.01, 64)
    bad = tmp_path / "bad.yaml"
    bad.write_text("learning_rate_typo: 1\n")
    with pytest.raises(SystemExit):
        config.parse_args(["--config", str(bad)])


# ------------------------------------------------------------------------------------------------
# Runs of main.py on a tiny synthetic dataset
# ------------------------------------------------------------------------------------------------
TINY = ("--dataset synthetic --num_segments 8 --num_glance_segments 4 --num_focus_segments 4 --input_size 64 "
        "--patch_size 32 --focus_arch resnet18 --classifier_dim 32 --stn_hidden_dim 16 --temporal_hidden_dim 8 "
        "--no-pretrained --workers 0 --device cpu --lr 0.01 --print-freq 1 --no-tensorboard --num_visualised 1")
SYNTHETIC = {"train_videos": 12, "val_videos": 7, "frames_per_video": 12, "frame_size": 64, "num_classes": 3,
             "num_distractors": [1, 2]}


#: Where the frames come from: JPEG frame folders, or one lossless video file per video (--video_files).
SOURCES = {"frames": (SYNTHETIC, []), "videos": (dict(SYNTHETIC, video_files=True), ["--video_files"])}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    from datasets import synthetic

    root = tmp_path_factory.mktemp("synthetic") / "data"
    synthetic.ensure_generated(str(root), workers=1, **SYNTHETIC)
    return root


@pytest.fixture(scope="module")
def video_data_dir(tmp_path_factory):
    from datasets import synthetic

    root = tmp_path_factory.mktemp("synthetic_videos") / "data"
    synthetic.ensure_generated(str(root), workers=1, **SOURCES["videos"][0])
    return root


def _source(request, source):
    """(data folder, main.py arguments) of the tiny synthetic set stored as ``source`` (a key of SOURCES)."""
    options, flags = SOURCES[source]
    folder = request.getfixturevalue("data_dir" if source == "frames" else "video_data_dir")
    return folder, ["--synthetic", json.dumps(options)] + flags


def _env(threads=1):
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    return env


def _check(result):
    assert result.returncode == 0, \
        f"{' '.join(map(str, result.args))}\nSTDOUT\n{result.stdout[-3000:]}\nSTDERR\n{result.stderr[-3000:]}"
    return result


def _run(cmd, cwd=REPO, timeout=420, env=None):
    """Run a command as a user does (forked from the test server: tests/entry_points.py); must succeed."""
    return _check(entry_points.run(cmd, cwd=cwd, env=env or _env(), timeout=timeout))


def _run_side_by_side(*cmds, timeout=420):
    """Independent one-thread commands, two at a time (one per core); each must succeed."""
    return [_check(r) for r in entry_points.run_many(list(cmds), env=_env(), timeout=timeout)]


def _main_args(data_dir, root, *extra):
    return ["main.py"] + TINY.split() + ["--data_dir", str(data_dir), "--synthetic", json.dumps(SYNTHETIC),
                                         "--root_log", str(root)] + list(extra)


@pytest.mark.parametrize("source", ["frames", "videos"])
def test_two_process_evaluation_equals_one_process(request, tmp_path, source):
    """7 validation videos over 2 processes: same per-video predictions and metrics as 1 process (from frame
    folders, and from video files, where each process decodes its share of the videos)."""
    data_dir, data_args = _source(request, source)
    root = tmp_path / "runs"
    _run([sys.executable] + _main_args(data_dir, root, "--epochs", "1", "--iters_per_epoch", "2", "--batch_size", "4",
                                       "--store_name", "train", *data_args))
    ckpt = root / "train" / "ckpt.pth.tar"
    common = ["--evaluate", "--resume", str(ckpt), "--save_predictions", "--val_batch_size", "2", *data_args]
    _run([sys.executable] + _main_args(data_dir, root, "--store_name", "one", *common))
    _run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone"]
         + _main_args(data_dir, root, "--store_name", "two", *common))
    one = torch.load(root / "one" / "predictions_eval.pt", weights_only=True)
    two = torch.load(root / "two" / "predictions_eval.pt", weights_only=True)
    assert one["index"].tolist() == list(range(7)) == two["index"].tolist()
    torch.testing.assert_close(two["prediction"], one["prediction"], atol=1e-5, rtol=1e-5)
    assert torch.equal(one["focus_indices"], two["focus_indices"])
    m1 = json.loads((root / "one" / "metrics_eval.json").read_text())["metrics"]
    m2 = json.loads((root / "two" / "metrics_eval.json").read_text())["metrics"]
    assert m1["num_videos"] == m2["num_videos"] == 7
    for key in ("score", "prediction_top1", "all_exits_top1", "glance_head_top1", "focus_head_top1"):
        assert m1[key] == pytest.approx(m2[key], abs=1e-6), key
    assert m1["loss"] == pytest.approx(m2["loss"], rel=1e-5)


VARIANTS = {"mn2_r50": [], "tsm": ["--variant", "tsm"],
            "x3d": ["--variant", "x3d", "--glance_arch", "x3d_s", "--focus_arch", "x3d_l", "--glance_size", "32"],
            # AdaFocusV2: every one of the 8 frames is a glance and a focus frame; the Sth-Sth form samples its 4
            # glance frames apart from its 6 focus frames
            "adafocus_v2": ["--variant", "adafocus_v2"],
            "adafocus_v2_tsm": ["--variant", "adafocus_v2_tsm", "--num_segments", "6", "--num_glance_segments", "4",
                                "--num_focus_segments", "6"]}


# Each variant under the official launcher (which passes --local-rank), and torchrun (which passes the rank in
# the environment) once: how the rank arrives does not depend on the variant.
@pytest.mark.parametrize("launcher, variant", [("torch.distributed.launch", "mn2_r50"),
                                               ("torch.distributed.launch", "tsm"),
                                               ("torch.distributed.launch", "x3d"),
                                               ("torch.distributed.run", "mn2_r50"),
                                               ("torch.distributed.launch", "adafocus_v2"),
                                               ("torch.distributed.run", "adafocus_v2_tsm")])
def test_both_launchers_start_a_two_process_training(data_dir, tmp_path, launcher, variant):
    root = tmp_path / "runs"
    _run([sys.executable, "-m", launcher, "--nproc_per_node=2", "--standalone"]
                  + _main_args(data_dir, root, "--epochs", "1", "--iters_per_epoch", "2", "--batch_size", "4",
                               "--store_name", "ddp", "--eval_freq", "0", *VARIANTS[variant]))
    log = (root / "ddp" / "log.txt").read_text()
    assert "training on 2 process(es)" in log and "(2 per process)" in log
    assert "epoch 0 [2/2]" in log
    ckpt = torch.load(root / "ddp" / "ckpt.pth.tar", weights_only=True)
    assert ckpt["epoch"] == 1 and ckpt["format"] == "uniadafocus" and ckpt["config"]["variant"] == variant


def test_batch_size_must_divide_by_the_processes(data_dir, tmp_path):
    result = entry_points.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone"]
                              + _main_args(data_dir, tmp_path, "--epochs", "1", "--batch_size", "5"),
                              env=_env(), timeout=300)
    assert result.returncode != 0
    assert "--batch_size 5 is the global batch; it must divide by the 2 processes" in result.stdout + result.stderr


def test_spatial_policy_waits_for_its_start_epoch(data_dir, tmp_path):
    root = tmp_path / "runs"
    runs = {"held1": ["--iters_per_epoch", "1", "--stn_start_epoch", "1"],
            "held2": ["--iters_per_epoch", "2", "--stn_start_epoch", "1"], "moving": ["--iters_per_epoch", "2"]}
    common = ["--epochs", "1", "--batch_size", "4", "--eval_freq", "0"]
    _run_side_by_side(*([sys.executable] + _main_args(data_dir, root, *common, "--store_name", name, *extra)
                        for name, extra in runs.items()))

    def spatial_weights(name):
        state = torch.load(root / name / "ckpt.pth.tar", weights_only=True)["model"]
        # The convolutions only: BatchNorm running statistics move in any training forward.
        return {k: v for k, v in state.items() if k.startswith("policy.spatial.") and v.dim() == 5}

    held_1, held_2, moving = (spatial_weights(name) for name in runs)
    assert held_1 and held_1.keys() == held_2.keys() == moving.keys()
    assert all(torch.equal(held_1[k], held_2[k]) for k in held_1)  # one step or two: not moved
    assert not all(torch.equal(held_2[k], moving[k]) for k in held_2)  # without the hold it learns


def _kill_when(proc, ready, what):
    """SIGKILL ``proc`` as soon as ``ready()`` holds (polled every 20 ms)."""
    deadline = time.time() + 300
    while not ready():
        if proc.poll() is not None:
            pytest.fail(f"the run ended before {what}\n{proc.wait().stderr[-3000:]}")
        if time.time() > deadline:
            pytest.fail(f"the run did not reach {what} in 300 s")
        time.sleep(0.02)
    proc.kill(signal.SIGKILL)
    assert proc.wait().returncode == -signal.SIGKILL


def _saved_epoch(path):
    return torch.load(path, weights_only=True)["epoch"] if path.is_file() else 0


# Where the run is killed: at the epoch boundary (as soon as epoch 0's checkpoint is there), or in the
# middle of epoch 1 (once its first step is logged). Both resume from epoch 0's checkpoint and redo epoch 1.
KILL_POINTS = {"boundary": lambda run: _saved_epoch(run / "ckpt.pth.tar") >= 1,
               "mid-epoch": lambda run: (run / "log.txt").is_file() and "epoch 1 [1/2]" in (run / "log.txt").read_text()}


@pytest.mark.parametrize("variant, workers, kill, processes, source", [
    ("mn2_r50", 0, "mid-epoch", 1, "frames"), ("mn2_r50", 2, "mid-epoch", 1, "frames"),
    ("mn2_r50", 2, "boundary", 1, "frames"), ("tsm", 2, "mid-epoch", 1, "frames"), ("tsm", 2, "boundary", 1, "frames"),
    ("x3d", 0, "mid-epoch", 1, "frames"), ("mn2_r50", 1, "mid-epoch", 2, "frames"),
    ("adafocus_v2", 2, "mid-epoch", 1, "frames"), ("adafocus_v2_tsm", 2, "mid-epoch", 1, "frames"),
    ("mn2_r50", 2, "mid-epoch", 1, "videos")])
def test_killed_run_resumes_to_the_same_weights_and_metrics(request, tmp_path, variant, workers, kill, processes,
                                                           source):
    """A run killed and resumed with --resume auto ends bit for bit where an uninterrupted run does. The
    uninterrupted run has no loader workers and the killed one has ``workers`` per process: every random
    choice of an epoch (samples, crops, frame indices, dropout, the random-patch path) depends on the seed,
    the epoch, the rank and the sample, never on the workers or on where the run started; read from video
    files, the frames are the same whichever process decodes them."""
    data_dir, data_args = _source(request, source)
    root = tmp_path / "runs"
    args = ["--epochs", "3", "--iters_per_epoch", "2", "--batch_size", "4", "--seed", "5", *VARIANTS[variant],
            *data_args]
    launcher = [sys.executable] + (["-m", "torch.distributed.run", f"--nproc_per_node={processes}", "--standalone"]
                                   if processes > 1 else [])
    straight = entry_points.start(launcher + _main_args(data_dir, root, *args, "--store_name", "straight"),
                                  env=_env())  # beside the killed run, on the other core

    cmd = launcher + _main_args(data_dir, root, *args, "--store_name", "killed", "--workers", str(workers))
    _kill_when(entry_points.start(cmd, env=_env()), lambda: KILL_POINTS[kill](root / "killed"), f"the {kill} kill")
    assert _saved_epoch(root / "killed" / "ckpt.pth.tar") == 1
    _run(cmd + ["--resume", "auto"])
    _check(straight.wait(timeout=420))

    a = torch.load(root / "straight" / "ckpt.pth.tar", weights_only=True)
    b = torch.load(root / "killed" / "ckpt.pth.tar", weights_only=True)
    assert a["epoch"] == b["epoch"] == 3
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    ma = json.loads((root / "straight" / "metrics.json").read_text())
    mb = json.loads((root / "killed" / "metrics.json").read_text())
    assert ma["final"] == mb["final"] and ma["best"] == mb["best"]
    rows_a = (root / "straight" / "summary.csv").read_text().splitlines()
    rows_b = (root / "killed" / "summary.csv").read_text().splitlines()
    assert len(rows_a) == len(rows_b) == 4


def test_a_resumed_runs_time_counts_its_earlier_segments(data_dir, tmp_path):
    """metrics.json's time_s is the whole run's, across --resume: the checkpoint carries the seconds so far."""
    root = tmp_path / "runs"
    args = [sys.executable] + _main_args(data_dir, root, "--epochs", "1", "--iters_per_epoch", "1", "--batch_size", "4",
                                         "--store_name", "timed", "--eval_freq", "0")
    _run(args)
    path = root / "timed" / "ckpt.pth.tar"
    saved = torch.load(path, weights_only=True)
    first = json.loads((root / "timed" / "metrics.json").read_text())["time_s"]
    assert 0 < first <= saved["time_s"] < 600  # the checkpoint is written after metrics.json
    saved["time_s"] = 1e6  # as if the first segment had taken a million seconds
    torch.save(saved, path)
    _run(args + ["--epochs", "2", "--resume", "auto"])
    resumed = json.loads((root / "timed" / "metrics.json").read_text())
    assert resumed["epochs_done"] == 2 and 1e6 < resumed["time_s"] < 1e6 + 600
    assert torch.load(path, weights_only=True)["time_s"] >= resumed["time_s"]


def test_non_finite_loss_stops_and_keeps_the_last_checkpoint(data_dir, tmp_path):
    root = tmp_path / "runs"
    _run([sys.executable] + _main_args(data_dir, root, "--epochs", "1", "--iters_per_epoch", "1", "--batch_size", "4",
                                       "--store_name", "nan", "--eval_freq", "0"))
    before = (root / "nan" / "ckpt.pth.tar").read_bytes()
    result = entry_points.run([sys.executable] + _main_args(data_dir, root, "--epochs", "2", "--iters_per_epoch", "2",
                                                            "--batch_size", "4", "--store_name", "nan", "--resume",
                                                            "auto", "--lr", "1e30"), env=_env(), timeout=300)
    assert result.returncode != 0
    assert "non-finite loss at epoch 1" in result.stdout + result.stderr
    assert (root / "nan" / "ckpt.pth.tar").read_bytes() == before
