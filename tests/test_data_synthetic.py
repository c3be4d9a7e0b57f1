"""The synthetic dataset: layout, where/when constraints, determinism, atomic and concurrent generation."""
import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from datasets import DATASETS, DataError, ListFileError, build_dataset, synthetic, synthetic_options, synthetic_render
from datasets.boxes import read_boxes
from datasets.lists import parse_list_file, read_class_file

SMALL = dict(seed=5, num_classes=3, train_videos=6, val_videos=3, frames_per_video=12, frame_size=(64, 48))
CHROMA = 160      # class objects are fully saturated (chroma 255); everything else stays below ~90


def chroma(frames):
    """max - min over RGB of uint8 (..., 3) or (..., 3, H, W) with channel axis given."""
    f = np.asarray(frames).astype(int)
    return f.max(-1) - f.min(-1)


@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("syn") / "small"
    synthetic.generate(str(root), workers=1, **SMALL)
    return root


def tree_digest(root):
    digest = {}
    for folder, _, files in os.walk(root):
        for name in files:
            if name != synthetic.MARKER:
                path = os.path.join(folder, name)
                digest[os.path.relpath(path, root)] = hashlib.sha1(Path(path).read_bytes()).hexdigest()
    return digest


def test_layout_matches_the_actnet_format(small_set):
    spec = DATASETS["synthetic"]
    assert spec.template == synthetic_render.FRAME_TEMPLATE
    assert (spec.separator, spec.template, spec.frame_root, spec.multi_label) == \
        (DATASETS["actnet"].separator, DATASETS["actnet"].template, DATASETS["actnet"].frame_root, True)
    assert len(read_class_file(str(small_set / "classInd.txt"))) == 3
    train = parse_list_file(str(small_set / "synthetic_train_split.txt"), separator=",", multi_label=True, num_classes=3)
    assert len(train) == 6 and all(r.num_frames == 12 for r in train)
    assert sorted(r.labels[0] for r in train) == [0, 0, 1, 1, 2, 2]              # balanced
    frames = sorted(os.listdir(small_set / "frames" / train[0].path))
    assert frames[0] == "image_00001.jpg" and frames[-1] == "image_00012.jpg" and len(frames) == 12
    assert json.loads((small_set / "synthetic.json").read_text())["params"]["frame_size"] == [64, 48]
    assert (small_set / "object_boxes_val.csv").read_text().startswith("video,frame,x1,y1,x2,y2,visible\n")


def test_where_and_when_constraints(small_set):
    w, h = SMALL["frame_size"]
    side, n = min(w, h), SMALL["frames_per_video"]
    for split in ("train", "val"):
        table = read_boxes(str(small_set / f"object_boxes_{split}.csv"))
        assert len(table) == SMALL[f"{split}_videos"]
        for boxes, visible in table.values():
            assert boxes.shape == (n, 4)
            assert np.all(boxes[:, 2:] - boxes[:, :2] <= side / 5)                # at most 1/5 of the side
            shown = np.nonzero(visible)[0]
            assert 1 <= len(shown) <= n / 3 and np.all(np.diff(shown) == 1)     # one run, at most 1/3
            step = np.abs(np.diff(boxes[:, :2], axis=0)).max()
            assert step <= 0.025 * side + 1                                       # smooth motion
            assert boxes[:, 0].min() >= (w - side) / 2 and boxes[:, 2].max() <= (w + side) / 2
            assert boxes[:, 1].min() >= 0 and boxes[:, 3].max() <= h


def test_rendered_object_is_where_the_side_file_says_and_nothing_else_is_saturated():
    params = synthetic_options.resolve_params(num_classes=7, frame_size=96, frames_per_video=30)
    for i in range(4):
        frames, boxes, visible = synthetic_render.render_video((0, 0, i), i, params, None)
        strong = chroma(frames) >= CHROMA                                           # (n, H, W)
        for t in range(len(frames)):
            x1, y1, x2, y2 = boxes[t].astype(int)
            inside = np.zeros_like(strong[t])
            inside[y1:y2, x1:x2] = True
            assert not strong[t][~inside].any()                                     # distractors: no class colour
            assert strong[t][inside].sum() > (10 if visible[t] else -1) and (visible[t] or not strong[t].any())
            if visible[t]:
                colour = synthetic_render.class_appearance(i, 7)[2]
                pixels = frames[t][strong[t]]
                assert np.abs(pixels.astype(int) - colour).max(axis=1).min() <= 2


