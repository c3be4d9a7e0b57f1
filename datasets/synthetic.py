"""The synthetic dataset: a seeded generator of videos where both *where* and *when* matter.

It writes the same layout as ActivityNet (``classInd.txt``, ``synthetic_{train,val}_split.txt`` with
``video,num_frames,label`` lines, ``frames/<video>/image_00001.jpg`` ...), so the whole real pipeline
runs on it, plus one ground-truth side file per split, ``object_boxes_{split}.csv`` (see
:mod:`.boxes`), and ``synthetic.json`` (the parameters; written last, it marks a complete set).

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

Determinism: video ``i`` of a split is rendered from ``SeedSequence([seed, split, i])`` only, so the
files are identical whatever the number of workers. :func:`generate` writes into a temporary folder
and renames it; :func:`ensure_generated` takes an exclusive lock file (``.<name>.lock`` beside the
root, ``fcntl.flock``) so concurrent callers (several DDP ranks, several jobs on one machine)
generate once and the others wait and reuse the result.
"""
from __future__ import annotations

import colorsys
import contextlib
import difflib
import json
import math
import os
import shutil
import sys
import time
from fractions import Fraction
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image, ImageDraw

from .boxes import write_boxes
from .errors import DataError
from .files import write_lines_atomic
from .lists import format_list_line

FORMAT_VERSION = 1
MARKER = "synthetic.json"
FRAME_TEMPLATE = "image_{:05d}.jpg"          # ActivityNet's, as the registry entry says
SPLIT_CODES = {"train": 0, "val": 1}

#: Default generation parameters (``workers`` only changes the speed, never the content).
DEFAULTS: Dict[str, Any] = dict(
    seed=0, num_classes=10, train_videos=500, val_videos=200, frames_per_video=48, frame_size=128,
    object_size=(0.125, 0.2), visible_fraction=(1 / 6, 1 / 3), num_distractors=(3, 5), quality=90,
    twin_classes=0, checker_cell=2, chroma_subsampling="4:2:0", video_files=False, video_codec="ffv1",
    key_frame_interval=250,
)
#: JPEG chroma subsampling (Pillow's names). 4:2:0 halves the colour resolution, which blends a fine
#: coloured checker into other colours (and clips them), so a twin's mean colour would give it away.
CHROMA_SUBSAMPLING = ("4:4:4", "4:2:2", "4:2:0")
#: Codecs of ``video_files=True`` -> (PyAV encoder, pixel format, file extension, encoder options).
#: ffv1: lossless, RGB stored as is (decoded frames equal the rendered ones exactly), every frame a key
#: frame; h264: libx264 at constant quality 18 in YUV 4:2:0 (visually lossless, like most real videos),
#: a key frame every ``key_frame_interval`` frames, two B-frames between references.
VIDEO_CODECS: Dict[str, Tuple[str, str, str, Dict[str, str]]] = {
    "ffv1": ("ffv1", "bgr0", ".mkv", {}),
    "h264": ("libx264", "yuv420p", ".mp4", {"crf": "18", "preset": "veryfast", "bf": "2", "threads": "1"}),
}
#: Frame rate of the videos written with ``video_files=True``.
VIDEO_RATE = 25
MAX_OBJECT_SIZE = Fraction(1, 3)       # of the frame's short side
MAX_VISIBLE_FRACTION = Fraction(1, 2)  # of the frames

# ---------------------------------------------------------------------------------------------
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


def _video_job(job):
    folder, seed_words, label, params = job
    if not params["video_files"]:
        os.makedirs(folder, exist_ok=True)
    _, boxes, visible = render_video(seed_words, label, params, folder)
    return boxes, visible


# ---------------------------------------------------------------------------------------------
#: Every option of the synthetic set: :data:`DEFAULTS`' and ``workers`` (the speed of generation).
OPTION_NAMES = tuple(sorted(DEFAULTS) + ["workers"])


