#!/usr/bin/env python
"""AdaFocus V1's four training stages on the synthetic dataset, and whether the PPO stage improves the policy.

For every seed, four ``main.py --variant adafocus_v1 --stage N`` runs, each from the previous run's
checkpoint (docs/adafocus-v1.md, "Training in stages"): stage 0 (the glance encoder on whole frames),
stage 1 (the focus encoder and the classifier on random patches), stage 2 (the policy by PPO), stage 3
(the classifier on the policy's patches). The data are the main job's (``configs/synthetic.yaml``: its
``synthetic`` options and its data folder, generated on first use). The model is this experiment's own
small configuration (:data:`MODEL_FLAGS`: ResNet-18 focus encoder, 8 frames of 96 px, 48-px patches (half
the side) on a 5 x 5 grid, the classifier on the focus features alone), so that the focus encoder learns from scratch in
the steps a CPU affords and the patch decides what the classifier sees.

Then, on the validation videos (the same videos and random draws for every checkpoint):

* **reward** — the stage-2 objective: the mean over videos and frames of the confidence (softmax of the
  true class) after the policy's sampled patch minus that after a random patch
  (``AdaFocusV1.stage2_rollout``, ``--reward random``), with the stage-1 checkpoint (the policy as
  initialised, before PPO) and with the stage-2 checkpoint (after PPO; same encoders and classifier);
* **policy reward** — the same difference for the policy as evaluated (argmax): the mean confidence over
  the steps with the policy's patches minus that with random ones (the stage-1 classifier, which stage 2
  leaves unchanged; ``policy_reward_before`` / ``policy_reward_after``); both rewards with their standard
  error over the videos (``se``: each video's mean over its frames is one sample);
* **hit rate** — of the frames that show the object, the share whose patch contains the object's centre;
* **top-1** (the prediction after the last frame) and **confidence** (the true class's, mean over the steps),
  with the patches placed by the policy (argmax), at random (the official draws,
  ``AdaFocusV1.random_corners``, averaged over :data:`RANDOM_DRAWS` draws) or on the object (centred on
  its true box: what a perfect policy could reach): the stage-1 classifier (trained on random patches)
  with the initial policy, random and object patches, and with the stage-2 policy's; the stage-3
  classifier with the policy's and random patches.

    python -m scripts.v1_stages_synthetic --seeds 0 1 2        # writes exp/v1_stages_synthetic/seed{S}/

Each seed's runs are in ``OUT/seed{S}/stage{N}/`` (their ``log.txt``), its figures in
``OUT/seed{S}/figures.json``; a finished stage is not run again (delete its folder to redo it).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Dict, List, NamedTuple

import numpy as np
import torch
import yaml

from models import get_variant
from models.ppo import PPO, RolloutMemory
from ops import cli, config, flags, loaders
from ops.distributed import DistInfo

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: The main job's preset: this experiment reads its dataset options and data folder.
MAIN_JOB = os.path.join("configs", "synthetic.yaml")
#: The model and its input (every stage's runs).
MODEL_FLAGS = ["--variant", "adafocus_v1", "--num_segments", "8", "--input_size", "96", "--patch_size", "48",
               "--glance_size", "48", "--action_dim", "25", "--focus_arch", "resnet18", "--zero_init_residual",
               "--no-pretrained", "--no-with_glancer", "--hidden_state_dim", "32", "--hidden_dim", "256",
               "--dropout", "0.2"]
#: What every run shares besides the model: batches, loader, logging.
RUN_FLAGS = ["--batch_size", "16", "--val_batch_size", "32", "--workers", "1", "--device", "cpu", "--no-tensorboard",
             "--num_visualised", "0", "--print_freq", "10"]
#: Each stage's epochs (30 steps each: 480 training videos, batch 16) and rates.
STAGES = {
    0: ["--epochs", "3", "--backbone_lr", "0.02"],
    1: ["--epochs", "6", "--backbone_lr", "0.05", "--fc_lr", "0.05"],
    2: ["--epochs", "30", "--policy_lr", "0.0005", "--gamma", "0.3"],
    3: ["--epochs", "2", "--fc_lr", "0.01"],
}
#: Random-patch draws averaged in the top-1 and hit-rate figures.
RANDOM_DRAWS = 3


def main_job_data() -> Dict:
    """The main job's ``data_dir`` and ``synthetic`` options, read from its preset."""
    with open(os.path.join(REPO, MAIN_JOB), encoding="utf-8") as f:
        preset = yaml.safe_load(f)
    return {"data_dir": os.path.join(REPO, preset["data_dir"]), "synthetic": preset["synthetic"]}