def test_same_files_whatever_the_number_of_workers(small_set, tmp_path):
    other = tmp_path / "two_workers"
    synthetic.generate(str(other), workers=2, **SMALL)
    assert tree_digest(other) == tree_digest(small_set)
    changed = tmp_path / "seed6"
    synthetic.generate(str(changed), workers=1, **dict(SMALL, seed=6))
    assert tree_digest(changed) != tree_digest(small_set)


def test_generate_is_atomic_and_refuses_to_overwrite(small_set, tmp_path):
    with pytest.raises(DataError, match="already exists"):
        synthetic.generate(str(small_set), **SMALL)
    root = tmp_path / "broken"
    with pytest.raises(ValueError, match="object_size"):
        synthetic.generate(str(root), object_size=(0.1, 0.4))
    assert not root.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".broken")]


def test_ensure_generated_reuses_and_checks_parameters(small_set, tmp_path):
    frame = small_set / "frames" / "train_00000" / "image_00001.jpg"
    before = frame.stat().st_mtime_ns
    t = time.perf_counter()
    assert synthetic.ensure_generated(str(small_set), **SMALL) == str(small_set)
    assert time.perf_counter() - t < 1 and frame.stat().st_mtime_ns == before
    with pytest.raises(DataError, match="other parameters.*num_classes"):
        synthetic.ensure_generated(str(small_set), **dict(SMALL, num_classes=4))
    squatter = tmp_path / "squatter"
    squatter.mkdir()
    (squatter / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="not a complete synthetic dataset"):
        synthetic.ensure_generated(str(squatter), **SMALL)


@pytest.mark.parametrize("bad, match", [
    (dict(object_size=(0.1, 0.4)), "object_size"), (dict(visible_fraction=(0.1, 0.6)), "visible_fraction"),
    (dict(frame_size=16), "frame_size"), (dict(colour="red"), "unknown synthetic option"),
    (dict(checker_cell=0), "checker_cell must be at least 1"),
    (dict(video_files="yes"), "video_files must be true or false"), (dict(video_codec="vp9"), "video_codec must be one of"),
    (dict(key_frame_interval=0), "key_frame_interval must be at least 1"),
    (dict(video_files=True, video_codec="h264", frame_size=(64, 49)), "even frame width and height"),
])
def test_invalid_parameters(bad, match):
    with pytest.raises((ValueError, TypeError), match=match):
        synthetic_options.resolve_params(**bad)


