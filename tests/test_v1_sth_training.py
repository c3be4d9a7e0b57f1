"""AdaFocus V1's Something-Something form (``adafocus_v1_tsm``) trained in stages through main.py
(ops/staged_training.py), on tiny sizes on the CPU: stages 1 -> 2 -> 3 on the synthetic data, each from the
previous run's checkpoint; with the official learning-rate groups (the default) each changes exactly what the
official optimiser updated (stage 1 the focus encoder's first convolution and its BatchNorm statistics, stage 3
with the README's backbone_lr 0 nothing), with ``--no-official_lr_groups`` what the stages were meant to train;
kill -9 and ``--resume auto`` in stage 2 ending bit for bit where an uninterrupted run ends; two processes'
stage 2 giving one process's policy; the refusals; the README presets."""
from __future__ import annotations

import inspect
import json
import shlex
import sys

import pytest
import torch

import entry_points
from support import REPO
from test_v1_training import (SYNTHETIC, _changed, _check, _env, _weights, data_dir,  # noqa: F401 (a fixture)
                              _refusal as v1_refusal, kill_and_resume, two_processes_update_as_one)

from models import get_variant
from models.adafocus_v1_sth import AdaFocusV1TSM
from models.ppo import RolloutMemory
from ops import build, config
from ops.distributed import DistInfo
from ops.rng import epoch_seed, seed_everything

#: Tiny sizes: 4 glance and 6 focus frames of 64 px, 32-px boxes, a 16-wide policy.
STH_TINY = ("--variant adafocus_v1_tsm --dataset synthetic --num_glance_segments 4 --num_segments 6 "
            "--num_focus_segments 6 --input_size 64 --patch_size 32 --glance_size 64 --hidden_state_dim 16 "
            "--no-pretrained --workers 0 --device cpu --no-tensorboard --num_visualised 0 --batch_size 4 "
            "--val_batch_size 4 --print_freq 1")
#: What the official optimiser updated in each stage (parameters; stage 1 also the focus BatchNorm statistics),
#: and what each stage is meant to train (--no-official_lr_groups; stage 3 with backbone_lr 0).
OFFICIAL = {1: {"focus.conv1.weight"}, 2: None, 3: set()}
INTENDED = {1: ("focus.", "classifier."), 3: ("classifier.",)}


def _main(data_dir, root, *extra):
    """main.py's arguments (without the interpreter: torchrun takes them too)."""
    return (["main.py"] + STH_TINY.split() + ["--data_dir", str(data_dir), "--synthetic", json.dumps(SYNTHETIC),
                                              "--root_log", str(root)] + list(extra))


def _python(argv):
    return [sys.executable] + argv


def _initial_weights(data_dir, seed: int = 1):
    """The weights stage 1 starts from: the model main.py builds (seeded as main.py seeds before building)."""
    args = config.parse_args(STH_TINY.split() + ["--data_dir", str(data_dir), "--synthetic", json.dumps(SYNTHETIC),
                                                 "--seed", str(seed)])
    seed_everything(epoch_seed(args.seed, 0, 0))
    return {k: v.clone() for k, v in build.build_model(args, SYNTHETIC["num_classes"], DistInfo()).state_dict().items()}


@pytest.fixture(scope="module")
def sth_stages(data_dir, tmp_path_factory):
    """Stages 1, 2, 3 with the official groups (stage 3 at the README's backbone_lr 0), and stages 1 and 3 with
    the intended ones (stage 3 from the same stage-2 run), one epoch of two steps each; their run folders."""
    root = tmp_path_factory.mktemp("sth_stages")
    common = ["--epochs", "1", "--iters_per_epoch", "2", "--seed", "1"]
    s2 = str(root / "s2" / "ckpt.pth.tar")
    runs = {"s1": ["--stage", "1"], "s1i": ["--stage", "1", "--no-official_lr_groups"],
            "s2": ["--stage", "2", "--stage_checkpoint", str(root / "s1" / "ckpt.pth.tar")],
            "s3": ["--stage", "3", "--backbone_lr", "0", "--stage_checkpoint", s2],
            "s3i": ["--stage", "3", "--backbone_lr", "0", "--no-official_lr_groups", "--stage_checkpoint", s2]}
    for group in (("s1", "s1i"), ("s2",), ("s3", "s3i")):
        commands = [_python(_main(data_dir, root, *common, *runs[name], "--store_name", name)) for name in group]
        for result in entry_points.run_many(commands, env=_env(), timeout=420):
            _check(result)
    return {name: root / name for name in runs}


