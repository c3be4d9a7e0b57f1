"""``main.py --evaluate --resume RUN/ckpt.best.pth.tar`` alone evaluates a run trained here: the model
sizes, the data set and its folder come from the configuration saved in the checkpoint, and the
evaluation writes beside it. A data set that cannot be found is one line naming ``--config``; every
on/off flag has its ``--no-`` form (a run's config.yaml can be overridden)."""
import argparse
import json
import os
import shutil
import sys

import pytest
import torch

import entry_points
from support import REPO

import test_early_exit
from ops import config, flags

TINY = ("--dataset synthetic --num_segments 8 --num_glance_segments 4 --num_focus_segments 4 --input_size 64 "
        "--patch_size 32 --focus_arch resnet18 --classifier_dim 32 --stn_hidden_dim 16 --temporal_hidden_dim 8 "
        "--no-pretrained --workers 0 --device cpu --lr 0.01 --print-freq 1 --no-tensorboard --num_visualised 1")
SYNTHETIC = {"train_videos": 8, "val_videos": 5, "frames_per_video": 10, "frame_size": 64, "num_classes": 3,
             "num_distractors": [1, 2]}


def _env():
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


def _main(args, cwd):
    result = entry_points.run([sys.executable, str(REPO / "main.py")] + [str(a) for a in args], cwd=cwd, env=_env(),
                              timeout=420)
    return result


def _ok(result):
    assert result.returncode == 0, f"STDOUT\n{result.stdout[-3000:]}\nSTDERR\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A tiny synthetic run (2 epochs, --policy_ablation) in its own data folder: (run folder, data folder)."""
    from datasets import synthetic

    root = tmp_path_factory.mktemp("evaluate_alone")
    data = root / "data"
    synthetic.ensure_generated(str(data), workers=1, **SYNTHETIC)
    _ok(_main(TINY.split() + ["--data_dir", data, "--synthetic", json.dumps(SYNTHETIC), "--root_log", root / "runs",
                              "--store_name", "tiny", "--epochs", "2", "--iters_per_epoch", "2", "--batch_size", "4",
                              "--policy_ablation"], cwd=root))
    return root / "runs" / "tiny", data


def test_evaluate_resume_alone_reproduces_the_runs_evaluation(trained_run, tmp_path):
    run, _ = trained_run
    best = json.loads((run / "metrics.json").read_text())["best"]
    _ok(_main(["--evaluate", "--resume", run / "ckpt.best.pth.tar"], cwd=tmp_path))
    assert os.listdir(tmp_path) == []  # nothing written where it ran: the evaluation writes beside the run
    metrics = json.loads((run / "metrics_eval.json").read_text())["metrics"]
    assert metrics["metric"] == "top1" and metrics["num_videos"] == SYNTHETIC["val_videos"]
    assert metrics["score"] == pytest.approx(best["score"], abs=1e-6)
    assert "policy_ablation" not in metrics  # a training-run option, not taken from the checkpoint
    saved = config.load_config_file(str(run / "config_eval.yaml"), flags.get_args_parser())
    assert (saved["dataset"], saved["patch_size"], saved["focus_arch"]) == ("synthetic", 32, "resnet18")


def test_the_runs_config_with_no_policy_ablation(trained_run, tmp_path):
    run, _ = trained_run
    common = ["--config", run / "config.yaml", "--evaluate", "--resume", run / "ckpt.best.pth.tar",
              "--root_log", tmp_path]
    _ok(_main(common + ["--store_name", "on"], cwd=tmp_path))
    _ok(_main(common + ["--store_name", "off", "--no-policy_ablation"], cwd=tmp_path))
    on = json.loads((tmp_path / "on" / "metrics_eval.json").read_text())["metrics"]
    off = json.loads((tmp_path / "off" / "metrics_eval.json").read_text())["metrics"]
    assert "policy_ablation" in on and "policy_ablation" not in off
    assert on["score"] == off["score"]


def test_a_checkpoint_whose_data_folder_is_gone_names_config(trained_run, tmp_path, capsys):
    run, data = trained_run
    moved = tmp_path / "run"
    moved.mkdir()
    ckpt = torch.load(run / "ckpt.best.pth.tar", weights_only=True)
    ckpt["config"]["data_dir"] = str(tmp_path / "gone")
    torch.save(ckpt, moved / "ckpt.best.pth.tar")
    parser = flags.get_args_parser()
    args = config.parse_args(["--evaluate", "--resume", str(moved / "ckpt.best.pth.tar")], parser)
    with pytest.raises(SystemExit) as exc:
        config.adopt_checkpoint_config(args, parser)
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1
    assert str(tmp_path / "gone") in err[0] and "--config RUN/config.yaml" in err[0] and "--data_dir DIR" in err[0]
    shutil.copy(run / "config.yaml", moved / "config.yaml")  # the real path when the run's config is beside it
    with pytest.raises(SystemExit):
        config.adopt_checkpoint_config(config.parse_args(["--evaluate", "--resume", str(moved / "ckpt.best.pth.tar")],
                                                         parser), parser)
    assert f"--config {moved / 'config.yaml'}" in capsys.readouterr().err
    args = config.parse_args(["--evaluate", "--resume", str(moved / "ckpt.best.pth.tar"), "--data_dir", str(data)],
                             parser)
    assert config.adopt_checkpoint_config(args, parser)  # a flag wins over the saved folder
    assert (args.dataset, args.data_dir, args.synthetic) == ("synthetic", str(data), SYNTHETIC)
    assert (args.root_log, args.store_name) == (str(tmp_path), "run")


