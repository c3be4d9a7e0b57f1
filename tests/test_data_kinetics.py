"""Kinetics-400 (the X3D variant's dataset): the registry entry without a class file, and the official
three-crop evaluation (``test_crops=3``) against the reference 3-crop fixture."""
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image
from torchvision.transforms import InterpolationMode

from datasets import DATASETS, ListFileError, build_dataset, class_names, num_classes, resolve_spec
from datasets.sampling import segment_indices
from datasets.transforms import FullResSample, MultiScaleCrop, ResizeCenterCrop
from support import fixture_params, require_fixture

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# --- helpers ---------------------------------------------------------------------------------------
def _save(path: Path, frame: np.ndarray) -> None:
    """Write one (H, W, 3) uint8 frame; the format follows the suffix (PNG is lossless)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(np.ascontiguousarray(frame))
    if path.suffix == ".png":
        image.save(path, compress_level=1)
    else:
        image.save(path, quality=95)


def _noise_frames(n, width, height, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, height, width, 3), dtype=np.uint8)


def _kinetics_dir(root: Path, videos, *, frames=None, size=(48, 36), template="img_{:05d}.png"):
    """A Kinetics-layout data dir: ``labels/{train,val}_videofolder.txt`` and ``images/<path>/``.

    ``videos``: (path, num_frames, label); ``frames``: optional dict path -> (n, H, W, 3) uint8 frames
    (default: noise of ``size`` (w, h), or of ``size[path]`` for a dict). Returns the frames written, by path.
    """
    (root / "labels").mkdir(parents=True, exist_ok=True)
    text = "".join(f"{path} {n} {label}\n" for path, n, label in videos)
    (root / "labels" / "train_videofolder.txt").write_text(text)
    (root / "labels" / "val_videofolder.txt").write_text(text)
    written = {}
    for k, (path, n, _) in enumerate(videos):
        wh = size[path] if isinstance(size, dict) else size
        data = frames[path] if frames and path in frames else _noise_frames(n, *wh, seed=k)
        for i in range(n):
            _save(root / "images" / path / template.format(i + 1), data[i])
        written[path] = data
    return written


def _decode(folder: Path, indices, template="img_{:05d}.png"):
    """uint8 (len(indices), 3, H, W) of the frames ``indices`` (1-based), decoded with Pillow."""
    return torch.from_numpy(np.stack([np.asarray(Image.open(folder / template.format(int(i))).convert("RGB"))
                                      for i in indices])).permute(0, 3, 1, 2).contiguous()


def _official_three_crops_pil(frame: np.ndarray, size=224, scale_size=256):
    """Re-statement of the official GroupFullResSample(size, scale_size, flip=False) on one frame with
    Pillow: bilinear short-side resize (long side int(scale·long/short)), then left, right, centre."""
    image = Image.fromarray(frame)
    w, h = image.size
    if w <= h:
        new = (scale_size, int(scale_size * h / w))
    else:
        new = (int(scale_size * w / h), scale_size)
    image = image.resize(new, Image.BILINEAR)
    w_step, h_step = (new[0] - size) // 4, (new[1] - size) // 4
    offsets = [(0, 2 * h_step), (4 * w_step, 2 * h_step), (2 * w_step, 2 * h_step)]
    crops = [np.asarray(image.crop((x, y, x + size, y + size))) for x, y in offsets]
    return offsets, torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2)     # (3, 3, S, S)


# --- (a) the registry entry ------------------------------------------------------------------------
def test_registry_entry():
    spec = DATASETS["kinetics"]
    assert (spec.train_list, spec.val_list, spec.frame_root, spec.template) == (
        "labels/train_videofolder.txt", "labels/val_videofolder.txt", "images", "img_{:05d}.jpg")
    assert (spec.separator, spec.multi_label, spec.metric, spec.flip, spec.class_count) == (" ", False, "top1", True, 400)
    assert spec.class_file == "labels/kinetics_label_map.txt"
    for name, other in DATASETS.items():              # every other dataset still counts its class file
        if name != "kinetics":
            assert other.class_count is None and other.class_file


def test_lists_without_class_file_give_400_classes(tmp_path):
    root = tmp_path / "kinetics"
    videos = [("abseiling/aaa_000010_000020", 7, 0), ("zumba/b c_000001_000011", 10, 399),
              ("air_drumming/xyz_000000_000010", 2, 17)]
    _kinetics_dir(root, videos, template="img_{:05d}.jpg")          # the official template, JPEG frames
    assert num_classes("kinetics", str(root)) == 400
    assert resolve_spec("kinetics", str(root)).class_names(str(root)) is None
    assert class_names(400, dataset="kinetics", data_dir=str(root)) is None
    for split in ("train", "val"):
        ds = build_dataset("kinetics", str(root), split, num_segments=4, input_size=16)
        assert [(r.path, r.num_frames, r.labels) for r in ds.records] == [(p, n, (l,)) for p, n, l in videos]
        assert ds.num_classes == 400 and ds.class_names is None and ds.spec.metric == "top1"
        assert ds.frame_root == os.path.join(str(root), "images")
        item = ds[1]
        assert item["video"].shape == (4, 3, 16, 16) and item["video"].dtype == torch.uint8
        assert item["labels"].shape == (400,) and item["labels"][399] == 1 and int(item["label"]) == 399
        assert "glance" not in item
    train = build_dataset("kinetics", str(root), "train", num_segments=4, input_size=16)
    assert isinstance(train.transform, MultiScaleCrop) and train.transform.flip is True    # K400 is flipped
    val = build_dataset("kinetics", str(root), "val", num_segments=4, input_size=16, glance_segments=3)
    assert isinstance(val.transform, ResizeCenterCrop) and val[0]["glance"].shape == (3, 3, 16, 16)
    # The official code drops videos of fewer than 3 frames; min_frames=3 does the same.
    assert len(build_dataset("kinetics", str(root), "val", num_segments=4, input_size=16, min_frames=3)) == 2

    (root / "labels" / "val_videofolder.txt").write_text("abseiling/aaa_000010_000020 7 400\n")
    with pytest.raises(ListFileError, match=r"label 400 is out of range \[0, 400\)"):
        build_dataset("kinetics", str(root), "val", num_segments=4)


def test_optional_class_file_gives_names_and_must_agree(tmp_path):
    root = tmp_path / "kinetics"
    _kinetics_dir(root, [("abseiling/a", 5, 3)])
    names = [f"class_{i}" for i in range(400)]
    (root / "labels" / "kinetics_label_map.txt").write_text("\n".join(names) + "\n")
    ds = build_dataset("kinetics", str(root), "val", num_segments=2, input_size=8, template="img_{:05d}.png")
    assert ds.class_names == names and ds.num_classes == 400
    assert num_classes("kinetics", str(root)) == 400
    assert class_names(400, dataset="kinetics", data_dir=str(root)) == names
    (root / "labels" / "kinetics_label_map.txt").write_text("a\nb\nc\n")
    with pytest.raises(ListFileError, match=r"kinetics_label_map\.txt lists 3 classes, but dataset 'kinetics' has 400"):
        num_classes("kinetics", str(root))
    assert num_classes("kinetics", str(root), class_count=None) == 3          # a subset: the class file decides


def test_class_count_for_other_layouts(tmp_path, write_frames):
    root = tmp_path / "mine"
    write_frames(root / "frames" / "v", 4)
    (root / "train_split.txt").write_text("v,4,6\n")
    ds = build_dataset("custom", str(root), "train", num_segments=2, input_size=8, val_list="train_split.txt",
                       class_file=None, class_count=7, template="image_{:05d}.png")
    assert ds.num_classes == 7 and ds.class_names is None and ds[0]["labels"].shape == (7,)
    # Without class_count a class file stays mandatory, as before.
    with pytest.raises(ListFileError, match="class file not found"):
        num_classes("custom", str(root))
    with pytest.raises(ValueError, match="needs a class_file or a class_count"):
        resolve_spec("custom", str(root), class_file="")
    with pytest.raises(ValueError, match="class_count must be a positive integer"):
        resolve_spec("kinetics", str(root), class_count=0)


# --- (b) the official three-crop fixture -----------------------------------------------------------
def _load_three_crop_fixture(param):
    """An x3d parity fixture that records a three-crop evaluation (``frame_recipe``, ``crop_offsets_xy``);
    a forward fixture skips."""
    path = require_fixture(param)
    fixture = torch.load(path, weights_only=True)
    if "crop_offsets_xy" not in fixture:
        pytest.skip(f"{path.name} is a forward fixture: it records no three-crop evaluation")
    return fixture


def _fixture_frames(fixture):
    """(glance_u8 (G, H, W, 3), focus_u8 (T0, H, W, 3)) drawn as the fixture's ``frame_recipe`` says."""
    cfg = fixture["config"]
    G, T0 = cfg["num_glance_segments"], cfg["num_input_focus_segments"]
    H, W = cfg["frame_hw"]
    seed = fixture["frame_seed"]
    recipe = (f"g = torch.Generator().manual_seed({seed}); "
              f"glance_u8 = torch.randint(0, 256, ({G}, {H}, {W}, 3), generator=g, dtype=torch.uint8); "
              f"focus_u8 = torch.randint(0, 256, ({T0}, {H}, {W}, 3), generator=g, dtype=torch.uint8)")
    assert fixture["frame_recipe"].split("  #")[0].strip() == recipe, "a new frame recipe: update this test"
    g = torch.Generator().manual_seed(seed)
    glance = torch.randint(0, 256, (G, H, W, 3), generator=g, dtype=torch.uint8)
    focus = torch.randint(0, 256, (T0, H, W, 3), generator=g, dtype=torch.uint8)
    return glance, focus