def _tiny_sth(seed=0):
    torch.manual_seed(seed)
    return AdaFocusV1TSM(num_classes=3, num_segments=6, num_glance_segments=4, patch_size=32, input_size=64,
                         glance_size=64, hidden_state_dim=16).eval()


PARAMETERS = {k for k, _ in _tiny_sth().named_parameters()}


def _split(before, after):
    """(changed parameters, changed buffers) between two state dicts of the tiny model."""
    changed = _changed(before, after)
    return {k for k in changed if k in PARAMETERS}, {k for k in changed if k not in PARAMETERS}


def test_official_groups_change_exactly_what_the_official_optimiser_updated(data_dir, sth_stages):
    for name, stage in (("s1", 1), ("s2", 2), ("s3", 3)):
        ckpt = torch.load(sth_stages[name] / "ckpt.pth.tar", weights_only=True)
        assert ckpt["stage"] == stage and ckpt["config"]["variant"] == "adafocus_v1_tsm" and ckpt["epoch"] == 1
        assert ckpt["config"]["official_lr_groups"] is True
        log = (sth_stages[name] / "log.txt").read_text()
        assert "epoch 0 [2/2]" in log and "epoch 0 validation" in log
    initial = _initial_weights(data_dir)
    s1, s2, s3 = (_weights(sth_stages[n] / "ckpt.pth.tar") for n in ("s1", "s2", "s3"))
    assert all(torch.equal(initial[k], s1[k]) for k in initial if k.startswith(("glance.", "policy."))), \
        "the rebuilt initial model is not the one stage 1 started from"
    params, buffers = _split(initial, s1)
    assert params == OFFICIAL[1]
    assert buffers and all(k.startswith("focus.") and (".running_" in k or k.endswith("num_batches_tracked"))
                           for k in buffers), sorted(buffers)[:5]
    params, buffers = _split(s1, s2)  # the policy and its BatchNorm statistics
    assert params and all(k.startswith("policy.spatial.") for k in params | buffers), sorted(params | buffers)[:5]
    assert any("running_mean" in k for k in buffers)
    assert _changed(s2, s3) == OFFICIAL[3]  # backbone_lr 0: nothing at all (the focus encoder in eval mode)
    assert "nothing trains" in (sth_stages["s3"] / "log.txt").read_text()


def test_intended_groups_train_the_focus_encoder_and_the_classifier(data_dir, sth_stages):
    initial = _initial_weights(data_dir)
    s1 = _weights(sth_stages["s1i"] / "ckpt.pth.tar")
    params, buffers = _split(initial, s1)
    assert all(k.startswith(INTENDED[1]) for k in params | buffers), sorted(params | buffers)[:5]
    assert params == {k for k in PARAMETERS if k.startswith(INTENDED[1])}
    s2, s3 = _weights(sth_stages["s2"] / "ckpt.pth.tar"), _weights(sth_stages["s3i"] / "ckpt.pth.tar")
    assert _changed(s2, s3) == {"classifier.weight", "classifier.bias"}
    assert torch.load(sth_stages["s3i"] / "ckpt.pth.tar", weights_only=True)["config"]["official_lr_groups"] is False


def test_the_trained_model_evaluates_through_main_py(data_dir, sth_stages, tmp_path):
    ckpt = sth_stages["s3i"] / "ckpt.pth.tar"
    _check(entry_points.run(_python(_main(data_dir, tmp_path, "--evaluate", "--resume", str(ckpt), "--store_name",
                                          "eval")), env=_env(), timeout=300))
    metrics = json.loads((tmp_path / "eval" / "metrics_eval.json").read_text())["metrics"]
    assert metrics["num_videos"] == SYNTHETIC["val_videos"] and 0 <= metrics["score"] <= 100


# ------------------------------------------------------------------------------------------------
# Refusals
# ------------------------------------------------------------------------------------------------
def _refusal(argv):
    return v1_refusal(argv, STH_TINY)


