#!/usr/bin/env python
"""How fast does the glance learn on its own? (synthetic data only)

Trains a preset's glance encoder and glance head alone, from random initialisation, with the glance's
own per-frame loss (paper Eq. 11: every glance frame is asked for its video's label) and nothing else:
no policy, no focus network, no classifier. Every ``--eval_every`` steps it prints the running mean of
that loss and, over the validation glance frames (evenly spaced, as in evaluation) that show the class
object, how often the head names the object's **group**: its shape and hue, the twins of a pair counting
as one (the glance is not meant to tell twins apart), and how often the exact class.

This separates the glance's own pace from the rest of the objective: if the glance is slow here too,
its slow start in a full run comes from the glance and the data, not from the other terms.

    python -m scripts.probe_glance --config configs/synthetic.yaml --seed 1007 --steps 120
    python -m scripts.probe_glance --config configs/synthetic.yaml --seed 1007 --set glance_size=48
    python -m scripts.probe_glance --config configs/synthetic.yaml --seed 1007 --flag no-zero_init_residual

The data, model sizes, learning rate, weight decay, batch size and the synthetic set come from the preset
(and ``--set NAME=VALUE`` overrides, as main.py flags); the optimiser is AdamW. Data loading follows the
training run's (same sampler, augmentation and seeds for the given ``--seed``).
"""
from __future__ import annotations

import sys
import time

import torch
import torch.nn.functional as F

from datasets import synthetic_render
from datasets.files import write_json_atomic
from ops import build, config, flags, loaders
from ops import distributed as dist_ops
from ops.rng import epoch_seed, seed_everything


def main_cli(argv=None) -> int:
    p = flags.ArgumentParser("python -m scripts.probe_glance", description=__doc__.splitlines()[0], allow_abbrev=False)
    p.add_argument("--config", required=True, help="a synthetic preset (e.g. configs/synthetic.yaml)")
    p.add_argument("--data_dir", default=None, help="override the preset's data directory")
    p.add_argument("--seed", type=int, default=1007, help="the training seed (main.py's --seed)")
    p.add_argument("--steps", type=int, default=120, help="training steps")
    p.add_argument("--eval_every", type=int, default=30, help="steps between validations")
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                   help="a main.py flag for the preset, e.g. glance_size=48 (repeatable)")
    p.add_argument("--flag", action="append", default=[], metavar="NAME",
                   help="a main.py switch for the preset, e.g. no-zero_init_residual (repeatable)")
    p.add_argument("--json", default=None, help="also write the figures to this file")
    opts = p.parse_args(argv)
    for name, value in (("--steps", opts.steps), ("--eval_every", opts.eval_every)):
        if value <= 0:
            p.error(f"{name} must be positive, got {value}")
    main_flags = ["--config", opts.config, "--seed", str(opts.seed)]
    main_flags += ["--data_dir", opts.data_dir] if opts.data_dir else []
    for item in opts.set:
        name, sep, value = item.partition("=")
        if not sep or not name:
            p.error(f"--set {item!r}: expected NAME=VALUE")
        main_flags += [f"--{name}", value]
    main_flags += [f"--{name}" for name in opts.flag]
    args = config.parse_args(main_flags)
    if args.dataset != "synthetic":
        p.error("--config: the probe needs the synthetic dataset (its object boxes and class groups)")
    info = dist_ops.DistInfo()
    seed_everything(epoch_seed(args.seed, 0, info.rank))
    train_set, train_loader, _, _ = loaders.build_loaders(args, info)
    val_set = loaders.build_dataset(args, "val", info)  # every frame decoded (the run's loader decodes on demand)
    val_loader = loaders.build_eval_loader(val_set, args.val_batch_size, args, info)
    model = build.build_model(args, val_set.num_classes, info)
    params = list(model.glance.parameters()) + list(model.glance_head.parameters())
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay,
                                  fused=build.adamw_fused(args, params))
    twins = (args.synthetic or {}).get("twin_classes", 0)
    groups = torch.tensor([synthetic_render.appearance_group(c, val_set.num_classes, twins)[0]
                           for c in range(val_set.num_classes)])
    amp = (False, torch.float32)

    def validate():
        model.eval()
        group_hits = class_hits = shown_frames = 0
        with torch.no_grad():
            for batch in val_loader:
                glance = model.glance_stage(model.frames_view(batch["video"]), amp, head=True)
                shown = torch.gather(batch["object_visible"].bool(), 1, glance.indices)  # (B, T_G)
                label = batch["label"][:, None].expand_as(shown)
                predicted = glance.logits.argmax(-1)  # (B, T_G)
                group_hits += int((groups[predicted] == groups[label])[shown].sum())
                class_hits += int((predicted == label)[shown].sum())
                shown_frames += int(shown.sum())
        model.train()
        return 100.0 * group_hits / max(shown_frames, 1), 100.0 * class_hits / max(shown_frames, 1)

    generator = torch.Generator().manual_seed(args.seed)
    identity = "residual blocks starting as the identity, " if args.zero_init_residual else ""
    print(f"glance alone: {args.glance_arch} at {args.glance_size} px on {args.num_glance_segments} frames, {identity}"
          f"AdamW lr {args.lr:g}, batch {args.batch_size}, seed {args.seed}; {len(val_set)} validation videos",
          flush=True)
    model.train()
    losses, rows, step, epoch, started = [], [], 0, 0, time.time()
    while step < opts.steps:
        train_loader.sampler.set_epoch(epoch)
        train_set.set_epoch(epoch)
        for batch in train_loader:
            glance = model.glance_stage(model.frames_view(batch["video"]), amp, generator, head=True)
            logits = glance.logits  # (B, T_G, C)
            loss = F.cross_entropy(logits.flatten(0, 1), batch["label"].repeat_interleave(logits.shape[1]))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
            step += 1
            if step % opts.eval_every == 0 or step == opts.steps:
                group_acc, class_acc = validate()
                recent = losses[-opts.eval_every:]
                rows.append({"step": step, "loss": sum(recent) / len(recent), "group_top1_shown": group_acc,
                             "class_top1_shown": class_acc, "seconds": time.time() - started})
                print(f"step {step}: loss {rows[-1]['loss']:.3f}; on frames that show the object: group "
                      f"{group_acc:.1f} %, class {class_acc:.1f} % ({rows[-1]['seconds']:.0f} s)", flush=True)
            if step >= opts.steps:
                break
        epoch += 1
    if opts.json:
        write_json_atomic(opts.json, {"config": opts.config, "flags": main_flags, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main_cli())