def _interleaving_length(G, T0):
    """The shortest video whose G glance centres and T0 focus centres are all distinct frames, so one
    frame folder can hold the fixture's two independent frame sets (for G = 16, T0 = 96: 112 frames)."""
    for n in range(max(G, T0), 64 * (G + T0)):
        glance, focus = segment_indices(n, G), segment_indices(n, T0)
        if len(set(glance)) == G and len(set(focus)) == T0 and not set(glance) & set(focus):
            return n, glance, focus
    raise AssertionError(f"no video length separates {G} glance and {T0} focus centres")


def _official_normalise(views_u8, mean, std):
    """uint8 (V, K, 3, S, S) -> the official (1, V·K·3, S, S) tensor: frames stacked on channels
    crop-major, ToTorchFormatTensor (float / 255), then GroupNormalize's in-place per-channel loop."""
    x = views_u8.reshape(-1, *views_u8.shape[-2:]).float().div(255)
    for c, plane in enumerate(x):
        plane.sub_(mean[c % 3]).div_(std[c % 3])
    return x.unsqueeze(0)


def _assert_checksum(x, checksum, shape):
    assert list(x.shape) == list(shape)
    flat = x.flatten()
    assert list(checksum["shape"]) == [flat.numel()]
    assert flat[:8].tolist() == checksum["first8"]
    assert flat[-8:].tolist() == checksum["last8"]
    assert flat.double().sum().item() == pytest.approx(checksum["sum"], rel=1e-9, abs=1e-6)
    assert flat.double().abs().sum().item() == pytest.approx(checksum["abs_sum"], rel=1e-9)


