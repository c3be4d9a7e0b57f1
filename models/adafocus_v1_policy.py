"""AdaFocus V1's actor-critics: where the patch goes, decided from the glance feature maps.

Both official forms of AdaFocus V1 use the same recurrent actor-critic skeleton (docs/adafocus-v1.md):

* ``state_encoder``: Conv2d 1x1 (C -> K channels, no bias) [BatchNorm2d], ReLU, flatten (channel-major:
  index k s s + y s + x), Linear(K s s -> H) [BatchNorm1d], ReLU;
* ``gru``: a one-layer GRU (H -> H), step-major (not batch-first), from a zero state at the first step;
* ``actor``: Linear(H -> D) and an activation; ``critic``: Linear(H -> 1).

Layer indices follow the official actor-critics (``state_encoder.0``, ``.3`` or, with BatchNorm, ``.0``,
``.1``, ``.4``, ``.5``; ``actor.0``; ``critic.0``), so official state dicts load by prefix.

* :class:`GridPatchPolicy` (ActivityNet / FCVID / Mini-Kinetics form): K = 32, no BatchNorm, D = A grid
  positions, softmax; a categorical distribution over the positions; evaluation acts by argmax.
* :class:`GaussianPatchPolicy` (Something-Something form): K = 64, BatchNorm by default, D = 2, sigmoid:
  the mean (vertical, horizontal) in (0, 1) of a Gaussian with a fixed diagonal standard deviation
  ``action_std``; evaluation acts by the mean, training samples and clamps to [0, 1].

Shapes: B videos, T steps, C glance channels, s the glance map side, H = ``hidden_dim``. The recurrent
state passed between calls is the GRU's, (1, B, H); ``None`` means zeros (a new episode).

Three entry points, the same for both policies:

* ``forward(feature_maps (B, T, C, s, s), hidden=None)`` -> steps (B, T, ...) (:class:`GridPolicySteps` /
  :class:`GaussianPolicySteps`), every map encoded in one batch, the GRU run from ``hidden``. With T = 1 and
  the previous call's ``next_hidden(steps)`` this is one official acting step (its BatchNorm statistics,
  in training mode, are those of the B maps of the step, as the official act's).
* ``sample(actor_output, generator=None)`` -> :class:`SampledActions`: the training-mode act of one step
  from the actor's output (probabilities (B, A) / means (B, 2)), drawing from ``generator`` (the global
  torch generator when None) exactly as the official distributions draw.
* ``evaluate(states (T, B, C, s, s), actions)`` -> :class:`EvaluatedActions` (T, B): the official PPO
  re-evaluation of a stored rollout (all T B maps encoded in one batch, the GRU from zeros).
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.nn as nn
from torch.distributions import Categorical, Distribution, MultivariateNormal

#: Output channels of the 1x1 convolution of the ActivityNet-form policy (official constant).
GRID_CONV_CHANNELS = 32
#: Output channels of the 1x1 convolution of the Something-Something-form policies (official constant).
STH_CONV_CHANNELS = 64
#: The standard deviation of the Gaussian policy in the official Something-Something commands.
DEFAULT_ACTION_STD = 0.25


def state_encoder(in_channels: int, feature_size: int, hidden_dim: int, conv_channels: int,
                  with_bn: bool) -> nn.Sequential:
    """The official encoder of one glance map (N, C, s, s) -> (N, H), with the official layer indices."""
    flat = conv_channels * feature_size * feature_size
    if with_bn:
        return nn.Sequential(nn.Conv2d(in_channels, conv_channels, kernel_size=1, bias=False),
                             nn.BatchNorm2d(conv_channels), nn.ReLU(), nn.Flatten(),
                             nn.Linear(flat, hidden_dim), nn.BatchNorm1d(hidden_dim), nn.ReLU())
    return nn.Sequential(nn.Conv2d(in_channels, conv_channels, kernel_size=1, bias=False), nn.ReLU(), nn.Flatten(),
                         nn.Linear(flat, hidden_dim), nn.ReLU())


class SampledActions(NamedTuple):
    """One training-mode act of B videos."""

    actions: torch.Tensor  # (B,) int64 grid positions, or (B, 2) float positions clamped to [0, 1]
    logprobs: torch.Tensor  # (B,) log-probability of ``actions`` (the Gaussian's: of the clamped action)
    raw: torch.Tensor  # the draw before clamping: (B,) as ``actions`` for the grid, (B, 2) for the Gaussian
    actor_output: torch.Tensor  # the distribution's parameter it was drawn from: probabilities (B, A) / means (B, 2)


class EvaluatedActions(NamedTuple):
    """The PPO re-evaluation of a stored rollout, step-major."""

    logprobs: torch.Tensor  # (T, B) log-probability of the stored actions
    state_values: torch.Tensor  # (T, B) the critic
    entropy: torch.Tensor  # (T, B) the distribution's entropy


class RecurrentActorCritic(nn.Module):
    """The shared skeleton (module docstring). Subclasses set the actor's activation and the distribution."""

    def __init__(self, in_channels: int, feature_size: int, hidden_dim: int, actor_dim: int,
                 actor_activation: nn.Module, conv_channels: int, with_bn: bool):
        super().__init__()
        self.hidden_dim, self.with_bn = hidden_dim, with_bn
        self.state_encoder = state_encoder(in_channels, feature_size, hidden_dim, conv_channels, with_bn)
        self.gru = nn.GRU(hidden_dim, hidden_dim, num_layers=1)
        self.actor = nn.Sequential(nn.Linear(hidden_dim, actor_dim), actor_activation)
        self.critic = nn.Sequential(nn.Linear(hidden_dim, 1))

    def run(self, states: torch.Tensor, hidden: Optional[torch.Tensor] = None):
        """Step-major maps (T, B, C, s, s), GRU state (1, B, H) or None -> (encoded, gru_states, actor_logits,
        actor_output, state_values), each (T, B, ...): all T B maps are encoded in one batch (step-major)."""
        t, b = states.shape[:2]
        encoded = self.state_encoder(states.reshape(t * b, *states.shape[2:])).view(t, b, -1)  # (T, B, H)
        gru_states, _ = self.gru(encoded, hidden)  # (T, B, H)
        logits = self.actor[0](gru_states)
        return encoded, gru_states, logits, self.actor[1](logits), self.critic(gru_states).squeeze(-1)

    @staticmethod
    def next_hidden(steps) -> torch.Tensor:
        """The GRU state after the last step of ``steps`` (B, T, ...), (1, B, H): what the next call starts from."""
        return steps.hidden[:, -1].unsqueeze(0)

    @staticmethod
    def actor_output(steps) -> torch.Tensor:
        """The distribution's parameter in ``steps`` (B, T, ...): what :meth:`sample` and :meth:`distribution`
        take."""
        raise NotImplementedError

    def distribution(self, actor_output: torch.Tensor) -> Distribution:
        """The actor's output (..., D) -> the action distribution with batch shape (...)."""
        raise NotImplementedError

    def sample(self, actor_output: torch.Tensor, generator: Optional[torch.Generator] = None) -> SampledActions:
        """One step's actor output (B, D) -> :class:`SampledActions`, drawn from ``generator``."""
        raise NotImplementedError

    def evaluate(self, states: torch.Tensor, actions: torch.Tensor) -> EvaluatedActions:
        """The official PPO re-evaluation: states (T, B, C, s, s) and the actions taken ((T, B) int64 or
        (T, B, 2)) -> :class:`EvaluatedActions` (T, B), the GRU from zeros."""
        _, _, _, output, values = self.run(states)
        dist = self.distribution(output)
        return EvaluatedActions(dist.log_prob(actions), values, dist.entropy())


