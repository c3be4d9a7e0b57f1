"""GFLOPs counted from the module (models.flops) against the official table (docs/official-behaviour.md, "FLOPs")."""
import json

import pytest
import torch

from models import UniAdaFocus
from models import flops
from support import fixture_params, require_fixture, tiny_model

# Official: FLOPs(k) = 16*0.299511328 + r_P*k + 1e-3*(5.246976*16 + 8.392704*k + 0.8192*16 + 1.6384*k)
#                     + [k > 0]*(0.00412992 + 0.822485376)
R_P = {96: 0.750725056, 128: 1.334601664, 160: 2.08530016, 192: 3.002820544}


def official_table(p):
    return [16 * 0.299511328 + R_P[p] * k + 1e-3 * (5.246976 * 16 + 8.392704 * k + 0.8192 * 16 + 1.6384 * k)
            + (0.00412992 + 0.822485376 if k else 0.0) for k in range(17)]


@pytest.fixture(scope="module", params=[96, 128])
def breakdown(request):
    return request.param, flops.flops_breakdown(UniAdaFocus(num_classes=200, patch_size=request.param))


def test_official_constants_are_reproduced(breakdown):
    p, b = breakdown
    stages = b.stages("official")
    assert stages[16] == pytest.approx({96: 17.89, 128: 27.23}[p], rel=0.01)
    for ours, theirs in zip(stages, official_table(p)):
        assert ours == pytest.approx(theirs, rel=0.01)
    assert stages[0] == pytest.approx(4.889240064, rel=0.01)
    if p == 128:
        assert stages[1] == pytest.approx(7.060488128, rel=0.01)


@pytest.mark.parametrize("path", fixture_params("early_exit_*.pt"))
def test_the_official_flops_table_of_each_early_exit_fixture_is_reproduced(path):
    """Each mn2_r50 early-exit fixture records the official FLOPs table of its model (class count, patch
    size; one glance stage, then one stage per focus frame)."""
    fx = torch.load(require_fixture(path), weights_only=True)
    model = UniAdaFocus(num_classes=fx["num_classes"], patch_size=fx["patch_size"],
                        num_focus_segments=fx["num_stages"] - 1)
    stages = flops.flops_breakdown(model).stages("official")
    assert len(stages) == len(fx["flops_table"]) == fx["num_stages"]
    assert all(ours == pytest.approx(theirs, rel=0.01) for ours, theirs in zip(stages, fx["flops_table"]))


def test_components_match_the_official_per_component_constants(breakdown):
    p, b = breakdown
    assert b.glance_frame == pytest.approx(0.299511328, rel=1e-3)
    assert b.focus_patch == pytest.approx(R_P[p], rel=1e-3)
    assert b.spatial_policy == pytest.approx(0.822485376, rel=1e-3)
    assert b.temporal_policy == pytest.approx(0.00412992, rel=1e-3)
    assert b.glance_exit == pytest.approx(4096 * 200 / 1e9)
    assert b.focus_exit == pytest.approx(8192 * 200 / 1e9)


def test_measured_accounting_is_close_to_the_official_and_monotone(breakdown):
    p, b = breakdown
    measured, official = b.stages("measured"), b.stages("official")
    assert all(m == pytest.approx(o, rel=0.01) for m, o in zip(measured, official))
    assert all(later > earlier for earlier, later in zip(measured, measured[1:]))


def test_class_count_frame_counts_and_patch_size_come_from_the_model():
    small = flops.flops_breakdown(UniAdaFocus(num_classes=239, num_segments=24, num_glance_segments=8,
                                              num_focus_segments=12, patch_size=144))
    assert small.glance_exit == pytest.approx(4096 * 239 / 1e9)
    assert len(small.stages()) == 13
    assert R_P[128] < small.focus_patch < R_P[160]
    assert small.stages()[0] == pytest.approx(8 * (small.glance_frame + small.glance_mlp) + small.glance_exit)
    tiny = flops.flops_breakdown(tiny_model())
    assert tiny.glance_frame < 0.03 and len(tiny.stages()) == 5


def test_counting_leaves_the_model_mode_alone():
    model = tiny_model().train()
    flops.flops_breakdown(model)
    assert model.training


def test_command_prints_the_table(capsys):
    flops.main(["--patch_size", "128", "--accounting", "official", "--json"])
    data = json.loads(capsys.readouterr().out)
    assert data["patch_sizes"]["128"]["stages"][16] == pytest.approx(27.23, rel=0.01)
    flops.main(["--patch_size", "96", "--num_focus_segments", "4", "--num_segments", "16"])
    text = capsys.readouterr().out
    assert "exit stage" in text and "P=96" in text and len([l for l in text.splitlines() if l.startswith("  4")]) == 1