def check_option_names(names) -> None:
    """Raise ``ValueError`` naming the unknown options (each with the closest valid one) and listing the valid ones."""
    unknown = sorted(set(names) - set(OPTION_NAMES))
    if unknown:
        described = []
        for name in unknown:
            close = difflib.get_close_matches(str(name), OPTION_NAMES, n=1)
            described.append(f"{name!r}" + (f" (did you mean {close[0]}?)" if close else ""))
        raise ValueError(f"unknown synthetic option{'s' if len(unknown) > 1 else ''} {', '.join(described)}; the "
                         f"options (--synthetic, or the synthetic: mapping of a config file) are {', '.join(OPTION_NAMES)}")


def resolve_params(**overrides: Any) -> Dict[str, Any]:
    """Defaults plus overrides, normalised (``frame_size`` -> [w, h], ranges -> lists) and checked; a bad
    option raises ``ValueError`` naming it (an unknown one: :func:`check_option_names`)."""
    check_option_names(overrides)
    p = dict(DEFAULTS, **{k: v for k, v in overrides.items() if k != "workers"})
    try:
        _normalise(p)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"synthetic options: {exc}") from None
    return p


def _normalise(p: Dict[str, Any]) -> None:
    """Normalise and check the options ``p`` in place (``ValueError`` / ``TypeError`` naming the option)."""
    size = p["frame_size"]
    try:
        p["frame_size"] = [int(size), int(size)] if np.isscalar(size) else [int(s) for s in size]
    except (TypeError, ValueError):
        raise ValueError(f"frame_size must be a number of pixels or (width, height), got {size!r}") from None
    for key in ("object_size", "visible_fraction", "num_distractors"):
        try:
            p[key] = [float(v) if key != "num_distractors" else int(v) for v in p[key]]
        except (TypeError, ValueError):
            raise ValueError(f"{key} must be a range (low, high), got {p[key]!r}") from None
        if len(p[key]) != 2 or p[key][0] > p[key][1] or p[key][0] < 0:
            raise ValueError(f"{key} must be a range (low, high) with 0 <= low <= high, got {p[key]}")
    for key in ("seed", "num_classes", "train_videos", "val_videos", "frames_per_video", "quality", "twin_classes",
                "checker_cell", "key_frame_interval"):
        try:
            p[key] = int(p[key])
        except (TypeError, ValueError):
            raise ValueError(f"{key} must be an integer, got {p[key]!r}") from None
    if p["seed"] < 0:
        raise ValueError(f"seed must be non-negative, got {p['seed']}")
    if p["num_classes"] < 2:
        raise ValueError(f"num_classes must be at least 2, got {p['num_classes']}")
    if not 0 <= 2 * p["twin_classes"] <= p["num_classes"]:
        raise ValueError(f"twin_classes must be in 0..num_classes // 2 ({p['num_classes'] // 2}), got {p['twin_classes']}")
    if p["checker_cell"] < 1:
        raise ValueError(f"checker_cell must be at least 1 pixel, got {p['checker_cell']}")
    if p["train_videos"] < 1 or p["val_videos"] < 1:
        raise ValueError("train_videos and val_videos must be at least 1")
    if p["frames_per_video"] < 3:
        raise ValueError(f"frames_per_video must be at least 3, got {p['frames_per_video']}")
    if min(p["frame_size"]) < 32 or len(p["frame_size"]) != 2:
        raise ValueError(f"frame_size must be at least 32 pixels, got {p['frame_size']}")
    if p["object_size"][1] > MAX_OBJECT_SIZE + 1e-9 or p["object_size"][0] <= 0:
        raise ValueError(f"object_size must lie in (0, {MAX_OBJECT_SIZE}] of the frame side, got {p['object_size']}")
    if p["visible_fraction"][1] > MAX_VISIBLE_FRACTION + 1e-9 or p["visible_fraction"][0] <= 0:
        raise ValueError(f"visible_fraction must lie in (0, {MAX_VISIBLE_FRACTION}], got {p['visible_fraction']}")
    if not 1 <= p["quality"] <= 100:
        raise ValueError(f"quality must be in 1..100, got {p['quality']}")
    if not isinstance(p["video_files"], bool):
        raise ValueError(f"video_files must be true or false, got {p['video_files']!r}")
    if p["video_codec"] not in VIDEO_CODECS:
        raise ValueError(f"video_codec must be one of {', '.join(VIDEO_CODECS)}, got {p['video_codec']!r}")
    if p["key_frame_interval"] < 1:
        raise ValueError(f"key_frame_interval must be at least 1 frame, got {p['key_frame_interval']}")
    if p["video_files"] and p["video_codec"] == "h264" and any(s % 2 for s in p["frame_size"]):
        raise ValueError(f"video_codec h264 (YUV 4:2:0) needs an even frame width and height, got {p['frame_size']}")
    if p["chroma_subsampling"] not in CHROMA_SUBSAMPLING:
        raise ValueError(f"chroma_subsampling must be one of {', '.join(CHROMA_SUBSAMPLING)}, "
                         f"got {p['chroma_subsampling']!r}")


