"""AdaFocus V1's official training in stages (ops/staged_training.py) through the entry points, on tiny sizes
on the CPU: stages 0 -> 1 -> 2 -> 3 on the synthetic data, each from the previous run's checkpoint, each
changing only what its stage trains; the hand-over refused in one line when it does not fit; the PPO stage
raising the policy's reward over random patches; kill -9 and ``--resume auto`` in stage 2 ending bit for
bit where an uninterrupted run ends; two processes' stage 2 giving one process's policy; evaluation and early
exit of the trained model; the README presets."""
from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import sys
import time

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import entry_points
from support import REPO

from models import get_variant
from models.adafocus_v1 import AdaFocusV1
from models.ppo import PPO, RolloutMemory, merge_memories
from ops import config, staged_training
from ops.distributed import DistInfo

#: Tiny sizes: 4 frames of 64 px, 32-px patches on a 5 x 5 grid, 16-wide policy, 12-wide classifier GRU.
TINY = ("--variant adafocus_v1 --dataset synthetic --num_segments 4 --input_size 64 --patch_size 32 --glance_size 64 "
        "--action_dim 25 --hidden_state_dim 16 --hidden_dim 12 --no-pretrained --workers 0 --device cpu "
        "--no-tensorboard --num_visualised 0 --batch_size 4 --val_batch_size 4 --print_freq 1")
SYNTHETIC = {"train_videos": 8, "val_videos": 4, "frames_per_video": 8, "frame_size": 64, "num_classes": 3,
             "num_distractors": [1, 2]}
#: What each stage may change (parameters and BatchNorm buffers), by state-dict prefix.
TRAINED = {"0g": ("glance.", "glance_head."), "0f": ("focus.", "focus_head."), 1: ("focus.", "classifier."),
           2: ("policy.spatial.",), 3: ("classifier.",)}


def _env():
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


def _check(result):
    assert result.returncode == 0, \
        f"{' '.join(map(str, result.args))}\nSTDOUT\n{result.stdout[-3000:]}\nSTDERR\n{result.stderr[-3000:]}"
    return result


def _main(data_dir, root, *extra, script="main.py"):
    return [sys.executable, script] + TINY.split() + ["--data_dir", str(data_dir), "--synthetic", json.dumps(SYNTHETIC),
                                                      "--root_log", str(root)] + list(extra)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    from datasets import synthetic

    root = tmp_path_factory.mktemp("synthetic_v1") / "data"
    synthetic.ensure_generated(str(root), workers=1, **SYNTHETIC)
    return root


def _weights(path):
    return torch.load(path, weights_only=True)["model"]


def _changed(before, after):
    assert before.keys() == after.keys()
    return {k for k in before if not torch.equal(before[k], after[k])}


@pytest.fixture(scope="module")
def stages(data_dir, tmp_path_factory):
    """The five runs of the official recipe (stage 0 of each encoder, stages 1-3), one epoch of two steps each;
    returns their run folders."""
    root = tmp_path_factory.mktemp("stages")
    common = ["--epochs", "1", "--iters_per_epoch", "2"]
    runs = {"0g": ["--stage", "0"], "0f": ["--stage", "0", "--no-pretrain_glancer"],
            1: ["--stage", "1", "--stage_checkpoint", str(root / "s0g" / "ckpt.pth.tar"), str(root / "s0f" / "ckpt.pth.tar")],
            2: ["--stage", "2", "--stage_checkpoint", str(root / "s1" / "ckpt.pth.tar")],
            3: ["--stage", "3", "--stage_checkpoint", str(root / "s2" / "ckpt.pth.tar")]}
    first = [_main(data_dir, root, *common, *runs[name], "--store_name", f"s{name}") for name in ("0g", "0f")]
    for result in entry_points.run_many(first, env=_env(), timeout=420):  # the two stage-0 runs side by side
        _check(result)
    for name in (1, 2, 3):
        _check(entry_points.run(_main(data_dir, root, *common, *runs[name], "--store_name", f"s{name}"), env=_env(),
                                timeout=420))
    return {name: root / f"s{name}" for name in runs}