def run_flags(data: Dict, seed: int, out: str, stage: int) -> List[str]:
    """Every flag of ``main.py`` for ``stage`` of ``seed`` (without the hand-over)."""
    epochs = STAGES[stage][STAGES[stage].index("--epochs") + 1]
    return (MODEL_FLAGS + RUN_FLAGS + STAGES[stage]
            + ["--dataset", "synthetic", "--data_dir", data["data_dir"], "--synthetic", json.dumps(data["synthetic"]),
               "--stage", str(stage), "--seed", str(seed), "--eval_freq", epochs,
               "--root_log", os.path.join(out, f"seed{seed}"), "--store_name", f"stage{stage}"])


def run_stage(data: Dict, seed: int, out: str, stage: int) -> str:
    """Run ``stage`` of ``seed`` (unless its final checkpoint exists); its checkpoint's path."""
    run_dir = os.path.join(out, f"seed{seed}", f"stage{stage}")
    checkpoint = os.path.join(run_dir, "ckpt.pth.tar")
    if os.path.isfile(checkpoint):
        print(f"seed {seed} stage {stage}: done before ({checkpoint})", flush=True)
        return checkpoint
    command = [sys.executable, "main.py"] + run_flags(data, seed, out, stage)
    if stage > 0:
        command += ["--stage_checkpoint", os.path.join(out, f"seed{seed}", f"stage{stage - 1}", "ckpt.pth.tar")]
    os.makedirs(run_dir, exist_ok=True)
    started = time.time()
    with open(os.path.join(run_dir, "stdout.txt"), "w", encoding="utf-8") as log:
        status = subprocess.run(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT).returncode
    if status != 0:
        with open(os.path.join(run_dir, "stdout.txt"), encoding="utf-8", errors="replace") as f:
            lines = [line.strip() for line in f if line.strip()]
        raise SystemExit(f"seed {seed} stage {stage}: main.py failed (exit status {status}; "
                         f"{os.path.join(run_dir, 'stdout.txt')}): {lines[-1] if lines else ''}")
    print(f"seed {seed} stage {stage}: {time.time() - started:.0f} s", flush=True)
    return checkpoint


def validation_batches(args) -> List[Dict[str, torch.Tensor]]:
    """Every validation batch (evaluation transforms), in memory: video (B, T, 3, H, W) uint8, label (B,),
    object centres (B, T, 2) (y, x) in input pixels and whether the object shows, (B, T)."""
    dataset = loaders.build_dataset(args, "val", DistInfo())
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.val_batch_size, shuffle=False, num_workers=0)
    batches = []
    for batch in loader:
        boxes = batch["object_boxes"].float()  # (B, T, 4) x1, y1, x2, y2
        centres = torch.stack(((boxes[..., 1] + boxes[..., 3]) / 2, (boxes[..., 0] + boxes[..., 2]) / 2), dim=-1)
        batches.append({"video": batch["video"], "label": batch["label"], "centres": centres,
                        "visible": batch["object_visible"].bool()})
    return batches


def load_model(args, num_classes: int, checkpoint: str):
    net = get_variant("adafocus_v1").build_from(args, num_classes=num_classes)
    net.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True)["model"])
    return net.eval()


def hits(corners: torch.Tensor, batch: Dict, patch_size: int) -> torch.Tensor:
    """(visible frames whose patch holds the object's centre, visible frames): corners (B, T, 2) (y, x)."""
    inside = ((batch["centres"] >= corners) & (batch["centres"] < corners + patch_size)).all(dim=-1)
    return torch.tensor([float((inside & batch["visible"]).sum()), float(batch["visible"].sum())])


