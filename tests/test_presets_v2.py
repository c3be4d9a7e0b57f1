"""Each adafocus_v2 and adafocus_v2_tsm preset resolves to the hyper-parameters of the official command of its
released checkpoint (the ActivityNet / FCVID / Mini-Kinetics README command, varied per row as the official train
script does; the Something-Something / Jester README command with its data set and P), parsed through
ops/official_commands.py; the epoch count and its official extra epoch."""
import pytest

from models import get_variant
from ops import config, flags
from ops.official_commands import translate_command
from ops.schedule import base_learning_rate
from support import REPO

# The official README training command (data and log paths aside); rows vary the data set, the glance, P,
# and for Mini-Kinetics the rate and the batch.
TEMPLATE = ("--glance_arch {glance} --dataset {dataset} --data_dir PATH_TO_DATASET --root_log LOG_DIR "
            "--workers 8 --num_segments 16 --dropout 0.2  --fc_dropout 0.2 "
            "--epochs 50 --lr {lr} --lr_type cos --lr_steps 0 0 "
            "--batch_size {batch} --momentum 0.9 --weight_decay 1e-4 "
            "--patch_size {patch} --global_lr_ratio 0.5 --stn_lr_ratio 0.1 --classifier_lr_ratio 5.0 "
            "--hidden_dim 1024 --stn_hidden_dim 2048 --sample")
RES50_INIT = " --glance_ckpt_path ckpt/Initialization_model_prime_resnet50_patch_size_96.pth"
RELEASED = [("actnet", glance, patch) for patch in (96, 128, 160) for glance in ("mbv2", "res50")] + \
           [(dataset, glance, 128) for dataset in ("fcvid", "minik") for glance in ("mbv2", "res50")]
#: Flags the comparison leaves out: the paths, and official flags with no effect here except the variant's own.
IGNORED = ({"config", "explicit", "root_log", "data_dir"} | set(flags.UNUSED_OFFICIAL_FLAGS)) \
    - set(get_variant("adafocus_v2").hyper_parameters)

# The Something-Something / Jester README command (data and log paths aside); rows vary the data set and P.
STH_TEMPLATE = ("{dataset} RGB --root_log LOG_DIR --root_model CKPT_DIR --arch resnet50 --num_segments 8 "
                "--gd 20 -j 8 --lr_steps 0 0 --lr_type cos --epochs 50 "
                "--batch-size 32 --lr 0.01 --wd 5e-4 --dropout 0.5 --consensus_type=avg --eval-freq=1 "
                "--shift --shift_div=8 --shift_place=blockres --npb --print-freq=1 "
                "--patch_size {patch} --global_lr_ratio 0.5 --stn_lr_ratio 0.01")
STH_DATASETS = {"sthv1": "something", "sthv2": "somethingv2", "jester": "jester"}
STH_RELEASED = [(name, patch) for name in ("sthv1", "sthv2") for patch in (128, 144, 160, 176)] + \
               [("jester", 128), ("jester", 176)]
STH_IGNORED = ({"config", "explicit", "root_log", "data_dir"} | set(flags.UNUSED_OFFICIAL_FLAGS)) \
    - set(get_variant("adafocus_v2_tsm").hyper_parameters)


def _official(dataset, glance, patch):
    lr, batch = ("0.003", 48) if dataset == "minik" else ("0.002", 32)
    command = TEMPLATE.format(glance=glance, dataset=dataset, lr=lr, batch=batch, patch=patch)
    return command + (RES50_INIT if glance == "res50" else "")


def _name(dataset, glance, patch):
    return f"v2_{dataset}_{glance}_p{patch}"


def _sth_name(name, patch):
    return f"v2_{name}_p{patch}"


def test_the_variants_list_one_preset_per_released_checkpoint():
    act = sorted(_name(*row) for row in RELEASED)
    sth = sorted(_sth_name(*row) for row in STH_RELEASED)
    assert sorted(get_variant("adafocus_v2").presets) == act
    assert sorted(get_variant("adafocus_v2_tsm").presets) == sth
    assert sorted(p.stem for p in (REPO / "configs").glob("v2_*.yaml")) == sorted(act + sth)


