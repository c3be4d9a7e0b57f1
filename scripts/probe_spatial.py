#!/usr/bin/env python
"""Does the spatial policy's training signal point at the object? (synthetic data only)

The spatial policy is trained by the auxiliary objective alone: each glance feature map is cropped by
the policy's patch, pooled and classified (docs/official-behaviour.md, "Forward pass"). This script
evaluates that objective, on the validation glance frames that show the object, for four patch
placements of the smallest size:

* ``policy``  the trained policy's own patch (its size included; with a patch transformation, its box
  without the transformation, as every placement here);
* ``object``  centred on the object's true box;
* ``random``  uniformly random positions (seeded);
* ``centre``  the frame centre.

If ``object`` is not below ``random`` while the glance is still unsure of the class, the glance
feature map carries no localised class evidence and the objective cannot teach the policy where the
object is. (Once the glance is nearly always right, every placement's cross-entropy is close to 0 and
the comparison says little.) It also prints how the policy's positions correlate with the object's,
which is the direct answer.

    python -m scripts.probe_spatial --config configs/synthetic.yaml --resume exp/synthetic/ckpt.best.pth.tar
"""
from __future__ import annotations

import sys

import torch
import torch.nn.functional as F

import datasets
from models import get_variant
from models import patches as patch_ops
from ops import config, flags, loaders
from ops.checkpoint import load_checkpoint


def placements(policy_actions: torch.Tensor, boxes: torch.Tensor, size: int, generator: torch.Generator):
    """Actions (n, 4) for each placement; boxes (n, 4) object boxes (x1, y1, x2, y2) in input pixels."""
    n = policy_actions.shape[0]
    extent = patch_ops.MIN_EXTENT / patch_ops.REFERENCE_SIZE * size  # the smallest patch (size action 0)
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    a_x = ((cx - extent / 2) / (size - extent)).clamp(0, 1)
    a_y = ((cy - extent / 2) / (size - extent)).clamp(0, 1)
    zeros = torch.zeros(n)
    return {
        "policy": policy_actions,
        "object": torch.stack([a_y, a_x, zeros, zeros], dim=-1),
        "random": torch.cat([torch.rand(n, 2, generator=generator), torch.zeros(n, 2)], dim=-1),
        "centre": torch.tensor([[0.5, 0.5, 0.0, 0.0]]).expand(n, 4),
    }


def main_cli(argv=None) -> int:
    p = flags.ArgumentParser("python -m scripts.probe_spatial", description=__doc__.splitlines()[0], allow_abbrev=False)
    p.add_argument("--config", required=True, help="the run's preset (e.g. configs/synthetic.yaml)")
    p.add_argument("--resume", required=True, help="checkpoint to probe")
    p.add_argument("--data_dir", default=None, help="override the preset's data directory")
    p.add_argument("--videos", type=int, default=200, help="validation videos to use")
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    opts = p.parse_args(argv)
    extra = ["--data_dir", opts.data_dir] if opts.data_dir else []
    args = config.parse_args(["--config", opts.config] + extra)
    if args.dataset != "synthetic":
        raise SystemExit("--config: the probe needs the synthetic dataset's object boxes")
    val = datasets.build_dataset("synthetic", args.data_dir, "val", train=False, num_segments=args.num_segments,
                                 input_size=args.input_size, **loaders.dataset_options(args))
    model = get_variant(args.variant).build_from(args, val.num_classes)
    load_checkpoint(opts.resume, model)
    model.eval()
    generator = torch.Generator().manual_seed(opts.seed)
    losses, hits, positions = {}, {}, []
    count = min(opts.videos, len(val))
    with torch.no_grad():
        for start in range(0, count, opts.batch_size):
            items = [val[i] for i in range(start, min(start + opts.batch_size, count))]
            frames = torch.stack([it["video"] for it in items])  # (B, T0, 3, S, S) uint8
            labels = torch.tensor([int(it["label"]) for it in items])
            glance = model.glance_stage(frames, amp=(False, torch.float32))
            policy = model.policy_stage(glance, frames.shape[1], auxiliary=False)
            index = glance.indices  # (B, T_G)
            boxes = torch.gather(torch.stack([it["object_boxes"] for it in items]), 1,
                                 index[..., None].expand(-1, -1, 4)).flatten(0, 1)  # (B*T_G, 4)
            shown = torch.gather(torch.stack([it["object_visible"] for it in items]), 1, index).flatten().bool()
            target = labels.repeat_interleave(model.num_glance)[shown]
            maps = glance.feature_maps.flatten(0, 1)[shown]  # (n, Dg, h, w)
            actions = placements(policy.glance_actions[..., :4].reshape(-1, 4)[shown], boxes[shown], model.input_size,
                                 generator)
            for name, a in actions.items():
                crop = model.geometry.crop_features(maps, model.geometry.with_identity(a))
                logits = model.spatial_head(crop.mean(dim=(2, 3)))  # (n, C)
                losses.setdefault(name, []).append(F.cross_entropy(logits, target, reduction="none"))
                hits.setdefault(name, []).append((logits.argmax(1) == target).float())
            ax, ay = actions["object"][:, 1], actions["object"][:, 0]
            positions.append(torch.stack([actions["policy"][:, 1], actions["policy"][:, 0], ax, ay], dim=1))
    n = sum(len(v) for v in losses["policy"])
    print(f"{n} glance frames that show the object, {count} validation videos ({opts.resume})")
    print("placement   aux cross-entropy   aux top-1")
    for name in ("policy", "object", "random", "centre"):
        print(f"{name:<10}  {torch.cat(losses[name]).mean():>17.3f}   {100 * torch.cat(hits[name]).mean():>8.1f}%")
    pos = torch.cat(positions)
    corr = [torch.corrcoef(pos[:, [k, k + 2]].T)[0, 1].item() for k in (0, 1)]
    print(f"policy position (a_x, a_y): mean {pos[:, 0].mean():.2f}, {pos[:, 1].mean():.2f}; "
          f"std {pos[:, 0].std():.2f}, {pos[:, 1].std():.2f}; correlation with the object's: "
          f"x {corr[0]:+.2f}, y {corr[1]:+.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main_cli())
