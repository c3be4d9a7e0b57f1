"""Frame extraction on real videos (OpenCV's samples from Debian's opencv-doc; see conftest.test_videos)."""
import os
import re
import shutil
import sys
from pathlib import Path

import pytest
from PIL import Image

import entry_points
from datasets import build_dataset
from datasets.extract import discover, main
from datasets.video import choose_backend, output_size, printf_template
from datasets.frames import count_frames

pytest.importorskip("av")

# Frames each sample yields at its own rate. tree.avi stores 68 frames on a 15 fps time line of 444
# slots (a variable-rate file): constant-rate output repeats a frame across each gap.
COUNTS = {"Megamind": 270, "Megamind_bugy": 270, "tree": 444, "vtest": 795}
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def videos(test_videos, tmp_path_factory):
    """The four real videos plus three really broken files derived from them."""
    folder = tmp_path_factory.mktemp("videos")
    for name in COUNTS:
        shutil.copy(test_videos / f"{name}.avi", folder / f"{name}.avi")
    data = (test_videos / "Megamind.avi").read_bytes()
    (folder / "cut.avi").write_bytes(data[: len(data) * 3 // 10])             # truncated download
    (folder / "nohead.avi").write_bytes(b"\0" * 4096 + data[4096:])           # header wiped
    (folder / "notes.mp4").write_text("this is not a video\n")
    return folder


@pytest.fixture(scope="module")
def flat_run(videos, tmp_path_factory):
    """One extraction of the flat folder at a small size (shared by several tests)."""
    out = tmp_path_factory.mktemp("flat")
    code = main([str(videos), str(out), "--short_side", "48", "--workers", "2", "--quiet"])
    return out, code


def test_frame_counts_names_and_list(flat_run, capsys):
    out, code = flat_run
    assert code == 1                                            # some videos failed
    frames = out / "frames"
    assert sorted(os.listdir(frames)) == sorted(COUNTS)
    for name, n in COUNTS.items():
        files = sorted(os.listdir(frames / name))
        assert len(files) == n and files[0] == "image_00001.jpg" and files[-1] == f"image_{n:05d}.jpg"
    assert sorted((out / "frame_counts.txt").read_text().splitlines()) == sorted(f"{k},{v}" for k, v in COUNTS.items())
    assert Image.open(frames / "vtest" / "image_00001.jpg").size == (64, 48)     # 768x576 -> short side 48


def test_broken_videos_are_reported_and_skipped(flat_run):
    out, _ = flat_run
    report = (out / "extract_failures.txt").read_text().splitlines()
    reasons = {Path(line.split("\t")[0]).name: line.split("\t")[1] for line in report}
    assert set(reasons) == {"cut.avi", "nohead.avi", "notes.mp4"}
    assert re.search(r"truncated: decoded [23]\.\d\d s of the 11\.26 s declared \(\d+ frames\)", reasons["cut.avi"])
    assert "no video stream" in reasons["nohead.avi"]
    assert "cannot decode" in reasons["notes.mp4"]
    leftovers = [n for n in os.listdir(out / "frames") if n.startswith(".") or n in ("cut", "nohead", "notes")]
    assert leftovers == []


def test_resume_skips_finished_videos_and_redoes_the_rest(videos, tmp_path, capsys):
    out = tmp_path / "out"
    small = [str(videos), str(out), "--short_side", "24", "--workers", "1", "--quiet",
             "--extensions", ".avi"]
    keep = tmp_path / "subset"
    keep.mkdir()
    for name in ("Megamind.avi", "tree.avi", "cut.avi"):
        shutil.copy(videos / name, keep / name)
    small[0] = str(keep)
    assert main(small) == 1
    first = out / "frames" / "Megamind" / "image_00001.jpg"
    stamp = first.stat().st_mtime_ns
    shutil.rmtree(out / "frames" / "tree")                                       # lost folder
    (out / "frames" / ".Megamind.part").mkdir()                                  # stale temp of a crash
    capsys.readouterr()
    assert main(small) == 1
    summary = capsys.readouterr().out
    assert "extracted 1 video(s) (444 frames), 1 already done, 1 failed" in summary
    assert "FAILED: " in summary and "cut.avi: truncated" in summary
    assert first.stat().st_mtime_ns == stamp                                     # finished video untouched
    assert count_frames(str(out / "frames" / "tree"), "image_{:05d}.jpg") == 444
    assert (out / "frame_counts.txt").read_text().splitlines() == ["Megamind,270", "tree,444"]


def test_allow_truncated_keeps_the_partial_video(videos, tmp_path):
    folder = tmp_path / "v"
    folder.mkdir()
    shutil.copy(videos / "cut.avi", folder / "cut.avi")
    assert main([str(folder), str(tmp_path / "o"), "--short_side", "16", "--allow_truncated", "--quiet"]) == 0
    name, count = (tmp_path / "o" / "frame_counts.txt").read_text().strip().split(",")
    assert name == "cut" and 60 <= int(count) <= 90                            # 30 % of the bytes


def test_default_short_side_is_360(test_videos, tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text(f"{test_videos / 'Megamind_bugy.avi'}\n")           # a list file as input
    assert main([str(listing), str(tmp_path / "o"), "--quiet"]) == 0
    frame = tmp_path / "o" / "frames" / "Megamind_bugy" / "image_00001.jpg"
    assert Image.open(frame).size == (491, 360)                                  # 720x528 -> short side 360
    assert count_frames(str(frame.parent), "image_{:05d}.jpg") == 270


@pytest.mark.parametrize("name, fps, expected", [("tree", 5, 148), ("Megamind", 10, 113)])
def test_fps_option(videos, tmp_path, name, fps, expected):
    folder = tmp_path / "v"
    folder.mkdir()
    shutil.copy(videos / f"{name}.avi", folder / f"{name}.avi")
    assert main([str(folder), str(tmp_path / "o"), "--short_side", "16", "--fps", str(fps), "--quiet"]) == 0
    assert count_frames(str(tmp_path / "o" / "frames" / name), "image_{:05d}.jpg") == expected   # round(duration·fps)


def test_class_folders_become_a_custom_dataset(videos, tmp_path):
    src = tmp_path / "by class"
    for cls, names in {"dancing": ["Megamind", "tree"], "walking": ["tree", "Megamind_bugy"]}.items():
        (src / cls).mkdir(parents=True)
        for name in names:
            os.link(videos / f"{name}.avi", src / cls / f"{name} clip.avi")
    out = tmp_path / "my data"
    assert main([str(src), str(out), "--short_side", "20", "--val_fraction", "0.5", "--workers", "2", "--quiet"]) == 0
    assert (out / "classInd.txt").read_text().splitlines() == ["dancing", "walking"]
    train = (out / "train_split.txt").read_text().splitlines()
    val = (out / "val_split.txt").read_text().splitlines()
    assert len(train) == len(val) == 2
    assert sorted(train + val) == sorted(["dancing/Megamind clip,270,0", "dancing/tree clip,444,0",
                                          "walking/tree clip,444,1", "walking/Megamind_bugy clip,270,1"])
    ds = build_dataset("custom", str(out), "val", num_segments=8, input_size=16)   # reads dataset.json
    assert len(ds) == 2 and ds[0]["video"].shape == (8, 3, 16, 16)
    assert {ds[i]["label"].item() for i in range(2)} == {0, 1}                     # one of each class


def test_minik_format_and_train_val_folders(videos, tmp_path):
    src = tmp_path / "src"
    for split, cls, name in [("train", "a b", "Megamind"), ("val", "a b", "Megamind_bugy"), ("val", "c", "tree")]:
        (src / split / cls).mkdir(parents=True, exist_ok=True)
        os.link(videos / f"{name}.avi", src / split / cls / f"{name}.avi")
    out = tmp_path / "mk"
    assert main([str(src), str(out), "--format", "minik", "--short_side", "16", "--quiet"]) == 0
    assert (out / "mini_train_videofolder.txt").read_text() == "a b/Megamind 270 0\n"
    assert (out / "mini_val_videofolder.txt").read_text() == "a b/Megamind_bugy 270 0\nc/tree 444 1\n"
    assert (out / "a b" / "Megamind" / "img_00270.jpg").is_file()
    ds = build_dataset("minik", str(out), "val", num_segments=4, input_size=8)
    assert [r.path for r in ds.records] == ["a b/Megamind_bugy", "c/tree"]


def test_discovery_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no video files"):
        discover(str(tmp_path / "empty"))
    mixed = tmp_path / "mixed"
    (mixed / "cls").mkdir(parents=True)
    (mixed / "a.mp4").write_bytes(b"")
    (mixed / "cls" / "b.mp4").write_bytes(b"")
    with pytest.raises(ValueError, match="mixed layout"):
        discover(str(mixed))
    assert main([str(tmp_path / "missing"), str(tmp_path / "o"), "--quiet"]) == 2


def test_names_that_cannot_be_listed_are_rejected(videos, tmp_path):
    folder = tmp_path / "v"
    folder.mkdir()
    os.link(videos / "tree.avi", folder / "a,b.avi")
    assert main([str(folder), str(tmp_path / "o"), "--short_side", "16", "--quiet"]) == 1
    assert "contains the list separator" in (tmp_path / "o" / "extract_failures.txt").read_text()


def test_helpers():
    assert output_size(720, 528, 360) == (491, 360) and output_size(360, 640, 128) == (128, 228)
    assert output_size(100, 50, 0) == (100, 50)
    assert printf_template("image_{:05d}.jpg") == "image_%05d.jpg"
    assert printf_template("100%_{}.png") == "100%%_%d.png"
    assert choose_backend("auto") == "pyav"


def test_command_line_entry_point(test_videos, tmp_path):
    listing = tmp_path / "l.txt"
    listing.write_text(str(test_videos / "tree.avi") + "\n")
    run = entry_points.run([sys.executable, "-m", "datasets.extract", str(listing), str(tmp_path / "o"),
                            "--short_side", "16", "--template", "frame{:04d}.jpg", "--quiet"], timeout=300)
    assert run.returncode == 0, run.stderr
    assert "extracted 1 video(s) (444 frames)" in run.stdout
    assert (tmp_path / "o" / "frames" / "tree" / "frame0444.jpg").is_file()


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="no ffmpeg binary on PATH")
def test_ffmpeg_backend(videos, tmp_path):
    folder = tmp_path / "v"
    folder.mkdir()
    for name in ("Megamind_bugy", "vtest"):
        shutil.copy(videos / f"{name}.avi", folder / f"{name}.avi")
    (folder / "notes.mp4").write_text("not a video")
    assert main([str(folder), str(tmp_path / "o"), "--backend", "ffmpeg", "--short_side", "16", "--quiet"]) == 1
    assert (tmp_path / "o" / "frame_counts.txt").read_text().splitlines() == ["Megamind_bugy,270", "vtest,795"]
    assert Image.open(tmp_path / "o" / "frames" / "vtest" / "image_00001.jpg").size == (21, 16)
    assert "ffmpeg failed" in (tmp_path / "o" / "extract_failures.txt").read_text()


def test_display_rotation_is_applied_like_ffmpeg(tmp_path):
    import av
    import numpy as np
    folder = tmp_path / "v"
    folder.mkdir()
    container = av.open(str(folder / "phone.mp4"), "w")
    stream = container.add_stream("mpeg4", rate=10)
    stream.width, stream.height, stream.pix_fmt = 64, 32, "yuv420p"
    stream.set_display_rotation(90)                     # counter-clockwise, as a phone records portrait
    image = np.zeros((32, 64, 3), dtype=np.uint8)
    image[:8, :16] = 255                                 # white block at the top-left
    for _ in range(3):
        for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()
    assert main([str(folder), str(tmp_path / "o"), "--short_side", "0", "--quiet"]) == 0
    frame = np.asarray(Image.open(tmp_path / "o" / "frames" / "phone" / "image_00001.jpg").convert("L"))
    assert frame.shape == (64, 32)                       # portrait, as ffmpeg writes it
    ys, xs = np.nonzero(frame > 128)
    assert ys.min() >= 46 and xs.max() <= 9              # the block ends at the bottom-left
