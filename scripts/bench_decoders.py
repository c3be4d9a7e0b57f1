"""Other video decoders against ours: clips per second for evaluation clips, and whether they return our frames.

    python -m scripts.bench_decoders                              # the test videos ($UNIADAFOCUS_TEST_VIDEOS)
    python -m scripts.bench_decoders --videos DIR --rounds 7
    python -m scripts.bench_decoders --backends ours,pyav,decord  # some backends only

Per video, the frames of its evaluation clip (``--num_segments`` segment centres, numbered as
:func:`datasets.sampling.segment_indices` numbers them for a ``--video_files`` item) are decoded by
each backend to uint8 RGB ``(T0, h, w, 3)`` at the video's own size, one decoding thread each, the
video opened for each clip:

* ``ours``: :class:`datasets.video_frames.VideoFrameReader`, what a ``--video_files`` item reads, its
  open videos closed after each clip (:func:`datasets.open_videos.close_open_videos`), as a loader
  worker reads clips of other videos in between; its slot table (one demux pass) stays cached per
  process, as in a worker;
* ``pyav``: PyAV decoding every frame from the start up to the last needed one (``thread_count = 1``),
  ``VideoFrame.to_ndarray(format='rgb24')`` for the needed ones: the plain way;
* the candidates, each only where installed (otherwise one line says how to install it, or why it did
  not load), with their own seek APIs: ``decord`` (the ``decord`` or ``decord2`` package:
  ``VideoReader(num_threads=1).get_batch``), ``opencv`` (``VideoCapture`` through FFmpeg with
  ``CAP_PROP_N_THREADS`` 1 and ``cv2.setNumThreads(1)``: ``CAP_PROP_POS_FRAMES`` where the next frame is
  not the one wanted, then ``read``, BGR to RGB), ``torchcodec`` (``VideoDecoder(num_ffmpeg_threads=1)
  .get_frames_at``, ``seek_mode`` exact and approximate, ``torch.set_num_threads(1)``), ``video_reader``
  (the ``video-reader-rs`` package: ``PyVideoReader(threads=1).get_batch``).

Numbering: a backend whose frame count of a video is ours (frames at the video's own rate, what
``datasets.extract`` writes) gets the clip's frame numbers less one; one that counts decoded frames
(they differ where frames repeat or are dropped in time: ``tree.avi`` has 68 decoded frames over 444)
gets the decoded indices our slot table gives those numbers (:meth:`datasets.video_table.VideoTiming.decoded_index`);
another count is reported and the decoded indices are used.

Timing: rounds of every video's clip once per backend, the backends' order reversed every other round;
round 0 warms up (and is the one checked) and is not counted; the median round's clips/s per backend
and its ratio to ours.

Frames: each backend's clip against a decoding of the whole video in order with PyAV, converted as
ours converts (:func:`datasets.video.frame_to_array`: swscale bicubic, rotation applied): the largest
absolute pixel difference to the expected frame, and how many of the clip's frames are closest (mean
absolute difference) to the expected decoded frame among it and ``--window`` decoded frames on each
side: the same frame, whatever RGB conversion. A backend returning other frames (an off-by-one seek)
or another frame size is reported as such.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import importlib.metadata
import os
import statistics
import sys
import time
from typing import Callable, Dict, List, Optional

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP (see scripts/bench_adaptive.py)

import numpy as np  # noqa: E402

from datasets.extract import VIDEO_EXTENSIONS  # noqa: E402
from datasets.open_videos import close_open_videos  # noqa: E402
from datasets.sampling import segment_indices  # noqa: E402
from datasets.video import frame_to_array  # noqa: E402
from datasets.video_frames import VideoFrameReader  # noqa: E402
from datasets.video_table import video_timing  # noqa: E402

#: Reads positions (0-based, the backend's numbering) of one video: ``(path, positions (n,)) -> uint8 (n, h, w, 3)``.
ReadClip = Callable[[str, np.ndarray], np.ndarray]


@dataclasses.dataclass
class Backend:
    """One way of decoding a clip. ``module``: what it imports ('' for ours); ``package``: what ``pip`` installs;
    ``threads``: how it is held to one decoding thread; ``make(module) -> (read, count)``: the clip reader
    (:data:`ReadClip`) and ``count(path) -> int``, the frames the backend says the video has."""

    name: str
    module: str
    package: str
    threads: str
    make: Callable


def default_videos() -> str:
    return os.environ.get("UNIADAFOCUS_TEST_VIDEOS") or os.path.expanduser("~/.cache/uniadafocus/test-videos")


# ------------------------------------------------------------------------------------------------
# The backends
# ------------------------------------------------------------------------------------------------
def _ours(_module):
    def read(path, positions):
        try:
            return VideoFrameReader(path, first_index=1).read(positions + 1)
        finally:
            close_open_videos()
    return read, lambda path: video_timing(path).count


def _pyav(av):
    def read(path, positions):
        wanted, last, out = set(positions.tolist()), int(positions.max()), {}
        with av.open(path) as container:
            stream = container.streams.video[0]
            stream.codec_context.thread_count = 1
            for index, frame in enumerate(container.decode(stream)):
                if index in wanted:
                    out[index] = frame.to_ndarray(format="rgb24", threads=1)
                if index >= last:
                    break
        if len(out) < len(wanted):
            raise ValueError(f"the stream ended before decoded frame {last}")
        return np.stack([out[p] for p in positions.tolist()])
    return read, lambda path: len(video_timing(path).pts)


def _decord(decord):
    def read(path, positions):
        return decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1).get_batch(positions.tolist()).asnumpy()
    return read, lambda path: len(decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1))


def _opencv(cv2):
    cv2.setNumThreads(1)

    def capture(path):
        cap = cv2.VideoCapture(path, cv2.CAP_FFMPEG, [cv2.CAP_PROP_N_THREADS, 1])
        if not cap.isOpened():
            raise ValueError("VideoCapture could not open it")
        return cap

    def read(path, positions):
        cap, frames, at = capture(path), [], 0                           # at: the frame read() returns next
        try:
            for p in positions.tolist():
                if frames and p == at - 1:                               # (a repeated frame)
                    frames.append(frames[-1])
                    continue
                if p != at:
                    cap.set(cv2.CAP_PROP_POS_FRAMES, p)
                ok, bgr = cap.read()
                if not ok:
                    raise ValueError(f"read() returned no frame for frame {p}")
                frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
                at = p + 1
        finally:
            cap.release()
        return np.stack(frames)

    def count(path):
        cap = capture(path)
        try:
            return int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        finally:
            cap.release()
    return read, count


def _torchcodec(seek_mode):
    def make(decoders):
        import torch
        torch.set_num_threads(1)

        def decoder(path):
            return decoders.VideoDecoder(path, dimension_order="NHWC", num_ffmpeg_threads=1, seek_mode=seek_mode)

        def read(path, positions):
            return decoder(path).get_frames_at(positions.tolist()).data.numpy()
        return read, lambda path: len(decoder(path))
    return make


def _video_reader(video_reader):
    def read(path, positions):
        return np.asarray(video_reader.PyVideoReader(path, threads=1).get_batch(positions.tolist()))
    return read, lambda path: int(video_reader.PyVideoReader(path, threads=1).get_info()["frame_count"])


BACKENDS = [
    Backend("ours", "", "", "codec_context.thread_count = 1", _ours),
    Backend("pyav", "av", "av", "codec_context.thread_count = 1", _pyav),
    Backend("decord", "decord", "decord2", "VideoReader(num_threads=1)", _decord),
    Backend("opencv", "cv2", "opencv-python-headless", "CAP_PROP_N_THREADS 1, cv2.setNumThreads(1)", _opencv),
    Backend("torchcodec", "torchcodec.decoders", "torchcodec", "num_ffmpeg_threads=1, torch.set_num_threads(1)",
            _torchcodec("exact")),
    Backend("torchcodec-approx", "torchcodec.decoders", "torchcodec",
            "num_ffmpeg_threads=1, torch.set_num_threads(1); seek_mode='approximate'", _torchcodec("approximate")),
    Backend("video_reader", "video_reader", "video-reader-rs", "PyVideoReader(threads=1)", _video_reader),
]


def _one_line(error: Exception) -> str:
    return f"{type(error).__name__}: {' '.join(str(error).split())[:300]}"


def _version(module: str) -> str:
    """'distribution version' of what provides ``module`` (two distributions may provide one module)."""
    top = module.split(".")[0]
    names = importlib.metadata.packages_distributions().get(top, [top])
    return ", ".join(f"{n} {importlib.metadata.version(n)}" for n in sorted(set(names)))


def load(backend: Backend):
    """``(read, count, version)`` of ``backend``, or the one line saying why it is not there."""
    if not backend.module:
        import av
        return backend.make(None) + (f"av {av.__version__}",)
    try:
        module = importlib.import_module(backend.module)
    except ModuleNotFoundError as e:
        if e.name and backend.module.startswith(e.name.split(".")[0]):
            return f"not installed: pip install {backend.package}"
        return f"cannot load: {_one_line(e)}"
    except Exception as e:  # noqa: BLE001 (a candidate's own loading problem, reported in one line)
        return f"cannot load: {_one_line(e)}"
    return backend.make(module) + (_version(backend.module),)


# ------------------------------------------------------------------------------------------------
# The clips, the reference frames and the check
# ------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Clip:
    """One video's evaluation clip: ``numbers`` (T0,) its frame numbers (1-based), ``decoded`` (T0,) the decoded
    indices showing them, ``count`` / ``decoded_count``: the video's frames at its own rate / decoded."""

    path: str
    numbers: np.ndarray
    decoded: np.ndarray
    count: int
    decoded_count: int

    def positions(self, backend_count: int) -> np.ndarray:
        """The clip in the numbering of a backend that counts ``backend_count`` frames."""
        return self.numbers - 1 if backend_count == self.count else self.decoded