# --------------------------------------------------------------------------------------------------
# The grid policy (ActivityNet / FCVID / Mini-Kinetics form)
# --------------------------------------------------------------------------------------------------
class GridPolicySteps(NamedTuple):
    """What :class:`GridPatchPolicy` computes for B videos of T frames."""

    actions: torch.Tensor  # (B, T) int64, the most probable grid position
    probs: torch.Tensor  # (B, T, A) the actor's softmax
    logits: torch.Tensor  # (B, T, A) the actor's input to the softmax
    state_values: torch.Tensor  # (B, T) the critic's values
    encoded: torch.Tensor  # (B, T, H) the per-frame encoder output (GRU input)
    hidden: torch.Tensor  # (B, T, H) the GRU state after each frame


class GridPatchPolicy(RecurrentActorCritic):
    """The actor-critic over a grid of A patch positions: glance maps (B, T, C, s, s) -> one position per frame.

    ``GridPatchPolicy(in_channels, feature_size, hidden_dim, action_dim, conv_channels=32, with_bn=False)``:
    ``state_encoder`` Conv2d 1x1 (C -> 32, no bias), ReLU, flatten, Linear(32 s s -> H), ReLU; ``gru``;
    ``actor`` Linear(H -> A), softmax; ``critic`` Linear(H -> 1). Evaluation acts by argmax; training samples
    from the categorical distribution of the softmax (:meth:`sample`).
    """

    def __init__(self, in_channels: int, feature_size: int, hidden_dim: int, action_dim: int,
                 conv_channels: int = GRID_CONV_CHANNELS, with_bn: bool = False):
        super().__init__(in_channels, feature_size, hidden_dim, action_dim, nn.Softmax(dim=-1), conv_channels, with_bn)

    def forward(self, feature_maps: torch.Tensor, hidden: Optional[torch.Tensor] = None) -> GridPolicySteps:
        """feature_maps (B, T, C, s, s), GRU state (1, B, H) or None -> :class:`GridPolicySteps`."""
        encoded, states, logits, probs, values = self.run(feature_maps.transpose(0, 1), hidden)
        probs = probs.transpose(0, 1)  # (B, T, A)
        return GridPolicySteps(probs.argmax(dim=-1), probs, logits.transpose(0, 1), values.t(),
                               encoded.transpose(0, 1), states.transpose(0, 1))

    @staticmethod
    def actor_output(steps: GridPolicySteps) -> torch.Tensor:
        """The parameter of the distribution: the probabilities (B, T, A)."""
        return steps.probs

    def distribution(self, actor_output: torch.Tensor) -> Categorical:
        """Probabilities (..., A) -> the categorical distribution the official act and update use."""
        return Categorical(probs=actor_output)

    def sample(self, actor_output: torch.Tensor, generator: Optional[torch.Generator] = None) -> SampledActions:
        """Probabilities (B, A) -> one position per video, drawn as the official categorical draws (one
        ``torch.multinomial`` of the normalised probabilities, with replacement) from ``generator``."""
        dist = self.distribution(actor_output)
        actions = torch.multinomial(dist.probs.reshape(-1, dist.probs.shape[-1]), 1, True,
                                    generator=generator).view(actor_output.shape[:-1])
        return SampledActions(actions, dist.log_prob(actions), actions, actor_output)


