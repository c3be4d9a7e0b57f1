"""Datasets read straight from video files (datasets/video_frames.py and the modules it
reads through, ``video_files=True``).

The reference is the extraction: a video and the frame folder that ``python -m datasets.extract``
writes for it (native rate, ``--short_side 0``, PNG frames, so nothing is lost on the folder's side)
must give the same frame count and the same items, bit for bit, for every sampling rule.
"""
import logging
import os
import shutil
from fractions import Fraction

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from datasets import FrameError, ListFileError, build_dataset
from datasets import extract
from datasets.video import frame_to_image
from datasets import open_videos, video_decoder, video_table
from datasets.video import frame_to_array
from datasets.video_frames import VideoFrameReader
from datasets.video_table import read_timing, skippable
from ops.cli import user_message

av = pytest.importorskip("av", reason="reading video files needs PyAV (the [video] extra)")

SEGMENTS, SIZE = 8, 32
PNG = "image_{:05d}.png"


def _pattern(count: int, height: int, width: int, seed: int) -> np.ndarray:
    """``(count, height, width, 3)`` uint8 frames: a moving gradient plus noise (so every resize differs)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    frames = []
    for k in range(count):
        base = np.stack([(x * 4 + k * 9) % 256, (y * 5 + k * 3) % 256, ((x + y) * 2 + k * 17) % 256], axis=-1)
        frames.append((base + rng.integers(0, 40, base.shape)) % 256)
    return np.asarray(frames, dtype=np.uint8)


def write_video(path, frames: np.ndarray, codec: str, pix_fmt: str, pts=None, options=None, rate: int = 25,
                ticks: int = 25, rotation: int = 0):
    """Encode ``frames`` (N, H, W, 3) uint8 with PyAV at frame rate ``rate``; ``pts``: presentation times
    in 1/ticks s (default 0..N-1); ``rotation``: display rotation, degrees counter-clockwise."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate, options=options or {})
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], pix_fmt
        stream.codec_context.time_base = Fraction(1, ticks)
        if rotation:
            stream.set_display_rotation(rotation)
        for k, pixels in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            frame.pts = k if pts is None else pts[k]
            frame.time_base = Fraction(1, ticks)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """Lossless videos: ffv1 (intra only), libx264rgb crf 0 (key frame every 10, B-frames: the seeking
    path), the same codec with a display rotation of 90 degrees, and a variable-rate ffv1 at 25 frames/s with times in 1/100 s (gaps repeat frames, times
    between two slots round half up, and of two frames in one slot the later one is kept)."""
    folder = tmp_path_factory.mktemp("videos")
    write_video(folder / "intra.mkv", _pattern(30, 48, 64, 1), "ffv1", "bgr0")
    write_video(folder / "gop.mp4", _pattern(45, 48, 64, 2), "libx264rgb", "rgb24",
                options={"crf": "0", "bf": "2", "preset": "veryfast", "threads": "1",
                         "x264-params": "keyint=10:min-keyint=10:scenecut=0"})
    write_video(folder / "rotated.mp4", _pattern(12, 48, 64, 4), "libx264rgb", "rgb24",
                options={"crf": "0", "threads": "1"}, rotation=90)
    write_video(folder / "vfr.mkv", _pattern(12, 48, 64, 3), "ffv1", "bgr0",
                pts=[0, 4, 6, 7, 12, 20, 22, 23, 30, 40, 41, 50], ticks=100)
    return folder


def _extract(sources, out) -> dict:
    """Run the extraction (native rate, full size, PNG) on ``sources``; {file name: frame count}."""
    listing = out.parent / f"{out.name}_videos.txt"
    listing.write_text("".join(f"{s}\n" for s in sources))
    code = extract.main([str(listing), str(out), "--short_side", "0", "--template", PNG, "--workers", "1", "--quiet"])
    assert code == 0
    counts = dict(line.split(",") for line in (out / extract.FRAME_COUNTS).read_text().split())
    return {os.path.basename(s): int(counts[os.path.splitext(os.path.basename(s))[0]]) for s in sources}


def _data_dir(tmp_path, names, counts, video_counts):
    """A custom data directory with a frame list and a video list of the same videos (labels 0, 1, 0...)."""
    (tmp_path / "classInd.txt").write_text("a\nb\n")
    frames_list = "".join(f"{os.path.splitext(n)[0]},{counts[n]},{i % 2}\n" for i, n in enumerate(names))
    video_list = "".join(f"{n},{video_counts(n)},{i % 2}\n" for i, n in enumerate(names))
    (tmp_path / "frames_list.txt").write_text(frames_list)
    (tmp_path / "videos_list.txt").write_text(video_list)