@pytest.mark.parametrize("path", fixture_params("parity_*.pt", "x3d"))
def test_three_crops_match_the_official_fixture(tmp_path, path):
    fixture = _load_three_crop_fixture(path)
    cfg = fixture["config"]
    G, T0, V = cfg["num_glance_segments"], cfg["num_input_focus_segments"], cfg["test_crops"]
    S, H, W = cfg["input_size"], *cfg["frame_hw"]
    mean, std = cfg["input_mean"], cfg["input_std"]
    # the views the dataset can make, and the normalisation the models apply
    assert (V, tuple(mean), tuple(std)) == (3, IMAGENET_MEAN, IMAGENET_STD)
    assert fixture["crop_names"] == ["left", "right", "center"]
    offsets = [tuple(o) for o in fixture["crop_offsets_xy"].tolist()]
    # The official slices reproduce the official tensors exactly, so exact comparisons are meaningful.
    assert fixture["slice_check"] == {"glance_maxabs": 0.0, "input_maxabs": 0.0}

    # The crop rule itself.
    transform = FullResSample(S, cfg["scale_size"])
    geometry = transform.draw(W, H)
    assert list(geometry.offsets) == offsets
    glance_u8, focus_u8 = _fixture_frames(fixture)
    glance_clip, focus_clip = glance_u8.permute(0, 3, 1, 2), focus_u8.permute(0, 3, 1, 2)
    for clip, key, shape in ((glance_clip, "images_glance_checksum", fixture["images_glance_shape"]),
                             (focus_clip, "images_input_checksum", fixture["images_input_shape"])):
        views = geometry.apply(clip)
        assert views.shape == (V, len(clip), 3, S, S)
        _assert_checksum(_official_normalise(views, mean, std), fixture[key], shape)

    # The dataset: one video whose glance centres and focus centres hit the fixture's two frame sets.
    n, glance_at, focus_at = _interleaving_length(G, T0)
    root = tmp_path / "kinetics"
    folder = root / "images" / "abseiling" / "fixture_000000_000010"
    for frames, at in ((glance_u8, glance_at), (focus_u8, focus_at)):
        for frame, i in zip(frames.numpy(), at):
            _save(folder / f"img_{int(i):05d}.png", frame)
    assert len(os.listdir(folder)) == n
    (root / "labels").mkdir()
    (root / "labels" / "val_videofolder.txt").write_text(f"abseiling/fixture_000000_000010 {n} 0\n")
    ds = build_dataset("kinetics", str(root), "val", num_segments=T0, input_size=S, glance_segments=G,
                       test_crops=V, scale_size=cfg["scale_size"], template="img_{:05d}.png",
                       class_count=cfg["num_classes"])
    assert ds.test_crops == V
    assert ds.glance_indices(0).tolist() == glance_at.tolist() and ds.frame_indices(0).tolist() == focus_at.tolist()
    item = ds[0]
    assert item["glance"].shape == (V, G, 3, S, S) and item["video"].shape == (V, T0, 3, S, S)
    assert item["glance"].dtype == item["video"].dtype == torch.uint8
    assert item["glance"].is_contiguous() and item["video"].is_contiguous()
    for v, (x, y) in enumerate(offsets):              # view v = crop v, in the official order
        assert torch.equal(item["glance"][v], glance_clip[:, :, y:y + S, x:x + S])
        assert torch.equal(item["video"][v], focus_clip[:, :, y:y + S, x:x + S])
    _assert_checksum(_official_normalise(item["glance"], mean, std), fixture["images_glance_checksum"],
                     fixture["images_glance_shape"])
    _assert_checksum(_official_normalise(item["video"], mean, std), fixture["images_input_checksum"],
                     fixture["images_input_shape"])
    assert item["labels"].shape == (cfg["num_classes"],) and int(item["label"]) == 0


