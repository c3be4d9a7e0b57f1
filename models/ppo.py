"""PPO for AdaFocus V1's patch policies, as both official code trees train them (docs/adafocus-v1.md, "PPO").

One PPO *episode* is one training batch of B videos over its T policy steps (ActivityNet form: one step
per frame; Something-Something form: ``video_div`` steps, 1 in the official commands). Per batch:

1. **act** (:meth:`PPO.act`, once per step): the acting copy ``policy_old`` runs one step from the GRU
   state the memory carries and draws an action (:meth:`RecurrentActorCritic.sample`); the glance maps,
   the action and its log-probability go into :class:`RolloutMemory`; the caller adds the step's reward.
2. **update** (:meth:`PPO.update`, once per batch): per video the discounted returns
   ``R_t = r_t + gamma R_{t+1}`` (``R_T = 0``; no terminal flags), normalised over all T B entries
   (``(R - mean) / (std + 1e-5)``, unbiased std); then for ``k_epochs`` epochs the trained copy
   ``policy`` re-evaluates the stored states and actions (:meth:`RecurrentActorCritic.evaluate`: every map
   in one batch, the GRU from zeros), and with ``ratio = exp(logprob - old_logprob)`` and
   ``advantage = R_norm - value`` (value detached) the element-wise loss is
   ``-min(ratio A, clip(ratio, 1 - eps_clip, 1 + eps_clip) A) + value_coef MSE(value, R_norm)
   - entropy_coef entropy`` (the MSE is the scalar mean over all entries); ``loss.mean()`` is
   back-propagated and Adam takes one step; finally ``policy_old`` becomes a copy of ``policy`` (its
   parameters and BatchNorm buffers). The memory is then cleared.

Official constants (:data:`POLICY_LR` ...): Adam over the trained copy's parameters only (lr 3e-4,
betas (0.9, 0.999), eps 1e-8, no weight decay, no schedule, no gradient clipping), one epoch, clip 0.2,
value coefficient 0.5, entropy coefficient 0.01, discount 0.7 (from the configuration). There is no GAE and
no value clipping.

Everything here is plain torch and works for both policies of ``models.adafocus_v1_policy``: the grid
policy (categorical over A positions) and the Gaussian one (two clamped coordinates).
"""
from __future__ import annotations

import copy
from typing import Dict, List, NamedTuple, Optional, Sequence

import torch
import torch.nn as nn

from .adafocus_v1_policy import RecurrentActorCritic, SampledActions

#: Adam's learning rate for the policy (official ``policy_lr``).
POLICY_LR = 3e-4
#: Adam's betas and epsilon as the official optimiser is built (torch's defaults for the epsilon).
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8
#: The discount of the official configurations (``gamma``).
GAMMA = 0.7
#: Epochs over each rollout, the clip range of the probability ratio, the loss coefficients.
K_EPOCHS = 1
EPS_CLIP = 0.2
VALUE_COEF = 0.5
ENTROPY_COEF = 0.01
#: Added to the standard deviation when the returns are normalised.
RETURN_STD_EPS = 1e-5


# --------------------------------------------------------------------------------------------------
# The arithmetic of one update, as functions
# --------------------------------------------------------------------------------------------------
def discounted_returns(rewards: torch.Tensor, gamma: float) -> torch.Tensor:
    """Rewards (T, B) -> returns (T, B): ``R_t = r_t + gamma R_{t+1}`` backwards over the steps, ``R_T = 0``
    (every episode ends after its last step), in the official order of operations."""
    returns, running = torch.empty_like(rewards), torch.zeros_like(rewards[0:1])
    for t in reversed(range(rewards.shape[0])):
        running = rewards[t:t + 1] + gamma * running
        returns[t:t + 1] = running
    return returns


def normalize_returns(returns: torch.Tensor) -> torch.Tensor:
    """(T, B) -> ``(R - mean) / (std + 1e-5)`` over all entries, with the unbiased standard deviation."""
    return (returns - returns.mean()) / (returns.std() + RETURN_STD_EPS)


class PPOTerms(NamedTuple):
    """The terms of one PPO epoch, each (T, B) unless said otherwise."""

    logprobs: torch.Tensor  # log-probability of the stored actions under the trained copy
    state_values: torch.Tensor  # the critic
    dist_entropy: torch.Tensor  # the entropy of the trained copy's distribution
    ratios: torch.Tensor  # exp(logprobs - old_logprobs)
    advantages: torch.Tensor  # normalised returns - state values (detached)
    surr1: torch.Tensor  # ratios * advantages
    surr2: torch.Tensor  # clamp(ratios, 1 - eps_clip, 1 + eps_clip) * advantages
    value_loss: torch.Tensor  # () the MSE of the values against the normalised returns
    loss: torch.Tensor  # the element-wise loss; its mean is back-propagated


