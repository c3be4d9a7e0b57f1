"""GFLOPs of every exit, counted from the module (docs/official-behaviour.md, "FLOPs").

GFLOPs follow the video papers' convention: multiply-accumulates (MACs), as counted by
``torch.utils.flop_counter.FlopCounterMode`` (which reports 2 FLOPs per MAC) divided by two. Each
component of the model is run once on a dummy input of the configured size and counted:

    glance_frame      MobileNetV2 on one glance frame        (x T_G)
    glance_mlp        classifier MLP on one glance feature   (x T_G)
    glance_exit       one glance exit head
    spatial_policy    spatial branch on all T_G maps         (once, before the first focus step)
    temporal_policy   temporal branch on all T_G features    (once, before the first focus step)
    patch_crop        bilinear crop of one P x P patch       (x k)
    focus_patch       focus encoder on one P x P patch       (x k)
    focus_mlp         classifier MLP on one focus feature    (x k)
    focus_exit        one focus exit head                    (x k)

The cost of stopping after ``k`` focus frames (stage k = 0..T_L; stage 0 is the last glance exit)
is what the adaptive runtime spends to get there: all glance work and one glance exit, then, if
k > 0, the policy once and k patches with their MLP steps and exit heads. A model without the glance
exit (``UniAdaFocus.exits_at_glance``: trained without ``--reuse_glance_features``) has the stages
k = 1..T_L only, and the runtime never runs the glance exit head, so none is charged.

``accounting='official'`` composes the same measured components the way the official table does
(every glance exit head charged at every stage, no crop, the policy only when k > 0); it reproduces
the official constants (27.23 GFLOPs at P=128 and 17.89 at P=96 after 16 focus frames) within
0.1 %, with the class count and sizes of the model at hand instead of a hard-coded 200 classes.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from dataclasses import asdict, dataclass
from typing import List

import torch
from torch.utils.flop_counter import FlopCounterMode

from .uni_adafocus import UniAdaFocus
from .weights import WeightsError



def _grid_sampler_flops(input_shape, grid_shape, *args, out_shape=None, **kwargs) -> int:
    # Bilinear sampling: 4 taps, a multiply-add each, per output element and channel; x2 for FLOPs.
    n, c = input_shape[0], input_shape[1]
    return 2 * 4 * n * c * grid_shape[1] * grid_shape[2]


@contextlib.contextmanager
def counting(model):
    """Count a model's components: it is put in eval mode (BatchNorm in inference form; the counts do not
    depend on the mode otherwise) and restored after; yields ``zeros(*shape)``, dummy inputs on its
    device and dtype."""
    was_training = model.training
    model.eval()
    param = next(model.parameters())
    try:
        yield lambda *shape: torch.zeros(*shape, device=param.device, dtype=param.dtype)
    finally:
        model.train(was_training)


def count_gmacs(fn, *inputs) -> float:
    """GMACs of ``fn(*inputs)`` (no_grad), as counted by FlopCounterMode / 2."""
    mapping = {torch.ops.aten.grid_sampler_2d: _grid_sampler_flops}
    counter = FlopCounterMode(display=False, custom_mapping=mapping)
    with torch.no_grad(), counter:
        fn(*inputs)
    return counter.get_total_flops() / 2.0 / 1e9


@dataclass
class FlopsBreakdown:
    """GMACs of each component (see the module docstring) and the frame counts."""

    glance_frame: float
    glance_mlp: float
    glance_exit: float
    spatial_policy: float
    temporal_policy: float
    patch_crop: float
    focus_patch: float
    focus_mlp: float
    focus_exit: float
    num_glance: int
    num_focus: int
    exits_at_glance: bool = True  # stage 0 (the last glance exit) exists; else the stages are k = 1..T_L

    @property
    def first_stage(self) -> int:
        """The focus frames of the cheapest stage: 0 (the glance exit), or 1 without it."""
        return 0 if self.exits_at_glance else 1

    def stage(self, k: int, accounting: str = "measured") -> float:
        """GFLOPs of stopping after ``k`` focus frames (k = 0..T_L, or 1..T_L without the glance exit)."""
        if not self.first_stage <= k <= self.num_focus:
            raise ValueError(f"stage must be in {self.first_stage}..{self.num_focus}, got {k}")
        g = self.num_glance
        policy = (self.spatial_policy + self.temporal_policy) if k > 0 else 0.0
        if accounting == "measured":
            glance_exit = self.glance_exit if self.exits_at_glance else 0.0  # the runtime runs it only to exit there
            return (g * (self.glance_frame + self.glance_mlp) + glance_exit + policy
                    + k * (self.patch_crop + self.focus_patch + self.focus_mlp + self.focus_exit))
        if accounting == "official":
            return (g * (self.glance_frame + self.glance_mlp + self.glance_exit) + policy
                    + k * (self.focus_patch + self.focus_mlp + self.focus_exit))
        raise ValueError(f"accounting must be 'measured' or 'official', got {accounting!r}")

    def stages(self, accounting: str = "measured") -> List[float]:
        """GFLOPs of every early-exit stage: [last glance exit, after 1 focus frame, ..., after T_L], the first
        left out without the glance exit (the model's ``exit_focus_frames``)."""
        return [self.stage(k, accounting) for k in range(self.first_stage, self.num_focus + 1)]


def flops_breakdown(model) -> FlopsBreakdown:
    """Count every component of ``model`` (a UniAdaFocus) on dummy inputs of its configured size."""
    with counting(model) as zeros:
        size, p, g = model.input_size, model.patch_size, model.num_glance
        gdim, fdim = model.glance.feature_dim, model.focus.feature_dim
        hidden = model.classifier.glance_mlp.layers[0].out_features
        frame = zeros(1, 3, size, size)
        return FlopsBreakdown(
            glance_frame=count_gmacs(model.glance, zeros(1, 3, model.glance_size, model.glance_size)),
            glance_mlp=count_gmacs(model.classifier.glance_mlp, zeros(1, 1, gdim)),
            glance_exit=count_gmacs(model.classifier.glance_exits[-1], zeros(1, hidden)),
            spatial_policy=count_gmacs(model.policy.spatial, zeros(1, g, gdim, model.feature_size, model.feature_size)),
            temporal_policy=count_gmacs(model.policy.temporal, zeros(1, g, gdim)),
            patch_crop=count_gmacs(model.geometry.crop, frame, model.geometry.with_identity(zeros(1, 4) + 0.5)),
            focus_patch=count_gmacs(model.focus, zeros(1, 3, p, p)),
            focus_mlp=count_gmacs(model.classifier.focus_mlp, zeros(1, 1, fdim)),
            focus_exit=count_gmacs(model.classifier.focus_exits[-1], zeros(1, 2 * hidden)),
            num_glance=g, num_focus=model.num_focus, exits_at_glance=model.exits_at_glance,
        )


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m models.flops", allow_abbrev=False,
        description="Print the GFLOPs (multiply-accumulates) of every Uni-AdaFocus exit, counted from the model.")
    parser.add_argument("--num_classes", type=int, default=200)
    parser.add_argument("--patch_size", type=int, nargs="+", default=[96, 128, 160],
                        help="one or more patch sizes P (a column each)")
    parser.add_argument("--num_segments", type=int, default=48)
    parser.add_argument("--num_glance_segments", type=int, default=16)
    parser.add_argument("--num_focus_segments", type=int, default=16)
    parser.add_argument("--input_size", type=int, default=224)
    parser.add_argument("--classifier_dim", type=int, default=4096, help="classifier MLP width (official 4096)")
    parser.add_argument("--stn_hidden_dim", type=int, default=128)
    parser.add_argument("--temporal_hidden_dim", type=int, default=64)
    parser.add_argument("--focus_arch", default="resnet50")
    parser.add_argument("--accounting", choices=("measured", "official"), default="measured",
                        help="'measured': what the adaptive runtime spends; 'official': the official table's rule")
    parser.add_argument("--json", action=argparse.BooleanOptionalAction, default=False, help="print JSON instead of a table")
    return parser


