"""Each preset in configs/ resolves to the hyper-parameters of the official README command it reproduces."""
import shlex
from pathlib import Path

import pytest

import datasets
from models import get_variant
from ops import config, flags
from ops.official_commands import translate_arguments
from support import REPO

# The official README's training commands (data and log paths aside), verbatim.
OFFICIAL = {
    "actnet": ("main.py", """--glance_arch mbv2 --dataset actnet --data_dir PATH_TO_DATASET --root_log LOG_DIR
        --workers 16 --num_segments 48 --dropout 0.2  --fc_dropout 0.2
        --epochs 50 --lr 0.002 --lr_type cos --lr_steps 0 0
        --batch_size 32 --momentum 0.9 --weight_decay 2e-4
        --patch_size 128 --global_lr_ratio 0.5 --stn_lr_ratio 0.2 --classifier_lr_ratio 20.0 --temporal_lr_ratio 0.2 --KL_ratio 0.0 --norm_ratio 1.00
        --hidden_dim 1024 --stn_hidden_dim 128 --temporal_hidden_dim 64
        --num_glance_segments 16 --num_focus_segments 16 --temperature 1.0"""),
    "fcvid": ("main_semiAMP.py", """--glance_arch mbv2 --dataset fcvid --data_dir PATH_TO_DATASET --root_log LOG_DIR
        --workers 16 --num_segments 48 --dropout 0.2  --fc_dropout 0.2
        --epochs 50 --lr 0.004 --lr_type cos --lr_steps 0 0
        --batch_size 64 --momentum 0.9 --weight_decay 1e-4
        --patch_size 128 --global_lr_ratio 0.5 --stn_lr_ratio 0.2 --classifier_lr_ratio 20.0 --temporal_lr_ratio 0.2 --KL_ratio 0.0 --norm_ratio 1.00
        --hidden_dim 1024 --stn_hidden_dim 128 --temporal_hidden_dim 64
        --num_glance_segments 16 --num_focus_segments 16 --temperature 1.0 --print-freq 50"""),
    "minik": ("main_semiAMP.py", """--glance_arch mbv2 --dataset minik --data_dir PATH_TO_DATASET --root_log LOG_DIR
        --workers 16 --num_segments 48 --dropout 0.2  --fc_dropout 0.1
        --epochs 50 --lr 0.003 --lr_type cos --lr_steps 0 0
        --batch_size 48 --momentum 0.9 --weight_decay 1e-4
        --patch_size 128 --global_lr_ratio 0.5 --stn_lr_ratio 0.2 --classifier_lr_ratio 20.0 --temporal_lr_ratio 0.2 --KL_ratio 0.0 --norm_ratio 0.75
        --hidden_dim 1024 --stn_hidden_dim 128 --temporal_hidden_dim 64
        --num_glance_segments 16 --num_focus_segments 16 --temperature 1.0 --print-freq 50"""),
}
IGNORED = {"config", "explicit"} | set(flags.UNUSED_OFFICIAL_FLAGS)


@pytest.mark.parametrize("dataset", sorted(OFFICIAL))
@pytest.mark.parametrize("patch", [96, 128, 160])
def test_preset_equals_the_official_command(dataset, patch):
    script, command = OFFICIAL[dataset]
    # the official script as ours (ops/official_commands.py: main_semiAMP.py is main.py --amp --amp_dtype float16)
    _, ours, _, _ = translate_arguments(script, shlex.split(command) + ["--patch_size", str(patch)])
    official = config.parse_args(ours)
    preset = config.parse_args(["--config", str(REPO / "configs" / f"{dataset}_p{patch}.yaml"),
                              "--data_dir", "PATH_TO_DATASET", "--root_log", "LOG_DIR"])
    a = {k: v for k, v in vars(official).items() if k not in IGNORED}
    b = {k: v for k, v in vars(preset).items() if k not in IGNORED}
    assert a == b


def test_every_preset_file_loads():
    for path in sorted(Path(REPO / "configs").glob("*.yaml")):
        args = config.parse_args(["--config", str(path)])
        assert args.dataset in datasets.DATASETS


def test_the_variant_lists_exactly_the_presets_of_its_official_runs():
    variant = get_variant("mn2_r50")
    assert sorted(variant.presets) == sorted(f"{d}_p{p}" for d in OFFICIAL for p in (96, 128, 160))
    for name in variant.presets:
        args = config.parse_args(["--config", str(REPO / "configs" / f"{name}.yaml")])
        assert args.variant == variant.name and args.dataset in variant.datasets
