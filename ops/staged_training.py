"""AdaFocus V1's official training in stages (``main.py --variant adafocus_v1 --stage N`` and
``--variant adafocus_v1_tsm``; docs/adafocus-v1.md).

The official ActivityNet / FCVID / Mini-Kinetics code (``adafocus_v1``) trains the network in four runs, each
from the previous run's checkpoint (``--stage_checkpoint``):

====== ================================================ ========================= ==========================
stage  trains (every other part frozen, eval mode)      loss                      optimiser
====== ================================================ ========================= ==========================
0      the glance encoder and its head on whole frames  CE of the frames' mean    SGD, --backbone_lr, cosine
       (``--pretrain_glancer``), or the focus encoder    logits (B, C)
       and its head (``--no-pretrain_glancer``)
1      the focus encoder and the recurrent classifier   CE of every step's        SGD: encoder --backbone_lr,
       on random P x P patches (glance frozen, no_grad)  logits (B T, C)           classifier --fc_lr, cosine
2      the policy alone, by PPO (one update per batch,   PPO (models/ppo.py)       Adam --policy_lr, no schedule
       the official rewards, ``--gamma``, clip 0.2,
       normalised returns)
3      the classifier alone, on the policy's argmax      CE of every step's        SGD, --fc_lr, cosine
       patches (features without gradients)              logits
====== ================================================ ========================= ==========================

The Something-Something code (``adafocus_v1_tsm``) has three runs, its encoders pre-trained apart (the
official TSM runs; here ``--pretrained`` / ``--glance_weights`` / ``--focus_weights``):

====== ================================================ ========================= ==========================
stage  trains (the glance in eval mode, no_grad)         loss                      optimiser
====== ================================================ ========================= ==========================
1      the focus encoder and the classifier on one       CE of the prediction      SGD, see below, cosine
       random box per video (``torch.rand(B, 2)``),      (glance logits' mean +
       focus and classifier in training mode             focus logits' mean)
2      the policy alone, by PPO: one step per video      PPO; reward: confidence   Adam --policy_lr
       (``AdaFocusV1TSM.stage2_rollout``), the Gaussian  over a random box's
       policy with BatchNorm, acting copy in train mode
3      the classifier on the policy's mean box, the      CE of the prediction      SGD, see below, cosine
       focus encoder and the policy in eval mode
====== ================================================ ========================= ==========================

The official optimiser of stages 1 and 3 sets the rates of its first two parameter groups only (the focus
encoder's first convolution at backbone_lr, an empty group at fc_lr); every other group keeps rate 0. So the
released checkpoints' stage 1 trained only ``focus.conv1.weight`` (and moved the focus encoder's BatchNorm
statistics) and their stage 3 (backbone_lr 0) nothing. ``--official_lr_groups`` (default) reproduces that;
``--no-official_lr_groups`` trains the intended groups: stage 1 the focus encoder at --backbone_lr and the
classifier at --fc_lr, stage 3 the classifier at --fc_lr (and the focus encoder when --backbone_lr > 0).

SGD has momentum ``--momentum`` and weight decay ``--weight_decay`` (official 0.9 and 1e-4). Training runs in
float32 (the official stages 0, 1 and 3 use float16 autocast on CUDA; ``--amp`` is refused here). Parameters a
stage does not train have ``requires_grad`` off during the stage.

:class:`StageOptimizer` holds what a stage steps (SGD, or the PPO with its Adam, acting copy and rollout
memory) and saves it whole in the run's checkpoints, so ``--resume auto`` continues a stage exactly; the
memory is empty at every batch boundary, hence in every checkpoint. Under torch.distributed every process
runs its share of the batch; stages 0, 1 and 3 average the gradients over the processes before each step,
and stage 2 gathers every process's rollout memory and applies the same PPO update on every process
(:func:`synchronised_update`), so the policies stay identical.
"""
from __future__ import annotations

