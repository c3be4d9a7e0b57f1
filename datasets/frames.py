"""Decoding of frame files from a frame folder.

:func:`read_frames` decodes the requested frames of one video with Pillow (libjpeg-turbo for
JPEG) into one uint8 array ``(N, H, W, 3)``; :meth:`FrameReader.read_jpeg` reads a JPEG file's bytes
undecoded, for decoding on the device. A frame that is missing or cannot be decoded raises
:class:`~.errors.FrameError` naming the frame file and the list line, unless
``missing='repeat_first'`` is asked for: then, as in the official code, the first frame of the video
is used instead, and every substitution is logged as a warning.

Frames too large to decode safely: Pillow warns about an image of more than ``PIL.Image.MAX_IMAGE_PIXELS``
pixels (89.5 million by default) and refuses one of twice that (its decompression-bomb guard). No video
frame is that large, and decoding one costs 270 MB or more in every loader worker, so this module makes
Pillow's warning an error too (a filter installed on import, for that warning only) and reports both as
:class:`FrameTooLargeError`, naming the pixel count; :class:`FrameReader` adds the frame and its file.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import warnings
from typing import Any, Callable, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image

from .errors import FrameError

logger = logging.getLogger(__name__)

MISSING_POLICIES = ("error", "repeat_first")
Box = Tuple[int, int, int, int]
#: What reading or decoding a bad frame file raises.
FRAME_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)
#: The first bytes of every JPEG file (start-of-image marker).
JPEG_MAGIC = b"\xff\xd8\xff"

warnings.filterwarnings("error", category=Image.DecompressionBombWarning)


class FrameTooLargeError(ValueError):
    """An image file has more pixels than Pillow decodes safely (the message gives the count)."""


@contextlib.contextmanager
def pixel_limit():
    """Turn Pillow's decompression-bomb guard (its warning and its error) into :class:`FrameTooLargeError`."""
    try:
        yield
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        found = re.search(r"\((\d+) pixels\)", str(exc))
        pixels = f"{int(found.group(1)):,} pixels" if found else str(exc)
        raise FrameTooLargeError(f"too large to decode safely: {pixels}, more than Pillow's limit "
                                 f"PIL.Image.MAX_IMAGE_PIXELS = {Image.MAX_IMAGE_PIXELS:,}") from None


def check_template(template: str) -> str:
    """Validate a frame-name template such as ``'image_{:05d}.jpg'``; returns it unchanged."""
    try:
        first, second = template.format(1), template.format(2)
    except (IndexError, KeyError, ValueError) as e:
        raise ValueError(f"frame template {template!r} must take one integer, like 'image_{{:05d}}.jpg' ({e})") from None
    if first == second or os.sep in first:
        raise ValueError(f"frame template {template!r} must put the frame number into a file name")
    return template


def open_frame(path: str) -> Image.Image:
    """Open and decode one image file as RGB. Raises ``OSError``/``ValueError`` on failure
    (:class:`FrameTooLargeError` for an image too large to decode safely)."""
    with pixel_limit(), Image.open(path) as image:
        if image.mode != "RGB":
            return image.convert("RGB")
        image.load()
        return image


def read_jpeg_file(path: str) -> Tuple[torch.Tensor, Tuple[int, int]]:
    """The bytes of a JPEG file, undecoded, as uint8 ``(n,)``, and its image size ``(w, h)`` from its
    header. Raises ``ValueError`` for a file that is not a JPEG (decoding on the device reads JPEG
    frames only) and what Pillow raises for a header it cannot parse."""
    with open(path, "rb") as f:
        data = f.read()
    if not data.startswith(JPEG_MAGIC):
        raise ValueError(("an empty file" if not data else "not a JPEG file") +
                         "; decoding on the device reads JPEG frames only")
    with pixel_limit(), Image.open(io.BytesIO(data)) as image:  # parses the header only
        size = image.size
    return torch.frombuffer(bytearray(data), dtype=torch.uint8), size


#: Pixels are copied out of Pillow in row bands of at most this many bytes (see copy_pixels).
BAND_BYTES = 1 << 18


