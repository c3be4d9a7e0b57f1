"""A run folder never loses a finished run: refusal to start over, --overwrite, evaluation's own files,
a kill while the best checkpoint is written, model sizes from a checkpoint's configuration."""
import json
import os
import sys

import pytest
import torch

import entry_points
from test_main import _check

TINY = ("--dataset synthetic --num_segments 8 --num_glance_segments 4 --num_focus_segments 4 --input_size 64 "
        "--patch_size 32 --focus_arch resnet18 --classifier_dim 32 --stn_hidden_dim 16 --temporal_hidden_dim 8 "
        "--no-pretrained --workers 0 --device cpu --lr 0.01 --print-freq 1 --no-tensorboard --num_visualised 1")
SYNTHETIC = {"train_videos": 8, "val_videos": 4, "frames_per_video": 10, "frame_size": 64, "num_classes": 3,
             "num_distractors": [1, 2]}
TRAIN = ["--epochs", "2", "--iters_per_epoch", "1", "--batch_size", "4", "--seed", "3"]
RUN_FILES = ("ckpt.pth.tar", "ckpt.best.pth.tar", "metrics.json", "summary.csv", "config.yaml")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    from datasets import synthetic

    root = tmp_path_factory.mktemp("synthetic") / "data"
    synthetic.ensure_generated(str(root), workers=1, **SYNTHETIC)
    return root


def _env():
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("UNIADAFOCUS_DEBUG", None)
    return env


def _data_args(data_dir, root):
    return ["--dataset", "synthetic", "--data_dir", str(data_dir), "--synthetic", json.dumps(SYNTHETIC),
            "--root_log", str(root), "--workers", "0", "--device", "cpu", "--no-tensorboard", "--num_visualised", "0"]


def _main(data_dir, root, *extra):
    return [sys.executable, "main.py"] + TINY.split() + _data_args(data_dir, root)[:6] + ["--root_log", str(root)] + list(extra)


def _call(cmd, ok=True):
    """Run a command as a user does (forked from the test server: tests/entry_points.py)."""
    result = entry_points.run(cmd, env=_env(), timeout=300)
    return _check(result) if ok else result


def _snapshot(folder):
    return {name: (folder / name).read_bytes() for name in RUN_FILES}


@pytest.fixture(scope="module")
def finished(data_dir, tmp_path_factory):
    """A finished two-epoch run: (root_log, run folder, its command)."""
    root = tmp_path_factory.mktemp("runs")
    cmd = _main(data_dir, root, *TRAIN, "--store_name", "done")
    _call(cmd)
    return root, root / "done", cmd


def test_rerunning_a_finished_run_refuses_and_leaves_it_byte_identical(finished, data_dir):
    root, run, cmd = finished
    before = _snapshot(run)
    result = _call(cmd, ok=False)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(run) in lines[0]
    assert "--resume auto" in lines[0] and "--overwrite" in lines[0] and "Traceback" not in result.stderr
    assert _snapshot(run) == before

    # An evaluation in the run folder writes its own files only.
    _call(_main(data_dir, root, "--store_name", "done", "--evaluate", "--resume", str(run / "ckpt.best.pth.tar")))
    assert _snapshot(run) == before
    assert (run / "metrics_eval.json").is_file() and (run / "config_eval.yaml").is_file()
    # --resume auto of the finished run changes nothing either (it has nothing left to do).
    _call(cmd + ["--resume", "auto"])
    assert {k: v for k, v in _snapshot(run).items() if k != "config.yaml"} == \
        {k: v for k, v in before.items() if k != "config.yaml"}
    assert "==== " in (run / "log.txt").read_text() and "session: " in (run / "log.txt").read_text()


def test_overwrite_starts_over(data_dir, tmp_path):
    cmd = _main(data_dir, tmp_path, *TRAIN, "--store_name", "again")
    _call(cmd)
    (tmp_path / "again" / ".tmp-metrics.json-leftover").write_text("partial")
    _call(cmd + ["--epochs", "1", "--overwrite"])
    run = tmp_path / "again"
    assert torch.load(run / "ckpt.pth.tar", weights_only=True)["epoch"] == 1
    assert json.loads((run / "metrics.json").read_text())["epochs_done"] == 1
    assert len((run / "summary.csv").read_text().splitlines()) == 2
    assert not [n for n in os.listdir(run) if n.startswith(".tmp-")]
    assert (run / "log.txt").read_text().count(" session: ") == 2


KILL_WHILE_WRITING_BEST = """
import os, sys, torch
sys.path.insert(0, os.getcwd())  # the repository: this script runs from a temporary folder
real_save = torch.save
def dying_save(obj, f, *args, **kwargs):
    name = os.path.basename(os.readlink(f"/proc/self/fd/{f.fileno()}")) if hasattr(f, "fileno") else ""
    if name.startswith(".tmp-ckpt.best.pth.tar") and isinstance(obj, dict) and obj.get("epoch") == 2:
        f.write(b"half a checkpoint")
        f.flush()
        os._exit(9)
    return real_save(obj, f, *args, **kwargs)
torch.save = dying_save
sys.argv = ["main.py"] + sys.argv[1:]
import main
sys.exit(main.main())
"""


