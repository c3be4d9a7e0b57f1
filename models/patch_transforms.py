"""Patch transformations beyond the axis-aligned box (paper Table 11, "Design of the spatial dynamic
computation mechanism"; docs/ablations.md, "Patch transformations").

The deformable patch of ``models.patches`` is an axis-aligned box ``(x1, y1, ext_w, ext_h)`` (left and
top edges and extents in continuous pixels of an ``H x W`` frame). A transformation warps the patch
*inside the box's own coordinates* before the box places it in the frame:

* ``(u, v)`` are the output grid's cell centres in the box's normalised coordinates, ``[-1, 1]`` from
  edge to edge (``u`` horizontal, ``v`` vertical; ``align_corners=False``: ``u_j = (2 j + 1) / out_w - 1``);
* the transformation maps them to ``(u', v') = T(u, v; params)``;
* the box maps those to the frame's normalised coordinates, as the plain crop does:
  ``X = c_x + (ext_w / W) u'`` and ``Y = c_y + (ext_h / H) v'`` with ``c = (2 x1 + ext) / side - 1``.

Every transformation's parameters are zero at the identity, so a policy head that starts at zero
starts from the plain box. The transformations (``params`` per row, N rows):

* ``none`` (0 parameters): ``T(u, v) = (u, v)``.
* ``rotation`` (1: the angle theta in radians): the box rotated rigidly (in pixels) about its centre,
  ``u' = cos(theta) u - sin(theta) (ext_h / ext_w) v`` and ``v' = sin(theta) (ext_w / ext_h) u +
  cos(theta) v``. With x to the right and y down, theta = pi/2 gives the plain patch turned a quarter
  counter-clockwise: ``torch.rot90(patch, 1, dims=(-2, -1))`` for a square box.
* ``affine`` (6: ``p``): the 2 x 3 matrix ``[[1 + p0, p1, p2], [p3, 1 + p4, p5]]`` applied to
  ``(u, v, 1)`` (``p`` is the matrix minus the identity, row-major; a translation of 1 moves the patch
  by half the box).
* ``homography`` (8: ``p``): the 3 x 3 matrix ``[[1 + p0, p1, p2], [p3, 1 + p4, p5], [g0, g1, 1]]``
  applied to ``(u, v, 1)`` and divided by its third coordinate ``g0 u + g1 v + 1``. The first six
  parameters are the affine ones; the perspective terms are bounded, ``g_i = 0.25 tanh(p_{6+i})``, so
  the divisor stays in [0.5, 1.5] over the box and the warp never sends a patch point to infinity.
  With ``p6 = p7 = 0`` it is exactly the affine transformation of ``p0..p5``.
* ``tps`` (18: the displacements ``(du_k, dv_k)`` of a 3 x 3 grid of control points, row-major, at rest
  at ``{-1, 0, 1}^2`` in box coordinates): the thin-plate spline that moves every control point by its
  displacement with the least bending energy, kernel ``U(r) = r^2 log r^2`` (Bookstein, 1989). The
  spline of the displacements is added to ``(u, v)`` (a thin-plate spline reproduces affine maps, so
  this is the spline through the moved control points), and zero displacements give ``(u, v)`` exactly.

Every grid is differentiable with respect to the box terms and the parameters; sampled with
``grid_sample`` it is differentiable with respect to the frames too.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Dict, Tuple

import torch
import torch.nn.functional as F

#: Bound of the homography's two perspective terms (see the module doc).
PERSPECTIVE_LIMIT = 0.25
#: Control points per side of the thin-plate spline's grid (rest positions evenly spaced over [-1, 1]).
TPS_GRID = 3


def box_theta(x1: torch.Tensor, y1: torch.Tensor, ext_w: torch.Tensor, ext_h: torch.Tensor, height: int,
              width: int) -> torch.Tensor:
    """The affine map (N, 2, 3) from a box's normalised coordinates to a ``height x width`` frame's.

    x1, y1, ext_w, ext_h: (N,) the boxes in continuous pixels. Scale ``extent / side``, shift the box
    centre in [-1, 1] (``align_corners=False``: the range spans pixel edges).
    """
    zeros = torch.zeros_like(x1)
    return torch.stack((
        torch.stack((ext_w / width, zeros, (x1 + (x1 + ext_w)) / width - 1), dim=-1),
        torch.stack((zeros, ext_h / height, (y1 + (y1 + ext_h)) / height - 1), dim=-1),
    ), dim=1)  # (N, 2, 3)


def local_grid(n: int, out_h: int, out_w: int, dtype: torch.dtype, device) -> torch.Tensor:
    """The output's cell centres in box coordinates: (N, out_h, out_w, 2) as ``(u, v)`` in (-1, 1).

    The same values ``affine_grid`` starts from (``align_corners=False``).
    """
    identity = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=dtype, device=device)
    return F.affine_grid(identity.expand(n, 2, 3), [n, 1, out_h, out_w], align_corners=False)


def place_in_box(local: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Box coordinates (N, out_h, out_w, 2) -> frame coordinates through ``theta`` (N, 2, 3).

    The same product as ``affine_grid`` (so an untransformed grid is bit-identical to its grid).
    """
    n, out_h, out_w, _ = local.shape
    homogeneous = torch.cat((local, torch.ones_like(local[..., :1])), dim=-1).reshape(n, out_h * out_w, 3)
    return homogeneous.bmm(theta.transpose(1, 2)).view(n, out_h, out_w, 2)


