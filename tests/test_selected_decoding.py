"""Selected-frame decoding (datasets/selected_frames.py): evaluation decodes the glance frames in the loader
and afterwards only the focus frames the policy selects, with exactly the full path's tensors and logits.

The fixture is an ActivityNet-layout folder of JPEG frames (80 x 60, smooth patterns plus noise, like
video frames); T0 = 8 candidates, T_G = 4 glance frames at positions 1, 3, 5, 7. Most tests use T_L = 6
focus frames, so that at least two of them are not glance frames whatever the policy chooses. One video
has 5 frames for 8 candidates, so some positions share a frame file.
"""
from __future__ import annotations

import os
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import datasets.frames
from datasets import FrameError, FrameFeed, build_dataset, collate_items
from ops import build, config, evaluation, loaders
from ops import distributed as dist_ops
from ops.early_exit import LAST_STAGE_THRESHOLD, NO_EXIT_THRESHOLD, AdaptiveRunner
import entry_points
from support import tiny_model

VIDEOS = [("long one", 20, 0), ("short", 5, 1), ("mid", 13, 2), ("nine", 9, 1)]
T0, GLANCE = 8, [1, 3, 5, 7]
SIZE = (80, 60)
MODEL_FLAGS = ["--num_segments", "8", "--num_glance_segments", "4", "--num_focus_segments", "6", "--input_size", "64",
               "--patch_size", "32", "--focus_arch", "resnet18", "--classifier_dim", "32", "--stn_hidden_dim", "16",
               "--temporal_hidden_dim", "8", "--no-pretrained"]


def _frame(video: int, index: int) -> Image.Image:
    rng = np.random.default_rng(1000 * video + index)
    y, x = np.mgrid[0:SIZE[1], 0:SIZE[0]]
    pattern = np.stack([128 + 90 * np.sin(x / (5 + c) + y / (9 + 2 * c) + index + video) for c in range(3)], -1)
    return Image.fromarray(np.clip(pattern + rng.normal(0, 15, pattern.shape), 0, 255).astype(np.uint8))


def make_data(root: Path) -> Path:
    (root / "frames").mkdir(parents=True)
    (root / "classInd.txt").write_text("walk\nrun\njump\n")
    for v, (name, frames, _) in enumerate(VIDEOS):
        (root / "frames" / name).mkdir()
        for i in range(1, frames + 1):
            _frame(v, i).save(root / "frames" / name / f"image_{i:05d}.jpg", quality=90)
    (root / "actnet_val_split.txt").write_text("".join(f"{n},{f},{label}\n" for n, f, label in VIDEOS))
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_data(tmp_path_factory.mktemp("selected") / "data")


def full_and_selected(root: Path, **options):
    """The dataset of every frame, and the one that decodes the glance positions only."""
    full = build_dataset("actnet", str(root), "val", num_segments=T0, input_size=64,
                         test_crops=options.get("test_crops", 1))
    selected = build_dataset("actnet", str(root), "val", num_segments=T0, input_size=64,
                             decode_positions=GLANCE, **options)
    return full, selected


def full_videos(full) -> torch.Tensor:
    """(B, T0, 3, S, S), or (B*V, T0, 3, S, S) with views, as evaluation flattens them."""
    video = torch.stack([full[i]["video"] for i in range(len(full))])
    return video.flatten(0, 1) if video.dim() == 6 else video


def feed_batch(feed: FrameFeed, dataset):
    return feed.batch(collate_items([dataset[i] for i in range(len(dataset))]))


@pytest.fixture
def opened(monkeypatch):
    """Counter of the frame files Pillow opens (in this process: items and the feed's threads)."""
    counts = Counter()
    original = datasets.frames.open_frame

    def counting(path):
        counts[path] = counts[path] + 1
        return original(path)

    monkeypatch.setattr(datasets.frames, "open_frame", counting)
    return counts


def frame_files(dataset, video: int, positions) -> set:
    reader = dataset.reader(video)
    return {reader.path(n) for n in dataset.frame_indices(video)[list(positions)]}