# --- (c) portrait and other frame sizes ------------------------------------------------------------
@pytest.mark.parametrize("width, height, resized, offsets", [
    (240, 320, (256, 341), [(0, 58), (32, 58), (16, 58)]),          # portrait: the views move by w_step = 8
    (331, 589, (256, 455), [(0, 114), (32, 114), (16, 114)]),       # portrait K400-like (331 px wide)
    (589, 331, (455, 256), [(0, 16), (228, 16), (114, 16)]),        # landscape K400 frame (331 px high)
    (256, 256, (256, 256), [(0, 16), (32, 16), (16, 16)]),          # square: the views still differ by w_step
    (320, 256, (320, 256), [(0, 16), (96, 16), (48, 16)]),          # no resize: pure slices
])
def test_three_crop_geometry_follows_the_official_rule(width, height, resized, offsets):
    geometry = FullResSample(224).draw(width, height)
    assert (geometry.resized_w, geometry.resized_h) == resized
    assert list(geometry.offsets) == offsets
    assert geometry.num_views == 3 and geometry.region == (0, 0, width, height)
    for x, y in offsets:                              # every view lies inside the resized frame
        assert 0 <= x and x + 224 <= resized[0] and 0 <= y and y + 224 <= resized[1]


def test_centre_view_can_differ_from_the_single_centre_crop():
    # 589x331 -> 455x256: GroupFullResSample's centre is x = 2·((455-224)//4) = 114, GroupCenterCrop's
    # round((455-224)/2) = 116; for 320x256 both are 48.
    assert FullResSample(224).draw(589, 331).offsets[2] == (114, 16)
    assert ResizeCenterCrop(224).draw(589, 331).left == 116
    assert FullResSample(224).draw(320, 256).offsets[2] == (48, 16) and ResizeCenterCrop(224).draw(320, 256).left == 48


