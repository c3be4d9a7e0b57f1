"""End-to-end runs of the user-facing commands on small data (CPU).

test_early_exit.py (sweep, cache, --logits, --budget), scripts/predict.py and scripts/visualize.py on a
real video from Debian's opencv-doc and on synthetic videos, the launch scripts, and the README's custom
dataset recipe: videos in class folders -> datasets.extract -> main.py train -> evaluate.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import entry_points
from support import REPO
from test_main import SYNTHETIC, VARIANTS, _env, _main_args, _run, _run_side_by_side
from test_main import data_dir  # noqa: F401  (the synthetic data fixture)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny model trained for a few steps on the tiny synthetic set: (data_dir, run_dir, checkpoint)."""
    from datasets import synthetic

    base = tmp_path_factory.mktemp("e2e")
    data = base / "data"
    synthetic.ensure_generated(str(data), workers=1, **SYNTHETIC)
    root = base / "runs"
    _run([sys.executable] + _main_args(data, root, "--epochs", "1", "--iters_per_epoch", "3", "--batch_size", "4",
                                       "--store_name", "tiny"))
    return data, root, root / "tiny" / "ckpt.pth.tar"


def test_early_exit_sweep_cache_logits_and_budget(trained):
    data, root, ckpt = trained
    args = _main_args(data, root, "--store_name", "tiny", "--evaluate", "--resume", str(ckpt),
                      "--criterion", "entropy", "confidence", "--budget", "0.3")
    args[0] = "test_early_exit.py"
    first = _run([sys.executable] + args)
    out = root / "tiny" / "early_exit"
    for criterion in ("entropy", "confidence"):
        table = json.loads((out / f"{criterion}.json").read_text())
        assert len(table["points"]) == 19 and len(table["fixed_exits"]) == 5  # T_L + 1 stages
        assert (out / f"{criterion}.csv").read_text().count("\n") == 20
        assert (out / f"{criterion}.png").read_bytes()[:4] == b"\x89PNG"
        assert (root / "tiny" / f"log_early_exit_{criterion}.csv").read_text().startswith("flops_list,metric_list")
        thresholds = json.loads((out / f"thresholds_{criterion}_0.3gflops.json").read_text())
        assert len(thresholds["thresholds"]) == 5 and thresholds["expected_gflops"] <= 0.3
    assert "cached logits" in first.stdout
    second = _run([sys.executable] + args)
    assert "using cached logits" in second.stdout
    cache = next(out.glob("logits_*.pt"))
    logits = torch.load(cache, weights_only=True)
    assert logits["threshold"]["logits"].shape == (12, 5, 3) and logits["eval"]["logits"].shape == (7, 5, 3)
    _run([sys.executable, "test_early_exit.py", "--logits", str(cache), "--criterion", "max_prob"])
    assert json.loads((out / "max_prob.json").read_text())["criterion"] == "max_prob"

    # The thresholds file loads into evaluation: main.py --evaluate --thresholds reports early exit,
    # equal to exiting post hoc on the cached evaluation logits with the same thresholds.
    from ops import early_exit

    path = out / "thresholds_entropy_0.3gflops.json"
    args = _main_args(data, root, "--store_name", "tiny", "--evaluate", "--resume", str(ckpt), "--thresholds", str(path))
    _run([sys.executable] + args)
    reported = json.loads((root / "tiny" / "metrics_eval.json").read_text())["metrics"]["early_exit"]
    expected = early_exit.evaluate_exits(logits["eval"]["logits"], logits["eval"]["label"], logits["flops"],
                                         thresholds=early_exit.load_thresholds(path).thresholds, criterion="entropy",
                                         metric="top1")
    assert reported["exit_counts"] == expected.exit_counts.tolist() and sum(reported["exit_counts"]) == 7
    assert reported["metric"] == pytest.approx(expected.metric) and reported["gflops"] == pytest.approx(expected.expected_gflops)
    wrong = root / "three.json"
    early_exit.save_thresholds(wrong, torch.zeros(3), criterion="entropy", flops=[0.1, 0.2, 0.3])
    bad = entry_points.run([sys.executable] + args[:-1] + [str(wrong)], env=_env(), timeout=300)
    assert bad.returncode != 0 and "3 thresholds for a model with 5 exits" in bad.stderr