@pytest.fixture(scope="module")
def both(videos, test_videos, tmp_path_factory):
    """(data dir, video folder, frame folder root, counts) for the generated videos and the real
    variable-rate tree.avi (68 stored frames over 444 slots)."""
    shutil.copyfile(test_videos / "tree.avi", videos / "tree.avi")
    names = ["intra.mkv", "gop.mp4", "rotated.mp4", "vfr.mkv", "tree.avi"]
    out = tmp_path_factory.mktemp("extracted") / "out"
    counts = _extract([videos / n for n in names], out)
    data = tmp_path_factory.mktemp("data")
    _data_dir(data, names, counts, lambda n: 0)
    return data, videos, out / "frames", counts


def _pair(both, train, **options):
    data, videos, frames, _ = both
    common = dict(num_segments=SEGMENTS, input_size=SIZE, train=train, seed=3, template=PNG, **options)
    by_frames = build_dataset("custom", str(data), "train", list_file=str(data / "frames_list.txt"),
                              frame_root=str(frames), **common)
    by_video = build_dataset("custom", str(data), "train", list_file=str(data / "videos_list.txt"),
                             frame_root=str(videos), video_files=True, **common)
    return by_frames, by_video


def _assert_same_items(a, b, epochs=(0,)):
    for epoch in epochs:
        a.set_epoch(epoch)
        b.set_epoch(epoch)
        for index in range(len(a)):
            x, y = a[index], b[index]
            assert sorted(x) == sorted(y)
            for key in x:
                assert torch.equal(x[key], y[key]), (epoch, index, key)


def test_frame_counts_match_the_extraction_and_the_variable_rate_video_repeats_frames(both):
    data, videos, _, counts = both
    for name, count in counts.items():
        timing = read_timing(str(videos / name))
        assert timing.count == count, name
    assert counts["tree.avi"] == 444 and len(read_timing(str(videos / "tree.avi")).pts) == 68
    assert read_timing(str(videos / "vfr.mkv")).slots.tolist() == [0, 1, 2, 2, 3, 5, 6, 6, 8, 10, 10, 13]
    assert counts["vfr.mkv"] == 14 and counts["intra.mkv"] == 30 and counts["gop.mp4"] == 45
    assert VideoFrameReader(str(videos / "rotated.mp4")).read([1]).shape == (1, 64, 48, 3)   # portrait
    assert read_timing(str(videos / "gop.mp4")).keys.tolist() == [0, 10, 20, 30, 40]


def test_reads_seek_to_the_key_frame_before_each_needed_frame(both):
    _, videos, _, _ = both
    open_videos.close_open_videos()                                   # no decoder left where a read stopped
    reader = VideoFrameReader(str(videos / "gop.mp4"))
    reader.read([45])
    assert reader.decoded == 5                                         # key frame 41 (index 40) .. 45
    reader.read([3, 12, 14, 44])
    assert reader.decoded == 3 + 4 + 4                                 # 1..3, 11..14, 41..44
    reader.read([44, 3])                                               # any order: decoded in stream order
    assert reader.decoded == 3 + 4


def test_every_frame_equals_the_extracted_image(both):
    _, videos, frames, counts = both
    from PIL import Image
    for name, count in counts.items():
        stem = os.path.splitext(name)[0]
        wanted = list(range(1, count + 1, 7)) + [count]
        pixels = VideoFrameReader(str(videos / name), num_frames=count).read(wanted)
        for row, k in enumerate(wanted):
            extracted = np.asarray(Image.open(frames / stem / PNG.format(k)).convert("RGB"))
            assert np.array_equal(pixels[row], extracted), (name, k)


@pytest.mark.parametrize("short_side", [0, 36])
def test_conversion_equals_pillow_bicubic_and_transpose(videos, short_side):
    """The RGB conversion (one swscale call to a numpy array, a rotated view) gives the pixels of PyAV's PIL
    conversion with the same bicubic scaling followed by PIL's transpose, for an RGB and a YUV source, at
    the frame's size and scaled, with and without a display rotation."""
    from PIL import Image
    from av.video.reformatter import VideoReformatter
    from datasets.video import frame_to_array, output_size
    turn = {0: None, 90: Image.Transpose.ROTATE_90}
    for name in ("intra.mkv", "gop.mp4", "rotated.mp4"):
        with av.open(str(videos / name)) as container:
            stream = container.streams.video[0]
            reformatter = VideoReformatter()
            for k, frame in enumerate(container.decode(stream)):
                if k % 5:
                    continue
                w, h = output_size(frame.width, frame.height, short_side)
                image = frame.to_image(width=w, height=h, interpolation="BICUBIC")
                rotation = int(round(frame.rotation or 0)) % 360
                if turn[rotation] is not None:
                    image = image.transpose(turn[rotation])
                assert (name == "rotated.mp4") == (rotation == 90)
                assert np.array_equal(frame_to_array(frame, short_side), np.asarray(image)), (name, k)
                assert np.array_equal(frame_to_array(frame, short_side, reformatter), np.asarray(image)), (name, k)
                assert np.array_equal(np.asarray(frame_to_image(frame, short_side)), np.asarray(image)), (name, k)