import os
import time
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from . import distributed as dist_ops
from .checkpoint import CheckpointError, model_state_from_checkpoint, read_checkpoint, unwrap
from .metrics import topk_accuracy
from .packages import sibling
from .rng import epoch_seed, seed_everything
from .run_log import RunLog, progress
from .schedule import adjust_learning_rate

#: The variants trained in stages: AdaFocus V1's ActivityNet form and its Something-Something form.
VARIANT = "adafocus_v1"
STH_VARIANT = "adafocus_v1_tsm"
#: What each stage trains, for messages and logs, by variant.
STAGE_NAMES = {VARIANT: {0: "one encoder with its own head on whole frames", 1: "the focus encoder and the classifier "
                         "on random patches", 2: "the policy by PPO", 3: "the classifier on the policy's patches"},
               STH_VARIANT: {1: "the focus encoder and the classifier on one random box per video", 2: "the policy "
                             "by PPO", 3: "the classifier on the policy's box"}}
#: The stage whose checkpoint each stage starts from (stage 0: optionally the other encoder's stage 0).
PREVIOUS_STAGE = {0: 0, 1: 0, 2: 1, 3: 2}


# ------------------------------------------------------------------------------------------------
# Flags and the hand-over between stages
# ------------------------------------------------------------------------------------------------
def check_flags(args) -> None:
    """Stop with one line on flags that do not fit the staged training."""
    stage = getattr(args, "stage", None)
    if stage is None:
        if args.variant in STAGE_NAMES and not args.evaluate:
            *first, last = STAGE_NAMES[args.variant]
            raise SystemExit(f"--variant {args.variant} trains in the official stages: pass --stage "
                             f"{', '.join(map(str, first))} or {last} (docs/adafocus-v1.md; presets "
                             "configs/v1_*_stage*.yaml), or --evaluate")
        if getattr(args, "stage_checkpoint", None):
            raise SystemExit("--stage_checkpoint is the previous stage's checkpoint of a --stage run; no --stage given")
        return
    if args.variant not in STAGE_NAMES:
        raise SystemExit(f"--stage: the staged training is {VARIANT}'s and {STH_VARIANT}'s (the {args.variant} variant "
                         "trains end to end)")
    if args.evaluate:
        return
    if stage not in STAGE_NAMES[args.variant]:
        raise SystemExit(f"--stage {stage}: {STH_VARIANT}'s encoders are pre-trained apart (the official TSM runs); its "
                         "stages are 1, 2 and 3: start at --stage 1 (--pretrained, --glance_weights, --focus_weights)")
    if args.amp:
        raise SystemExit("--amp: the staged training runs in float32 (drop --amp)")
    paths = args.stage_checkpoint or []
    if args.variant == STH_VARIANT and stage == 1:
        if paths:
            raise SystemExit(f"--stage_checkpoint: stage 1 of {STH_VARIANT} starts from its encoders' initial weights "
                             "(--pretrained, --glance_weights, --focus_weights), not from a checkpoint")
        return
    if len(paths) > (2 if stage == 1 else 1):
        raise SystemExit(f"--stage_checkpoint: stage {stage} takes {'one or two files' if stage == 1 else 'one file'}, "
                         f"got {len(paths)}")
    if stage in (1, 2, 3) and not paths and args.resume in ("", "auto"):  # auto: the first start needs it too
        raise SystemExit(f"--stage {stage} starts from the stage-{PREVIOUS_STAGE[stage]} checkpoint: pass "
                         "--stage_checkpoint PATH")