def test_predict_on_a_real_video_file(trained, test_videos):
    data, root, ckpt = trained
    result = _run([sys.executable, "-m", "scripts.predict", str(test_videos / "Megamind.avi"), "--checkpoint", str(ckpt),
                   "--class_names", str(data / "classInd.txt"), "--json", "--device", "cpu"])
    out = json.loads(result.stdout)
    names = (data / "classInd.txt").read_text().splitlines()
    assert [t["name"] for t in out["top"]] and all(t["name"] in names for t in out["top"])
    assert len(out["top"]) == 3  # top-5 of 3 classes
    assert out["exit_step"] == 4 and out["frames_in_video"] > 100 and len(out["frames_sampled"]) == 8
    assert abs(sum(t["probability"] for t in out["top"]) - 1) < 1e-5


def test_predict_builds_once_for_many_videos_and_folders_of_videos(trained, test_videos, tmp_path):
    data, root, ckpt = trained
    folder = tmp_path / "clips"
    folder.mkdir()
    (folder / "tree.avi").symlink_to(test_videos / "tree.avi")
    (folder / "notes.txt").write_text("not a video")
    result = _run([sys.executable, "-m", "scripts.predict", str(test_videos / "vtest.avi"), str(folder),
                   str(data / "frames" / "val_00001"), "--checkpoint", str(ckpt), "--json", "--device", "cpu"])
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [os.path.basename(r["video"]) for r in lines] == ["vtest.avi", "tree.avi", "val_00001"]
    assert all(r["seconds"] > 0 and r["exit_step"] == 4 and len(r["top"]) == 3 for r in lines)


def _all_at_glance_thresholds(path):
    """A thresholds file that exits every video at the glance (stage 0) of the 4-focus-frame test model."""
    from ops.early_exit import save_thresholds

    save_thresholds(path, torch.tensor([-1e8] * 4 + [-1e8]), criterion="entropy", flops=[0.1] * 5)
    return path


def test_predict_with_early_exit_thresholds(trained):
    data, root, ckpt = trained
    thresholds = _all_at_glance_thresholds(root / "all_at_glance.json")
    result = _run([sys.executable, "-m", "scripts.predict", str(data / "frames" / "val_00000"), "--checkpoint",
                   str(ckpt), "--thresholds", str(thresholds), "--device", "cpu"])
    assert "exit step 0 of 4 focus frames (early exit (entropy))" in result.stdout
    assert "1. " in result.stdout


def test_predict_with_both_adafocus_v2_forms(data_dir, tmp_path):  # noqa: F811  (data_dir: the fixture)
    """Tiny runs of both AdaFocusV2 forms predict: the ActivityNet form's 8 exits (exit t after t + 1
    frames, every frame a focus frame) and the Sth-Sth form's one exit after its 6 focus frames (its 4
    glance frames sampled apart); with thresholds that take every video at the first exit, the ActivityNet
    form has used 1 frame."""
    root = tmp_path / "runs"
    forms = {"adafocus_v2": 8, "adafocus_v2_tsm": 6}  # the focus frames of test_main's tiny configurations
    _run_side_by_side(*([sys.executable] + _main_args(data_dir, root, "--epochs", "1", "--iters_per_epoch", "1",
                                                      "--batch_size", "4", "--eval_freq", "0", "--store_name", form,
                                                      *VARIANTS[form]) for form in forms))
    video = str(data_dir / "frames" / "val_00000")
    for form, frames in forms.items():
        ckpt = str(root / form / "ckpt.pth.tar")
        result = json.loads(_run([sys.executable, "-m", "scripts.predict", video, "--checkpoint", ckpt, "--json",
                                  "--device", "cpu"]).stdout)
        assert (result["exit_stage"], result["exit_step"], result["max_focus_frames"]) == \
            ((frames - 1, frames, frames) if form == "adafocus_v2" else (0, frames, frames)), result
        assert result["gflops"] == result["gflops_all_exits"] > 0 and len(result["top"]) == SYNTHETIC["num_classes"]
        assert result["frames_in_video"] == SYNTHETIC["frames_per_video"]
    from ops.early_exit import save_thresholds

    first_exit = save_thresholds(tmp_path / "first_exit.json", torch.tensor([-1e8] * 8), criterion="entropy",
                                 flops=[0.1] * 8)
    result = _run([sys.executable, "-m", "scripts.predict", video, "--checkpoint", str(root / "adafocus_v2" / "ckpt.pth.tar"),
                   "--thresholds", str(first_exit), "--device", "cpu"])
    assert "exit step 1 of 8 focus frames (early exit (entropy))" in result.stdout


