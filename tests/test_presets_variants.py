"""Each tsm and x3d preset resolves to the hyper-parameters of the official command it reproduces, and
the official command line itself runs (positional ``DATASET RGB``, ``--batch-size``, ``--wd``, ``--gd``,
``--npb``, ``--shift ...``, ``--root_log``/``--root_model``); its launcher flags are refused with the
equivalent torchrun command, which ops/official_commands.py gives."""
import shlex

import pytest

from models import get_variant
from ops import config, flags
from ops.official_commands import translate_command
from support import REPO

# The official README's nine commands (one template, varied per row), data paths aside.
TEMPLATE = ("{dataset} RGB --root_log LOG_DIR --root_model LOG_DIR --arch resnet50 --num_glance_segments 8 "
            "--num_input_focus_segments {t0} "
            "--num_focus_segments {focus} --gd 20 -j {workers} --lr_steps 0 0 --lr_type cos --epochs 50 "
            "--batch-size 64 --lr 0.02 --wd {wd} --dropout 0.5 --consensus_type=avg --eval-freq=1 --shift "
            "--shift_div=8 --shift_place=blockres --npb --print-freq=50 --patch_size {patch} --stn_hidden_dim 128 "
            "--temporal_hidden_dim 64 --global_lr_ratio 0.5 --stn_lr_ratio 0.20 --temporal_lr_ratio 0.20 "
            "--temperature 1.0 --norm_ratio {norm}")
LAUNCHER = "--multiprocessing-distributed --world-size 1 --rank 0 --dist-url tcp://127.0.0.1:12345 --dist-backend nccl"
ROWS = {  # preset: (dataset, patch, focus, T0, wd, norm_ratio, workers)
    "sthv1_p96_8x8": ("something", 96, 8, 24, "1e-3", "0.50", 16),
    "sthv1_p96_8x12": ("something", 96, 12, 36, "1e-3", "0.50", 16),
    "sthv1_p128_8x12": ("something", 128, 12, 36, "1e-3", "0.50", 16),
    "sthv1_p128_8x16": ("something", 128, 16, 48, "1e-3", "0.50", 16),
    "sthv2_p96_8x8": ("somethingv2", 96, 8, 24, "5e-4", "0.50", 16),
    "sthv2_p96_8x12": ("somethingv2", 96, 12, 36, "5e-4", "0.50", 16),
    "sthv2_p128_8x12": ("somethingv2", 128, 12, 36, "5e-4", "0.50", 12),
    "sthv2_p128_8x16": ("somethingv2", 128, 16, 48, "5e-4", "0.50", 16),
    "jester_p128_8x12": ("jester", 128, 12, 36, "1e-3", "0.25", 16),
}
IGNORED = {"config", "explicit", "root_log", "data_dir"} | set(flags.UNUSED_OFFICIAL_FLAGS)


def _official(name):
    dataset, patch, focus, t0, wd, norm, workers = ROWS[name]
    return TEMPLATE.format(dataset=dataset, patch=patch, focus=focus, t0=t0, wd=wd, norm=norm, workers=workers)


def _ours(official_arguments, script="main.py"):
    """Our arguments for the official README line ``python SCRIPT ARGUMENTS`` with its launcher flags."""
    return translate_command(f"CUDA_VISIBLE_DEVICES=0,1,2,3 python {script} {official_arguments} {LAUNCHER}").args


def test_the_variant_lists_one_preset_per_official_command():
    assert sorted(get_variant("tsm").presets) == sorted(ROWS)


@pytest.mark.parametrize("name", sorted(ROWS))
def test_preset_equals_the_official_command(name):
    official = config.parse_args(_ours(_official(name)))
    preset = config.parse_args(["--config", str(REPO / "configs" / f"{name}.yaml")])
    a = {k: v for k, v in vars(official).items() if k not in IGNORED}
    b = {k: v for k, v in vars(preset).items() if k not in IGNORED}
    assert a == b
    assert (preset.amp, preset.amp_dtype) == (True, "float16")  # the official tsm main.py trains under float16 AMP
    assert (preset.variant, preset.clip_gradient, preset.batch_size, preset.dropout) == ("tsm", 20.0, 64, 0.5)


def test_official_effective_hyper_parameters():
    args = config.parse_args(shlex.split(_official("jester_p128_8x12")))
    assert (args.variant, args.dataset, args.num_segments, args.num_glance_segments, args.num_focus_segments) == \
        ("tsm", "jester", 36, 8, 12)
    assert (args.weight_decay, args.norm_ratio, args.lr, args.clip_gradient, args.eval_freq) == (1e-3, 0.25, 0.02, 20.0, 1)
    assert args.pretrained  # the official default --pretrain imagenet


def test_official_launcher_flags_are_refused_with_the_torchrun_command(capsys):
    with pytest.raises(SystemExit) as exc:
        config.parse_args(shlex.split(_official("sthv1_p128_8x12") + " " + LAUNCHER))
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "torchrun" in err and "--nproc_per_node=NUM_GPUS main.py" in err


def test_flow_modality_is_refused_in_one_line():
    with pytest.raises(SystemExit, match="only RGB"):
        config.parse_args(["something", "Flow"])


def test_tsm_run_names_hold_the_patch_and_frame_counts():
    a = config.parse_args(shlex.split(_official("sthv1_p96_8x8")))
    b = config.parse_args(shlex.split(_official("sthv1_p128_8x12")))
    assert config.run_name(a) != config.run_name(b)


# The official x3d README command (training; evaluation adds --evaluate --test_crops 3 --resume CKPT).
X3D_OFFICIAL = ("kinetics RGB --root_log LOG_DIR --root_model LOG_DIR --arch resnet50 --num_glance_segments 16 --num_input_focus_segments 96 "
                "--num_focus_segments 32 --gd 20 -j 24 --lr_steps 0 0 --lr_type cos --epochs 50 --batch-size 64 "
                "--lr 0.005 --wd 5e-5 --dropout 0.5 --consensus_type=avg --eval-freq=1 --shift --shift_div=8 "
                "--shift_place=blockres --npb --print-freq=50 --glance_size 160 --patch_size 128 --stn_hidden_dim 128 "
                "--temporal_hidden_dim 64 --global_lr_ratio 0.5 --stn_lr_ratio 0.40 --temporal_lr_ratio 0.40 "
                "--temperature 1.0 --norm_ratio 0.50")


def test_x3d_preset_equals_the_official_command():
    assert get_variant("x3d").presets == ("k400_p128_16x32",)
    official = config.parse_args(_ours(X3D_OFFICIAL))  # float16 autocast and a gradient scaler, as officially
    preset = config.parse_args(["--config", str(REPO / "configs" / "k400_p128_16x32.yaml")])
    a = {k: v for k, v in vars(official).items() if k not in IGNORED}
    b = {k: v for k, v in vars(preset).items() if k not in IGNORED}
    assert a == b
    assert (preset.variant, preset.dataset, preset.glance_size, preset.clip_gradient, preset.stn_lr_ratio) == \
        ("x3d", "kinetics", 160, 20.0, 0.4)


def test_x3d_official_evaluation_command_asks_for_three_views():
    args = config.parse_args(_ours(X3D_OFFICIAL + " --evaluate --test_crops 3 --resume ck.pth.tar",
                                   script="main_nViewEval.py"))
    assert args.evaluate and args.test_crops == 3 and args.variant == "x3d" and args.root_log == "LOG_DIR"