@torch.no_grad()
def mean_reward(net, batches, seed: int) -> Dict[str, float]:
    """The stage-2 episode on every batch, without an update: mean reward, the policy's and the random patch's
    confidence (the same draws for every model: generators seeded by ``seed`` and the batch)."""
    ppo = PPO(net.policy.spatial)
    ppo.policy_old.train()  # as in stage 2
    rewards, policy, random = [], [], []  # (B, T) per batch
    for k, batch in enumerate(batches):
        rollout = net.stage2_rollout(batch["video"], batch["label"], ppo, RolloutMemory(),
                                     generator=torch.Generator().manual_seed(seed * 1000 + k),
                                     crop_rng=np.random.RandomState(seed * 1000 + k))
        rewards.append(rollout.rewards)
        policy.append(rollout.confidence)
        random.append(rollout.baseline_confidence)
    return {"reward": float(torch.cat(rewards).mean()), "se": standard_error(torch.cat(rewards).mean(dim=1)),
            "policy_confidence": float(torch.cat(policy).mean()), "random_confidence": float(torch.cat(random).mean())}


def standard_error(values: torch.Tensor) -> float:
    """The standard error of the mean of ``values`` (N,): one value per video, so the videos are the samples."""
    return float(values.std() / values.numel() ** 0.5)


def object_corners(batch: Dict, input_size: int, patch_size: int) -> torch.Tensor:
    """(B, T, 2) int64 (y, x): the patch centred on the object (its trajectory where it is hidden), in the frame."""
    return (batch["centres"] - patch_size / 2).floor().clamp(0, input_size - patch_size).long()


#: Where :func:`placement` puts the patches: the policy's argmax, random (the official draws), on the object.
PLACEMENTS = ("policy", "random", "object")


class Placement(NamedTuple):
    """What :func:`placement` measured: ``figures`` top-1 (%), hit rate (%), confidence (mean); ``per_video``
    (N,) each validation video's confidence of the true class, mean over the steps (and the draws)."""

    figures: Dict[str, float]
    per_video: torch.Tensor


@torch.no_grad()
def placement(net, batches, seed: int, where: str) -> Placement:
    """With the patches ``where`` (:data:`PLACEMENTS`): top-1 (%) of the last step, the hit rate (%) and the
    mean confidence of the true class over the steps (random patches: the mean over :data:`RANDOM_DRAWS`)."""
    draws = RANDOM_DRAWS if where == "random" else 1
    correct, hit, per_video = torch.zeros(()), torch.zeros(2), []
    total = 0
    for draw in range(draws):
        rng = np.random.RandomState(seed * 1000 + 500 + draw)
        for batch in batches:
            b, t = batch["label"].shape[0], net.num_segments
            corners = {"policy": None, "random": lambda: net.random_corners(t, b, rng),
                       "object": lambda: object_corners(batch, net.input_size, net.patch_size)}[where]
            out = net(batch["video"], corners=corners() if corners else None)
            correct += (out.logits.argmax(dim=1) == batch["label"]).sum()
            hit += hits(out.corners, batch, net.patch_size)
            probs = out.step_logits.softmax(dim=-1)  # (B, T, C)
            per_video.append(probs.gather(2, batch["label"].view(b, 1, 1).expand(b, t, 1)).mean(dim=(1, 2)))
            total += b
    confidence = torch.cat(per_video).view(draws, -1).mean(dim=0)  # (N,)
    return Placement({"top1": float(100 * correct / total), "hit_rate": float(100 * hit[0] / hit[1].clamp(min=1)),
                      "confidence": float(confidence.mean())}, confidence)