def checkpoint_stage(ckpt: Dict, path: str, variant: str = VARIANT) -> Tuple[Optional[int], Optional[bool]]:
    """(the stage a checkpoint finished or None when it cannot be told, whether it trained the glance encoder
    in stage 0), or a one-line SystemExit for a checkpoint of another variant than ``variant``. An official
    file tells only whether it has a trained policy: stage 2 or later (given as 2), else stage 0 or 1 (None)."""
    config = ckpt.get("config")
    if isinstance(config, dict):
        found = config.get("variant")
        if found != variant:
            raise SystemExit(f"--stage_checkpoint {path}: a {found} checkpoint; the stages of {variant} read "
                             f"{variant} checkpoints (AdaFocusV2 and Uni-AdaFocus train end to end)")
        stage = ckpt.get("stage", config.get("stage"))
        if stage is None:
            raise SystemExit(f"--stage_checkpoint {path}: an {variant} checkpoint of no stage (an evaluation's "
                             "or a file written without --stage)")
        return int(stage), bool(config.get("pretrain_glancer", True))
    found = sibling("ops.config").official_variant(ckpt)
    if found != variant:
        raise SystemExit(f"--stage_checkpoint {path}: not an {variant} checkpoint (its keys are "
                         f"{'those of ' + found if found else 'of no known AdaFocus V1 layout'})")
    policy = ckpt.get("policy")
    return (2 if isinstance(policy, dict) and policy else None), None


def read_handover(args) -> List[Tuple[str, Dict, Optional[int], Optional[bool]]]:
    """Every ``--stage_checkpoint`` file as (path, checkpoint, its stage, trained the glance), checked: a
    missing file, a checkpoint of another variant or of the wrong stage stops with one line."""
    found = []
    for path in args.stage_checkpoint or []:
        if not os.path.isfile(path):
            raise SystemExit(f"--stage_checkpoint {path}: file not found")
        try:
            ckpt = read_checkpoint(path)
        except CheckpointError as exc:
            raise SystemExit(f"--stage_checkpoint {path}: {exc}") from None
        stage, glance = checkpoint_stage(ckpt, path, args.variant)
        wanted = PREVIOUS_STAGE[args.stage]
        official_fits = stage is None and wanted in (0, 1) or stage == 2 and wanted == 2
        if stage != wanted and not official_fits:
            raise SystemExit(f"--stage_checkpoint {path}: a stage-{stage if stage is not None else '0/1'} checkpoint; "
                             f"stage {args.stage} starts from a stage-{wanted} one")
        if args.stage == 0 and glance is not None and glance == args.pretrain_glancer:
            raise SystemExit(f"--stage_checkpoint {path}: stage 0 of the same encoder; stage 0 may start from the "
                             "other encoder's stage-0 checkpoint only")
        found.append((path, ckpt, stage, glance))
    return found


#: The parts of the model each encoder's stage 0 trains.
GLANCE_PARTS = ("glance.", "glance_head.")
FOCUS_PARTS = ("focus.", "focus_head.")


def load_handover(net: nn.Module, handover, log: RunLog) -> None:
    """Load the previous stage's weights into ``net``. A stage-0 checkpoint of our runs gives the encoder it
    trained (with its head; stage 1's two files each give theirs); any other gives the whole network (an
    official file without a policy leaves the policy as initialised, as the official stage 2 does)."""
    own = net.state_dict()
    for index, (path, ckpt, stage, glance) in enumerate(handover):
        try:
            state, fmt, _ = model_state_from_checkpoint(ckpt, path, net)
        except CheckpointError as exc:
            raise SystemExit(f"--stage_checkpoint {path}: {exc}") from None
        if len(handover) > 1 and stage in (0, None):
            # Two stage-0 files: each gives the encoder it trained. An official file does not say which; the
            # official order is pretrained_glancer, then pretrained_focuser.
            trained_glance = glance if glance is not None else index == 0
            parts = GLANCE_PARTS if trained_glance else FOCUS_PARTS
            state = {k: v for k, v in state.items() if k.startswith(parts)}
        wrong = [k for k, v in state.items() if k not in own or own[k].shape != v.shape]
        if wrong:
            raise SystemExit(f"--stage_checkpoint {path}: {len(wrong)} weights do not fit this model (e.g. {wrong[0]}"
                             f"{' ' + str(tuple(state[wrong[0]].shape)) if wrong[0] in state else ''}); the model "
                             "flags must be the previous stage's")
        missing = [k for k in own if k not in state and not k.startswith("policy.")]
        if missing and not (stage in (0, None) and len(handover) > 1):
            raise SystemExit(f"--stage_checkpoint {path}: {len(missing)} weights missing (e.g. {missing[0]})")
        net.load_state_dict(state, strict=False)
        log.info(f"--stage_checkpoint: loaded {len(state)} tensors of the {fmt} stage-"
                 f"{stage if stage is not None else '0/1'} checkpoint {path}")