def test_portrait_frames_in_the_dataset(tmp_path):
    width, height = 240, 320
    root = tmp_path / "kinetics"
    frames = _kinetics_dir(root, [("tai_chi/portrait", 5, 3)], size=(width, height))["tai_chi/portrait"]
    ds = build_dataset("kinetics", str(root), "val", num_segments=3, input_size=224, glance_segments=2,
                       test_crops=3, template="img_{:05d}.png")
    item = ds[0]
    assert item["video"].shape == (3, 3, 3, 224, 224) and item["glance"].shape == (3, 2, 3, 224, 224)
    full = _decode(root / "images" / "tai_chi" / "portrait", range(1, 6))
    resized = TF.resize(full, [341, 256], interpolation=InterpolationMode.BILINEAR, antialias=True)
    for key, indices in (("video", ds.frame_indices(0)), ("glance", ds.glance_indices(0))):
        for v, (x, y) in enumerate([(0, 58), (32, 58), (16, 58)]):
            assert torch.equal(item[key][v], resized[indices - 1, :, y:y + 224, x:x + 224])
        # The official PIL path: the same crops, pixels within one grey level (the resize filters differ).
        for t, i in enumerate(indices):
            offsets, official = _official_three_crops_pil(frames[i - 1])
            assert offsets == [(0, 58), (32, 58), (16, 58)]
            diff = (item[key][:, t].int() - official.int()).abs().max().item()
            assert diff <= 1, diff


def test_views_map_boxes_per_view():
    geometry = FullResSample(224).draw(320, 256)
    boxes = torch.tensor([[50.0, 20.0, 150.0, 100.0], [300.0, 200.0, 310.0, 250.0]])
    mapped = geometry.map_boxes(boxes)
    assert mapped.shape == (3, 2, 4)
    assert mapped[:, 0].tolist() == [[50, 4, 150, 84], [0, 4, 54, 84], [2, 4, 102, 84]]
    assert mapped[0, 1].tolist() == [224, 184, 224, 224]           # outside the left view: zero area


