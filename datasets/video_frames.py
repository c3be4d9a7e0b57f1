"""Frames read straight from video files, numbered exactly as the extraction numbers them.

A list line of a dataset built with ``video_files=True`` names a video file (relative to the frame
root) instead of a frame folder. Frame ``k`` of that video (``k = start_index, start_index+1, ...``)
is the image that ``python -m datasets.extract`` writes as file ``k`` for it at the video's own rate
(:mod:`.video`): the packets' presentation times, sorted and counted from the first, put decoded
frame ``i`` on the output slots ``[round(t_i·rate), round(t_{i+1}·rate))`` (the last frame lasts
one frame period), and the display rotation is applied. So a video and the frame folder extracted
from it (``--short_side 0``) have the same frame count, the same sampled frame numbers and, when the
folder stores its frames losslessly (a ``.png`` template), the same pixels.

What is read, per video and process: one demux pass (packets only, no decoding) gives the slot table
(:class:`~.video_table.VideoTiming`, :mod:`.video_table`; kept in a per-process cache of
:data:`~.video_table.CACHE_SIZE` videos, keyed by path, size and modification time). Per item, one
container is used; :meth:`VideoFrameReader.read` seeks to the key frame at or before each needed frame
that lies beyond the next key frame, and decodes forward, converting only the needed frames to RGB. A seek is trusted only while the frames it yields carry the
presentation times the table expects, one after the other, starting with a frame the decoder marks a
key frame (that first frame places it, so a seek that lands on an earlier key frame is fine).
Otherwise (AVI files with packed B-frames carry swapped frame times; an AVI file cut before its index
flags every packet a key frame) the video is marked unseekable for the process and decoded from its
start, counting frames as the extraction does (:mod:`.video_decoder`).

Frames nobody needs and no other frame refers to are not decoded where the container stores
presentation times, nor, once a decoding from its start recorded their order, in an unseekable video
(:mod:`.video_decoder`).

After a read the video stays open, its decoder where the read stopped, and a later read whose
frames all come after the last one returned goes on decoding from there (:mod:`.open_videos`).

Problems are :class:`~.errors.FrameError` lines naming the list line, the video file and the frame:
a file that cannot be opened or holds no video stream, a truncated video (the rule of
:func:`.video.falls_short`: its packets end well before the length its container declares), a list
count that differs from the video's, a frame that cannot be decoded or lies past the decodable end.
With ``missing='repeat_first'`` the last two are replaced by the video's first frame (each
substitution logged) and a truncated video is read as far as it goes.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import threading
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .errors import FrameError
from .frames import MISSING_POLICIES, Box
from .lists import VideoRecord
from .open_videos import _open_videos
from .video import frame_to_array
from .video_decoder import _DecodedFrames
from .video_table import VideoTiming, _file_key, _reason, _video_errors, video_timing

logger = logging.getLogger(__name__)


def count_video_frames(path: str, where: str = "") -> int:
    """Frames of the video file ``path`` at its own rate (what the extraction writes); a file that cannot
    be read raises :class:`FrameError` naming ``where`` and the file."""
    return VideoFrameReader(path, where=where).timing().count


class VideoFrameReader:
    """Reads numbered frames of one video file, with the interface of :class:`~.frames.FrameReader`.

    ``where`` names the list line (``'file:line'``) for messages; ``first_index`` is the number of the
    video's first frame; ``num_frames``: the count the list gives (checked against the video: a
    larger one makes the frames past the video's end missing, a smaller one is an error; None: not
    checked). After :meth:`read`, :attr:`decoded` holds how many frames it decoded (the needed ones, those
    between a key frame and a needed frame, and a substitute's).
    """

    def __init__(self, video: str, *, missing: str = "error", where: str = "", first_index: int = 1,
                 num_frames: Optional[int] = None):
        if missing not in MISSING_POLICIES:
            raise ValueError(f"missing must be one of {MISSING_POLICIES}, got {missing!r}")
        self.video = video
        self.missing = missing
        self.where = where
        self.first_index = first_index
        self.num_frames = num_frames
        self.decoded = 0

    def _prefix(self) -> str:
        return f"{self.where}: " if self.where else ""

    def path(self, index: int) -> str:
        """The video file and the frame, for messages."""
        return f"{self.video} (frame {index})"

    def timing(self) -> VideoTiming:
        """The video's slot table; raises :class:`FrameError` when the file cannot be read."""
        if not os.path.isfile(self.video):
            raise FrameError(f"{self._prefix()}video file is missing: {self.video}")
        try:
            return video_timing(self.video)
        except (ValueError,) + _video_errors() as e:
            raise FrameError(f"{self._prefix()}cannot read video {self.video}: {_reason(e)}") from None

    def check_size(self, index: int, size: Tuple[int, int], expected: Tuple[int, int], first: int) -> None:
        """Raise :class:`FrameError` when frame ``index`` has ``size`` (w, h) but frame ``first`` has ``expected``."""
        if tuple(size) != tuple(expected):
            raise FrameError(f"{self._prefix()}frame {index} has size {size[0]}x{size[1]} but frame "
                             f"{first} has {expected[0]}x{expected[1]}: {self.video}")

    def read_jpeg(self, index: int):
        raise FrameError(f"{self._prefix()}{self.video} is a video file; reading JPEG bytes for decoding on the "
                         f"device needs frame folders")

    def _check(self, timing: VideoTiming) -> None:
        if timing.truncated and self.missing == "error":
            raise FrameError(f"{self._prefix()}{self.video}: {timing.truncated} (--missing_frames repeat_first "
                             f"reads the frames it holds)")
        if self.num_frames is not None and self.num_frames < timing.count:
            raise FrameError(f"{self._prefix()}the list gives {self.num_frames} frames, but video {self.video} has "
                             f"{timing.count} at its own rate; correct the count (0 counts the frames from the file)")

    def read(self, indices: Sequence[int], crop: Optional[Callable[[int, int], Box]] = None,
             expected: Optional[Tuple[Tuple[int, int], int]] = None) -> np.ndarray:
        """Decode frames ``indices`` (frame numbers) -> uint8 ``(len(indices), h, w, 3)``, as
        :meth:`.frames.FrameReader.read`: ``crop(width, height)``, called once with the frames' size,
        may return the region ``(x, y, w, h)`` to keep; ``expected``: ``((w, h), frame)``, the size
        found before on frame ``frame``. One container is opened (twice when a substitute or an
        unseekable video needs a fresh start)."""
        numbers = [int(i) for i in indices]
        if not numbers:
            raise ValueError("no frame indices given")
        timing = self.timing()
        self._check(timing)
        self.decoded = 0
        offsets = np.asarray(numbers, dtype=np.int64) - self.first_index
        before = [n for n, o in zip(numbers, offsets) if o < 0]
        if before:
            raise FrameError(f"{self._prefix()}frame {before[0]} comes before the first frame "
                             f"{self.first_index} of {self.video}")
        rows: Dict[int, List[int]] = {}
        inside = offsets < timing.count
        decoded = timing.decoded_index(np.minimum(offsets, timing.count - 1))
        for row, (number_inside, index) in enumerate(zip(inside, decoded)):
            if number_inside:
                rows.setdefault(int(index), []).append(row)
        state = _Output(len(numbers), numbers, crop, expected, self)
        stop = ""
        if rows:
            stop = self._decode_into(timing, rows, state)
        missing = [row for row in range(len(numbers)) if not state.filled[row]]
        if missing:
            self._substitute(timing, missing, numbers, stop, state)
        return state.out

    def _decode_into(self, timing: VideoTiming, rows: Dict[int, List[int]], state: "_Output") -> str:
        """Decode the decoded-frame indices ``rows`` keys into the rows of ``state``; '' or why it stopped early.
        The video is taken from the process's open videos when its decoder is there, and given back after a
        read that got every frame it asked for."""
        key = _file_key(self.video)
        frames = _open_videos.take(key, timing) or _DecodedFrames(self.video, timing)
        before = frames.decoded
        reformatter = _reformatter()
        try:
            for index, frame in frames.take(sorted(rows)):
                pixels = frame_to_array(frame, 0, reformatter)
                state.put(rows[index], pixels, int(state.numbers[rows[index][0]]))
        finally:
            self.decoded += frames.decoded - before
            if frames.finished:
                _open_videos.give(key, frames)
            else:
                frames.close()
        return frames.stopped

    def _problem(self, number: int, timing: VideoTiming, stop: str) -> str:
        if number - self.first_index >= timing.count:
            listed = f" (the list gives {self.num_frames})" if self.num_frames is not None else ""
            why = f"past the end: the video has {timing.count} frames{listed}"
        else:
            why = stop or "the decoder returned no frame for it"
        return f"{self._prefix()}frame {number} cannot be decoded: {self.video} ({why})"

    def _substitute(self, timing: VideoTiming, missing: List[int], numbers: List[int], stop: str,
                    state: "_Output") -> None:
        problem = self._problem(numbers[missing[0]], timing, stop)
        if self.missing != "repeat_first" or any(numbers[row] == self.first_index for row in missing):
            more = f" (and {len(missing) - 1} more frame(s) of this read)" if len(missing) > 1 else ""
            raise FrameError(problem + more)
        for row in missing:
            logger.warning("%s; substituting frame %d (missing_frames='repeat_first')",
                           self._problem(numbers[row], timing, stop), self.first_index)
        first_stop = self._decode_into(timing, {0: missing}, state)
        if not all(state.filled[row] for row in missing):
            raise FrameError(f"{problem}; the substitute is unusable too: "
                             f"{self._problem(self.first_index, timing, first_stop)}")


class _Output:
    """The array being filled: rows of frame numbers ``numbers``, allocated at the first frame's size."""

    def __init__(self, count: int, numbers: List[int], crop, expected, reader: VideoFrameReader):
        self.count, self.numbers, self.crop, self.expected, self.reader = count, numbers, crop, expected, reader
        self.out: Optional[np.ndarray] = None
        self.filled = [False] * count
        self.size: Optional[Tuple[int, int]] = None
        self.first = 0

    def put(self, rows: List[int], pixels: np.ndarray, number: int) -> None:
        """Store frame ``number``, uint8 RGB ``pixels`` ``(h, w, 3)``, in ``rows`` (its crop region)."""
        size = (pixels.shape[1], pixels.shape[0])
        if self.out is None:
            self.size, self.first = size, number
            if self.expected is not None:
                self.reader.check_size(number, size, *self.expected)
            self.region = self.crop(*size) if self.crop else (0, 0) + size
            self.out = np.empty((self.count, self.region[3], self.region[2], 3), dtype=np.uint8)
        else:
            self.reader.check_size(number, size, self.size, self.first)
        x, y, w, h = self.region
        self.out[rows[0]] = pixels[y:y + h, x:x + w]
        for row in rows[1:]:
            self.out[row] = self.out[rows[0]]
        for row in rows:
            self.filled[row] = True


_local = threading.local()


def _reformatter():
    """This thread's PyAV ``VideoReformatter``: its conversion context is set up once (about 7 ms for a
    bicubic YUV -> RGB one) and reused while the frame size and format stay the same."""
    reformatter = getattr(_local, "reformatter", None)
    if reformatter is None:
        from av.video.reformatter import VideoReformatter
        reformatter = _local.reformatter = VideoReformatter()
    return reformatter


def resolve_counts(records: Sequence[VideoRecord], root: str) -> List[VideoRecord]:
    """``records`` with every ``num_frames`` 0 replaced by the frame count of its video file under ``root``
    (one demux pass per such video, kept in the cache for the readers); a file that cannot be read raises
    :class:`FrameError` naming its list line."""
    resolved = []
    for record in records:
        if record.num_frames == 0:
            count = count_video_frames(os.path.join(root, record.path), f"{record.where} (video {record.path!r})")
            record = dataclasses.replace(record, num_frames=count)
        resolved.append(record)
    return resolved