# ----------------------------------------------------------------------------------------------
# warps in box coordinates: local (N, out_h, out_w, 2), params (N, k), aspect (N,) = ext_h / ext_w
# ----------------------------------------------------------------------------------------------
def _no_warp(local, params, aspect):
    return local


def _rotation(local, params, aspect):
    u, v = local.unbind(-1)
    angle = params[:, 0].view(-1, 1, 1)
    aspect = aspect.view(-1, 1, 1)
    cos, sin = torch.cos(angle), torch.sin(angle)
    return torch.stack((cos * u - (sin * aspect) * v, (sin / aspect) * u + cos * v), dim=-1)


def _linear_rows(local, p):
    """The affine part of ``(u, v, 1)``: ``((1 + p0) u + p1 v + p2, p3 u + (1 + p4) v + p5)``."""
    u, v = local.unbind(-1)
    p = [q.view(-1, 1, 1) for q in p[:, :6].unbind(1)]
    return u * (1 + p[0]) + v * p[1] + p[2], u * p[3] + v * (1 + p[4]) + p[5]


def _affine(local, params, aspect):
    return torch.stack(_linear_rows(local, params), dim=-1)


def _homography(local, params, aspect):
    x, y = _linear_rows(local, params)
    u, v = local.unbind(-1)
    g0, g1 = (PERSPECTIVE_LIMIT * torch.tanh(params[:, i]).view(-1, 1, 1) for i in (6, 7))
    divisor = u * g0 + v * g1 + 1
    return torch.stack((x / divisor, y / divisor), dim=-1)


