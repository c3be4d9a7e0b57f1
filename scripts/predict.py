#!/usr/bin/env python
"""Classify raw video files (or frame folders) with a Uni-AdaFocus checkpoint.

    python -m scripts.predict VIDEO.mp4 [MORE.mp4 FRAMES/ VIDEOS/ ...] --checkpoint exp/RUN/ckpt.best.pth.tar
    python -m scripts.predict VIDEO.mp4 --checkpoint ckpt/actnet_p128.pth.tar --config configs/actnet_p128.yaml \\
        --class_names DATA/classInd.txt --thresholds exp/RUN/early_exit/thresholds_entropy_18.1gflops.json --json

The model is built once (on a CPU as its inference copy, ``models/inference.py``: ``--plain_model``
runs it as trained, ``--bf16_focus`` runs the focus encoder in bfloat16; stderr says which); for
every video (a folder of video files stands for those files) it prints
the top-5 classes with their names and probabilities, the exit step (how many focus frames were
used: 0 = the glance alone), the GFLOPs spent and the seconds taken (decoding and the model). Without ``--thresholds`` every focus frame
is used. The model's configuration comes from our checkpoints themselves; official release files
need ``--config`` (a preset) or the size flags. Class names come from ``--class_names`` (one per
line), else from the class file of the checkpoint's dataset when it can be found, else numbers.
Sizes that no weight shape of an official file reveals (the patch size, the candidate frame count, ...)
and that neither ``--config`` nor a size flag gives are main.py's defaults, and stderr says which were
assumed. A video that cannot be read is reported on one line and skipped; the others are still
classified, and the exit status is 2 when any failed. A truncated video (fewer frames than its container
claims) is classified from the frames that decode, with a warning.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time
from typing import Dict, List

import yaml

from ops.cpu import prefer_passive_omp_wait, tune_cpu_allocator

prefer_passive_omp_wait()  # before torch loads OpenMP, which reads OMP_WAIT_POLICY once (ops/cpu.py)

import torch  # noqa: E402

from datasets import DataError, class_names  # noqa: E402
from datasets.clip import load_clip  # noqa: E402
from datasets.extract import VIDEO_EXTENSIONS  # noqa: E402
from datasets.video import truncation  # noqa: E402
from models import get_variant  # noqa: E402
from models.inference import bf16_focus_problem, evaluation_model  # noqa: E402
from ops import build, cli, config, flags  # noqa: E402
from ops.checkpoint import CheckpointError, checkpoint_num_classes, load_checkpoint, read_checkpoint  # noqa: E402
from ops.early_exit import AdaptiveRunner, load_thresholds  # noqa: E402

#: main.py's flags, by destination: the model options below take their types and choices.
MAIN_FLAGS = {action.dest: action for action in flags.get_args_parser()._actions}
#: The model options: main.py's model flags (``config.MODEL_KEYS``) and the temperature.
MODEL_KEYS = tuple(k for k in config.MODEL_KEYS + ("temperature",) if k in MAIN_FLAGS)


def add_model_option(group, key: str) -> None:
    """``--key`` typed as main.py's flag of the same name (its type and choices, or its on/off form),
    default None (not given)."""
    flag = MAIN_FLAGS[key]
    if isinstance(flag, argparse.BooleanOptionalAction):
        group.add_argument("--" + key, action=argparse.BooleanOptionalAction, default=None, help=flag.help)
    else:
        group.add_argument("--" + key, type=flag.type, choices=flag.choices, default=None, help=flag.help)


def get_args_parser() -> argparse.ArgumentParser:
    p = flags.ArgumentParser("python -m scripts.predict", description=__doc__.split("\n\n")[0], allow_abbrev=False)
    p.add_argument("videos", nargs="+", metavar="VIDEO",
                   help="video files (mp4, avi, mkv, webm, ...), folders of frames, or folders of video files")
    p.add_argument("--checkpoint", required=True, help="our checkpoint or an official release file")
    p.add_argument("--config", default=None, help="YAML preset with the model's sizes (needed for official files)")
    p.add_argument("--num_classes", type=int, default=None, help="class count (default: from the checkpoint)")
    p.add_argument("--class_names", default=None, help="file with one class name per line (e.g. classInd.txt)")
    p.add_argument("--thresholds", default=None, help="early-exit thresholds file from test_early_exit.py --budget")
    p.add_argument("--short_side", type=int, default=360, help="decode-time short side (as the frame extraction)")
    p.add_argument("--template", default=None, help="frame file pattern for a frame folder, e.g. image_{:05d}.jpg")
    p.add_argument("--topk", type=int, default=5)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--json", action=argparse.BooleanOptionalAction, default=False, help="print one JSON object per video (one per line) instead of text")
    p.add_argument("--plain_model", action=argparse.BooleanOptionalAction, default=False,
                   help="run the model as trained instead of its CPU inference copy (models/inference.py)")
    p.add_argument("--bf16_focus", action=argparse.BooleanOptionalAction, default=False,
                   help="CPU: the focus encoder under bfloat16 autocast, the glance in float32 (AVX512-BF16 or AMX)")
    g = p.add_argument_group("model sizes", "main.py's flags of the same names, for official release files (our "
                                            "checkpoints record their own; a flag that contradicts them is an error)")
    for key in MODEL_KEYS:
        add_model_option(g, key)
    return p


def model_config(args, ckpt: dict) -> dict:
    """Model sizes: the checkpoint's saved configuration (ours), else command line > --config > main.py's
    defaults. A flag or preset value that contradicts the checkpoint's configuration is an error."""
    defaults = vars(config.parse_args([]))
    saved = ckpt.get("config") if isinstance(ckpt.get("config"), dict) else {}
    preset = config.load_config_file(args.config, flags.get_args_parser()) if args.config else {}
    given = {k: getattr(args, k) for k in MODEL_KEYS if getattr(args, k) is not None}
    cfg = {k: defaults[k] for k in MODEL_KEYS}
    for source in (preset, given):
        cfg.update({k: v for k, v in source.items() if k in MODEL_KEYS})
    explicit = set(given) | {k for k in preset if k in MODEL_KEYS}
    recognised = None if saved else config.official_variant(ckpt)
    if recognised and "variant" not in explicit:  # an official file's key layout tells its variant
        cfg["variant"] = recognised
        cfg.update({k: v for k, v in get_variant(recognised).defaults.items() if k in MODEL_KEYS and k not in explicit})
    if saved:
        cfg.update(config.adopt_model_config(cfg, explicit, saved, f"the checkpoint {args.checkpoint}"))
        if "temperature" not in explicit and "temperature" in saved:
            cfg["temperature"] = saved["temperature"]
    cfg["_dataset"] = preset.get("dataset", saved.get("dataset"))
    cfg["_data_dir"] = preset.get("data_dir", saved.get("data_dir"))
    cfg["_saved"] = bool(saved)
    cfg["_explicit"] = explicit
    return cfg


