"""Clip transforms: official crop geometry, one draw per clip, PIL parity, box mapping."""
from collections import Counter

import numpy as np
import pytest
import torch
import torchvision.transforms as T
from PIL import Image

from datasets.transforms import (CropGeometry, MultiScaleCrop, ResizeCenterCrop, ResizeCropGeometry,
                                 crop_size_pairs, default_scale_size, fixed_offsets)


def textured_clip(t=3, w=96, h=64, seed=0):
    """uint8 (t, 3, h, w): smooth random texture, frame i brighter by 20·i (no clipping for t <= 4)."""
    rng = np.random.default_rng(seed)
    base = np.asarray(Image.fromarray(rng.integers(0, 256, (h // 8, w // 8, 3), dtype=np.uint8)).resize((w, h), Image.BICUBIC))
    frames = np.stack([base.astype(int) * 150 // 255 + 20 * i for i in range(t)]).astype(np.uint8)
    return torch.from_numpy(frames).permute(0, 3, 1, 2)     # channels-last memory, like the dataset


def test_crop_sizes_for_360p_frames():
    pairs = crop_size_pairs(640, 360, 224)
    assert sorted({w for w, _ in pairs}) == [237, 270, 315, 360]
    assert pairs == [(360, 360), (315, 360), (360, 315), (315, 315), (270, 315), (315, 270), (270, 270),
                     (237, 270), (270, 237), (237, 237)]          # official (w, h) order, |i-j| <= 1
    assert len(crop_size_pairs(640, 360, 224, max_distort=3)) == 16


def test_crop_sizes_snap_to_input_size():
    assert crop_size_pairs(256, 256, 224)[0] == (256, 256) and (224, 224) in crop_size_pairs(256, 256, 224)
    assert crop_size_pairs(300, 226, 224)[0] == (224, 224)         # 226 is within 2 px: snapped
    assert crop_size_pairs(300, 227, 224)[0] == (227, 227)         # 3 px away: kept


def test_fixed_offsets():
    offsets = fixed_offsets(640, 360, 315, 315)                     # steps (81, 11)
    assert offsets == [(0, 0), (324, 0), (0, 44), (324, 44), (162, 22), (0, 22), (324, 22), (162, 44),
                       (162, 0), (81, 11), (243, 11), (81, 33), (243, 33)]
    assert len(fixed_offsets(640, 360, 315, 315, more_fix_crop=False)) == 5


def test_draw_covers_all_official_choices():
    policy = MultiScaleCrop(224)
    rng = np.random.default_rng(0)
    draws = [policy.draw(640, 360, rng) for _ in range(4000)]
    assert {(g.w, g.h) for g in draws} == set(crop_size_pairs(640, 360, 224))
    g315 = [g for g in draws if (g.w, g.h) == (315, 315)]
    assert {(g.x, g.y) for g in g315} == set(fixed_offsets(640, 360, 315, 315))
    flips = Counter(g.flip for g in draws)
    assert abs(flips[True] / len(draws) - 0.5) < 0.04
    assert all(g.size == 224 and g.x + g.w <= 640 and g.y + g.h <= 360 for g in draws)
    assert not any(g.flip for g in (MultiScaleCrop(224, flip=False).draw(640, 360, rng) for _ in range(50)))


def test_same_draw_for_every_frame():
    clip = textured_clip(t=4)
    geometry = CropGeometry(x=10, y=6, w=50, h=40, size=32, flip=True)
    out = geometry.apply(clip)
    assert out.dtype == torch.uint8 and out.shape == (4, 3, 32, 32) and out.is_contiguous()
    for i in range(4):
        assert torch.equal(out[i], geometry.apply(clip[i:i + 1])[0])
    # frames differ only by their brightness offset, so the crops must too (same geometry everywhere)
    diffs = out[1:].int() - out[:-1].int()
    assert torch.all((diffs - 20).abs() <= 1)


def test_crop_geometry_without_resize_is_a_slice():
    clip = textured_clip()
    plain = CropGeometry(x=7, y=3, w=40, h=40, size=40).apply(clip)
    assert torch.equal(plain, clip[:, :, 3:43, 7:47])
    flipped = CropGeometry(x=7, y=3, w=40, h=40, size=40, flip=True).apply(clip)
    assert torch.equal(flipped, clip[:, :, 3:43, 7:47].flip(-1))


def test_train_crop_matches_official_pil_crop_resize():
    clip = textured_clip(t=1, w=160, h=90, seed=3)
    image = Image.fromarray(clip[0].permute(1, 2, 0).numpy())
    for x, y, w, h in [(0, 0, 90, 90), (35, 5, 78, 78), (10, 12, 66, 78)]:
        ours = CropGeometry(x, y, w, h, 56).apply(clip)[0].permute(1, 2, 0).numpy().astype(int)
        official = np.asarray(image.crop((x, y, x + w, y + h)).resize((56, 56), Image.BILINEAR)).astype(int)
        diff = np.abs(ours - official)
        assert diff.max() <= 1 and diff.mean() < 0.2


@pytest.mark.parametrize("size", [224, 112, 64])
def test_eval_transform_matches_official_scale_and_centre_crop(size):
    clip = textured_clip(t=1, w=640, h=360, seed=size)
    image = Image.fromarray(clip[0].permute(1, 2, 0).numpy())
    geometry = ResizeCenterCrop(size).draw(640, 360)
    ours = geometry.apply(clip)[0].permute(1, 2, 0).numpy().astype(int)
    official = np.asarray(T.CenterCrop(size)(T.Resize(default_scale_size(size))(image))).astype(int)
    diff = np.abs(ours - official)
    assert diff.max() <= 1 and diff.mean() < 0.2
    assert default_scale_size(224) == 256


def test_eval_geometry_numbers():
    g = ResizeCenterCrop(224).draw(640, 360)
    assert (g.resized_w, g.resized_h, g.left, g.top) == (455, 256, 116, 16)
    g = ResizeCenterCrop(224).draw(360, 480)                       # portrait: width is the short side
    assert (g.resized_w, g.resized_h, g.left, g.top) == (256, 341, 16, 58)
    with pytest.raises(ValueError, match="scale_size"):
        ResizeCenterCrop(224, scale_size=200)


def _bright_box(frame):
    """(x1, y1, x2, y2) of the pixels brighter than 128 in a (3, H, W) uint8 frame."""
    ys, xs = torch.nonzero(frame[0] > 128, as_tuple=True)
    return [xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1]


@pytest.mark.parametrize("geometry", [
    CropGeometry(x=20, y=10, w=80, h=80, size=40),
    CropGeometry(x=20, y=10, w=80, h=80, size=40, flip=True),
    CropGeometry(x=0, y=0, w=120, h=90, size=60),
    ResizeCenterCrop(48).draw(160, 90),
])
def test_boxes_follow_the_pixels(geometry):
    frame = torch.zeros(1, 3, 90, 160, dtype=torch.uint8)
    box = torch.tensor([[50.0, 30.0, 74.0, 62.0]])               # (x1, y1, x2, y2) in source pixels
    frame[:, :, 30:62, 50:74] = 255
    out = geometry.apply(frame)
    mapped = geometry.map_boxes(box)[0].tolist()
    seen = _bright_box(out[0])
    assert all(abs(a - b) <= 1.0 for a, b in zip(mapped, seen)), (mapped, seen)


def test_boxes_outside_the_crop_are_clipped_to_nothing():
    geometry = CropGeometry(x=0, y=0, w=40, h=40, size=20)
    mapped = geometry.map_boxes(torch.tensor([[50.0, 50.0, 60.0, 60.0], [30.0, 30.0, 50.0, 50.0]]))
    assert mapped[0].tolist() == [20.0, 20.0, 20.0, 20.0]          # zero area
    assert mapped[1].tolist() == [15.0, 15.0, 20.0, 20.0]
    assert isinstance(ResizeCenterCrop(8).draw(10, 10), ResizeCropGeometry)
