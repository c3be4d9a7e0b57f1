"""AdaFocus V1's PPO (models/ppo.py) and stage-2 step reproduce the official updates.

* Every ``v1/ppo_update_*.pt`` of the reference folder: each variant in the file (``discrete``: the grid
  policy, ``continuous``: the Gaussian one) is replayed as its ``recipe`` says, with the dimensions,
  seeds, constants and iterations read from the file: the synthetic policy weights from its manifest
  entries (digest checked), the rollouts regenerated from ``buffer_seed`` (checked against the stored
  ones), the actions drawn from a generator seeded with ``rollout_seed``; then the acts, the returns, every
  loss term, the gradients, the Adam deltas, the BatchNorm buffers and the final weights are compared.
* Every ``v1/parity_*.pt`` of the ActivityNet form: its ``stage2_iteration`` (one official stage-2 training
  iteration right after the eval forward): the sampled actions, the random baseline crops, the rewards,
  the memory and the update's locals.
* Properties that hold for any sizes and seeds: the returns, the clipped surrogate, the policy-gradient
  part of the gradient, the memory's merge and checkpointing.

Tolerances are the fixture README's (section 6): exact on action indices and coordinates, ``atol=1e-5`` on
continuous actions and probabilities, ``atol=rtol=1e-4`` on log-probabilities, values, entropies, ratios
and losses, ``rtol=1e-3`` on normalised returns and advantages, ``atol=1e-5, rtol=1e-4`` on gradients;
Adam deltas within ``atol=1e-5`` where the gradient exceeds 1e-5 and otherwise only ``|delta| <= lr``. Its
documented exceptions are kept: the bias of a Linear directly before a training-mode BatchNorm1d has a zero
true gradient (its sign, and so its Adam step, is noise), so it and the running mean of that BatchNorm from
the second iteration on are not compared.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from models.adafocus_v1_policy import GaussianPatchPolicy, GridPatchPolicy, RecurrentActorCritic
from models.ppo import (PPO, RolloutMemory, discounted_returns, merge_memories, normalize_returns, ppo_terms)
from support import Capture, fixture_generator, fixture_params, require_fixture

EXACT = dict(atol=0.0, rtol=0.0)
PROBS = dict(atol=1e-5, rtol=0.0)
TERMS = dict(atol=1e-4, rtol=1e-4)  # log-probabilities, values, entropies, ratios, losses
NORMALISED = dict(atol=1e-4, rtol=1e-3)  # normalised returns, advantages
GRADS = dict(atol=1e-5, rtol=1e-4)
#: the fixture's (T, B) tensors that are loss terms of the update, as :class:`models.ppo.PPOTerms` names them
TERM_NAMES = ("logprobs", "state_values", "dist_entropy", "ratios", "surr1", "surr2", "loss")


# --------------------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------------------
def policy_of(config: dict) -> RecurrentActorCritic:
    """The policy a PPO fixture variant's ``config`` describes."""
    c = config
    if "action_dim" in c:
        return GridPatchPolicy(c["feature_dim"], c["map_side"], c["hidden_state_dim"], c["action_dim"])
    return GaussianPatchPolicy(c["feature_dim"], c["map_side"], c["hidden_state_dim"], c["action_std"], c["with_bn"])


def ppo_of(policy: RecurrentActorCritic, c: dict) -> PPO:
    return PPO(policy, lr=c["lr"], betas=c["betas"], eps=c["adam_eps"], gamma=c["gamma"], k_epochs=c["K_epochs"],
               eps_clip=c["eps_clip"], value_coef=c["value_coef"], entropy_coef=c["entropy_coef"])


def noise_gradient_keys(policy: RecurrentActorCritic):
    """(the bias of every Linear directly followed by a BatchNorm1d, that BatchNorm's running mean) in the
    policy's state-dict names: the true gradient of such a bias is zero in training mode."""
    biases, means = set(), set()
    layers = list(policy.state_encoder)
    for i in range(1, len(layers)):
        if isinstance(layers[i], nn.BatchNorm1d) and isinstance(layers[i - 1], nn.Linear):
            biases.add(f"state_encoder.{i - 1}.bias")
            means.add(f"state_encoder.{i}.running_mean")
    return biases, means


