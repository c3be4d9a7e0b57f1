"""The synthetic dataset's generation options: their defaults and bounds, the frame and video encodings
they choose from, and their checking (:func:`resolve_params`; design and knobs in ``docs/synthetic.md``).
"""
from __future__ import annotations

import difflib
from fractions import Fraction
from typing import Any, Dict, Tuple

import numpy as np

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
MAX_OBJECT_SIZE = Fraction(1, 3)       # of the frame's short side
MAX_VISIBLE_FRACTION = Fraction(1, 2)  # of the frames

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