def test_training_draws_equal_the_frame_folders(both):
    by_frames, by_video = _pair(both, train=True)
    assert [r.num_frames for r in by_video.records] == [r.num_frames for r in by_frames.records]
    _assert_same_items(by_frames, by_video, epochs=(0, 1))


def test_evaluation_and_three_crops_equal_the_frame_folders(both):
    _assert_same_items(*_pair(both, train=False))
    _assert_same_items(*_pair(both, train=False, test_crops=3))


def test_separate_glance_clip_equals_the_frame_folders(both):
    _assert_same_items(*_pair(both, train=True, glance_segments=4), epochs=(0, 2))
    _assert_same_items(*_pair(both, train=False, glance_segments=4, test_crops=3))


def test_selected_frame_decoding_reads_video_files_too(both):
    by_frames, by_video = _pair(both, train=False)
    _, deferred = _pair(both, train=False, decode_positions=[0, 3, 6])
    for index in range(len(by_video)):
        full = by_frames[index]["video"]
        item = deferred[index]
        assert torch.equal(item["frames"], full[[0, 3, 6]])
        frames = by_video.frame_indices(index)
        assert torch.equal(deferred.decode_frames(index, frames[[1, 5, 7]]), full[[1, 5, 7]])
    with pytest.raises(ValueError, match="jpeg_bytes .*video files"):
        _pair(both, train=False, jpeg_bytes=True)


def test_listed_counts_are_checked(both, tmp_path):
    data, videos, _, counts = both
    shutil.copyfile(data / "classInd.txt", tmp_path / "classInd.txt")
    (tmp_path / "list.txt").write_text(f"gop.mp4,{counts['gop.mp4'] - 1},0\nintra.mkv,{counts['intra.mkv']},1\n"
                                       f"gop.mp4,50,0\n")
    ds = build_dataset("custom", str(tmp_path), "val", list_file=str(tmp_path / "list.txt"), frame_root=str(videos),
                       video_files=True, num_segments=SEGMENTS, input_size=SIZE, template=PNG)
    assert ds[1]["video"].shape == (SEGMENTS, 3, SIZE, SIZE)
    with pytest.raises(FrameError, match=r"list.txt:1 .*the list gives 44 frames, but video .*gop.mp4 has 45"):
        ds[0]
    assert ds.frame_indices(2).max() == 47
    with pytest.raises(FrameError, match=r"list.txt:3 .*frame 47 cannot be decoded: .*gop.mp4 \(past the end: the "
                                         r"video has 45 frames \(the list gives 50\)\)$"):
        ds[2]
    # the same list read as frame folders: the missing folders are video files, and the message says so
    with pytest.raises(ListFileError, match=r"3 of 3 frame folders are missing .*\n.*\n.*\n.*\n  \(these are video "
                                            r"files: read them with video_files=True, flag --video_files\)"):
        build_dataset("custom", str(tmp_path), "val", list_file=str(tmp_path / "list.txt"), frame_root=str(videos),
                      num_segments=SEGMENTS, input_size=SIZE, template=PNG)


def test_packed_b_frame_avi_reads_as_decoded_from_the_start(test_videos):
    """Megamind.avi stores B-frames packed (its frames' times are swapped): every frame read with seeks
    equals the frame decoded in order, as the extraction decodes it."""
    path = str(test_videos / "Megamind.avi")
    with av.open(path) as container:
        ordered = [np.asarray(frame_to_image(f, 0)) for f in container.decode(container.streams.video[0])]
    timing = read_timing(path)
    assert timing.count == len(ordered) == 270
    wanted = [5, 99, 100, 140, 160, 201, 250, 270]
    pixels = VideoFrameReader(path).read(wanted)
    for row, k in enumerate(wanted):
        assert np.array_equal(pixels[row], ordered[k - 1]), k


# ---------------------------------------------------------------------------------------------------
# Frames nobody needs, skipped
# ---------------------------------------------------------------------------------------------------
def _in_order(path: str, numbers) -> dict:
    """{frame number: pixels} of ``numbers``, from the whole video decoded in order (as the extraction)."""
    timing = read_timing(path)
    indices = timing.decoded_index(np.asarray(numbers) - 1)
    found = {}
    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1
        for index, frame in enumerate(container.decode(stream)):
            for k in np.asarray(numbers)[indices == index]:
                found[int(k)] = frame_to_array(frame, 0)
    return found


