"""Decoding a video file into numbered JPEG frames, with PyAV or the ffmpeg binary.

Both backends scale the short side (bicubic; 0 keeps the size), apply the display rotation and write
``template.format(k)`` for k = 1, 2, ... into a folder. They raise :class:`ExtractionError` with a
one-line reason when a video cannot be (completely) extracted; :mod:`.extract` runs them over many
videos. PyAV is imported lazily (the ``[video]`` extra).

Output rate (PyAV): the video's own rate, or ``fps``, at constant rate. Presentation times come from
the packets (sorted: decoders emit frames in presentation order), counted from the first frame;
decoded frame ``i`` owns the output slots ``[round(t_i·rate), round(t_{i+1}·rate))``, so a
variable-rate video repeats a frame across a gap and, of two frames in one slot, the later is kept.
A video is *truncated* when its decoded duration falls short of what the container declares (the
stream duration, or its frame count over the rate) by more than :data:`TRUNCATION_TOLERANCE` and two
frames; :func:`truncation` applies that rule to a video that is read without extraction (prediction).
Both name the frame count the container claims and the count that decoded.
"""
from __future__ import annotations

import importlib.util
import math
import os
import re
import shutil
import subprocess
from fractions import Fraction
from typing import List, Optional, Tuple

import numpy as np
from PIL import Image

from .frames import count_frames

#: A video is truncated when its decoded duration falls short of the declared one by more than this.
TRUNCATION_TOLERANCE = 0.05


class ExtractionError(Exception):
    """A video could not be (completely) extracted; the message says why."""


def output_size(width: int, height: int, short_side: int) -> Tuple[int, int]:
    """(w, h) with the short side scaled to ``short_side`` (0: unchanged), the other rounded."""
    if short_side <= 0:
        return width, height
    if width <= height:
        return short_side, max(1, int(math.floor(height * short_side / width + 0.5)))
    return max(1, int(math.floor(width * short_side / height + 0.5))), short_side


#: Counter-clockwise display rotation (degrees, from the stream's display matrix) -> quarter turns.
_QUARTER_TURNS = {90: 1, 180: 2, 270: 3}


def _round_half_up(x: Fraction) -> int:
    return math.floor(x + Fraction(1, 2))


def native_rate(stream) -> Fraction:
    """The stream's own frame rate (frames per second; 25 when the container gives none)."""
    native = stream.guessed_rate or stream.average_rate or stream.base_rate
    return Fraction(native) if native else Fraction(25)


def declared_duration(stream) -> Optional[Fraction]:
    """What the container says the stream lasts (seconds): the longer of its duration and its frame count
    over the native rate; None when it says neither."""
    declared = []
    if stream.duration and stream.time_base:
        declared.append(Fraction(stream.duration) * stream.time_base)
    if stream.frames:
        declared.append(stream.frames / native_rate(stream))
    return max(declared) if declared else None


def falls_short(declared: Optional[Fraction], span: Fraction, step: Fraction) -> bool:
    """Whether ``span`` seconds decoded fall short of the ``declared`` duration: by more than
    :data:`TRUNCATION_TOLERANCE` of it and more than two frame periods ``step``."""
    if declared is None:
        return False
    short = declared - span
    return short > TRUNCATION_TOLERANCE * declared and short > 2 * step


def claimed_frames(stream) -> str:
    """'the container claims N frames' (or, without a frame count, its duration), for messages."""
    if stream.frames:
        return f"the container claims {stream.frames} frames"
    declared = declared_duration(stream)
    return f"the container claims {float(declared):.2f} s" if declared is not None else "the container claims no length"


def truncation(path: str, decoded: Optional[int] = None) -> str:
    """'' for a complete video file; for a truncated one, one line naming the file, the frame count its
    container claims and how many decoded, e.g. ``'cut.avi: truncated video: the container claims 270
    frames (11.26 s), 2 decoded (0.08 s)'``.

    ``decoded``: how many frames the caller could decode (default: every packet of the stream counts);
    the decoded span runs from the first of them to one frame period after the last, in presentation
    time, so a variable-rate video that shows few frames over its whole length is not truncated.
    """
    import av
    times = _presentation_times(path)
    with av.open(path) as container:
        stream = container.streams.video[0]
        declared, step, claims = declared_duration(stream), 1 / native_rate(stream), claimed_frames(stream)
    count = len(times) if decoded is None else min(decoded, len(times))
    span = times[count - 1] - times[0] + step if count else Fraction(0)
    if not falls_short(declared, span, step):
        return ""
    return (f"{path}: truncated video: {claims} ({float(declared):.2f} s), {count} decoded "
            f"({float(span):.2f} s)")


