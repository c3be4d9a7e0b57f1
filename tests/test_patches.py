"""Properties of the deformable patch crop (models.patches)."""
import pytest
import torch

from models.patches import action_boxes, crop_patches, feature_patch_size, native_scale_action


def _ramp(n, size, dtype=torch.float64):
    """Frames whose channel 0 holds the pixel-centre x coordinate and channel 1 the y coordinate."""
    coords = torch.arange(size, dtype=dtype) + 0.5
    x = coords.view(1, 1, 1, size).expand(n, 1, size, size)
    y = coords.view(1, 1, size, 1).expand(n, 1, size, size)
    return torch.cat((x, y), dim=1).contiguous()


def test_gradient_wrt_actions_matches_finite_differences():
    g = torch.Generator().manual_seed(0)
    frames = torch.nn.functional.avg_pool2d(torch.rand(3, 2, 40, 40, generator=g, dtype=torch.float64), 3, 1, 1)
    actions = (0.1 + 0.8 * torch.rand(3, 4, generator=g, dtype=torch.float64)).requires_grad_()
    assert torch.autograd.gradcheck(lambda a: crop_patches(frames, a, 7, 16, 40), (actions,), eps=1e-6, atol=1e-5)


def test_gradient_wrt_frames_matches_finite_differences():
    g = torch.Generator().manual_seed(1)
    frames = torch.rand(2, 1, 12, 12, generator=g, dtype=torch.float64).requires_grad_()
    actions = torch.rand(2, 4, generator=g, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda f: crop_patches(f, actions, 5, 8, 12), (frames,))


def test_samples_lie_on_the_box_cell_centres():
    size, out = 224, 8
    actions = torch.tensor([[0.3, 0.6, 0.2, 0.7], [0.9, 0.1, 0.5, 0.0]], dtype=torch.float64)
    crops = crop_patches(_ramp(2, size), actions, out, 128, size)  # (2, 2, out, out)
    boxes = action_boxes(actions, size, size, 128, size)
    for n in range(2):
        x1, y1, x2, y2 = boxes[n].tolist()
        centres_x = x1 + (torch.arange(out, dtype=torch.float64) + 0.5) * (x2 - x1) / out
        centres_y = y1 + (torch.arange(out, dtype=torch.float64) + 0.5) * (y2 - y1) / out
        inside_x = (centres_x > 0.5) & (centres_x < size - 0.5)  # bilinear is exact away from the zero padding
        inside_y = (centres_y > 0.5) & (centres_y < size - 0.5)
        torch.testing.assert_close(crops[n, 0][:, inside_x], centres_x[inside_x].expand(out, -1), atol=1e-9, rtol=0)
        torch.testing.assert_close(crops[n, 1][inside_y, :], centres_y[inside_y].unsqueeze(1).expand(-1, out),
                                   atol=1e-9, rtol=0)


def test_box_extents_run_from_96_to_224_pixels_at_224():
    a = torch.tensor([[0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0], [0.5, 0.5, 0.5, 0.25]])
    boxes = action_boxes(a, 224, 224, 128, 224)
    torch.testing.assert_close(boxes[0], torch.tensor([0.0, 0.0, 96.0, 96.0]))
    torch.testing.assert_close(boxes[1], torch.tensor([0.0, 0.0, 224.0, 224.0]))
    w, h = boxes[2, 2] - boxes[2, 0], boxes[2, 3] - boxes[2, 1]
    torch.testing.assert_close(torch.stack((w, h)), torch.tensor([96 + 32.0, 96 + 64.0]))
    torch.testing.assert_close(boxes[2, 1], (224 - h) * 0.5)  # index 0 is the vertical position