def _reads(count: int, seed: int, sets: int = 5, size: int = 12):
    rng = np.random.default_rng(seed)
    return [sorted(rng.choice(np.arange(1, count + 1), min(size, count), replace=False).tolist()) for _ in range(sets)]


def _check_reads(path: str, reads) -> list:
    """Every read of ``reads`` (lists of frame numbers) equals the frames decoded in order; the frames each
    read decoded, with skipping and without (:data:`~datasets.video_decoder.SKIP_UNNEEDED`)."""
    reference = _in_order(path, sorted({k for numbers in reads for k in numbers}))
    counts = []
    for numbers in reads:
        pair = []
        for skip in (True, False):
            video_decoder.SKIP_UNNEEDED = skip
            open_videos.close_open_videos()
            try:
                reader = VideoFrameReader(path)
                pixels = reader.read(numbers)
            finally:
                video_decoder.SKIP_UNNEEDED = True
            for row, k in enumerate(numbers):
                assert np.array_equal(pixels[row], reference[k]), (path, skip, k)
            pair.append(reader.decoded)
        counts.append(tuple(pair))
    return counts


@pytest.fixture(scope="module")
def with_b_frames(tmp_path_factory, test_videos):
    """Videos with non-reference frames: H.264 (yuv420p, three B-frames, with and without a B-pyramid, a key
    frame every 40) in .mp4 and .mkv, MPEG-4 Part 2 and MPEG-2 with two B-frames, and Megamind.avi's
    packed B-frames copied into a .mkv file unchanged (its packets' times are not its frames')."""
    folder = tmp_path_factory.mktemp("b_frames")
    frames = _pattern(100, 48, 64, 6)
    for name, pyramid in (("h264.mp4", "normal"), ("h264.mkv", "none")):
        write_video(folder / name, frames, "libx264", "yuv420p",
                    options={"crf": "18", "bf": "3", "preset": "veryfast", "threads": "1",
                             "x264-params": f"keyint=40:min-keyint=40:scenecut=0:b-pyramid={pyramid}"})
    write_video(folder / "mpeg4.mp4", frames, "mpeg4", "yuv420p", options={"bf": "2", "g": "30", "threads": "1"})
    write_video(folder / "mpeg2.mkv", frames, "mpeg2video", "yuv420p", options={"bf": "2", "g": "30", "threads": "1"})
    with av.open(str(test_videos / "Megamind.avi")) as source, av.open(str(folder / "packed.mkv"), "w") as out:
        stream = out.add_stream_from_template(source.streams.video[0])
        for packet in source.demux(source.streams.video[0]):
            if packet.dts is not None:
                packet.stream = stream
                out.mux(packet)
    return folder


def test_which_videos_skip_frames():
    assert skippable("mov,mp4,m4a,3gp,3g2,mj2", "h264") and skippable("matroska,webm", "mpeg4")
    assert skippable("matroska,webm", "mpeg2video")
    assert not skippable("avi", "mpeg4") and not skippable("avi", "h264")          # no stored times
    assert not skippable("matroska,webm", "ffv1") and not skippable("mov,mp4,m4a,3gp,3g2,mj2", "hevc")


@pytest.mark.parametrize("name", ["h264.mp4", "h264.mkv", "mpeg4.mp4", "mpeg2.mkv"])
def test_skipping_non_reference_frames_gives_the_frames_decoded_in_order(with_b_frames, name):
    path = str(with_b_frames / name)
    timing = read_timing(path)
    assert timing.skippable and timing.count == 100
    counts = _check_reads(path, _reads(timing.count, 1) + [[100], [2, 3, 4, 5, 97, 98, 99], list(range(1, 101, 9))])
    assert all(skipped <= plain for skipped, plain in counts)
    assert sum(skipped for skipped, _ in counts) < 0.9 * sum(plain for _, plain in counts), counts
    span = 100 - timing.key_before(99)                              # frame 100: its key frame on, in order
    assert counts[-3][1] == span and counts[-3][0] < span


def test_packed_b_frames_outside_avi_are_not_skipped(with_b_frames):
    """Megamind.avi's packets copied into Matroska: two frames in some packets, so times do not place
    frames, and the video is read without skipping (decoded from its start, counting frames)."""
    path = str(with_b_frames / "packed.mkv")
    timing = read_timing(path)
    assert not timing.skippable and timing.count == 270
    _check_reads(path, _reads(270, 2, sets=3))
    assert not video_table.video_timing(path).seekable               # its seeks were found out, too