def test_stages_run_in_order_and_each_changes_only_what_it_trains(stages):
    for name, folder in stages.items():
        ckpt = torch.load(folder / "ckpt.pth.tar", weights_only=True)
        assert ckpt["stage"] == ckpt["config"]["stage"] == (0 if name in ("0g", "0f") else name)
        assert ckpt["config"]["variant"] == "adafocus_v1" and ckpt["epoch"] == 1
        log = (folder / "log.txt").read_text()
        assert "epoch 0 [2/2]" in log and "epoch 0 validation" in log
    glance0, focus0 = _weights(stages["0g"] / "ckpt.pth.tar"), _weights(stages["0f"] / "ckpt.pth.tar")
    # the two stage-0 runs start from the same initialisation (same seed): what neither trains is equal in both,
    # and each changed its own encoder and head
    changed = _changed(glance0, focus0)
    assert changed and all(k.startswith(TRAINED["0g"] + TRAINED["0f"]) for k in changed), sorted(changed)[:5]
    for prefix in TRAINED["0g"] + TRAINED["0f"]:
        assert any(k.startswith(prefix) for k in changed), prefix
    # stage 1 took the glance encoder from the first stage-0 run and the focus encoder from the second
    stage1 = _weights(stages[1] / "ckpt.pth.tar")
    assert all(torch.equal(stage1[k], glance0[k]) for k in stage1 if k.startswith(TRAINED["0g"]))
    assert all(torch.equal(stage1[k], focus0[k]) for k in stage1 if k.startswith("focus_head."))
    merged = {k: (glance0 if k.startswith(TRAINED["0g"]) else focus0)[k] for k in stage1}
    pairs = {1: (merged, stage1), 2: (stage1, _weights(stages[2] / "ckpt.pth.tar"))}
    pairs[3] = (pairs[2][1], _weights(stages[3] / "ckpt.pth.tar"))
    for name, (before, after) in pairs.items():
        changed = _changed(before, after)
        assert changed and all(k.startswith(TRAINED[name]) for k in changed), (name, sorted(changed)[:5])
        for prefix in TRAINED[name]:  # every part the stage trains moved
            assert any(k.startswith(prefix) for k in changed), (name, prefix)


def test_the_trained_model_evaluates_and_exits_early_through_the_entry_points(data_dir, stages, tmp_path):
    ckpt = stages[3] / "ckpt.pth.tar"
    _check(entry_points.run(_main(data_dir, tmp_path, "--evaluate", "--resume", str(ckpt), "--store_name", "eval",
                                  "--save_predictions"), env=_env(), timeout=300))
    metrics = json.loads((tmp_path / "eval" / "metrics_eval.json").read_text())["metrics"]
    assert metrics["num_videos"] == SYNTHETIC["val_videos"] and 0 <= metrics["score"] <= 100
    predictions = torch.load(tmp_path / "eval" / "predictions_eval.pt", weights_only=True)
    boxes = predictions["patch_boxes"]  # (N, T, 4): each a 32-px patch on the 64-px frame's 5 x 5 grid
    assert boxes.shape == (4, 4, 4) and torch.all(boxes[..., 2] - boxes[..., 0] == 32)
    assert set(boxes[..., :2].flatten().tolist()) <= {0.0, 8.0, 16.0, 24.0, 32.0}
    # early exit: exits after each of the T frames, thresholds for a budget, then main.py --thresholds
    result = _check(entry_points.run(_main(data_dir, tmp_path, "--evaluate", "--resume", str(ckpt), "--store_name",
                                           "ee", "--budget", "0.3", script="test_early_exit.py"),
                                     env=_env(), timeout=300))
    thresholds = sorted((tmp_path / "ee" / "early_exit").glob("thresholds*"))
    assert thresholds, result.stdout[-2000:] + result.stderr[-2000:]
    _check(entry_points.run(_main(data_dir, tmp_path, "--evaluate", "--resume", str(ckpt), "--store_name", "ee",
                                  "--thresholds", str(thresholds[0]), "--eval_suffix", "ee"), env=_env(), timeout=300))
    saved = json.loads((tmp_path / "ee" / "metrics_ee.json").read_text())
    ee, full = saved["metrics"]["early_exit"], saved["gflops"]
    counts = ee["exit_counts"]  # videos leaving after 1, 2, 3, 4 frames; exit k costs (k + 1) / 4 of the video
    assert len(counts) == 4 and sum(counts) == SYNTHETIC["val_videos"]
    expected = sum((k + 1) * n for k, n in enumerate(counts)) / sum(counts) * full / 4
    assert ee["gflops"] == pytest.approx(expected, rel=1e-5)