def make_clip(path: str, num_segments: int) -> Clip:
    timing = video_timing(path)
    numbers = segment_indices(timing.count, num_segments, start_index=1)
    return Clip(path, numbers, timing.decoded_index(numbers - 1), timing.count, len(timing.pts))


def reference_frames(clip: Clip, window: int) -> Dict[int, np.ndarray]:
    """{decoded index: uint8 (h, w, 3)} for the clip's decoded frames and ``window`` on each side, from a
    decoding of the whole video in order (PyAV, one thread), converted as ours converts."""
    import av
    keep = {int(d) + k for d in clip.decoded for k in range(-window, window + 1)}
    frames = {}
    with av.open(clip.path) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1
        for index, frame in enumerate(container.decode(stream)):
            if index in keep:
                frames[index] = np.ascontiguousarray(frame_to_array(frame, 0))
    return frames


def check(pixels: np.ndarray, clip: Clip, reference: Dict[int, np.ndarray], window: int) -> str:
    """'k/T0 same frame, max |diff| m' for a backend's clip ``pixels`` (T0, h, w, 3), naming the rows whose
    closest reference frame is another decoded frame."""
    expected = reference[int(clip.decoded[0])].shape
    if pixels.shape != (len(clip.decoded),) + expected:
        return f"other shape {tuple(pixels.shape)}, ours {(len(clip.decoded),) + expected}"
    worst, others = 0, []
    for row, (d, frame) in enumerate(zip(clip.decoded.tolist(), pixels)):
        frame = frame.astype(np.int16)
        worst = max(worst, int(np.abs(frame - reference[d]).max()))
        near = {k: float(np.abs(frame - reference[k]).mean()) for k in range(d - window, d + window + 1)
                if k in reference}
        closest = min(near, key=near.get)
        if closest != d and near[closest] < near[d]:
            others.append(f"frame {clip.numbers[row]} is decoded frame {closest}, not {d}")
    same = len(clip.decoded) - len(others)
    line = f"{same}/{len(clip.decoded)} same frame, max |diff| {worst}"
    return line + (f" ({'; '.join(others[:3])}{'; ...' if len(others) > 3 else ''})" if others else "")