def _ensure_in_child(root, params):
    try:
        synthetic.ensure_generated(root, workers=1, **params)
    except BaseException:
        os._exit(1)
    os._exit(0)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_concurrent_ensure_generated_generates_once(tmp_path):
    import multiprocessing
    root = tmp_path / "shared"
    params = dict(SMALL, train_videos=12)
    context = multiprocessing.get_context("fork")
    procs = [context.Process(target=_ensure_in_child, args=(str(root), params)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    assert [p.exitcode for p in procs] == [0, 0]
    assert synthetic.read_marker(str(root))["train_videos"] == 12
    assert sorted(p.name for p in tmp_path.iterdir()) == [".shared.lock", "shared"]        # no leftovers


def _object_pixels(video):
    """bool (T, S, S): pixels of a uint8 (T, 3, S, S) clip with class-object saturation."""
    v = video.permute(0, 2, 3, 1).numpy()
    return chroma(v) >= CHROMA


@pytest.mark.parametrize("split, train", [("val", False), ("train", True)])
def test_dataset_boxes_follow_the_transformed_object(small_set, split, train):
    ds = build_dataset("synthetic", str(small_set), split, num_segments=6, input_size=40, train=train,
                       synthetic=SMALL)
    checked = 0
    for epoch in range(3):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            item = ds[i]
            assert item["object_boxes"].dtype == torch.float32 and item["object_boxes"].shape == (6, 4)
            assert item["object_visible"].dtype == torch.bool and item["object_visible"].shape == (6,)
            strong = _object_pixels(item["video"])
            for t in range(6):
                x1, y1, x2, y2 = item["object_boxes"][t].tolist()
                ys, xs = np.nonzero(strong[t])
                if item["object_visible"][t] and (x2 - x1) * (y2 - y1) > 16:
                    assert len(xs) > 0
                    checked += 1
                if len(xs):                                   # every saturated pixel lies in the box
                    assert item["object_visible"][t]
                    assert xs.min() >= x1 - 2 and xs.max() + 1 <= x2 + 2 and ys.min() >= y1 - 2 and ys.max() + 1 <= y2 + 2
    assert checked > 3


@pytest.mark.slow
def test_default_size_generates_in_under_a_minute(tmp_path):
    started = time.perf_counter()
    synthetic.generate(str(tmp_path / "default"))
    seconds = time.perf_counter() - started
    params = synthetic.read_marker(str(tmp_path / "default"))
    assert params["train_videos"] == synthetic_options.DEFAULTS["train_videos"]
    assert seconds < 60, f"default synthetic set took {seconds:.1f} s"


def test_generation_reports_progress_outside_a_terminal(tmp_path, capsys):
    from datasets import synthetic as synthetic_module

    synthetic_module.generate(str(tmp_path / "d"), train_videos=20, val_videos=4, frames_per_video=4, frame_size=32,
                              num_classes=2, workers=1)
    err = capsys.readouterr().err
    assert "synthetic train: 2/20 videos" in err and "synthetic train: 20/20 videos" in err
    assert "synthetic val: 4/4 videos" in err


def test_twin_classes_differ_only_in_a_fine_checker():
    """Twins share shape, hue and mean colour; the second is checkered in 2-pixel cells (bright and
    black), which a 3x antialiased downscale (the main job's coarse glance) averages away."""
    import torch
    from models.backbones import downscale

    names = [synthetic_render.class_appearance(c, 5, twin_classes=2)[0] for c in range(5)]
    assert names == ["disk hue 0 flat", "disk hue 0 checkered", "square hue 120 flat", "square hue 120 checkered",
                     "triangle hue 240"]
    assert [synthetic_render.appearance_group(c, 5, 2)[0] for c in range(5)] == [0, 0, 1, 1, 2]
    flat, checkered = (synthetic_render.class_texture(c, 5, 2, 48) for c in (0, 1))
    assert np.ptp(flat, axis=(0, 1)).max() == 0 and np.ptp(checkered, axis=(0, 1)).max() == 255
    assert np.abs(checkered.mean(axis=(0, 1)) - flat[0, 0]).max() <= 1.0           # the same mean colour
    assert np.array_equal(checkered[:2, :2], np.broadcast_to(checkered[0, 0], (2, 2, 3)))  # 2-pixel cells
    texture = torch.from_numpy(np.ascontiguousarray(checkered)).permute(2, 0, 1)[None]
    third, half = (downscale(texture, 48 // k, antialias=True)[0, :, 1:-1, 1:-1] for k in (3, 2))
    mean = torch.tensor(flat[0, 0]).view(3, 1, 1)
    assert (third - mean).abs().max() < 0.02 * 255   # gone at a third of the resolution
    assert (half - mean).abs().max() > 0.05 * 255    # but not at half of it
    with pytest.raises(ValueError, match="twin_classes"):
        synthetic_options.resolve_params(num_classes=5, twin_classes=3)


def test_checker_cell_sets_the_twins_detail_and_the_glance_it_hides_from():
    """``checker_cell`` = 3 draws 3-pixel cells: still the flat twin's mean colour, averaged away by a 4x
    antialiased downscale but not by a 3x one (so it needs a glance at a quarter of the resolution)."""
    import torch
    from models.backbones import downscale

    flat, checkered = (synthetic_render.class_texture(c, 5, 2, 96, cell=3) for c in (0, 1))
    assert np.abs(checkered.mean(axis=(0, 1)) - flat[0, 0]).max() <= 1.0
    assert np.array_equal(checkered[:3, :3], np.broadcast_to(checkered[0, 0], (3, 3, 3)))  # 3-pixel cells
    assert not np.array_equal(checkered[:, 3], checkered[:, 2])
    texture = torch.from_numpy(np.ascontiguousarray(checkered)).permute(2, 0, 1)[None]
    third, quarter = (downscale(texture, 96 // k, antialias=True)[0, :, 1:-1, 1:-1] for k in (3, 4))
    mean = torch.tensor(flat[0, 0]).view(3, 1, 1)
    assert (quarter - mean).abs().max() < 0.025 * 255
    assert (third - mean).abs().max() > 0.1 * 255
    params = synthetic_options.resolve_params(num_classes=2, twin_classes=1, frame_size=64, frames_per_video=3,
                                              checker_cell=3)
    frames, boxes, visible = synthetic_render.render_video([0, 0, 0], 1, params, None)
    f = int(np.nonzero(visible)[0][0])
    x1, y1, x2, y2 = (int(v) for v in boxes[f])
    inner = frames[f, (y1 + y2) // 2 - 3:(y1 + y2) // 2 + 3, (x1 + x2) // 2 - 3:(x1 + x2) // 2 + 3].astype(int)
    assert np.ptp(inner) > 150                                   # the rendered twin is checkered
    two = synthetic_render.render_video([0, 0, 0], 1, dict(params, checker_cell=2), None)[0]
    ys, xs = np.nonzero((two[f] != frames[f]).any(axis=-1))  # the cell size changes the object only
    assert len(ys) and x1 <= xs.min() and xs.max() < x2 and y1 <= ys.min() and ys.max() < y2


def test_chroma_subsampling_is_a_generation_option(tmp_path):
    """JPEG frames keep full colour resolution with chroma_subsampling="4:4:4" (4:2:0 would blend a twin's
    fine coloured checker into other colours); other values are refused."""
    from PIL import Image, JpegImagePlugin

    root = synthetic.generate(str(tmp_path / "d"), train_videos=2, val_videos=1, frames_per_video=3, frame_size=32,
                              num_classes=2, workers=1, chroma_subsampling="4:4:4", quality=95)
    frame = next((tmp_path / "d" / "frames").rglob("*.jpg"))
    with Image.open(frame) as im:
        assert JpegImagePlugin.get_sampling(im) == 0  # 4:4:4
    assert synthetic.read_marker(root)["chroma_subsampling"] == "4:4:4"
    assert synthetic_options.resolve_params()["chroma_subsampling"] == "4:2:0"  # the default frames are unchanged
    with pytest.raises(ValueError, match="chroma_subsampling must be one of 4:4:4, 4:2:2, 4:2:0"):
        synthetic_options.resolve_params(chroma_subsampling="4:1:1")


def test_video_files_hold_the_rendered_frames_exactly(tmp_path):
    """``video_files=True`` (lossless ffv1): one .mkv per video, named by the list and box files; its frames,
    read as the dataset reads them, equal the generator's; a dataset of them builds with video_files=True."""
    from datasets.video_frames import VideoFrameReader

    root = tmp_path / "videos"
    synthetic.generate(str(root), workers=1, **dict(SMALL, video_files=True))
    params = synthetic_options.resolve_params(**dict(SMALL, video_files=True))
    for split, code in synthetic.SPLIT_CODES.items():
        records = parse_list_file(str(root / f"synthetic_{split}_split.txt"), separator=",", multi_label=True,
                                  num_classes=3)
        assert [r.path for r in records] == [f"{split}_{i:05d}.mkv" for i in range(SMALL[f"{split}_videos"])]
        assert sorted(os.listdir(root / "frames")) == sorted(
            f"{s}_{i:05d}.mkv" for s in synthetic.SPLIT_CODES for i in range(SMALL[f"{s}_videos"]))
        boxes = read_boxes(str(root / f"object_boxes_{split}.csv"))
        for i, record in enumerate(records):
            frames, rendered_boxes, visible = synthetic_render.render_video((SMALL["seed"], code, i), record.labels[0],
                                                                            params, None)
            reader = VideoFrameReader(str(root / "frames" / record.path), num_frames=record.num_frames)
            decoded = reader.read(range(1, SMALL["frames_per_video"] + 1))
            assert decoded.shape == frames.shape and np.array_equal(decoded, frames), record.path
            np.testing.assert_allclose(boxes[record.path][0], rendered_boxes, atol=0.01)
            assert np.array_equal(boxes[record.path][1], visible)
    dataset = build_dataset("synthetic", str(root), "val", num_segments=4, input_size=32, video_files=True,
                            synthetic=dict(SMALL, video_files=True))
    item = dataset[0]
    assert item["video"].shape == (4, 3, 32, 32) and item["object_boxes"].shape == (4, 4)
    with pytest.raises(ListFileError, match="video_files=True"):      # the frame-folder reading points to the flag
        build_dataset("synthetic", str(root), "val", num_segments=4, input_size=32,
                      synthetic=dict(SMALL, video_files=True))


def test_h264_video_files_have_their_key_frame_interval(tmp_path):
    """``video_codec='h264'``: .mp4 files with a key frame every ``key_frame_interval`` frames, close to the
    rendered frames (lossy, constant quality 18)."""
    from datasets.video_frames import VideoFrameReader
    from datasets.video_table import read_timing

    options = dict(SMALL, train_videos=1, val_videos=1, frames_per_video=30, video_files=True, video_codec="h264",
                   key_frame_interval=12)
    synthetic.generate(str(tmp_path / "h264"), workers=1, **options)
    video = tmp_path / "h264" / "frames" / "val_00000.mp4"
    timing = read_timing(str(video))
    assert timing.count == 30 and timing.keys.tolist() == [0, 12, 24]
    label = parse_list_file(str(tmp_path / "h264" / "synthetic_val_split.txt"), separator=",", multi_label=True,
                            num_classes=3)[0].labels[0]
    frames = synthetic_render.render_video((SMALL["seed"], 1, 0), label, synthetic_options.resolve_params(**options),
                                           None)[0]
    decoded = VideoFrameReader(str(video)).read(range(1, 31)).astype(int)
    assert np.abs(decoded - frames).mean() < 4
