"""Bad inputs to every entry point: one ``error:`` line naming the culprit, no traceback, no partial output.

Each case runs an entry point's ``__main__`` code in its own process with the repository root as the
working folder. To keep some 50 cases fast on two cores, they are forked from the test server, which
imports torch and the project once (tests/entry_points.py), two at a time; one case also goes through
a plain ``subprocess.run`` to show that the forked run sees what a user sees.
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import entry_points
from support import REPO

CLASSES = ["walk", "run", "jump"]
VIDEOS = {"train": [("vidA", 10, 0), ("vidB", 10, 1), ("vidC", 10, 2)], "val": [("vidD", 10, 1), ("vidE", 10, 2)]}
MODEL = ["--num_segments", "8", "--num_glance_segments", "4", "--num_focus_segments", "4", "--input_size", "64",
         "--patch_size", "32", "--focus_arch", "resnet18", "--classifier_dim", "32", "--stn_hidden_dim", "16",
         "--temporal_hidden_dim", "8"]
COMMON = ["--workers", "0", "--device", "cpu", "--no-tensorboard", "--num_visualised", "0", "--val_batch_size", "2"]

# ------------------------------------------------------------------------------------------------
# The shared world: a good actnet-layout dataset, a checkpoint, thresholds files
# ------------------------------------------------------------------------------------------------
def _frame(seed, size=(64, 48)):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def make_dataset(root: Path) -> Path:
    (root / "frames").mkdir(parents=True)
    (root / "classInd.txt").write_text("\n".join(CLASSES) + "\n")
    for split, videos in VIDEOS.items():
        (root / f"actnet_{split}_split.txt").write_text("".join(f"{n},{f},{l}\n" for n, f, l in videos))
        for name, frames, _ in videos:
            (root / "frames" / name).mkdir()
            for i in range(1, frames + 1):
                _frame(i).save(root / "frames" / name / f"image_{i:05d}.jpg")
    return root


def make_checkpoint(path: Path) -> None:
    from models import get_variant
    from ops import config
    from ops.checkpoint import save_checkpoint

    args = config.parse_args(["--dataset", "actnet", "--no-pretrained"] + MODEL)
    model = get_variant(args.variant).build_from(args, len(CLASSES))
    save_checkpoint(str(path), model, epoch=1, config=config.plain_config(args))


# Each case: (id, kind, target, argv, culprit, setup) -- argv and setup use the world's paths through
# ``w`` (a dict): data (a fresh copy of the good dataset for this case), ckpt, runs (this case's
# root_log), tmp (this case's scratch folder). ``setup(w)`` breaks something before the run.
def _write(path, text):
    Path(path).write_text(text)


def _bytes(path, data):
    Path(path).write_bytes(data)


def _val(w):
    return Path(w["data"]) / "actnet_val_split.txt"


def _train(w):
    return Path(w["data"]) / "actnet_train_split.txt"


def _frames(w, video):
    return Path(w["data"]) / "frames" / video


def evaluate(w, *extra):
    return (["--dataset", "actnet", "--data_dir", w["data"], "--evaluate", "--resume", w["ckpt"], "--root_log", w["runs"],
             "--store_name", "run"] + COMMON + list(extra))


def train(w, *extra):
    return (["--dataset", "actnet", "--data_dir", w["data"], "--root_log", w["runs"], "--store_name", "run",
             "--no-pretrained", "--epochs", "1", "--batch_size", "2"] + MODEL + COMMON + list(extra))


def early_exit(w, *extra):
    return (["--dataset", "actnet", "--data_dir", w["data"], "--evaluate", "--root_log", w["runs"],
             "--store_name", "run"] + COMMON + list(extra))


def predict(w, *extra):
    return [str(_frames(w, "vidD")), "--device", "cpu", "--template", "image_{:05d}.jpg"] + list(extra)


def _corrupt_all_frames(w, video, data):
    for f in _frames(w, video).iterdir():
        f.write_bytes(data)


def _strip_config(source, target):
    ckpt = torch.load(source, weights_only=True)
    del ckpt["config"]
    torch.save(ckpt, target)


def _thresholds(path, count):
    from ops.early_exit import save_thresholds

    save_thresholds(path, torch.linspace(0.1, 0.9, count), criterion="entropy", flops=[float(i) for i in range(count)])


CASES = [
    # -- list files --------------------------------------------------------------------------------------------
    ("list_not_integer", "script", "main.py", lambda w: evaluate(w), "actnet_val_split.txt:1",
     lambda w: _write(_val(w), "vidD,ten,1\n")),
    ("list_two_fields", "script", "main.py", lambda w: evaluate(w), "actnet_val_split.txt:2",
     lambda w: _write(_val(w), "vidD,10,1\nvidE,10\n")),
    ("list_label_out_of_range", "script", "main.py", lambda w: evaluate(w), "label 7",
     lambda w: _write(_val(w), "vidD,10,7\n")),
    ("list_negative_label", "script", "main.py", lambda w: evaluate(w), "label -1",
     lambda w: _write(_val(w), "vidD,10,-1\n")),
    ("list_empty", "script", "main.py", lambda w: evaluate(w), "actnet_val_split.txt",
     lambda w: _write(_val(w), "")),
    ("list_missing", "script", "main.py", lambda w: evaluate(w), "actnet_val_split.txt",
     lambda w: _val(w).unlink()),
    ("list_zero_frames", "script", "main.py", lambda w: evaluate(w), "num_frames",
     lambda w: _write(_val(w), "vidD,0,1\n")),
    ("list_empty_label", "script", "main.py", lambda w: evaluate(w), "empty label",
     lambda w: _write(_val(w), "vidD,10,\n")),
    ("list_not_utf8", "script", "main.py", lambda w: evaluate(w), "actnet_val_split.txt",
     lambda w: _bytes(_val(w), b"\xff\xfe\x00vid\n")),
    ("train_list_malformed", "script", "main.py", lambda w: train(w), "actnet_train_split.txt:2",
     lambda w: _write(_train(w), "vidA,10,0\nvidB;10;1\n")),
    # -- class files -------------------------------------------------------------------------------------------
    ("class_file_missing", "script", "main.py", lambda w: evaluate(w), "classInd.txt",
     lambda w: (Path(w["data"]) / "classInd.txt").unlink()),
    ("class_file_blank_line", "script", "main.py", lambda w: evaluate(w), "classInd.txt",
     lambda w: _write(Path(w["data"]) / "classInd.txt", "walk\n\nrun\njump\n")),
    ("class_file_empty", "script", "main.py", lambda w: evaluate(w), "classInd.txt",
     lambda w: _write(Path(w["data"]) / "classInd.txt", "")),
    ("class_count_differs_from_checkpoint", "script", "main.py", lambda w: evaluate(w), "ckpt.pth.tar",
     lambda w: _write(Path(w["data"]) / "classInd.txt", "walk\nrun\njump\nswim\n")),
    # -- frames ------------------------------------------------------------------------------------------------
    ("frame_folder_missing", "script", "main.py", lambda w: evaluate(w), "vidE",
     lambda w: shutil.rmtree(_frames(w, "vidE"))),
    ("frames_missing", "script", "main.py", lambda w: evaluate(w), "image_000",
     lambda w: [f.unlink() for f in _frames(w, "vidD").iterdir() if f.name != "image_00001.jpg"]),
    ("frames_zero_bytes", "script", "main.py", lambda w: evaluate(w), "image_000",
     lambda w: _corrupt_all_frames(w, "vidD", b"")),
    ("frames_corrupt_jpeg", "script", "main.py", lambda w: evaluate(w), "image_000",
     lambda w: _corrupt_all_frames(w, "vidD", b"\xff\xd8\xff\xe0 not a jpeg at all")),
    ("frames_corrupt_in_worker", "script", "main.py", lambda w: evaluate(w, "--workers", "1"), "image_000",
     lambda w: _corrupt_all_frames(w, "vidD", b"\xff\xd8\xff\xe0 not a jpeg at all")),
    ("frame_sizes_differ", "script", "main.py", lambda w: evaluate(w), "has size",
     lambda w: [_frame(i, (40, 30)).save(f) for i, f in enumerate(sorted(_frames(w, "vidD").iterdir())) if i % 2]),
    # -- arguments ---------------------------------------------------------------------------------------------
    ("batch_size_zero", "script", "main.py", lambda w: train(w, "--batch_size", "0"), "--batch_size", None),
    ("batch_size_negative", "script", "main.py", lambda w: train(w, "--batch_size", "-2"), "--batch_size", None),
    ("val_batch_size_zero", "script", "main.py", lambda w: evaluate(w, "--val_batch_size", "0"), "--val_batch_size",
     None),
    ("workers_negative", "script", "main.py", lambda w: train(w, "--workers", "-1"), "--workers", None),
    ("patch_larger_than_input", "script", "main.py", lambda w: train(w, "--patch_size", "96"), "--patch_size", None),
    ("focus_frames_do_not_fit", "script", "main.py", lambda w: train(w, "--num_focus_segments", "12"),
     "--num_focus_segments", None),
    ("abbreviated_flag", "script", "main.py", lambda w: train(w, "--epoch", "3"), "--epoch", None),
    ("batch_larger_than_training_set", "script", "main.py", lambda w: train(w, "--batch_size", "8"),
     "--batch_size 8", None),
    ("config_file_missing", "script", "main.py", lambda w: train(w, "--config", w["tmp"] + "/nothere.yaml"),
     "nothere.yaml", None),
    ("config_unknown_key", "script", "main.py", lambda w: train(w, "--config", w["tmp"] + "/typo.yaml"),
     "learning_rate_typo", lambda w: _write(w["tmp"] + "/typo.yaml", "learning_rate_typo: 1\n")),
    ("dataset_config_bad_json", "script", "main.py",
     lambda w: train(w, "--dataset", "custom", "--dataset_config", w["tmp"] + "/d.json"), "d.json",
     lambda w: _write(w["tmp"] + "/d.json", "{not json")),
    ("glance_weights_missing", "script", "main.py",
     lambda w: train(w, "--pretrained", "--glance_weights", w["tmp"] + "/no_mbv2.pth"), "no_mbv2.pth", None),
    ("pretrained_offline_without_cache", "script", "main.py", lambda w: train(w, "--pretrained"),
     "torch_home/hub/checkpoints/mobilenet_v2", None),
    ("x3d_pyth_missing", "script", "main.py",
     lambda w: ["--variant", "x3d", "--dataset", "actnet", "--data_dir", w["data"], "--root_log", w["runs"],
                "--glance_weights", w["tmp"] + "/x3d_s.pyth", "--focus_weights", w["tmp"] + "/x3d_l.pyth",
                "--num_segments", "8", "--num_glance_segments", "4", "--num_focus_segments", "4", "--input_size",
                "64", "--patch_size", "32", "--glance_size", "32", "--batch_size", "2"] + COMMON, "x3d_s.pyth", None),
    # -- checkpoints and thresholds ----------------------------------------------------------------------------
    ("main_checkpoint_missing", "script", "main.py",
     lambda w: evaluate(w)[:6] + [w["tmp"] + "/gone.pth.tar"] + evaluate(w)[7:] + MODEL, "gone.pth.tar", None),
    ("main_checkpoint_corrupt", "script", "main.py",
     lambda w: evaluate(w)[:6] + [w["tmp"] + "/bad.pth.tar"] + evaluate(w)[7:], "bad.pth.tar",
     lambda w: _bytes(w["tmp"] + "/bad.pth.tar", b"PK\x03\x04 definitely not a checkpoint")),
    ("main_checkpoint_truncated", "script", "main.py",
     lambda w: evaluate(w)[:6] + [w["tmp"] + "/half.pth.tar"] + evaluate(w)[7:], "half.pth.tar",
     lambda w: _bytes(w["tmp"] + "/half.pth.tar", Path(w["ckpt"]).read_bytes()[:5000])),
    ("main_checkpoint_contradicted", "script", "main.py", lambda w: evaluate(w, "--patch_size", "48"),
     "--patch_size 48", None),
    ("main_thresholds_corrupt", "script", "main.py",
     lambda w: evaluate(w, "--thresholds", w["tmp"] + "/t.json"), "t.json", lambda w: _write(w["tmp"] + "/t.json", "{")),
    ("main_thresholds_wrong_count", "script", "main.py",
     lambda w: evaluate(w, "--thresholds", w["tmp"] + "/t3.json"), "t3.json", lambda w: _thresholds(w["tmp"] + "/t3.json", 3)),
    ("early_exit_checkpoint_missing", "script", "test_early_exit.py",
     lambda w: early_exit(w, "--resume", w["tmp"] + "/gone.pth.tar"), "gone.pth.tar", None),
    ("early_exit_checkpoint_corrupt", "script", "test_early_exit.py",
     lambda w: early_exit(w, "--resume", w["tmp"] + "/bad.pth.tar"), "bad.pth.tar",
     lambda w: _bytes(w["tmp"] + "/bad.pth.tar", b"\x80\x02garbage")),
    ("early_exit_flag_contradicts_checkpoint", "script", "test_early_exit.py",
     lambda w: early_exit(w, "--resume", w["ckpt"], "--patch_size", "48"), "--patch_size 48", None),
    ("checkpoint_without_configuration_misfits", "script", "main.py",
     lambda w: evaluate(w)[:6] + [w["tmp"] + "/noconf.pth.tar"] + evaluate(w)[7:], "--config configs/",
     lambda w: _strip_config(w["ckpt"], w["tmp"] + "/noconf.pth.tar")),
    ("early_exit_logits_corrupt", "script", "test_early_exit.py",
     lambda w: ["--logits", w["tmp"] + "/early_exit/logits_x.pt"], "logits_x.pt",
     lambda w: (Path(w["tmp"], "early_exit").mkdir(), _bytes(w["tmp"] + "/early_exit/logits_x.pt", b"junk"))),
    ("early_exit_logits_wrong_content", "script", "test_early_exit.py",
     lambda w: ["--logits", w["tmp"] + "/early_exit/logits_y.pt"], "logits_y.pt",
     lambda w: (Path(w["tmp"], "early_exit").mkdir(), torch.save({"eval": 1}, w["tmp"] + "/early_exit/logits_y.pt"))),
    ("early_exit_logits_missing", "script", "test_early_exit.py",
     lambda w: ["--logits", w["tmp"] + "/logits_none.pt"], "logits_none.pt", None),
    ("predict_checkpoint_missing", "module", "scripts.predict",
     lambda w: predict(w, "--checkpoint", w["tmp"] + "/gone.pth.tar"), "gone.pth.tar", None),
    ("predict_checkpoint_corrupt", "module", "scripts.predict",
     lambda w: predict(w, "--checkpoint", w["tmp"] + "/bad.pth.tar"), "bad.pth.tar",
     lambda w: _bytes(w["tmp"] + "/bad.pth.tar", b"junk")),
    ("predict_video_missing", "module", "scripts.predict",
     lambda w: [w["tmp"] + "/no_video.mp4", "--checkpoint", w["ckpt"], "--device", "cpu"], "no_video.mp4", None),
    ("predict_thresholds_corrupt", "module", "scripts.predict",
     lambda w: predict(w, "--checkpoint", w["ckpt"], "--thresholds", w["tmp"] + "/t.json"), "t.json",
     lambda w: _write(w["tmp"] + "/t.json", '{"format": "something else"}')),
    ("predict_thresholds_wrong_count", "module", "scripts.predict",
     lambda w: predict(w, "--checkpoint", w["ckpt"], "--thresholds", w["tmp"] + "/t3.json"), "t3.json",
     lambda w: _thresholds(w["tmp"] + "/t3.json", 3)),
    ("predict_flag_contradicts_checkpoint", "module", "scripts.predict",
     lambda w: predict(w, "--checkpoint", w["ckpt"], "--num_focus_segments", "6"), "num_focus_segments 6", None),
    ("visualize_checkpoint_missing", "module", "scripts.visualize",
     lambda w: ["--dataset", "actnet", "--data_dir", w["data"], "--resume", w["tmp"] + "/gone.pth.tar",
                "--out", w["tmp"] + "/grid.png"] + COMMON, "gone.pth.tar", None),
    ("visualize_flag_contradicts_checkpoint", "module", "scripts.visualize",
     lambda w: ["--dataset", "actnet", "--data_dir", w["data"], "--resume", w["ckpt"], "--num_segments", "16",
                "--out", w["tmp"] + "/grid.png"] + COMMON, "--num_segments 16", None),
    ("flops_patch_too_large", "module", "models.flops", lambda w: ["--patch_size", "300"], "patch_size", None),
    ("extract_source_missing", "module", "datasets.extract",
     lambda w: [w["tmp"] + "/no_videos", w["tmp"] + "/out"], "no_videos", None),
]


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    """Run every case once (setup, then the entry point); {id: (status, stdout, stderr, workspace, paths)}."""
    base = tmp_path_factory.mktemp("bad_inputs")
    good = make_dataset(base / "good")
    ckpt = base / "ckpt.pth.tar"
    make_checkpoint(ckpt)
    cases, spaces = [], {}
    for case_id, kind, target, argv, _, setup in CASES:
        space = base / "cases" / case_id
        (space / "tmp").mkdir(parents=True)
        shutil.copytree(good, space / "data")
        w = {"data": str(space / "data"), "ckpt": str(ckpt), "runs": str(space / "runs"), "tmp": str(space / "tmp")}
        if setup is not None:
            setup(w)
        spaces[case_id] = (space, w)
        env = {"https_proxy": "http://127.0.0.1:9", "http_proxy": "http://127.0.0.1:9",
               "TORCH_HOME": str(base / "torch_home")}
        cases.append({"id": case_id, "cmd": [sys.executable] + (["-m"] if kind == "module" else []) + [target]
                      + argv(w), "env": env})
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("UNIADAFOCUS_DEBUG", None)
    results = entry_points.run_many([case["cmd"] for case in cases], env=[dict(env, **case["env"]) for case in cases],
                                    timeout=300)
    return {case["id"]: (result.returncode, result.stdout, result.stderr) + spaces[case["id"]]
            for case, result in zip(cases, results)}


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gives_one_clear_error(outcomes, case):
    case_id, _, _, _, culprit, _ = case
    status, stdout, stderr, space, w = outcomes[case_id]
    assert status != 0, f"{case_id} succeeded\n{stdout[-2000:]}"
    assert "Traceback" not in stderr + stdout, stderr[-3000:]
    assert culprit in stderr, f"{culprit!r} not in\n{stderr[-3000:]}"
    assert [line for line in stderr.splitlines() if "error: " in line], stderr[-3000:]
    # No partial output: no run folder (nothing under root_log), no temporary file anywhere.
    runs = Path(w["runs"])
    assert not runs.exists() or not any(runs.iterdir()), sorted(p.name for p in runs.rglob("*"))
    assert not [p for p in space.rglob(".tmp-*")]


def test_a_plain_interpreter_sees_what_a_forked_case_sees(tmp_path):
    """A plain subprocess gives the same: status 2, one error line, no traceback, no run folder."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("UNIADAFOCUS_DEBUG", None)
    result = subprocess.run([sys.executable, "main.py", "--dataset", "actnet", "--data_dir", str(tmp_path / "none"),
                             "--root_log", str(tmp_path / "runs"), "--no-pretrained"] + MODEL + COMMON,
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith("error: ") and str(tmp_path / "none") in result.stderr
    assert not (tmp_path / "runs").exists()
    env["UNIADAFOCUS_DEBUG"] = "1"
    debug = subprocess.run([sys.executable, "-m", "models.flops", "--patch_size", "300"], cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=120)
    assert debug.returncode != 0 and "Traceback" in debug.stderr