def test_codecs_without_skipping_decode_every_frame(both):
    """ffv1 (no skipping decoder) and cinepak in AVI (no stored times): the same frames decoded either way."""
    _, videos, _, counts = both
    for name in ("intra.mkv", "vfr.mkv", "tree.avi"):
        path = str(videos / name)
        assert not read_timing(path).skippable
        decoded = _check_reads(path, _reads(counts[name], 3, sets=3))
        assert all(skipped == plain for skipped, plain in decoded), name


def _mixed_reads(count: int, seed: int, reads: int = 24):
    """Reads of frame numbers as a loader asks for them: runs of consecutive frames, scattered sets, single
    frames, the last frame."""
    rng = np.random.default_rng(seed)
    out = [[count]]
    for k in range(reads - 1):
        size = int(rng.choice([1, 2, 3, 8, 16]))
        if k % 3 == 0:
            start = int(rng.integers(1, count + 1))
            out.append(list(range(start, min(count, start + size) + 1)))
        else:
            out.append(sorted(rng.choice(np.arange(1, count + 1), min(size, count), replace=False).tolist()))
    return out


@pytest.mark.parametrize("name", ["h264.mp4", "h264.mkv", "mpeg4.mp4", "mpeg2.mkv", "packed.mkv", "Megamind.avi",
                                  "Megamind_bugy.avi", "tree.avi", "vtest.avi"])
def test_reads_in_any_sequence_equal_decoding_in_order(with_b_frames, test_videos, name):
    """Reads one after another, going on from an open decoder or starting over (the open videos closed
    before every fifth), skipping or not: every frame equals the one decoded in order."""
    path = str((with_b_frames if (with_b_frames / name).exists() else test_videos) / name)
    timing = video_table.video_timing(path)
    reads = _mixed_reads(timing.count, 5)
    reference = _in_order(path, sorted({k for numbers in reads for k in numbers}))
    open_videos.close_open_videos()
    for k, numbers in enumerate(reads):
        if k % 5 == 4:
            open_videos.close_open_videos()
        pixels = VideoFrameReader(path).read(numbers)
        for row, number in enumerate(numbers):
            assert np.array_equal(pixels[row], reference[number]), (name, k, numbers, number)
    assert timing.order_trusted                                      # nothing contradicted what places frames
    assert timing.seekable == (name not in ("packed.mkv", "Megamind.avi", "Megamind_bugy.avi"))


def test_an_unseekable_video_skips_frames_by_the_recorded_order(test_videos, tmp_path):
    """Megamind.avi (packed B-frames, AVI: unseekable, decoded from its start): once a decoding without
    skipping recorded the order in which the decoder returns its frames, later reads skip B-frames and
    place the frames by that order; the last frame comes only when the decoder is drained (its time made
    up then), so a read that needs it decodes every frame."""
    path = tmp_path / "Megamind.avi"
    shutil.copyfile(test_videos / "Megamind.avi", path)
    path = str(path)
    open_videos.close_open_videos()
    VideoFrameReader(path).read([270])                               # the seek is found out; the order recorded
    timing = video_table.video_timing(path)
    assert not timing.seekable and timing.codec_skips and len(timing.order) == 270 and timing.order_flushed == 269
    reads = [[5, 50, 100], [10, 200, 260], [1], [100, 101, 102, 103], [269], [268, 270]]
    for numbers, decoded in zip(reads, _check_reads(path, reads)):
        if 10 <= numbers[-1] < 270:
            assert decoded[0] < 0.6 * decoded[1], (numbers, decoded)
        elif numbers[-1] < 10:
            assert decoded[0] == decoded[1] == numbers[-1]
        else:
            assert decoded[0] == decoded[1] == 270
    assert timing.order_trusted
    # a recorded order that disagrees with what the decoder returns: skipping ends for the video, the
    # frames are read without it
    timing.order_kinds[150] = 1 if timing.order_kinds[150] != 1 else 2
    open_videos.close_open_videos()
    reader = VideoFrameReader(path)
    pixels = reader.read([140, 152])
    assert np.array_equal(pixels[0], _in_order(path, [140])[140]) and np.array_equal(pixels[1], _in_order(path, [152])[152])
    assert not timing.order_trusted
    open_videos.close_open_videos()
    reader = VideoFrameReader(path)
    reader.read([100])
    assert reader.decoded == 100                                     # every frame from the start