def _default_workers() -> int:
    return max(1, min(os.cpu_count() or 1, 8))


def _progress(items, total: int, desc: str):
    """``items`` with progress: a bar on a terminal, else a plain line on stderr about every tenth of the way."""
    if sys.stderr.isatty():
        from tqdm import tqdm

        yield from tqdm(items, total=total, desc=desc, unit="video", leave=False)
        return
    step, started = max(1, total // 10), time.time()
    for i, item in enumerate(items, 1):  # (reported when made: a consumer may stop after the last one)
        if i % step == 0 or i == total:
            print(f"{desc}: {i}/{total} videos ({time.time() - started:.0f} s)", file=sys.stderr, flush=True)
        yield item


def _write_split(tmp: str, split: str, params: Dict[str, Any], pool) -> None:
    count = params[f"{split}_videos"]
    code = SPLIT_CODES[split]
    order_rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([params["seed"], code, 2 ** 31])))
    labels = order_rng.permutation(np.arange(count) % params["num_classes"])
    names = [f"{split}_{i:05d}" for i in range(count)]
    jobs = [(os.path.join(tmp, "frames", name), (params["seed"], code, i), int(label), params)
            for i, (name, label) in enumerate(zip(names, labels))]
    results = _progress(pool.imap(_video_job, jobs, chunksize=4) if pool else map(_video_job, jobs), count,
                        f"synthetic {split}")
    rows = [(video_name(name, params), boxes, visible) for name, (boxes, visible) in zip(names, results)]
    write_boxes(os.path.join(tmp, f"object_boxes_{split}.csv"), rows)
    n = params["frames_per_video"]
    write_lines_atomic(os.path.join(tmp, f"synthetic_{split}_split.txt"),
                       (format_list_line(video_name(name, params), n, [int(label)], separator=",", multi_label=True)
                        for name, label in zip(names, labels)))