# --------------------------------------------------------------------------------------------------
# The Gaussian policy (Something-Something form)
# --------------------------------------------------------------------------------------------------
class GaussianPolicySteps(NamedTuple):
    """What :class:`GaussianPatchPolicy` computes for B videos over T steps."""

    actions: torch.Tensor  # (B, T, 2) the mean position (vertical, horizontal) in (0, 1): the evaluation act
    logits: torch.Tensor  # (B, T, 2) the actor's input to the sigmoid
    state_values: torch.Tensor  # (B, T) the critic's values
    encoded: torch.Tensor  # (B, T, H) the encoder output (GRU input)
    hidden: torch.Tensor  # (B, T, H) the GRU state after each step


class GaussianPatchPolicy(RecurrentActorCritic):
    """The continuous actor-critic: glance maps (B, T, C, s, s) -> a patch position in [0, 1]^2 per step.

    ``GaussianPatchPolicy(in_channels, feature_size, hidden_dim, action_std=0.25, with_bn=True,
    conv_channels=64)``: ``state_encoder`` Conv2d 1x1 (C -> 64, no bias), BatchNorm2d, ReLU, flatten,
    Linear(64 s s -> H), BatchNorm1d, ReLU (without ``with_bn``: no BatchNorms, indices 0, 3); ``gru``;
    ``actor`` Linear(H -> 2), sigmoid = the mean; ``critic`` Linear(H -> 1). The distribution is a
    two-dimensional Gaussian around the mean with standard deviation ``action_std`` on each axis (the
    official ``action_var`` is this standard deviation, used as the diagonal of ``scale_tril``).

    Evaluation acts by the mean (``forward(...).actions``). The official evaluation still draws one sample
    per video and discards it; ``sample`` reproduces that draw where the random-number sequence matters.
    The BatchNorms use batch statistics in training mode, so ``forward`` / ``evaluate`` over different
    batches (one step's B maps while acting, all T B maps in the update) normalise differently, as the
    official code does.
    """

    def __init__(self, in_channels: int, feature_size: int, hidden_dim: int, action_std: float = DEFAULT_ACTION_STD,
                 with_bn: bool = True, conv_channels: int = STH_CONV_CHANNELS):
        if not action_std > 0:
            raise ValueError(f"action_std must be positive, got {action_std}")
        super().__init__(in_channels, feature_size, hidden_dim, 2, nn.Sigmoid(), conv_channels, with_bn)
        self.action_std = float(action_std)

    def forward(self, feature_maps: torch.Tensor, hidden: Optional[torch.Tensor] = None) -> GaussianPolicySteps:
        """feature_maps (B, T, C, s, s), GRU state (1, B, H) or None -> :class:`GaussianPolicySteps`."""
        encoded, states, logits, means, values = self.run(feature_maps.transpose(0, 1), hidden)
        return GaussianPolicySteps(means.transpose(0, 1), logits.transpose(0, 1), values.t(), encoded.transpose(0, 1),
                                   states.transpose(0, 1))

    @staticmethod
    def actor_output(steps: GaussianPolicySteps) -> torch.Tensor:
        """The parameter of the distribution: the means (B, T, 2)."""
        return steps.actions

    def distribution(self, actor_output: torch.Tensor) -> MultivariateNormal:
        """Means (..., 2) -> the Gaussian with ``scale_tril = diag(action_std, action_std)``."""
        scale = torch.full_like(actor_output, self.action_std)
        return MultivariateNormal(actor_output, scale_tril=torch.diag_embed(scale))

    def sample(self, actor_output: torch.Tensor, generator: Optional[torch.Generator] = None) -> SampledActions:
        """Means (B, 2) -> one sample per video: ``raw = mean + action_std * eps`` with eps (B, 2) drawn by
        one ``normal_`` from ``generator``; the action is raw clamped to [0, 1] as the official code clamps
        it (``1 - relu(1 - relu(raw))``, which for values inside (0, 1) may differ from raw in the last bit)
        and its log-probability is the Gaussian's at the clamped action."""
        dist = self.distribution(actor_output)
        eps = torch.empty_like(actor_output).normal_(generator=generator)
        raw = dist.loc + torch.matmul(dist.scale_tril, eps.unsqueeze(-1)).squeeze(-1)
        actions = 1.0 - torch.relu(1.0 - torch.relu(raw))
        return SampledActions(actions, dist.log_prob(actions), raw, actor_output)
