"""Uni-AdaFocus-X3D beyond the official fixtures: any configuration trains, the heads start as the
X3D clip heads, the feature-map crop follows the official rounding, and early exit saves X3D-L for
videos that leave at the glance."""
import pytest
import torch

from models import get_variant
from models.uni_adafocus_x3d import UniAdaFocusX3D, x3d_flops
from ops import build, config
from ops.early_exit import AdaptiveRunner, assign_exits, exit_scores
from support import pyth_num_classes, random_video

TINY = dict(num_classes=4, num_segments=6, num_glance_segments=4, num_focus_segments=2, patch_size=32,
            input_size=64, glance_size=32, stn_hidden_dim=8, temporal_hidden_dim=8)
TINY_FLAGS = ["--variant", "x3d", "--num_segments", "6", "--num_glance_segments", "4", "--num_focus_segments", "2",
              "--patch_size", "32", "--input_size", "64", "--glance_size", "32", "--no-pretrained"]


def tiny_x3d(**overrides):
    return UniAdaFocusX3D(**{**TINY, **overrides})


def _inputs(batch, seed=0):
    return random_video(batch=batch, frames=6, size=64, seed=seed), random_video(batch=batch, frames=4, size=64, seed=seed + 1)


def test_per_frame_heads_start_as_copies_of_the_clip_heads():
    model = tiny_x3d()
    for x3d, head in ((model.glance, model.glance_head), (model.focus, model.focus_head)):
        assert torch.equal(head[0].weight, x3d.head.lin_5.weight.flatten(1))
        assert torch.equal(head[3].weight, x3d.head.projection.weight)
        assert head[0].weight.data_ptr() != x3d.head.lin_5.weight.data_ptr()  # copied, not tied


@pytest.mark.parametrize("patch, cells", [(96, 2), (128, 3), (160, 4), (192, 4)])
def test_feature_map_crop_is_the_official_rounding(patch, cells):
    assert UniAdaFocusX3D(num_classes=5, patch_size=patch).geometry.feature_patch_size == cells


def test_the_map_crop_box_spans_its_rounded_cell_count_as_officially():
    """At scale 1 the box spans round(5 P / 224) = 3 cells (P = 128), not the image box's 2.86: a size
    action of 0.99 makes it 3 (0.99 * 128 + 96) / 128 = 5.22 cells, wider than the 5 x 5 map."""
    geometry = UniAdaFocusX3D(num_classes=5).geometry
    ramp = torch.arange(5.0).view(1, 1, 1, 5).expand(1, 1, 5, 5)  # value = column index
    crop = geometry.crop_features(ramp, torch.tensor([[0.5, 0.5, 0.99, 0.99]]))
    extent = 3 * (0.99 * 128 + 96) / 128
    x1 = 0.5 * (5 - extent)
    centres = [x1 + (i + 0.5) * extent / 3 for i in range(3)]  # sample points, pixel i covers [i, i + 1)
    torch.testing.assert_close(crop[0, 0, 1], torch.tensor([c - 0.5 for c in centres]), atol=1e-5, rtol=0)
    assert extent > 5 and x1 < 0


def test_training_forward_and_the_official_terms():
    model = tiny_x3d().train()
    video, glance = _inputs(2)
    out = model(video, generator=torch.Generator().manual_seed(0), glance=glance)
    assert out.exit_logits.shape == (2, 2, 4) and out.random_pass.prediction.shape == (2, 4)
    args = config.parse_args(TINY_FLAGS)
    objective = build.build_objective(args)
    assert objective.mc_draws == round(4 / 3)
    terms = objective(out, torch.tensor([1, 3]), generator=torch.Generator().manual_seed(1))
    assert terms.kl.item() == 0 and set(get_variant("x3d").objective_terms) == {
        "cat", "glance", "focus", "temporal", "spatial", "norm"}