# ------------------------------------------------------------------------------------------------
# The hand-over, refused in one line
# ------------------------------------------------------------------------------------------------
def _refusal(argv, tiny: str = TINY):
    """The one line that the staged training's checks refuse the tiny flags ``tiny`` with ``argv`` in."""
    args = config.parse_args(tiny.split() + argv)
    with pytest.raises(SystemExit) as info:
        staged_training.check_flags(args)
        staged_training.read_handover(args)
    message = str(info.value.code)
    assert "\n" not in message
    return message


def test_bad_hand_overs_are_refused_in_one_line(stages, tmp_path):
    missing = tmp_path / "nothing.pth.tar"
    assert _refusal(["--stage", "2", "--stage_checkpoint", str(missing)]) == \
        f"--stage_checkpoint {missing}: file not found"
    stage0 = stages["0g"] / "ckpt.pth.tar"
    assert _refusal(["--stage", "2", "--stage_checkpoint", str(stage0)]) == \
        f"--stage_checkpoint {stage0}: a stage-0 checkpoint; stage 2 starts from a stage-1 one"
    assert "starts from the stage-1 checkpoint: pass --stage_checkpoint PATH" in _refusal(["--stage", "2"])
    assert "the same encoder" in _refusal(["--stage", "0", "--stage_checkpoint", str(stage0)])
    # a checkpoint of another variant (a tiny AdaFocusV2 run's)
    from ops.checkpoint import save_checkpoint

    v2_args = config.parse_args(["--variant", "adafocus_v2", "--num_segments", "4", "--stn_hidden_dim", "16",
                                 "--classifier_dim", "32", "--input_size", "64", "--patch_size", "32", "--focus_arch",
                                 "resnet18", "--no-pretrained"])
    v2 = get_variant("adafocus_v2").build_from(v2_args, num_classes=3)
    path = tmp_path / "v2.pth.tar"
    save_checkpoint(str(path), v2, epoch=1, config=config.plain_config(v2_args))
    assert _refusal(["--stage", "1", "--stage_checkpoint", str(path)]) == \
        (f"--stage_checkpoint {path}: a adafocus_v2 checkpoint; the stages of adafocus_v1 read adafocus_v1 checkpoints "
         "(AdaFocusV2 and Uni-AdaFocus train end to end)")
    assert _refusal(["--variant", "adafocus_v2", "--stage", "1"]).startswith("--stage: the staged training is")


def test_main_py_gives_the_refusal_as_its_one_error_line(data_dir, stages, tmp_path):
    stage0 = stages["0g"] / "ckpt.pth.tar"
    result = entry_points.run(_main(data_dir, tmp_path / "runs", "--epochs", "1", "--stage", "3",
                                    "--stage_checkpoint", str(stage0)), env=_env(), timeout=300)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [f"error: --stage_checkpoint {stage0}: a stage-0 checkpoint; stage 3 starts from a stage-2 one"]
    assert not (tmp_path / "runs").exists()