def _presentation_times(path: str) -> List[Fraction]:
    """Sorted presentation times (seconds) of the first video stream's packets (a demux-only pass).

    Decoders emit frames in presentation order, so the k-th decoded frame is shown at the k-th
    smallest packet time; this also fixes files whose frames carry swapped timestamps (packed
    B-frames in AVI).
    """
    import av
    with av.open(path) as container:
        if not container.streams.video:
            raise ExtractionError("no video stream")
        stream = container.streams.video[0]
        tb = stream.time_base
        times = [Fraction(p.pts) * tb for p in container.demux(stream) if p.size and p.pts is not None]
    return sorted(times)


class _FrameWriter:
    """Writes JPEG frames numbered from 1 into a folder; repeats of a frame are file copies."""

    def __init__(self, folder: str, template: str, quality: int):
        self.folder, self.template, self.quality = folder, template, quality
        self.count = 0

    def write(self, image, copies: int) -> None:
        first = None
        for _ in range(copies):
            self.count += 1
            path = os.path.join(self.folder, self.template.format(self.count))
            if first is None:
                image.save(path, quality=self.quality)
                first = path
            else:
                shutil.copyfile(first, path)


def frame_to_array(frame, short_side: int, reformatter=None) -> np.ndarray:
    """A decoded frame -> uint8 RGB ``(h, w, 3)``, short side scaled (bicubic) and display rotation applied.

    One swscale call to packed RGB (bicubic, also at the frame's own size, where it is exact for RGB
    sources) read straight into numpy; a rotated frame is a rotated view. ``reformatter``: a PyAV
    ``VideoReformatter`` to reuse (one per thread) instead of a new one per frame.
    """
    w, h = output_size(frame.width, frame.height, short_side)
    # threads=1: no swscale slice threads (PyAV's default, 0, starts one per core): a process forked after a
    # conversion (a loader worker, an extraction worker) would inherit a context whose threads it lacks, and
    # reconfiguring it waits for them forever; one thread per worker is the rule here anyway.
    if reformatter is not None:
        pixels = reformatter.reformat(frame, width=w, height=h, format="rgb24", interpolation="BICUBIC",
                                      threads=1).to_ndarray()
    else:
        pixels = frame.to_ndarray(width=w, height=h, format="rgb24", interpolation="BICUBIC", threads=1)
    turns = _QUARTER_TURNS.get(int(round(getattr(frame, "rotation", 0) or 0)) % 360)
    return np.rot90(pixels, turns) if turns else pixels


def frame_to_image(frame, short_side: int) -> Image.Image:
    """:func:`frame_to_array` as a PIL image."""
    return Image.fromarray(np.ascontiguousarray(frame_to_array(frame, short_side)))


