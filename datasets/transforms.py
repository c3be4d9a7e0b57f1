"""Clip transforms with one random draw per clip, on uint8 tensors.

A *policy* draws the geometry of one clip from the frame size (and a generator); the drawn
*geometry* applies itself to a uint8 clip ``(T, 3, H, W)`` (any memory layout) and returns a
contiguous uint8 clip ``(T, 3, S, S)``. Every frame of the clip gets the same crop and flip. A
geometry also maps boxes ``(..., 4)`` given as ``(x1, y1, x2, y2)`` in continuous pixel coordinates
of the source frame (pixel ``i`` covers ``[i, i+1)``) into the output clip.

* :class:`MultiScaleCrop` (training) reproduces the official ``GroupMultiScaleCrop`` followed by
  ``GroupRandomHorizontalFlip``: the crop side candidates are ``int(min(W, H)·s)`` for the scales
  (1, .875, .75, .66), snapped to the output size when within 2 px of it; a (width, height) pair of
  candidates whose scale indices differ by at most ``max_distort`` is chosen uniformly; the offset
  is chosen uniformly among 13 fixed positions on a 4×4 grid of steps ``((W-w)//4, (H-h)//4)``
  (corners, centre, edge midpoints, quarter points); the crop is resized to ``S × S`` (bilinear,
  antialiased like PIL) and flipped left-right with probability 1/2. No resize happens before the
  crop, as in the official code.
* :class:`ResizeCenterCrop` (evaluation) reproduces ``GroupScale(scale_size)`` then
  ``GroupCenterCrop(S)``: the short side is resized to ``scale_size`` (default ``S·256//224``,
  the long side ``int(scale_size·long/short)``, torchvision's rule), then the centre ``S × S`` is cut
  (offsets ``round((size - S)/2)``, torchvision's rule).
* :class:`FullResSample` (multi-view evaluation) reproduces ``GroupFullResSample(S, scale_size,
  flip=False)``: the same short-side resize, then three ``S × S`` views at ``(x, y) = (0, 2·h_step)``
  (left), ``(4·w_step, 2·h_step)`` (right) and ``(2·w_step, 2·h_step)`` (centre), in that order, with
  ``w_step = (W' - S)//4``, ``h_step = (H' - S)//4`` on the resized frame ``W' × H'``. Its geometry
  returns ``(3, T, 3, S, S)``, views first. Its centre view can sit a pixel or two away from
  :class:`ResizeCenterCrop`'s crop (``2·((W' - S)//4)`` against ``round((W' - S)/2)``).

Resizing uses ``torchvision.transforms.v2.functional`` with ``antialias=True``, which follows
Pillow's bilinear filter; only the draw of the multi-scale crop is written here, since torchvision
has no equivalent.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from torchvision.transforms import InterpolationMode

#: The official scales of GroupMultiScaleCrop.
OFFICIAL_SCALES = (1.0, 0.875, 0.75, 0.66)


def default_scale_size(input_size: int) -> int:
    """The official evaluation resize: ``input_size * 256 // 224`` (256 for 224)."""
    return input_size * 256 // 224


def crop_size_pairs(width: int, height: int, size: int, scales: Sequence[float] = OFFICIAL_SCALES,
                    max_distort: int = 1) -> List[Tuple[int, int]]:
    """Candidate crop sizes ``(crop_w, crop_h)`` in the official order.

    For 640×360 frames and size 224: sides 360/315/270/237 and 10 pairs. A side snapped up to
    ``size`` beyond the frame (frames of 222-223 px) is clamped to the frame, where the official
    code would pad with black.
    """
    base = min(width, height)
    sides = [int(base * s) for s in scales]
    sides = [size if abs(s - size) < 3 else s for s in sides]
    pairs = []
    for i, crop_h in enumerate(sides):
        for j, crop_w in enumerate(sides):
            if abs(i - j) <= max_distort:
                pairs.append((min(crop_w, width), min(crop_h, height)))
    return pairs


def fixed_offsets(width: int, height: int, crop_w: int, crop_h: int,
                  more_fix_crop: bool = True) -> List[Tuple[int, int]]:
    """The official fixed crop positions ``(x, y)``: 5, or 13 with ``more_fix_crop``."""
    w_step = (width - crop_w) // 4
    h_step = (height - crop_h) // 4
    offsets = [(0, 0), (4 * w_step, 0), (0, 4 * h_step), (4 * w_step, 4 * h_step), (2 * w_step, 2 * h_step)]
    if more_fix_crop:
        offsets += [(0, 2 * h_step), (4 * w_step, 2 * h_step), (2 * w_step, 4 * h_step), (2 * w_step, 0),
                    (w_step, h_step), (3 * w_step, h_step), (w_step, 3 * h_step), (3 * w_step, 3 * h_step)]
    return offsets