def ppo_terms(logprobs: torch.Tensor, state_values: torch.Tensor, dist_entropy: torch.Tensor,
              old_logprobs: torch.Tensor, normalized_returns: torch.Tensor, eps_clip: float = EPS_CLIP,
              value_coef: float = VALUE_COEF, entropy_coef: float = ENTROPY_COEF) -> PPOTerms:
    """The clipped-surrogate loss of one epoch from the re-evaluation and the rollout, all (T, B)."""
    ratios = torch.exp(logprobs - old_logprobs.detach())
    advantages = normalized_returns - state_values.detach()
    surr1 = ratios * advantages
    surr2 = torch.clamp(ratios, 1 - eps_clip, 1 + eps_clip) * advantages
    value_loss = nn.functional.mse_loss(state_values, normalized_returns)
    loss = -torch.min(surr1, surr2) + value_coef * value_loss - entropy_coef * dist_entropy
    return PPOTerms(logprobs, state_values, dist_entropy, ratios, advantages, surr1, surr2, value_loss, loss)


# --------------------------------------------------------------------------------------------------
# The rollout memory
# --------------------------------------------------------------------------------------------------
#: The fields of a memory, each stacked step-major (steps, B, ...) in :meth:`RolloutMemory.packed`.
MEMORY_FIELDS = ("states", "actions", "logprobs", "rewards")


class RolloutMemory:
    """What one episode (one batch of B videos) leaves for the update, one entry per step:

    * ``states``: the policy's input maps (B, C, s, s); ``actions``: (B,) int64 or (B, 2);
      ``logprobs``: (B,) as the acting copy gave them; ``rewards``: (B,) added by the caller;
    * ``hidden``: the acting copy's GRU state after the last step, (1, B, H), or None at the start of an
      episode.

    ``state_dict()`` / ``load_state_dict()`` save and restore it exactly (a checkpoint taken in the
    middle of an episode resumes it). ``packed()`` gives every field as one step-major tensor
    (steps, B, ...) and ``from_packed`` takes them back: that layout is what ``all_gather`` exchanges
    between processes (equal shapes on every process: the same steps and batch size), and
    :func:`merge_memories` joins the memories of several processes along the batch axis.
    """

    def __init__(self):
        self.states: List[torch.Tensor] = []
        self.actions: List[torch.Tensor] = []
        self.logprobs: List[torch.Tensor] = []
        self.rewards: List[torch.Tensor] = []
        self.hidden: Optional[torch.Tensor] = None

    def add_step(self, state: torch.Tensor, sampled: SampledActions) -> None:
        """One act: the policy's input (B, C, s, s) and what it drew."""
        self.states.append(state.detach())
        self.actions.append(sampled.actions.detach())
        self.logprobs.append(sampled.logprobs.detach())

    def add_reward(self, reward: torch.Tensor) -> None:
        """The reward of the latest step, (B,) (the official (1, B) is accepted)."""
        self.rewards.append(reward.detach().reshape(-1))

    def clear(self) -> None:
        """Forget everything (after the update)."""
        self.states, self.actions, self.logprobs, self.rewards, self.hidden = [], [], [], [], None

    @property
    def num_steps(self) -> int:
        return len(self.states)

    @property
    def batch_size(self) -> int:
        return self.states[0].shape[0] if self.states else 0

    def stacked(self):
        """(states (T, B, C, s, s), actions (T, B[, 2]), logprobs (T, B), rewards (T, B)), checked complete."""
        lengths = {name: len(getattr(self, name)) for name in MEMORY_FIELDS}
        if len(set(lengths.values())) != 1 or not self.states:
            raise ValueError(f"the rollout memory is incomplete (steps per field: {lengths}): every step needs a "
                             "state, an action, a log-probability and a reward")
        return tuple(torch.stack(getattr(self, name)) for name in MEMORY_FIELDS)

    def packed(self) -> Dict[str, Optional[torch.Tensor]]:
        """Every field stacked step-major (``None`` for an empty one), and ``hidden``."""
        out = {name: torch.stack(getattr(self, name)) if getattr(self, name) else None for name in MEMORY_FIELDS}
        out["hidden"] = self.hidden
        return out

    @classmethod
    def from_packed(cls, packed: Dict[str, Optional[torch.Tensor]]) -> "RolloutMemory":
        memory = cls()
        memory.load_state_dict(packed)
        return memory

    def state_dict(self) -> Dict[str, Optional[torch.Tensor]]:
        """The memory as plain tensors (``torch.save`` / ``torch.load(weights_only=True)`` safe)."""
        return {name: (value.clone() if value is not None else None) for name, value in self.packed().items()}

    def load_state_dict(self, state: Dict[str, Optional[torch.Tensor]]) -> None:
        missing = [name for name in (*MEMORY_FIELDS, "hidden") if name not in state]
        if missing:
            raise KeyError(f"a rollout memory's state needs {', '.join(missing)}")
        for name in MEMORY_FIELDS:
            setattr(self, name, list(state[name].unbind(0)) if state[name] is not None else [])
        self.hidden = state["hidden"]