# ------------------------------------------------------------------------------------------------
# What each stage trains
# ------------------------------------------------------------------------------------------------
def is_sth(net: nn.Module) -> bool:
    """Whether ``net`` is the Something-Something form (``adafocus_v1_tsm``)."""
    return getattr(net, "variant", None) == STH_VARIANT


def stage_modules(net: nn.Module, stage: int, pretrain_glancer: bool = True) -> Dict[str, nn.Module]:
    """The modules ``stage`` of the ActivityNet form trains, by optimiser group: 'backbone' (rate
    --backbone_lr), 'classifier' (--fc_lr), 'policy' (PPO). (The Something-Something form: :func:`stage_groups`
    and :func:`training_modules`.)"""
    if stage == 0:
        encoder, head = (net.glance, net.glance_head) if pretrain_glancer else (net.focus, net.focus_head)
        return {"backbone": nn.ModuleList([encoder, head])}
    if stage == 1:
        return {"backbone": net.focus, "classifier": net.classifier}
    if stage == 2:
        return {"policy": net.policy.spatial}
    return {"classifier": net.classifier}


def stage_groups(net: nn.Module, args) -> Dict[str, List[nn.Parameter]]:
    """The parameters SGD steps in stage ``args.stage`` (0, 1 or 3), by group: 'backbone' (rate
    --backbone_lr), 'classifier' (--fc_lr). The Something-Something form with ``args.official_lr_groups``: the
    official optimiser's only group with a rate, the focus encoder's first convolution at --backbone_lr;
    without: the intended groups (stage 3: the focus encoder only when --backbone_lr > 0)."""
    if is_sth(net):
        if args.official_lr_groups:
            return {"backbone": [net.focus.conv1.weight]}
        groups = {"backbone": list(net.focus.parameters())} if args.stage == 1 or args.backbone_lr > 0 else {}
        return groups | {"classifier": list(net.classifier.parameters())}
    return {name: list(m.parameters()) for name, m in stage_modules(net, args.stage, args.pretrain_glancer).items()}


def training_modules(net: nn.Module, stage: int, pretrain_glancer: bool = True) -> List[nn.Module]:
    """The modules in training mode during ``stage``. The Something-Something form as its official scripts:
    stage 1 everything but the glance and the policy (the focus encoder's BatchNorm statistics move), stage 2
    the policy, stage 3 the classifier with its dropout (the focus encoder frozen in evaluation mode)."""
    if is_sth(net):
        return {1: [net.focus, net.dropout, net.classifier], 2: [net.policy.spatial],
                3: [net.dropout, net.classifier]}[stage]
    return list(stage_modules(net, stage, pretrain_glancer).values())


def set_modes(net: nn.Module, stage: int, pretrain_glancer: bool = True) -> None:
    """Everything in evaluation mode but what ``stage`` trains (official ``GFV.train_mode``)."""
    net.eval()
    for module in training_modules(net, stage, pretrain_glancer):
        module.train()