def test_predict_reports_bad_inputs(trained, tmp_path):
    data, root, ckpt = trained
    bad = entry_points.run([sys.executable, "-m", "scripts.predict", str(tmp_path / "missing.mp4"), "--checkpoint",
                            str(ckpt)], env=_env(), timeout=300)
    assert bad.returncode != 0 and "no such video file or frame folder" in bad.stderr


def test_visualize_writes_a_grid_and_gifs(trained, tmp_path):
    data, root, ckpt = trained
    out = tmp_path / "frames.png"
    args = _main_args(data, root, "--resume", str(ckpt), "--videos", "0", "2", "--out", str(out), "--gif")
    args[:1] = ["-m", "scripts.visualize"]
    _run([sys.executable] + args)
    from PIL import Image

    with Image.open(out) as image:
        assert image.width >= 8 * 60 and image.height > 2 * 60
    for index in (0, 2):
        with Image.open(tmp_path / f"frames_{index}.gif") as gif:
            assert gif.n_frames == 4


def test_visualize_caption_names_the_exit_steps_prediction():
    from scripts.visualize import video_caption

    names = ["disk hue 0 flat", "disk hue 0 checkered"]
    assert video_caption("video 3", 1, 0, 1, names) == \
        "video 3: label disk hue 0 checkered, prediction disk hue 0 flat, exit after 1 focus frame"
    assert video_caption("clip.mp4", None, 1, 0, names) == "clip.mp4: prediction disk hue 0 checkered, exit after 0 focus frames"
    assert video_caption("video 0", 0, 1, None, None) == "video 0: label 0, prediction 1"


def test_visualize_captions_the_early_exit_prediction(trained, tmp_path):
    """With thresholds that exit every video at the glance, each row shows the glance exit's prediction."""
    data, root, ckpt = trained
    thresholds = _all_at_glance_thresholds(tmp_path / "all_at_glance.json")
    args = _main_args(data, root, "--resume", str(ckpt), "--videos", "0", "1", "--out", str(tmp_path / "f.png"),
                      "--thresholds", str(thresholds))
    args[:1] = ["-m", "scripts.visualize"]
    captions = [line for line in _run([sys.executable] + args).stdout.splitlines() if line.startswith("video ")]
    assert len(captions) == 2 and all(c.endswith("exit after 0 focus frames") for c in captions), captions
    from ops import build, config, loaders, run_state
    from ops import distributed as dist_ops
    from ops.run_log import RunLog

    margs = config.parse_args(_main_args(data, root, "--resume", str(ckpt), "--evaluate")[1:])
    info = dist_ops.init_distributed(None, "cpu", "env://")
    val_set = loaders.build_dataset(margs, "val", info)
    model = build.build_model(margs, val_set.num_classes, info)
    run_state.restore(margs, model, None, None, RunLog(str(tmp_path), enabled=False), "")
    model.eval()
    names = val_set.class_names
    for caption, index in zip(captions, (0, 1)):
        with torch.no_grad():
            glance = model(val_set[index]["video"].unsqueeze(0)).stage_logits[0, 0]
        assert f"prediction {names[int(glance.argmax())]}," in caption, caption


def test_visualize_own_video_files(trained, tmp_path, test_videos):
    """--files draws a real video file and a frame folder, sampled as the evaluation does."""
    data, root, ckpt = trained
    out = tmp_path / "mine.png"
    args = _main_args(data, root, "--resume", str(ckpt), "--files", str(test_videos / "Megamind.avi"),
                      str(data / "frames" / "val_00001"), "--out", str(out), "--gif")
    args[:1] = ["-m", "scripts.visualize"]
    result = _run([sys.executable] + args)
    assert "(2 videos)" in result.stdout
    from PIL import Image

    with Image.open(out) as image:
        assert image.width >= 8 * 60 and image.height > 2 * 60
    for number in (0, 1):
        with Image.open(tmp_path / f"mine_{number}.gif") as gif:
            assert gif.n_frames == 4
    args = _main_args(data, root, "--files", str(test_videos / "Megamind.avi"), "--out", str(out))
    args[:1] = ["-m", "scripts.visualize"]
    bad = entry_points.run([sys.executable] + args, env=_env(), timeout=300)
    assert bad.returncode != 0 and "--files needs --resume" in bad.stderr


