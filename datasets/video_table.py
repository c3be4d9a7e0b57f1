"""The slot table of a video file: where each decoded frame lands among the numbered frames.

One demux pass (packets only, no decoding) gives it (:class:`VideoTiming`, :func:`read_timing`): the
packets' presentation times, sorted and counted from the first, put decoded frame ``i`` on the output
slots ``[round(t_i·rate), round(t_{i+1}·rate))`` (the last frame lasts one frame period), the key frames,
whether the video counts as truncated (the rule of :func:`.video.falls_short`) and whether frames nobody
needs may be skipped (:func:`skippable`). :func:`video_timing` keeps the tables of :data:`CACHE_SIZE`
videos per process, keyed by path, size and modification time. The readers of :mod:`.video_frames`
number their frames by it.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from fractions import Fraction
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .video import claimed_frames, declared_duration, falls_short, native_rate

#: Videos whose slot tables one process keeps (least recently used dropped first).
CACHE_SIZE = 4096
_timings: "OrderedDict[Tuple[str, int, int], VideoTiming]" = OrderedDict()
_timings_lock = threading.Lock()        # the selected-frame decoding reads videos from a thread pool


def _new_timings_lock() -> None:
    """A forked child's own lock (a thread of the parent may have held it at the fork)."""
    global _timings_lock
    _timings_lock = threading.Lock()


os.register_at_fork(after_in_child=_new_timings_lock)


def _video_errors() -> tuple:
    """What PyAV raises for a file it cannot open, demux or decode."""
    import av
    return (av.error.FFmpegError, OSError, EOFError)


def _reason(error: Exception) -> str:
    """A short reason: our own ``ValueError`` s as they are, PyAV's errors with their class name."""
    return str(error) if type(error) is ValueError else f"{type(error).__name__}: {error}"


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