def _flip_boxes(boxes: torch.Tensor, size: int) -> torch.Tensor:
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack([size - x2, y1, size - x1, y2], dim=-1)


@dataclass(frozen=True)
class CropGeometry:
    """Crop ``(x, y, w, h)`` of the source frame, resized to ``size × size``, then maybe flipped."""

    x: int
    y: int
    w: int
    h: int
    size: int
    flip: bool = False

    @property
    def region(self) -> Tuple[int, int, int, int]:
        """The part ``(x, y, w, h)`` of the source frame this geometry reads."""
        return self.x, self.y, self.w, self.h

    def apply(self, clip: torch.Tensor, cropped: bool = False) -> torch.Tensor:
        """uint8 ``(T, 3, H, W)`` -> contiguous uint8 ``(T, 3, size, size)``.

        ``cropped=True``: ``clip`` holds only :attr:`region` of the frames.
        """
        if not cropped:
            clip = TF.crop(clip, self.y, self.x, self.h, self.w)
        out = TF.resize(clip, [self.size, self.size], interpolation=InterpolationMode.BILINEAR, antialias=True)
        if self.flip:
            out = out.flip(-1)
        return out.contiguous()

    def map_boxes(self, boxes: torch.Tensor) -> torch.Tensor:
        """Source boxes ``(..., 4)`` -> output boxes, clipped to ``[0, size]``."""
        sx, sy = self.size / self.w, self.size / self.h
        x1, y1, x2, y2 = boxes.float().unbind(-1)
        out = torch.stack([(x1 - self.x) * sx, (y1 - self.y) * sy, (x2 - self.x) * sx, (y2 - self.y) * sy], -1)
        out = out.clamp(0, self.size)
        return _flip_boxes(out, self.size) if self.flip else out


@dataclass(frozen=True)
class ResizeCropGeometry:
    """Resize the whole frame to ``(resized_w, resized_h)``, then cut ``size × size`` at ``(left, top)``."""

    src_w: int
    src_h: int
    resized_w: int
    resized_h: int
    left: int
    top: int
    size: int

    @property
    def region(self) -> Tuple[int, int, int, int]:
        """The part ``(x, y, w, h)`` of the source frame this geometry reads: all of it."""
        return 0, 0, self.src_w, self.src_h

    def apply(self, clip: torch.Tensor, cropped: bool = False) -> torch.Tensor:
        """uint8 ``(T, 3, H, W)`` -> contiguous uint8 ``(T, 3, size, size)`` (``cropped`` changes nothing)."""
        out = TF.resize(clip, [self.resized_h, self.resized_w], interpolation=InterpolationMode.BILINEAR,
                        antialias=True)
        return TF.crop(out, self.top, self.left, self.size, self.size).contiguous()

    def map_boxes(self, boxes: torch.Tensor) -> torch.Tensor:
        """Source boxes ``(..., 4)`` -> output boxes, clipped to ``[0, size]``."""
        sx, sy = self.resized_w / self.src_w, self.resized_h / self.src_h
        x1, y1, x2, y2 = boxes.float().unbind(-1)
        out = torch.stack([x1 * sx - self.left, y1 * sy - self.top, x2 * sx - self.left, y2 * sy - self.top], -1)
        return out.clamp(0, self.size)


class MultiScaleCrop:
    """Training policy: official multi-scale fixed-offset crop plus horizontal flip.

    ``draw(width, height, rng)`` returns a :class:`CropGeometry`.
    """

    def __init__(self, size: int, scales: Sequence[float] = OFFICIAL_SCALES, max_distort: int = 1,
                 more_fix_crop: bool = True, flip: bool = True):
        self.size = int(size)
        self.scales = tuple(float(s) for s in scales)
        self.max_distort = int(max_distort)
        self.more_fix_crop = bool(more_fix_crop)
        self.flip = bool(flip)

    def draw(self, width: int, height: int, rng: np.random.Generator) -> CropGeometry:
        pairs = crop_size_pairs(width, height, self.size, self.scales, self.max_distort)
        crop_w, crop_h = pairs[int(rng.integers(len(pairs)))]
        offsets = fixed_offsets(width, height, crop_w, crop_h, self.more_fix_crop)
        x, y = offsets[int(rng.integers(len(offsets)))]
        flip = self.flip and bool(rng.random() < 0.5)
        return CropGeometry(x, y, crop_w, crop_h, self.size, flip)

    def __repr__(self) -> str:
        return (f"MultiScaleCrop(size={self.size}, scales={self.scales}, max_distort={self.max_distort}, "
                f"more_fix_crop={self.more_fix_crop}, flip={self.flip})")


