"""Patch transformations (models.patch_transforms; the paper's Table 11) and their wiring into the crop,
the spatial policy and the mn2_r50 model."""
import math

import pytest
import torch
import yaml

from models import get_variant
from models.flops import flops_breakdown
from models.patch_transforms import TRANSFORM_NAMES, TRANSFORMS, get_transform, tps_control_points
from models.patches import PatchGeometry, crop_patches, sample_boxes
from ops import config
from ops.objective import UniAdaFocusObjective
from support import REPO, random_video, tiny_model

WARPED = [name for name in TRANSFORM_NAMES if name != "none"]


def _smooth_frames(n, channels, size, seed, dtype=torch.float64):
    """Frames of a few low-frequency sinusoids per channel (smooth under bilinear sampling)."""
    g = torch.Generator().manual_seed(seed)
    coords = (torch.arange(size, dtype=dtype) + 0.5) / size
    y, x = coords.view(-1, 1), coords.view(1, -1)
    freq = 1 + 2 * torch.rand(n, channels, 4, generator=g, dtype=dtype)
    phase = 2 * math.pi * torch.rand(n, channels, 2, generator=g, dtype=dtype)
    f = freq.view(n, channels, 4, 1, 1)
    return (torch.sin(f[:, :, 0] * x * 3 + f[:, :, 1] * y * 2 + phase[..., 0].view(n, channels, 1, 1))
            + torch.cos(f[:, :, 2] * y * 3 - f[:, :, 3] * x + phase[..., 1].view(n, channels, 1, 1)))


