"""Frame extraction: videos -> frame folders + list files that the datasets read.

Usage::

    python -m datasets.extract VIDEOS_DIR_OR_LIST OUT_DIR [--format custom] [--template image_{:05d}.jpg]
        [--short_side 360] [--fps F] [--workers N] [--backend auto|pyav|ffmpeg] [--quality 90]
        [--val_fraction 0.2] [--seed 0] [--allow_truncated] [--extensions .mp4 .avi ...] [--quiet]

Input layouts (decided by the first argument):

* a folder of class folders, ``VIDEOS/<class>/<video>.<ext>``: every video is extracted to
  ``<frame root>/<class>/<video>/``, and the class file, the train list and the val list of the
  chosen ``--format`` are written (a seeded ``--val_fraction`` of each class goes to val);
* a folder with ``train/`` and ``val/``, each holding class folders: the same, with the given split;
* a folder of videos, or a text file with one video path per line (relative paths are relative to
  the list file's folder): frames go to ``<frame root>/<video>/`` and ``frame_counts.txt`` lists
  ``<video><SEP><num_frames>`` per line (SEP is the format's separator), to which labels can be
  appended to make a list file.

``--format`` picks a registry entry (``custom`` by default: ``classInd.txt``, ``train_split.txt``,
``val_split.txt``, ``frames/<video>/image_00001.jpg``, comma-separated) so the output is read by
``build_dataset(FORMAT, OUT_DIR, ...)``; a ``dataset.json`` describing the output (what the
``custom`` dataset reads automatically) is written as well.

Frames: the short side is scaled to ``--short_side`` (default 360 as the official tool; 0 keeps the
size), the display rotation is applied, frames are numbered from 1 and written as JPEG at the
video's own rate or ``--fps``, at constant rate (details in :mod:`.video`).

Resumable: a video's frames are written to a hidden temporary folder renamed into place when
complete, so an existing frame folder means a finished video and is skipped. Unreadable, empty or
truncated videos are reported and skipped; the batch continues and a summary is printed at the end
(and written to ``extract_failures.txt``). Exit status: 0 when every video is extracted, 1 when
some failed, 2 for bad arguments.

Backends: PyAV (``pip install av``, the ``[video]`` extra) when importable, else an ``ffmpeg``
binary on PATH, else an error.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .frames import check_template, count_frames
from .files import write_lines_atomic
from .lists import format_list_line
from .registry import CONFIG_NAME, DATASETS, DatasetSpec
from .video import BACKENDS, ExtractionError, choose_backend

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv",
                    ".3gp", ".ogv", ".ts")
FRAME_COUNTS = "frame_counts.txt"
FAILURES = "extract_failures.txt"


@dataclass
class Entry:
    """One video to extract: its file, its frame folder name, and (for labelled layouts) class and split."""

    source: str
    name: str
    label: Optional[int] = None
    split: Optional[str] = None


@dataclass
class Result:
    name: str
    source: str
    status: str           # 'extracted', 'done' (found complete), 'failed'
    frames: int = 0
    message: str = ""


# ---------------------------------------------------------------------------------------------
# Discovery


def _is_video(name: str, extensions: Sequence[str]) -> bool:
    return os.path.splitext(name)[1].lower() in extensions and not name.startswith(".")


def _stem(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]


def discover(source: str, extensions: Sequence[str] = VIDEO_EXTENSIONS) -> Tuple[str, List[Entry], List[str]]:
    """Find the videos under ``source``: returns ``(layout, entries, class_names)``.

    layout is ``'flat'``, ``'classes'`` or ``'splits'`` (see the module doc); ``class_names`` is
    sorted (empty for flat). Raises ``ValueError`` for an empty or mixed folder.
    """
    extensions = tuple(e.lower() if e.startswith(".") else "." + e.lower() for e in extensions)
    if os.path.isfile(source):
        base = os.path.dirname(os.path.abspath(source))
        with open(source, encoding="utf-8-sig") as f:
            paths = [l.strip() for l in f if l.strip()]
        if not paths:
            raise ValueError(f"{source}: the video list is empty")
        return "flat", [Entry(os.path.join(base, p), _stem(p)) for p in paths], []
    if not os.path.isdir(source):
        raise ValueError(f"{source}: no such file or folder")
    names = sorted(os.listdir(source))
    top_videos = [n for n in names if os.path.isfile(os.path.join(source, n)) and _is_video(n, extensions)]
    subdirs = [n for n in names if os.path.isdir(os.path.join(source, n)) and not n.startswith(".")]

    def videos_in(folder):
        return sorted(n for n in os.listdir(folder)
                      if os.path.isfile(os.path.join(folder, n)) and _is_video(n, extensions))

    if {"train", "val"} <= set(subdirs) and not top_videos:
        classes = sorted({c for split in ("train", "val") for c in os.listdir(os.path.join(source, split))
                          if os.path.isdir(os.path.join(source, split, c)) and not c.startswith(".")})
        entries = [Entry(os.path.join(source, split, c, v), f"{c}/{_stem(v)}", label, split)
                   for split in ("train", "val") for label, c in enumerate(classes)
                   if os.path.isdir(os.path.join(source, split, c))
                   for v in videos_in(os.path.join(source, split, c))]
        layout = "splits"
    else:
        classes = [d for d in subdirs if videos_in(os.path.join(source, d))]
        if classes and top_videos:
            raise ValueError(f"{source}: mixed layout: {len(top_videos)} video(s) at the top level and "
                             f"{len(classes)} class folder(s); use one or the other")
        if classes:
            entries = [Entry(os.path.join(source, c, v), f"{c}/{_stem(v)}", label)
                       for label, c in enumerate(classes) for v in videos_in(os.path.join(source, c))]
            layout = "classes"
        else:
            entries = [Entry(os.path.join(source, v), _stem(v)) for v in top_videos]
            layout, classes = "flat", []
    if not entries:
        raise ValueError(f"{source}: no video files found (extensions {', '.join(extensions)})")
    return layout, entries, classes


def assign_splits(entries: List[Entry], num_classes: int, val_fraction: float, seed: int) -> None:
    """Give every labelled entry without a split one: per class, a seeded ``val_fraction`` goes to val.

    The choice depends only on the seed, the class name order and the video names, not on which
    videos extract successfully, so resumed runs keep the same split.
    """
    for label in range(num_classes):
        members = sorted((e for e in entries if e.label == label and e.split is None), key=lambda e: e.name)
        rng = np.random.default_rng([seed, label])
        order = rng.permutation(len(members))
        n_val = int(round(val_fraction * len(members)))
        for rank, i in enumerate(order):
            members[i].split = "val" if rank < n_val else "train"


# ---------------------------------------------------------------------------------------------
# One video


def extract_video(task: Dict) -> Result:
    """Extract one video atomically (temporary folder, then rename). Never raises for bad videos."""
    final, entry = task["final"], task["entry"]
    parent, base = os.path.split(final)
    tmp = os.path.join(parent, f".{base}.part")
    try:
        os.makedirs(parent, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        frames, warning = BACKENDS[task["backend"]](
            entry.source, tmp, task["template"], task["short_side"], task["fps"], task["quality"],
            task["allow_truncated"])
        os.rename(tmp, final)
        return Result(entry.name, entry.source, "extracted", frames, warning)
    except Exception as e:  # a bad video must never stop the batch
        shutil.rmtree(tmp, ignore_errors=True)
        message = str(e) if isinstance(e, ExtractionError) else f"cannot decode: {type(e).__name__}: {e}"
        return Result(entry.name, entry.source, "failed", 0, message)


# ---------------------------------------------------------------------------------------------
# Command line


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m datasets.extract", description=__doc__.split("\n\n")[0], allow_abbrev=False,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("source", help="folder of videos (flat, class folders, or train/val of class folders) or a list file")
    p.add_argument("out", help="output data directory")
    p.add_argument("--format", default="custom", choices=sorted(n for n in DATASETS if n != "synthetic"),
                   help="dataset layout to write (file names, separator, frame root, template)")
    p.add_argument("--template", default=None, help="frame file name (unset: the format's, e.g. image_{:05d}.jpg)")
    p.add_argument("--short_side", type=int, default=360, help="scale the short side to this (0: keep)")
    p.add_argument("--fps", type=float, default=None, help="output frame rate (unset: the video's own)")
    p.add_argument("--workers", type=int, default=max(1, min(os.cpu_count() or 1, 16)), help="parallel processes")
    p.add_argument("--backend", default="auto", choices=("auto", "pyav", "ffmpeg"))
    p.add_argument("--quality", type=int, default=90, help="JPEG quality 1..100")
    p.add_argument("--val_fraction", type=float, default=0.2, help="share of each class put in val (class folders)")
    p.add_argument("--seed", type=int, default=0, help="seed of the train/val split")
    p.add_argument("--allow_truncated", action=argparse.BooleanOptionalAction, default=False, help="keep videos that end early or fail mid-way")
    p.add_argument("--extensions", nargs="+", default=list(VIDEO_EXTENSIONS), help="video file extensions")
    p.add_argument("--quiet", action=argparse.BooleanOptionalAction, default=False, help="no progress bar")
    return p


def _layout_spec(fmt: str, template: Optional[str]) -> DatasetSpec:
    spec = DATASETS[fmt]
    return spec.replace(template=check_template(template)) if template else spec


def _reject_unlistable(entries: List[Entry], spec: DatasetSpec) -> Tuple[List[Entry], List[Result]]:
    """Split entries into listable ones and rejections (bad names, duplicates)."""
    kept, rejected, seen = [], [], set()
    for e in entries:
        try:
            format_list_line(e.name, 1, [0], separator=spec.separator, multi_label=spec.multi_label)
            if e.name in seen:
                raise ValueError(f"another video already uses the frame folder name {e.name!r}")
            if e.name in (".", "..") or e.name.startswith("."):
                raise ValueError(f"frame folder name {e.name!r} would be hidden")
        except ValueError as err:
            rejected.append(Result(e.name, e.source, "failed", 0, f"skipped: {err}"))
            continue
        seen.add(e.name)
        kept.append(e)
    return kept, rejected


def _run(tasks: List[Dict], workers: int, quiet: bool) -> List[Result]:
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        tqdm = None
    bar = tqdm(total=len(tasks), unit="video", desc="extract", disable=True if quiet else None) if tqdm else None
    results = []
    if workers > 1 and len(tasks) > 1:
        import multiprocessing
        with multiprocessing.get_context().Pool(min(workers, len(tasks))) as pool:
            for result in pool.imap_unordered(extract_video, tasks):
                results.append(result)
                if bar:
                    bar.update()
    else:
        for task in tasks:
            results.append(extract_video(task))
            if bar:
                bar.update()
    if bar:
        bar.close()
    return results


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point; returns the exit status (0: all extracted, 1: some failed)."""
    args = build_parser().parse_args(argv)
    try:
        spec = _layout_spec(args.format, args.template)
        backend = choose_backend(args.backend)
        layout, entries, classes = discover(args.source, args.extensions)
    except (ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not 1 <= args.quality <= 100 or not 0 <= args.val_fraction <= 1 or (args.fps is not None and args.fps <= 0):
        print("error: --quality must be 1..100, --val_fraction 0..1 and --fps positive", file=sys.stderr)
        return 2
    if layout == "classes":
        assign_splits(entries, len(classes), args.val_fraction, args.seed)
    entries, results = _reject_unlistable(entries, spec)
    frame_root = os.path.normpath(os.path.join(args.out, spec.frame_root))
    os.makedirs(frame_root, exist_ok=True)

    tasks = []
    for e in entries:
        final = os.path.join(frame_root, e.name)
        if os.path.isdir(final):
            n = count_frames(final, spec.template)
            if n > 0:
                results.append(Result(e.name, e.source, "done", n))
                continue
            shutil.rmtree(final)
        tasks.append(dict(final=final, entry=e, backend=backend, template=spec.template,
                          short_side=args.short_side, fps=args.fps, quality=args.quality,
                          allow_truncated=args.allow_truncated))
    results += _run(tasks, args.workers, args.quiet)

    frames = {r.name: r.frames for r in results if r.status in ("extracted", "done")}
    written = _write_lists(args.out, spec, layout, entries, classes, frames)
    failed = sorted((r for r in results if r.status == "failed"), key=lambda r: r.name)
    _summarise(args.out, results, failed, written, backend)
    return 1 if failed else 0


def _write_lists(out: str, spec: DatasetSpec, layout: str, entries: List[Entry], classes: List[str],
                 frames: Dict[str, int]) -> List[str]:
    """Write the list files (only videos with frames) and the class file; returns what was written."""
    written = []
    if layout == "flat":
        path = os.path.join(out, FRAME_COUNTS)
        write_lines_atomic(path, (f"{e.name}{spec.separator}{frames[e.name]}" for e in entries if e.name in frames))
        return [f"{path} ({sum(e.name in frames for e in entries)} videos)"]
    class_path = os.path.join(out, spec.class_file)
    write_lines_atomic(class_path, classes)
    written.append(f"{class_path} ({len(classes)} classes)")
    for split in ("train", "val"):
        path = os.path.join(out, spec.list_file(split))
        rows = [format_list_line(e.name, frames[e.name], [e.label], separator=spec.separator,
                                 multi_label=spec.multi_label)
                for e in entries if e.split == split and e.name in frames]
        write_lines_atomic(path, rows)
        written.append(f"{path} ({len(rows)} videos)")
    config = {k: getattr(spec, k) for k in ("class_file", "train_list", "val_list", "frame_root", "template",
                                            "separator", "multi_label", "metric", "flip")}
    write_lines_atomic(os.path.join(out, CONFIG_NAME), [json.dumps(config, indent=1)])
    return written


def _summarise(out: str, results: List[Result], failed: List[Result], written: List[str], backend: str) -> None:
    extracted = [r for r in results if r.status == "extracted"]
    done = [r for r in results if r.status == "done"]
    warned = [r for r in extracted if r.message]
    print(f"[{backend}] extracted {len(extracted)} video(s) ({sum(r.frames for r in extracted)} frames), "
          f"{len(done)} already done, {len(failed)} failed")
    for r in warned:
        print(f"  warning: {r.source}: {r.message}")
    for r in failed:
        print(f"  FAILED: {r.source}: {r.message}")
    for line in written:
        print(f"  wrote {line}")
    report = os.path.join(out, FAILURES)
    if failed:
        write_lines_atomic(report, (f"{r.source}\t{r.message}" for r in failed))
        print(f"  failures listed in {report}")
    elif os.path.exists(report):
        os.remove(report)


def cli(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m datasets.extract``: a data or file error is one ``error:`` line and exit status 2
    (its traceback only with ``UNIADAFOCUS_DEBUG=1``). The package does not import ``ops``, so this
    is its own small copy of ``ops.cli.run_main``."""
    from .errors import DataError

    try:
        return main(argv)
    except (DataError, ExtractionError, ValueError, OSError) as exc:
        if os.environ.get("UNIADAFOCUS_DEBUG", "") not in ("", "0"):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(cli())