def distinct_files(dataset, video: int, positions) -> int:
    return len(frame_files(dataset, video, positions))


# ------------------------------------------------------------------------------------------------
# frames
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("test_crops", [1, 3])
def test_a_frame_decoded_on_its_own_is_exactly_the_full_clips_frame(data, test_crops):
    full, selected = full_and_selected(data, test_crops=test_crops)
    item = selected[1]
    assert "video" not in item and item["frames"].shape[-4] == len(GLANCE) and item["frame_size"].tolist() == list(SIZE)
    expected = full_videos(full)
    with FrameFeed(selected, "cpu", threads=2) as feed:
        part = feed_batch(feed, selected)
        assert part.video.shape == expected.shape and part.views == test_crops
        assert part.filled.sum(1).tolist() == [len(GLANCE)] * len(VIDEOS)
        assert torch.equal(part.video[:, GLANCE], expected[:, GLANCE])
        others = [p for p in range(T0) if p not in GLANCE]
        assert not part.video[:, others].any()  # never decoded: zero
        part.require(torch.arange(T0).expand(part.video.shape[0], T0))
        assert torch.equal(part.video, expected)
        assert part.decoded.tolist() == [distinct_files(full, v, range(T0)) for v in range(len(VIDEOS))]
        # the next batch reuses the memory: nothing of this one shows through
        second = feed.batch(collate_items([selected[i] for i in (3, 0)]))
        rows = [3 * test_crops + v for v in range(test_crops)] + list(range(test_crops))  # videos 3 and 0
        assert torch.equal(second.video[:, GLANCE], expected[rows][:, GLANCE])
        assert not second.video[:, others].any() and second.decoded.tolist() == [4, 4]


def test_evaluation_logits_equal_the_full_path_and_only_the_selected_frames_are_decoded(data, opened):
    torch.manual_seed(0)
    model = tiny_model(num_classes=3, num_focus_segments=6).eval()
    full, selected = full_and_selected(data)
    video = full_videos(full)
    with torch.no_grad():
        expected = model(video)
    opened.clear()
    with torch.no_grad(), FrameFeed(selected, "cpu", threads=2) as feed:
        part = feed_batch(feed, selected)
        calls = []
        out = model(part.video, before_focus=lambda idx, rows: (calls.append(idx.clone()), part.require(idx, rows)))
    assert len(calls) == 1 and torch.equal(calls[0], out.focus_indices)
    for name in ("exit_logits", "glance_logits", "focus_logits", "focus_indices", "patch_boxes"):
        assert torch.equal(getattr(out, name), getattr(expected, name)), name
    for v in range(len(VIDEOS)):
        needed = frame_files(full, v, GLANCE) | frame_files(full, v, out.focus_indices[v].tolist())
        assert int(part.decoded[v]) == len(needed)
        assert {p for p in opened if f"/{VIDEOS[v][0]}/" in p} == needed
    assert set(opened.values()) == {1}  # every file opened once, a glance frame chosen for focus included


def test_frames_shared_by_positions_are_decoded_once(data, opened):
    full, selected = full_and_selected(data)
    short = 1  # 5 frames for 8 candidates: positions (0, 1), (3, 4) and (6, 7) share a file
    numbers = full.frame_indices(short)
    assert numbers.tolist() == [1, 1, 2, 3, 3, 4, 5, 5]
    expected = full_videos(full)
    opened.clear()
    with FrameFeed(selected, "cpu", threads=1) as feed:
        part = feed_batch(feed, selected)
        assert int(part.decoded[short]) == 4  # positions 1, 3, 5, 7: frames 1, 3, 4, 5
        rows = torch.tensor([short])
        part.require(torch.tensor([[0, 4, 6, 7]]), rows)  # the files of glance positions 1, 3, 5 and 7
        assert int(part.decoded[short]) == 4
        part.require(torch.tensor([[2]]), rows)  # frame 2: the only new file
        assert int(part.decoded[short]) == 5
        assert torch.equal(part.video[short], expected[short])
    assert sum(n for path, n in opened.items() if "/short/" in path) == 5


