"""The inference copy chooses the same frames and patches as the plain model, bit for bit.

CPU evaluation runs ``models.inference.prepare_for_inference`` by default, and its numbers are compared
with the paper's: everything that feeds the policy's decisions (the glance encoder, the policy, the
frame selection) must be computed exactly as the plain model computes it, so that the frame indices,
the frame weights and the patch actions are ``torch.equal`` to the plain model's; only the focus side
(downstream of every decision) may differ, to float rounding.

Checked on every parity fixture of the reference folders (``parity_*.pt`` of the top folder for
``mn2_r50``, of ``tsm/`` and ``x3d/``; one test per fixture file, built with the parity tests' own
helpers), where the copy's prediction must also stay within the parity tolerances of the official
numbers, and on small random-weight configurations of every variant, with the focus encoder's calls
chunked and under autocast (``--eval_amp``).
"""
from __future__ import annotations

import pytest
import torch

import test_parity
import test_parity_tsm
import test_parity_x3d
from models.inference import prepare_for_inference
from support import require_fixture
from test_inference import VARIANTS, inputs, tiny

#: Focus features and logits of the copy against the plain model's: folding and channels-last reorder
#: float32 sums in the focus encoder alone (measured here: <= 1e-5 on the fixtures and tiny models).
SAME = dict(atol=1e-4, rtol=1e-4)

#: The parity tests of each variant: their fixtures (``fixtures()``, one parameter per ``parity_*.pt``)
#: and their helpers, which build the model with the fixture's synthetic checkpoint and its inputs.
PARITY_TESTS = {"mn2_r50": test_parity, "tsm": test_parity_tsm, "x3d": test_parity_x3d}


def _decisions(out):
    """The policy's decisions in a forward output: frame indices, frame weights and patch actions."""
    actions = out.glance_actions if hasattr(out, "glance_actions") else out.actions
    return {"focus_indices": out.focus_indices, "glance_indices": out.glance_indices,
            "frame_weights": out.frame_weights, "selection_weights": out.selection_weights,
            "actions": actions, "focus_actions": out.focus_actions, "patch_boxes": out.patch_boxes}


def assert_same_decisions(plain, fast):
    for name, value in _decisions(plain).items():
        assert torch.equal(_decisions(fast)[name], value), f"{name} differs from the plain model's"
    assert torch.equal(fast.glance_features, plain.glance_features)


# ------------------------------------------------------------------------------------------------
# every parity fixture of the reference folders
# ------------------------------------------------------------------------------------------------
def _fixture_params():
    """(variant, fixture parameter) for every parity fixture of every variant; the test id is the file name."""
    return [pytest.param(variant, *param.values, id=param.id)
            for variant, module in PARITY_TESTS.items() for param in module.fixtures()]


def _mn2_r50_run(path, tmp_path_factory):
    """(model, video, forward keywords, the fixture's prediction, its parity tolerance)."""
    fx, model, images, _, _ = test_parity.load_fixture(path, tmp_path_factory.mktemp("mn2_r50"))
    return model, images, {}, fx["outputs"]["cat_pred"], test_parity.LOGITS


def _tsm_run(path, tmp_path_factory):
    fx, model, glance, video, _, _ = test_parity_tsm.load_fixture(path, tmp_path_factory.mktemp("tsm"))
    return model, video, {"glance": glance}, fx["outputs"]["prediction"], test_parity_tsm.FOCUS_END_TO_END


def _x3d_run(path, tmp_path_factory):
    fx, model, glance, video, _, _, _, three_crop = test_parity_x3d._run(path, tmp_path_factory)
    expected = test_parity_x3d._per_video(fx, "final_logits", three_crop)
    return model, video, {"glance": glance}, expected, test_parity_x3d.LOGITS


FIXTURE_RUNS = {"mn2_r50": _mn2_r50_run, "tsm": _tsm_run, "x3d": _x3d_run}


@pytest.mark.parametrize("variant, fixture", _fixture_params())
def test_parity_fixture_decisions_are_the_plain_models(variant, fixture, tmp_path_factory):
    model, video, extra, expected, tolerance = FIXTURE_RUNS[variant](require_fixture(fixture), tmp_path_factory)
    fast = prepare_for_inference(model)
    with torch.no_grad():
        plain, copied = model(video, **extra), fast(video, **extra)
    assert_same_decisions(plain, copied)
    torch.testing.assert_close(copied.focus_features, plain.focus_features, **SAME)
    torch.testing.assert_close(copied.exit_logits, plain.exit_logits, **SAME)
    torch.testing.assert_close(copied.logits, expected, **tolerance)  # the official prediction


# ------------------------------------------------------------------------------------------------
# small random-weight models of every variant
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", VARIANTS)
def test_random_weights_decisions_are_the_plain_models(variant):
    """Batches of 1 and 5 videos, the focus encoder chunked (3 images per call: whole clips where the
    variant needs them) while the glance sees the whole batch, as in the plain model."""
    model = tiny(variant, seed=2)
    fast = prepare_for_inference(model, focus_chunk=3)
    for batch in (1, 5):
        video, extra = inputs(model, batch, seed=10 + batch)
        with torch.no_grad():
            plain, copied = model(video, **extra), fast(video, **extra)
        assert_same_decisions(plain, copied)
        torch.testing.assert_close(copied.exit_logits, plain.exit_logits, **SAME)


@pytest.mark.parametrize("variant", VARIANTS)
def test_decisions_are_the_plain_models_under_autocast(variant):
    """--eval_amp: the glance runs under the same bfloat16 autocast in both, so the decisions still agree."""
    model = tiny(variant, seed=3)
    fast = prepare_for_inference(model)
    video, extra = inputs(model, 2, seed=7)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        plain, copied = model(video, **extra), fast(video, **extra)
    assert_same_decisions(plain, copied)
    scale = plain.exit_logits.abs().max()  # the focus side in bfloat16, folded or not: ~1 % of the logits
    assert (copied.exit_logits - plain.exit_logits).abs().max() <= 0.05 * scale