# ------------------------------------------------------------------------------------------------
# The PPO stage learns
# ------------------------------------------------------------------------------------------------
#: The reward experiment. The synthetic dataset's small moving objects are not learnt by a ResNet-50 from
#: scratch in the steps a test can afford (measured: chance accuracy after 160 stage-1 steps, so every patch
#: gives the same confidence and there is nothing for the policy to find). The videos here are made for it:
#: noise frames with a square of the class's colour at one place (the top-left 16 x 16 pixels), which a
#: random 16-px patch seldom shows. Flags: 16-px patches, the README's stage-1 classifier rate, policy rate 0.02.
REWARD_FLAGS = ["--patch_size", "16", "--fc_lr", "0.05", "--policy_lr", "0.02", "--dropout", "0"]
REWARD_SIZES = dict(stage1_steps=80, stage2_steps=150, batch=8, eval_batches=4)
COLOURS = torch.tensor([[2.0, -1.0, -1.0], [-1.0, 2.0, -1.0], [-1.0, -1.0, 2.0]])  # normalised frames


def square_videos(generator: torch.Generator, batch: int):
    """(video (B, 4, 3, 64, 64) normalised frames, labels (B,)): noise, and the class colour at [0:16, 0:16]."""
    labels = torch.randint(0, 3, (batch,), generator=generator)
    video = 0.5 * torch.randn(batch, 4, 3, 64, 64, generator=generator)
    video[..., :16, :16] += COLOURS[labels].view(batch, 1, 3, 1, 1)
    return video, labels


def reward_experiment(seed: int, stage1_steps: int, stage2_steps: int, batch: int, eval_batches: int):
    """(mean reward of the policy's sampled patches over random patches before stage 2, after it): stage 1
    for ``stage1_steps`` steps, then the PPO of stage 2, with the stages' own steps."""
    args = config.parse_args(TINY.split() + REWARD_FLAGS + ["--stage", "1", "--seed", str(seed)])
    torch.manual_seed(seed)
    net = get_variant("adafocus_v1").build_from(args, num_classes=3)
    info = DistInfo()
    data, crop_rng = torch.Generator().manual_seed(seed), np.random.RandomState(seed)
    generator = torch.Generator().manual_seed(seed)
    optimizer = staged_training.StageOptimizer(args, net)
    staged_training.set_modes(net, 1)
    for _ in range(stage1_steps):
        staged_training.stage1_step(net, optimizer, *square_videos(data, batch), args, info, generator, crop_rng)
    args.stage = 2
    optimizer = staged_training.StageOptimizer(args, net)
    staged_training.set_modes(net, 2)

    def mean_reward():
        held_out = torch.Generator().manual_seed(10_000 + seed)  # the same videos and draws each time
        rewards = [net.stage2_rollout(*square_videos(held_out, batch), optimizer.ppo, RolloutMemory(),
                                      generator=torch.Generator().manual_seed(k),
                                      crop_rng=np.random.RandomState(k)).rewards.mean() for k in range(eval_batches)]
        return float(torch.stack(rewards).mean())

    before = mean_reward()
    for _ in range(stage2_steps):
        staged_training.stage2_step(net, optimizer, *square_videos(data, batch), args, info, generator, crop_rng)
    return before, mean_reward()


def test_ppo_raises_the_policys_reward_over_random_patches():
    """On one seed (docs/adafocus-v1.md gives three; measured gains 0.031, 0.048, 0.052): the mean reward of the
    policy's patches over random ones rises in stage 2 (from about 0: a random policy)."""
    before, after = reward_experiment(seed=0, **REWARD_SIZES)
    assert abs(before) < 0.01 and after > before + 0.015, (before, after)


