"""Rendering one synthetic video (:func:`render_video`): its frames, written as JPEG files or one video
file, and the object's box and visibility per frame.

Each video shows (design and knobs in ``docs/synthetic.md``):

* a cluttered, moving background: a low-saturation multi-octave noise texture with muted random
  rectangles, ellipses and lines, seen through a window that pans smoothly (camera motion);
* distractors that belong to no class: muted (low-saturation) objects of shapes no class uses
  (ellipse, bar, L, half-disc, arc), randomly rotated, of the same sizes as the class object,
  moving smoothly and visible throughout;
* the class object: a fully saturated object whose shape and hue are those of its class, at most
  ``object_size[1]`` (default 1/5) of the frame side, visible in one contiguous run of at most
  ``visible_fraction[1]`` (default 1/3) of the frames, moving smoothly (constant speed, slowly
  turning, bouncing) inside the central square of the frame, and drawn on top of everything else;
* optionally (``twin_classes`` = k > 0), k pairs of *twin* classes that share shape, hue and sizes
  and differ only in a fine detail: the second twin is covered with a checker of ``checker_cell``-pixel cells
  alternating between the class colour and black, the first is flat in their mean colour.
  Seen whole at a lower resolution (a glance) the twins look the same; a patch at full resolution
  tells them apart.
"""
from __future__ import annotations

import colorsys
import math
import os
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw

from .synthetic_options import DEFAULTS
from .synthetic_video import VideoWriter, video_name

FRAME_TEMPLATE = "image_{:05d}.jpg"          # ActivityNet's, as the registry entry says

# Shapes: implicit functions of coordinates (u, v) in [-1, 1], v pointing down.
Shape = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _disk(u, v):
    return u * u + v * v <= 0.9 ** 2


def _square(u, v):
    return np.maximum(np.abs(u), np.abs(v)) <= 0.78


def _triangle(u, v):
    return (v >= -0.85) & (v <= 0.8) & (np.abs(u) <= 0.95 * (v + 0.85) / 1.65)


def _plus(u, v):
    return ((np.abs(u) <= 0.3) & (np.abs(v) <= 0.92)) | ((np.abs(v) <= 0.3) & (np.abs(u) <= 0.92))


def _ring(u, v):
    r2 = u * u + v * v
    return (r2 <= 0.92 ** 2) & (r2 >= 0.5 ** 2)


def _diamond(u, v):
    return np.abs(u) + np.abs(v) <= 0.95


def _star(u, v):
    r = np.sqrt(u * u + v * v)
    theta = np.arctan2(u, -v)
    return r <= 0.55 + 0.4 * np.cos(5 * theta)


def _x_cross(u, v):
    a, b = (u + v) / math.sqrt(2), (u - v) / math.sqrt(2)
    return ((np.abs(a) <= 0.24) & (np.abs(b) <= 0.95)) | ((np.abs(b) <= 0.24) & (np.abs(a) <= 0.95))


def _hexagon(u, v):
    return np.maximum(np.abs(u) * 0.866 + np.abs(v) * 0.5, np.abs(v)) <= 0.85


def _crescent(u, v):
    return (u * u + v * v <= 0.9 ** 2) & ((u - 0.4) ** 2 + (v + 0.1) ** 2 >= 0.65 ** 2)


def _ellipse(u, v):
    return (u / 0.95) ** 2 + (v / 0.42) ** 2 <= 1


def _bar(u, v):
    return (np.abs(u) <= 0.95) & (np.abs(v) <= 0.2)


def _ell(u, v):
    return (np.abs(u) <= 0.9) & (np.abs(v) <= 0.9) & ((u <= -0.45) | (v >= 0.45))


def _half_disk(u, v):
    return (u * u + v * v <= 0.9 ** 2) & (v >= 0.05)


def _arc(u, v):
    r2 = u * u + v * v
    return (r2 <= 0.95 ** 2) & (r2 >= 0.6 ** 2) & (v >= 0)