def _box_actions(n, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return 0.1 + 0.8 * torch.rand(n, 4, generator=g, dtype=dtype)


def _with(box, params):
    return torch.cat((box, params), dim=1)


def test_registry_counts_and_identity_parameters():
    assert TRANSFORM_NAMES == ("none", "rotation", "affine", "homography", "tps")
    counts = {name: t.num_params for name, t in TRANSFORMS.items()}
    assert counts == {"none": 0, "rotation": 1, "affine": 6, "homography": 8, "tps": 18}
    for t in TRANSFORMS.values():
        assert torch.equal(t.identity(3, torch.float64), torch.zeros(3, t.num_params, dtype=torch.float64))
    with pytest.raises(ValueError, match="unknown patch transform 'shear'"):
        get_transform("shear")
    with pytest.raises(ValueError, match=r"affine takes \(2, 6\) parameters"):
        get_transform("affine").grid(*torch.ones(4, 2), torch.zeros(2, 5), 3, 3, 8, 8)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", TRANSFORM_NAMES)
def test_identity_parameters_give_exactly_the_plain_box_crop(name, dtype):
    frames = torch.randn(5, 3, 40, 36, generator=torch.Generator().manual_seed(0), dtype=dtype)
    box = _box_actions(5, 1, dtype)
    identity = _with(box, get_transform(name).identity(5, dtype))
    for output_size in (7, (9, 5)):
        plain = crop_patches(frames, box, output_size, 16, 40)
        assert torch.equal(crop_patches(frames, identity, output_size, 16, 40, transform=name), plain)
    geometry = PatchGeometry(16, 40, 5, transform=name)
    maps = torch.randn(5, 6, 5, 5, generator=torch.Generator().manual_seed(2), dtype=dtype)
    assert torch.equal(geometry.crop_features(maps, identity), PatchGeometry(16, 40, 5).crop_features(maps, box))
    assert torch.equal(geometry.boxes(identity), PatchGeometry(16, 40, 5).boxes(box))


def test_actions_of_the_wrong_width_are_refused_in_one_line():
    frames = torch.zeros(2, 3, 16, 16)
    with pytest.raises(ValueError, match=r"actions must be \(2, 10\), got \(2, 4\) \(4 box terms and 6 affine"):
        crop_patches(frames, torch.zeros(2, 4), 8, 8, 16, transform="affine")
    with pytest.raises(ValueError, match="unknown patch transform 'warp'"):
        PatchGeometry(8, 16, 2, transform="warp")


def _random_params(name, n, seed, scale=0.15):
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(n, get_transform(name).num_params, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("name", WARPED)
def test_gradient_wrt_box_and_parameters_matches_finite_differences(name):
    frames = _smooth_frames(2, 2, 32, seed=3)
    actions = _with(_box_actions(2, 4), _random_params(name, 2, 5)).requires_grad_()
    assert torch.autograd.gradcheck(lambda a: crop_patches(frames, a, 5, 16, 32, transform=name), (actions,),
                                    eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("name", WARPED)
def test_gradient_wrt_frames_matches_finite_differences(name):
    frames = torch.rand(2, 1, 10, 10, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    actions = _with(_box_actions(2, 7), _random_params(name, 2, 8))
    assert torch.autograd.gradcheck(lambda f: crop_patches(f, actions, 4, 6, 10, transform=name),
                                    (frames.requires_grad_(),))


def test_grid_is_differentiable_in_the_box_terms_and_parameters():
    for name in WARPED:
        t = get_transform(name)
        terms = tuple(torch.tensor([v], dtype=torch.float64, requires_grad=True) for v in (3.0, 5.0, 17.0, 11.0))
        params = _random_params(name, 1, 9).requires_grad_()
        assert torch.autograd.gradcheck(lambda *a: t.grid(*a, 4, 3, 32, 30), (*terms, params))


def _pixel_aligned_square():
    """An 8 x 8 box at pixels 2..9 of 16 x 16 frames (P = 8 of 16-pixel input): its 8 x 8 samples sit on
    pixel centres, so the plain crop is exactly those pixels."""
    frames = torch.randn(1, 2, 16, 16, generator=torch.Generator().manual_seed(10), dtype=torch.float64)
    # extent = 16 (96 + 128 a) / 224 = 8 at a = 1/8; corner a * (16 - 8) = 2 at a = 1/4
    box = torch.tensor([[0.25, 0.25, 0.125, 0.125]], dtype=torch.float64)
    plain = crop_patches(frames, box, 8, 8, 16)
    torch.testing.assert_close(plain, frames[..., 2:10, 2:10], rtol=0, atol=1e-12)
    return frames, box, plain


@pytest.mark.parametrize("angle,turns", [(math.pi / 2, 1), (-math.pi / 2, -1), (math.pi, 2)])
def test_rotating_a_square_box_by_quarter_turns_is_rot90_of_the_plain_crop(angle, turns):
    frames, box, plain = _pixel_aligned_square()
    rotated = crop_patches(frames, _with(box, torch.tensor([[angle]], dtype=torch.float64)), 8, 8, 16,
                           transform="rotation")
    torch.testing.assert_close(rotated, torch.rot90(plain, turns, dims=(-2, -1)), rtol=0, atol=1e-12)


def test_rotation_is_rigid_in_pixels_for_a_non_square_box():
    # A box twice as wide as tall turned a quarter covers the region twice as tall as wide about the same centre.
    frames = _smooth_frames(1, 1, 64, seed=11)
    box = torch.tensor([[0.5, 0.5, 0.0, 1.0]], dtype=torch.float64)  # extent 64*96/224 tall, 64 wide, centred
    ext_h, ext_w = 64 * 96 / 224, 64.0
    turned = crop_patches(frames, _with(box, torch.tensor([[math.pi / 2]], dtype=torch.float64)), (6, 12), 16, 64,
                          transform="rotation")
    # the turned patch's column j samples the row of the plain tall box at the same offset
    tall_x1, tall_y1 = 32 - ext_h / 2, 32 - ext_w / 2
    tall = sample_boxes(frames, *(torch.tensor([v], dtype=torch.float64) for v in (tall_x1, tall_y1, ext_h, ext_w)),
                        12, 6)  # (1, 1, 12, 6): ext_w tall, ext_h wide
    torch.testing.assert_close(turned, torch.rot90(tall, 1, dims=(-2, -1)), rtol=0, atol=1e-12)


def test_homography_with_only_affine_parameters_equals_the_affine_transform():
    frames = _smooth_frames(4, 3, 30, seed=12)
    box = _box_actions(4, 13)
    affine = _random_params("affine", 4, 14, scale=0.3)
    homography = torch.cat((affine, torch.zeros(4, 2, dtype=torch.float64)), dim=1)
    a = crop_patches(frames, _with(box, affine), (6, 7), 12, 30, transform="affine")
    h = crop_patches(frames, _with(box, homography), (6, 7), 12, 30, transform="homography")
    assert torch.equal(a, h)
    # and the perspective terms do warp the patch
    homography[:, 6] = 1.0
    assert not torch.allclose(crop_patches(frames, _with(box, homography), (6, 7), 12, 30, transform="homography"), a)


def test_affine_translation_moves_the_patch_by_half_box_extents():
    frames, box, plain = _pixel_aligned_square()
    # p2 = 0.5 moves the sampling by a quarter of the 8-pixel box: 2 pixels right; p5 = -0.25: 1 pixel up
    params = torch.tensor([[0.0, 0.0, 0.5, 0.0, 0.0, -0.25]], dtype=torch.float64)
    moved = crop_patches(frames, _with(box, params), 8, 8, 16, transform="affine")
    torch.testing.assert_close(moved, frames[..., 1:9, 4:12], rtol=0, atol=1e-12)


def test_tps_at_rest_is_the_identity_and_reproduces_affine_maps():
    frames = _smooth_frames(3, 2, 24, seed=15)
    box = _box_actions(3, 16)
    t = get_transform("tps")
    rest = crop_patches(frames, _with(box, torch.zeros(3, t.num_params, dtype=torch.float64)), 6, 10, 24,
                        transform="tps")
    assert torch.equal(rest, crop_patches(frames, box, 6, 10, 24))
    # control points moved by an affine map: the spline is that affine map everywhere
    affine = _random_params("affine", 3, 17, scale=0.3)
    control = tps_control_points()  # (K, 2)
    matrix = affine.view(3, 2, 3) + torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=torch.float64)
    moved = torch.einsum("nij,kj->nki", matrix[:, :, :2], control) + matrix[:, None, :, 2]  # (3, K, 2)
    displacements = (moved - control).reshape(3, -1)
    spline = crop_patches(frames, _with(box, displacements), (5, 7), 10, 24, transform="tps")
    torch.testing.assert_close(spline, crop_patches(frames, _with(box, affine), (5, 7), 10, 24, transform="affine"),
                               rtol=0, atol=1e-10)


def test_tps_moves_a_control_point_to_its_target():
    # With 3 x 3 output cells of a 3-point-per-side grid, the centre cell samples the centre control point.
    t = get_transform("tps")
    params = torch.zeros(1, t.num_params, dtype=torch.float64)
    params[0, 8:10] = torch.tensor([0.2, -0.1], dtype=torch.float64)  # control point 4 = (0, 0)
    terms = [torch.tensor([v], dtype=torch.float64) for v in (0.0, 0.0, 30.0, 30.0)]
    grid = t.grid(*terms, params, 3, 3, 30, 30)  # box = the whole frame: frame and box coordinates agree
    torch.testing.assert_close(grid[0, 1, 1], torch.tensor([0.2, -0.1], dtype=torch.float64), rtol=0, atol=1e-12)


# ----------------------------------------------------------------------------------------------
# the model
# ----------------------------------------------------------------------------------------------
def test_none_keeps_the_policy_and_its_keys():
    base = tiny_model()
    assert base.geometry.transform == "none" and base.policy.spatial.transform_head is None
    assert not any("transform_head" in k for k in base.state_dict())


@pytest.mark.parametrize("name", WARPED)
def test_model_with_a_transform_trains_its_head(name):
    torch.manual_seed(0)
    model = tiny_model(patch_transform=name).train()
    k = TRANSFORMS[name].num_params
    extra = {key for key in model.state_dict() if "transform_head" in key}
    assert extra == {"policy.spatial.transform_head.weight", "policy.spatial.transform_head.bias"}
    out = model(random_video(batch=2), generator=torch.Generator().manual_seed(0))
    assert out.glance_actions.shape == (2, 4, 4 + k) and out.focus_actions.shape == (2, 4, 4 + k)
    assert out.patch_boxes.shape == (2, 4, 4) and out.size_actions.shape == (2, 4, 4)
    assert torch.equal(out.glance_actions[..., 4:], torch.zeros(2, 4, k))  # the head starts at the identity
    assert torch.equal(out.random_pass.focus_actions[..., 4:], torch.zeros(2, 4, k))
    terms = UniAdaFocusObjective(8, 4, 4)(out, torch.tensor([0, 1]), generator=torch.Generator().manual_seed(1))
    terms.total.backward()
    head = model.policy.spatial.transform_head
    assert head.weight.grad.abs().sum() > 0 and head.bias.grad.abs().sum() > 0


@pytest.mark.parametrize("name", WARPED)
def test_a_transform_at_its_identity_leaves_the_model_unchanged(name):
    torch.manual_seed(0)
    base = tiny_model().eval()
    model = tiny_model(patch_transform=name).eval()
    missing, unexpected = model.load_state_dict(base.state_dict(), strict=False)
    assert set(missing) == {"policy.spatial.transform_head.weight", "policy.spatial.transform_head.bias"}
    assert not unexpected
    video = random_video(batch=2)
    with torch.no_grad():
        a, b = base(video), model(video)
    assert torch.equal(a.exit_logits, b.exit_logits) and torch.equal(a.spatial_logits, b.spatial_logits)
    assert torch.equal(a.glance_actions, b.glance_actions[..., :4])


@pytest.mark.parametrize("name", WARPED)
def test_flops_count_the_transform_head_and_the_warped_crop(name):
    base, model = flops_breakdown(tiny_model()), flops_breakdown(tiny_model(patch_transform=name))
    assert model.spatial_policy > base.spatial_policy
    assert model.patch_crop >= base.patch_crop
    assert (model.focus_patch, model.glance_frame) == (base.focus_patch, base.glance_frame)


TABLE11 = sorted((REPO / "configs" / "ablations").glob("table11-*.yaml"))


def test_table11_has_nine_rows_each_with_its_two_header_lines():
    assert len(TABLE11) == 9
    for path in TABLE11:
        first, second = path.read_text().splitlines()[:2]
        assert first.startswith("# Table 11: ") and second.startswith("# paper: ActivityNet mAP"), path.name


@pytest.mark.parametrize("path", TABLE11, ids=lambda p: p.stem)
def test_table11_rows_load_on_their_base_and_set_only_their_flags(path):
    own = yaml.safe_load(path.read_text())
    assert own.pop("base") == "table9-dynamic-ours.yaml"  # the paper builds Table 11 on Table 9's last line
    args = config.parse_args(["--config", str(path)])
    base = config.parse_args(["--config", str(path.parent / "table9-dynamic-ours.yaml")])
    differ = {k for k, v in vars(args).items() if k not in ("config", "explicit") and vars(base).get(k) != v}
    assert differ == set(own) and all(getattr(args, k) == v for k, v in own.items())
    model = get_variant(args.variant)
    assert set(own) <= set(model.hyper_parameters)


def test_patch_transform_is_refused_by_variants_without_it(capsys):
    with pytest.raises(SystemExit):
        config.parse_args(["--variant", "tsm", "--dataset", "something", "--patch_transform", "rotation"])
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--patch_transform rotation: the tsm variant" in err
    assert "patch_transform" in config.model_keys("mn2_r50")


@pytest.mark.parametrize("name", ["rotation", "homography"])
def test_evaluation_ablations_run_with_a_transform(name):
    from ops import policy_ablation

    torch.manual_seed(0)
    base = tiny_model().eval()
    model = tiny_model(patch_transform=name).eval()
    model.load_state_dict(base.state_dict(), strict=False)
    video = random_video(batch=2)
    with torch.no_grad():
        a, b = base(video), model(video)
        for removed in (["spatial"], ["spatial", "temporal"], ["temporal"]):
            assert torch.equal(policy_ablation.dynamics_stage_logits(base, video, a, removed),
                               policy_ablation.dynamics_stage_logits(model, video, b, removed))
        x = policy_ablation.ablation_logits(base, video, a, draws=2, generator=torch.Generator().manual_seed(3))
        y = policy_ablation.ablation_logits(model, video, b, draws=2, generator=torch.Generator().manual_seed(3))
    assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
