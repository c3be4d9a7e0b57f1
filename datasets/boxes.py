"""Ground-truth object boxes: the side file of datasets that have them (the synthetic one).

The file is a CSV with the header ``video,frame,x1,y1,x2,y2,visible`` and one row per frame:
``video`` is the path used in the list file, ``frame`` the frame number as in the file name
(1-based), ``x1 y1 x2 y2`` the object's box in pixels of the stored frame (continuous coordinates,
pixel ``i`` covers ``[i, i+1)``), and ``visible`` 1 when the object is drawn in that frame, 0 when it
is not (the box then still gives where its trajectory is). Every video has a row for each of its
frames, in any order.
"""
from __future__ import annotations

import csv
import os
from typing import Dict, Iterable, Tuple

import numpy as np

from .errors import ListFileError
from .files import write_lines_atomic

HEADER = ("video", "frame", "x1", "y1", "x2", "y2", "visible")

#: video path -> (boxes float32 (num_frames, 4), visible bool (num_frames,)), frame f at row f - first.
BoxTable = Dict[str, Tuple[np.ndarray, np.ndarray]]


def write_boxes(path: str, rows: Iterable[Tuple[str, np.ndarray, np.ndarray]], first_index: int = 1) -> None:
    """Write ``(video, boxes (n, 4), visible (n,))`` triples to a side file (atomically)."""
    def lines():
        yield ",".join(HEADER)
        for video, boxes, visible in rows:
            if "," in video:
                raise ValueError(f"video name {video!r} contains a comma")
            for f, (box, vis) in enumerate(zip(np.asarray(boxes, dtype=np.float64), np.asarray(visible))):
                coords = ",".join(f"{v:.2f}".rstrip("0").rstrip(".") for v in box)
                yield f"{video},{f + first_index},{coords},{int(bool(vis))}"
    write_lines_atomic(path, lines())


def read_boxes(path: str, first_index: int = 1) -> BoxTable:
    """Read a side file into a :data:`BoxTable`. Raises :class:`ListFileError` naming the line."""
    if not os.path.isfile(path):
        raise ListFileError(f"object box file not found: {path}")
    per_video: Dict[str, Dict[int, Tuple[Tuple[float, ...], bool]]] = {}
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or tuple(h.strip() for h in header) != HEADER:
            raise ListFileError(f"{path}:1: expected the header {','.join(HEADER)!r}, got {header!r}")
        for number, row in enumerate(reader, start=2):
            if not row:
                continue
            try:
                if len(row) != len(HEADER):
                    raise ValueError(f"expected {len(HEADER)} fields, got {len(row)}")
                frame = int(row[1])
                box = tuple(float(v) for v in row[2:6])
                visible = int(row[6])
                if visible not in (0, 1):
                    raise ValueError(f"visible must be 0 or 1, got {visible}")
            except ValueError as e:
                raise ListFileError(f"{path}:{number}: {e}: {','.join(row)!r}") from None
            per_video.setdefault(row[0], {})[frame] = (box, bool(visible))
    table: BoxTable = {}
    for video, frames in per_video.items():
        n = len(frames)
        expected = set(range(first_index, first_index + n))
        if set(frames) != expected:
            missing = sorted(expected - set(frames))[:3]
            raise ListFileError(f"{path}: video {video!r} does not have one row per frame "
                                f"{first_index}..{first_index + n - 1} (e.g. frame {missing} missing)")
        boxes = np.array([frames[i][0] for i in sorted(frames)], dtype=np.float32)
        visible = np.array([frames[i][1] for i in sorted(frames)], dtype=bool)
        table[video] = (boxes, visible)
    return table
