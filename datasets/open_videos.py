"""The videos one process keeps open between reads, each decoder where its last read left it.

After a read the video stays open, its decoder where the read stopped (:data:`OPEN_VIDEOS` per
process, bounded in count and estimated memory, least recently used closed first, a replaced file's
dropped, none inherited by a forked worker): a later read whose frames all come after the last one
returned goes on decoding from there (the focus frames after the glance frames, step by step),
any other opens it again and seeks.
"""
from __future__ import annotations

import os
import threading
from collections import OrderedDict
from typing import Optional, Tuple

from .video_decoder import _DecodedFrames
from .video_table import VideoTiming

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
