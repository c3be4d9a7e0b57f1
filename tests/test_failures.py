"""Failures that end in one line naming the culprit, without a traceback: Ctrl-C in a run, unreadable and
truncated videos in a prediction batch, repeated list lines, frames too large to decode, unknown synthetic
options, official checkpoints whose sizes no weight shape tells, --device cuda without a GPU, and the
--help of the scripts that reuse main.py's flags.

The entry points run in their own processes as a user runs them (forked from the test server,
tests/entry_points.py), two at a time where they are independent.
"""
import argparse
import json
import logging
import os
import re
import signal
import struct
import sys
import time
import zlib
from pathlib import Path

import pytest
import torch

import entry_points
from support import REPO
from test_bad_inputs import COMMON, MODEL, make_checkpoint, make_dataset

SYNTHETIC = {"train_videos": 8, "val_videos": 4, "frames_per_video": 10, "frame_size": 64, "num_classes": 3,
             "num_distractors": [1, 2]}
TINY = ["--dataset", "synthetic", "--no-pretrained", "--device", "cpu", "--lr", "0.01", "--print-freq", "1",
        "--no-tensorboard", "--num_visualised", "0", "--batch_size", "2"] + MODEL


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("UNIADAFOCUS_DEBUG", None)
    return env


def _run_main(main, argv) -> int:
    """``cli.run_main(main, argv)`` in this process; a KeyboardInterrupt that escapes it fails the test."""
    from ops import cli

    try:
        return cli.run_main(main, argv)
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C escaped the entry point (a traceback for the user)")


def _one_line(stderr: str, prefix: str) -> str:
    """The one line of ``stderr`` that starts with ``prefix`` (there must be exactly one, and no traceback)."""
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.startswith(prefix)]
    assert len(lines) == 1, stderr[-3000:]
    return lines[0]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """An actnet-layout dataset, a checkpoint of ours (its configuration recorded) and a synthetic set."""
    from datasets import synthetic

    base = tmp_path_factory.mktemp("failures")
    data = make_dataset(base / "data")
    ckpt = base / "ckpt.pth.tar"
    make_checkpoint(ckpt)
    synthetic_dir = base / "synthetic"
    synthetic.ensure_generated(str(synthetic_dir), workers=1, **SYNTHETIC)
    return {"base": base, "data": data, "ckpt": ckpt, "synthetic": synthetic_dir}


# ------------------------------------------------------------------------------------------------
# Ctrl-C
# ------------------------------------------------------------------------------------------------
def _saved_epoch(path: Path) -> int:
    return torch.load(path, weights_only=True)["epoch"] if path.is_file() else 0


