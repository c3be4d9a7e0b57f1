"""Decoding the frames of one opened video by decoded index, seeking forward where its slot table allows.

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
"""
from __future__ import annotations

from typing import Dict, Iterator, List, Optional, Tuple

from .video_table import VideoTiming, _reason, _video_errors

#: Send the packets of frames nobody needs to the decoder as skippable where the video allows it
#: (:attr:`VideoTiming.skippable`); False decodes every frame up to a needed one (for comparisons).
SKIP_UNNEEDED = True


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