def test_bad_stages_and_hand_overs_are_refused_in_one_line(sth_stages, tmp_path):
    assert _refusal([]) == ("--variant adafocus_v1_tsm trains in the official stages: pass --stage 1, 2 or 3 "
                            "(docs/adafocus-v1.md; presets configs/v1_*_stage*.yaml), or --evaluate")
    assert _refusal(["--stage", "0"]).startswith("--stage 0: adafocus_v1_tsm's encoders are pre-trained apart")
    assert _refusal(["--stage", "1", "--stage_checkpoint", "x.pth.tar"]).startswith(
        "--stage_checkpoint: stage 1 of adafocus_v1_tsm starts from its encoders' initial weights")
    stage1 = sth_stages["s1"] / "ckpt.pth.tar"
    assert _refusal(["--stage", "3", "--stage_checkpoint", str(stage1)]) == \
        f"--stage_checkpoint {stage1}: a stage-1 checkpoint; stage 3 starts from a stage-2 one"
    # an adafocus_v1 (ActivityNet form) checkpoint
    from ops.checkpoint import save_checkpoint

    act_args = config.parse_args(["--variant", "adafocus_v1", "--num_segments", "4", "--input_size", "64",
                                  "--patch_size", "32", "--glance_size", "64", "--action_dim", "25",
                                  "--hidden_state_dim", "16", "--hidden_dim", "12", "--no-pretrained", "--stage", "1"])
    act = get_variant("adafocus_v1").build_from(act_args, num_classes=3)
    path = tmp_path / "act.pth.tar"
    save_checkpoint(str(path), act, epoch=1, config=config.plain_config(act_args), stage=1)
    assert _refusal(["--stage", "2", "--stage_checkpoint", str(path)]) == \
        (f"--stage_checkpoint {path}: a adafocus_v1 checkpoint; the stages of adafocus_v1_tsm read adafocus_v1_tsm "
         "checkpoints (AdaFocusV2 and Uni-AdaFocus train end to end)")


# ------------------------------------------------------------------------------------------------
# Resume and processes
# ------------------------------------------------------------------------------------------------
def test_killed_stage_2_resumes_to_the_same_policy(data_dir, sth_stages, tmp_path):
    """kill -9 in stage 2's second epoch, then --resume auto: the weights (the policy and its BatchNorm
    statistics), the Adam state and the acting copy end bit for bit where an uninterrupted run ends."""
    root = tmp_path / "runs"
    args = ["--epochs", "3", "--iters_per_epoch", "2", "--seed", "5", "--stage", "2", "--stage_checkpoint",
            str(sth_stages["s1"] / "ckpt.pth.tar")]
    straight, _ = kill_and_resume(root, lambda name: _python(_main(data_dir, root, *args, "--store_name", name)))
    assert any(not torch.equal(straight["model"][k], v)
               for k, v in _weights(sth_stages["s1"] / "ckpt.pth.tar").items())


def _sth_rollout(model, ppo, rank, batch):
    """Rank ``rank``'s stage-2 episode on its own ``batch`` videos (its own draws)."""
    g = torch.Generator().manual_seed(100 + rank)
    video, glance = torch.randn(batch, 6, 3, 64, 64, generator=g), torch.randn(batch, 4, 3, 64, 64, generator=g)
    labels = torch.randint(0, 3, (batch,), generator=g)
    memory = RolloutMemory()
    model.policy.spatial.train()
    ppo.policy_old.train()
    model.stage2_rollout(video, glance, labels, ppo, memory, generator=g)
    return memory


@pytest.mark.parametrize("batches", [(2, 2), (3, 2)])  # equal shares, and a short last batch on rank 1
def test_two_processes_update_the_gaussian_policy_as_one_process_with_both_batches(tmp_path, batches):
    """Each process acts on its own videos (the acting copy's BatchNorm sees its own batch, as one process
    acting on each share), the memories are gathered, and every process applies the one update: the same
    policy, BatchNorm statistics included, as one process updating from both memories."""
    two_processes_update_as_one(tmp_path, batches, _tiny_sth, _sth_rollout)


def test_a_two_process_stage_2_runs_through_torchrun(data_dir, sth_stages, tmp_path):
    root = tmp_path / "runs"
    _check(entry_points.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone"]
                            + _main(data_dir, root, "--epochs", "1", "--iters_per_epoch", "2", "--stage", "2",
                                    "--stage_checkpoint", str(sth_stages["s1"] / "ckpt.pth.tar"), "--store_name",
                                    "ddp", "--eval_freq", "0"), env=_env(), timeout=420))
    log = (root / "ddp" / "log.txt").read_text()
    assert "training on 2 process(es)" in log and "(2 per process)" in log and "epoch 0 [2/2] stage 2" in log
    assert torch.load(root / "ddp" / "ckpt.pth.tar", weights_only=True)["stage"] == 2


