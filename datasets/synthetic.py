"""The synthetic dataset: a seeded generator of videos where both *where* and *when* matter.

It writes the same layout as ActivityNet (``classInd.txt``, ``synthetic_{train,val}_split.txt`` with
``video,num_frames,label`` lines, ``frames/<video>/image_00001.jpg`` ...), so the whole real pipeline
runs on it, plus one ground-truth side file per split, ``object_boxes_{split}.csv`` (see
:mod:`.boxes`), and ``synthetic.json`` (the parameters; written last, it marks a complete set).

Each video is rendered from its seeds alone (:mod:`.synthetic_render`, which says what it shows; design
and knobs in ``docs/synthetic.md``); the options are checked by :mod:`.synthetic_options`, video files
written by :mod:`.synthetic_video`.

Determinism: video ``i`` of a split is rendered from ``SeedSequence([seed, split, i])`` only, so the
files are identical whatever the number of workers. :func:`generate` writes into a temporary folder
and renames it; :func:`ensure_generated` takes an exclusive lock file (``.<name>.lock`` beside the
root, ``fcntl.flock``) so concurrent callers (several DDP ranks, several jobs on one machine)
generate once and the others wait and reuse the result.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import time
from typing import Any, Dict, Optional, Sequence, Union

import numpy as np

from .boxes import write_boxes
from .errors import DataError
from .files import write_lines_atomic
from .lists import format_list_line
from .synthetic_options import DEFAULTS, resolve_params
from .synthetic_render import class_appearance, render_video
from .synthetic_video import video_name

FORMAT_VERSION = 1
MARKER = "synthetic.json"
SPLIT_CODES = {"train": 0, "val": 1}


def _video_job(job):
    folder, seed_words, label, params = job
    if not params["video_files"]:
        os.makedirs(folder, exist_ok=True)
    _, boxes, visible = render_video(seed_words, label, params, folder)
    return boxes, visible


def _default_workers() -> int:
    return max(1, min(os.cpu_count() or 1, 8))


def _progress(items, total: int, desc: str):
    """``items`` with progress: a bar on a terminal, else a plain line on stderr about every tenth of the way."""
    if sys.stderr.isatty():
        from tqdm import tqdm

        yield from tqdm(items, total=total, desc=desc, unit="video", leave=False)
        return
    step, started = max(1, total // 10), time.time()
    for i, item in enumerate(items, 1):  # (reported when made: a consumer may stop after the last one)
        if i % step == 0 or i == total:
            print(f"{desc}: {i}/{total} videos ({time.time() - started:.0f} s)", file=sys.stderr, flush=True)
        yield item


def _write_split(tmp: str, split: str, params: Dict[str, Any], pool) -> None:
    count = params[f"{split}_videos"]
    code = SPLIT_CODES[split]
    order_rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([params["seed"], code, 2 ** 31])))
    labels = order_rng.permutation(np.arange(count) % params["num_classes"])
    names = [f"{split}_{i:05d}" for i in range(count)]
    jobs = [(os.path.join(tmp, "frames", name), (params["seed"], code, i), int(label), params)
            for i, (name, label) in enumerate(zip(names, labels))]
    results = _progress(pool.imap(_video_job, jobs, chunksize=4) if pool else map(_video_job, jobs), count,
                        f"synthetic {split}")
    rows = [(video_name(name, params), boxes, visible) for name, (boxes, visible) in zip(names, results)]
    write_boxes(os.path.join(tmp, f"object_boxes_{split}.csv"), rows)
    n = params["frames_per_video"]
    write_lines_atomic(os.path.join(tmp, f"synthetic_{split}_split.txt"),
                       (format_list_line(video_name(name, params), n, [int(label)], separator=",", multi_label=True)
                        for name, label in zip(names, labels)))


def generate(root: str, *, seed: int = DEFAULTS["seed"], num_classes: int = DEFAULTS["num_classes"],
             train_videos: int = DEFAULTS["train_videos"], val_videos: int = DEFAULTS["val_videos"],
             frames_per_video: int = DEFAULTS["frames_per_video"],
             frame_size: Union[int, Sequence[int]] = DEFAULTS["frame_size"], workers: Optional[int] = None,
             object_size: Sequence[float] = DEFAULTS["object_size"],
             visible_fraction: Sequence[float] = DEFAULTS["visible_fraction"],
             num_distractors: Sequence[int] = DEFAULTS["num_distractors"], quality: int = DEFAULTS["quality"],
             twin_classes: int = DEFAULTS["twin_classes"], checker_cell: int = DEFAULTS["checker_cell"],
             chroma_subsampling: str = DEFAULTS["chroma_subsampling"], video_files: bool = DEFAULTS["video_files"],
             video_codec: str = DEFAULTS["video_codec"], key_frame_interval: int = DEFAULTS["key_frame_interval"],
             overwrite: bool = False) -> str:
    """Generate the dataset into ``root`` (atomically: a temporary sibling folder, then a rename).

    ``frame_size`` is an int (square) or ``(width, height)``; ``workers`` processes render videos
    in parallel (default: the CPU count, at most 8). An existing ``root`` is an error unless
    ``overwrite``. ``video_files``: write each video as one file ``frames/<video>.mkv`` (``video_codec``
    ``'ffv1'``, lossless) or ``frames/<video>.mp4`` (``'h264'``, a key frame every ``key_frame_interval``
    frames) instead of a folder of JPEG frames; the list and box files then name the files (read them
    with ``video_files=True``, flag ``--video_files``). Returns ``root``.
    """
    params = resolve_params(seed=seed, num_classes=num_classes, train_videos=train_videos, val_videos=val_videos,
                            frames_per_video=frames_per_video, frame_size=frame_size, object_size=object_size,
                            visible_fraction=visible_fraction, num_distractors=num_distractors, quality=quality,
                            twin_classes=twin_classes, checker_cell=checker_cell,
                            chroma_subsampling=chroma_subsampling, video_files=video_files,
                            video_codec=video_codec, key_frame_interval=key_frame_interval)
    root = os.path.abspath(root)
    if os.path.exists(root) and not overwrite:
        raise DataError(f"{root} already exists; pass overwrite=True or use ensure_generated()")
    parent, name = os.path.split(root)
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(os.path.join(tmp, "frames"))
    started = time.time()
    workers = _default_workers() if workers is None else max(1, int(workers))
    try:
        if workers > 1:
            import multiprocessing
            with multiprocessing.get_context().Pool(workers) as pool:
                for split in SPLIT_CODES:
                    _write_split(tmp, split, params, pool)
        else:
            for split in SPLIT_CODES:
                _write_split(tmp, split, params, None)
        write_lines_atomic(os.path.join(tmp, "classInd.txt"),
                           (class_appearance(c, params["num_classes"], params["twin_classes"])[0]
                            for c in range(params["num_classes"])))
        marker = {"format": FORMAT_VERSION, "params": params, "seconds": round(time.time() - started, 2)}
        write_lines_atomic(os.path.join(tmp, MARKER), [json.dumps(marker, indent=1)])
        if os.path.exists(root):
            trash = os.path.join(parent, f".{name}.old-{os.getpid()}")
            os.rename(root, trash)
            os.rename(tmp, root)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.rename(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root


def read_marker(root: str) -> Optional[Dict[str, Any]]:
    """The parameters a complete dataset in ``root`` was generated with, or None."""
    try:
        with open(os.path.join(root, MARKER), encoding="utf-8") as f:
            return json.load(f)["params"]
    except (OSError, ValueError, KeyError):
        return None


@contextlib.contextmanager
def _exclusive_lock(path: str):
    """An exclusive inter-process lock held on ``path`` (``fcntl.flock``; O_EXCL polling elsewhere)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: a lock file created with O_EXCL, polled
        while True:
            try:
                fd = os.open(path + ".excl", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                break
            except FileExistsError:
                time.sleep(0.2)
        try:
            yield
        finally:
            os.close(fd)
            os.remove(path + ".excl")
        return
    with open(path, "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def ensure_generated(root: str, *, workers: Optional[int] = None, **params: Any) -> str:
    """Generate the dataset into ``root`` unless a complete one with the same parameters is there.

    Takes the same keyword arguments as :func:`generate`. Safe under concurrency: callers take an
    exclusive lock file beside ``root``; the first generates, the others wait, then find the
    marker and return. A complete dataset with *different* parameters raises :class:`DataError`
    (delete it or pass the same parameters); so does a non-empty ``root`` without a marker.
    Returns ``root``.
    """
    wanted = resolve_params(**params)
    root = os.path.abspath(root)

    def check() -> bool:
        found = read_marker(root)
        if found is None:
            return False
        for key, value in json.loads(json.dumps(resolve_params())).items():  # options added since it was made
            found.setdefault(key, value)
        if found != json.loads(json.dumps(wanted)):
            diff = {k: (found.get(k), wanted[k]) for k in wanted if found.get(k) != json.loads(json.dumps(wanted[k]))}
            raise DataError(f"{root} holds a synthetic dataset generated with other parameters "
                            f"(found vs wanted: {diff}); delete it or pass the same parameters")
        return True

    if check():
        return root
    parent, name = os.path.split(root)
    os.makedirs(parent, exist_ok=True)
    with _exclusive_lock(os.path.join(parent, f".{name}.lock")):
        if check():
            return root
        if os.path.exists(root):
            if os.path.isdir(root) and not os.listdir(root):
                os.rmdir(root)
            else:
                raise DataError(f"{root} exists but is not a complete synthetic dataset (no {MARKER}); "
                                f"delete it or choose another folder")
        generate(root, workers=workers, **wanted)
    return root
