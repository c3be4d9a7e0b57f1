#!/usr/bin/env python
"""Draw what Uni-AdaFocus looked at: selected frames, their patches and the exit step (paper Fig. 13).

    python -m scripts.visualize --config configs/synthetic.yaml --resume exp/RUN/ckpt.best.pth.tar \\
        --videos 0 1 2 3 --out frames.png [--gif] [--thresholds early_exit/thresholds_entropy_0.3gflops.json]
    python -m scripts.visualize --config configs/synthetic.yaml --resume exp/RUN/ckpt.best.pth.tar \\
        --files my_video.mp4 frames_folder/ --out mine.png      # your own videos, no dataset needed

Takes main.py's arguments (dataset, sizes, ``--resume``) and draws, for each chosen validation video,
its T0 candidate frames in a row (or, with ``--files``, for video files and frame folders, sampled and
cropped as the evaluation does): the frames the focus network processed are framed and carry their
patch box, the others are dimmed, frames after the exit step (with ``--thresholds``) are greyed, and
where the dataset has ground truth (the synthetic one) the object's box is drawn too. The rows are
stacked into one PNG; ``--gif`` also writes one animated GIF per video that walks through the focus
frames.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional, Sequence

import torch

from datasets import DataError, class_names
from datasets.clip import load_clip
from datasets.files import atomic_write
from ops import build, cli, config, flags, loaders, run_state
from ops import distributed as dist_ops
from ops.checkpoint import CheckpointError, checkpoint_num_classes, read_checkpoint
from ops.cpu import tune_cpu_allocator
from ops.early_exit import AdaptiveRunner, ThresholdsFileError, load_thresholds
from ops.run_log import RunLog
from ops.visualize import focus_frames_gif, ground_truth_boxes, legend, selection_strip, stack_rows


def get_args_parser() -> argparse.ArgumentParser:
    """The drawing options, then main.py's arguments (``--thresholds`` marks the exit step here); ``--help``
    shows this script's description and its own options first."""
    parser = flags.get_args_parser()
    parser.prog = "python -m scripts.visualize"
    parser.description = __doc__.split("\n\n")[0]
    parser.usage = ("%(prog)s [--videos I [I ...] | --files VIDEO [VIDEO ...]] [--out PNG] [--gif] [--thumb PX] "
                    "[--short_side PX] [main.py's flags: --config FILE --resume CHECKPOINT --thresholds FILE ...]")
    g = flags.own_options_first(parser, "visualisation", "what to draw and where; main.py's flags (further "
                                                         "below) give the data, the model and its checkpoint")
    g.add_argument("--videos", type=int, nargs="+", default=[0, 1, 2, 3], help="validation video indices")
    g.add_argument("--files", nargs="+", default=None,
                   help="draw these video files or frame folders instead of dataset videos (needs --resume)")
    g.add_argument("--short_side", type=int, default=360, help="with --files: decode-time short side")
    g.add_argument("--out", default="uniadafocus_frames.png", help="PNG grid to write")
    g.add_argument("--gif", action=argparse.BooleanOptionalAction, default=False,
                   help="also write OUT_STEM_<index>.gif per video (<index>: the --videos index or the --files position)")
    g.add_argument("--thumb", type=int, default=96, help="thumbnail side in pixels")
    return parser


def video_caption(tag: str, label: Optional[int], prediction: int, exit_step: Optional[int],
                  names: Optional[Sequence[str]]) -> str:
    """One row's caption: the video, its label (when known), the prediction and, with thresholds, the
    number of focus frames processed before the exit (0: the glance exit)."""
    name = (lambda c: names[c]) if names else str
    text = f"{tag}: " + (f"label {name(label)}, " if label is not None else "") + f"prediction {name(prediction)}"
    if exit_step is not None:
        text += f", exit after {exit_step} focus frame{'' if exit_step == 1 else 's'}"
    return text


def main(argv: Optional[List[str]] = None) -> int:
    parser = get_args_parser()
    args = config.parse_args(argv, parser)
    if args.resume and not os.path.isfile(args.resume):
        raise SystemExit(f"--resume {args.resume}: checkpoint not found")
    config.adopt_checkpoint_config(args, parser)  # the model sizes no flag sets, from our checkpoints
    args.evaluate = True
    info = dist_ops.init_distributed(None, args.device, "env://")
    if info.device.type == "cpu":
        tune_cpu_allocator()
    log = RunLog(os.path.dirname(os.path.abspath(args.out)) or ".", enabled=False)
    if args.files:
        if not args.resume:
            raise SystemExit("--files needs --resume CHECKPOINT (the class count comes from it)")
        try:
            num_classes = checkpoint_num_classes(read_checkpoint(args.resume), args.resume)
        except CheckpointError as exc:
            raise SystemExit(str(exc)) from None
        videos = []
        for path in args.files:
            try:
                clip, _ = load_clip(path, args.num_segments, args.input_size, args.short_side)
            except DataError as exc:
                raise SystemExit(str(exc)) from None
            videos.append((os.path.basename(os.path.normpath(path)), {"video": clip}))
        try:
            names = class_names(num_classes, dataset=args.dataset, data_dir=args.data_dir)
        except DataError as exc:
            raise SystemExit(str(exc)) from None
    else:
        val_set = loaders.build_dataset(args, "val", info)
        bad = [i for i in args.videos if not 0 <= i < len(val_set)]
        if bad:
            raise SystemExit(f"--videos {bad}: the validation set has {len(val_set)} videos (0..{len(val_set) - 1})")
        num_classes = val_set.num_classes
        videos = [(f"video {i}", val_set[i]) for i in args.videos]
        names = getattr(val_set, "class_names", None)
    model = build.build_model(args, num_classes, info)
    if args.resume:
        run_state.restore(args, model, None, None, log, "")
    else:
        print("warning: no --resume: drawing an untrained model", file=sys.stderr)
    model.eval()
    runner = None
    if args.thresholds:
        try:
            runner = AdaptiveRunner(model, load_thresholds(args.thresholds))
        except ThresholdsFileError as exc:
            raise SystemExit(str(exc)) from None
    rows = []
    stem = os.path.splitext(args.out)[0]
    for number, (tag, item) in enumerate(videos):
        video = item["video"]
        with torch.no_grad():
            out = model(video.unsqueeze(0).to(info.device))
            early = runner.run(video.unsqueeze(0).to(info.device)) if runner else None
        # with thresholds, the prediction is the one the exit step makes, not the full pass's
        exit_step = int(early.exit_stage[0]) if early is not None else None
        pred = int((early.logits if early is not None else out.logits)[0].argmax())
        boxes = ground_truth_boxes(item)
        caption = video_caption(tag, int(item["label"]) if "label" in item else None, pred, exit_step, names)
        print(caption)
        rows.append(selection_strip(video, out.focus_indices[0].cpu(), out.patch_boxes[0].cpu(), exit_step=exit_step,
                                    thumb=args.thumb, object_boxes=boxes, label=caption))
        if args.gif:
            path = f"{stem}_{args.videos[number] if not args.files else number}.gif"
            focus_frames_gif(path, video, out.focus_indices[0].cpu(), out.patch_boxes[0].cpu(), exit_step=exit_step)
            print(f"wrote {path}")
    key = legend(exit_marks=runner is not None, object_boxes=any("object_boxes" in item for _, item in videos))
    with atomic_write(args.out, "wb") as f:
        stack_rows(rows + [key]).save(f, format="PNG")
    print(f"wrote {args.out} ({len(rows)} videos)")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run_main(main))