def merge_memories(memories: Sequence[RolloutMemory]) -> RolloutMemory:
    """The memories of several processes (same steps, each its own videos) -> one memory of all videos,
    concatenated along the batch axis in the given order (``hidden`` too, where every memory has one)."""
    if not memories:
        raise ValueError("merge_memories needs at least one memory")
    packs = [m.packed() for m in memories]
    merged = {}
    for name in (*MEMORY_FIELDS, "hidden"):
        values = [p[name] for p in packs]
        if all(v is None for v in values):
            merged[name] = None
            continue
        if any(v is None for v in values):
            raise ValueError(f"cannot merge rollout memories: some have no {name}")
        axis = 1  # (steps, B, ...) and hidden (1, B, H): the batch is the second axis of both
        if len({v.shape[:axis] + v.shape[axis + 1:] for v in values}) != 1:
            raise ValueError(f"cannot merge rollout memories: their {name} differ in shape "
                             f"({[tuple(v.shape) for v in values]}); every process must run the same steps")
        merged[name] = torch.cat(values, dim=axis)
    return RolloutMemory.from_packed(merged)


# --------------------------------------------------------------------------------------------------
# The PPO object
# --------------------------------------------------------------------------------------------------
class PPOUpdate(NamedTuple):
    """What one :meth:`PPO.update` computed: the returns (T, B) and the last epoch's :class:`PPOTerms`."""

    discounted_returns: torch.Tensor
    normalized_returns: torch.Tensor
    terms: PPOTerms

    @property
    def loss_mean(self) -> float:
        return float(self.terms.loss.detach().mean())


class PPO:
    """The official PPO around an actor-critic ``policy`` (the trained copy, e.g. a model's
    ``policy.spatial``): ``policy_old`` is a deep copy that acts, Adam trains ``policy``.

    ``PPO(policy, lr=3e-4, betas=(0.9, 0.999), eps=1e-8, gamma=0.7, k_epochs=1, eps_clip=0.2,
    value_coef=0.5, entropy_coef=0.01)``. ``act(maps, memory, restart, generator)`` for every step,
    ``update(memory)`` after the rewards are in (it clears nothing: call ``memory.clear()`` afterwards, as
    the official focuser does). Modes are the caller's: the official stage 2 keeps both copies in training
    mode (which matters for the BatchNorms of the Gaussian policy). ``state_dict()`` holds the optimiser
    and the acting copy (whose BatchNorm statistics move while it acts); the trained copy is the model's.
    """

    def __init__(self, policy: RecurrentActorCritic, lr: float = POLICY_LR, betas=ADAM_BETAS, eps: float = ADAM_EPS,
                 gamma: float = GAMMA, k_epochs: int = K_EPOCHS, eps_clip: float = EPS_CLIP,
                 value_coef: float = VALUE_COEF, entropy_coef: float = ENTROPY_COEF):
        if k_epochs < 1:
            raise ValueError(f"k_epochs must be at least 1, got {k_epochs}")
        self.policy = policy
        self.policy_old = copy.deepcopy(policy)
        self.optimizer = torch.optim.Adam(policy.parameters(), lr=lr, betas=tuple(betas), eps=eps)
        self.gamma, self.k_epochs, self.eps_clip = gamma, k_epochs, eps_clip
        self.value_coef, self.entropy_coef = value_coef, entropy_coef

    def act(self, maps: torch.Tensor, memory: RolloutMemory, restart: bool,
            generator: Optional[torch.Generator] = None) -> SampledActions:
        """One training-mode step of the acting copy: maps (B, C, s, s) -> :class:`SampledActions`, stored in
        ``memory`` with the new GRU state. ``restart``: the first step of an episode (the GRU from zeros)."""
        if restart:
            memory.hidden = None
        with torch.no_grad():
            steps = self.policy_old(maps.unsqueeze(1), memory.hidden)
            sampled = self.policy_old.sample(self.policy_old.actor_output(steps)[:, 0], generator)
        memory.hidden = self.policy_old.next_hidden(steps)
        memory.add_step(maps, sampled)
        return sampled

    def update(self, memory: RolloutMemory) -> PPOUpdate:
        """One official update from a complete memory (see the module docstring)."""
        states, actions, old_logprobs, rewards = memory.stacked()
        returns = discounted_returns(rewards, self.gamma)
        normalized = normalize_returns(returns)
        for _ in range(self.k_epochs):
            evaluated = self.policy.evaluate(states, actions)
            terms = ppo_terms(*evaluated, old_logprobs, normalized, self.eps_clip, self.value_coef, self.entropy_coef)
            self.optimizer.zero_grad()
            terms.loss.mean().backward()
            self.optimizer.step()
        self.policy_old.load_state_dict(self.policy.state_dict())
        return PPOUpdate(returns, normalized, terms)

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "policy_old": self.policy_old.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.policy_old.load_state_dict(state["policy_old"])