def scaled_size(width: int, height: int, scale_size: int) -> Tuple[int, int]:
    """The frame size ``(w, h)`` after resizing the short side to ``scale_size``: the long side becomes
    ``int(scale_size·long/short)`` (torchvision's ``Resize(int)`` rule, what the official ``GroupScale`` uses)."""
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = scale_size, int(scale_size * long / short)
    return (new_short, new_long) if width <= height else (new_long, new_short)


def full_res_offsets(width: int, height: int, size: int) -> List[Tuple[int, int]]:
    """The official three-crop offsets ``(x, y)`` of ``GroupFullResSample`` on a ``width × height``
    (already resized) frame: left, right, centre, in that order."""
    w_step = (width - size) // 4
    h_step = (height - size) // 4
    return [(0, 2 * h_step), (4 * w_step, 2 * h_step), (2 * w_step, 2 * h_step)]


@dataclass(frozen=True)
class MultiCropGeometry:
    """Resize the whole frame to ``(resized_w, resized_h)``, then cut one ``size × size`` view at each
    of ``offsets`` (``(x, y)`` pairs, in view order)."""

    src_w: int
    src_h: int
    resized_w: int
    resized_h: int
    offsets: Tuple[Tuple[int, int], ...]
    size: int

    @property
    def num_views(self) -> int:
        return len(self.offsets)

    @property
    def region(self) -> Tuple[int, int, int, int]:
        """The part ``(x, y, w, h)`` of the source frame this geometry reads: all of it."""
        return 0, 0, self.src_w, self.src_h

    def views(self) -> List[ResizeCropGeometry]:
        """One single-view geometry per view, in view order."""
        return [ResizeCropGeometry(self.src_w, self.src_h, self.resized_w, self.resized_h, x, y, self.size)
                for x, y in self.offsets]

    def apply(self, clip: torch.Tensor, cropped: bool = False) -> torch.Tensor:
        """uint8 ``(T, 3, H, W)`` -> contiguous uint8 ``(V, T, 3, size, size)``, views first
        (``cropped`` changes nothing). The clip is resized once for all views."""
        out = TF.resize(clip, [self.resized_h, self.resized_w], interpolation=InterpolationMode.BILINEAR,
                        antialias=True)
        return torch.stack([out[..., y:y + self.size, x:x + self.size] for x, y in self.offsets])

    def map_boxes(self, boxes: torch.Tensor) -> torch.Tensor:
        """Source boxes ``(..., 4)`` -> output boxes ``(V, ..., 4)``, clipped to ``[0, size]`` per view."""
        return torch.stack([view.map_boxes(boxes) for view in self.views()])


class ResizeCenterCrop:
    """Evaluation policy: resize the short side to ``scale_size``, then centre-crop ``size``.

    ``draw(width, height, rng=None)`` returns a :class:`ResizeCropGeometry` (no randomness).
    """

    def __init__(self, size: int, scale_size: Optional[int] = None):
        self.size = int(size)
        self.scale_size = default_scale_size(self.size) if scale_size is None else int(scale_size)
        if self.scale_size < self.size:
            raise ValueError(f"scale_size ({self.scale_size}) must be at least the crop size ({self.size})")

    def draw(self, width: int, height: int, rng: Optional[np.random.Generator] = None) -> ResizeCropGeometry:
        new_w, new_h = scaled_size(width, height, self.scale_size)
        top = int(round((new_h - self.size) / 2.0))
        left = int(round((new_w - self.size) / 2.0))
        return ResizeCropGeometry(width, height, new_w, new_h, left, top, self.size)

    def __repr__(self) -> str:
        return f"ResizeCenterCrop(size={self.size}, scale_size={self.scale_size})"


class FullResSample:
    """Multi-view evaluation policy: the official ``GroupFullResSample(size, scale_size, flip=False)``.

    The short side is resized to ``scale_size`` (default ``size·256//224``), then three ``size ×
    size`` views are cut: left, right and centre (:func:`full_res_offsets`). ``draw(width, height,
    rng=None)`` returns a :class:`MultiCropGeometry` (no randomness) whose ``apply`` gives
    ``(3, T, 3, size, size)``.
    """

    num_views = 3

    def __init__(self, size: int, scale_size: Optional[int] = None):
        self.size = int(size)
        self.scale_size = default_scale_size(self.size) if scale_size is None else int(scale_size)
        if self.scale_size < self.size:
            raise ValueError(f"scale_size ({self.scale_size}) must be at least the crop size ({self.size})")

    def draw(self, width: int, height: int, rng: Optional[np.random.Generator] = None) -> MultiCropGeometry:
        new_w, new_h = scaled_size(width, height, self.scale_size)
        offsets = tuple(full_res_offsets(new_w, new_h, self.size))
        return MultiCropGeometry(width, height, new_w, new_h, offsets, self.size)

    def __repr__(self) -> str:
        return f"FullResSample(size={self.size}, scale_size={self.scale_size}, views=left,right,center)"
