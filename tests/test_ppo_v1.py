"""AdaFocus V1's PPO (models/ppo.py) and stage-2 step reproduce the official updates.

* Every ``v1/ppo_update_*.pt`` of the reference folder: each variant in the file (``discrete``: the grid
  policy, ``continuous``: the Gaussian one) is replayed as its ``recipe`` says, with the dimensions,
  seeds, constants and iterations read from the file: the synthetic policy weights from its manifest
  entries (digest checked), the rollouts regenerated from ``buffer_seed`` (checked against the stored
  ones), the actions drawn from a generator seeded with ``rollout_seed``; then the acts, the returns, every
  loss term, the gradients, the Adam deltas, the BatchNorm buffers and the final weights are compared.
* Every ``v1/parity_*.pt``: its ``stage2_iteration`` (one official stage-2 training iteration right after
  the eval forward). ActivityNet form: ``AdaFocusV1.stage2_rollout`` and the update end to end (sampled
  actions, random baseline crops, rewards, memory, the update's locals). Something-Something form:
  ``AdaFocusV1TSM.stage2_rollout`` with this PPO (the raw and clamped samples, boxes, rewards, the acting
  copy's BatchNorm statistics), and the update from the recorded rewards (see ``stage2_sth``).
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

import copy

import numpy as np
import pytest
import torch
import torch.nn as nn

from models.adafocus_v1_policy import GaussianPatchPolicy, GridPatchPolicy, RecurrentActorCritic
from models.ppo import (PPO, RolloutMemory, discounted_returns, merge_memories, normalize_returns, ppo_terms)
from ops.checkpoint import load_checkpoint
from support import fixture_checkpoint, fixture_generator, fixture_params, require_fixture
from test_adafocus_v1 import random_clip, tiny_v1
from test_parity_v1 import ACT_TREE, build_model, regenerate_input
from test_parity_v1_sth import STH_TREE
from test_parity_v1_sth import build_model as sth_model

EXACT = dict(atol=0.0, rtol=0.0)
PROBS = dict(atol=1e-5, rtol=0.0)
TERMS = dict(atol=1e-4, rtol=1e-4)  # log-probabilities, values, entropies, ratios, losses
NORMALISED = dict(atol=1e-4, rtol=1e-3)  # normalised returns, advantages
GRADS = dict(atol=1e-5, rtol=1e-4)
STH_STAGE2_SKIP = "its stage-2 iteration is replayed by the test_stage2_sth_* tests of this file"
#: the fixture's (T, B) tensors that are loss terms of the update, as :class:`models.ppo.PPOTerms` names them
TERM_NAMES = ("logprobs", "state_values", "dist_entropy", "ratios", "surr1", "surr2", "loss")


# --------------------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------------------
def policy_of(kind: str, c: dict) -> RecurrentActorCritic:
    """The policy of a PPO fixture variant: its ``kind`` and ``config``."""
    if kind == "discrete":
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
        small = delta[~big].abs()
        assert small.numel() == 0 or small.max().item() <= lr * (1 + 1e-3), name


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
    policy = policy_of(v["kind"], c)
    policy.load_state_dict(weights)
    ppo = ppo_of(policy, c)
    buffers = torch.Generator().manual_seed(v["buffer_seed"])
    rollout = torch.Generator().manual_seed(v["rollout_seed"])
    memory, results = RolloutMemory(), []
    steps, b, f, side = c["T"], c["B"], c["feature_dim"], c["map_side"]
    for _ in range(c["n_iterations"]):
        states = [(torch.randn((b, f, side, side), generator=buffers) * 2.0).clamp(0, 6) for _ in range(steps)]
        rewards = [(torch.rand((1, b), generator=buffers) - 0.5) * 0.2 for _ in range(steps)]
        policy.train()
        ppo.policy_old.train()
        acted = []
        for t in range(steps):
            acted.append(ppo.act(states[t], memory, restart=(t == 0), generator=rollout))
            memory.add_reward(rewards[t])
        stacked = memory.stacked()
        before = {k: p.detach().clone() for k, p in policy.named_parameters()}
        update = ppo.update(memory)
        results.append(dict(
            states=stacked[0], actions=stacked[1], old_logprobs=stacked[2], rewards=stacked[3], update=update,
            raw=torch.stack([a.raw for a in acted]), actor_outputs=torch.stack([a.actor_output for a in acted]),
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


# --------------------------------------------------------------------------------------------------
# The stage-2 iteration of the parity fixtures (ActivityNet form)
# --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module", params=fixture_params("parity_*.pt", "v1"))
def stage2(request, tmp_path_factory):
    """One official stage-2 iteration replayed on the fixture's model and batch: the model in evaluation mode,
    both policy copies in training mode, the draws from generators seeded with ``rollout_seed``."""
    path = require_fixture(request.param)
    fx = torch.load(path, weights_only=True)
    if fx["tree"] != ACT_TREE:
        pytest.skip(f"{path.name} is the Something-Something form's fixture: {STH_STAGE2_SKIP}")
    torch.set_num_threads(fx.get("num_threads", 1))
    model = build_model(fx["config"])
    ckpt_path, _ = fixture_checkpoint(path, fx, tmp_path_factory.mktemp("v1_stage2"))
    load_checkpoint(str(ckpt_path), model)
    model.eval()
    s2 = fx["stage2_iteration"]
    ppo = PPO(model.policy.spatial, gamma=fx["config"]["gamma"], lr=fx["config"]["policy_lr"])
    ppo.policy.train()
    ppo.policy_old.train()
    memory = RolloutMemory()
    rollout = model.stage2_rollout(regenerate_input(fx), s2["target"], ppo, memory,
                                   generator=torch.Generator().manual_seed(s2["rollout_seed"]),
                                   crop_rng=np.random.RandomState(s2["rollout_seed"]), reward=fx["config"]["reward"])
    stored = [t.clone() for t in memory.stacked()]
    before = {k: p.detach().clone() for k, p in ppo.policy.named_parameters()}
    update = ppo.update(memory)
    params = dict(ppo.policy.named_parameters())
    return dict(fx=fx, s2=s2, rollout=rollout, stored=stored, update=update, ppo=ppo,
                grads={k: p.grad.detach().clone() for k, p in params.items()},
                deltas={k: p.detach() - before[k] for k, p in params.items()})


def step_major(t: torch.Tensor) -> torch.Tensor:
    """(B, T, ...) -> the official (T, B, ...)."""
    return t.transpose(0, 1)


def test_stage2_sampled_actions_patches_and_random_crops(stage2):
    s2, rollout = stage2["s2"], stage2["rollout"]
    assert torch.equal(step_major(rollout.actions), s2["sampled_actions"])
    torch.testing.assert_close(step_major(rollout.logprobs), s2["logprobs"], **TERMS)
    torch.testing.assert_close(step_major(rollout.action_probs), s2["actor_probs"], **PROBS)
    assert torch.equal(step_major(rollout.corners), s2["patch_coords"])
    assert torch.equal(step_major(rollout.baseline_corners), s2["random_crop_yx"])


def test_stage2_logits_confidences_rewards_and_memory(stage2):
    s2, rollout = stage2["s2"], stage2["rollout"]
    torch.testing.assert_close(step_major(rollout.step_logits), s2["logits"], atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(step_major(rollout.baseline_logits), s2["baseline_logits"], atol=1e-3, rtol=1e-3)
    # the confidences and rewards are about 5e-3 and 1e-3: measured within 7e-8 (2 threads: 2.4e-8)
    torch.testing.assert_close(step_major(rollout.confidence), s2["confidence"], atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(step_major(rollout.baseline_confidence), s2["baseline_confidence"], atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(step_major(rollout.rewards), s2["rewards"], atol=1e-6, rtol=1e-4)
    states, actions, logprobs, rewards = stage2["stored"]
    torch.testing.assert_close(states.double().sum(dim=(2, 3, 4)), s2["memory_states_sum"], atol=0.0, rtol=1e-5)
    assert torch.equal(actions, s2["sampled_actions"])
    torch.testing.assert_close(logprobs, s2["logprobs"], **TERMS)
    torch.testing.assert_close(rewards, step_major(rollout.rewards), **EXACT)


def test_stage2_update(stage2):
    s2, update, grads, deltas = stage2["s2"], stage2["update"], stage2["grads"], stage2["deltas"]
    recorded = s2["ppo_update"]
    # the returns inherit the rewards' noise; normalised by their std (about 1e-3) it grows to about 5e-5
    torch.testing.assert_close(update.discounted_returns, recorded["discounted_returns"], atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(update.normalized_returns, recorded["normalized_returns"], **NORMALISED)
    torch.testing.assert_close(update.terms.advantages, recorded["advantages"], **NORMALISED)
    torch.testing.assert_close(stage2["stored"][2], recorded["old_logprobs"], **TERMS)
    for name in TERM_NAMES:
        tol = NORMALISED if name in ("surr1", "surr2", "loss") else TERMS  # these carry the advantages' noise
        torch.testing.assert_close(getattr(update.terms, name).detach(), recorded[name], **tol,
                                   msg=lambda m: f"{name}: {m}")
    assert update.loss_mean == pytest.approx(recorded["loss_mean"], rel=1e-4, abs=1e-4)
    lr = stage2["ppo"].optimizer.param_groups[0]["lr"]
    stored = {k[len("grad."):] for k in recorded if k.startswith("grad.")}
    assert stored, "the fixture stores no full gradient"
    for key in stored:
        torch.testing.assert_close(grads[key], recorded["grad." + key], **GRADS, msg=lambda m: f"{key}: {m}")
    assert_adam_deltas({k: deltas[k] for k in stored}, grads, {k: recorded["delta." + k] for k in stored}, lr)
    assert sorted(recorded["grad_absmax"]) == sorted(grads)
    for key, grad in grads.items():
        assert grad.abs().max().item() == pytest.approx(recorded["grad_absmax"][key], rel=1e-4, abs=1e-6), key
        assert deltas[key].abs().max().item() == pytest.approx(recorded["param_delta_absmax"][key], abs=1e-7), key
        # the sum of +-lr steps: the signs of entries with a tiny gradient are noise
        tiny = int((grad.abs() <= 1e-5).sum())
        assert abs(deltas[key].double().sum().item() - recorded["param_delta_sum"][key]) <= 2 * lr * tiny + 1e-5, key
    old, new = stage2["ppo"].policy_old.state_dict(), stage2["ppo"].policy.state_dict()
    assert all(torch.equal(old[k], new[k]) for k in new) and recorded["policy_old_equals_policy_after"]


# --------------------------------------------------------------------------------------------------
# The stage-2 iteration of the parity fixtures (Something-Something form)
# --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module", params=fixture_params("parity_*.pt", "v1"))
def stage2_sth(request, tmp_path_factory):
    path = require_fixture(request.param)
    fx = torch.load(path, weights_only=True)
    if fx["tree"] != STH_TREE:
        pytest.skip(f"{path.name} is the ActivityNet form's fixture: the test_stage2_* tests above replay it")
    cfg = fx["config"]
    if cfg["video_div"] != 1:
        pytest.skip(f"{path.name} has video_div {cfg['video_div']}: only one policy step per video is built")
    torch.set_num_threads(fx.get("num_threads", 1))
    model = sth_model(cfg)
    ckpt_path, _ = fixture_checkpoint(path, fx, tmp_path_factory.mktemp("v1_sth_stage2"))
    load_checkpoint(str(ckpt_path), model)
    model.eval()
    g = torch.Generator().manual_seed(fx["input_seed"])  # the glance frames first, then the focus frames
    glance = torch.randn(fx["input_checksum_glancer"]["shape"], generator=g)
    video = torch.randn(fx["input_checksum_focuser"]["shape"], generator=g)
    s2 = fx["stage2_iteration"]
    ppo = PPO(model.policy.spatial, gamma=cfg["gamma"], lr=cfg["policy_lr"])
    ppo.policy.train()
    ppo.policy_old.train()
    memory = RolloutMemory()
    episode = model.stage2_rollout(video, glance, s2["target"], ppo, memory,
                                   generator=torch.Generator().manual_seed(s2["rollout_seed"]))
    acting_bn1d = ppo.policy_old.state_encoder[5].running_mean.clone()
    stored = [t.clone() for t in memory.stacked()]
    # The update from the recorded rewards: with one step of B = 2 videos the returns are normalised by the
    # std of two rewards (4e-5 apart here), which magnifies their float noise (3e-7) about 2e4 times.
    memory.rewards = list(s2["rewards"].unbind(0))
    before = {k: p.detach().clone() for k, p in ppo.policy.named_parameters()}
    update = ppo.update(memory)
    params = dict(ppo.policy.named_parameters())
    return dict(s2=s2, episode=episode, stored=stored, update=update, ppo=ppo, acting_bn1d=acting_bn1d,
                grads={k: p.grad.detach().clone() for k, p in params.items()},
                deltas={k: p.detach() - before[k] for k, p in params.items()})


def test_stage2_sth_act_boxes_rewards_and_memory(stage2_sth):
    s2, episode = stage2_sth["s2"], stage2_sth["episode"]
    sampled = episode.sampled
    torch.testing.assert_close(sampled.raw[None], s2["mvn_sample_raw"], **PROBS)
    torch.testing.assert_close(sampled.actor_output[None], s2["action_mean"], **PROBS)
    torch.testing.assert_close(sampled.actions[None], s2["sampled_actions_clamped"], **PROBS)
    torch.testing.assert_close(episode.positions, sampled.actions, **EXACT)
    torch.testing.assert_close(sampled.logprobs[None], s2["logprobs"], **TERMS)
    assert torch.equal(episode.corners[None], s2["patch_coords"])
    assert torch.equal(episode.baseline_corners[None], s2["baseline_patch_coords"])
    torch.testing.assert_close(episode.prediction[None], s2["pred"], atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(episode.baseline_prediction[None], s2["baseline_logit"], atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(episode.rewards[None], s2["rewards"], atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(episode.rewards, episode.confidence - episode.baseline_confidence, **EXACT)
    states, actions, logprobs, rewards = stage2_sth["stored"]
    torch.testing.assert_close(states.double().sum(dim=(2, 3, 4)), s2["memory_states_sum"], atol=0.0, rtol=1e-5)
    torch.testing.assert_close(actions, s2["sampled_actions_clamped"], **PROBS)
    # the acting copy ran in training mode: its BatchNorm1d took the B videos' statistics
    torch.testing.assert_close(stage2_sth["acting_bn1d"], s2["policy_old_bn1d_running_mean_after_act"], atol=1e-5,
                               rtol=1e-4)


def test_stage2_sth_update(stage2_sth):
    s2, update, grads, deltas = stage2_sth["s2"], stage2_sth["update"], stage2_sth["grads"], stage2_sth["deltas"]
    recorded = s2["ppo_update"]
    torch.testing.assert_close(update.normalized_returns, recorded["normalized_returns"], **NORMALISED)
    torch.testing.assert_close(update.terms.advantages, recorded["advantages"], **NORMALISED)
    for name in TERM_NAMES:
        torch.testing.assert_close(getattr(update.terms, name).detach(), recorded[name], **NORMALISED,
                                   msg=lambda m: f"{name}: {m}")
    policy = stage2_sth["ppo"].policy
    noisy_biases, _ = noise_gradient_keys(policy)
    lr = stage2_sth["ppo"].optimizer.param_groups[0]["lr"]
    stored = {k[len("grad."):] for k in recorded if k.startswith("grad.")} - noisy_biases
    assert stored, "the fixture stores no full gradient"
    for key in stored:
        # the encoder's BatchNorms see only B videos: the README's rtol 1e-2 there
        tol = dict(atol=1e-5, rtol=1e-2) if key.startswith("state_encoder.") else GRADS
        torch.testing.assert_close(grads[key], recorded["grad." + key], **tol, msg=lambda m: f"{key}: {m}")
    assert_adam_deltas({k: deltas[k] for k in stored}, grads, {k: recorded["delta." + k] for k in stored}, lr)
    after = policy.state_dict()
    for key in (k[len("after."):] for k in recorded if k.startswith("after.")):
        torch.testing.assert_close(after[key].double(), recorded["after." + key].double(), atol=1e-5, rtol=1e-4,
                                   msg=lambda m: f"{key}: {m}")
    old = stage2_sth["ppo"].policy_old.state_dict()
    assert all(torch.equal(old[k], after[k]) for k in after) and recorded["policy_old_equals_policy_after"]


# --------------------------------------------------------------------------------------------------
# Properties (any sizes and seeds, no fixture)
# --------------------------------------------------------------------------------------------------
def random_rollout(policy, ppo: PPO, steps: int, batch: int, seed: int, channels: int = 6, side: int = 3):
    """A memory filled by ``ppo.act`` on random maps, with random rewards."""
    g = torch.Generator().manual_seed(seed)
    memory = RolloutMemory()
    for t in range(steps):
        ppo.act(torch.rand(batch, channels, side, side, generator=g) * 3, memory, restart=(t == 0), generator=g)
        memory.add_reward(torch.randn(batch, generator=g) * 0.1)
    return memory


@pytest.mark.parametrize("steps, batch, gamma, seed", [(1, 3, 0.7, 0), (5, 2, 0.7, 1), (9, 4, 0.95, 2), (4, 1, 0.0, 3)])
def test_returns_are_the_discounted_sum_of_the_later_rewards(steps, batch, gamma, seed):
    rewards = torch.randn(steps, batch, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    expected = torch.zeros_like(rewards)
    for t in range(steps):
        for b in range(batch):
            expected[t, b] = sum(gamma ** (k - t) * rewards[k, b].item() for k in range(t, steps))
    torch.testing.assert_close(discounted_returns(rewards, gamma), expected, atol=1e-12, rtol=1e-12)
    if steps * batch > 1:
        normalised = normalize_returns(expected)
        torch.testing.assert_close(normalised, (expected - expected.mean()) / (expected.std(unbiased=True) + 1e-5))


def test_clipped_surrogate_at_ratio_one_and_outside_the_clip_range():
    g = torch.Generator().manual_seed(5)
    values, entropy = torch.randn(3, 4, generator=g), torch.rand(3, 4, generator=g)
    returns = torch.randn(3, 4, generator=g)
    advantages = returns - values
    logprobs = torch.randn(3, 4, generator=g) - 1
    mse = ((values - returns) ** 2).mean()
    # ratio 1: both surrogates are the advantage
    terms = ppo_terms(logprobs, values, entropy, logprobs.clone(), returns, eps_clip=0.2)
    torch.testing.assert_close(terms.ratios, torch.ones(3, 4))
    torch.testing.assert_close(terms.loss, -advantages + 0.5 * mse - 0.01 * entropy)
    # ratios 2 and 0.5 (outside [0.8, 1.2]): min(r A, clip(r) A) per sign of A
    for ratio, clipped in ((2.0, 1.2), (0.5, 0.8)):
        terms = ppo_terms(logprobs + torch.log(torch.tensor(ratio)), values, entropy, logprobs, returns, eps_clip=0.2)
        expected = torch.minimum(ratio * advantages, clipped * advantages)
        torch.testing.assert_close(terms.surr2, clipped * advantages)
        torch.testing.assert_close(terms.loss, -expected + 0.5 * mse - 0.01 * entropy)
        # a positive advantage is capped at 1.2 A, a negative one at 0.8 A: the gradient stops where the clip acts
        chosen = torch.where(advantages > 0, torch.full_like(advantages, min(ratio, clipped)),
                             torch.full_like(advantages, max(ratio, clipped)))
        torch.testing.assert_close(-expected, -chosen * advantages)


@pytest.mark.parametrize("kind", ["grid", "gaussian"])
def test_policy_gradient_part_is_minus_advantage_times_grad_log_pi(kind):
    """One epoch from the acting weights (no BatchNorm, so the ratio is 1): the gradient of the loss without its
    value and entropy terms is -mean(A * grad log pi), A the normalised return minus the (detached) value."""
    torch.manual_seed(3)
    policy = GridPatchPolicy(6, 3, 8, 16) if kind == "grid" else GaussianPatchPolicy(6, 3, 8, 0.3, with_bn=False)
    initial = copy.deepcopy(policy)
    ppo = PPO(policy, value_coef=0.0, entropy_coef=0.0)
    memory = random_rollout(policy, ppo, steps=4, batch=3, seed=7)
    states, actions, _, rewards = memory.stacked()
    update = ppo.update(memory)
    torch.testing.assert_close(update.terms.ratios.detach(), torch.ones_like(rewards))
    evaluated = initial.evaluate(states, actions)
    advantages = normalize_returns(discounted_returns(rewards, ppo.gamma)) - evaluated.state_values.detach()
    (-(advantages * evaluated.logprobs).mean()).backward()
    for (key, p), ref in zip(policy.named_parameters(), initial.parameters()):
        expected = ref.grad if ref.grad is not None else torch.zeros_like(p)  # the critic: only the value term
        torch.testing.assert_close(p.grad, expected, atol=1e-7, rtol=1e-5, msg=lambda m: f"{key}: {m}")
        assert torch.equal(p.detach() != ref.detach(), p.grad != 0), f"{key}: Adam moved exactly the entries with a gradient"
    assert any(p.grad.abs().max() > 0 for p in policy.parameters())


def test_gaussian_sample_is_clamped_and_scored_at_the_clamped_action():
    torch.manual_seed(0)
    policy = GaussianPatchPolicy(6, 3, 8, action_std=0.5)
    means = torch.tensor([[0.05, 0.95], [0.5, 0.5], [0.99, 0.01]])
    sampled = policy.sample(means, torch.Generator().manual_seed(1))
    eps = torch.empty(3, 2).normal_(generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(sampled.raw, means + 0.5 * eps, **EXACT)
    torch.testing.assert_close(sampled.actions, sampled.raw.clamp(0, 1), atol=1e-7, rtol=0.0)
    expected = (-0.5 * (((sampled.actions - means) / 0.5) ** 2).sum(-1) - 2 * torch.log(torch.tensor(0.5))
                - torch.log(torch.tensor(2 * torch.pi)))
    torch.testing.assert_close(sampled.logprobs, expected)


def two_halves(memory: RolloutMemory, split: int):
    """The memories two processes would hold: videos [0, split) and [split, B) of ``memory``."""
    packed = memory.packed()
    first = {k: v[:, :split] if v is not None else None for k, v in packed.items()}
    second = {k: v[:, split:] if v is not None else None for k, v in packed.items()}
    return RolloutMemory.from_packed(first), RolloutMemory.from_packed(second)


@pytest.mark.parametrize("kind", ["grid", "gaussian"])
def test_merging_the_halves_gives_the_whole_memory_and_the_same_update(kind):
    torch.manual_seed(4)
    policy = GridPatchPolicy(6, 3, 8, 36) if kind == "grid" else GaussianPatchPolicy(6, 3, 8)
    twin = copy.deepcopy(policy)
    ppo, ppo_twin = PPO(policy), PPO(twin)
    whole = random_rollout(policy, ppo, steps=3, batch=5, seed=9)
    first, second = two_halves(whole, 2)
    assert (first.batch_size, second.batch_size, first.num_steps) == (2, 3, 3)
    # every field of the packed layout has the same shape on every process but for the batch axis
    for name, value in first.packed().items():
        assert value.shape[:1] + value.shape[2:] == second.packed()[name].shape[:1] + second.packed()[name].shape[2:]
    merged = merge_memories([first, second])
    for name, value in whole.packed().items():
        assert torch.equal(merged.packed()[name], value), name
    a, b = ppo.update(whole), ppo_twin.update(merged)
    for name in ("logprobs", "state_values", "dist_entropy", "ratios", "advantages", "loss"):
        assert torch.equal(getattr(a.terms, name), getattr(b.terms, name)), name
    for p, q in zip(policy.parameters(), twin.parameters()):
        assert torch.equal(p, q)


def test_memories_of_different_steps_are_refused():
    torch.manual_seed(0)
    policy = GridPatchPolicy(6, 3, 8, 25)
    ppo = PPO(policy)
    with pytest.raises(ValueError, match="differ in shape") as info:
        merge_memories([random_rollout(policy, ppo, 2, 2, seed=0), random_rollout(policy, ppo, 3, 2, seed=1)])
    assert "\n" not in str(info.value)
    incomplete = random_rollout(policy, ppo, 2, 2, seed=0)
    incomplete.rewards.pop()
    with pytest.raises(ValueError, match="incomplete"):
        incomplete.stacked()


def test_a_checkpoint_in_the_middle_of_an_episode_resumes_exactly(tmp_path):
    """Memory, PPO (optimiser, acting copy with its BatchNorm statistics) and the generator saved after two of
    four steps and the second update, loaded into fresh objects: the same actions and weights as without."""
    def build():
        torch.manual_seed(2)
        policy = GaussianPatchPolicy(6, 3, 8)
        return policy, PPO(policy)

    def steps(ppo, memory, g, range_):
        for t in range_:
            ppo.act(torch.rand(4, 6, 3, 3, generator=g) * 3, memory, restart=(t == 0), generator=g)
            memory.add_reward(torch.randn(4, generator=g) * 0.1)

    policy, ppo = build()
    g, memory = torch.Generator().manual_seed(8), RolloutMemory()
    for _ in range(2):  # two full episodes, so that Adam has moments
        steps(ppo, memory, g, range(4))
        ppo.update(memory)
        memory.clear()
    steps(ppo, memory, g, range(2))
    torch.save({"memory": memory.state_dict(), "ppo": ppo.state_dict(), "policy": policy.state_dict(),
                "rng": g.get_state()}, tmp_path / "mid.pt")
    steps(ppo, memory, g, range(2, 4))
    straight = ppo.update(memory)

    saved = torch.load(tmp_path / "mid.pt", weights_only=True)
    policy2, ppo2 = build()
    policy2.load_state_dict(saved["policy"])
    ppo2.load_state_dict(saved["ppo"])
    memory2, g2 = RolloutMemory(), torch.Generator()
    memory2.load_state_dict(saved["memory"])
    g2.set_state(saved["rng"])
    steps(ppo2, memory2, g2, range(2, 4))
    resumed = ppo2.update(memory2)
    assert torch.equal(resumed.terms.loss, straight.terms.loss)
    for a, b in zip(policy.state_dict().values(), policy2.state_dict().values()):
        assert torch.equal(a, b)


# --------------------------------------------------------------------------------------------------
# The stage-2 episode on a tiny model
# --------------------------------------------------------------------------------------------------
def tiny_episode(reward: str, seed: int = 0):
    model = tiny_v1(seed=seed)
    clip = random_clip(model, batch=3, seed=seed + 1)
    target = torch.tensor([[1, -1], [4, 2], [0, -1]])
    ppo = PPO(model.policy.spatial)
    memory = RolloutMemory()
    rollout = model.stage2_rollout(clip, target, ppo, memory, generator=torch.Generator().manual_seed(seed),
                                   crop_rng=np.random.RandomState(seed), reward=reward)
    return model, clip, target, memory, rollout


def test_stage2_rewards_of_every_kind():
    model, clip, target, memory, random = tiny_episode("random")
    _, _, _, _, conf = tiny_episode("conf")
    _, _, _, _, prev = tiny_episode("prev")
    assert torch.equal(conf.actions, random.actions) and torch.equal(prev.actions, random.actions)
    torch.testing.assert_close(conf.rewards, conf.confidence, **EXACT)
    torch.testing.assert_close(prev.rewards[:, 1:], prev.confidence[:, 1:] - prev.confidence[:, :-1])
    torch.testing.assert_close(prev.rewards[:, 0], prev.confidence[:, 0])
    torch.testing.assert_close(random.rewards, random.confidence - random.baseline_confidence, **EXACT)
    assert conf.baseline_logits is None and prev.baseline_corners is None
    probs = random.step_logits.softmax(-1)
    torch.testing.assert_close(random.confidence, probs[torch.arange(3)[:, None], torch.arange(4), target[:, :1]])
    # the memory: the glance maps, the sampled positions with their log-probabilities, the rewards
    states, actions, logprobs, rewards = memory.stacked()
    assert states.shape[:2] == (4, 3) and torch.equal(actions, random.actions.t())
    torch.testing.assert_close(logprobs, random.logprobs.t(), **EXACT)
    torch.testing.assert_close(rewards, random.rewards.t(), **EXACT)
    with torch.no_grad():
        maps = model.glance(model.glance_input(model.frames(clip).flatten(0, 1)))[0].view(3, 4, *states.shape[2:])
    torch.testing.assert_close(states, maps.transpose(0, 1), **EXACT)


def test_stage2_baseline_is_one_classifier_step_after_the_policy_path():
    """Step t's baseline: the classifier over the policy's patches of frames < t and the random patch of frame t."""
    model, clip, _, _, rollout = tiny_episode("random", seed=2)
    frames = model.frames(clip)
    span = model.input_size - model.patch_size
    assert rollout.baseline_corners.min() >= 0 and rollout.baseline_corners.max() < span
    with torch.no_grad():
        glance = model.glance(model.glance_input(frames.flatten(0, 1)))[1].view(3, 4, -1)
        def focus(corners):
            return model.focus(model.crop(frames.flatten(0, 1), corners.flatten(0, 1))).view(3, 4, -1)
        policy_focus, random_focus = focus(rollout.corners), focus(rollout.baseline_corners)
        for t in range(4):
            mixed = torch.cat((policy_focus[:, :t], random_focus[:, t:t + 1]), dim=1)
            logits = model.classifier(model.classifier_input(glance[:, :t + 1], mixed))[:, -1]
            torch.testing.assert_close(rollout.baseline_logits[:, t], logits, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(rollout.step_logits, model.classifier(model.classifier_input(glance, policy_focus)),
                                   atol=1e-5, rtol=1e-5)
    assert torch.equal(rollout.corners, model.corners_of(rollout.actions))


def test_stage2_refuses_an_unknown_reward_in_one_line():
    model = tiny_v1()
    with pytest.raises(ValueError, match=r"reward must be one of \('random', 'prev', 'conf'\), got 'padding'") as info:
        model.stage2_rollout(random_clip(model), torch.tensor([0, 1]), PPO(model.policy.spatial), RolloutMemory(),
                             reward="padding")
    assert "\n" not in str(info.value)