# ---------------------------------------------------------------------------------------------------
# Open videos kept between reads
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["h264.mp4", "mpeg4.mp4"])
def test_a_later_read_goes_on_from_where_the_decoder_stands(with_b_frames, name):
    """Glance frames, then focus frames one read each (ascending, as the early-exit runtime asks): each
    read after the first decodes from where the last stopped; a read of an earlier frame, or of one sent
    to the decoder as skippable, starts over. Every frame equals the one decoded in order."""
    path = str(with_b_frames / name)
    timing = read_timing(path)
    reference = _in_order(path, list(range(1, 101)))
    open_videos.close_open_videos()
    reads = [[3, 20], [22], [24], [30], [52], [60], [5], [61, 62]]
    decoded = []
    for numbers in reads:
        reader = VideoFrameReader(path)
        pixels = reader.read(numbers)
        decoded.append(reader.decoded)
        for row, k in enumerate(numbers):
            assert np.array_equal(pixels[row], reference[k]), (name, k)
    fresh = []
    for numbers in reads:
        open_videos.close_open_videos()
        reader = VideoFrameReader(path)
        reader.read(numbers)
        fresh.append(reader.decoded)
    assert sum(decoded) < sum(fresh), (decoded, fresh)
    # the read of frame 5 is behind the decoder: it starts over and decodes as much as a fresh read
    assert decoded[6] == fresh[6]
    # a frame between two read ones that went to the decoder as skippable: read after them, it starts over
    open_videos.close_open_videos()
    VideoFrameReader(path).read([12, 18])
    (kept,) = open_videos._open_videos.entries.values()
    k = min(i for i in kept._skipped if 11 < i < 17) + 1               # frame number of a skipped index
    reader = VideoFrameReader(path)
    assert np.array_equal(reader.read([k])[0], reference[k])
    open_videos.close_open_videos()
    fresh_read = VideoFrameReader(path)
    fresh_read.read([k])
    assert reader.decoded == fresh_read.decoded and timing.skippable


def test_open_videos_are_bounded_in_number_and_memory_and_dropped_when_the_file_changes(with_b_frames, tmp_path,
                                                                                       monkeypatch):
    names = ["h264.mp4", "h264.mkv", "mpeg4.mp4"]
    paths = [str(with_b_frames / n) for n in names]
    open_videos.close_open_videos()
    monkeypatch.setattr(open_videos, "OPEN_VIDEOS", 2)
    for path in paths:
        VideoFrameReader(path).read([5])
    kept = [key[0] for key in open_videos._open_videos.entries]
    assert kept == [os.path.abspath(p) for p in paths[1:]]          # the least recently used one closed
    # memory: each decoder counts 18 frames of its buffers' size
    with av.open(paths[1]) as container:
        frame = next(container.decode(container.streams.video[0]))
        footprint = video_decoder.REFERENCE_FRAMES * sum(plane.buffer_size for plane in frame.planes)
    assert [f.footprint for f in open_videos._open_videos.entries.values()] == [footprint] * 2
    monkeypatch.setattr(open_videos, "OPEN_VIDEO_BYTES", footprint)
    VideoFrameReader(paths[0]).read([5])
    assert [key[0] for key in open_videos._open_videos.entries] == [os.path.abspath(paths[0])]
    monkeypatch.setattr(open_videos, "OPEN_VIDEO_BYTES", footprint - 1)
    VideoFrameReader(paths[1]).read([5])
    assert not open_videos._open_videos.entries                     # larger than the bound: closed
    # a file replaced under the same name: its open decoder is not used (and is closed)
    monkeypatch.setattr(open_videos, "OPEN_VIDEO_BYTES", 1 << 30)
    path = tmp_path / "replaced.mp4"
    shutil.copyfile(paths[0], path)
    VideoFrameReader(str(path)).read([5])
    write_video(path, _pattern(100, 48, 64, 7), "libx264", "yuv420p",
                options={"crf": "18", "bf": "3", "preset": "veryfast", "threads": "1"})
    os.utime(path, ns=(os.stat(path).st_atime_ns, os.stat(path).st_mtime_ns + 10 ** 9))
    pixels = VideoFrameReader(str(path)).read([6])
    assert np.array_equal(pixels[0], _in_order(str(path), [6])[6])
    assert [key[0] for key in open_videos._open_videos.entries].count(str(path)) == 1
    open_videos.close_open_videos()
    assert not open_videos._open_videos.entries