@pytest.mark.parametrize("workers", [0, 2])
def test_ctrl_c_in_training_says_where_it_stopped_and_how_to_resume(world, tmp_path, workers):
    """SIGINT to the run's process group (what Ctrl-C in a terminal sends) once epoch 1 logged its first step:
    exit status 130, one line on stderr and in log.txt naming the epoch, the step and --resume auto, the
    last complete checkpoint kept, nothing partial; the advised command then finishes the run."""
    cmd = [sys.executable, "main.py"] + TINY + ["--data_dir", str(world["synthetic"]), "--synthetic",
                                                json.dumps(SYNTHETIC), "--root_log", str(tmp_path), "--store_name",
                                                "run", "--epochs", "3", "--workers", str(workers)]
    run = tmp_path / "run"
    proc = entry_points.start(cmd, env=_env())
    deadline = time.time() + 300
    while not ((run / "log.txt").is_file() and "epoch 1 [1/4]" in (run / "log.txt").read_text()):
        assert proc.poll() is None, proc.wait().stderr[-3000:]
        assert time.time() < deadline, "epoch 1 did not start in 300 s"
        time.sleep(0.02)
    proc.kill(signal.SIGINT)
    result = proc.wait(timeout=120)
    assert result.returncode == 130, result.stderr[-3000:]
    line = _one_line(result.stderr, "interrupted: ")
    found = re.search(r"stopped by Ctrl-C in epoch (\d+) at step (\d) of 4; (.*) keeps the (\d+) finished epoch\(s\): "
                      r"run the same command with --resume auto to continue from epoch (\d+)$", line)
    assert found, line
    epoch, kept = int(found.group(1)), int(found.group(4))
    assert found.group(3) == str(run / "ckpt.pth.tar") and kept == epoch == int(found.group(5))
    assert _saved_epoch(run / "ckpt.pth.tar") == kept
    log = (run / "log.txt").read_text().splitlines()
    assert log[-1].endswith(f"interrupted: {line[len('interrupted: '):]}")
    assert not [entry for entry in log if entry.rstrip().endswith("ERROR:")]
    assert not list(run.glob(".tmp-*"))
    resumed = entry_points.run(cmd + ["--resume", "auto"], env=_env(), timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert _saved_epoch(run / "ckpt.pth.tar") == 3


HAND_OVER = """
import multiprocessing as mp, os, signal, socket, sys, time
from multiprocessing import resource_sharer
from multiprocessing.connection import Client
sys.path.insert(0, sys.argv[1])
from ops.cli import loader_worker_init


def worker(queue, init):
    if init:
        loader_worker_init(0)
    queue.put(signal.getsignal(signal.SIGINT) == signal.SIG_IGN)
    read, _ = os.pipe()
    queue.put(resource_sharer.DupFd(read)._id)  # what a batch's shared-memory tensor sends its receiver
    time.sleep(2)


if __name__ == "__main__":
    context = mp.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=worker, args=(queue, sys.argv[2] == "1"))
    child.start()
    print("ignores Ctrl-C" if queue.get() else "takes Ctrl-C", flush=True)
    address, key = queue.get()
    conn = Client(address, authkey=mp.current_process().authkey)
    # Stop reading before asking (as a receiver stopped by Ctrl-C mid-receive): the worker's reply then always
    # breaks, whichever side the scheduler runs first.
    socket.fromfd(conn.fileno(), socket.AF_UNIX, socket.SOCK_STREAM).shutdown(socket.SHUT_RD)
    conn.send((key, os.getpid()))  # ask for the descriptor
    conn.close()
    child.join()
"""


def test_a_loader_worker_is_quiet_when_ctrl_c_stops_its_main_process_mid_batch(tmp_path):
    """A batch's tensors reach the main process as file descriptors that the worker's resource-sharer
    thread sends on request; when Ctrl-C stops the main process in the middle, that send breaks and the
    thread printed a BrokenPipeError traceback. Every loader's worker_init_fn (ops.cli.loader_worker_init)
    leaves Ctrl-C to the main process and ends such a send silently."""
    from ops import cli, loaders
    from ops.distributed import DistInfo

    script = tmp_path / "hand_over.py"
    script.write_text(HAND_OVER)
    plain, quiet = (entry_points.run([sys.executable, str(script), str(REPO), init], env=_env(), timeout=60)
                    for init in ("0", "1"))
    assert plain.returncode == 0 and "BrokenPipeError" in plain.stderr  # the failure this guards against
    assert quiet.returncode == 0 and quiet.stdout.strip() == "ignores Ctrl-C" and quiet.stderr == "", quiet.stderr
    options = loaders._loader_options(argparse.Namespace(workers=2, prefetch_factor=2, seed=0), DistInfo())
    assert options["worker_init_fn"] is cli.loader_worker_init


def test_ctrl_c_in_an_evaluation_is_one_line(world, tmp_path, monkeypatch, capsys):
    import main
    from ops import evaluation

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(evaluation, "evaluate", interrupted)
    status = _run_main(main.main, ["--dataset", "actnet", "--data_dir", str(world["data"]), "--evaluate", "--resume",
                                   str(world["ckpt"]), "--root_log", str(tmp_path), "--store_name", "ev"] + COMMON)
    err = capsys.readouterr().err
    assert status == 130
    assert _one_line(err, "interrupted: ") == ("interrupted: stopped by Ctrl-C during the evaluation; an evaluation "
                                               "writes its files at its end, so none was written: run the same "
                                               "command again")
    assert not (tmp_path / "ev").exists()


def test_ctrl_c_in_a_prediction_batch_names_the_video(world, monkeypatch, capsys):
    from scripts import predict

    frames = world["data"] / "frames"
    calls = []

    def second_interrupted(path, *args):
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(path, *args)

    original = predict.predict
    monkeypatch.setattr(predict, "predict", second_interrupted)
    status = _run_main(predict.main, [str(frames / "vidD"), str(frames / "vidE"), str(frames / "vidA"), "--checkpoint",
                                      str(world["ckpt"]), "--device", "cpu", "--template", "image_{:05d}.jpg"])
    captured = capsys.readouterr()
    assert status == 130 and captured.out.count("exit step") == 1
    assert _one_line(captured.err, "interrupted: ") == f"interrupted: stopped by Ctrl-C at {frames / 'vidE'}, after 1 of 3 videos"


def test_ctrl_c_anywhere_else_is_one_line_and_status_130(capsys):
    def main(argv):
        raise KeyboardInterrupt

    assert _run_main(main, []) == 130
    assert capsys.readouterr().err == "interrupted: stopped by Ctrl-C\n"


# ------------------------------------------------------------------------------------------------
# Prediction: unreadable and truncated videos, --device cuda, official checkpoints
# ------------------------------------------------------------------------------------------------
def _cut(source: Path, target: Path, size: int) -> Path:
    target.write_bytes(source.read_bytes()[:size])
    return target


def test_truncated_videos_are_named_with_the_frames_claimed_and_decoded(test_videos, tmp_path):
    from datasets.video import ExtractionError, extract_pyav, truncation

    cut = _cut(test_videos / "Megamind.avi", tmp_path / "cut.avi", 40000)
    assert truncation(str(cut)) == (f"{cut}: truncated video: the container claims 270 frames (11.26 s), 2 decoded "
                                    f"(0.08 s)")
    assert truncation(str(cut), decoded=1).endswith("1 decoded (0.04 s)")
    # complete videos, the variable-rate one (68 frames shown over 444 frame slots) included
    assert [truncation(str(test_videos / name)) for name in ("Megamind.avi", "tree.avi", "vtest.avi")] == ["", "", ""]
    (tmp_path / "frames").mkdir()
    with pytest.raises(ExtractionError, match=r"truncated: decoded 0\.08 s of the 11\.26 s declared \(2 frames\), "
                                              r"the container claims 270 frames; pass --allow_truncated"):
        extract_pyav(str(cut), str(tmp_path / "frames"), "image_{:05d}.jpg", 0, None, 90, allow_truncated=False)


def test_predict_goes_on_after_an_unreadable_video_and_warns_about_a_truncated_one(world, test_videos, tmp_path):
    cut = _cut(test_videos / "Megamind.avi", tmp_path / "cut.avi", 40000)
    junk = tmp_path / "notes.mp4"
    junk.write_text("this is not a video\n")
    good = test_videos / "vtest.avi"
    result = entry_points.run([sys.executable, "-m", "scripts.predict", str(cut), str(junk), str(good), "--checkpoint",
                               str(world["ckpt"]), "--device", "cpu", "--json"], env=_env(), timeout=300)
    assert result.returncode == 2, result.stderr[-3000:]
    assert [json.loads(line)["video"] for line in result.stdout.splitlines()] == [str(cut), str(good)]
    assert _one_line(result.stderr, "warning: ") == (
        f"warning: {cut}: truncated video: the container claims 270 frames (11.26 s), 2 decoded (0.08 s); classified "
        f"from the 2 frames that decode")
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 2 and errors[0].startswith(f"error: {junk}: cannot decode the video"), result.stderr
    assert errors[1] == f"error: 1 of 3 videos could not be read: {junk}"


def test_predict_device_cuda_without_a_gpu_is_one_line(world, monkeypatch, capsys):
    from ops import cli
    from scripts import predict

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    status = cli.run_main(predict.main, [str(world["data"] / "frames" / "vidD"), "--checkpoint", str(world["ckpt"]),
                                         "--device", "cuda"])
    assert status == 2
    assert capsys.readouterr().err == "error: --device cuda: no CUDA device is available to this process (pass --device cpu)\n"


def _official_checkpoint(path: Path, patch_size: int) -> Path:
    """An official-layout file (``state_dict``, DataParallel prefixes, no configuration) of a small model."""
    from models import get_variant
    from models.mn2_r50 import ours_to_official

    model = get_variant("mn2_r50").build(num_classes=3, num_segments=8, num_glance_segments=4, num_focus_segments=4,
                                         input_size=96, patch_size=patch_size, focus_arch="resnet18", classifier_dim=32,
                                         stn_hidden_dim=16, temporal_hidden_dim=8)
    torch.save({"epoch": 3, "best_acc1": 50.0,
                "state_dict": {"module." + ours_to_official(k): v for k, v in model.state_dict().items()}}, path)
    return path


def test_predict_names_the_sizes_it_assumed_for_an_official_checkpoint(world, tmp_path):
    official = _official_checkpoint(tmp_path / "official.pth.tar", patch_size=48)
    shapes = ["--focus_arch", "resnet18", "--classifier_dim", "32", "--stn_hidden_dim", "16", "--temporal_hidden_dim",
              "8", "--num_glance_segments", "4", "--num_focus_segments", "4", "--input_size", "96"]
    video = [str(world["data"] / "frames" / "vidD"), "--template", "image_{:05d}.jpg", "--device", "cpu"]
    runs = entry_points.run_many([
        [sys.executable, "-m", "scripts.predict"] + video + ["--checkpoint", str(official)] + shapes,
        [sys.executable, "-m", "scripts.predict"] + video + ["--checkpoint", str(official)] + shapes
        + ["--patch_size", "48", "--num_segments", "8"],
        [sys.executable, "-m", "scripts.predict"] + video + ["--checkpoint", str(world["ckpt"])],
    ], env=_env(), timeout=300)
    assert [r.returncode for r in runs] == [0, 0, 0], [r.stderr[-2000:] for r in runs]
    assert _one_line(runs[0].stderr, "warning: ") == (
        f"warning: --num_segments, --patch_size not given and not recorded in {official}: assuming num_segments 48, "
        f"patch_size 96 (the mn2_r50 defaults); pass --num_segments, --patch_size or the release's preset, e.g. "
        f"--config configs/actnet_p128.yaml")
    assert "48 sampled" in runs[0].stdout
    assert "warning" not in runs[1].stderr + runs[2].stderr and "8 sampled" in runs[1].stdout


def test_the_sizes_no_weight_shape_tells():
    from models import get_variant
    from ops import config
    from scripts.predict import sizes_hidden_from_weights

    variant = get_variant("mn2_r50")
    cfg = {k: v for k, v in vars(config.parse_args(["--no-pretrained"])).items() if k in variant.hyper_parameters}
    assert sorted(sizes_hidden_from_weights(variant, cfg, 10)) == ["num_segments", "patch_size"]


# ------------------------------------------------------------------------------------------------
# Data: repeated list lines, frames too large to decode, unknown synthetic options
# ------------------------------------------------------------------------------------------------
def test_a_repeated_list_line_is_warned_about_once_with_both_line_numbers(tmp_path, caplog):
    from datasets.lists import parse_list_file

    path = tmp_path / "val.txt"
    path.write_text("vidD,10,1\nvidE,10,2\nvidD,10,1\nvidE,10,2\n")
    with caplog.at_level(logging.WARNING, logger="datasets.lists"):
        records = parse_list_file(str(path), separator=",", multi_label=True)
        again = parse_list_file(str(path), separator=",", multi_label=True)
    assert [r.path for r in records] == ["vidD", "vidE", "vidD", "vidE"] == [r.path for r in again]  # kept as listed
    assert [r.getMessage() for r in caplog.records] == [
        f"warning: {path}:3: video 'vidD' is already on line 1; 2 repeated lines in all, kept as listed (each copy "
        f"counts, in training and in the metrics)"]


def _png_header(path: Path, width: int, height: int) -> Path:
    """A PNG whose header declares ``width`` x ``height`` (Pillow checks the size before decoding any pixel)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b""))
    return path


def test_a_frame_too_large_to_decode_is_named_with_its_pixel_count(tmp_path):
    from datasets import FrameError
    from datasets.frames import read_frames

    _png_header(tmp_path / "image_00001.png", 20000, 20000)
    with pytest.raises(FrameError) as err:
        read_frames(str(tmp_path), [1], "image_{:05d}.png", where="list.txt:4")
    assert str(err.value) == (f"list.txt:4: frame 1 cannot be decoded: {tmp_path / 'image_00001.png'} (too large to "
                              f"decode safely: 400,000,000 pixels, more than Pillow's limit PIL.Image.MAX_IMAGE_PIXELS "
                              f"= 89,478,485)")


def test_frames_too_large_to_decode_end_in_one_line_in_loader_workers_and_predict(world, tmp_path):
    """400 M pixels (Pillow refuses) and 100 M pixels (Pillow only warns) on every frame of a validation video;
    evaluated with two loader workers, and given to predict beside a good video."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(world["data"], data)
    for video, side in (("vidD", 20000), ("vidE", 10000)):
        for frame in (data / "frames" / video).iterdir():
            _png_header(frame, side, side)
    evaluate = ["--dataset", "actnet", "--data_dir", str(data), "--evaluate", "--resume", str(world["ckpt"]),
                "--root_log", str(tmp_path / "runs")] + COMMON
    runs = entry_points.run_many([
        [sys.executable, "main.py"] + evaluate + ["--workers", "2", "--store_name", "a"],
        [sys.executable, "main.py"] + evaluate + ["--workers", "2", "--store_name", "b"],
        [sys.executable, "-m", "scripts.predict", str(data / "frames" / "vidE"), str(world["data"] / "frames" / "vidA"),
         "--checkpoint", str(world["ckpt"]), "--device", "cpu", "--template", "image_{:05d}.jpg"],
    ], env=_env(), timeout=300)
    (data / "actnet_val_split.txt").write_text("vidE,10,2\n")  # the second evaluation: the 100 M pixel frames only
    runs[1] = entry_points.run([sys.executable, "main.py"] + evaluate + ["--workers", "2", "--store_name", "b"],
                               env=_env(), timeout=300)
    for run, video, pixels in ((runs[0], "vidD", "400,000,000"), (runs[1], "vidE", "100,000,000")):
        assert run.returncode == 2
        line = _one_line(run.stderr, "error: ")
        assert re.search(rf"frame \d+ cannot be decoded: {re.escape(str(data / 'frames' / video))}/image_\d+\.jpg "
                         rf"\(too large to decode safely: {pixels} pixels, more than Pillow's limit", line), line
    assert runs[2].returncode == 2 and runs[2].stdout.count("exit step") == 1
    assert re.search(r"error: .*/vidE/image_\d+\.jpg: cannot read frame \(too large to decode safely: 100,000,000 "
                     r"pixels", runs[2].stderr), runs[2].stderr
    assert "Traceback" not in runs[2].stderr and "DecompressionBomb" not in runs[2].stderr


def test_an_unknown_synthetic_option_is_one_line_naming_it_and_the_valid_ones(world, tmp_path):
    preset = tmp_path / "typo.yaml"
    preset.write_text("dataset: synthetic\nsynthetic:\n  train_vidoes: 8\n")
    common = ["--data_dir", str(tmp_path / "gen"), "--epochs", "1", "--no-pretrained", "--workers", "0", "--device", "cpu"]
    runs = entry_points.run_many([
        [sys.executable, "main.py", "--dataset", "synthetic", "--synthetic", '{"train_vidoes": 8}', "--root_log",
         str(tmp_path / "runs_flag")] + common,
        [sys.executable, "main.py", "--config", str(preset), "--root_log", str(tmp_path / "runs_yaml")] + common,
    ], env=_env(), timeout=300)
    for run in runs:
        assert run.returncode == 2
        line = _one_line(run.stderr, "error: ")
        assert line.startswith("error: unknown synthetic option 'train_vidoes' (did you mean train_videos?); the options "
                               "(--synthetic, or the synthetic: mapping of a config file) are checker_cell, "), line
        assert "frame_size" in line and "val_videos" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["typo.yaml"]  # no run folder, no data generated


@pytest.mark.parametrize("flag_value, config_value, message", [
    ('[1]', "[1, 2]", "synthetic: in {preset} must be a mapping of generation options, got list"),
    ('"frames"', "frames", "--config {preset}: synthetic: not JSON")])
def test_synthetic_options_that_are_not_a_mapping_are_one_line(tmp_path, capsys, flag_value, config_value, message):
    from ops import config

    with pytest.raises(SystemExit) as stop:
        config.parse_args(["--dataset", "synthetic", "--synthetic", flag_value])
    assert stop.value.code == 2
    assert "argument --synthetic: a JSON object of options is needed" in capsys.readouterr().err
    preset = tmp_path / "list.yaml"
    preset.write_text(f"dataset: synthetic\nsynthetic: {config_value}\n")
    with pytest.raises(SystemExit):
        config.parse_args(["--config", str(preset)])
    assert message.format(preset=preset) in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------
# --help of the scripts
# ------------------------------------------------------------------------------------------------
def test_visualize_help_starts_with_its_own_description_and_options():
    from scripts import visualize

    text = visualize.get_args_parser().format_help()
    usage, description = text.split("\n\n")[:2]
    assert usage.startswith("usage: python -m scripts.visualize [--videos")
    assert description.startswith("Draw what Uni-AdaFocus looked at")
    sections = [line for line in text.splitlines() if line and not line.startswith(" ") and line.endswith(":")]
    assert sections[:3] == ["visualisation:", "options:", "data:"], sections


def test_test_early_exit_help_starts_with_its_own_description_and_options():
    import test_early_exit

    text = test_early_exit.get_args_parser().format_help()
    assert text.split("\n\n")[1].startswith("Early-exit threshold solving")
    sections = [line for line in text.splitlines() if line and not line.startswith(" ") and line.endswith(":")]
    assert sections[:3] == ["early exit:", "options:", "data:"], sections


def test_predict_and_probe_help_name_the_script_and_group_the_model_sizes(capsys):
    from scripts import predict, probe_glance, probe_spatial

    text = predict.get_args_parser().format_help()
    assert text.startswith("usage: python -m scripts.predict ") and "\nClassify raw video files" in text
    assert "\nmodel sizes:\n  main.py's flags of the same names, for official release files" in text
    for module, name in ((probe_glance, "probe_glance"), (probe_spatial, "probe_spatial")):
        with pytest.raises(SystemExit) as done:
            module.main_cli(["--help"])
        assert done.value.code == 0
        assert capsys.readouterr().out.startswith(f"usage: python -m scripts.{name} ")
        with pytest.raises(SystemExit) as bad:
            module.main_cli(["--config", "x.yaml", "--resume", "c", "--stepz", "3"])
        err = capsys.readouterr().err
        assert bad.value.code == 2 and err.count("\n") == 1 and "--stepz" in err, err
