"""Properties of the training objective (ops.objective)."""
import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from ops.objective import (UniAdaFocusObjective, default_mc_draws, kl_to_uniform, patch_size_regulariser,
                           step_cross_entropy, temporal_mc_logits, temporal_mc_paper_loss)
from reference_math import temporal_mc_exact_paper_loss
from support import random_video, tiny_model


def _case(seed=0, b=3, g=5, c=4):
    gen = torch.Generator().manual_seed(seed)
    scores = torch.randn(b, g, generator=gen, dtype=torch.float64)
    losses = torch.rand(b, g, generator=gen, dtype=torch.float64) * 3
    logits = torch.randn(b, g, c, generator=gen, dtype=torch.float64)
    return scores, losses, logits


def test_paper_form_converges_to_the_exact_expectation():
    """5 frames, 2 removal steps: the Monte-Carlo estimate of Eq. 21 approaches the enumerated value."""
    scores, losses, _ = _case()
    weights = torch.softmax(scores, dim=1)
    exact = temporal_mc_exact_paper_loss(weights, losses, num_draws=2)
    gen = torch.Generator().manual_seed(1)
    errors = []
    for m in (64, 200_000):
        estimate = temporal_mc_paper_loss(weights, losses, num_draws=2, num_samples=m, generator=gen)
        errors.append(abs(estimate.item() - exact.item()))
    assert errors[1] < 2e-3
    assert errors[1] < errors[0]


def test_paper_form_differentiates_the_frame_distribution():
    """With no frame removed the paper form is sum_j w_j L_j; its gradient is the exact one.

    (With removals, Eq. 21 differentiates the conditional distributions but not the probability of
    the removed prefixes, so its gradient is not that of the exact expectation; that is the paper's
    estimator, not a defect of this implementation.)
    """
    scores, losses, _ = _case(seed=2)
    s1 = scores.clone().requires_grad_()
    temporal_mc_exact_paper_loss(torch.softmax(s1, 1), losses, num_draws=1).backward()
    s2 = scores.clone().requires_grad_()
    temporal_mc_paper_loss(torch.softmax(s2, 1), losses, 1, num_samples=7,
                           generator=torch.Generator().manual_seed(3)).backward()
    torch.testing.assert_close(s2.grad, s1.grad)


def test_exact_expectation_matches_a_hand_computed_case():
    # 3 frames, 2 steps: step 0 keeps all; step 1 removes one frame drawn with probability w_j.
    w = torch.tensor([[0.5, 0.3, 0.2]], dtype=torch.float64)
    loss = torch.tensor([[1.0, 2.0, 4.0]], dtype=torch.float64)
    step0 = (w * loss).sum()
    step1 = sum(w[0, j] * sum(w[0, k] * loss[0, k] for k in range(3) if k != j) / (1 - w[0, j]) for j in range(3))
    expected = (step0 + step1) / 2
    assert temporal_mc_exact_paper_loss(w, loss, 2).item() == pytest.approx(expected.item())


def test_official_form_converges_to_its_expectation():
    """Official form: expectation of weighted logits with i frames removed, averaged over i."""
    scores, _, logits = _case(seed=4)
    weights = torch.softmax(scores, dim=1)
    exact = torch.stack([temporal_mc_exact_paper_loss(weights, logits[:, :, k], 2) for k in range(logits.shape[2])])
    # exact_* averages over the batch; compare the batch means class by class
    estimate = temporal_mc_logits(weights, logits, num_draws=2, num_samples=100_000,
                                  generator=torch.Generator().manual_seed(5)).mean(dim=0)
    torch.testing.assert_close(estimate, exact, atol=5e-3, rtol=0)


def test_official_form_detaches_the_normaliser():
    """Without removals the official term is sum_j w_j logit_j / stopgrad(sum w): d/dw_j = logit_j."""
    _, _, logits = _case(seed=6)
    w = torch.softmax(torch.randn(3, 5, dtype=torch.float64), 1).requires_grad_()
    out = temporal_mc_logits(w, logits, num_draws=1, num_samples=3)
    torch.testing.assert_close(out, torch.einsum("bg,bgc->bc", w, logits))
    out[:, 1].sum().backward()
    torch.testing.assert_close(w.grad, logits[:, :, 1])


def test_mc_draws_follow_appendix_c():
    assert default_mc_draws(48, 16, 16) == 5
    assert default_mc_draws(24, 8, 12) == 4
    assert default_mc_draws(48, 4, 4) == 1