def assert_adam_deltas(deltas: dict, grads: dict, recorded: dict, lr: float, skip=()):
    """Adam's first steps are about +-lr wherever the gradient is not tiny: compare where |grad| > 1e-5,
    elsewhere only check that the step is at most lr."""
    for name, delta in deltas.items():
        if name in skip:
            continue
        big = grads[name].abs() > 1e-5
        torch.testing.assert_close(delta[big], recorded[name][big], atol=1e-5, rtol=0.0, msg=lambda m: f"{name}: {m}")
        assert delta[~big].abs().max().item() <= lr * (1 + 1e-3) if (~big).any() else True, name


# --------------------------------------------------------------------------------------------------
# The PPO fixtures
# --------------------------------------------------------------------------------------------------
def replay_variant(path, fx: dict, name: str) -> dict:
    """Replay one variant of a PPO fixture: per iteration what our PPO computed."""
    v = fx[name]
    c = v["config"]
    generator = fixture_generator(path, fx)
    manifest = [(str(k), [int(s) for s in shape], str(dt)) for k, shape, dt in v["manifest_entries"]]
    state = generator.make_state_dict(manifest, v["checkpoint_seed"])
    assert generator.state_dict_digest(state) == v["state_dict_sha256"], f"{name}: the synthetic policy differs"
    prefix = "focuser.policy.policy." if any(k.startswith("focuser.policy.policy.") for k in state) else "policy."
    weights = {k[len(prefix):]: t for k, t in state.items() if k.startswith(prefix)}
    policy = policy_of(c)
    policy.load_state_dict(weights)
    ppo = ppo_of(policy, c)
    buffers = torch.Generator().manual_seed(v["buffer_seed"])
    rollout = torch.Generator().manual_seed(v["rollout_seed"])
    memory, results, actor_outputs = RolloutMemory(), [], []
    steps, b, f, side = c["T"], c["B"], c["feature_dim"], c["map_side"]
    for _ in range(c["n_iterations"]):
        states = [(torch.randn((b, f, side, side), generator=buffers) * 2.0).clamp(0, 6) for _ in range(steps)]
        rewards = [(torch.rand((1, b), generator=buffers) - 0.5) * 0.2 for _ in range(steps)]
        policy.train()
        ppo.policy_old.train()
        raw, capture = [], Capture({"actor": ppo.policy_old.actor[1]})  # the softmax / sigmoid
        for t in range(steps):
            raw.append(ppo.act(states[t], memory, restart=(t == 0), generator=rollout).raw)
            actor_outputs.append(capture.values["actor"][0])  # (B, D): one step, step-major
            memory.add_reward(rewards[t])
        capture.remove()
        stacked = memory.stacked()
        before = {k: p.detach().clone() for k, p in policy.named_parameters()}
        update = ppo.update(memory)
        results.append(dict(
            states=stacked[0], actions=stacked[1], old_logprobs=stacked[2], rewards=stacked[3], update=update,
            raw=torch.stack(raw), actor_outputs=torch.stack(actor_outputs[-steps:]),
            grads={k: p.grad.detach().clone() for k, p in policy.named_parameters()},
            deltas={k: p.detach() - before[k] for k, p in policy.named_parameters()},
            buffers={k: t.clone() for k, t in policy.state_dict().items() if k not in before},
            old_equals=all(torch.equal(a, b_) for a, b_ in zip(policy.state_dict().values(),
                                                              ppo.policy_old.state_dict().values())),
            n_hidden=memory.num_steps + 1))
        memory.clear()
    return dict(policy=policy, ppo=ppo, results=results, weights=weights)


@pytest.fixture(scope="module", params=fixture_params("ppo_update_*.pt", "v1"))
def ppo_fixture(request):
    path = require_fixture(request.param)
    fx = torch.load(path, weights_only=True)
    torch.set_num_threads(fx.get("num_threads", 1))
    variants = [k for k, v in fx.items() if isinstance(v, dict) and "kind" in v]
    assert variants, f"{path.name} holds no PPO variant"
    unknown = [fx[k]["kind"] for k in variants if fx[k]["kind"] not in ("discrete", "continuous")]
    assert not unknown, f"{path.name}: PPO variants of unknown kind {unknown}"
    return dict(fx=fx, variants={k: replay_variant(path, fx, k) for k in variants})