CLASS_SHAPES: List[Tuple[str, Shape]] = [
    ("disk", _disk), ("square", _square), ("triangle", _triangle), ("plus", _plus), ("ring", _ring),
    ("diamond", _diamond), ("star", _star), ("xcross", _x_cross), ("hexagon", _hexagon), ("crescent", _crescent),
]
DISTRACTOR_SHAPES: List[Tuple[str, Shape]] = [
    ("ellipse", _ellipse), ("bar", _bar), ("ell", _ell), ("halfdisk", _half_disk), ("arc", _arc),
]


#: Brightness of the checker's dark cells (the class colour times this) on the second of twin classes;
#: the first twin is flat in the mean of the two shades.
CHECKER_DARK = 0.0


def appearance_group(label: int, num_classes: int, twin_classes: int = 0) -> Tuple[int, int, bool]:
    """``(group, num_groups, checkered)`` of a class: the first ``2 * twin_classes`` classes form twin
    pairs that share a group (shape and hue); every other class is a group of its own."""
    if label < 2 * twin_classes:
        group, checkered = label // 2, label % 2 == 1
    else:
        group, checkered = label - twin_classes, False
    return group, num_classes - twin_classes, checkered


def class_appearance(label: int, num_classes: int, twin_classes: int = 0) -> Tuple[str, Shape, Tuple[int, int, int]]:
    """(name, shape, RGB colour) of a class: its group's shape (``group % 10``) and hue (``group /
    num_groups``); see :func:`appearance_group`. Names read like "disk hue 0" or "square hue 90 checkered". The colour is the object's mean colour (a twin's
    flat colour, the mean of a checkered twin's two shades)."""
    group, num_groups, checkered = appearance_group(label, num_classes, twin_classes)
    shape_name, shape = CLASS_SHAPES[group % len(CLASS_SHAPES)]
    hue = group / num_groups
    value = (1.0 + CHECKER_DARK) / 2 if label < 2 * twin_classes else 1.0
    rgb = tuple(int(round(255 * c)) for c in colorsys.hsv_to_rgb(hue, 1.0, value))
    name = f"{shape_name} hue {int(round(360 * hue))}"
    if label < 2 * twin_classes:
        name += " checkered" if checkered else " flat"
    return name, shape, rgb


def class_texture(label: int, num_classes: int, twin_classes: int, size: int,
                  cell: int = DEFAULTS["checker_cell"]) -> np.ndarray:
    """The object's colours ``(size, size, 3)`` float32: flat, or the checker (``cell``-pixel cells) of a
    checkered twin."""
    group, num_groups, checkered = appearance_group(label, num_classes, twin_classes)
    bright = np.asarray(colorsys.hsv_to_rgb(group / num_groups, 1.0, 1.0), dtype=np.float32) * 255
    if not checkered:
        _, _, mean = class_appearance(label, num_classes, twin_classes)
        return np.broadcast_to(np.asarray(mean, dtype=np.float32), (size, size, 3))
    cells = (np.arange(size) // cell) % 2
    dark = (cells[:, None] ^ cells[None, :]).astype(bool)  # (size, size)
    return np.where(dark[..., None], bright * CHECKER_DARK, bright).astype(np.float32)


def render_alpha(shape: Shape, size: int, angle: float = 0.0, supersample: int = 4) -> np.ndarray:
    """Anti-aliased coverage ``(size, size)`` float32 in [0, 1] of a shape rotated by ``angle``."""
    n = size * supersample
    c = (np.arange(n, dtype=np.float32) + 0.5) / n * 2 - 1
    v, u = np.meshgrid(c, c, indexing="ij")
    if angle:
        cos, sin = math.cos(angle), math.sin(angle)
        u, v = cos * u + sin * v, -sin * u + cos * v
    inside = shape(u, v).astype(np.float32)
    return inside.reshape(size, supersample, size, supersample).mean(axis=(1, 3))


def _tight_extent(alpha: np.ndarray) -> Tuple[int, int, int, int]:
    """Pixel extent ``(x0, y0, x1, y1)`` of the coverage >= 1/2 inside a sprite."""
    ys, xs = np.nonzero(alpha >= 0.5)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def _blend(frame: np.ndarray, alpha: np.ndarray, colour, x: int, y: int) -> None:
    """Alpha-blend a sprite into ``frame`` (H, W, 3) uint8 at top-left (x, y), clipped; ``colour`` is
    one RGB colour or the sprite's colours (d, d, 3)."""
    h, w = frame.shape[:2]
    d = alpha.shape[0]
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + d, w), min(y + d, h)
    if x0 >= x1 or y0 >= y1:
        return
    a = alpha[y0 - y:y1 - y, x0 - x:x1 - x, None]
    colour = np.asarray(colour, dtype=np.float32)
    if colour.ndim == 3:
        colour = colour[y0 - y:y1 - y, x0 - x:x1 - x]
    region = frame[y0:y1, x0:x1].astype(np.float32)
    region += (colour - region) * a
    frame[y0:y1, x0:x1] = (region + 0.5).astype(np.uint8)