def test_boxes_are_relative_to_the_frame_and_stay_inside():
    g = torch.Generator().manual_seed(2)
    a = torch.rand(50, 4, generator=g, dtype=torch.float64)
    big = action_boxes(a, 224, 224, 128, 224)
    for size in (112, 160, 7):
        small = action_boxes(a, size, size, 128 * size // 224 or 1, size)
        torch.testing.assert_close(small, big * size / 224)
    assert (big[:, :2] >= 0).all() and (big[:, 2:] <= 224 + 1e-9).all()


def test_native_scale_action_gives_exactly_p_pixels():
    for size, p in ((224, 96), (224, 128), (224, 160), (112, 64)):
        a = torch.tensor([[0.2, 0.7, native_scale_action(p, size), native_scale_action(p, size)]], dtype=torch.float64)
        box = action_boxes(a, size, size, p, size)[0]
        torch.testing.assert_close(box[2:] - box[:2], torch.tensor([float(p), float(p)], dtype=torch.float64))
    assert native_scale_action(128, 224) == pytest.approx((128 - 96) / 128)


def test_native_patch_at_integer_offset_is_a_plain_crop():
    """A P-pixel box starting on a pixel edge samples pixel centres: the crop is exact."""
    g = torch.Generator().manual_seed(3)
    frames = torch.rand(1, 3, 64, 64, generator=g, dtype=torch.float64)
    scale = native_scale_action(32, 64)
    a = torch.tensor([[16 / 32, 8 / 32, scale, scale]], dtype=torch.float64)  # y1 = 16, x1 = 8
    crop = crop_patches(frames, a, 32, 32, 64)
    torch.testing.assert_close(crop[0], frames[0, :, 16:48, 8:40])


def test_feature_patch_size_is_official_at_224():
    for p in (96, 128, 160, 192):
        assert feature_patch_size(p, 224, 7) == p // 32
    assert feature_patch_size(144, 224, 7) == 4


def test_feature_patch_size_is_never_a_single_sample():
    # 48-px patches of 96-px frames cover 1.5 cells of the 3x3 map: the official floor would give 1.
    assert feature_patch_size(48, 96, 3) == 2
    assert feature_patch_size(32, 224, 7) == 2
    assert feature_patch_size(64, 128, 4) == 2


def test_feature_crop_sees_the_patch_extent():
    # The spatial objective must be able to tell a small box on the evidence from a large one around
    # it. A centred box's single-sample crop is the same point whatever the box's size (no gradient
    # reaches the size); a 2x2 crop averages over the box, so it changes with the size.
    fmap = torch.zeros(1, 1, 3, 3, dtype=torch.float64)
    fmap[0, 0, 1, 1] = 1.0  # evidence in the central cell only
    size = torch.tensor([0.0, 1.0], dtype=torch.float64).requires_grad_()
    actions = torch.stack((torch.full((2,), 0.5, dtype=torch.float64), torch.full((2,), 0.5, dtype=torch.float64),
                           size, size), dim=1)
    point = crop_patches(fmap.expand(2, -1, -1, -1), actions, 1, 48, 96).mean(dim=(1, 2, 3))
    assert point[0].item() == pytest.approx(point[1].item())
    assert torch.autograd.grad(point.sum(), size)[0].abs().max().item() == 0.0
    area = crop_patches(fmap.expand(2, -1, -1, -1), actions, feature_patch_size(48, 96, 3), 48, 96).mean(dim=(1, 2, 3))
    assert area[0].item() > area[1].item() + 0.1  # the small box is more concentrated on the evidence
    assert (torch.autograd.grad(area.sum(), size)[0] < 0).all()  # growing the box dilutes it


def test_crop_runs_in_float64_and_bfloat16_under_autocast():
    frames = torch.rand(2, 3, 32, 32, dtype=torch.float64)
    actions = torch.rand(2, 4, dtype=torch.float64)
    assert crop_patches(frames, actions, 8, 16, 32).dtype == torch.float64
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = crop_patches(frames.float().bfloat16(), actions.float(), 8, 16, 32)
    assert out.shape == (2, 3, 8, 8)


def test_bad_shapes_are_reported():
    with pytest.raises(ValueError, match="actions must be"):
        crop_patches(torch.zeros(2, 3, 8, 8), torch.zeros(3, 4), 4, 4, 8)
    with pytest.raises(ValueError, match="frames must be"):
        crop_patches(torch.zeros(3, 8, 8), torch.zeros(3, 4), 4, 4, 8)