def test_a_forked_loader_worker_does_not_use_the_parents_open_videos(with_b_frames):
    """Open videos share their file offsets with a forked child: a worker starts with none, and with a
    table lock of its own."""
    import multiprocessing
    path = str(with_b_frames / "h264.mp4")
    open_videos.close_open_videos()
    VideoFrameReader(path).read([30])
    assert len(open_videos._open_videos.entries) == 1
    with video_table._timings_lock:                                # held by a thread of the parent at the fork
        pool = multiprocessing.get_context("fork").Pool(1)
    with pool:
        assert pool.apply(_open_video_count) == 0
        assert pool.apply(_can_lock_the_tables)                       # the child's table lock is its own
    (kept,) = open_videos._open_videos.entries.values()
    k = min(i for i in range(30, 39) if i not in kept._skipped) + 1  # a later frame not sent as skippable
    reader = VideoFrameReader(path)                                  # the parent's goes on from frame 30
    reader.read([k])
    assert reader.decoded <= k - 30
    open_videos.close_open_videos()


def _open_video_count() -> int:
    return len(open_videos._open_videos.entries)


def _can_lock_the_tables() -> bool:
    acquired = video_table._timings_lock.acquire(timeout=5)
    if acquired:
        video_table._timings_lock.release()
    return acquired