def _muted_colour(rng: np.random.Generator, max_sat: float, val: Tuple[float, float]) -> Tuple[int, int, int]:
    rgb = colorsys.hsv_to_rgb(rng.random(), rng.uniform(0, max_sat), rng.uniform(*val))
    return tuple(int(round(255 * c)) for c in rgb)


def _background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A cluttered low-saturation texture ``(height, width, 3)`` uint8."""
    base = np.array(_muted_colour(rng, 0.25, (0.35, 0.65)), dtype=np.float32)
    tex = np.zeros((height, width, 3), dtype=np.float32)
    for cell, amp in ((max(width, height) // 3, 45.0), (16, 25.0), (5, 12.0)):
        gh, gw = height // cell + 2, width // cell + 2
        grey = rng.standard_normal((gh, gw)).astype(np.float32)
        tint = 0.25 * rng.standard_normal((gh, gw, 3)).astype(np.float32)
        grid = (grey[..., None] + tint) * amp
        for ch in range(3):
            img = Image.fromarray(np.ascontiguousarray(grid[..., ch])).resize((gw * cell, gh * cell), Image.BILINEAR)
            tex[..., ch] += np.asarray(img)[:height, :width]
    image = Image.fromarray(np.clip(tex + base, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(15, 30))):
        x0, y0 = rng.uniform(0, width), rng.uniform(0, height)
        w, h = rng.uniform(4, width / 4), rng.uniform(4, height / 4)
        colour = _muted_colour(rng, 0.3, (0.2, 0.85))
        kind = int(rng.integers(3))
        if kind == 0:
            draw.rectangle([x0, y0, x0 + w, y0 + h], fill=colour)
        elif kind == 1:
            draw.ellipse([x0, y0, x0 + w, y0 + h], fill=colour)
        else:
            draw.line([x0, y0, x0 + w * rng.choice([-1, 1]), y0 + h], fill=colour, width=int(rng.integers(1, 4)))
    return np.asarray(image)


def _bouncing_path(rng: np.random.Generator, n: int, low: np.ndarray, high: np.ndarray, speed: float,
                   turn: float) -> np.ndarray:
    """Smooth positions ``(n, 2)`` (x, y): constant speed, slowly turning heading, reflected at the box."""
    pos = rng.uniform(low, high)
    heading = rng.uniform(0, 2 * math.pi)
    out = np.empty((n, 2), dtype=np.float64)
    for t in range(n):
        out[t] = pos
        step = speed * np.array([math.cos(heading), math.sin(heading)])
        pos = pos + step
        for axis in range(2):
            if high[axis] <= low[axis]:
                pos[axis] = low[axis]
                continue
            if pos[axis] < low[axis]:
                pos[axis] = 2 * low[axis] - pos[axis]
                heading = math.pi - heading if axis == 0 else -heading
            elif pos[axis] > high[axis]:
                pos[axis] = 2 * high[axis] - pos[axis]
                heading = math.pi - heading if axis == 0 else -heading
        heading += turn
    return out


def render_video(seed_words: Sequence[int], label: int, params: Dict[str, Any], folder: Optional[str]):
    """Render one video; write its frames to ``folder`` (if given): JPEG files ``FRAME_TEMPLATE``, or with
    ``params['video_files']`` the video file ``folder`` + the codec's extension (:class:`VideoWriter`).

    Returns ``(frames or None, boxes (n, 4) float32, visible (n,) bool)``; ``frames`` (n, H, W, 3)
    uint8 only when ``folder`` is None (for tests and previews).
    """
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(list(seed_words))))
    width, height = params["frame_size"]
    n = params["frames_per_video"]
    side = min(width, height)
    margin = max(side // 4, 4)
    texture = _background(rng, width + 2 * margin, height + 2 * margin)
    freq = rng.uniform(0.3, 1.0, size=2)
    phase = rng.uniform(0, 2 * math.pi, size=2)
    t = np.arange(n) / n
    pan = np.rint(margin + 0.9 * margin * np.sin(2 * math.pi * freq[:, None] * t[None] + phase[:, None])).astype(int)

    distractors = []
    for _ in range(int(rng.integers(params["num_distractors"][0], params["num_distractors"][1] + 1))):
        d = max(4, int(side * rng.uniform(*params["object_size"])))
        _, shape = DISTRACTOR_SHAPES[int(rng.integers(len(DISTRACTOR_SHAPES)))]
        alpha = render_alpha(shape, d, angle=rng.uniform(0, 2 * math.pi))
        colour = _muted_colour(rng, 0.35, (0.3, 0.95))
        path = _bouncing_path(rng, n, np.array([-d / 2, -d / 2]), np.array([width - d / 2, height - d / 2]),
                              speed=side * rng.uniform(0.005, 0.03), turn=rng.uniform(-0.05, 0.05))
        distractors.append((alpha, colour, np.rint(path).astype(int)))

    _, shape, _ = class_appearance(label, params["num_classes"], params["twin_classes"])
    d = max(4, int(side * rng.uniform(*params["object_size"])))
    alpha = render_alpha(shape, d)
    colour = class_texture(label, params["num_classes"], params["twin_classes"], d, params["checker_cell"])
    ex0, ey0, ex1, ey1 = _tight_extent(alpha)
    origin = np.array([(width - side) / 2, (height - side) / 2])
    path = np.rint(_bouncing_path(rng, n, origin, origin + side - d, speed=side * rng.uniform(0.01, 0.025),
                                  turn=rng.uniform(-0.06, 0.06))).astype(int)
    lo, hi = params["visible_fraction"]
    length = int(np.clip(round(n * rng.uniform(lo, hi)), 1, max(1, math.floor(n * hi))))
    start = int(rng.integers(0, n - length + 1))
    visible = np.zeros(n, dtype=bool)
    visible[start:start + length] = True
    boxes = np.stack([path[:, 0] + ex0, path[:, 1] + ey0, path[:, 0] + ex1, path[:, 1] + ey1], axis=1).astype(np.float32)

    frames = None if folder else np.empty((n, height, width, 3), dtype=np.uint8)
    video = None
    if folder and params["video_files"]:
        video = VideoWriter(video_name(folder, params), width, height, params["video_codec"],
                            params["key_frame_interval"])
    for f in range(n):
        frame = texture[pan[1, f]:pan[1, f] + height, pan[0, f]:pan[0, f] + width].copy()
        for d_alpha, d_colour, d_path in distractors:
            _blend(frame, d_alpha, d_colour, d_path[f, 0], d_path[f, 1])
        if visible[f]:
            _blend(frame, alpha, colour, path[f, 0], path[f, 1])
        if video is not None:
            video.write(frame)
        elif folder:
            Image.fromarray(frame).save(os.path.join(folder, FRAME_TEMPLATE.format(f + 1)), quality=params["quality"],
                                        subsampling=params["chroma_subsampling"])
        else:
            frames[f] = frame
    if video is not None:
        video.close()
    return frames, boxes, visible