def _write_video(path, colour, frames=24, size=(96, 72)):
    import av

    w, h = size
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=12)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for t in range(frames):
            image = np.full((h, w, 3), 90, dtype=np.uint8)
            x = 5 + 2 * t
            image[20:40, x:x + 20] = colour
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def test_custom_dataset_recipe_end_to_end(tmp_path):
    """README recipe: videos/<class>/*.mp4 -> python -m datasets.extract -> main.py --dataset custom."""
    videos = tmp_path / "videos"
    for name, colour in (("red", (220, 30, 30)), ("blue", (30, 30, 220))):
        (videos / name).mkdir(parents=True)
        for i in range(5):
            _write_video(videos / name / f"{name} clip {i}.mp4", colour)
    data = tmp_path / "data"
    _run([sys.executable, "-m", "datasets.extract", str(videos), str(data), "--workers", "1", "--quiet"])
    assert (data / "classInd.txt").read_text().split() == ["blue", "red"]
    train_lines = (data / "train_split.txt").read_text().splitlines()
    val_lines = (data / "val_split.txt").read_text().splitlines()
    assert len(train_lines) + len(val_lines) == 10 and len(val_lines) >= 2
    common = ["main.py", "--dataset", "custom", "--data_dir", str(data), "--root_log", str(tmp_path / "runs"),
              "--store_name", "mine", "--num_segments", "8", "--num_glance_segments", "4", "--num_focus_segments", "2",
              "--input_size", "64", "--patch_size", "32", "--focus_arch", "resnet18", "--classifier_dim", "16",
              "--stn_hidden_dim", "8", "--temporal_hidden_dim", "8", "--no-pretrained", "--workers", "0",
              "--device", "cpu", "--no-tensorboard", "--batch_size", "4", "--val_batch_size", "4"]
    _run([sys.executable] + common + ["--epochs", "1", "--iters_per_epoch", "2"])
    _run([sys.executable] + common + ["--evaluate", "--resume", str(tmp_path / "runs" / "mine" / "ckpt.pth.tar")])
    metrics = json.loads((tmp_path / "runs" / "mine" / "metrics_eval.json").read_text())["metrics"]
    # Custom datasets are single-label and scored by top-1 accuracy, as Mini-Kinetics is.
    assert metrics["num_videos"] == len(val_lines) and metrics["metric"] == "top1"
    assert 0.0 <= metrics["prediction_top1"] <= 100.0