def measure(data: Dict, seed: int, out: str, checkpoints: Dict[int, str]) -> Dict:
    args = config.parse_args(run_flags(data, seed, out, 0))
    num_classes = int(data["synthetic"]["num_classes"])
    batches = validation_batches(args)
    stage1, stage2, stage3 = (load_model(args, num_classes, checkpoints[s]) for s in (1, 2, 3))
    placed = {**{f"stage1_{where}": placement(stage1, batches, seed, where) for where in PLACEMENTS},
              "stage2_policy": placement(stage2, batches, seed, "policy"),
              "stage3_policy": placement(stage3, batches, seed, "policy"),
              "stage3_random": placement(stage3, batches, seed, "random")}
    random = placed["stage1_random"].per_video  # stage 2 trains the policy alone: the same classifier
    policy_reward = {when: {"reward": float((placed[key].per_video - random).mean()),
                            "se": standard_error(placed[key].per_video - random)}
                     for when, key in (("before", "stage1_policy"), ("after", "stage2_policy"))}
    return {"seed": seed, "reward_before": mean_reward(stage1, batches, seed),
            "reward_after": mean_reward(stage2, batches, seed),
            "policy_reward_before": policy_reward["before"], "policy_reward_after": policy_reward["after"],
            **{name: p.figures for name, p in placed.items()}}


def describe(f: Dict) -> str:
    def reward(key):
        return f"{f[key]['reward']:+.4f} (se {f[key]['se']:.4f})"
    return (f"seed {f['seed']}: reward {reward('reward_before')} -> {reward('reward_after')}, argmax policy over "
            f"random {reward('policy_reward_before')} -> {reward('policy_reward_after')} "
            f"(policy confidence {f['reward_before']['policy_confidence']:.3f} -> "
            f"{f['reward_after']['policy_confidence']:.3f}, random {f['reward_after']['random_confidence']:.3f}); "
            f"hit rate: random {f['stage1_random']['hit_rate']:.1f} %, initial policy "
            f"{f['stage1_policy']['hit_rate']:.1f} %, trained policy {f['stage2_policy']['hit_rate']:.1f} %; "
            f"stage-1 classifier (top-1, confidence): random {f['stage1_random']['top1']:.1f} % "
            f"{f['stage1_random']['confidence']:.3f}, initial policy {f['stage1_policy']['top1']:.1f} % "
            f"{f['stage1_policy']['confidence']:.3f}, trained policy {f['stage2_policy']['top1']:.1f} % "
            f"{f['stage2_policy']['confidence']:.3f}, on the object {f['stage1_object']['top1']:.1f} % "
            f"{f['stage1_object']['confidence']:.3f}; stage-3 classifier: policy {f['stage3_policy']['top1']:.1f} %, "
            f"random {f['stage3_random']['top1']:.1f} %")


def main(argv=None) -> int:
    p = flags.ArgumentParser("python -m scripts.v1_stages_synthetic", description=__doc__.splitlines()[0],
                             allow_abbrev=False)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out", default=os.path.join("exp", "v1_stages_synthetic"), help="folder of the runs")
    args = p.parse_args(argv)
    out = os.path.abspath(args.out)
    data = main_job_data()
    results = []
    for seed in args.seeds:
        started = time.time()
        checkpoints = {stage: run_stage(data, seed, out, stage) for stage in sorted(STAGES)}
        figures = measure(data, seed, out, checkpoints)
        figures["wall_s"] = round(time.time() - started, 1)
        with open(os.path.join(out, f"seed{seed}", "figures.json"), "w", encoding="utf-8") as f:
            json.dump(figures, f, indent=1)
        print(describe(figures) + f" ({figures['wall_s']:.0f} s)", flush=True)
        results.append(figures)
    if len(results) > 1:
        before = np.mean([f["reward_before"]["reward"] for f in results])
        after = np.mean([f["reward_after"]["reward"] for f in results])
        policy_before, policy_after = (np.mean([f[key]["reward"] for f in results])
                                       for key in ("policy_reward_before", "policy_reward_after"))
        print(f"mean over {len(results)} seeds: reward {before:+.4f} -> {after:+.4f}, argmax policy over random "
              f"{policy_before:+.4f} -> {policy_after:+.4f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run_main(main))
