"""Differentiable deformable patch cropping (paper §3.3.1, §4.1.2; docs/official-behaviour.md,
"Patch cropping").

An *action* is a 4-vector ``a = (a_y, a_x, a_h, a_w)`` in (0, 1), the spatial policy's sigmoid
output. It describes an axis-aligned box inside a frame:

* its extent along each axis runs from 96 px (``a_size = 0``) to 224 px (``a_size = 1``) on the
  official 224-px frames: ``extent = 96 + 128 a_size``. Here that rule is relative to the frame
  (``96/224`` to ``224/224`` of the side), so the same action means the same region at any
  ``input_size`` and on the glance feature map. (The official code hard-codes the pixel constants and
  derives the feature-map extent from ``P // 32``, which is wrong when 32 does not divide P.)
* its top-left corner is ``a_y * (side - extent)`` (rows) and ``a_x * (side - extent)`` (columns),
  so the box never leaves the frame. Note the order: ``a_y`` (index 0) is vertical.

The box is sampled on an ``out_h x out_w`` grid of cell centres with bilinear interpolation
(``affine_grid`` + ``grid_sample``, ``align_corners=False``: the normalised range [-1, 1] spans pixel
edges), which is differentiable with respect to both the frames and the actions. The arithmetic
follows the official one step for step, so at 224 px the patches are bit-identical to its patches.

With a patch transformation set (``models.patch_transforms``: rotation, affine, homography, thin-plate
spline; the paper's Table 11), an action carries the transformation's parameters after the four box
terms, ``(a_y, a_x, a_h, a_w, p_1, ..., p_k)``, and the box is sampled through the warped grid; the
parameters' zeros give the plain box, bit for bit.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from .patch_transforms import box_theta, get_transform

#: The official patch extents, in pixels of a frame of REFERENCE_SIZE pixels: 96 + 128 a.
REFERENCE_SIZE = 224.0
MIN_EXTENT = 96.0
EXTENT_SPAN = 128.0


def _scale(a_size: torch.Tensor, patch_size: int, input_size: int) -> torch.Tensor:
    # Patch extent in units of the patch size (official: a * 128 / P + 96 / P at 224 px).
    span = EXTENT_SPAN * input_size / REFERENCE_SIZE
    minimum = MIN_EXTENT * input_size / REFERENCE_SIZE
    return a_size * span / patch_size + minimum / patch_size


def _box_terms(actions: torch.Tensor, height: int, width: int, patch_size: int, input_size: int,
               extent_base: Optional[float] = None):
    """(x1, y1, extent_w, extent_h) of the boxes in pixels of a height x width frame.

    ``extent_base``: the side, in this frame's pixels, of a box of scale 1 (P input pixels); by default
    the same region as on the input frame, ``P * side / input_size``.
    """
    a_y, a_x, a_h, a_w = actions.unbind(-1)
    base_h = patch_size * height / input_size if extent_base is None else extent_base
    base_w = patch_size * width / input_size if extent_base is None else extent_base
    ext_h = base_h * _scale(a_h, patch_size, input_size)
    ext_w = base_w * _scale(a_w, patch_size, input_size)
    return a_x * (width - ext_w), a_y * (height - ext_h), ext_w, ext_h


def action_boxes(actions: torch.Tensor, height: int, width: int, patch_size: int, input_size: int) -> torch.Tensor:
    """Boxes ``(x1, y1, x2, y2)`` in continuous pixel coordinates of a ``height x width`` frame.

    actions: (..., 4) as ``(a_y, a_x, a_h, a_w)``; returns (..., 4). Pixel ``i`` covers ``[i, i+1)``.
    ``patch_size`` and ``input_size`` are the model's P and frame size (they fix the arithmetic; the
    box itself depends only on the frame size: extent = side * (96 + 128 a) / 224).
    """
    x1, y1, ext_w, ext_h = _box_terms(actions, height, width, patch_size, input_size)
    return torch.stack((x1, y1, x1 + ext_w, y1 + ext_h), dim=-1)


def crop_patches(frames: torch.Tensor, actions: torch.Tensor, output_size, patch_size: int,
                 input_size: int, extent_base: Optional[float] = None, transform: str = "none") -> torch.Tensor:
    """Crop one deformable patch per frame and resample it to ``output_size``.

    frames:  (N, C, H, W) images (H = W = input_size) or feature maps of such images.
    actions: (N, 4 + k) ``(a_y, a_x, a_h, a_w)`` in [0, 1], then the k parameters of ``transform``
    (``models.patch_transforms``; k = 0 for ``none``, the plain box).
    output_size: int or (out_h, out_w); P for image patches, a few cells for feature maps.
    extent_base: see :func:`_box_terms` (the X3D variant's official feature-map crop sizes the box
    by its rounded output size).
    Returns (N, C, out_h, out_w). Differentiable in ``frames`` and ``actions``.
    """
    if frames.dim() != 4:
        raise ValueError(f"frames must be (N, C, H, W), got shape {tuple(frames.shape)}")
    warp = get_transform(transform)
    if actions.shape != (frames.shape[0], 4 + warp.num_params):
        raise ValueError(f"actions must be ({frames.shape[0]}, {4 + warp.num_params}), got {tuple(actions.shape)}"
                         + (f" (4 box terms and {warp.num_params} {transform} parameters)" if warp.num_params else ""))
    out_h, out_w = (output_size, output_size) if isinstance(output_size, int) else output_size
    x1, y1, ext_w, ext_h = _box_terms(actions[:, :4], frames.shape[2], frames.shape[3], patch_size, input_size,
                                      extent_base)
    if not warp.num_params:
        return sample_boxes(frames, x1, y1, ext_w, ext_h, out_h, out_w)
    dtype = _sampling_dtype(frames)
    x1, y1, ext_w, ext_h, params = (t.to(dtype) for t in (x1, y1, ext_w, ext_h, actions[:, 4:]))
    return _sample(frames, warp.grid(x1, y1, ext_w, ext_h, params, out_h, out_w, frames.shape[2], frames.shape[3]))


def _sampling_dtype(frames: torch.Tensor) -> torch.dtype:
    """The grid's dtype: float64 for float64 frames, float32 otherwise (half frames under autocast)."""
    return frames.dtype if frames.dtype == torch.float64 else torch.float32