def test_early_exit_decodes_the_focus_frames_of_the_steps_taken_only(data, opened):
    torch.manual_seed(1)
    model = tiny_model(num_classes=3, num_focus_segments=6).eval()
    full, selected = full_and_selected(data)
    stages = model.num_exit_stages  # 7: the glance, then one per focus frame
    runner = AdaptiveRunner(model, [NO_EXIT_THRESHOLD] * (stages - 1) + [LAST_STAGE_THRESHOLD], "entropy",
                            flops=[float(k) for k in range(stages)])
    exits = torch.tensor([0, 3, 6, 1])  # video 0 leaves at the glance
    video = full_videos(full)
    with torch.no_grad():
        expected = runner.run(video, forced_exits=exits)
        focus = model(video).focus_indices  # (B, T_L) the policy's frames, in step order
    opened.clear()
    with torch.no_grad(), FrameFeed(selected, "cpu", threads=2) as feed:
        part = feed_batch(feed, selected)
        result = runner.run(part.video, forced_exits=exits, before_focus=part.require)
    assert torch.equal(result.logits, expected.logits) and torch.equal(result.exit_stage, exits)
    for v, k in enumerate(exits.tolist()):
        needed = frame_files(full, v, GLANCE) | frame_files(full, v, focus[v, :k].tolist())
        assert int(part.decoded[v]) == len(needed)
        assert {p for p in opened if f"/{VIDEOS[v][0]}/" in p} == needed
    glance_exit = frame_files(full, 0, GLANCE)
    assert {p for p in opened if f"/{VIDEOS[0][0]}/" in p} == glance_exit  # no focus frame of the glance exit
    assert set(opened.values()) == {1}


# ------------------------------------------------------------------------------------------------
# the evaluation loop and its flags
# ------------------------------------------------------------------------------------------------
def _evaluate(data: Path, tmp_path: Path, *flags, device: str = "cpu"):
    args = config.parse_args(["--dataset", "actnet", "--data_dir", str(data), "--evaluate", "--device", device,
                              "--val_batch_size", "3", "--num_visualised", "0", "--root_log", str(tmp_path)]
                             + MODEL_FLAGS + list(flags))
    info = dist_ops.DistInfo(device=torch.device(device))
    torch.manual_seed(3)
    _, _, val_set, loader = loaders.build_loaders(args, info)
    model = build.build_model(args, val_set.num_classes, info).eval()
    return val_set, evaluation.evaluate(model, loader, args, info, visualise=2)


def test_evaluation_decodes_selected_frames_by_default_and_all_with_decode_all_frames(data, tmp_path):
    selected_set, selected = _evaluate(data, tmp_path, "--workers", "1")
    full_set, full = _evaluate(data, tmp_path, "--workers", "0", "--decode_all_frames")
    assert selected_set.deferred and selected_set.decode_positions.tolist() == GLANCE and not selected_set.jpeg_bytes
    assert not full_set.deferred and "video" in full_set[0]
    for key in ("prediction", "exits", "focus_indices", "patch_boxes"):
        assert torch.equal(selected.rows[key], full.rows[key]), key
    assert selected.metrics == full.metrics
    # the drawn videos show every candidate frame, as in the full path
    assert len(selected.images) == len(full.images) == 2
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(selected.images, full.images))


def test_variants_with_their_own_glance_clip_keep_the_full_path():
    tsm = config.parse_args(["--variant", "tsm", "--dataset", "something"])
    assert loaders.frame_decoding_options(tsm) == {}
    main = config.parse_args([])
    assert loaders.frame_decoding_options(main) == {"decode_positions": list(range(1, 48, 3))}
    assert loaders.frame_decoding_options(config.parse_args(["--decode_all_frames"])) == {}