# ---------------------------------------------------------------------------------------------------
# Bad files
# ---------------------------------------------------------------------------------------------------
@pytest.fixture
def bad_dir(test_videos, tmp_path):
    """A data dir with a truncated real video (vtest.avi cut to a quarter of its bytes), a garbage file
    named like a video and an empty file."""
    videos = tmp_path / "videos"
    videos.mkdir()
    data = (test_videos / "vtest.avi").read_bytes()
    (videos / "cut.avi").write_bytes(data[:len(data) // 4])
    (videos / "garbage.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    (videos / "empty.mkv").write_bytes(b"")
    (tmp_path / "classInd.txt").write_text("a\nb\n")
    return tmp_path


def _build(folder, lines, **options):
    (folder / "list.txt").write_text("".join(line + "\n" for line in lines))
    return build_dataset("custom", str(folder), "val", list_file=str(folder / "list.txt"),
                         frame_root=str(folder / "videos"), video_files=True, num_segments=SEGMENTS,
                         input_size=SIZE, **options)


def test_unreadable_files_are_one_line_naming_the_line_and_the_file(bad_dir):
    for name in ("garbage.mp4", "empty.mkv"):
        with pytest.raises(FrameError) as caught:
            _build(bad_dir, [f"{name},0,1"])
        message = str(caught.value)
        assert "\n" not in message and "list.txt:1" in message and f"cannot read video {bad_dir}/videos/{name}" in message
        ds = _build(bad_dir, [f"{name},100,1"])                        # given a count: found when read
        with pytest.raises(FrameError, match=rf"list.txt:1 .*cannot read video .*{name}"):
            ds[0]
    with pytest.raises(ListFileError, match=r"1 of 1 video files are missing .*\n  .*list.txt:1: .*nothere.mp4"):
        _build(bad_dir, ["nothere.mp4,0,0"])


def test_truncated_video_is_one_line_or_read_as_far_as_it_goes(bad_dir, caplog):
    ds = _build(bad_dir, ["cut.avi,0,0"])
    held = ds.records[0].num_frames
    assert 0 < held < 795
    with pytest.raises(FrameError) as caught:
        ds[0]
    assert "\n" not in str(caught.value)
    assert f"{bad_dir}/videos/cut.avi: truncated video: the container claims 795 frames" in str(caught.value)
    # repeat_first: the frames it holds are read; with the full count listed, the ones past its end are
    # the first frame.
    ds = _build(bad_dir, ["cut.avi,0,0"], missing_frames="repeat_first")
    assert ds[0]["video"].shape == (SEGMENTS, 3, SIZE, SIZE)
    # Cut before its index, the AVI flags every packet a key frame: seeks must not be trusted (the frames
    # are those decoded in order).
    path = str(bad_dir / "videos" / "cut.avi")
    with av.open(path) as container:
        ordered = [np.asarray(frame_to_image(f, 0)) for f in container.decode(container.streams.video[0])]
    assert len(ordered) == held and read_timing(path).keys.tolist() == list(range(held))
    wanted = [5, 60, 150, held]
    pixels = VideoFrameReader(path, missing="repeat_first").read(wanted)
    for row, k in enumerate(wanted):
        assert np.array_equal(pixels[row], ordered[k - 1]), k
    full = _build(bad_dir, ["cut.avi,795,0"], missing_frames="repeat_first")
    with caplog.at_level(logging.WARNING):
        clip = full[0]["video"]
    past = [k for k in full.frame_indices(0) if k > held]
    assert past and sum("past the end: the video has" in r.getMessage() for r in caplog.records) == len(past)
    first = _build(bad_dir, ["cut.avi,0,0"], missing_frames="repeat_first").decode_frames(0, [1])[0]
    for row, k in enumerate(full.frame_indices(0)):
        if k > held:
            assert torch.equal(clip[row], first)
    strict = _build(bad_dir, ["cut.avi,795,0"])
    with pytest.raises(FrameError, match="truncated video"):
        strict[0]


def test_errors_in_loader_workers_are_one_line(bad_dir):
    ds = _build(bad_dir, ["cut.avi,795,0"])
    with pytest.raises(FrameError) as caught:
        next(iter(DataLoader(ds, batch_size=1, num_workers=1)))
    message = user_message(caught.value)
    assert "\n" not in message and "cut.avi: truncated video" in message and "list.txt:1" in message


# ---------------------------------------------------------------------------------------------------
# main.py --video_files
# ---------------------------------------------------------------------------------------------------
TINY = ("--num_segments 8 --num_glance_segments 4 --num_focus_segments 4 --input_size 64 --patch_size 32 "
        "--focus_arch resnet18 --classifier_dim 32 --stn_hidden_dim 16 --temporal_hidden_dim 8 --no-pretrained "
        "--device cpu --lr 0.01 --no-tensorboard --num_visualised 0 --batch_size 2 --val_batch_size 2")


def test_main_trains_and_evaluates_from_video_files_and_reports_a_bad_one_in_one_line(videos, bad_dir, tmp_path):
    import entry_points
    import sys

    data = tmp_path / "data"
    (data / "frames").mkdir(parents=True)
    (data / "classInd.txt").write_text("a\nb\n")
    for name in ("intra.mkv", "gop.mp4", "vfr.mkv"):
        shutil.copyfile(videos / name, data / "frames" / name)
    (data / "train_split.txt").write_text("intra.mkv,0,0\ngop.mp4,0,1\nvfr.mkv,0,0\ngop.mp4,45,1\n")
    (data / "val_split.txt").write_text("vfr.mkv,14,0\nintra.mkv,0,1\n")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("UNIADAFOCUS_DEBUG", None)
    common = [sys.executable, "main.py", "--dataset", "custom", "--data_dir", str(data), "--video_files",
              "--root_log", str(tmp_path / "runs")] + TINY.split()
    shutil.copyfile(bad_dir / "videos" / "cut.avi", data / "frames" / "cut.avi")
    (data / "bad_val.txt").write_text("intra.mkv,0,1\ncut.avi,795,0\n")
    bad_config = tmp_path / "bad.json"
    bad_config.write_text('{"val_list": "bad_val.txt"}')
    good, bad = entry_points.run_many([
        common + ["--epochs", "1", "--workers", "1", "--store_name", "good"],
        common + ["--epochs", "1", "--workers", "2", "--store_name", "bad", "--dataset_config", str(bad_config)],
    ], env=env, timeout=420)
    assert good.returncode == 0, good.stderr[-3000:]
    again = entry_points.run([sys.executable, "main.py", "--evaluate", "--resume",
                              str(tmp_path / "runs" / "good" / "ckpt.pth.tar"), "--workers", "0", "--device", "cpu",
                              "--store_name", "again", "--root_log", str(tmp_path / "runs")], env=env, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]                # the checkpoint's --video_files is taken
    assert bad.returncode == 2 and "Traceback" not in bad.stderr, bad.stderr[-3000:]
    lines = [line for line in bad.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "bad_val.txt:2" in lines[0] and "cut.avi: truncated video" in lines[0], bad.stderr[-3000:]


# ---------------------------------------------------------------------------------------------------
# scripts/bench_video.py
# ---------------------------------------------------------------------------------------------------
def test_bench_video_times_the_reader_as_before_and_glance_then_focus_reads(capsys):
    from scripts import bench_video
    assert bench_video.main(["--selected", "3", "--synthetic_key_frames", "5"]) == 2
    assert "--selected 3: give G,L" in capsys.readouterr().err
    assert bench_video.main(["--selected", "10,10", "--synthetic_key_frames", "5"]) == 2
    threads = torch.get_num_threads()
    try:
        code = bench_video.main(["--synthetic_key_frames", "10", "--synthetic_videos", "2", "--synthetic_frames", "24",
                                 "--num_segments", "6", "--input_size", "32", "--clips", "2", "--rounds", "1",
                                 "--plain", "--selected", "2,2", "--short_side", "0"])
    finally:
        torch.set_num_threads(threads)                                # the bench sets one thread
    out = capsys.readouterr().out
    assert code == 0
    assert video_decoder.SKIP_UNNEEDED and open_videos.OPEN_VIDEOS == 64 and not open_videos._open_videos.entries
    for label in ("[train]", "[val]", "[val, 2 glance frames then 2 focus frames one read each]"):
        block = out.split(label)[1].split("\n[")[0]
        assert "frame folders" in block and "video files" in block and "as before" in block
        assert "video files / as before:" in block