@pytest.mark.parametrize("row", RELEASED, ids=[_name(*row) for row in RELEASED])
def test_preset_equals_the_official_command(row):
    translation = translate_command(f"CUDA_VISIBLE_DEVICES=0,1,2,3 python main_v2.py {_official(*row)}")
    assert translation.script == "main.py" and translation.official.variant == "adafocus_v2"
    official = config.parse_args(translation.args)
    preset = config.parse_args(["--config", str(REPO / "configs" / f"{_name(*row)}.yaml")])
    a = {k: v for k, v in vars(official).items() if k not in IGNORED}
    b = {k: v for k, v in vars(preset).items() if k not in IGNORED}
    assert a == b
    assert "sample" in a and "glance_weights" in a  # the variant's own flags are compared
    dataset, glance, patch = row
    assert (preset.variant, preset.dataset, preset.patch_size, preset.sample) == ("adafocus_v2", dataset, patch, True)
    assert (preset.glance_weights is not None) == (glance == "res50")
    assert (preset.epochs, preset.lr_epochs) == (50, 0)


@pytest.mark.parametrize("row", STH_RELEASED, ids=[_sth_name(*row) for row in STH_RELEASED])
def test_sth_preset_equals_the_official_command(row):
    name, patch = row
    translation = translate_command("python main.py " + STH_TEMPLATE.format(dataset=STH_DATASETS[name], patch=patch))
    assert translation.script == "main.py" and translation.official.variant == "adafocus_v2_tsm"
    official = config.parse_args(translation.args)
    preset = config.parse_args(["--config", str(REPO / "configs" / f"{_sth_name(*row)}.yaml")])
    a = {k: v for k, v in vars(official).items() if k not in STH_IGNORED}
    b = {k: v for k, v in vars(preset).items() if k not in STH_IGNORED}
    assert a == b
    assert (preset.variant, preset.dataset, preset.patch_size) == ("adafocus_v2_tsm", STH_DATASETS[name], patch)
    # the official --num_segments 8 is G; int(1.5 G) focus frames; float32 training; the README's rates
    assert (preset.num_glance_segments, preset.num_segments, preset.num_focus_segments) == (8, 12, 12)
    assert (preset.amp, preset.clip_gradient, preset.batch_size, preset.lr, preset.weight_decay) == \
        (False, 20.0, 32, 0.01, 5e-4)
    assert (preset.stn_lr_ratio, preset.global_lr_ratio, preset.pretrained) == (0.01, 0.5, True)


def test_the_official_extra_epoch_is_an_option():
    """Officially the loop runs epochs 0..50 with the rate of a 50-epoch cosine, the last at 0; here 50 epochs
    by default, and --epochs 51 --lr_epochs 50 is the official run."""
    args = config.parse_args(["--config", str(REPO / "configs" / "v2_actnet_mbv2_p128.yaml"),
                              "--epochs", "51", "--lr_epochs", "50"])
    rates = [base_learning_rate(e, args.lr, args.lr_epochs or args.epochs, args.lr_type, args.lr_steps)
             for e in range(args.epochs)]
    assert len(rates) == 51 and rates[0] == args.lr and abs(rates[-1]) < 1e-18 and min(rates[:-1]) > 0
    with pytest.raises(SystemExit):
        config.parse_args(["--lr_epochs", "-1"])


def test_official_evaluation_command_evaluates_the_checkpoint():
    args = config.parse_args(translate_command(
        "python main_v2.py " + _official("actnet", "mbv2", 128) + " --evaluate --resume ckpt/actnet_p128_mbv2.pth.tar").args)
    assert args.evaluate and args.resume == "ckpt/actnet_p128_mbv2.pth.tar" and args.variant == "adafocus_v2"

