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
(:class:`VideoTiming`; kept in a per-process cache of :data:`CACHE_SIZE` videos, keyed by path, size
and modification time). Per item, one container is used; :meth:`VideoFrameReader.read` seeks to the
key frame at or before each needed frame that lies beyond the next key frame, and decodes forward,
converting only the needed frames to RGB. A seek is trusted only while the frames it yields carry the
presentation times the table expects, one after the other, starting with a frame the decoder marks a
key frame (that first frame places it, so a seek that lands on an earlier key frame is fine).
Otherwise (AVI files with packed B-frames carry swapped frame times; an AVI file cut before its index
flags every packet a key frame) the video is marked unseekable for the process and decoded from its
start, counting frames as the extraction does.

Frames nobody needs and no other frame refers to (H.264 non-reference pictures, MPEG-4 Part 2 and
MPEG-1/2 B-frames) are not decoded where the container stores presentation times (MP4, Matroska):
their packets go to the decoder with ``skip_frame='NONREF'``, which drops them, and the frames that
come out are placed by their times (each must be the next table entry but for skipped ones). The
frames decoded are bit-identical to those of a decoding in order. An unseekable video of such a
codec (AVI, whose times are guesses; MPEG-4 streams with packed B-frames, whose frames come out a
packet late under other times) skips the same way once a decoding from its start without skipping
recorded the times and picture types the decoder returned, in order (as far as that decoding went):
the frames are then placed by that record, and any disagreement ends skipping for the video. Other
codecs decode every frame.

After a read the video stays open, its decoder where the read stopped (:data:`OPEN_VIDEOS` per
process, bounded in count and estimated memory, least recently used closed first, a replaced file's
dropped, none inherited by a forked worker): a later read whose frames all come after the last one
returned goes on decoding from there (the focus frames after the glance frames, step by step),
any other opens it again and seeks.

Problems are :class:`~.errors.FrameError` lines naming the list line, the video file and the frame:
a file that cannot be opened or holds no video stream, a truncated video (the rule of
:func:`.video.falls_short`: its packets end well before the length its container declares), a list
count that differs from the video's, a frame that cannot be decoded or lies past the decodable end.
With ``missing='repeat_first'`` the last two are replaced by the video's first frame (each
substitution logged) and a truncated video is read as far as it goes.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from .errors import FrameError
from .frames import MISSING_POLICIES, Box
from .lists import VideoRecord
from .video import claimed_frames, declared_duration, falls_short, frame_to_array, native_rate

logger = logging.getLogger(__name__)

#: Videos whose slot tables one process keeps (least recently used dropped first).
CACHE_SIZE = 4096
_timings: "OrderedDict[Tuple[str, int, int], VideoTiming]" = OrderedDict()
_timings_lock = threading.Lock()        # the selected-frame decoding reads videos from a thread pool


def _new_timings_lock() -> None:
    """A forked child's own lock (a thread of the parent may have held it at the fork)."""
    global _timings_lock
    _timings_lock = threading.Lock()


os.register_at_fork(after_in_child=_new_timings_lock)
#: Send the packets of frames nobody needs to the decoder as skippable where the video allows it
#: (:attr:`VideoTiming.skippable`); False decodes every frame up to a needed one (for comparisons).
SKIP_UNNEEDED = True


def _video_errors() -> tuple:
    """What PyAV raises for a file it cannot open, demux or decode."""
    import av
    return (av.error.FFmpegError, OSError, EOFError)