# ------------------------------------------------------------------------------------------------
# Resume and processes
# ------------------------------------------------------------------------------------------------
def kill_and_resume(root, command):
    """``command(store_name)`` (a stage-2 run of 3 epochs under ``root``) run twice side by side: "straight"
    through, and "killed" with kill -9 in the middle of its second epoch, then continued with ``--resume auto``.
    Checks that both end with the same weights, the same PPO acting copy and Adam state and the same final
    metrics; returns their last checkpoints (straight, killed)."""
    straight = entry_points.start(command("straight"), env=_env())
    cmd = command("killed")
    proc = entry_points.start(cmd, env=_env())
    log, deadline = root / "killed" / "log.txt", time.time() + 300
    while not (log.is_file() and "epoch 1 [1/2]" in log.read_text()):
        assert proc.poll() is None, proc.wait().stderr[-3000:]
        assert time.time() < deadline, "stage 2 did not reach epoch 1 in 300 s"
        time.sleep(0.02)
    proc.kill(signal.SIGKILL)
    assert proc.wait().returncode == -signal.SIGKILL
    assert torch.load(root / "killed" / "ckpt.pth.tar", weights_only=True)["epoch"] == 1
    _check(entry_points.run(cmd + ["--resume", "auto"], env=_env(), timeout=420))
    _check(straight.wait(timeout=420))
    a = torch.load(root / "straight" / "ckpt.pth.tar", weights_only=True)
    b = torch.load(root / "killed" / "ckpt.pth.tar", weights_only=True)
    assert a["epoch"] == b["epoch"] == 3
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for key, value in a["optimizer"]["ppo"]["policy_old"].items():
        assert torch.equal(value, b["optimizer"]["ppo"]["policy_old"][key]), key
    for state_a, state_b in zip(a["optimizer"]["ppo"]["optimizer"]["state"].values(),
                                b["optimizer"]["ppo"]["optimizer"]["state"].values()):
        assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    assert json.loads((root / "straight" / "metrics.json").read_text())["final"] == \
        json.loads((root / "killed" / "metrics.json").read_text())["final"]
    return a, b


def test_killed_stage_2_resumes_to_the_same_policy(data_dir, stages, tmp_path):
    """kill -9 in the middle of stage 2's second epoch, then --resume auto: the weights, the PPO's Adam state
    and acting copy end bit for bit where an uninterrupted run ends (the rollout memory is empty at every
    batch boundary, so in every checkpoint)."""
    root = tmp_path / "runs"
    args = ["--epochs", "3", "--iters_per_epoch", "2", "--seed", "5", "--stage", "2", "--stage_checkpoint",
            str(stages[1] / "ckpt.pth.tar")]
    _, killed = kill_and_resume(root, lambda name: _main(data_dir, root, *args, "--store_name", name))
    assert all(v is None for v in killed["optimizer"]["memory"].values())  # empty at the batch boundary


def _tiny_model(seed=0):
    torch.manual_seed(seed)
    return AdaFocusV1(num_classes=3, num_segments=4, patch_size=32, input_size=64, glance_size=64, action_dim=25,
                      hidden_state_dim=16, hidden_dim=12).eval()


def _rollout(model, ppo, rank, batch):
    """Rank ``rank``'s rollout of its own ``batch`` videos (its own draws)."""
    g = torch.Generator().manual_seed(100 + rank)
    video = torch.randn(batch, 4, 3, 64, 64, generator=g)
    target = torch.randint(0, 3, (batch,), generator=g)
    memory = RolloutMemory()
    model.policy.spatial.train()
    ppo.policy_old.train()
    model.stage2_rollout(video, target, ppo, memory, generator=g, crop_rng=np.random.RandomState(rank))
    return memory


def _two_process_worker(rank, port, batches, out, make_model, rollout):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    torch.set_num_threads(1)
    info = DistInfo(rank=rank, world_size=2, local_rank=rank, backend="gloo")
    model = make_model()
    ppo = PPO(model.policy.spatial)
    memory = rollout(model, ppo, rank, batches[rank])
    staged_training.synchronised_update(ppo, memory, info)
    torch.save({"policy": model.policy.spatial.state_dict(), "old": ppo.policy_old.state_dict()}, f"{out}.{rank}")
    dist.destroy_process_group()