def test_a_kill_while_the_last_best_checkpoint_is_written_is_repaired_by_resume(data_dir, tmp_path):
    # --eval_freq 0: one validation, after the last epoch, so its best checkpoint (epoch 2) is written
    # whatever the scores are
    cmd = _main(data_dir, tmp_path, *TRAIN, "--eval_freq", "0", "--store_name", "killed")
    script = tmp_path / "main_dying_while_writing_best.py"
    script.write_text(KILL_WHILE_WRITING_BEST)
    killed = entry_points.run([sys.executable, str(script)] + cmd[2:], env=_env(), timeout=300)
    assert killed.returncode == 9, killed.stderr[-2000:]
    run = tmp_path / "killed"
    assert [n for n in os.listdir(run) if n.startswith(".tmp-ckpt.best")]
    assert torch.load(run / "ckpt.pth.tar", weights_only=True)["epoch"] == 1  # written after the best one
    _call(cmd + ["--resume", "auto"])
    best = torch.load(run / "ckpt.best.pth.tar", weights_only=True)
    last = torch.load(run / "ckpt.pth.tar", weights_only=True)
    assert last["epoch"] == 2 and best["epoch"] in (1, 2) and best["format"] == "uniadafocus"
    assert json.loads((run / "metrics.json").read_text())["epochs_done"] == 2
    assert not [n for n in os.listdir(run) if n.startswith(".tmp-")]


def test_evaluation_takes_the_model_sizes_from_the_checkpoint(finished, data_dir, tmp_path):
    root, run, _ = finished
    ckpt = str(run / "ckpt.pth.tar")
    # Four evaluations of the finished run, two at a time: with the model's flags, without them, with a
    # contradicting flag, and from the run's own config.yaml.
    flags, bare, wrong, from_config = entry_points.run_many([
        _main(data_dir, tmp_path, "--store_name", "flags", "--evaluate", "--resume", ckpt, "--workers", "999",
              "--val_batch_size", "2"),
        [sys.executable, "main.py"] + _data_args(data_dir, tmp_path)
        + ["--store_name", "bare", "--evaluate", "--resume", ckpt, "--val_batch_size", "2"],
        [sys.executable, "main.py"] + _data_args(data_dir, tmp_path)
        + ["--store_name", "wrong", "--evaluate", "--resume", ckpt, "--patch_size", "48"],
        [sys.executable, "main.py", "--config", str(run / "config.yaml"), "--root_log", str(tmp_path),
         "--store_name", "fromconfig", "--evaluate", "--resume", ckpt]], env=_env(), timeout=300)
    for result in (flags, bare, from_config):
        _check(result)
    log = (tmp_path / "flags" / "log.txt").read_text()
    assert "--workers 999: capped to the" in log
    assert "eval [2/2]" in log  # a plain progress line: the log is not a terminal
    with_flags = json.loads((tmp_path / "flags" / "metrics_eval.json").read_text())["metrics"]
    bare = json.loads((tmp_path / "bare" / "metrics_eval.json").read_text())["metrics"]
    for key in ("score", "prediction_top1", "all_exits_top1", "loss"):
        assert bare[key] == pytest.approx(with_flags[key], abs=1e-6), key

    assert wrong.returncode == 2 and "Traceback" not in wrong.stderr
    assert "--patch_size 48" in wrong.stderr and "patch_size 32" in wrong.stderr
    assert not (tmp_path / "wrong").exists()

    # The run's own config.yaml is a valid --config.
    again = json.loads((tmp_path / "fromconfig" / "metrics_eval.json").read_text())["metrics"]
    assert again["score"] == pytest.approx(with_flags["score"], abs=1e-6)


def test_a_run_that_fails_before_writing_leaves_no_folder(data_dir, tmp_path):
    result = _call(_main(data_dir, tmp_path, *TRAIN, "--store_name", "never", "--batch_size", "64"), ok=False)
    assert result.returncode == 2 and "fewer than --batch_size 64" in result.stderr
    assert not (tmp_path / "never").exists()


def test_atomic_files_honour_the_umask(tmp_path):
    from datasets.files import write_text_atomic

    old = os.umask(0o027)
    try:
        write_text_atomic(tmp_path / "a.txt", "x")
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o640


def test_an_official_checkpoint_tells_its_variant(tmp_path):
    """A checkpoint without configuration in the official tsm layout selects the tsm variant (and its
    defaults) when --variant is not given; an explicit --variant is kept."""
    import torch

    from models.tsm import OFFICIAL_KEYS, UniAdaFocusTSM
    from ops import config, flags

    model = UniAdaFocusTSM(num_classes=5, focus_arch="resnet18")
    path = tmp_path / "official_tsm.pth.tar"
    torch.save({"epoch": 1, "state_dict": {"module." + OFFICIAL_KEYS.to_official(k): v
                                           for k, v in model.state_dict().items()}}, path)
    parser = flags.get_args_parser()
    args = config.parse_args(["--evaluate", "--resume", str(path), "--dataset", "something"], parser)
    assert config.adopt_checkpoint_config(args, parser)
    assert (args.variant, args.num_glance_segments, args.num_segments) == ("tsm", 8, 36)
    args = config.parse_args(["--evaluate", "--resume", str(path), "--dataset", "something", "--variant", "mn2_r50"],
                             parser)
    assert not config.adopt_checkpoint_config(args, parser) and args.variant == "mn2_r50"