def sizes_hidden_from_weights(variant, cfg: Dict, num_classes: int) -> List[str]:
    """The model sizes of ``variant`` in ``cfg`` that change no weight shape (the patch size, the candidate
    frame count, ...): a checkpoint without configuration cannot tell them. Found by building the model
    on the meta device (no memory, no weights) with each size changed and comparing the shapes."""
    sizes = {k: v for k, v in cfg.items() if k in variant.hyper_parameters}

    def shapes(values):
        with torch.device("meta"):
            return {k: tuple(v.shape) for k, v in variant.build(num_classes=num_classes, **values).state_dict().items()}

    reference = shapes(sizes)
    hidden = []
    for key, value in sizes.items():
        if key not in config.MODEL_KEYS or not isinstance(value, int) or isinstance(value, bool):
            continue
        for other in (value * 2, value // 2):
            try:
                changed = shapes({**sizes, key: other}) if other >= 1 else None
            except ValueError:  # a combination the model refuses (a patch larger than the input, ...)
                continue
            if changed is not None:
                if changed == reference:
                    hidden.append(key)
                break
    return hidden


def preset_example(variant_name: str) -> str:
    """A preset of the repository's configs/ for ``variant_name`` (as an example to name), else a pattern."""
    folder = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
    default = flags.get_args_parser().get_default("variant")
    for path in sorted(glob.glob(os.path.join(folder, "*.yaml"))):
        with open(path, encoding="utf-8") as f:
            values = yaml.safe_load(f) or {}
        if values.get("variant", default) == variant_name and values.get("dataset") != "synthetic":
            return f"configs/{os.path.basename(path)}"
    return "configs/<preset>.yaml"


def assumed_sizes_warning(args, variant, cfg: Dict, num_classes: int) -> str:
    """For a checkpoint without configuration: the one line naming the sizes no weight shape, flag or
    preset gave, their assumed values and how to set them ('' when there are none)."""
    if cfg["_saved"]:
        return ""
    assumed = [k for k in sizes_hidden_from_weights(variant, cfg, num_classes) if k not in cfg["_explicit"]]
    if not assumed:
        return ""
    flags = ", ".join(f"--{k}" for k in assumed)
    values = ", ".join(f"{k} {cfg[k]}" for k in assumed)
    return (f"{flags} not given and not recorded in {args.checkpoint}: assuming {values} (the {variant.name} "
            f"defaults); pass {flags} or the release's preset, e.g. --config {preset_example(variant.name)}")


def main(argv=None) -> int:
    args = get_args_parser().parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available to this process (pass --device cpu)")
    device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
                          else "cpu")
    problem = bf16_focus_problem(args.plain_model, device.type) if args.bf16_focus else None
    if problem:
        raise SystemExit(problem)
    if device.type == "cpu":
        tune_cpu_allocator()
    try:
        ckpt = read_checkpoint(args.checkpoint)
    except CheckpointError as exc:
        raise SystemExit(str(exc)) from None
    cfg = model_config(args, ckpt)
    try:
        num_classes = args.num_classes or checkpoint_num_classes(ckpt, args.checkpoint)
    except CheckpointError as exc:
        raise SystemExit(f"{exc}; pass --num_classes") from None
    try:
        variant = get_variant(cfg["variant"])
    except KeyError as exc:
        raise SystemExit(f"--variant: {exc.args[0]}") from None
    variant.require_entry_points()
    model = variant.build(num_classes=num_classes, **{k: v for k, v in cfg.items() if k in variant.hyper_parameters})
    try:
        load_checkpoint(args.checkpoint, model)
    except CheckpointError as exc:
        if cfg["_saved"]:
            raise
        raise SystemExit(f"{exc} (the model sizes come from --config / the size flags and must match the checkpoint: "
                         f"pass the release's preset, --config configs/<preset>.yaml)") from None
    assumed = assumed_sizes_warning(args, variant, cfg, num_classes)
    if assumed:
        print(f"warning: {assumed}", file=sys.stderr, flush=True)
    try:
        names = class_names(num_classes, path=args.class_names, dataset=cfg["_dataset"], data_dir=cfg["_data_dir"])
    except DataError as exc:
        raise SystemExit(str(exc)) from None
    names = names or [str(i) for i in range(num_classes)]
    stages = build.exit_gflops(model)  # counted on the model itself, not on its inference copy
    frames_used = exit_focus_frames(model, len(stages))
    model, which = evaluation_model(model.to(device).eval(), plain=args.plain_model, bf16_focus=args.bf16_focus)
    print(which, file=sys.stderr, flush=True)  # stdout holds the results only
    runner = None
    if args.thresholds:
        thresholds = load_thresholds(args.thresholds)
        if thresholds.thresholds.numel() != len(stages):
            raise SystemExit(f"--thresholds {args.thresholds}: {thresholds.thresholds.numel()} thresholds for a "
                             f"model with {len(stages)} exits ({variant.exits})")
        runner = AdaptiveRunner(model, thresholds, flops=stages)
    paths = expand_videos(args.videos)
    unreadable = []
    for number, path in enumerate(paths):
        started = time.perf_counter()
        try:
            result = predict(path, model, variant, runner, stages, frames_used, names, args, device)
        except DataError as exc:  # this video only: the others are still classified
            print(f"error: {cli.user_message(exc)}", file=sys.stderr, flush=True)
            unreadable.append(path)
            continue
        except KeyboardInterrupt:
            raise cli.Interrupted(f"stopped by Ctrl-C at {path}, after {number} of {len(paths)} videos") from None
        result["seconds"] = time.perf_counter() - started  # decoding and the model
        show(result, args.json)
    if unreadable:
        raise SystemExit(f"{len(unreadable)} of {len(paths)} videos could not be read: {', '.join(unreadable)}")
    return 0