def extract_pyav(source: str, folder: str, template: str, short_side: int, fps: Optional[float],
                 quality: int, allow_truncated: bool) -> Tuple[int, str]:
    """Decode ``source`` with PyAV into ``folder``; returns ``(frames written, warning)``.

    Constant-rate output: decoded frame ``i`` (at time ``t_i`` from the first frame) owns the
    output slots ``[round(t_i·rate), round(t_{i+1}·rate))`` and is written that many times; the
    last frame lasts one native frame period.
    """
    import av
    times = _presentation_times(source)
    writer = _FrameWriter(folder, template, quality)
    with av.open(source) as container:
        if not container.streams.video:
            raise ExtractionError("no video stream")
        stream = container.streams.video[0]
        native = native_rate(stream)
        rate = Fraction(fps).limit_denominator(1001) if fps else native
        step = 1 / native
        declared, claims = declared_duration(stream), claimed_frames(stream)

        held, held_slot, t, decoded, error = None, 0, Fraction(0), 0, ""
        try:
            for frame in container.decode(stream):
                # time from the first frame: the packets' sorted times, else one period after the last
                t = times[decoded] - times[0] if decoded < len(times) else (t + step if decoded else t)
                decoded += 1
                slot = _round_half_up(t * rate)
                if held is not None:
                    writer.write(held, max(0, slot - held_slot))
                    held_slot = max(held_slot, slot)
                held = frame_to_image(frame, short_side)
        except av.error.FFmpegError as e:
            error = f"decode error after {decoded} frame(s): {e}"
        if held is not None:
            end = _round_half_up((t + step) * rate)
            writer.write(held, max(0, end - held_slot) or (0 if writer.count else 1))
    if writer.count == 0:
        raise ExtractionError(error or "no frame could be decoded")
    span = t + step
    if error or falls_short(declared, span, step):
        reason = error or f"truncated: decoded {float(span):.2f} s of the {float(declared):.2f} s declared"
        reason += f" ({decoded} frames), {claims}"
        if not allow_truncated:
            raise ExtractionError(f"{reason}; pass --allow_truncated to keep it")
        return writer.count, reason
    return writer.count, ""


def printf_template(template: str) -> str:
    """``'image_{:05d}.jpg'`` -> ``'image_%05d.jpg'`` for ffmpeg (one ``{}``/``{:d}``/``{:0Nd}`` field)."""
    match = re.fullmatch(r"(.*?)\{(?::(0?\d*)d)?\}(.*)", template)
    if not match or "{" in match.group(1) + match.group(3) or "}" in match.group(1) + match.group(3):
        raise ExtractionError(f"the ffmpeg backend cannot express the template {template!r}")
    prefix, width, suffix = match.groups()
    return prefix.replace("%", "%%") + f"%{width or ''}d" + suffix.replace("%", "%%")


def extract_ffmpeg(source: str, folder: str, template: str, short_side: int, fps: Optional[float],
                   quality: int, allow_truncated: bool) -> Tuple[int, str]:
    """Run the ``ffmpeg`` binary into ``folder``; returns ``(frames written, warning)``.

    Truncation cannot be detected here; ffmpeg's error output is returned as the warning.
    """
    if short_side > 0:
        scale = (f"scale='if(gt(iw,ih),-1,{short_side})':'if(gt(iw,ih),{short_side},-1)'"
                 f":flags=bicubic")
    else:
        scale = "null"
    qscale = str(int(round(2 + (100 - quality) * 29 / 99)))  # JPEG quality 100..1 -> ffmpeg q 2..31
    command = ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-i", source, "-map", "0:v:0",
               "-vf", scale, "-q:v", qscale, "-start_number", "1"]
    if fps:
        command += ["-r", str(fps)]
    command.append(os.path.join(folder, printf_template(template)))
    run = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    written = count_frames(folder, template)
    message = run.stderr.strip().splitlines()[-1] if run.stderr.strip() else ""
    if run.returncode != 0 or written == 0:
        raise ExtractionError(f"ffmpeg failed (exit {run.returncode}): {message or 'no frames written'}")
    return written, message


BACKENDS = {"pyav": extract_pyav, "ffmpeg": extract_ffmpeg}


def choose_backend(name: str = "auto") -> str:
    """'pyav' when importable, else 'ffmpeg' when on PATH; raises ``RuntimeError`` if neither is."""
    if name not in ("auto", "pyav", "ffmpeg"):
        raise ValueError(f"unknown backend {name!r}")
    if name in ("auto", "pyav"):
        if importlib.util.find_spec("av") is not None:
            return "pyav"
        if name == "pyav":
            raise RuntimeError("the PyAV backend needs the 'av' package: pip install av")
    if shutil.which("ffmpeg"):
        return "ffmpeg"
    if name == "ffmpeg":
        raise RuntimeError("the ffmpeg backend needs an 'ffmpeg' binary on PATH")
    raise RuntimeError("no video decoder: install PyAV (pip install av, or the [video] extra) or put ffmpeg on PATH")