@pytest.mark.parametrize("flags, culprit", [
    (["--gpu_decode", "--device", "cpu"], "--gpu_decode decodes on a CUDA device"),
    (["--gpu_decode", "--device", "cuda", "--variant", "tsm", "--dataset", "something"], "--gpu_decode: the tsm"),
])
def test_gpu_decode_refuses_what_it_cannot_do(flags, culprit, capsys):
    with pytest.raises(SystemExit) as exc:
        config.parse_args(flags)
    assert exc.value.code == 2 and culprit in capsys.readouterr().err


def test_datasets_refuse_deferred_items_outside_evaluation(data):
    with pytest.raises(ValueError, match="evaluation clips"):
        build_dataset("actnet", str(data), "val", num_segments=T0, input_size=64, train=True, decode_positions=GLANCE)
    with pytest.raises(ValueError, match="distinct positions"):
        build_dataset("actnet", str(data), "val", num_segments=T0, input_size=64, decode_positions=[1, 8])
    with pytest.raises(ValueError, match="FrameFeed needs"):
        FrameFeed(build_dataset("actnet", str(data), "val", num_segments=T0, input_size=64), "cpu")


# ------------------------------------------------------------------------------------------------
# decoding on the device
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("decode_positions", [GLANCE, None])
def test_device_decoding_runs_on_the_cpu_and_equals_the_pillow_path_exactly(data, decode_positions):
    """``--gpu_decode``'s code path with decode_jpeg on the CPU: libjpeg-turbo, as Pillow, and the same uint8
    resize kernel, so the measured difference is 0 (asserted exactly); the bytes cross a worker process."""
    full = build_dataset("actnet", str(data), "val", num_segments=T0, input_size=64)
    jpeg = build_dataset("actnet", str(data), "val", num_segments=T0, input_size=64, decode_positions=decode_positions,
                         jpeg_bytes=True)
    item = jpeg[0]
    positions = GLANCE if decode_positions else list(range(T0))
    assert "frames" not in item and item["jpeg"].dtype == torch.uint8 and item["jpeg_spans"].shape == (len(positions), 2)
    files = frame_files(full, 0, positions)  # video 0 has 20 frames: one file per position
    assert item["jpeg"].numel() == sum(os.path.getsize(f) for f in files) == int(item["jpeg_spans"][-1, 1])
    start, end = item["jpeg_spans"][0].tolist()
    assert bytes(item["jpeg"][start:end].numpy()) == Path(full.reader(0).path(full.frame_indices(0)[positions[0]])).read_bytes()
    loader = torch.utils.data.DataLoader(jpeg, batch_size=len(VIDEOS), num_workers=1, collate_fn=collate_items)
    batch = next(iter(loader))
    assert len(batch["jpeg"]) == len(VIDEOS) and batch["jpeg_spans"].shape == (len(VIDEOS), len(positions), 2)
    expected = full_videos(full)
    with FrameFeed(jpeg, "cpu", threads=2) as feed:
        part = feed.batch(batch)
        assert torch.equal(part.video[:, positions], expected[:, positions])
        part.require(torch.arange(T0).expand(len(VIDEOS), T0))
        assert torch.equal(part.video, expected)
        assert part.decoded.tolist() == [distinct_files(full, v, range(T0)) for v in range(len(VIDEOS))]


def decoder_and_geometry_differences(full, device):
    """Per video of ``full``: its T0 frame files decoded by torchvision on the CPU (libjpeg-turbo) and on
    ``device``; returns (absolute differences of the two decoders' images, flattened; the largest difference
    between the evaluation geometry applied on ``device`` to the CPU decoder's images and the CPU path)."""
    from datasets.frames import read_jpeg_file
    from datasets.selected_frames import decode_jpeg_files

    expected, decoder, geometry_max = full_videos(full).int(), [], 0
    for v in range(len(full)):
        files = [read_jpeg_file(full.reader(v).path(i))[0] for i in full.frame_indices(v)]
        on_cpu = torch.stack(decode_jpeg_files(files, "cpu"))  # (T0, 3, H, W)
        on_device = torch.stack(decode_jpeg_files(files, device)).cpu()
        decoder.append((on_device.int() - on_cpu.int()).abs().flatten())
        geometry = full.frame_geometry(on_cpu.shape[-1], on_cpu.shape[-2])
        resized = geometry.apply(on_cpu.to(device), cropped=True).cpu().int()
        geometry_max = max(geometry_max, int((resized - expected[v]).abs().max()))
    return torch.cat(decoder).float(), geometry_max


