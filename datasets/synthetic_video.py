"""Synthetic videos as files: the encoder that writes one (:class:`VideoWriter`) and the name a list file
gives it (:func:`video_name`).
"""
from __future__ import annotations

from fractions import Fraction
from typing import Any, Dict

import numpy as np

from .synthetic_options import VIDEO_CODECS

#: Frame rate of the videos written with ``video_files=True``.
VIDEO_RATE = 25


def video_name(name: str, params: Dict[str, Any]) -> str:
    """What the list file names for video ``name``: its frame folder, or (``video_files``) its video file."""
    return name + VIDEO_CODECS[params["video_codec"]][2] if params["video_files"] else name


class VideoWriter:
    """Encodes frames ``(H, W, 3)`` uint8 RGB one by one into a video file at :data:`VIDEO_RATE` frames/s
    with a codec of :data:`VIDEO_CODECS` (frame ``k``, 0-based, is shown at ``k / VIDEO_RATE`` s, so the
    frame numbered ``k + 1`` by the extraction is the ``k``-th written). A context manager; leaving it
    flushes the encoder and closes the file."""

    def __init__(self, path: str, width: int, height: int, codec: str = "ffv1", key_frame_interval: int = 250):
        import av
        encoder, pix_fmt, _, options = VIDEO_CODECS[codec]
        options = dict(options)
        if codec == "h264":
            options["x264-params"] = f"keyint={key_frame_interval}:min-keyint={key_frame_interval}:scenecut=0"
        self.container = av.open(path, "w")
        self.stream = self.container.add_stream(encoder, rate=VIDEO_RATE, options=options)
        self.stream.width, self.stream.height, self.stream.pix_fmt = width, height, pix_fmt
        self.stream.codec_context.time_base = Fraction(1, VIDEO_RATE)
        self.count = 0

    def write(self, frame: np.ndarray) -> None:
        import av
        picture = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
        picture.pts, picture.time_base = self.count, Fraction(1, VIDEO_RATE)
        self.count += 1
        for packet in self.stream.encode(picture):
            self.container.mux(packet)

    def close(self) -> None:
        try:
            for packet in self.stream.encode():
                self.container.mux(packet)
        finally:
            self.container.close()

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