def test_kl_uses_the_official_reference_size_by_default():
    w = torch.softmax(torch.randn(4, 6, dtype=torch.float64), 1)
    entropy_term = (w * w.log()).sum(1).mean()
    assert kl_to_uniform(w, reference_size=8).item() == pytest.approx(entropy_term.item() + math.log(8))
    assert kl_to_uniform(w).item() == pytest.approx(entropy_term.item() + math.log(6))
    assert kl_to_uniform(torch.full((2, 6), 1 / 6)).item() == pytest.approx(0.0, abs=1e-7)


def test_patch_size_regulariser_vanishes_for_full_frames():
    a = torch.rand(2, 16, 4)
    a[..., 2:] = 1.0
    assert patch_size_regulariser(a).item() == 0.0
    a[..., 2:] = 0.5
    assert patch_size_regulariser(a).item() == pytest.approx(0.25)


@pytest.fixture(scope="module")
def train_forward():
    torch.manual_seed(0)
    model = tiny_model().train()
    video = random_video(batch=4, frames=8, size=64)
    target = torch.tensor([0, 1, 2, 3])
    out = model(video, generator=torch.Generator().manual_seed(0))
    return model, out, target


def test_total_is_the_official_weighted_sum(train_forward):
    model, out, target = train_forward
    objective = UniAdaFocusObjective(8, 4, 4, kl_ratio=0.5, norm_ratio=0.75)
    terms = objective(out, target, generator=torch.Generator().manual_seed(1))
    parts = terms.cat + terms.glance + terms.focus + terms.temporal + terms.spatial + terms.kl + terms.norm
    torch.testing.assert_close(terms.total, parts)
    ce = F.cross_entropy
    c = model.num_classes
    cat = 0.5 * (ce(out.exit_logits.reshape(-1, c), target.repeat_interleave(8))
                 + ce(out.random_pass.exit_logits.reshape(-1, c), target.repeat_interleave(8)))
    torch.testing.assert_close(terms.cat, cat)
    torch.testing.assert_close(terms.glance, ce(out.glance_logits.reshape(-1, c), target.repeat_interleave(4)))
    torch.testing.assert_close(terms.spatial, ce(out.spatial_logits, target))
    torch.testing.assert_close(terms.norm, 0.75 * ((out.glance_actions[..., 2:] - 1) ** 2).mean())
    torch.testing.assert_close(terms.kl, 0.5 * kl_to_uniform(out.frame_weights, 4))


def test_paper_forms_are_selectable(train_forward):
    model, out, target = train_forward
    paper = UniAdaFocusObjective(8, 4, 4, temporal_form="paper", spatial_form="paper")
    terms = paper(out, target, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(terms.spatial, step_cross_entropy(out.spatial_frame_logits, target))
    assert torch.isfinite(terms.temporal)
    with pytest.raises(ValueError, match="temporal_form"):
        UniAdaFocusObjective(8, 4, 4, temporal_form="nope")


def test_video_glance_objective_is_the_cross_entropy_of_the_frames_mean_logits(train_forward):
    model, out, target = train_forward
    video = UniAdaFocusObjective(8, 4, 4, glance_form="video")
    terms = video(out, target, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(terms.glance, F.cross_entropy(out.glance_logits.mean(dim=1), target))
    official = UniAdaFocusObjective(8, 4, 4)(out, target, generator=torch.Generator().manual_seed(1))
    for name in ("cat", "focus", "temporal", "spatial", "kl", "norm"):  # the other terms do not change
        torch.testing.assert_close(getattr(terms, name), getattr(official, name))
    with pytest.raises(ValueError, match="glance_form"):
        UniAdaFocusObjective(8, 4, 4, glance_form="nope")


def test_video_glance_objective_does_not_ask_frames_without_the_class_for_a_label(train_forward):
    """One frame of four shows the class (a growing logit); the other three carry no evidence (zero logits).
    Per frame, those three keep costing log C each; per video, the loss vanishes as the evidence grows."""
    model, out, target = train_forward
    c = model.num_classes
    losses = {}
    for form in ("frames", "video"):
        objective = UniAdaFocusObjective(8, 4, 4, terms=("glance",), glance_form=form)
        for evidence in (10.0, 100.0):
            logits = torch.zeros(len(target), 4, c)
            logits[torch.arange(len(target)), 1, target] = evidence
            terms = objective(dataclasses.replace(out, glance_logits=logits), target)
            losses[form, evidence] = terms.glance.item()
    assert losses["frames", 100.0] == pytest.approx(0.75 * math.log(c), rel=1e-3)
    assert losses["video", 100.0] < 1e-6 < losses["video", 10.0]


def test_objective_rejects_an_evaluation_forward():
    model = tiny_model().eval()
    with torch.no_grad():
        out = model(random_video())
    with pytest.raises(ValueError, match="training-mode"):
        UniAdaFocusObjective(8, 4, 4)(out, torch.tensor([0, 1]))