def _sample(frames: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Bilinear samples of frames (N, C, H, W) at grid (N, out_h, out_w, 2) -> (N, C, out_h, out_w)."""
    if grid.dtype != frames.dtype and not torch.is_autocast_enabled(frames.device.type):
        frames = frames.to(grid.dtype)
    return F.grid_sample(frames, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def sample_boxes(frames: torch.Tensor, x1: torch.Tensor, y1: torch.Tensor, ext_w: torch.Tensor,
                 ext_h: torch.Tensor, out_h: int, out_w: int) -> torch.Tensor:
    """Bilinear samples of one axis-aligned box per frame on an ``out_h x out_w`` grid of cell centres.

    frames: (N, C, H, W); x1, y1, ext_w, ext_h: (N,) the boxes' left and top edges and extents in
    continuous pixel coordinates (pixel ``i`` covers ``[i, i+1)``). Returns (N, C, out_h, out_w);
    differentiable in ``frames`` and the box tensors.
    """
    n, c, h, w = frames.shape
    theta = box_theta(x1, y1, ext_w, ext_h, h, w).to(_sampling_dtype(frames))  # (N, 2, 3)
    grid = F.affine_grid(theta, [n, c, out_h, out_w], align_corners=False)  # (N, out_h, out_w, 2)
    return _sample(frames, grid)


def feature_patch_size(patch_size: int, input_size: int, feature_size: int) -> int:
    """Side of the glance-feature-map crop that corresponds to a ``patch_size`` image patch.

    The official code uses ``patch_size // 32`` (a 224-px frame gives a 7x7 MobileNetV2 map); this is
    the same rule written for any input size, ``patch_size * feature_size // input_size``, but never
    below 2. A 1x1 crop is a single bilinear sample at the box centre: the box's extent then only
    moves that point and never averages evidence over an area, so the spatial objective degenerates
    into the point-fitting the paper warns about (§4.1.2) and a centred box gets no signal about its
    size at all. Every official configuration (P = 96, 128, 160 at 224 px) gives 3 to 5 and is
    unchanged; small CPU configurations such as 48-px patches of 96-px frames (a 3x3 map, 1.5 cells)
    get 2.
    """
    return max(2, (patch_size * feature_size) // input_size)


def native_scale_action(patch_size: int, input_size: int) -> float:
    """The size action whose box is exactly ``patch_size`` pixels of an ``input_size`` frame.

    Used by the random-patch training pass (official: ``(P - 96) / 128`` at 224 px), clamped to [0, 1].
    """
    span = EXTENT_SPAN * input_size / REFERENCE_SIZE
    minimum = MIN_EXTENT * input_size / REFERENCE_SIZE
    return min(1.0, max(0.0, (patch_size - minimum) / span))


@dataclass(frozen=True)
class PatchGeometry:
    """The patch geometry of one model: P x P patches of ``input_size`` frames, and their crop of the
    glance feature map (``feature_size`` cells a side).

    It owns every conversion between actions and regions, so callers pass actions and frames, never
    ``(patch_size, input_size)`` pairs::

        geometry = PatchGeometry(patch_size=128, input_size=224, feature_size=7)
        geometry.crop(frames, actions)          # (N, 3, H, W), (N, 4) -> (N, 3, P, P)
        geometry.crop_features(maps, actions)   # (N, D, h, w), (N, 4) -> (N, D, p, p)
        geometry.boxes(actions)                 # (..., 4) -> (..., 4) x1, y1, x2, y2 in input pixels

    With a patch ``transform`` (``models.patch_transforms``) actions are (..., 4 + k): the box terms,
    then the transformation's k parameters; :meth:`boxes` gives the untransformed boxes.
    """

    patch_size: int
    input_size: int
    feature_size: int
    #: The feature-map crop's side in cells when it is not the default rule (:func:`feature_patch_size`);
    #: the box then spans ``feature_patch`` cells at scale 1, as the official X3D crop does (its
    #: round(5 P / 224) is larger than the image box's region for P = 128 and 160).
    feature_patch: Optional[int] = None
    #: The patch transformation (``models.patch_transforms.TRANSFORMS``); ``none``: the plain box.
    transform: str = "none"

    def __post_init__(self):
        if not 0 < self.patch_size <= self.input_size:
            raise ValueError(f"patch_size must be in 1..input_size ({self.input_size}), got {self.patch_size}")
        get_transform(self.transform)

    @property
    def num_transform_params(self) -> int:
        """k, the patch transformation's parameter count (0 for ``none``)."""
        return get_transform(self.transform).num_params

    @property
    def action_dim(self) -> int:
        """4 + k: the box terms, then the transformation's parameters."""
        return 4 + self.num_transform_params

    def with_identity(self, box_actions: torch.Tensor) -> torch.Tensor:
        """Box actions (..., 4) -> actions (..., 4 + k) with the transformation's identity parameters
        (the same tensor when there are none)."""
        k = self.num_transform_params
        if not k:
            return box_actions
        return torch.cat((box_actions, box_actions.new_zeros(*box_actions.shape[:-1], k)), dim=-1)

    @property
    def feature_patch_size(self) -> int:
        """Side of the feature-map crop (see :func:`feature_patch_size`)."""
        if self.feature_patch is not None:
            return self.feature_patch
        return feature_patch_size(self.patch_size, self.input_size, self.feature_size)

    @property
    def native_scale(self) -> float:
        """The size action of a box of exactly P input pixels (the random-patch pass)."""
        return native_scale_action(self.patch_size, self.input_size)

    def boxes(self, actions: torch.Tensor, height: Optional[int] = None, width: Optional[int] = None) -> torch.Tensor:
        """Boxes of ``actions`` (..., 4 + k) in pixels of a ``height x width`` frame (default: the input
        size): (..., 4), the untransformed boxes."""
        return action_boxes(actions[..., :4], height or self.input_size, width or self.input_size, self.patch_size,
                            self.input_size)

    def crop(self, frames: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """P x P patches: frames (N, C, H, W), actions (N, 4 + k) -> (N, C, P, P)."""
        return crop_patches(frames, actions, self.patch_size, self.patch_size, self.input_size,
                            transform=self.transform)

    def crop_features(self, feature_maps: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """The same regions of glance feature maps (N, D, h, w) -> (N, D, p, p), p = feature_patch_size
        (with the same transformation, so the policy's gradient sees it)."""
        return crop_patches(feature_maps, actions, self.feature_patch_size, self.patch_size, self.input_size,
                            extent_base=self.feature_patch, transform=self.transform)

    def crop_enlarged(self, frames: torch.Tensor, actions: torch.Tensor, margin: int) -> torch.Tensor:
        """(P + margin)-px patches of the boxes grown by (P + margin) / P about their centres (AdaFocusV3's
        enlarged training patches): frames (N, C, H, W), actions (N, 4) -> (N, C, P + margin, P + margin)."""
        x1, y1, ext_w, ext_h = _box_terms(actions[:, :4], frames.shape[2], frames.shape[3], self.patch_size,
                                          self.input_size)
        side = self.patch_size + margin
        return sample_boxes(frames, *enlarge_boxes(x1, y1, ext_w, ext_h, side / self.patch_size), side, side)


# ------------------------------------------------------------------------------------------------
# Ablation rules (paper Tables 9 and 15): where patches go and how large they are, when the spatial
# policy does not decide it. Each takes the policy's actions (..., 4 + k) and returns actions of the
# same shape (a transformation's k parameters kept), so that every crop, box and FLOPs count downstream
# is unchanged.
# ------------------------------------------------------------------------------------------------
#: ``--patch_location``: the policy's (a_y, a_x) (default), uniformly random positions, the frame's centre, or
#: positions drawn from a normal distribution centred at the frame's centre (:data:`GAUSSIAN_SPREAD`).
PATCH_LOCATIONS = ("policy", "random", "central", "gaussian")
#: ``--patch_scale``: the policy's (a_h, a_w) (deformable, default); P x P input pixels (``fixed``, AdaFocus
#: V1/V2's patches); the policy's scale with a square shape (``square``: both sides the mean of a_h and a_w);
#: uniformly random sides (``random``); the whole frame down-sampled to P x P (``downsample``: a_h = a_w = 1).
PATCH_SCALES = ("policy", "fixed", "square", "random", "downsample")
#: Standard deviation of the ``gaussian`` rules (patch positions, and frame positions in
#: ``models.frame_selection``), in units of the range of positions (0..1), before clamping to it. The
#: paper does not give it; a quarter of the range keeps 95 % of the draws unclamped.
GAUSSIAN_SPREAD = 0.25


def draw_uniform(shape, generator: Optional[torch.Generator], device) -> torch.Tensor:
    """Uniform draws in [0, 1) of ``shape`` from ``generator`` (or the global RNG), float32 on ``device``."""
    gen_device = generator.device if generator is not None else device
    return torch.rand(*shape, generator=generator, device=gen_device).to(device)


def draw_centred_gaussian(shape, generator: Optional[torch.Generator], device,
                          spread: float = GAUSSIAN_SPREAD) -> torch.Tensor:
    """Normal draws of mean 0.5 and standard deviation ``spread``, clamped to [0, 1], float32 on ``device``."""
    gen_device = generator.device if generator is not None else device
    draws = torch.randn(*shape, generator=generator, device=gen_device).to(device)
    return (0.5 + spread * draws).clamp_(0.0, 1.0)


def place_patches(actions: torch.Tensor, rule: str, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """``actions`` (..., 4) with their positions (a_y, a_x) set by ``rule`` (one of :data:`PATCH_LOCATIONS`).

    A position component places a box anywhere inside the frame whatever its size (0: top / left edge,
    1: bottom / right edge), so ``central`` (0.5) centres every box. Sizes are kept.
    """
    if rule == "policy":
        return actions
    shape = (*actions.shape[:-1], 2)
    if rule == "random":
        positions = draw_uniform(shape, generator, actions.device)
    elif rule == "central":
        positions = actions.new_full(shape, 0.5)
    elif rule == "gaussian":
        positions = draw_centred_gaussian(shape, generator, actions.device)
    else:
        raise ValueError(f"patch_location must be one of {PATCH_LOCATIONS}, got {rule!r}")
    return torch.cat((positions.to(actions.dtype), actions[..., 2:]), dim=-1)


def size_patches(actions: torch.Tensor, rule: str, native_scale: float,
                 generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """``actions`` (..., 4) with their sizes (a_h, a_w) set by ``rule`` (one of :data:`PATCH_SCALES`).

    ``native_scale``: the size action of a box of exactly P input pixels (:attr:`PatchGeometry.native_scale`),
    which ``fixed`` uses. Positions are kept; ``square`` stays differentiable in the policy's sizes.
    """
    if rule == "policy":
        return actions
    shape = (*actions.shape[:-1], 2)
    if rule == "fixed":
        sizes = actions.new_full(shape, native_scale)
    elif rule == "square":
        sizes = actions[..., 2:].mean(dim=-1, keepdim=True).expand(shape)
    elif rule == "random":
        sizes = draw_uniform(shape, generator, actions.device).to(actions.dtype)
    elif rule == "downsample":
        sizes = actions.new_ones(shape)
    else:
        raise ValueError(f"patch_scale must be one of {PATCH_SCALES}, got {rule!r}")
    return torch.cat((actions[..., :2], sizes, actions[..., 4:]), dim=-1)


def enlarge_boxes(x1: torch.Tensor, y1: torch.Tensor, ext_w: torch.Tensor, ext_h: torch.Tensor, factor: float):
    """Boxes ``(x1, y1, ext_w, ext_h)`` grown by ``factor`` about their centres (they may leave the frame,
    whose outside reads as zeros)."""
    grow_w, grow_h = ext_w * (factor - 1.0) / 2, ext_h * (factor - 1.0) / 2
    return x1 - grow_w, y1 - grow_h, ext_w * factor, ext_h * factor


def crop_inner_region(feature_maps: torch.Tensor, actions: torch.Tensor, factor: float, output_size: int) -> torch.Tensor:
    """The patch's own region inside the feature maps of its enlarged box (AdaFocusV3's e^L supervision).

    feature_maps (N, D, h, w) are a focus encoder's maps of boxes ``factor`` times the boxes of
    ``actions`` (N, 4), centred on them and placed with the *detached* actions. The region is the
    patch's box relative to that enlarged box, written so that its value is the central
    ``1 / factor`` of the map while its gradient follows the actions: a box moved by ``d`` pixels moves
    its region by ``d`` pixels of the enlarged box, a box grown by ``s`` grows its region by ``s``.
    Only the ratios of the box terms matter, so any frame size gives the same region.
    Returns (N, D, output_size, output_size), differentiable in ``feature_maps`` and ``actions``.
    """
    n, _, h, w = feature_maps.shape
    x1, y1, ext_w, ext_h = _box_terms(actions[:, :4], 1, 1, 1, 1)  # in units of the frame's side
    fx1, fy1, fext_w, fext_h = (t.detach() for t in enlarge_boxes(x1, y1, ext_w, ext_h, factor))
    rel_x1, rel_y1 = (x1 - fx1) / fext_w * w, (y1 - fy1) / fext_h * h
    return sample_boxes(feature_maps, rel_x1, rel_y1, ext_w / fext_w * w, ext_h / fext_h * h, output_size, output_size)