# ------------------------------------------------------------------------------------------------
# The README presets
# ------------------------------------------------------------------------------------------------
#: The official train_stage{1,2,3}.sh arguments (data_dir, dist_url, the checkpoint paths and the launcher aside).
README = {
    1: "dataset=somethingv1 train_stage=1 batch_size=64 num_segments_glancer=8 num_segments_focuser=12 glance_size=224 "
       "patch_size=144 random_patch=True epochs=10 backbone_lr=0.00001 fc_lr=0.01 lr_type=cos dropout=0.5 "
       "load_pretrained_focuser_fc=False eval_freq=1 start_eval=0 print_freq=25 workers=8",
    2: "dataset=somethingv1 train_stage=2 batch_size=64 num_segments_glancer=8 num_segments_focuser=12 glance_size=224 "
       "patch_size=144 random_patch=False epochs=50 policy_lr=0.0003 gamma=0.7 with_glancer=True ppo_continuous=True "
       "action_std=0.25 actorcritic_with_bn=True workers=8 eval_freq=1",
    3: "dataset=somethingv1 train_stage=3 batch_size=32 num_segments_glancer=8 num_segments_focuser=12 glance_size=224 "
       "patch_size=144 random_patch=False epochs=10 backbone_lr=0. fc_lr=0.0005 lr_type=cos workers=8 dropout=0 "
       "ppo_continuous=True action_std=0.25 actorcritic_with_bn=True with_glancer=True load_pretrained_s2_fc=True "
       "eval_freq=1 start_eval=0 print_freq=25 amp=False multiprocessing_distributed=False",
}
#: The official configuration's values of the keys the scripts leave out (conf/stage{1,2,3}.yaml).
OFFICIAL_DEFAULTS = "momentum=0.9 weight_decay=1e-4 dropout=0.5 hidden_state_dim=1024 input_size=224"
#: Keys given by the model's defaults (no flag): the README's value must be the default.
MODEL_DEFAULTS = {"ppo_continuous": True, "action_std": 0.25, "actorcritic_with_bn": True}
DATASETS = {"somethingv1": "something", "somethingv2": "somethingv2"}


def official_to_ours(tokens):
    """The official key=value tokens as our flags (docs/adafocus-v1.md lists the mapping)."""
    values = dict(t.split("=", 1) for t in tokens)
    flags = ["--variant", "adafocus_v1_tsm"]
    # given by the stage (random boxes in stage 1), the loading (the classifier always), the launcher, the
    # validation every eval_freq epochs
    dropped = {"random_patch", "load_pretrained_focuser_fc", "load_pretrained_s2_fc", "multiprocessing_distributed",
               "start_eval"}
    signature = inspect.signature(AdaFocusV1TSM).parameters
    for key, value in values.items():
        if key in dropped:
            continue
        if key in MODEL_DEFAULTS:
            assert signature[key].default == MODEL_DEFAULTS[key] == (value == "True" if value in ("True", "False")
                                                                    else float(value)), key
        elif key == "dataset":
            flags += ["--dataset", DATASETS[value]]
        elif key == "num_segments_glancer":
            flags += ["--num_glance_segments", value]
        elif key == "num_segments_focuser":
            flags += ["--num_segments", value, "--num_focus_segments", value]
        elif key == "epochs":  # the official loop runs epochs + 1 epochs, the rate reaching 0 in the last
            flags += ["--epochs", str(int(value) + 1), "--lr_epochs", value]
        elif value in ("True", "False"):
            flags.append(f"--{'' if value == 'True' else 'no-'}{key}")
        else:
            flags += [f"--{'stage' if key == 'train_stage' else key}", value]
    return flags


@pytest.mark.parametrize("version", ["sthv1", "sthv2"])
@pytest.mark.parametrize("patch", [144, 160, 176])
@pytest.mark.parametrize("stage", [1, 2, 3])
def test_preset_equals_the_readme_command(version, patch, stage):
    command = README[stage].replace("patch_size=144", f"patch_size={patch}")
    command = command.replace("somethingv1", "somethingv2" if version == "sthv2" else "somethingv1")
    official = vars(config.parse_args(official_to_ours(shlex.split(OFFICIAL_DEFAULTS) + shlex.split(command))))
    preset = vars(config.parse_args(["--config", str(REPO / "configs" / f"v1_{version}_p{patch}_stage{stage}.yaml")]))
    ignored = {"config", "explicit"}
    assert {k: v for k, v in official.items() if k not in ignored} == \
        {k: v for k, v in preset.items() if k not in ignored}
    assert official["official_lr_groups"] is True  # the default: the released checkpoints' training
    assert f"v1_{version}_p{patch}_stage{stage}" in get_variant("adafocus_v1_tsm").presets