class StageOptimizer:
    """What one stage steps: SGD over the stage's groups (stages 0, 1, 3), or the PPO of stage 2 (its Adam,
    the acting copy ``policy_old`` and the rollout memory). Behaves as an optimiser for the run's
    checkpoints: ``param_groups``, ``state_dict()``, ``load_state_dict()``."""

    def __init__(self, args, net: nn.Module):
        self.stage, self.args = args.stage, args
        self.ppo = self.memory = self.sgd = None
        if args.stage == 2:
            ppo = sibling("models.ppo")
            self.ppo = ppo.PPO(net.policy.spatial, lr=args.policy_lr, gamma=args.gamma)
            self.memory = ppo.RolloutMemory()
            trained = list(net.policy.spatial.parameters())
        else:
            rates = {"backbone": args.backbone_lr, "classifier": args.fc_lr}
            groups = [{"params": params, "name": name, "lr": rates[name], "lr_mult": rates[name]}
                      for name, params in stage_groups(net, args).items()]  # base rates until adjust() schedules
            self.sgd = torch.optim.SGD(groups, momentum=args.momentum, weight_decay=args.weight_decay)
            trained = [p for group in groups for p in group["params"]]
        ids = {id(p) for p in trained}
        for p in net.parameters():  # no gradient is computed (nor kept) for what the stage does not train
            p.requires_grad_(id(p) in ids)

    @property
    def param_groups(self) -> List[Dict]:
        return (self.ppo.optimizer if self.ppo is not None else self.sgd).param_groups

    def adjust(self, epoch: int) -> float:
        """Set the rates of ``epoch`` (cosine or step over --lr_epochs or --epochs; PPO: constant); returns the
        largest group's rate."""
        a = self.args
        if self.sgd is not None:
            adjust_learning_rate(self.sgd, epoch, 1.0, a.lr_epochs or a.epochs, a.lr_type, a.lr_steps, a.weight_decay)
        return max(group["lr"] for group in self.param_groups)

    def state_dict(self) -> Dict:
        if self.ppo is not None:  # the memory is empty between batches, and so in every checkpoint
            return {"stage": 2, "ppo": self.ppo.state_dict(), "memory": self.memory.state_dict()}
        return {"stage": self.stage, "sgd": self.sgd.state_dict()}

    def load_state_dict(self, state: Dict) -> None:
        if state.get("stage") != self.stage:
            raise SystemExit(f"--resume: the checkpoint's optimiser is stage {state.get('stage')}'s and this run is "
                             f"--stage {self.stage}; a new stage starts from --stage_checkpoint, not --resume")
        if self.ppo is not None:
            self.ppo.load_state_dict(state["ppo"])
            self.memory.load_state_dict(state["memory"])
        else:
            self.sgd.load_state_dict(state["sgd"])


# ------------------------------------------------------------------------------------------------
# Distributed pieces
# ------------------------------------------------------------------------------------------------
def broadcast_weights(net: nn.Module, info: dist_ops.DistInfo) -> None:
    """Every process takes rank 0's parameters and buffers (the processes initialise with different seeds)."""
    if info.distributed:
        for tensor in list(net.parameters()) + list(net.buffers()):
            dist.broadcast(tensor.data, 0)


def average_gradients(params: List[nn.Parameter], info: dist_ops.DistInfo) -> None:
    """Each gradient replaced by its mean over the processes (what DistributedDataParallel computes)."""
    if info.distributed:
        for p in params:
            if p.grad is not None:
                dist.all_reduce(p.grad)
                p.grad.div_(info.world_size)


def gather_memories(memory, info: dist_ops.DistInfo):
    """The rollout memories of every process, in rank order, as one memory of all their videos (this process's
    own when there is one process). Batch sizes may differ (a short last batch): the sizes are gathered
    first and every field padded to the largest before ``all_gather``, then cut back."""
    ppo = sibling("models.ppo")
    if not info.distributed:
        return memory
    packed = memory.packed()
    sizes = [torch.zeros(1, dtype=torch.int64, device=info.device) for _ in range(info.world_size)]
    dist.all_gather(sizes, torch.tensor([memory.batch_size], device=info.device))
    sizes = [int(s) for s in sizes]
    largest = max(sizes)
    memories = [dict(hidden=None) for _ in range(info.world_size)]
    for name in ppo.MEMORY_FIELDS:
        own = packed[name]  # (steps, B, ...)
        padded = torch.zeros((own.shape[0], largest, *own.shape[2:]), dtype=own.dtype, device=own.device)
        padded[:, :own.shape[1]] = own
        chunks = [torch.empty_like(padded) for _ in range(info.world_size)]
        dist.all_gather(chunks, padded.contiguous())
        for rank, chunk in enumerate(chunks):
            memories[rank][name] = chunk[:, :sizes[rank]]
    return ppo.merge_memories([ppo.RolloutMemory.from_packed(m) for m in memories])