def test_the_prediction_trains_only_the_clip_heads():
    model = tiny_x3d().train()
    video, glance = _inputs(2)
    out = model(video, generator=torch.Generator().manual_seed(0), glance=glance)
    torch.nn.functional.cross_entropy(out.logits, torch.tensor([0, 1])).backward()
    for x3d in (model.glance, model.focus):
        assert x3d.head.projection.weight.grad.abs().sum() > 0
        trunk = [p for name, p in x3d.named_parameters() if not name.startswith(("head.lin_5", "head.projection"))]
        assert all(p.grad is None or p.grad.abs().sum() == 0 for p in trunk)


def test_a_tiny_configuration_overfits_a_fixed_batch():
    torch.manual_seed(0)
    model = tiny_x3d(dropout=0.0).train()
    for x3d in (model.glance, model.focus):
        x3d.head.dropout.p = 0.0
    video, glance = _inputs(4, seed=3)
    target = torch.tensor([0, 1, 2, 3])
    objective = build.build_objective(config.parse_args(TINY_FLAGS + ["--norm_ratio", "0"]))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(10):  # under a quarter by step 3 or 4 over seeds 0-3
        terms = objective(model(video, generator=gen, glance=glance), target, generator=gen)
        optimizer.zero_grad()
        terms.total.backward()
        optimizer.step()
        losses.append(terms.cat.item())
    assert losses[-1] < 0.25 * losses[0], losses


def test_adaptive_runtime_skips_x3d_l_for_videos_that_leave_at_the_glance(monkeypatch):
    torch.manual_seed(0)
    model = tiny_x3d(dropout=0.0)
    video, glance = _inputs(6, seed=7)
    for bn in (m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)):
        bn.reset_running_stats()
        bn.momentum = None  # BatchNorm statistics of these videos, so that the features are far from zero
    with torch.no_grad():
        model.train()(video, glance=glance, generator=torch.Generator().manual_seed(0))
        model.eval()
        stages = model(video, glance=glance).stage_logits
    scores = exit_scores(stages, "entropy")
    ordered = scores[:, 0].sort().values
    thresholds = torch.tensor([((ordered[2] + ordered[3]) / 2).item(), -1e8], dtype=torch.float64)
    expected = assign_exits(scores, thresholds)
    assert 0 < int((expected == 0).sum()) < 6
    runner = AdaptiveRunner(model, thresholds, "entropy")
    clips = []
    forward = type(model.focus).forward
    monkeypatch.setattr(type(model.focus), "forward",  # X3D-S is an X3D too: count X3D-L's clips only
                        lambda self, x: (self is model.focus and clips.append(x.shape[0])) or forward(self, x))
    result = runner.run(video, glance=glance)
    assert torch.equal(result.exit_stage, expected)
    torch.testing.assert_close(result.logits, stages[torch.arange(6), expected], atol=1e-5, rtol=1e-5)
    assert clips == [int((expected == 1).sum())]  # X3D-L saw the videos that stayed, one clip each


def test_flops_follow_the_configuration():
    small, large = (x3d_flops(tiny_x3d(num_focus_segments=n, num_segments=6)).stages() for n in (2, 4))
    assert small[0] == pytest.approx(large[0]) and large[1] > small[1] > small[0]


def test_pretrained_initialisation_from_slowfast_files(x3d_pyth):
    """A synthetic .pyth pair (the fixtures' generator, --pyth) initialises both encoders with every key,
    and the per-frame heads start as copies of the loaded clip heads; without the files, one clear error."""
    from models.x3d import X3DWeightsError, read_x3d_pyth

    small, large = x3d_pyth / "x3d_s.pyth", x3d_pyth / "x3d_l.pyth"
    model = UniAdaFocusX3D(num_classes=pyth_num_classes(x3d_pyth), pretrained=True, glance_weights=str(small),
                           focus_weights=str(large))
    for x3d, head, path in ((model.glance, model.glance_head, small), (model.focus, model.focus_head, large)):
        state = read_x3d_pyth(str(path))
        assert all(torch.equal(x3d.state_dict()[k], v) for k, v in state.items())
        assert torch.equal(head[3].weight, state["head.projection.weight"])
    with pytest.raises(X3DWeightsError, match="--glance_weights x3d_s.pyth --focus_weights x3d_l.pyth"):
        UniAdaFocusX3D(num_classes=400, pretrained=True)