def time_clip(read: ReadClip, clip: Clip, positions: np.ndarray) -> float:
    """Seconds to read one clip."""
    started = time.perf_counter()
    read(clip.path, positions)
    return time.perf_counter() - started


def rate(seconds: Dict[int, List[float]], videos: List[int]) -> tuple:
    """(median clips/s over the rounds, the rounds' clips/s) reading each of ``videos`` once per round, from
    ``seconds`` {video: [seconds per round]}."""
    rounds = [len(videos) / sum(seconds[v][r] for v in videos) for r in range(len(seconds[videos[0]]))]
    return statistics.median(rounds), rounds


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m scripts.bench_decoders", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--videos", default=default_videos(), help="folder of video files")
    p.add_argument("--num_segments", type=int, default=16, help="T0: frames per evaluation clip")
    p.add_argument("--rounds", type=int, default=5, help="timed rounds (after one warm-up round)")
    p.add_argument("--window", type=int, default=2,
                   help="decoded frames on each side of the expected one that the frame check compares with")
    p.add_argument("--backends", default=",".join(b.name for b in BACKENDS),
                   help=f"comma-separated, of: {', '.join(b.name for b in BACKENDS)}")
    args = p.parse_args(argv)
    known = {b.name: b for b in BACKENDS}
    chosen = [n.strip() for n in args.backends.split(",") if n.strip()]
    unknown = [n for n in chosen if n not in known]
    if unknown or "ours" not in chosen:
        print(f"error: --backends {args.backends}: {'unknown ' + ', '.join(unknown) if unknown else 'ours missing'} "
              f"(choose from {', '.join(known)}; ours is the baseline)", file=sys.stderr)
        return 2
    if args.num_segments < 1 or args.rounds < 1 or args.window < 0:
        print("error: --num_segments and --rounds must be >= 1, --window >= 0", file=sys.stderr)
        return 2
    if not os.path.isdir(args.videos):
        print(f"error: --videos {args.videos}: no such folder (scripts/fetch_test_videos.sh DEST fetches the test "
              f"videos)", file=sys.stderr)
        return 2
    names = sorted(n for n in os.listdir(args.videos) if n.lower().endswith(VIDEO_EXTENSIONS))
    if not names:
        print(f"error: --videos {args.videos}: no video files in it", file=sys.stderr)
        return 2
    clips = [make_clip(os.path.join(args.videos, n), args.num_segments) for n in names]
    print(f"{len(names)} videos in {args.videos}: " + ", ".join(
        f"{n} ({c.count} frames, {c.decoded_count} decoded)" for n, c in zip(names, clips)))
    print(f"T0={args.num_segments} evaluation clip per video (segment centres), uint8 RGB at the video's own size, "
          f"the video opened per clip, one decoding thread per backend; {args.rounds} rounds after a warm-up "
          f"round, the backends' order reversed every other round, median round reported")

    readers: Dict[str, ReadClip] = {}
    positions: Dict[str, List[np.ndarray]] = {}
    print("backends:")
    for name in chosen:
        loaded = load(known[name])
        if isinstance(loaded, str):
            print(f"  {name:18s} {loaded}")
            continue
        read, count, version = loaded
        try:
            counts = [count(c.path) for c in clips]
        except Exception as e:  # noqa: BLE001 (a candidate failing on a video is reported, not raised)
            print(f"  {name:18s} {version}: cannot open the videos: {_one_line(e)}")
            continue
        notes = [f"{n}: counts {k} frames, ours {c.count} ({c.decoded_count} decoded)"
                 for n, c, k in zip(names, clips, counts) if k not in (c.count, c.decoded_count)]
        positions[name] = [c.positions(k) for c, k in zip(clips, counts)]
        numbering = ["decoded" if k != c.count else "frames" for c, k in zip(clips, counts)]
        by = "frame numbers" if set(numbering) == {"frames"} else (
            "decoded indices" if set(numbering) == {"decoded"} else "decoded indices for " + ", ".join(
                n for n, m in zip(names, numbering) if m == "decoded"))
        readers[name] = read
        print(f"  {name:18s} {version}; {known[name].threads}; gets {by}" + (f"; {'; '.join(notes)}" if notes else ""))

    references = [reference_frames(c, args.window) for c in clips]
    seconds: Dict[str, Dict[int, List[float]]] = {name: {} for name in readers}   # {backend: {video: [per round]}}
    frames: Dict[str, List[str]] = {name: [] for name in readers}
    order = list(readers)
    for r in range(args.rounds + 1):
        for name in (order if r % 2 else order[::-1]):
            for v, clip in enumerate(clips):
                if r == 0:                                               # warm-up: read and checked
                    try:
                        frames[name].append(check(readers[name](clip.path, positions[name][v]), clip, references[v],
                                                  args.window))
                    except Exception as e:  # noqa: BLE001 (a candidate failing on a video is reported, not raised)
                        frames[name].append(f"failed: {_one_line(e)}")
                        continue
                    seconds[name][v] = []
                elif v in seconds[name]:
                    seconds[name][v].append(time_clip(readers[name], clip, positions[name][v]))

    every = list(range(len(clips)))
    print(f"[speed] clips/s per worker, one clip = the {args.num_segments} frames of one video; x ours: on the same "
          f"videos")
    for name, per_video in seconds.items():
        videos = sorted(per_video)
        if not videos:
            print(f"  {name:18s} read none of the videos")
            continue
        median, rounds = rate(per_video, videos)
        base, _ = rate(seconds["ours"], videos)
        which = "" if videos == every else f"  (only {', '.join(names[v] for v in videos)})"
        print(f"  {name:18s} {median:7.2f} clips/s  {median / base:5.2f}x ours  (rounds: "
              f"{', '.join(f'{x:.2f}' for x in rounds)}){which}")
    print("  per video, clips/s (median round): " + "; ".join(
        f"{n}: " + ", ".join(f"{name} {1 / statistics.median(per_video[v]):.1f}" for name, per_video in seconds.items()
                             if v in per_video) for v, n in enumerate(names)))
    print(f"[frames] against a decoding in order converted as ours converts (closest among +-{args.window} decoded "
          f"frames)")
    for name, lines in frames.items():
        for n, line in zip(names, lines):
            print(f"  {name:18s} {n}: {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