def main(argv=None) -> int:
    """``python -m models.flops``: a size that does not validate is one ``error:`` line and exit status 2
    (its traceback only with ``UNIADAFOCUS_DEBUG=1``; ``models`` does not import ``ops.cli``)."""
    args = _build_parser().parse_args(argv)
    table = {}
    for p in args.patch_size:
        try:
            model = UniAdaFocus(num_classes=args.num_classes, num_segments=args.num_segments,
                                num_glance_segments=args.num_glance_segments, num_focus_segments=args.num_focus_segments,
                                patch_size=p, input_size=args.input_size, classifier_dim=args.classifier_dim,
                                stn_hidden_dim=args.stn_hidden_dim, temporal_hidden_dim=args.temporal_hidden_dim,
                                focus_arch=args.focus_arch)
        except (ValueError, WeightsError) as exc:
            if os.environ.get("UNIADAFOCUS_DEBUG", "") not in ("", "0"):
                raise
            print(f"error: {exc}", file=sys.stderr)
            return 2
        breakdown = flops_breakdown(model)
        table[p] = {"components": asdict(breakdown), "stages": breakdown.stages(args.accounting)}
    if args.json:
        print(json.dumps({"accounting": args.accounting, "num_classes": args.num_classes,
                          "patch_sizes": {str(p): v for p, v in table.items()}}, indent=2))
        return 0
    sizes = list(table)
    print(f"Uni-AdaFocus GFLOPs (multiply-accumulates) per video; {args.accounting} accounting; "
          f"C={args.num_classes}, T0={args.num_segments}, T_G={args.num_glance_segments}, "
          f"T_L={args.num_focus_segments}, input {args.input_size}px, focus {args.focus_arch}")
    print("\ncomponents (GFLOPs)" + "".join(f"{'P=' + str(p):>14s}" for p in sizes))
    for name in ("glance_frame", "glance_mlp", "glance_exit", "spatial_policy", "temporal_policy", "patch_crop",
                 "focus_patch", "focus_mlp", "focus_exit"):
        print(f"  {name:17s}" + "".join(f"{table[p]['components'][name]:14.6f}" for p in sizes))
    print("\nexit stage (focus frames)" + "".join(f"{'P=' + str(p):>14s}" for p in sizes))
    for k in range(args.num_focus_segments + 1):
        label = "0 (glance only)" if k == 0 else str(k)
        print(f"  {label:23s}" + "".join(f"{table[p]['stages'][k]:14.4f}" for p in sizes))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