@dataclass
class VideoTiming:
    """Where each decoded frame of a video lands among the numbered frames.

    pts: int64 ``(n,)``, the presentation times of the n video packets, sorted (stream time base);
    decoded frame ``i`` is shown at ``pts[i]``. slots: int64 ``(n,)``, the first 0-based frame number
    decoded frame ``i`` fills (non-decreasing; frame ``i`` fills ``[slots[i], slots[i+1])``, the last
    one exactly ``slots[-1]``). keys: int64 ``(m,)``, sorted decoded indices of the key frames.
    truncated: '' for a complete video, else why it counts as truncated. seekable: cleared when a seek
    turned out not to land where the table says (then every read decodes from the start). skippable:
    frames nobody needs may go to the decoder as skippable, placing the decoded ones by their times
    (:func:`skippable`). codec_skips: the decoder can drop non-reference frames (:data:`SKIPPING_CODECS`);
    for an unseekable video, ``order`` (the times of decoded frames 0, 1, ... as a decoding from the
    start without skipping returned them: recorded as far as one went), ``order_kinds`` (their picture
    types) and ``order_index`` ({time: decoded index} over ``order``, -1 for a time met twice) then place
    the frames a decoding with skipping returns, up to where ``order`` reaches (and before
    ``order_flushed``, the first frame the decoder returned only at the end of the stream, whose time
    it makes up), while ``order_trusted`` (cleared when they disagree).
    """

    pts: np.ndarray
    slots: np.ndarray
    keys: np.ndarray
    truncated: str = ""
    seekable: bool = True
    skippable: bool = False
    codec_skips: bool = False
    order: List[Optional[int]] = dataclasses.field(default_factory=list)
    order_kinds: List[int] = dataclasses.field(default_factory=list)
    order_flushed: Optional[int] = None
    packet_times: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    order_index: Dict[Optional[int], int] = dataclasses.field(default_factory=dict)
    order_trusted: bool = True

    @property
    def count(self) -> int:
        """Frames the video has at its own rate (what the extraction writes)."""
        return int(self.slots[-1]) + 1

    def decoded_index(self, offsets: np.ndarray) -> np.ndarray:
        """Decoded-frame indices ``(N,)`` of the 0-based frame numbers ``offsets`` ``(N,)`` (each < count)."""
        return np.searchsorted(self.slots, offsets, side="right") - 1

    @functools.cached_property
    def single_times(self) -> Dict[int, int]:
        """{time: decoded index} of the times that exactly one decoded frame has."""
        times, first, counts = np.unique(self.pts, return_index=True, return_counts=True)
        return {int(t): int(i) for t, i, c in zip(times, first, counts) if c == 1}

    def record(self, decoded: int, time: Optional[int], kind: int, flushed: bool) -> None:
        """Note that a decoding from the start without skipping returned decoded frame ``decoded`` with
        ``time`` and picture type ``kind`` (extends :attr:`order` when it is the next one); ``flushed``: at
        the end of the stream."""
        with _timings_lock:                                              # (reads run in a thread pool too)
            if flushed and self.order_flushed is None:
                self.order_flushed = decoded
            if decoded == len(self.order):
                self.order.append(time)
                self.order_kinds.append(kind)
                self.order_index[time] = -1 if time in self.order_index else decoded

    def key_before(self, decoded: int) -> int:
        """The decoded index of the last key frame at or before decoded frame ``decoded`` (0 if none)."""
        at = int(np.searchsorted(self.keys, decoded, side="right")) - 1
        return int(self.keys[at]) if at >= 0 else 0