def synchronised_update(ppo, memory, info: dist_ops.DistInfo):
    """One PPO update from the rollouts of every process (the same on each: identical policies stay identical)."""
    return ppo.update(gather_memories(memory, info))


# ------------------------------------------------------------------------------------------------
# One training step of each stage
# ------------------------------------------------------------------------------------------------
def step_cross_entropy(step_logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The official loss of every step: step_logits (B, T, C), target (B,) -> mean CE over B T."""
    b, t = step_logits.shape[:2]
    return F.cross_entropy(step_logits.reshape(b * t, -1), target.repeat_interleave(t))


def sgd_step(optimizer: StageOptimizer, loss: torch.Tensor, info) -> None:
    optimizer.sgd.zero_grad(set_to_none=True)
    loss.backward()
    average_gradients([p for group in optimizer.sgd.param_groups for p in group["params"]], info)
    optimizer.sgd.step()


def stage0_step(net, optimizer, video, target, args, info, generator, crop_rng):
    """One encoder with its head on whole frames: CE of the frames' mean logits."""
    frames = net.frames(video)  # (B, T, 3, H, W)
    b, t = frames.shape[:2]
    flat = frames.flatten(0, 1)
    if args.pretrain_glancer:
        logits = net.glance_head(net.glance(net.glance_input(flat))[1])
    else:
        logits = net.focus_head(net.focus(flat))
    logits = logits.view(b, t, -1).mean(dim=1)  # (B, C)
    loss = F.cross_entropy(logits, target)
    sgd_step(optimizer, loss, info)
    return {"loss": loss.detach()}, logits.detach()


def glance_pass(net, frames: torch.Tensor):
    """The frozen glance of (B, T, 3, H, W) frames: maps (B, T, C, s, s) and features (B, T, Dg), no gradients."""
    b, t = frames.shape[:2]
    with torch.no_grad():
        fmap, features = net.glance(net.glance_input(frames.flatten(0, 1)))
    return fmap.view(b, t, *fmap.shape[1:]), features.view(b, t, -1)


def stage1_step(net, optimizer, video, target, args, info, generator, crop_rng):
    """Focus encoder and classifier on random patches (the official random crops, from ``crop_rng``)."""
    frames = net.frames(video)
    b, t = frames.shape[:2]
    _, glance = glance_pass(net, frames)
    corners = net.random_corners(t, b, crop_rng).to(frames.device)  # (B, T, 2)
    focus = net.focus(net.crop(frames.flatten(0, 1), corners.flatten(0, 1))).view(b, t, -1)
    step_logits = net.classifier(net.classifier_input(glance, focus))  # (B, T, C)
    loss = step_cross_entropy(step_logits, target)
    sgd_step(optimizer, loss, info)
    return {"loss": loss.detach()}, step_logits[:, -1].detach()


def stage2_step(net, optimizer, video, target, args, info, generator, crop_rng):
    """One PPO episode on the batch (models/adafocus_v1.py ``stage2_rollout``) and one synchronised update."""
    optimizer.ppo.policy_old.train()
    rollout = net.stage2_rollout(video, target, optimizer.ppo, optimizer.memory, generator=generator,
                                 crop_rng=crop_rng, reward=args.reward)
    update = synchronised_update(optimizer.ppo, optimizer.memory, info)
    optimizer.memory.clear()
    values = {"ppo_loss": update.terms.loss.detach().mean(), "reward": rollout.rewards.mean(),
              "confidence": rollout.confidence.mean()}
    if rollout.baseline_confidence is not None:
        values["random_patch_confidence"] = rollout.baseline_confidence.mean()
    return values, rollout.step_logits[:, -1]


def stage3_step(net, optimizer, video, target, args, info, generator, crop_rng):
    """The classifier on the policy's argmax patches (features without gradients)."""
    frames = net.frames(video)
    b, t = frames.shape[:2]
    fmap, glance = glance_pass(net, frames)
    with torch.no_grad():
        corners = net.corners_of(net.policy.spatial(fmap).actions)
        focus = net.focus(net.crop(frames.flatten(0, 1), corners.flatten(0, 1))).view(b, t, -1)
    step_logits = net.classifier(net.classifier_input(glance, focus))
    loss = step_cross_entropy(step_logits, target)
    sgd_step(optimizer, loss, info)
    return {"loss": loss.detach()}, step_logits[:, -1].detach()


def sth_stage1_step(net, optimizer, video, target, args, info, generator, crop_rng, glance=None):
    """Something-Something form: the focus encoder and the classifier on one random box per video (the
    official ``torch.rand(B, 2)``, from ``generator``), the glance frozen: CE of the prediction (B, C)."""
    video, glance = net.inputs(video, glance)
    with torch.no_grad():
        glance_logits = net.glance_pass(glance)[1]  # (B, G, C)
    positions = torch.rand(video.shape[0], 2, generator=generator, device=generator.device).to(video.device)
    prediction = glance_logits.mean(dim=1) + net.focus_pass(video, net.corners_of(positions))[1].mean(dim=1)
    loss = F.cross_entropy(prediction, target)
    sgd_step(optimizer, loss, info)
    return {"loss": loss.detach()}, prediction.detach()


def sth_stage2_step(net, optimizer, video, target, args, info, generator, crop_rng, glance=None):
    """Something-Something form: one PPO episode on the batch (``AdaFocusV1TSM.stage2_rollout``: one sampled
    box per video, the reward over a random box) and one synchronised update."""
    optimizer.ppo.policy_old.train()
    rollout = net.stage2_rollout(video, glance, target, optimizer.ppo, optimizer.memory, generator=generator)
    update = synchronised_update(optimizer.ppo, optimizer.memory, info)
    optimizer.memory.clear()
    return {"ppo_loss": update.terms.loss.detach().mean(), "reward": rollout.rewards.mean(),
            "confidence": rollout.confidence.mean(),
            "random_patch_confidence": rollout.baseline_confidence.mean()}, rollout.prediction


def sth_stage3_step(net, optimizer, video, target, args, info, generator, crop_rng, glance=None):
    """Something-Something form: the classifier on the policy's box (the Gaussian's mean, the policy in
    evaluation mode); the focus features carry gradients only when the stage trains part of the focus
    encoder. CE of the prediction."""
    video, glance = net.inputs(video, glance)
    with torch.no_grad():
        maps, glance_logits = net.glance_pass(glance)
        corners = net.corners_of(net.decide(maps)[0])
    with torch.set_grad_enabled(any(p.requires_grad for p in net.focus.parameters())):
        features = net.focus_pass(video, corners)[0]  # (B, L, Df)
    prediction = glance_logits.mean(dim=1) + net.classifier(net.dropout(features)).mean(dim=1)
    loss = F.cross_entropy(prediction, target)
    sgd_step(optimizer, loss, info)
    return {"loss": loss.detach()}, prediction.detach()


#: Each variant's step of each stage.
STEPS = {VARIANT: {0: stage0_step, 1: stage1_step, 2: stage2_step, 3: stage3_step},
         STH_VARIANT: {1: sth_stage1_step, 2: sth_stage2_step, 3: sth_stage3_step}}


# ------------------------------------------------------------------------------------------------
# A stage in a run
# ------------------------------------------------------------------------------------------------
class StagedTraining:
    """The stage of a ``main.py --stage N`` run: loads the hand-over, makes every process's weights rank 0's,
    and gives the optimiser (:class:`StageOptimizer`) and the epoch loop (:meth:`train_one_epoch`)."""

    def __init__(self, args, model, info: dist_ops.DistInfo, log: RunLog):
        self.args, self.info = args, info
        net = unwrap(model)
        handover = read_handover(args)
        if handover:
            load_handover(net, handover, log)
        broadcast_weights(net, info)
        self.optimizer = StageOptimizer(args, net)
        log.info(f"{args.variant} stage {args.stage}: trains {STAGE_NAMES[args.variant][args.stage]}"
                 + (f" ({'glance' if args.pretrain_glancer else 'focus'} encoder)" if args.stage == 0 else ""))
        if is_sth(net) and args.stage != 2:
            if args.official_lr_groups:
                log.info("--official_lr_groups: as the official optimiser, only the focus encoder's first "
                         f"convolution trains, at --backbone_lr {args.backbone_lr:g}"
                         + (" (0, as in the README's stage 3: nothing trains)" if args.backbone_lr == 0 else "")
                         + "; --no-official_lr_groups trains the intended groups")
            else:
                log.info("--no-official_lr_groups: the intended groups: " + ", ".join(
                    f"{g['name']} at {g['lr']:g}" for g in self.optimizer.param_groups))

    def train_one_epoch(self, model, loader, epoch: int, log: RunLog) -> Dict[str, float]:
        """One epoch (or ``--iters_per_epoch`` steps) of the stage; returns its mean figures and top-1."""
        args, info = self.args, self.info
        net = unwrap(model)
        set_modes(net, args.stage, args.pretrain_glancer)
        loader.sampler.set_epoch(epoch)
        loader.dataset.set_epoch(epoch)
        seed = epoch_seed(args.seed, epoch, info.rank)
        seed_everything(seed)  # dropout
        generator = torch.Generator(device=info.device).manual_seed(seed)  # the policy's draws
        crop_rng = np.random.RandomState(seed % 2 ** 32)  # the random patches, drawn as officially
        training = sibling("ops.training")
        meters = training.Meters()
        steps = len(loader) if not args.iters_per_epoch else min(len(loader), args.iters_per_epoch)
        start = time.time()
        for step, batch in enumerate(progress(loader, info.is_main, total=steps, desc=f"stage {args.stage} epoch {epoch}")):
            if step >= steps:
                break
            video = batch["video"].to(info.device, non_blocking=True)
            target = batch["label"].to(info.device, non_blocking=True)
            glance = {"glance": batch["glance"].to(info.device, non_blocking=True)} if "glance" in batch else {}
            values, logits = STEPS[args.variant][args.stage](net, self.optimizer, video, target, args, info,
                                                             generator, crop_rng, **glance)
            names = list(values)
            row = torch.stack([torch.as_tensor(v, dtype=torch.float64).detach().cpu() for v in values.values()])
            training.check_finite(row.unsqueeze(0), names, info, epoch, step, steps)
            step_values = dict(zip(names, row.tolist()))
            step_values["top1"] = topk_accuracy(logits.float().cpu(), target.cpu(), ks=(1,))[0]
            meters.update(step_values, target.shape[0])
            if info.is_main and (step % args.print_freq == 0 or step == steps - 1):
                log.info(f"epoch {epoch} [{step + 1}/{steps}] stage {args.stage} lr "
                         f"{self.optimizer.param_groups[-1]['lr']:.5g} {(time.time() - start) / (step + 1):.2f}s/step "
                         + " ".join(f"{k} {v:.4f}" for k, v in meters.averages().items()))
        averages = meters.averages(info)
        averages["time_s"] = time.time() - start
        return averages


def for_run(args, model, info: dist_ops.DistInfo, log: RunLog) -> Optional[StagedTraining]:
    """The run's :class:`StagedTraining` for a training run with ``--stage`` (None otherwise; the flags were
    checked by :func:`check_flags`)."""
    if getattr(args, "stage", None) is None or args.evaluate:
        return None
    return StagedTraining(args, model, info, log)
