"""scripts/bench_decoders.py on a tiny video written here with PyAV: the PyAV-only path runs and reports its
rows and the frame check, a missing candidate is one line, a clip of other frames is caught, bad flags
are one error line."""
import dataclasses

import numpy as np
import pytest

from scripts import bench_decoders

FRAMES, SIZE = 30, (64, 48)


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """A folder holding one MPEG-4 video of 30 distinct frames (a square moving over a gradient), a key
    frame every 10."""
    import av

    folder = tmp_path_factory.mktemp("bench_decoders")
    with av.open(str(folder / "moving.mp4"), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = SIZE[0], SIZE[1], "yuv420p"
        stream.codec_context.gop_size = 10
        for i in range(FRAMES):
            pixels = np.zeros((SIZE[1], SIZE[0], 3), dtype=np.uint8)
            pixels[..., 0] = np.linspace(0, 200, SIZE[0], dtype=np.uint8)[None]
            pixels[10:26, 2 * i: 2 * i + 16] = (255, 255, 0)
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return folder


def _only(monkeypatch, missing: str):
    """The backends with ``missing`` made a module that is not installed anywhere."""
    backends = [dataclasses.replace(b, module=f"uniadafocus_no_such_module_{b.name}") if b.name == missing else b
                for b in bench_decoders.BACKENDS]
    monkeypatch.setattr(bench_decoders, "BACKENDS", backends)


def test_the_pyav_path_reports_speed_rows_and_the_frame_check_and_a_missing_candidate_in_one_line(videos, capsys,
                                                                                                monkeypatch):
    _only(monkeypatch, "decord")
    code = bench_decoders.main(["--videos", str(videos), "--num_segments", "4", "--rounds", "2",
                                "--backends", "ours,pyav,decord"])
    out = capsys.readouterr().out
    assert code == 0
    assert f"moving.mp4 ({FRAMES} frames, {FRAMES} decoded)" in out
    missing = [line for line in out.splitlines() if "decord" in line]
    assert len(missing) == 1 and missing[0].split() == ["decord", "not", "installed:", "pip", "install", "decord2"]
    speed = out.split("[speed]")[1].split("[frames]")[0]
    rows = {line.split()[0]: line for line in speed.splitlines()[1:] if "clips/s" in line and "x ours" in line}
    assert set(rows) == {"ours", "pyav"} and "1.00x ours" in rows["ours"]
    assert all(len(row.split("(rounds: ")[1].split(",")) == 2 for row in rows.values())
    frames = out.split("[frames]")[1]
    assert "ours               moving.mp4: 4/4 same frame, max |diff| 0" in frames
    assert "pyav               moving.mp4: 4/4 same frame, max |diff| " in frames


def test_the_frame_check_names_a_clip_one_frame_off(videos):
    clip = bench_decoders.make_clip(str(videos / "moving.mp4"), 4)
    assert clip.numbers.tolist() == [4, 12, 19, 27] and clip.decoded.tolist() == [3, 11, 18, 26]
    reference = bench_decoders.reference_frames(clip, 2)
    same = np.stack([reference[d] for d in clip.decoded.tolist()])
    assert bench_decoders.check(same, clip, reference, 2) == "4/4 same frame, max |diff| 0"
    earlier = np.stack([reference[d - 1] for d in clip.decoded.tolist()])
    line = bench_decoders.check(earlier, clip, reference, 2)
    assert line.startswith("0/4 same frame") and "frame 4 is decoded frame 2, not 3" in line
    assert bench_decoders.check(same[:, :-2], clip, reference, 2).startswith("other shape (4, 46, 64, 3)")


@pytest.mark.parametrize("flags, message", [
    (["--backends", "ours,ffplay"], "--backends ours,ffplay: unknown ffplay"),
    (["--backends", "pyav"], "--backends pyav: ours missing"),
    (["--rounds", "0"], "--rounds must be >= 1"),
])
def test_bad_flags_are_one_error_line(videos, capsys, flags, message):
    assert bench_decoders.main(["--videos", str(videos)] + flags) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_a_folder_without_videos_is_one_error_line(tmp_path, capsys):
    assert bench_decoders.main(["--videos", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == f"error: --videos {tmp_path}: no video files in it"
    assert bench_decoders.main(["--videos", str(tmp_path / "none")]) == 2
    assert "no such folder" in capsys.readouterr().err