def tps_control_points(dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The thin-plate spline's control points at rest: (TPS_GRID^2, 2) as ``(u, v)``, row-major."""
    side = torch.linspace(-1.0, 1.0, TPS_GRID, dtype=dtype)
    v, u = torch.meshgrid(side, side, indexing="ij")
    return torch.stack((u.flatten(), v.flatten()), dim=-1)


def _tps_kernel(points: torch.Tensor, control: torch.Tensor) -> torch.Tensor:
    """``U(r) = r^2 log r^2`` between points (M, 2) and control points (K, 2): (M, K), 0 at r = 0."""
    squared = ((points.unsqueeze(1) - control.unsqueeze(0)) ** 2).sum(-1)
    return torch.where(squared > 0, squared * torch.log(squared.clamp_min(1e-300)), torch.zeros_like(squared))


@lru_cache(maxsize=32)
def _tps_weights(out_h: int, out_w: int) -> torch.Tensor:
    """(out_h * out_w, K) float64: the spline's value at every output cell centre per unit displacement of
    each of the K control points (the solved thin-plate system, which depends on the sizes only)."""
    control = tps_control_points()  # (K, 2)
    k = control.shape[0]
    system = torch.zeros(k + 3, k + 3, dtype=torch.float64)
    system[:k, :k] = _tps_kernel(control, control)
    affine_terms = torch.cat((torch.ones(k, 1, dtype=torch.float64), control), dim=1)  # (K, 3)
    system[:k, k:], system[k:, :k] = affine_terms, affine_terms.t()
    points = local_grid(1, out_h, out_w, torch.float64, "cpu").reshape(-1, 2)  # (M, 2)
    basis = torch.cat((_tps_kernel(points, control),
                       torch.ones(points.shape[0], 1, dtype=torch.float64), points), dim=1)  # (M, K + 3)
    return basis @ torch.linalg.inv(system)[:, :k]  # (M, K)


def _tps(local, params, aspect):
    n, out_h, out_w, _ = local.shape
    weights = _tps_weights(out_h, out_w).to(device=local.device, dtype=local.dtype)  # (M, K)
    displacement = torch.matmul(weights, params.view(n, -1, 2))  # (N, M, 2)
    return local + displacement.view(n, out_h, out_w, 2)


@dataclass(frozen=True)
class PatchTransform:
    """One member of :data:`TRANSFORMS`: its parameter count and its warp in box coordinates."""

    name: str
    num_params: int
    summary: str
    warp: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

    def identity(self, n: int, dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
        """The parameters of the plain box: (n, num_params) zeros."""
        return torch.zeros(n, self.num_params, dtype=dtype, device=device)

    def grid(self, x1: torch.Tensor, y1: torch.Tensor, ext_w: torch.Tensor, ext_h: torch.Tensor,
             params: torch.Tensor, out_h: int, out_w: int, height: int, width: int) -> torch.Tensor:
        """The sampling grid of the transformed boxes for ``grid_sample`` (``align_corners=False``).

        x1, y1, ext_w, ext_h: (N,) the boxes in continuous pixels of a ``height x width`` frame (the
        box terms of ``models.patches``); params: (N, num_params), in the boxes' dtype. Returns
        (N, out_h, out_w, 2) as ``(x, y)`` in the frame's normalised coordinates.
        """
        n = x1.shape[0]
        if params.shape != (n, self.num_params):
            raise ValueError(f"{self.name} takes ({n}, {self.num_params}) parameters, got {tuple(params.shape)}")
        local = local_grid(n, out_h, out_w, x1.dtype, x1.device)
        warped = self.warp(local, params, ext_h / ext_w)
        return place_in_box(warped, box_theta(x1, y1, ext_w, ext_h, height, width))


#: Every patch transformation, by its ``--patch_transform`` name.
TRANSFORMS: Dict[str, PatchTransform] = {t.name: t for t in (
    PatchTransform("none", 0, "the plain axis-aligned box", _no_warp),
    PatchTransform("rotation", 1, "the box rotated about its centre by an angle (radians)", _rotation),
    PatchTransform("affine", 6, "a 2x3 affine matrix in box coordinates, minus the identity", _affine),
    PatchTransform("homography", 8, "a 3x3 homography in box coordinates (affine part minus the identity, "
                                    "two bounded perspective terms)", _homography),
    PatchTransform("tps", 2 * TPS_GRID ** 2, f"a thin-plate spline through a {TPS_GRID}x{TPS_GRID} grid of "
                                             "control points, by their displacements", _tps),
)}
TRANSFORM_NAMES: Tuple[str, ...] = tuple(TRANSFORMS)


def get_transform(name: str) -> PatchTransform:
    """The transformation called ``name``; a ValueError in one line names the choices otherwise."""
    if name not in TRANSFORMS:
        raise ValueError(f"unknown patch transform {name!r}: choose one of {', '.join(TRANSFORM_NAMES)}")
    return TRANSFORMS[name]