def copy_pixels(image: Image.Image, region: Box, out: np.ndarray) -> None:
    """Copy ``region`` ``(x, y, w, h)`` of an RGB image into ``out`` (h, w, 3) uint8.

    The copy goes through ``Image.crop`` in row bands of at most :data:`BAND_BYTES`: converting a
    whole 640x360 frame with ``np.asarray`` costs about 0.7 ms, four times the banded copy
    (measured with Pillow 13 / numpy 2.4), because of the large temporary buffer.
    """
    x, y, w, h = region
    rows = max(1, BAND_BYTES // (3 * w))
    for top in range(0, h, rows):
        bottom = min(h, top + rows)
        out[top:bottom] = np.asarray(image.crop((x, y + top, x + w, y + bottom)))


def describe_folder(folder: str, template: str, limit: int = 3) -> str:
    """A hint for error messages: what the folder really holds."""
    if not os.path.isdir(folder):
        return f"the folder {folder} does not exist"
    names = sorted(os.listdir(folder))
    if not names:
        return f"the folder {folder} is empty"
    expected_ext = os.path.splitext(template.format(1))[1]
    matching = [n for n in names if n.endswith(expected_ext)]
    hint = f"the folder holds {len(names)} file(s), e.g. {', '.join(names[:limit])}"
    if matching and template.format(1) not in names:
        hint += f"; if the frames are named differently, set template= (now {template!r})"
    return hint


class FrameReader:
    """Reads frames of one video folder: ``folder/template.format(i)``.

    ``where`` names the list line (``'file:line'``) for messages; ``first_index`` is the number of
    the video's first frame (used by ``missing='repeat_first'``).
    """

    def __init__(self, folder: str, template: str, *, missing: str = "error", where: str = "",
                 first_index: int = 1):
        if missing not in MISSING_POLICIES:
            raise ValueError(f"missing must be one of {MISSING_POLICIES}, got {missing!r}")
        self.folder = folder
        self.template = template
        self.missing = missing
        self.where = where
        self.first_index = first_index

    def path(self, index: int) -> str:
        return os.path.join(self.folder, self.template.format(int(index)))

    def _problem(self, index: int, error: Exception) -> str:
        path = self.path(index)
        prefix = f"{self.where}: " if self.where else ""
        if isinstance(error, FileNotFoundError):
            return f"{prefix}frame {index} is missing: {path} ({describe_folder(self.folder, self.template)})"
        if isinstance(error, FrameTooLargeError):
            return f"{prefix}frame {index} cannot be decoded: {path} ({error})"
        return f"{prefix}frame {index} cannot be decoded: {path} ({type(error).__name__}: {error})"

    def load(self, index: int, loader: Callable[[str], Any]):
        """``loader(path)`` of frame ``index``; a failure (missing file, bad data) is :meth:`unusable`."""
        try:
            return loader(self.path(index))
        except FRAME_ERRORS as e:
            return self.unusable(index, e, loader)

    def unusable(self, index: int, error: Exception, loader: Callable[[str], Any]):
        """Frame ``index`` failed with ``error``: raise :class:`FrameError` naming it, or, with
        ``missing='repeat_first'``, log the substitution and return ``loader`` of the first frame."""
        problem = self._problem(index, error)
        if self.missing == "repeat_first" and index != self.first_index:
            logger.warning("%s; substituting frame %d (missing_frames='repeat_first')", problem, self.first_index)
            try:
                return loader(self.path(self.first_index))
            except FRAME_ERRORS as e:
                raise FrameError(f"{problem}; the substitute is unusable too: {self._problem(self.first_index, e)}") from None
        raise FrameError(problem)

    def _open(self, index: int) -> Image.Image:
        return self.load(index, open_frame)

    def read_jpeg(self, index: int) -> Tuple[torch.Tensor, Tuple[int, int]]:
        """:func:`read_jpeg_file` of frame ``index`` (missing files and files that are not JPEGs as :meth:`load`)."""
        return self.load(index, read_jpeg_file)

    def check_size(self, index: int, size: Tuple[int, int], expected: Tuple[int, int], first: int) -> None:
        """Raise :class:`FrameError` when frame ``index`` has ``size`` (w, h) but frame ``first`` has ``expected``."""
        if tuple(size) != tuple(expected):
            prefix = f"{self.where}: " if self.where else ""
            raise FrameError(f"{prefix}frame {index} has size {size[0]}x{size[1]} but frame "
                             f"{first} has {expected[0]}x{expected[1]}: {self.path(index)}")

    def read(self, indices: Sequence[int], crop: Optional[Callable[[int, int], Box]] = None,
             expected: Optional[Tuple[Tuple[int, int], int]] = None) -> np.ndarray:
        """Decode frames ``indices`` (distinct) -> uint8 ``(len(indices), h, w, 3)``.

        ``crop(width, height)``, called once with the size of the first frame, may return the
        region ``(x, y, w, h)`` to keep of every frame (copying less); by default the whole frame.
        All frames must have the same size; a frame of another size raises :class:`FrameError`.
        ``expected``: ``((w, h), frame)``, the size the video's frames have, as found on frame
        ``frame`` in an earlier call (the first frame of this call must have it too).
        """
        out: Optional[np.ndarray] = None
        for i, index in enumerate(indices):
            image = self._open(int(index))
            if out is None:
                size, first = image.size, int(index)
                if expected is not None:
                    self.check_size(first, size, *expected)
                x, y, w, h = crop(*size) if crop else (0, 0) + size
                out = np.empty((len(indices), h, w, 3), dtype=np.uint8)
            else:
                self.check_size(int(index), image.size, size, first)
            copy_pixels(image, (x, y, w, h), out[i])
        if out is None:
            raise ValueError("no frame indices given")
        return out


def read_frames(folder: str, indices: Sequence[int], template: str, *, missing: str = "error",
                where: str = "", first_index: int = 1) -> np.ndarray:
    """Shorthand for ``FrameReader(...).read(indices)`` -> uint8 ``(N, H, W, 3)``."""
    return FrameReader(folder, template, missing=missing, where=where, first_index=first_index).read(indices)


def count_frames(folder: str, template: str, first_index: int = 1) -> int:
    """Number of consecutive frames ``first_index, first_index+1, ...`` present in ``folder``."""
    names = set(os.listdir(folder))
    n = 0
    while template.format(first_index + n) in names:
        n += 1
    return n