def two_processes_update_as_one(tmp_path, batches, make_model, rollout):
    """Stage 2's update in two gloo processes (forked) on ``make_model()``, rank r acting through
    ``rollout(model, ppo, r, batches[r])``, against one process updating from both ranks' memories: checks that
    the processes' policies stay identical (the acting copy equal to the policy) and equal the one process's
    update, BatchNorm statistics included, and that the update moved the policy."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_two_process_worker, args=(port, batches, str(tmp_path / "policy"), make_model, rollout),
                       nprocs=2, start_method="fork")
    model = make_model()
    ppo = PPO(model.policy.spatial)
    ppo.update(merge_memories([rollout(model, ppo, rank, b) for rank, b in enumerate(batches)]))
    one = model.policy.spatial.state_dict()
    two = [torch.load(f"{tmp_path / 'policy'}.{rank}", weights_only=True) for rank in (0, 1)]
    for key, value in one.items():
        assert torch.equal(two[0]["policy"][key], two[1]["policy"][key]), key  # the processes stay identical
        assert torch.equal(two[0]["old"][key], two[0]["policy"][key]), key
        torch.testing.assert_close(two[0]["policy"][key].double(), value.double(), rtol=1e-5, atol=1e-6)
    assert any(not torch.equal(v, make_model().policy.spatial.state_dict()[k]) for k, v in one.items())


@pytest.mark.parametrize("batches", [(3, 3), (3, 2)])  # equal shares, and a short last batch on rank 1
def test_two_processes_update_the_policy_as_one_process_with_both_batches(tmp_path, batches):
    two_processes_update_as_one(tmp_path, batches, _tiny_model, _rollout)


@pytest.mark.parametrize("launcher", ["torch.distributed.run", "torch.distributed.launch"])
def test_both_launchers_run_a_two_process_stage_2(data_dir, stages, tmp_path, launcher):
    root = tmp_path / "runs"
    _check(entry_points.run([sys.executable, "-m", launcher, "--nproc_per_node=2", "--standalone"]
                            + _main(data_dir, root, "--epochs", "1", "--iters_per_epoch", "2", "--stage", "2",
                                    "--stage_checkpoint", str(stages[1] / "ckpt.pth.tar"), "--store_name", "ddp",
                                    "--eval_freq", "0")[1:], env=_env(), timeout=420))
    log = (root / "ddp" / "log.txt").read_text()
    assert "training on 2 process(es)" in log and "(2 per process)" in log and "epoch 0 [2/2] stage 2" in log
    assert torch.load(root / "ddp" / "ckpt.pth.tar", weights_only=True)["stage"] == 2


# ------------------------------------------------------------------------------------------------
# The README presets
# ------------------------------------------------------------------------------------------------
#: The official README's training commands (dataset, data_dir, workers, dist_url and launcher keys aside).
README = {
    0: "train_stage=0 batch_size=64 dropout=0.8 lr_type=cos backbone_lr=0.01 epochs=15 random_patch=true "
       "patch_size=128 glance_size=224 eval_freq=5 consensus=gru hidden_dim=1024 pretrain_glancer=true",
    1: "train_stage=1 batch_size=64 dropout=0.8 lr_type=cos backbone_lr=0.0005 fc_lr=0.05 epochs=50 random_patch=true "
       "patch_size=128 glance_size=224 eval_freq=5 consensus=gru hidden_dim=1024",
    2: "train_stage=2 batch_size=64 dropout=0.8 lr_type=cos backbone_lr=0.0005 fc_lr=0.05 epochs=50 "
       "random_patch=false patch_size=128 glance_size=224 action_dim=49 eval_freq=5 consensus=gru hidden_dim=1024",
    3: "train_stage=3 batch_size=64 dropout=0.8 lr_type=cos backbone_lr=0.0005 fc_lr=0.005 epochs=10 "
       "random_patch=false patch_size=128 glance_size=224 action_dim=49 eval_freq=5 consensus=gru hidden_dim=1024",
}
#: The official configuration's defaults for the keys the README leaves out (conf/default.yaml).
OFFICIAL_DEFAULTS = "num_segments=16 momentum=0.9 weight_decay=1e-4 fc_lr=0.005 policy_lr=0.0003 gamma=0.7 " \
                    "reward=random hidden_state_dim=1024 with_glancer=true input_size=224 action_dim=49 workers=8"


def official_to_ours(tokens, dataset):
    """The official key=value tokens as our flags (docs/adafocus-v1.md lists the mapping)."""
    values = dict(t.split("=", 1) for t in tokens)
    flags = ["--variant", "adafocus_v1", "--dataset", dataset]
    dropped = {"random_patch", "consensus"}  # given by the stage (random patches in 0-1), the only consensus (gru)
    for key, value in values.items():
        if key in dropped:
            continue
        if key == "epochs":  # the official loop runs epochs + 1 epochs, the rate reaching 0 in the last
            flags += ["--epochs", str(int(value) + 1), "--lr_epochs", value]
        elif value in ("true", "false"):
            flags.append(f"--{'' if value == 'true' else 'no-'}{key}")
        else:
            flags += [f"--{'stage' if key == 'train_stage' else key}", value]
    return flags


@pytest.mark.parametrize("dataset", ["actnet", "fcvid", "minik"])
@pytest.mark.parametrize("patch", [128, 160, 192])
@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_preset_equals_the_readme_command(dataset, patch, stage):
    tokens = shlex.split(OFFICIAL_DEFAULTS) + shlex.split(README[stage].replace("patch_size=128", f"patch_size={patch}"))
    official = vars(config.parse_args(official_to_ours(tokens, dataset)))
    preset = vars(config.parse_args(["--config", str(REPO / "configs" / f"v1_{dataset}_p{patch}_stage{stage}.yaml")]))
    ignored = {"config", "explicit"}
    assert {k: v for k, v in official.items() if k not in ignored} == \
        {k: v for k, v in preset.items() if k not in ignored}
    assert f"v1_{dataset}_p{patch}_stage{stage}" in get_variant("adafocus_v1").presets


# ------------------------------------------------------------------------------------------------
# The Something-Something form: evaluation through main.py (its stages: tests/test_v1_sth_training.py)
# ------------------------------------------------------------------------------------------------
STH_TINY = ["--variant", "adafocus_v1_tsm", "--dataset", "synthetic", "--num_glance_segments", "4", "--num_segments",
            "6", "--num_focus_segments", "6", "--input_size", "64", "--patch_size", "32", "--glance_size", "64",
            "--hidden_state_dim", "16", "--no-pretrained", "--workers", "0", "--device", "cpu", "--no-tensorboard",
            "--num_visualised", "0", "--val_batch_size", "4"]


def test_the_sth_form_evaluates_a_checkpoint_through_main_py_and_trains_only_in_stages(data_dir, tmp_path):
    from datasets import collate_items
    from ops import loaders
    from ops.checkpoint import save_checkpoint

    data = ["--data_dir", str(data_dir), "--synthetic", json.dumps(SYNTHETIC)]
    args = config.parse_args(STH_TINY + data)
    torch.manual_seed(0)
    model = get_variant("adafocus_v1_tsm").build_from(args, num_classes=SYNTHETIC["num_classes"])
    path = tmp_path / "sth.pth.tar"
    save_checkpoint(str(path), model, epoch=1, config=config.plain_config(args))
    root = tmp_path / "runs"
    main = [sys.executable, "main.py", *data, "--root_log", str(root), "--store_name", "eval"]
    _check(entry_points.run(main + ["--evaluate", "--resume", str(path), "--save_predictions", "--plain_model"],
                            env=_env(), timeout=300))
    predictions = torch.load(root / "eval" / "predictions_eval.pt", weights_only=True)
    # the same validation videos through the model in Python
    val = loaders.build_dataset(args, "val", DistInfo())
    batch = collate_items([val[i] for i in range(len(val))])
    with torch.no_grad():
        out = model.eval()(batch["video"], glance=batch["glance"])
    assert predictions["index"].tolist() == batch["index"].tolist()
    torch.testing.assert_close(predictions["prediction"], out.logits, rtol=1e-5, atol=1e-5)
    result = entry_points.run(main + STH_TINY + ["--epochs", "1", "--batch_size", "4"], env=_env(), timeout=300)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert errors == ["error: --variant adafocus_v1_tsm trains in the official stages: pass --stage 1, 2 or 3 "
                      "(docs/adafocus-v1.md; presets configs/v1_*_stage*.yaml), or --evaluate"]