@pytest.mark.parametrize("script, program, tail", [
    ("train.sh", "main.py", ["--data_dir", "/data/an", "--root_log", "exp", "--epochs", "2"]),
    ("evaluate.sh", "main.py", ["--data_dir", "/data/an", "--evaluate", "--resume", "ck.pth.tar", "--epochs", "2"]),
    ("early_exit.sh", "test_early_exit.py", ["--data_dir", "/data/an", "--evaluate", "--resume", "ck.pth.tar",
                                              "--epochs", "2"]),
])
def test_launch_scripts_run_torchrun_with_the_preset(tmp_path, script, program, tail):
    fake = tmp_path / "torchrun"  # records its arguments instead of launching
    fake.write_text('#!/bin/sh\nprintf "%s\\n" "$PWD" "$@" > "$RECORD"\n')
    fake.chmod(0o755)
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin", "RECORD": str(tmp_path / "args.txt")}
    last = "exp" if script == "train.sh" else "ck.pth.tar"
    subprocess.run(["bash", str(REPO / "scripts" / script), "actnet", "128", "4", "/data/an", last, "--epochs", "2"],
                   check=True, env=env, cwd=tmp_path)
    recorded = (tmp_path / "args.txt").read_text().splitlines()
    assert recorded[0] == str(REPO)
    assert recorded[1:] == ["--standalone", "--nproc_per_node=4", program, "--config", "configs/actnet_p128.yaml"] + tail
    # A missing preset or missing arguments: a message and exit status 2, no launch.
    bad = subprocess.run(["bash", str(REPO / "scripts" / script), "actnet", "100", "4", "/d", last], env=env,
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "no preset configs/actnet_p100.yaml" in bad.stderr
    short = subprocess.run(["bash", str(REPO / "scripts" / script), "actnet"], env=env, capture_output=True, text=True)
    assert short.returncode == 2 and f"scripts/{script} DATASET PATCH NUM_GPUS" in short.stderr


def test_glance_probe_trains_the_glance_alone_and_reports_its_accuracy_on_the_objects_frames(tmp_path, capsys):
    from datasets import synthetic
    from scripts import probe_glance

    data = tmp_path / "data"
    params = {**SYNTHETIC, "num_classes": 4, "twin_classes": 1, "train_videos": 8, "val_videos": 6}
    synthetic.ensure_generated(str(data), workers=1, **params)
    preset = tmp_path / "tiny.yaml"
    preset.write_text(f"dataset: synthetic\ndata_dir: {data}\nsynthetic: {json.dumps(params)}\nnum_segments: 8\n"
                      "num_glance_segments: 4\nnum_focus_segments: 2\ninput_size: 64\npatch_size: 32\n"
                      "focus_arch: resnet18\nclassifier_dim: 32\npretrained: false\nworkers: 0\nbatch_size: 4\n"
                      "val_batch_size: 4\nlr: 0.01\n")
    out = tmp_path / "probe.json"
    before = torch.get_rng_state()
    assert probe_glance.main_cli(["--config", str(preset), "--steps", "3", "--eval_every", "2", "--set",
                                  "glance_size=32", "--flag", "zero_init_residual", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "glance alone: mbv2 at 32 px on 4 frames, residual blocks starting as the identity" in printed
    assert "step 2: loss" in printed
    rows = json.loads(out.read_text())["rows"]
    assert [row["step"] for row in rows] == [2, 3]  # every --eval_every steps, and the last
    # twins count as one group: a group hit is at least as frequent as a class hit
    assert all(0 <= row["class_top1_shown"] <= row["group_top1_shown"] <= 100 for row in rows)
    assert all(row["loss"] > 0 for row in rows)
    torch.set_rng_state(before)
    with pytest.raises(SystemExit):
        probe_glance.main_cli(["--config", str(preset), "--set", "glance_size"])
    assert "expected NAME=VALUE" in capsys.readouterr().err


def test_every_on_off_switch_of_the_user_commands_has_its_no_form():
    """main.py, test_early_exit.py, predict, visualize, extraction and the FLOPs table: no store_true switch is
    left without its --no- form (a preset or a saved config that turns one on can be turned off again)."""
    import argparse

    import test_early_exit
    from datasets import extract
    from models import flops
    from ops import flags
    from scripts import predict, visualize

    parsers = {"main.py": flags.get_args_parser(), "test_early_exit.py": test_early_exit.get_args_parser(),
               "predict": predict.get_args_parser(), "visualize": visualize.get_args_parser(),
               "extract": extract.build_parser(), "flops": flops._build_parser()}
    for name, parser in parsers.items():
        left = [a.option_strings[0] for a in parser._actions if isinstance(a, argparse._StoreTrueAction)]
        assert left == [], (name, left)
    assert predict.get_args_parser().parse_args(["x.mp4", "--checkpoint", "c.pth", "--json", "--no-json"]).json is False


def test_help_prints_every_default_once():
    """Each option of the user commands' --help says its default at most once: an option whose help text
    already names its default gets no ``(default: ...)`` appended."""
    import test_early_exit
    from datasets import extract
    from models import flops
    from ops import flags
    from scripts import ablate, predict, visualize

    parsers = {"main.py": flags.get_args_parser(), "test_early_exit.py": test_early_exit.get_args_parser(),
               "predict": predict.get_args_parser(), "visualize": visualize.get_args_parser(),
               "extract": extract.build_parser(), "flops": flops._build_parser(), "ablate": ablate.get_args_parser()}
    for name, parser in parsers.items():
        formatter = parser._get_formatter()
        for action in parser._actions:
            if not action.help or action.help == "==SUPPRESS==":
                continue
            shown = formatter._get_help_string(action) % {"default": action.default, "prog": parser.prog}
            said = action.help.lower().count("default")
            assert shown.lower().count("default") <= max(1, said), (name, action.option_strings, shown)


def test_predict_model_options_take_main_pys_types_and_choices(capsys):
    """predict's model options parse as main.py's flags: strings with their choices, on/off switches,
    integers; an unknown choice is one line naming the option."""
    from scripts import predict

    parser = predict.get_args_parser()
    args = parser.parse_args(["x.mp4", "--checkpoint", "c.pth", "--patch_transform", "rotation", "--variant",
                              "adafocus_v3", "--cube_frames", "2", "--tsm_encoders", "--no-sample", "--temperature", "0.5"])
    assert (args.patch_transform, args.variant, args.cube_frames, args.tsm_encoders, args.sample, args.temperature) \
        == ("rotation", "adafocus_v3", 2, True, False, 0.5)
    assert parser.parse_args(["x.mp4", "--checkpoint", "c.pth"]).tsm_encoders is None  # not given
    cfg = predict.model_config(args, {})
    assert (cfg["patch_transform"], cfg["cube_frames"], cfg["tsm_encoders"]) == ("rotation", 2, True)
    with pytest.raises(SystemExit):
        parser.parse_args(["x.mp4", "--checkpoint", "c.pth", "--patch_transform", "twist"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--patch_transform" in err and "twist" in err