def test_decoder_and_geometry_differences_are_zero_on_the_cpu(data):
    """The measurement of the GPU test below, on the CPU: both differences vanish (the CPU decoder is
    Pillow's libjpeg-turbo, the geometry the CPU path's own)."""
    full = build_dataset("actnet", str(data), "val", num_segments=T0, input_size=64)
    decoder, geometry_max = decoder_and_geometry_differences(full, "cpu")
    assert decoder.numel() > 0 and decoder.max() == 0 and geometry_max == 0


@pytest.mark.gpu
def test_gpu_decoding_differs_from_the_cpu_path_by_the_decoder_alone(data, tmp_path):
    """nvjpeg's inverse DCT and chroma upsampling are not libjpeg-turbo's, so --gpu_decode's frames differ
    from the CPU path's; the geometry must add
    nothing beyond rounding. Measured on the fixture's files: the device geometry (crop, resize) applied to
    the CPU decoder's images is within 1 level of the CPU path (the CUDA resize interpolates in float32 and
    rounds); end to end, the frames are no further from the CPU path than the two decoders are from each
    other (plus half a level of that rounding), and far closer than the same frames shifted by one pixel
    (a geometry error) or than what a colour-channel mix-up gives. On an H200 with these noisy frames: decoders
    4.7 levels apart on average (max 29), device geometry within 1, end to end 3.0 (one-pixel shift 11.0,
    channels swapped 65.6)."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device: --gpu_decode decodes with nvjpeg on the GPU")
    full = build_dataset("actnet", str(data), "val", num_segments=T0, input_size=64)
    jpeg = build_dataset("actnet", str(data), "val", num_segments=T0, input_size=64, decode_positions=GLANCE,
                         jpeg_bytes=True)
    decoder, geometry_max = decoder_and_geometry_differences(full, "cuda")
    expected = full_videos(full).int()
    with FrameFeed(jpeg, "cuda") as feed:
        part = feed_batch(feed, jpeg)
        assert part.video.is_cuda
        part.require(torch.arange(T0).expand(len(VIDEOS), T0))
        got = part.video.cpu().int()
    difference = (got - expected).abs().float()
    shifted = (expected.roll(1, dims=-1) - expected).abs().float().mean()
    swapped = (expected.flip(-3) - expected).abs().float().mean()
    print(f"decoders (nvjpeg vs libjpeg-turbo, full frames): mean |diff| {decoder.mean():.3f}, max "
          f"{decoder.max():.0f}; device geometry on the CPU decoder's images: max |diff| {geometry_max}; "
          f"end to end: mean |diff| {difference.mean():.3f}, max {difference.max():.0f}; one-pixel shift "
          f"{shifted:.2f}, channels swapped {swapped:.2f}")
    assert geometry_max <= 1
    assert difference.mean() <= decoder.mean() + 0.5
    assert difference.mean() < min(shifted, swapped) / 2
    # the evaluation loop with --gpu_decode: bytes from a worker, frames decoded on the GPU
    jpeg_set, on_gpu = _evaluate(data, tmp_path, "--workers", "1", "--gpu_decode", device="cuda")
    _, on_cpu = _evaluate(data, tmp_path, "--workers", "0", device="cuda")
    assert jpeg_set.jpeg_bytes and jpeg_set.decode_positions.tolist() == GLANCE
    assert on_gpu.rows["index"].tolist() == on_cpu.rows["index"].tolist() == list(range(len(VIDEOS)))
    assert torch.isfinite(on_gpu.rows["prediction"]).all()
    print(f"evaluation logits, --gpu_decode vs CPU decoding: max |diff| "
          f"{(on_gpu.rows['prediction'] - on_cpu.rows['prediction']).abs().max():.4f}")


# ------------------------------------------------------------------------------------------------
# bad frames found late, in the main process
# ------------------------------------------------------------------------------------------------
def _broken(tmp_path: Path, data: Path, break_frame) -> Path:
    """A copy of the data whose video 'mid' has its non-glance frames broken by ``break_frame(path)``."""
    import shutil

    root = tmp_path / "data"
    shutil.copytree(data, root)
    full = build_dataset("actnet", str(root), "val", num_segments=T0, input_size=64)
    for path in sorted(frame_files(full, 2, range(T0)) - frame_files(full, 2, GLANCE)):
        break_frame(Path(path))
    return root


@pytest.mark.parametrize("jpeg_bytes", [False, True])
@pytest.mark.parametrize("damage, message", [
    ("missing", r"actnet_val_split.txt:3 \(video 'mid'\): frame \d+ is missing: .*/mid/image_000\d\d.jpg"),
    ("corrupt", r"actnet_val_split.txt:3 \(video 'mid'\): frame \d+ cannot be decoded: .*/mid/image_000\d\d.jpg"),
    ("truncated", r"actnet_val_split.txt:3 \(video 'mid'\): frame \d+ cannot be decoded: .*/mid/image_000\d\d.jpg"),
    ("resized", r"actnet_val_split.txt:3 \(video 'mid'\): frame \d+ has size 40x30 but frame \d+ has 80x60: "
                r".*/mid/image_000\d\d.jpg"),
])
def test_a_bad_focus_frame_found_late_names_its_file(tmp_path, data, damage, message, jpeg_bytes):
    def damage_frame(path: Path):
        if damage == "missing":
            path.unlink()
        elif damage == "corrupt":
            path.write_bytes(b"\xff\xd8\xff\xe0 not a jpeg at all")
        elif damage == "truncated":  # the header is fine: the decoder finds the damage (on the device)
            path.write_bytes(path.read_bytes()[:600])
        else:
            _frame(2, 1).resize((40, 30)).save(path)

    root = _broken(tmp_path, data, damage_frame)
    _, selected = full_and_selected(root, jpeg_bytes=jpeg_bytes)
    with FrameFeed(selected, "cpu", threads=2) as feed:
        part = feed_batch(feed, selected)  # the glance frames are fine
        with pytest.raises(FrameError, match=message) as exc:
            part.require(torch.arange(T0).expand(len(VIDEOS), T0))
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize("jpeg_bytes", [False, True])
def test_missing_frames_repeat_first_substitutes_late_frames_as_the_full_path_does(tmp_path, data, jpeg_bytes):
    root = _broken(tmp_path, data, lambda path: path.name != "image_00001.jpg" and path.unlink())  # the substitute stays
    options = dict(num_segments=T0, input_size=64, missing_frames="repeat_first")
    expected = full_videos(build_dataset("actnet", str(root), "val", **options))
    selected = build_dataset("actnet", str(root), "val", decode_positions=GLANCE, jpeg_bytes=jpeg_bytes, **options)
    with FrameFeed(selected, "cpu", threads=2) as feed:
        part = feed_batch(feed, selected)
        part.require(torch.arange(T0).expand(len(VIDEOS), T0))
    assert torch.equal(part.video, expected)


def test_a_missing_focus_frame_stops_an_evaluation_with_one_error_line(tmp_path, data):
    """T_L = 6 of 8 candidates: whatever the policy picks, two focus frames are not glance frames."""
    root = _broken(tmp_path, data, lambda path: path.unlink())
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("UNIADAFOCUS_DEBUG", None)
    run = entry_points.run([sys.executable, "main.py", "--dataset", "actnet", "--data_dir", str(root), "--evaluate",
                            "--root_log", str(tmp_path / "runs"), "--workers", "1", "--device", "cpu",
                            "--no-tensorboard", "--num_visualised", "0", "--val_batch_size", "4"] + MODEL_FLAGS,
                           env=env, timeout=300)
    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr[-3000:]
    errors = [line for line in run.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "is missing" in errors[0] and "/mid/image_000" in errors[0], errors
