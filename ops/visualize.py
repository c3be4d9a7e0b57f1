"""Pictures of what the model looked at: the selected frames and their patches (paper Fig. 13).

``selection_strip`` draws one video as a row of its T0 candidate frames: frames chosen by the
focus network are framed and carry their patch box; the others are dimmed; frames after the exit
step (when early exit is used) are greyed out. ``legend`` is the key to those marks, ``stack_rows``
joins several strips (and the key) into one image, and ``focus_frames_gif`` writes an animation that
walks through the focus frames.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

from .packages import sibling

_files = sibling("datasets.files")
atomic_write = _files.atomic_write

FOCUS_COLOUR = (255, 64, 32)
FRAME_COLOUR = (255, 210, 0)
OBJECT_COLOUR = (0, 200, 255)


def to_image(frame) -> Image.Image:
    """A (3, H, W) uint8 tensor / array or an (H, W, 3) array -> PIL RGB image."""
    array = frame.detach().cpu().numpy() if isinstance(frame, torch.Tensor) else np.asarray(frame)
    if array.ndim == 3 and array.shape[0] == 3 and array.shape[-1] != 3:
        array = array.transpose(1, 2, 0)
    if array.dtype != np.uint8:
        raise ValueError(f"frames must be uint8, got {array.dtype}")
    return Image.fromarray(np.ascontiguousarray(array), "RGB")


def ground_truth_boxes(item, row: Optional[int] = None) -> Optional[torch.Tensor]:
    """The object boxes (T0, 4) of a dataset item (or of video ``row`` of a batch), NaN where the object
    is not visible; None for data without ground truth."""
    if "object_boxes" not in item:
        return None
    boxes, visible = item["object_boxes"], item["object_visible"]
    if row is not None:
        boxes, visible = boxes[row], visible[row]
    boxes = boxes.clone()
    boxes[~visible] = float("nan")
    return boxes


def _box(draw: ImageDraw.ImageDraw, box, colour, scale: float, width: int) -> None:
    x1, y1, x2, y2 = (float(v) * scale for v in box)
    draw.rectangle([x1, y1, x2 - 1, y2 - 1], outline=colour, width=width)


def selection_strip(video: torch.Tensor, focus_indices: Sequence[int], patch_boxes, exit_step: Optional[int] = None,
                    thumb: int = 96, object_boxes=None, label: Optional[str] = None) -> Image.Image:
    """One video's candidate frames in a row, the focus frames marked with their patches.

    video: (T0, 3, H, W) uint8; focus_indices: (T_L,) increasing frame indices; patch_boxes: (T_L, 4)
    ``(x1, y1, x2, y2)`` in pixels of the video; exit_step: number of focus frames used before the
    exit (frames after it are greyed), or None; object_boxes: optional (T0, 4) ground truth with NaN
    where the object is not visible. Returns an RGB image of height ``thumb`` (+ a caption line).
    """
    t0, _, h, w = video.shape
    scale = thumb / max(h, w)
    tw, th = max(1, round(w * scale)), max(1, round(h * scale))
    caption = 14 if label else 0
    strip = Image.new("RGB", (t0 * (tw + 2), th + 4 + caption), (255, 255, 255))
    chosen = {int(f): k for k, f in enumerate(focus_indices)}
    for t in range(t0):
        image = to_image(video[t]).resize((tw, th), Image.BILINEAR)
        draw = ImageDraw.Draw(image)
        if object_boxes is not None and not bool(torch.isnan(torch.as_tensor(object_boxes[t])).any()):
            _box(draw, object_boxes[t], OBJECT_COLOUR, scale, 1)
        if t in chosen:
            step = chosen[t]
            used = exit_step is None or step < exit_step
            _box(draw, patch_boxes[step], FOCUS_COLOUR if used else (128, 128, 128), scale, 2)
            if not used:
                image = Image.blend(image, Image.new("RGB", image.size, (128, 128, 128)), 0.6)
        else:
            image = Image.blend(image, Image.new("RGB", image.size, (255, 255, 255)), 0.55)
        x = t * (tw + 2) + 1
        strip.paste(image, (x, 2 + caption))
        if t in chosen and (exit_step is None or chosen[t] < exit_step):
            ImageDraw.Draw(strip).rectangle([x - 1, 1 + caption, x + tw, th + 2 + caption], outline=FRAME_COLOUR)
    if label:
        ImageDraw.Draw(strip).text((2, 1), label, fill=(0, 0, 0))
    return strip


def legend(exit_marks: bool = False, object_boxes: bool = False, width: int = 0) -> Image.Image:
    """A key to the strips' marks: one line per mark actually drawn (swatch and words)."""
    items = [("frame", FRAME_COLOUR, "focus frame (processed by the focus network)"),
             ("box", FOCUS_COLOUR, "its patch (the region the focus network saw)"),
             ("fade", (255, 255, 255), "faded: a frame the focus network skipped")]
    if object_boxes:
        items.append(("box", OBJECT_COLOUR, "the object (ground truth, where visible)"))
    if exit_marks:
        items.append(("fade", (128, 128, 128), "greyed: a focus frame after the early exit (not computed)"))
    line = 16
    image = Image.new("RGB", (max(width, 340), line * len(items) + 4), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    for i, (kind, colour, text) in enumerate(items):
        y = 2 + i * line
        if kind == "fade":
            draw.rectangle([4, y + 1, 24, y + 12], fill=tuple((c + 160) // 2 for c in colour), outline=(0, 0, 0))
        else:
            draw.rectangle([4, y + 1, 24, y + 12], outline=colour, width=2)
        draw.text((32, y + 1), text, fill=(0, 0, 0))
    return image


def stack_rows(rows: List[Image.Image], gap: int = 4) -> Image.Image:
    """Stack images vertically on a white background."""
    width = max(r.width for r in rows)
    height = sum(r.height for r in rows) + gap * (len(rows) - 1)
    out = Image.new("RGB", (width, height), (255, 255, 255))
    y = 0
    for r in rows:
        out.paste(r, (0, y))
        y += r.height + gap
    return out


def focus_frames_gif(path: str, video: torch.Tensor, focus_indices: Sequence[int], patch_boxes,
                     exit_step: Optional[int] = None, size: int = 224, duration_ms: int = 400) -> None:
    """Animated GIF over the focus frames, each with its patch box (up to the exit step)."""
    steps = len(focus_indices) if exit_step is None else max(1, exit_step)
    h, w = video.shape[-2:]
    scale = size / max(h, w)
    frames = []
    for k in range(steps):
        image = to_image(video[int(focus_indices[k])]).resize((round(w * scale), round(h * scale)), Image.BILINEAR)
        _box(ImageDraw.Draw(image), patch_boxes[k], FOCUS_COLOUR, scale, 3)
        ImageDraw.Draw(image).text((4, 4), f"step {k + 1}/{steps}", fill=(255, 255, 255))
        frames.append(image)
    with atomic_write(path, "wb") as f:
        frames[0].save(f, format="GIF", save_all=True, append_images=frames[1:], duration=duration_ms, loop=0)