def expand_videos(paths: List[str]) -> List[str]:
    """Video files and frame folders as given; a folder holding video files stands for those files."""
    found = []
    for path in paths:
        videos = sorted(os.path.join(path, n) for n in os.listdir(path)
                        if n.lower().endswith(VIDEO_EXTENSIONS)) if os.path.isdir(path) else []
        found.extend(videos or [path])
    return found


def exit_focus_frames(model, num_exits: int) -> List[int]:
    """The focus frames a video has used when it leaves at each of the model's ``num_exits`` exits: the
    model's own ``exit_focus_frames`` where it states them (AdaFocusV2's ActivityNet form: exit t after
    t + 1 frames), else the family's rule: the last exit has used all T_L focus frames, and with T_L + 1
    exits exit k has used k (exit 0 is the glance alone; of two exits, the first is the glance alone)."""
    stated = getattr(model, "exit_focus_frames", None)
    if stated is not None:
        return list(stated)
    one_per_exit = num_exits == model.num_focus + 1
    return [model.num_focus if k == num_exits - 1 else (k if one_per_exit else 0) for k in range(num_exits)]


def predict(path: str, model, variant, runner, stages, frames_used, names, args, device) -> dict:
    """Classify one video: top-k classes, the exit taken, its GFLOPs (``stages``: per exit) and the focus
    frames used (``frames_used``: per exit). A truncated video file is classified from the frames that
    decode, with a warning on stderr."""
    clip, info = load_clip(path, model.num_segments, model.input_size, args.short_side, args.template)
    short = truncation(path, decoded=info.num_frames) if os.path.isfile(path) else ""
    if short:
        print(f"warning: {short}; classified from the {info.num_frames} frames that decode", file=sys.stderr, flush=True)
    inputs = {}
    if variant.frame_source == "separate":  # the glance frames are sampled apart, as the datasets do
        glance, _ = load_clip(path, model.num_glance, model.input_size, args.short_side, args.template)
        inputs["glance"] = glance.unsqueeze(0).to(device)
    video = clip.unsqueeze(0).to(device)
    with torch.no_grad():
        if runner is not None:
            result = runner.run(video, **inputs)
            logits, stage, gflops = result.logits[0], int(result.exit_stage[0]), float(result.gflops[0])
        else:
            logits, stage, gflops = model(video, **inputs).logits[0], len(stages) - 1, stages[-1]
    probs = torch.softmax(logits.float(), dim=0).cpu()
    top = probs.topk(min(args.topk, len(names)))
    return {
        "video": path, "frames_in_video": info.num_frames, "frames_sampled": info.frame_indices,
        "top": [{"class": int(i), "name": names[int(i)], "probability": float(p)} for p, i in zip(top.values, top.indices)],
        "exit_stage": stage, "exit_step": frames_used[stage], "focus_frames_used": frames_used[stage],
        "max_focus_frames": frames_used[-1], "gflops": gflops, "gflops_all_exits": stages[-1],
        "early_exit_criterion": runner.criterion if runner is not None else None,
    }


def show(result: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(result), flush=True)
        return
    print(f"{result['video']}: {result['frames_in_video']} frames, {len(result['frames_sampled'])} sampled")
    for rank, item in enumerate(result["top"], 1):
        print(f"  {rank}. {item['name']:<30s} {100 * item['probability']:6.2f}%")
    criterion = result["early_exit_criterion"]
    how = f"early exit ({criterion})" if criterion else "all exits"
    print(f"exit step {result['exit_step']} of {result['max_focus_frames']} focus frames ({how}); "
          f"{result['gflops']:.2f} GFLOPs (all exits: {result['gflops_all_exits']:.2f}); {result['seconds']:.2f} s",
          flush=True)


if __name__ == "__main__":
    sys.exit(cli.run_main(main))
