"""Video files against their extracted frame folders: clips per second per worker, frames decoded.

    python -m scripts.bench_video                                # the test videos ($UNIADAFOCUS_TEST_VIDEOS)
    python -m scripts.bench_video --videos DIR --short_side 0    # your videos, frames extracted at full size
    python -m scripts.bench_video --synthetic_key_frames 250     # synthetic H.264 videos, a key frame every 250
    python -m scripts.bench_video --plain --selected 4,4         # also: the reader as before; glance + focus reads

The videos are extracted once into a temporary folder (``python -m datasets.extract``: JPEG at
``--quality``, short side ``--short_side``, the video's own rate), and the same videos are read two
ways with the same sampling: ``build_dataset(..., video_files=True)`` on the files and the plain
dataset on the frame folders. Each side is timed single-threaded, as a DataLoader worker runs
(``torch.set_num_threads(1)``, ``OMP_WAIT_POLICY=PASSIVE``, one decoding thread), in rounds that
alternate which side goes first; the median round is reported, for training sampling (random
frames, random crop) and evaluation sampling (segment centres, centre crop).

"decoded" is what the video side decodes per clip (:attr:`datasets.video_frames.VideoFrameReader.decoded`:
the needed frames and those between a key frame and a needed frame that the decoder could not skip),
as a share of the frames of the videos, beside the distinct frames a clip needs (what the
frame-folder side decodes). Note that the video side decodes at the video's own size: with
``--short_side`` below it the frame folders hold smaller images.

``--plain`` adds a third side in the same rounds: the video files read as before the reader skipped
frames and kept videos open (:data:`datasets.video_decoder.SKIP_UNNEEDED` off, every frame from a key
frame to a needed one decoded; :data:`datasets.open_videos.OPEN_VIDEOS` 0).

``--selected G,L`` adds selected-frame evaluation (``decode_positions``, :mod:`datasets.selected_frames`):
per clip the item with G evenly spaced glance positions, then L other positions (drawn per clip,
ascending) one ``decode_frames`` call each, as the early-exit runtime asks for focus frames step by
step in the main process (no video stays open from the item, read in a worker, to the focus frames).

``--synthetic_key_frames N`` benches synthetic videos instead (:mod:`datasets.synthetic` with
``video_files=True, video_codec='h264'``: libx264 at constant quality 18, two B-frames, a key frame
every N frames; ``--synthetic_videos`` videos of ``--synthetic_frames`` frames of 320x240), written
into the temporary folder first.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP (see scripts/bench_adaptive.py)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from datasets import build_dataset, extract, open_videos, video_decoder  # noqa: E402
from datasets.extract import VIDEO_EXTENSIONS  # noqa: E402

TEMPLATE = "image_{:05d}.jpg"
PLAIN = "as before"


def default_videos() -> str:
    return os.environ.get("UNIADAFOCUS_TEST_VIDEOS") or os.path.expanduser("~/.cache/uniadafocus/test-videos")


def synthetic_videos(work: str, key_frames: int, count: int, frames: int) -> str:
    """Write ``count`` synthetic H.264 videos with a key frame every ``key_frames`` frames; their folder."""
    from datasets import synthetic
    root = os.path.join(work, "synthetic")
    synthetic.generate(root, train_videos=1, val_videos=count, frames_per_video=frames, frame_size=(320, 240),
                       video_files=True, video_codec="h264", key_frame_interval=key_frames, workers=1)
    folder = os.path.join(work, "synthetic_videos")
    os.makedirs(folder)
    for name in sorted(os.listdir(os.path.join(root, "frames"))):
        if name.startswith("val_"):
            os.rename(os.path.join(root, "frames", name), os.path.join(folder, name))
    return folder


def prepare(videos: str, work: str, short_side: int, quality: int) -> tuple:
    """Extract the videos of ``videos`` into ``work``; ``(data dir, names, frame counts)``."""
    names = sorted(n for n in os.listdir(videos) if n.lower().endswith(VIDEO_EXTENSIONS))
    if not names:
        raise SystemExit(f"error: no video files in {videos}")
    listing = os.path.join(work, "videos.txt")
    with open(listing, "w", encoding="utf-8") as f:
        f.writelines(os.path.join(os.path.abspath(videos), n) + "\n" for n in names)
    out = os.path.join(work, "data")
    started = time.perf_counter()
    code = extract.main([listing, out, "--short_side", str(short_side), "--quality", str(quality),
                         "--template", TEMPLATE, "--workers", "1", "--quiet"])
    if code != 0:
        raise SystemExit(f"error: the extraction failed (exit {code}; see {out}/{extract.FAILURES})")
    with open(os.path.join(out, extract.FRAME_COUNTS), encoding="utf-8") as f:
        counts = dict(line.strip().split(",") for line in f if line.strip())
    print(f"extracted {len(names)} videos ({sum(int(c) for c in counts.values())} frames, short side "
          f"{short_side or 'unchanged'}, q{quality}) in {time.perf_counter() - started:.1f} s")
    with open(os.path.join(out, "classInd.txt"), "w", encoding="utf-8") as f:
        f.write("only\n")
    stems = [os.path.splitext(n)[0] for n in names]
    with open(os.path.join(out, "frames_list.txt"), "w", encoding="utf-8") as f:
        f.writelines(f"{s},{counts[s]},0\n" for s in stems)
    with open(os.path.join(out, "videos_list.txt"), "w", encoding="utf-8") as f:
        f.writelines(f"{n},{counts[s]},0\n" for n, s in zip(names, stems))
    return out, names, [int(counts[s]) for s in stems]


@contextlib.contextmanager
def reader_settings(improved: bool):
    """The video reader as it is (``improved``) or as before: every frame from a key frame to a needed one
    decoded (:data:`datasets.video_decoder.SKIP_UNNEEDED` off) and no video kept open between reads
    (:data:`datasets.open_videos.OPEN_VIDEOS` 0)."""
    saved = video_decoder.SKIP_UNNEEDED, open_videos.OPEN_VIDEOS
    open_videos.close_open_videos()
    if not improved:
        video_decoder.SKIP_UNNEEDED, open_videos.OPEN_VIDEOS = False, 0
    try:
        yield
    finally:
        video_decoder.SKIP_UNNEEDED, open_videos.OPEN_VIDEOS = saved
        open_videos.close_open_videos()


def read_clip(dataset, index: int, focus: int) -> None:
    """One clip: the item; with ``focus`` (a dataset with ``decode_positions``) also that many other
    positions, distinct, drawn per index, ascending, one :meth:`decode_frames` call each (as the
    early-exit runtime asks for focus frames step by step). The item is read in a loader worker and the
    focus frames in the main process, so no video stays open from one to the other."""
    dataset[index]
    open_videos.close_open_videos()
    if focus:
        numbers = dataset.frame_indices(index)
        others = np.setdiff1d(np.arange(len(numbers)), dataset.decode_positions)
        for position in np.sort(np.random.default_rng(index).choice(others, focus, replace=False)):
            dataset.decode_frames(index, numbers[[position]])


def time_round(dataset, indices, improved: bool = True, focus: int = 0) -> float:
    """Clips per second over ``indices`` (:func:`read_clip`), the reader as :func:`reader_settings` sets it."""
    with reader_settings(improved):
        started = time.perf_counter()
        for index in indices:
            read_clip(dataset, index, focus)
        return len(indices) / (time.perf_counter() - started)


def decoded_share(dataset, clips: int, rounds: int, improved: bool = True, focus: int = 0) -> tuple:
    """(frames the video side decodes per clip, distinct frames a clip needs), averaged over the timed clips."""
    decoded, needed = [], []
    with reader_settings(improved):
        for r in range(1, rounds + 1):
            dataset.set_epoch(r)
            for k in range(clips):
                index = (r * clips + k) % len(dataset)
                numbers = dataset.frame_indices(index)
                reader = dataset.reader(index)
                if not focus:
                    wanted = [np.unique(numbers)]
                else:
                    others = np.setdiff1d(np.arange(len(numbers)), dataset.decode_positions)
                    chosen = np.sort(np.random.default_rng(index).choice(others, focus, replace=False))
                    wanted = [np.unique(numbers[dataset.decode_positions])] + [numbers[[p]] for p in chosen]
                total = 0
                for frames in wanted:
                    reader.read(frames)
                    total += reader.decoded
                    if frames is wanted[0]:
                        open_videos.close_open_videos()        # the item in a worker, the rest in the main process
                decoded.append(total)
                needed.append(len(np.unique(np.concatenate(wanted))))
    return float(np.mean(decoded)), float(np.mean(needed))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m scripts.bench_video", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--videos", default=default_videos(), help="folder of video files")
    p.add_argument("--short_side", type=int, default=360, help="short side of the extracted frames (0: unchanged)")
    p.add_argument("--quality", type=int, default=90, help="JPEG quality of the extracted frames")
    p.add_argument("--num_segments", type=int, default=16, help="T0: frames per clip")
    p.add_argument("--input_size", type=int, default=224)
    p.add_argument("--clips", type=int, default=8, help="clips per round and side")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--plain", action="store_true",
                   help="also time the video files read as before: every frame up to a needed one decoded, no "
                        "video kept open between reads")
    p.add_argument("--selected", default="", metavar="G,L",
                   help="also bench selected-frame evaluation: G evenly spaced glance positions in one read, then L "
                        "other positions (drawn per clip, ascending) one read each")
    p.add_argument("--synthetic_key_frames", type=int, default=0,
                   help="bench synthetic H.264 videos with a key frame every this many frames instead of --videos")
    p.add_argument("--synthetic_videos", type=int, default=4, help="with --synthetic_key_frames: how many videos")
    p.add_argument("--synthetic_frames", type=int, default=300, help="with --synthetic_key_frames: frames per video")
    args = p.parse_args(argv)
    if args.synthetic_key_frames < 0 or args.synthetic_videos < 1 or args.synthetic_frames < 3:
        print("error: --synthetic_key_frames must be >= 0, --synthetic_videos >= 1 and --synthetic_frames >= 3",
              file=sys.stderr)
        return 2
    try:
        glance, focus = (int(v) for v in args.selected.split(",")) if args.selected else (0, 0)
        if args.selected and not (glance >= 1 and focus >= 1 and glance + focus <= args.num_segments):
            raise ValueError
    except ValueError:
        print(f"error: --selected {args.selected}: give G,L, two positive counts with G + L <= --num_segments "
              f"({args.num_segments})", file=sys.stderr)
        return 2
    if not args.synthetic_key_frames and not os.path.isdir(args.videos):
        print(f"error: --videos {args.videos}: no such folder (scripts/fetch_test_videos.sh DEST fetches "
              f"the test videos)", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="bench_video_") as work:
        if args.synthetic_key_frames:
            args.videos = synthetic_videos(work, args.synthetic_key_frames, args.synthetic_videos,
                                           args.synthetic_frames)
            print(f"{args.synthetic_videos} synthetic H.264 videos, {args.synthetic_frames} frames of 320x240, "
                  f"a key frame every {args.synthetic_key_frames}")
        data, names, counts = prepare(args.videos, work, args.short_side, args.quality)
        total = sum(counts)
        print(f"T0={args.num_segments}, input {args.input_size}, one thread, {args.rounds} rounds x {args.clips} "
              f"clips per side, sides alternating, median round reported")
        modes = [("train", True, None, 0), ("val", False, None, 0)]
        if glance:
            modes.append((f"val, {glance} glance frames then {focus} focus frames one read each", False,
                          (np.arange(glance) * args.num_segments // glance).tolist(), focus))
        for label, train, positions, steps in modes:
            common = dict(num_segments=args.num_segments, input_size=args.input_size, train=train,
                          template=TEMPLATE, decode_positions=positions)
            sides = {
                "frame folders": build_dataset("custom", data, "train", list_file=os.path.join(data, "frames_list.txt"),
                                               **common),
                "video files": build_dataset("custom", data, "train", list_file=os.path.join(data, "videos_list.txt"),
                                             frame_root=os.path.abspath(args.videos), video_files=True, **common),
            }
            if args.plain:
                sides[PLAIN] = sides["video files"]
            rates = {name: [] for name in sides}
            order = list(sides)
            for r in range(args.rounds + 1):
                indices = [(r * args.clips + k) % len(names) for k in range(args.clips)]
                for name in (order if r % 2 else order[::-1]):
                    sides[name].set_epoch(r)
                    rate = time_round(sides[name], indices, improved=name != PLAIN, focus=steps)
                    if r:                                            # round 0 warms the caches
                        rates[name].append(rate)
            decoded, needed = decoded_share(sides["video files"], args.clips, args.rounds, focus=steps)
            medians = {name: statistics.median(v) for name, v in rates.items()}
            print(f"[{label}]")
            for name, value in medians.items():
                print(f"  {name:14s} {value:7.2f} clips/s per worker  (rounds: "
                      f"{', '.join(f'{v:.2f}' for v in rates[name])})")
            print(f"  video files / frame folders: {medians['video files'] / medians['frame folders']:.2f}x; "
                  f"decoded per clip {decoded:.1f} frames for {needed:.1f} needed "
                  f"({decoded / (total / len(names)):.0%} of a video's {total / len(names):.0f} frames on average)")
            if args.plain:
                plain, _ = decoded_share(sides["video files"], args.clips, args.rounds, improved=False, focus=steps)
                print(f"  {PLAIN} / frame folders: {medians[PLAIN] / medians['frame folders']:.2f}x, decoding "
                      f"{plain:.1f} frames per clip; video files / {PLAIN}: {medians['video files'] / medians[PLAIN]:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