def each_iteration(ppo_fixture):
    for name, replay in ppo_fixture["variants"].items():
        v = ppo_fixture["fx"][name]
        for i, (ours, recorded) in enumerate(zip(replay["results"], v["iterations"], strict=True)):
            yield f"{name}[{i}]", v, ours, recorded


def test_initial_weights_are_the_recorded_ones(ppo_fixture):
    for name, replay in ppo_fixture["variants"].items():
        recorded = ppo_fixture["fx"][name]["initial_policy_state_dict"]
        assert sorted(replay["weights"]) == sorted(recorded), name
        for key, value in recorded.items():
            assert torch.equal(replay["weights"][key], value), f"{name}: {key}"


def test_rollouts_acts_and_memory(ppo_fixture):
    for where, v, ours, recorded in each_iteration(ppo_fixture):
        assert torch.equal(ours["states"], recorded["states"]), where
        assert torch.equal(ours["rewards"], recorded["rewards"]), where
        if v["kind"] == "discrete":
            assert torch.equal(ours["actions"], recorded["actions"]), where
        else:
            torch.testing.assert_close(ours["raw"], recorded["raw_samples_before_clamp"], **PROBS)
            torch.testing.assert_close(ours["actions"], recorded["actions"], **PROBS)
            assert ours["actions"].min() >= 0 and ours["actions"].max() <= 1, where
        torch.testing.assert_close(ours["old_logprobs"], recorded["old_logprobs"], **TERMS)
        torch.testing.assert_close(ours["actor_outputs"], recorded["act_actor_outputs"], **PROBS)
        assert ours["n_hidden"] == recorded["n_hidden_in_memory"], where  # a zero state + one per step


def test_returns_and_loss_terms(ppo_fixture):
    for where, v, ours, recorded in each_iteration(ppo_fixture):
        update = ours["update"]
        torch.testing.assert_close(update.discounted_returns, recorded["discounted_returns"], atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(update.normalized_returns, recorded["normalized_returns"], **NORMALISED)
        torch.testing.assert_close(update.terms.advantages, recorded["advantages"], **NORMALISED)
        for name in TERM_NAMES:
            torch.testing.assert_close(getattr(update.terms, name).detach(), recorded[name], **TERMS,
                                       msg=lambda m: f"{where} {name}: {m}")
        assert update.loss_mean == pytest.approx(recorded["loss_mean"], rel=1e-4, abs=1e-4), where
        assert update.terms.value_loss.item() == pytest.approx(recorded["value_loss_mse"], rel=1e-4, abs=1e-4), where
        if v["kind"] == "discrete":  # no BatchNorm: acting and re-evaluating agree, the clip never acts
            torch.testing.assert_close(update.terms.ratios.detach(), torch.ones_like(update.terms.ratios), **TERMS)


def test_gradients_adam_steps_buffers_and_the_acting_copy(ppo_fixture):
    for name, replay in ppo_fixture["variants"].items():
        v = ppo_fixture["fx"][name]
        noisy_biases, noisy_means = noise_gradient_keys(replay["policy"])
        for i, (ours, recorded) in enumerate(zip(replay["results"], v["iterations"], strict=True)):
            assert sorted(ours["grads"]) == sorted(recorded["grads"]), name
            for key, grad in ours["grads"].items():
                if key not in noisy_biases:
                    torch.testing.assert_close(grad, recorded["grads"][key], **GRADS, msg=lambda m: f"{name}[{i}] {key}: {m}")
            assert_adam_deltas(ours["deltas"], ours["grads"], recorded["param_deltas"], v["config"]["lr"], skip=noisy_biases)
            for key, value in recorded["buffers_after"].items():
                if i >= 1 and key in noisy_means:
                    continue
                torch.testing.assert_close(ours["buffers"][key].double(), value.double(), atol=1e-5, rtol=1e-4,
                                           msg=lambda m: f"{name}[{i}] {key}: {m}")
            assert ours["old_equals"] and recorded["policy_old_equals_policy"], name
        final = replay["policy"].state_dict()
        for key, value in v["final_policy_state_dict"].items():
            # the noise-driven bias and running mean: within two Adam steps' size per iteration
            noisy = dict(atol=2 * v["config"]["lr"] * len(v["iterations"]), rtol=0.0)
            tol = noisy if key in noisy_biases | noisy_means else dict(atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(final[key].double(), value.double(), **tol, msg=lambda m: f"{name} {key}: {m}")
