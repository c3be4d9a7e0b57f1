"""One evaluation clip straight from a video file or a frame folder (prediction on a raw video).

``load_clip`` applies the evaluation pipeline of the datasets to a single video: T0 segment centres,
the short side scaled to ``short_side`` and the display rotation applied as the frame
extraction does (360 px by default; 0 keeps the size), then resize to ``input_size * 256 // 224`` and a centre crop. It returns a uint8 clip
``(T0, 3, S, S)`` like a dataset item's ``'video'``. Video files are decoded with PyAV (the
``[video]`` extra), keeping only the frames the clip needs.
"""
from __future__ import annotations

import glob
import importlib.util
import os
import re
from dataclasses import dataclass
from typing import List, Optional

import numpy as np
import torch
from PIL import Image

from .errors import DataError
from .sampling import segment_indices
from .transforms import ResizeCenterCrop
from .frames import open_frame
from .video import frame_to_image, output_size

@dataclass
class ClipInfo:
    """Where a clip came from."""

    source: str
    num_frames: int  # frames in the video (or folder)
    frame_indices: List[int]  # 1-based frame numbers of the clip


def _count_packets(path: str) -> int:
    import av

    with av.open(path) as container:
        stream = container.streams.video[0]
        return sum(1 for packet in container.demux(stream) if packet.size > 0)


def _decode(path: str, wanted: set, short_side: int) -> tuple:
    """(frames, decoded): the frames (0-based decode order) whose index is in ``wanted``, as RGB PIL
    images scaled and rotated as the frame extraction does; ``decoded`` is how many frames were
    decoded, which is every decodable frame whenever some wanted frame is missing."""
    import av

    frames, decoded = {}, 0
    with av.open(path) as container:
        stream = container.streams.video[0]
        for i, frame in enumerate(container.decode(stream)):
            decoded = i + 1
            if i in wanted:
                frames[i] = frame_to_image(frame, short_side)
                if len(frames) == len(wanted):
                    break
    return frames, decoded


def _video_frames(path: str, num_segments: int, short_side: int) -> tuple:
    if importlib.util.find_spec("av") is None:
        raise DataError("reading a video file needs PyAV: pip install av (the [video] extra)")
    try:
        total = _count_packets(path)
        if total < 1:
            raise DataError(f"{path}: no video frames")
        indices = segment_indices(total, num_segments)  # 1-based
        frames, decoded = _decode(path, set(int(i) - 1 for i in indices), short_side)
        if len(frames) < len(set(indices)):  # fewer decodable frames than packets: sample what decodes
            if decoded < 1:
                raise DataError(f"{path}: no decodable video frames")
            total = decoded
            indices = segment_indices(total, num_segments)
            frames, _ = _decode(path, set(int(i) - 1 for i in indices), short_side)
    except DataError:
        raise
    except Exception as exc:  # av.error.* and friends
        raise DataError(f"{path}: cannot decode the video ({exc.__class__.__name__}: {exc})") from None
    return [frames[int(i) - 1] for i in indices], total, [int(i) for i in indices]


def _folder_frames(path: str, num_segments: int, template: Optional[str]) -> tuple:
    if template:
        files = sorted(glob.glob(os.path.join(path, re.sub(r"\{[^}]*\}", "*", template))))
    else:
        files = sorted(f for f in glob.glob(os.path.join(path, "*")) if f.lower().endswith((".jpg", ".jpeg", ".png")))
    if not files:
        raise DataError(f"{path}: no frame files found")
    indices = segment_indices(len(files), num_segments)
    images = []
    for i in indices:
        try:
            images.append(open_frame(files[int(i) - 1]))
        except (OSError, ValueError) as exc:
            raise DataError(f"{files[int(i) - 1]}: cannot read frame ({exc})") from None
    return images, len(files), [int(i) for i in indices]


def load_clip(path: str, num_segments: int, input_size: int, short_side: int = 360,
              template: Optional[str] = None) -> tuple:
    """(uint8 clip (T0, 3, S, S), ClipInfo) from a video file or a folder of frames."""
    if os.path.isdir(path):
        images, total, indices = _folder_frames(path, num_segments, template)
        size = output_size(*images[0].size, short_side or 0)
        if size != images[0].size:  # video files are scaled by the decoder, as the extraction does
            images = [im.resize(size, Image.BICUBIC) for im in images]
    elif os.path.isfile(path):
        images, total, indices = _video_frames(path, num_segments, short_side or 0)
    else:
        raise DataError(f"{path}: no such video file or frame folder")
    clip = torch.from_numpy(np.stack([np.asarray(im) for im in images])).permute(0, 3, 1, 2)  # (T0, 3, h, w)
    geometry = ResizeCenterCrop(input_size).draw(clip.shape[-1], clip.shape[-2])
    return geometry.apply(clip.contiguous()), ClipInfo(source=path, num_frames=total, frame_indices=indices)