def _slots(pts: Sequence[int], time_base: Fraction, rate: Fraction) -> np.ndarray:
    """round-half-up(t_i·rate) for t_i = (pts_i - pts_0)·time_base, in exact integer arithmetic."""
    scale = Fraction(time_base) * rate                             # slots per pts unit
    a, b = scale.numerator, scale.denominator
    first = int(pts[0])
    return np.array([(2 * (int(p) - first) * a + b) // (2 * b) for p in pts], dtype=np.int64)


def read_timing(path: str) -> VideoTiming:
    """The slot table of the video file ``path`` from one demux pass (no decoding).

    Raises ``ValueError`` with a short reason (without the file name) when the file holds no video
    stream, no packet, or packets without presentation times, and what PyAV raises when it cannot
    be opened.
    """
    import av
    with av.open(path) as container:
        if not container.streams.video:
            raise ValueError("no video stream")
        stream = container.streams.video[0]
        times, key_flags, untimed, stopped = [], [], 0, ""
        can_skip = skippable(container.format.name, stream.codec_context.name)
        try:
            for packet in container.demux(stream):
                if not packet.size:
                    continue
                if can_skip and stream.codec_context.name == "mpeg4" and bytes(packet).count(VOP_START) > 1:
                    can_skip = False                     # packed B-frames: a packet's time is not its frame's
                if packet.pts is None:
                    untimed += 1
                    continue
                times.append(int(packet.pts))
                key_flags.append(bool(packet.is_keyframe))
        except _video_errors() as e:
            stopped = f"reading stopped after {len(times)} packet(s): {e}"
        if untimed:
            raise ValueError(f"{untimed} video packet(s) carry no presentation time, so frames cannot be numbered "
                             f"without decoding the whole file; extract it with python -m datasets.extract")
        if not times:
            raise ValueError(stopped or "no video packet")
        rate, time_base = native_rate(stream), stream.time_base
        order = np.argsort(np.asarray(times, dtype=np.int64), kind="stable")
        pts = np.asarray(times, dtype=np.int64)[order]
        keys = np.unique(np.searchsorted(pts, np.asarray(times, dtype=np.int64)[np.asarray(key_flags, dtype=bool)]))
        step = 1 / rate
        span = Fraction(int(pts[-1] - pts[0])) * time_base + step
        declared = declared_duration(stream)
        truncated = ""
        if stopped or falls_short(declared, span, step):
            length = f" ({float(declared):.2f} s)" if declared is not None else ""
            truncated = (f"truncated video: {claimed_frames(stream)}{length}, {len(pts)} in the file "
                         f"({float(span):.2f} s)" + (f"; {stopped}" if stopped else ""))
        return VideoTiming(pts=pts, slots=_slots(pts, time_base, rate), keys=keys.astype(np.int64),
                           truncated=truncated, skippable=can_skip, packet_times=np.asarray(times, dtype=np.int64),
                           codec_skips=stream.codec_context.name in SKIPPING_CODECS)


#: Decoders that drop a frame no other frame refers to when asked (``skip_frame='NONREF'``): H.264
#: slices with nal_ref_idc 0, MPEG-4 Part 2 B-VOPs, MPEG-1/2 B-pictures. Others decode every frame.
SKIPPING_CODECS = frozenset({"h264", "mpeg4", "mpeg1video", "mpeg2video"})
#: Containers that store each packet's presentation time (FFmpeg demuxer names), so that a frame can be
#: placed by its time. AVI stores none: FFmpeg derives times from the packet count, and for B-frames,
#: packed ones above all, they are not the display order.
TIMED_CONTAINERS = frozenset({"mov", "mp4", "matroska", "webm"})


#: The start code of an MPEG-4 Part 2 video object plane (one frame). A "packed" stream (DivX, AVI
#: files above all, and files remuxed from them) stores a B-frame in the packet of the frame before
#: it, so one packet holds two; the decoder then returns frames one packet late, under other times.
VOP_START = b"\x00\x00\x01\xb6"


def skippable(container_format: str, codec: str) -> bool:
    """Whether frames of a ``codec`` stream in a container of ``container_format`` (FFmpeg's demuxer
    names, comma-separated) may be skipped: the decoder drops non-reference frames on request and the
    container gives the times that place the decoded ones (:func:`read_timing` also clears it for an
    MPEG-4 Part 2 stream with packed B-frames)."""
    return codec in SKIPPING_CODECS and bool(TIMED_CONTAINERS & set(container_format.split(",")))


def _file_key(path: str) -> Tuple[str, int, int]:
    """``(absolute path, size, modification time)`` of ``path``: what the caches tell files apart by."""
    info = os.stat(path)
    return os.path.abspath(path), info.st_size, info.st_mtime_ns


def video_timing(path: str) -> VideoTiming:
    """:func:`read_timing` through the per-process cache (keyed by path, size and modification time)."""
    key = _file_key(path)
    with _timings_lock:
        timing = _timings.get(key)
        if timing is not None:
            _timings.move_to_end(key)
            return timing
    timing = read_timing(path)                                         # outside the lock: one demux pass
    with _timings_lock:
        _timings[key] = timing
        while len(_timings) > CACHE_SIZE:
            _timings.popitem(last=False)
    return timing


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


def _reason(error: Exception) -> str:
    """A short reason: our own ``ValueError`` s as they are, PyAV's errors with their class name."""
    return str(error) if type(error) is ValueError else f"{type(error).__name__}: {error}"


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


class _DecodedFrames:
    """Decoded frames of one opened video, by decoded index, seeking forward where the table allows.

    The decoder stays where a :meth:`take` left it: a later :meth:`take` whose frames all come after
    the last one returned (and were not sent to the decoder as skippable) goes on from there, seeking
    only past the next key frame as usual; any other starts over. :attr:`decoded` counts every frame
    decoded, :attr:`footprint` estimates the bytes the decoder holds (0 before the first frame).
    """

    def __init__(self, video: str, timing: VideoTiming):
        self.video, self.timing = video, timing
        self.container = None
        self.stopped = ""
        self.decoded = 0
        self.footprint = 0
        self.finished = False            # the last take returned every frame it was asked for
        self._frames: Optional[Iterator["object"]] = None  # the decoder's output from where it stands
        self._position, self._verify, self._sought = -1, False, 0
        self._times: Optional[Dict[Optional[int], int]] = None   # what places frames while skipping
        self._skipped: set = set()       # decoded indices sent as skippable since the last (re)start
        self._returned: set = set()      # decoded indices the decoder returned since then (when verifying)
        self._flushing = False           # the decoder is being drained at the end of the stream
        self._wanted: set = set()        # what the packets being sent are decoded for (the current take)

    def _open(self):
        import av
        if self.container is not None:
            self.container.close()
        self.container = av.open(self.video)
        self.stream = self.container.streams.video[0]
        self.stream.codec_context.thread_count = 1                   # one thread per loader worker
        self._fresh = True

    def close(self) -> None:
        if self.container is not None:
            self.container.close()
            self.container = None
        self._frames = None

    def _placing(self, last: int) -> Optional[Dict[Optional[int], int]]:
        """{time: decoded index} that places the frames of a decoding with skipping up to decoded frame
        ``last``, or None: decode every frame (nothing to skip, or nothing to place the frames by)."""
        timing = self.timing
        if not SKIP_UNNEEDED:
            return None
        if timing.seekable:
            return timing.single_times if timing.skippable else None
        end = len(timing.order) if timing.order_flushed is None else timing.order_flushed
        if timing.codec_skips and timing.order_trusted and last < end:
            return timing.order_index
        return None

    def _restart(self, key: int, times: Optional[Dict[Optional[int], int]]) -> bool:
        """Start decoding at key frame ``key`` (seeking) or at the start (``key`` 0), skipping with ``times``
        (:meth:`_placing`); whether to verify the first frame as a landing."""
        if key > 0:
            self.container.seek(int(self.timing.pts[key]), stream=self.stream, backward=True, any_frame=False)
            self._verify, self._sought = True, key
        else:
            if not self._fresh:
                self._open()                                             # back to the start
            self._position, self._verify, self._sought = -1, times is not None, 0
        self._fresh = False
        self._times, self._skipped, self._returned = times, set(), set()
        self._frames = self._decode(None if times is None else self._wanted, self._skipped, times)
        return key > 0

    def take(self, wanted: List[int]) -> Iterator[Tuple[int, "object"]]:
        """Yield ``(index, frame)`` for the sorted decoded indices ``wanted`` that decode; on a decode error
        or the end of the stream, stop and say why in :attr:`stopped`.

        With :attr:`VideoTiming.skippable` the packets of frames that are not wanted go to the decoder with
        ``skip_frame='NONREF'`` (it drops them when no other frame refers to them; every frame it decodes
        is then bit-identical) and each frame is placed by its time: it must be a table entry after the
        previous one, with only frames sent as skippable in between. Frames that break this (or, without
        skipping, whose times are not the next table entries after a seek) make the video unseekable for
        the process, and it is decoded from its start without skipping, counting frames. An unseekable
        video skips the same way within the part whose order a decoding from the start recorded
        (:attr:`VideoTiming.order`); frames that break it there end its skipping for the process."""
        timing = self.timing
        self.stopped, self.finished, landing = "", False, False
        left = set(wanted)                                               # not returned yet
        times = self._placing(wanted[-1])
        if self._frames is not None and (wanted[0] <= self._position or times is not self._times
                                         or not self._skipped.isdisjoint(wanted)):
            self._frames = None                                          # behind, or already skipped: start over
        self._wanted.clear()
        self._wanted.update(wanted)
        try:
            if self.container is None:
                self._open()
            while left:
                target = min(left)
                key = timing.key_before(target) if timing.seekable else 0
                if self._frames is None or (key > self._position + 1 and key > self._sought):  # (a seek may
                    landing = self._restart(key, self._placing(wanted[-1]))  # land before its key)
                frame = next(self._frames, None)
                if frame is None and self._times is not None:            # a wanted frame never came: skipping
                    if timing.seekable:                                  # lost it; decode everything
                        timing.seekable = False
                    else:
                        timing.order_trusted = False
                    self._restart(0, None)
                    continue
                if frame is None:
                    self.stopped = f"the stream ended after {self._position + 1} decoded frame(s)"
                    self._frames = None
                    return
                self.decoded += 1
                if not self.footprint:
                    self.footprint = REFERENCE_FRAMES * sum(plane.buffer_size for plane in frame.planes)
                if not self._verify:
                    self._position += 1
                    if timing.codec_skips and not timing.seekable:       # (only such videos use the record)
                        timing.record(self._position, frame.pts, int(frame.pict_type), self._flushing)
                    at = self._position
                else:
                    counted = not landing and not timing.seekable
                    if landing:
                        at = _landed(timing, frame, target)
                    elif not counted:
                        at = _placed(timing.single_times, frame, self._position, self._skipped)
                    else:
                        at = _recorded(timing, frame, self._returned)
                    landing = False
                    if at < 0:
                        if timing.seekable:
                            timing.seekable = False                      # frame times disagree with the table
                        else:
                            timing.order_trusted = False                 # ... or with the recorded order
                        self._restart(0, None)
                        continue
                    self._position = max(self._position, at) if counted else at   # (counted: any order)
                    self._returned.add(at)
                if at in left:
                    yield at, frame
                    left.discard(at)
            self.finished = True
        except _video_errors() as e:
            self.stopped = f"decoding stopped after frame {self._position + 1} of the stream: {_reason(e)}"
            self._frames = None

    def _decode(self, wanted: Optional[set], skipped: set,
                times: Optional[Dict[Optional[int], int]]) -> Iterator["object"]:
        """The decoded frames from the container's position on. ``wanted``: the decoded indices whose packets
        are decoded in full (read as each packet is sent); every other packet whose time ``times`` maps to
        a decoded index goes to the decoder with ``skip_frame='NONREF'`` and its index is added to
        ``skipped`` (None: decode every packet)."""
        codec = self.stream.codec_context
        mode = "DEFAULT"
        codec.skip_frame = mode
        self._flushing = False
        counted = times is not None and times is self.timing.order_index
        stored, sent = self.timing.packet_times, 0
        for packet in self.container.demux(self.stream):
            self._flushing = not packet.size                             # the empty packet at the end drains
            if wanted is not None and packet.size:
                if not counted:
                    ahead = [times.get(packet.pts, -1)]
                elif sent < len(stored) and stored[sent] == packet.pts:
                    ahead = [times.get(int(t), -1) for t in stored[sent:sent + 1 + PACKED_AHEAD]]
                    sent += 1
                else:                                                    # not the packets the table read
                    ahead, wanted = [-1], None
                want = "DEFAULT" if any(at < 0 or at in wanted for at in ahead) else "NONREF"
                if want == "NONREF":
                    skipped.add(ahead[0])
                if want != mode:
                    codec.skip_frame = mode = want
            elif mode != "DEFAULT":
                codec.skip_frame = mode = "DEFAULT"
            yield from codec.decode(packet)


#: Skipping by the recorded order (an unseekable video), a packet goes to the decoder in full also when
#: one of the next this many packets holds a wanted frame: MPEG-4's packed B-frames are decoded a
#: packet or two after the packet that stores them, and skipping a frame between drops them too.
PACKED_AHEAD = 2

#: Frames a decoder may hold at once, for the memory estimate of an open video: H.264's largest
#: reference set (16) and the frame being decoded and the one returned.
REFERENCE_FRAMES = 18
#: Open videos one process keeps between reads, each decoder where its last read left it, so that a
#: read of later frames of the same video (the focus frames after the glance frames, step by step)
#: goes on decoding instead of opening, seeking and decoding the group of pictures again; at most
#: this many, and decoders estimated to hold at most :data:`OPEN_VIDEO_BYTES` together (0: none kept).
OPEN_VIDEOS = 64
OPEN_VIDEO_BYTES = 256 << 20


class _OpenVideos:
    """The process's open videos (:data:`OPEN_VIDEOS`), keyed by path, size and modification time; an entry
    is taken out while a read uses it (so no two threads share a decoder) and given back after."""

    def __init__(self):
        self.forget()
        os.register_at_fork(after_in_child=self.forget)

    def forget(self) -> None:
        """Start empty without closing anything: in a forked child (a loader worker) the parent's open
        videos share their file offsets with the parent's, so they are left alone."""
        self.entries: "OrderedDict[Tuple[str, int, int], _DecodedFrames]" = OrderedDict()
        self.lock = threading.Lock()

    def take(self, key: Tuple[str, int, int], timing: VideoTiming) -> Optional[_DecodedFrames]:
        """The open video of ``key`` (removed from the cache), or None; one read with another table (the
        table cache dropped and read it again) is closed."""
        with self.lock:
            frames = self.entries.pop(key, None)
        if frames is not None and frames.timing is not timing:
            frames.close()
            frames = None
        return frames

    def give(self, key: Tuple[str, int, int], frames: _DecodedFrames) -> None:
        """Keep ``frames`` for the next read of ``key``, closing the least recently used beyond the bounds and
        any entry of the same path with another size or modification time (a replaced file)."""
        closing = []
        with self.lock:
            for other in [k for k in self.entries if k[0] == key[0] and k != key]:
                closing.append(self.entries.pop(other))
            if frames.footprint <= OPEN_VIDEO_BYTES and OPEN_VIDEOS > 0:
                old = self.entries.pop(key, None)
                if old is not None:
                    closing.append(old)
                self.entries[key] = frames
            else:
                closing.append(frames)
            while self.entries and (len(self.entries) > OPEN_VIDEOS
                                    or sum(f.footprint for f in self.entries.values()) > OPEN_VIDEO_BYTES):
                closing.append(self.entries.popitem(last=False)[1])
        for entry in closing:
            entry.close()

    def clear(self) -> None:
        """Close every open video."""
        with self.lock:
            entries, self.entries = list(self.entries.values()), OrderedDict()
        for entry in entries:
            entry.close()


_open_videos = _OpenVideos()


def close_open_videos() -> None:
    """Close the videos this process keeps open between reads (:data:`OPEN_VIDEOS`)."""
    _open_videos.clear()


_local = threading.local()


def _reformatter():
    """This thread's PyAV ``VideoReformatter``: its conversion context is set up once (about 7 ms for a
    bicubic YUV -> RGB one) and reused while the frame size and format stay the same."""
    reformatter = getattr(_local, "reformatter", None)
    if reformatter is None:
        from av.video.reformatter import VideoReformatter
        reformatter = _local.reformatter = VideoReformatter()
    return reformatter


def _landed(timing: VideoTiming, frame, target: int) -> int:
    """The decoded index of the first frame after a seek: the table entry with the frame's time when there
    is exactly one, at or before ``target``, and the decoder marks the frame a key frame; -1 otherwise (the
    seek is not trusted: e.g. an AVI file without its index flags every packet a key frame, and a seek then
    lands on frames that need the ones before)."""
    if not frame.key_frame:
        return -1
    at = timing.single_times.get(frame.pts, -1)
    return at if at <= target else -1


def _recorded(timing: VideoTiming, frame, returned: set) -> int:
    """The decoded index of a frame from a decoding from the start with skipping: the one the recorded
    order gives its time, when it has not come before and the recorded frame has its picture type; -1
    otherwise. (With frames skipped a decoder may return a frame earlier than the skipped ones before
    it, e.g. the MPEG-4 decoder the P-frame held back for a skipped B-frame; the order is not checked.)"""
    at = timing.order_index.get(frame.pts, -1)
    if at < 0 or at in returned or timing.order_kinds[at] != int(frame.pict_type):
        return -1
    return at


def _placed(times: Dict[Optional[int], int], frame, position: int, skipped: set) -> int:
    """The decoded index of a frame that follows decoded frame ``position``: the one ``times`` gives for its
    time when that comes after ``position`` and every index in between is in ``skipped`` (sent to the
    decoder as skippable); -1 otherwise."""
    at = times.get(frame.pts, -1)
    if at <= position or any(k not in skipped for k in range(position + 1, at)):
        return -1
    return at


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