def test_a_checkpoint_without_configuration_names_config(tmp_path, capsys):
    path = tmp_path / "official.pth.tar"
    torch.save({"epoch": 3, "state_dict": {}}, path)
    parser = flags.get_args_parser()
    with pytest.raises(SystemExit) as exc:
        config.adopt_checkpoint_config(config.parse_args(["--evaluate", "--resume", str(path)], parser), parser)
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1 and "holds no data set configuration" in err[0]
    assert "--config RUN/config.yaml" in err[0] and "--dataset and --data_dir" in err[0]
    args = config.parse_args(["--evaluate", "--resume", str(path), "--dataset", "fcvid", "--data_dir", str(tmp_path)],
                             parser)
    assert not config.adopt_checkpoint_config(args, parser)


def test_an_explicit_other_data_set_takes_nothing_of_the_saved_data(trained_run):
    run, _ = trained_run
    parser = flags.get_args_parser()
    args = config.parse_args(["--resume", str(run / "ckpt.best.pth.tar"), "--dataset", "actnet"], parser)
    assert config.adopt_checkpoint_config(args, parser)
    assert (args.dataset, args.data_dir, args.patch_size) == ("actnet", "", 32)
    assert args.root_log == "exp"  # training continues where the flags say


@pytest.mark.parametrize("get_parser", [flags.get_args_parser, test_early_exit.get_args_parser])
def test_every_on_off_flag_has_its_no_form(get_parser):
    parser = get_parser()
    switches = [a for a in parser._actions if a.nargs == 0 and not isinstance(a, argparse._HelpAction)]
    assert [a.dest for a in switches if not isinstance(a, argparse.BooleanOptionalAction)] == []
    for action in switches:
        for flag in (f for f in action.option_strings if f.startswith("--") and not f.startswith("--no-")):
            assert f"--no-{flag[2:]}" in action.option_strings


def test_no_forms_override_a_config_file_and_the_official_spellings_still_work(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("policy_ablation: true\namp: true\nsave_predictions: true\n")
    args = config.parse_args(["--config", str(cfg), "--no-policy_ablation", "--no-amp"])
    assert (args.policy_ablation, args.amp, args.save_predictions) == (False, False, True)
    args = config.parse_args(["-e", "--npb", "--no_partialbn", "--shift", "--sample"])
    assert args.evaluate and args.npb and args.shift and args.sample
    assert not config.parse_args(["--no-npb"]).npb


def test_every_variant_hyper_parameter_is_restored_or_declared_training_only():
    """Each registered variant's hyper-parameter comes back from a checkpoint's saved configuration
    (MODEL_KEYS / PREDICTION_KEYS) or is listed, with its reason, as changing only the training."""
    import models

    restored = set(config.MODEL_KEYS) | set(config.PREDICTION_KEYS)
    assert not restored & set(config.TRAINING_ONLY_KEYS)
    assert all(reason.strip() for reason in config.TRAINING_ONLY_KEYS.values())
    used = set()
    for name, variant in models.VARIANTS.items():
        unlisted = [k for k in variant.hyper_parameters if k not in restored and k not in config.TRAINING_ONLY_KEYS]
        assert unlisted == [], f"{name}: {unlisted}"
        used |= set(variant.hyper_parameters)
    assert set(config.TRAINING_ONLY_KEYS) <= used  # no stale entry


@pytest.mark.parametrize("variant,saved", [
    ("adafocus_v3", {"cube_frames": 2, "tsm_encoders": True, "num_segments": 8, "num_glance_segments": 4,
                     "num_focus_segments": 3, "patch_size": 32, "input_size": 64, "shift_div": 4}),
    ("adafocus_v2", {"sample": False, "num_segments": 6}),
])
def test_evaluate_resume_restores_the_variants_forward_settings(variant, saved, tmp_path):
    """--evaluate --resume of a run whose model differs from the variant's defaults (an AdaFocusV3 run with
    T' = 2 cubes and shifted encoders; an AdaFocusV2 run without the coarse-to-fine order) rebuilds it."""
    parser = flags.get_args_parser()
    run = config.plain_config(config.parse_args(["--variant", variant, "--dataset", "synthetic"]
                                                + [f"--{k}={v}" if not isinstance(v, bool) else
                                                   f"--{'' if v else 'no-'}{k}" for k, v in saved.items()], parser))
    path = tmp_path / "ckpt.pth.tar"
    torch.save({"config": run, "state_dict": {}}, path)
    args = config.parse_args(["--evaluate", "--resume", str(path)], parser)
    assert config.adopt_checkpoint_config(args, parser)
    assert {k: getattr(args, k) for k in saved} == saved