def generate(root: str, *, seed: int = DEFAULTS["seed"], num_classes: int = DEFAULTS["num_classes"],
             train_videos: int = DEFAULTS["train_videos"], val_videos: int = DEFAULTS["val_videos"],
             frames_per_video: int = DEFAULTS["frames_per_video"],
             frame_size: Union[int, Sequence[int]] = DEFAULTS["frame_size"], workers: Optional[int] = None,
             object_size: Sequence[float] = DEFAULTS["object_size"],
             visible_fraction: Sequence[float] = DEFAULTS["visible_fraction"],
             num_distractors: Sequence[int] = DEFAULTS["num_distractors"], quality: int = DEFAULTS["quality"],
             twin_classes: int = DEFAULTS["twin_classes"], checker_cell: int = DEFAULTS["checker_cell"],
             chroma_subsampling: str = DEFAULTS["chroma_subsampling"], video_files: bool = DEFAULTS["video_files"],
             video_codec: str = DEFAULTS["video_codec"], key_frame_interval: int = DEFAULTS["key_frame_interval"],
             overwrite: bool = False) -> str:
    """Generate the dataset into ``root`` (atomically: a temporary sibling folder, then a rename).

    ``frame_size`` is an int (square) or ``(width, height)``; ``workers`` processes render videos
    in parallel (default: the CPU count, at most 8). An existing ``root`` is an error unless
    ``overwrite``. ``video_files``: write each video as one file ``frames/<video>.mkv`` (``video_codec``
    ``'ffv1'``, lossless) or ``frames/<video>.mp4`` (``'h264'``, a key frame every ``key_frame_interval``
    frames) instead of a folder of JPEG frames; the list and box files then name the files (read them
    with ``video_files=True``, flag ``--video_files``). Returns ``root``.
    """
    params = resolve_params(seed=seed, num_classes=num_classes, train_videos=train_videos, val_videos=val_videos,
                            frames_per_video=frames_per_video, frame_size=frame_size, object_size=object_size,
                            visible_fraction=visible_fraction, num_distractors=num_distractors, quality=quality,
                            twin_classes=twin_classes, checker_cell=checker_cell,
                            chroma_subsampling=chroma_subsampling, video_files=video_files,
                            video_codec=video_codec, key_frame_interval=key_frame_interval)
    root = os.path.abspath(root)
    if os.path.exists(root) and not overwrite:
        raise DataError(f"{root} already exists; pass overwrite=True or use ensure_generated()")
    parent, name = os.path.split(root)
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(os.path.join(tmp, "frames"))
    started = time.time()
    workers = _default_workers() if workers is None else max(1, int(workers))
    try:
        if workers > 1:
            import multiprocessing
            with multiprocessing.get_context().Pool(workers) as pool:
                for split in SPLIT_CODES:
                    _write_split(tmp, split, params, pool)
        else:
            for split in SPLIT_CODES:
                _write_split(tmp, split, params, None)
        write_lines_atomic(os.path.join(tmp, "classInd.txt"),
                           (class_appearance(c, params["num_classes"], params["twin_classes"])[0]
                            for c in range(params["num_classes"])))
        marker = {"format": FORMAT_VERSION, "params": params, "seconds": round(time.time() - started, 2)}
        write_lines_atomic(os.path.join(tmp, MARKER), [json.dumps(marker, indent=1)])
        if os.path.exists(root):
            trash = os.path.join(parent, f".{name}.old-{os.getpid()}")
            os.rename(root, trash)
            os.rename(tmp, root)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.rename(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root


def read_marker(root: str) -> Optional[Dict[str, Any]]:
    """The parameters a complete dataset in ``root`` was generated with, or None."""
    try:
        with open(os.path.join(root, MARKER), encoding="utf-8") as f:
            return json.load(f)["params"]
    except (OSError, ValueError, KeyError):
        return None


@contextlib.contextmanager
def _exclusive_lock(path: str):
    """An exclusive inter-process lock held on ``path`` (``fcntl.flock``; O_EXCL polling elsewhere)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: a lock file created with O_EXCL, polled
        while True:
            try:
                fd = os.open(path + ".excl", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                break
            except FileExistsError:
                time.sleep(0.2)
        try:
            yield
        finally:
            os.close(fd)
            os.remove(path + ".excl")
        return
    with open(path, "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def ensure_generated(root: str, *, workers: Optional[int] = None, **params: Any) -> str:
    """Generate the dataset into ``root`` unless a complete one with the same parameters is there.

    Takes the same keyword arguments as :func:`generate`. Safe under concurrency: callers take an
    exclusive lock file beside ``root``; the first generates, the others wait, then find the
    marker and return. A complete dataset with *different* parameters raises :class:`DataError`
    (delete it or pass the same parameters); so does a non-empty ``root`` without a marker.
    Returns ``root``.
    """
    wanted = resolve_params(**params)
    root = os.path.abspath(root)

    def check() -> bool:
        found = read_marker(root)
        if found is None:
            return False
        for key, value in json.loads(json.dumps(resolve_params())).items():  # options added since it was made
            found.setdefault(key, value)
        if found != json.loads(json.dumps(wanted)):
            diff = {k: (found.get(k), wanted[k]) for k in wanted if found.get(k) != json.loads(json.dumps(wanted[k]))}
            raise DataError(f"{root} holds a synthetic dataset generated with other parameters "
                            f"(found vs wanted: {diff}); delete it or pass the same parameters")
        return True

    if check():
        return root
    parent, name = os.path.split(root)
    os.makedirs(parent, exist_ok=True)
    with _exclusive_lock(os.path.join(parent, f".{name}.lock")):
        if check():
            return root
        if os.path.exists(root):
            if os.path.isdir(root) and not os.listdir(root):
                os.rmdir(root)
            else:
                raise DataError(f"{root} exists but is not a complete synthetic dataset (no {MARKER}); "
                                f"delete it or choose another folder")
        generate(root, workers=workers, **wanted)
    return root