def test_synthetic_boxes_get_a_view_axis(tmp_path):
    small = dict(seed=5, num_classes=3, train_videos=2, val_videos=2, frames_per_video=8, frame_size=(64, 48))
    common = dict(num_segments=4, input_size=40, synthetic=small)
    one = build_dataset("synthetic", str(tmp_path), "val", **common)
    three = build_dataset("synthetic", str(tmp_path), "val", test_crops=3, **common)
    a, b = one[0], three[0]
    assert b["video"].shape == (3, 4, 3, 40, 40)
    assert b["object_boxes"].shape == (3, 4, 4) and b["object_visible"].shape == (3, 4)
    assert a["object_boxes"].shape == (4, 4) and a["object_visible"].shape == (4,)
    geometry = three.transform.draw(64, 48)
    boxes, visible = three.boxes[three.records[0].path]
    expected = geometry.map_boxes(torch.from_numpy(boxes[three.frame_indices(0) - 1]))
    assert torch.equal(b["object_boxes"], expected.float())
    for v in range(3):
        area = (expected[v, :, 2] - expected[v, :, 0]) * (expected[v, :, 3] - expected[v, :, 1])
        assert torch.equal(b["object_visible"][v], torch.from_numpy(visible[three.frame_indices(0) - 1]) & (area > 0))


# --- (d) one view is unchanged ---------------------------------------------------------------------
def test_one_view_items_are_unchanged(tmp_path):
    root = tmp_path / "kinetics"
    _kinetics_dir(root, [("a/landscape", 9, 1), ("b/portrait", 6, 2)],
                  size={"a/landscape": (320, 256), "b/portrait": (200, 300)})
    common = dict(num_segments=5, input_size=112, glance_segments=3, template="img_{:05d}.png")
    default = build_dataset("kinetics", str(root), "val", **common)
    one = build_dataset("kinetics", str(root), "val", test_crops=1, **common)
    three = build_dataset("kinetics", str(root), "val", test_crops=3, **common)
    assert one.test_crops == default.test_crops == 1 and repr(one) == repr(default)
    for i, path in enumerate(("a/landscape", "b/portrait")):
        a, b = default[i], one[i]
        assert sorted(a) == sorted(b) == ["glance", "index", "label", "labels", "video"]
        for key in a:
            assert torch.equal(a[key], b[key]) and a[key].dtype == b[key].dtype
        assert a["video"].shape == (5, 3, 112, 112) and a["glance"].shape == (3, 3, 112, 112)
        # ... and they are the single resize + centre crop of the frames.
        for key, indices in (("video", one.frame_indices(i)), ("glance", one.glance_indices(i))):
            full = _decode(root / "images" / path, indices)
            expected = ResizeCenterCrop(112).draw(full.shape[-1], full.shape[-2]).apply(full)
            assert torch.equal(a[key], expected)
        c = three[i]
        assert c["video"].shape == (3, 5, 3, 112, 112) and c["glance"].shape == (3, 3, 3, 112, 112)
        for key in ("label", "labels", "index"):
            assert torch.equal(c[key], a[key])
    # 320x256 at S = 112 (resized to 160x128): the centre view and the centre crop coincide.
    assert torch.equal(three[0]["video"][2], default[0]["video"])
    # Training items do not change either.
    train_default = build_dataset("kinetics", str(root), "train", **common)
    train_one = build_dataset("kinetics", str(root), "train", test_crops=1, **common)
    for key, value in train_default[1].items():
        assert torch.equal(value, train_one[1][key])


# --- (e) no views in training ----------------------------------------------------------------------
def test_training_refuses_views(tmp_path):
    root = tmp_path / "kinetics"
    _kinetics_dir(root, [("a/v", 4, 0)])
    common = dict(num_segments=2, input_size=16, template="img_{:05d}.png")
    with pytest.raises(ValueError, match=r"test_crops=3 asks for multi-view evaluation, but this dataset is built "
                                         r"for training"):
        build_dataset("kinetics", str(root), "train", test_crops=3, **common)
    with pytest.raises(ValueError, match="multi-view evaluation"):
        build_dataset("kinetics", str(root), "val", train=True, test_crops=3, **common)
    for bad in (2, 5, 0, True, "3"):
        with pytest.raises(ValueError, match=r"test_crops must be one of \(1, 3\)"):
            build_dataset("kinetics", str(root), "val", test_crops=bad, **common)
    assert build_dataset("kinetics", str(root), "train", train=False, test_crops=3, **common)[0]["video"].shape == (
        3, 2, 3, 16, 16)
