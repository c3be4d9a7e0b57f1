"""The configuration of a run: main.py's command line, YAML presets, and their validation.

Every official flag keeps its name and meaning (flags the official code never read are accepted and
warned about: ``UNUSED_OFFICIAL_FLAGS``). ``--config FILE`` gives defaults from a YAML file of
``flag_name: value`` pairs (``configs/*.yaml``); the command line overrides them. The entry points
that share these flags (``test_early_exit.py``, ``scripts/visualize.py``) extend
:func:`get_args_parser` and parse with :func:`parse_args`.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Dict, List, Optional

import yaml

from .packages import datasets, models, sibling

DESCRIPTION = "Train and evaluate Uni-AdaFocus: one process on a CPU or GPU, or many under torch.distributed."

# Official flags with no effect here (most of them the official code never read either). They are
# accepted; using one prints a warning that says why.
UNUSED_OFFICIAL_FLAGS = {
    "num_steps": "unused officially",
    "sample_sigma": "unused officially",
    "glance_size": "unused by this variant (its glance sees full input_size frames, as officially)",
    "hidden_dim": "unused officially: the official classifier is 4096 wide whatever --hidden_dim says "
                  "(the README commands pass 1024); use --classifier_dim to change the width",
    "sample": "unused officially",
    "save": "unused officially",
    "multi_sample_times": "unused officially; the Monte-Carlo sample count is --mc_samples (128)",
    "scale_factor": "unused officially",
    "normal_sig": "unused officially",
    "fold_id": "unused officially",
    "arch": "unused officially but in the run name (the tsm backbones are fixed)",
    "consensus_type": "the average over frames is the only consensus, as officially",
    "npb": "accepted: BatchNorm layers are never frozen here (the official tsm runs pass it)",
    "shift": "accepted: the tsm variant always shifts (shift_div and shift_place set how)",
    "shift_place": "accepted: blockres is the only placement, as in every official command",
    "root_model": "checkpoints are written beside the logs, in the run folder {root_log}/{store_name} (the "
                  "official tsm and x3d commands give both roots the same folder); without --root_log, "
                  "--root_model names that root",
}


def _architectures(role: str) -> List[str]:
    """Every encoder architecture some variant offers for ``role`` ('glance' or 'focus')."""
    return sorted({arch for variant in models.VARIANTS.values() for arch in variant.encoders.get(role, ())})


class ArgumentParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (``PROG: error: ...``, status 2) instead of the usage
    text; ``--help`` still prints everything."""

    def error(self, message: str):
        own = message.startswith(("unrecognized arguments", "argument ", "the following arguments"))
        self.exit(2, f"{self.prog}: error: {message}{' (--help lists the flags)' if own else ''}\n")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` with every option's default printed once: appended as ``(default: ...)`` unless the
    option's own help already says what its default is."""

    def _get_help_string(self, action):
        text = action.help or ""
        return text if "default" in text.lower() else super()._get_help_string(action)


def _json_object(text: str) -> dict:
    """A command-line JSON object (``--synthetic``); anything else is an argparse error naming what it got."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON ({exc.msg} at character {exc.pos}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"a JSON object of options is needed, e.g. '{{\"train_videos\": 200}}'; "
                                         f"got {type(value).__name__} {text!r}")
    return value


def own_options_first(parser: argparse.ArgumentParser, title: str, description: Optional[str] = None):
    """A new option group of an entry point that extends main.py's parser, listed first by ``--help``."""
    group = parser.add_argument_group(title, description)
    parser._action_groups.insert(0, parser._action_groups.pop())
    return group


def get_args_parser() -> argparse.ArgumentParser:
    """main.py's flags: every official flag with its name and meaning, and ours."""
    p = ArgumentParser("Uni-AdaFocus", description=DESCRIPTION, allow_abbrev=False,
                                formatter_class=HelpFormatter)
    p.add_argument("--config", default=None, help="YAML file of defaults (configs/*.yaml); the command line overrides it")

    g = p.add_argument_group("data")
    g.add_argument("--dataset", default="actnet", choices=sorted(datasets.DATASETS))
    g.add_argument("--data_dir", default="", help="dataset root (list files, class file, frames)")
    g.add_argument("--workers", "-j", type=int, default=16, help="data-loading workers per process")
    g.add_argument("--prefetch_factor", type=int, default=2, help="batches prefetched per worker")
    g.add_argument("--num_segments", "--num_input_focus_segments", dest="num_segments", type=int, default=48,
                   help="T0: candidate frames sampled per video (the focus frames are chosen among them)")
    g.add_argument("--label_rule", choices=("first", "random"), default=None,
                   help="which label of a multi-label video trains cross-entropy (default: random in training, "
                        "first in evaluation)")
    g.add_argument("--missing_frames", choices=("error", "repeat_first"), default="error",
                   help="'repeat_first' reproduces the official substitution of missing frames (each one logged)")
    g.add_argument("--video_files", action=argparse.BooleanOptionalAction, default=False,
                   help="the list files name video files (under the frame root) instead of frame folders; their "
                        "frames are decoded from the files, without extraction (docs/data.md, 'Video files')")
    g.add_argument("--dataset_config", default=None, help="JSON file describing a custom dataset (see docs/data.md)")
    g.add_argument("--synthetic", type=_json_object, default=None,
                   help='generation options of the synthetic dataset, as JSON, e.g. \'{"train_videos": 200}\'')

    g = p.add_argument_group("model")
    g.add_argument("--variant", default="mn2_r50", choices=sorted(models.VARIANTS),
                   help="member of the Uni-AdaFocus family (models/variants.py)")
    g.add_argument("--glance_arch", default="mbv2", choices=_architectures("glance"))
    g.add_argument("--focus_arch", default="resnet50", choices=_architectures("focus"))
    g.add_argument("--num_glance_segments", type=int, default=16, help="T_G")
    g.add_argument("--num_focus_segments", type=int, default=16, help="T_L")
    g.add_argument("--input_size", type=int, default=224)
    g.add_argument("--patch_size", type=int, default=96, help="P (the paper's runs use 96, 128, 160)")
    g.add_argument("--stn_hidden_dim", type=int, default=128, help="spatial policy channels")
    g.add_argument("--temporal_hidden_dim", type=int, default=64, help="temporal policy channels")
    g.add_argument("--classifier_dim", type=int, default=4096, help="exit classifier MLP width (official 4096)")
    g.add_argument("--dropout", "--do", dest="dropout", type=float, default=0.2,
                   help="dropout before every exit head (tsm: on the encoders' pooled features)")
    g.add_argument("--fc_dropout", type=float, default=0.2, help="dropout before the glance and focus heads")
    g.add_argument("--temperature", type=float, default=1.0, help="softmax temperature of frame selection")
    g.add_argument("--pretrained", action=argparse.BooleanOptionalAction, default=True,
                   help="ImageNet initialisation of both backbones (torchvision weights)")
    g.add_argument("--glance_weights", "--glance_ckpt_path", dest="glance_weights", default=None,
                   help="local ImageNet MobileNetV2 weights (torchvision or the official file layout)")
    g.add_argument("--focus_weights", default=None, help="local ImageNet ResNet weights (torchvision layout)")
    g.add_argument("--zero_init_residual", action=argparse.BooleanOptionalAction, default=False,
                   help="random initialisation: the last BatchNorm of every residual block of both encoders starts "
                        "at zero, so that each block starts as the identity (Goyal et al., 2017); pretrained weights "
                        "replace it. mn2_r50 and tsm (default: off, as officially)")
    g.add_argument("--glance_size", type=int, default=None,
                   help="side of the frames the glance sees: mn2_r50 downscales (antialiased) to it when set "
                        "(the paper's coarse glance; official: full input_size frames, the flag unused); x3d: 160 "
                        "(bilinear, as officially); tsm: unused")
    g.add_argument("--shift_div", type=int, default=8, help="tsm: 1/shift_div of the channels shift each way")
    g.add_argument("--shift", action=argparse.BooleanOptionalAction, default=False,
                   help="tsm (official flag): the tsm variant always shifts")
    g.add_argument("--shift_place", choices=("blockres",), default="blockres",
                   help="tsm (official flag): the shift sits on the residual branch of every block")
    g.add_argument("--shared_crop", action=argparse.BooleanOptionalAction, default=False,
                   help="tsm: crop the glance frames where the focus candidates are cropped in training "
                        "(official: independent random crops)")
    g.add_argument("--detach_temporal_input", action=argparse.BooleanOptionalAction, default=False,
                   help="stop gradients before the temporal policy (official: not detached; the tsm "
                        "variant always detaches); half of --paper_stop_gradient")

    g = p.add_argument_group("objective")
    g.add_argument("--KL_ratio", type=float, default=0.0, help="weight of KL(frame weights || uniform)")
    g.add_argument("--norm_ratio", type=float, default=1.0, help="alpha: weight of the patch-size regulariser")
    g.add_argument("--temporal_objective", choices=("official", "paper"), default="official",
                   help="Monte-Carlo temporal term: CE of averaged logits (official) or Eq. 21 (paper)")
    g.add_argument("--spatial_objective", choices=("official", "paper"), default="official",
                   help="spatial term: one CE per video (official) or per glance frame (paper Eq. 14)")
    g.add_argument("--glance_objective", choices=("frames", "video"), default="frames",
                   help="glance head's cross-entropy: one per glance frame (official) or one per video, of "
                        "the frames' mean logits (frames that do not show the class then carry no label); "
                        "tsm and x3d: always one per video, as officially")
    g.add_argument("--mc_samples", type=int, default=128, help="Monte-Carlo samples M")
    g.add_argument("--kl_reference", choices=("official", "glance"), default="official",
                   help="uniform reference of the KL term: 1/T_L (official) or 1/T_G")
    g.add_argument("--paper_stop_gradient", action=argparse.BooleanOptionalAction, default=False,
                   help="the paper's stop-gradient (§4.1.1, Eq. 21): the temporal policy reads detached glance "
                        "features and the Monte-Carlo term weights per-frame losses as fixed signals, so the "
                        "temporal objective trains the policy alone. Sets --detach_temporal_input and "
                        "--temporal_objective paper (official: neither)")

    # Ablations (paper Tables 6-9, 15)
    g = p.add_argument_group("training-time ablations (paper Tables 6-9 and 15; docs/ablations.md; mn2_r50)")
    on_off = argparse.BooleanOptionalAction
    g.add_argument("--aux_supervision", action=on_off, default=True,
                   help="Table 6, Eq. 11: the glance and focus heads' cross-entropies (the objective's glance and "
                        "focus terms); off: the exits' cross-entropy trains the encoders alone")
    g.add_argument("--diversity_augmentation", action=on_off, default=True,
                   help="Table 6, Eq. 12: the second training pass on random patches; off: the policy's patches only")
    g.add_argument("--policy_stop_gradient", action=on_off, default=True,
                   help="Table 6: the spatial policy reads detached glance feature maps, so its training does not "
                        "reach the glance encoder (the temporal policy's input: --detach_temporal_input)")
    g.add_argument("--spatial_training", choices=("features", "pixels"), default="features",
                   help="Table 7: the spatial policy learns from the glance features cropped by its patches (Eq. 14; "
                        "the spatial term) or, as AdaFocusV2, from the gradient through the patch pixels")
    g.add_argument("--patch_scale", choices=("policy", "fixed", "square", "random", "downsample"), default="policy",
                   help="Tables 7, 9, 11: patch sizes from the policy (deformable), P x P pixels, the policy's scale "
                        "with a square shape, random, or the whole frame down-sampled to P x P")
    g.add_argument("--size_regulariser", action=on_off, default=True,
                   help="Table 9, Eq. 15: the patch-size regulariser (--norm_ratio weights it)")
    g.add_argument("--patch_location", choices=("policy", "random", "central", "gaussian"), default="policy",
                   help="Table 9: patch positions from the policy, uniformly random, central, or normal around the "
                        "centre")
    g.add_argument("--frame_sampling", choices=("policy", "uniform", "random", "central_clip", "gaussian",
                                                "mg_sampler"), default="policy",
                   help="Tables 7, 9: focus frames from the temporal policy, evenly spaced, random, the central clip, "
                        "normal around the middle, or motion-guided (MG Sampler; reads every candidate frame)")
    g.add_argument("--reuse_glance_features", action=on_off, default=True,
                   help="Table 8: the exit classifier reads the glance features too (off: the focus features alone)")
    g.add_argument("--spatial_supervision", choices=("glance", "local"), default="glance",
                   help="Table 15: the spatial term's features: the glance encoder's (e^G) or, as AdaFocusV3, the "
                        "focus encoder's of the enlarged patch (e^L; AdaFocusV3 with --enlarged_patch_margin 32)")
    g.add_argument("--enlarged_patch_margin", type=int, default=0,
                   help="Table 15: in training the focus encoder sees (P + margin)^2 patches of boxes grown by "
                        "(P + margin) / P (AdaFocusV3: 32); evaluation stays P x P. 0: none")
    g.add_argument("--patch_transform", choices=sibling("models.patch_transforms").TRANSFORM_NAMES, default="none",
                   help="Table 11: a transformation of the patch that the spatial policy also predicts, in the box's "
                        "coordinates (models/patch_transforms.py; docs/ablations.md): a rotation, a 6-parameter "
                        "affine, an 8-parameter homography or a thin-plate spline on a 3x3 control grid; none: the "
                        "plain deformable box")

    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=50)
    g.add_argument("--batch_size", "--batch-size", "-b", dest="batch_size", type=int, default=32,
                   help="global batch size (split over processes)")
    g.add_argument("--val_batch_size", type=int, default=64, help="global evaluation batch size")
    g.add_argument("--lr", "--learning-rate", dest="lr", type=float, default=0.002, help="base learning rate")
    g.add_argument("--lr_type", choices=("cos", "step"), default="cos")
    g.add_argument("--lr_epochs", type=int, default=0,
                   help="the epoch count of the learning-rate schedule (0: --epochs); AdaFocusV2's official loop "
                        "is --epochs 51 --lr_epochs 50 (a last epoch at rate 0)")
    g.add_argument("--lr_steps", type=float, nargs="+", default=[50, 100], help="epochs where 'step' decays x0.1")
    g.add_argument("--warmup_epochs", type=float, default=0.0,
                   help="raise every rate linearly per step from nearly 0 to the schedule's over this many "
                        "epochs (0: none, as officially). Steadies the first steps of encoders trained from "
                        "scratch")
    g.add_argument("--optimizer", choices=("sgd", "adamw"), default="sgd",
                   help="SGD with momentum (official) or AdamW (useful from random initialisation)")
    g.add_argument("--fused_adamw", action=argparse.BooleanOptionalAction, default=None,
                   help="AdamW's fused kernel, which updates each group's tensors in one pass (default: on a CPU, "
                        "where it is several times faster than the per-tensor loop; PyTorch's default "
                        "implementation on CUDA). Equal to the loop up to float rounding")
    g.add_argument("--momentum", type=float, default=0.9)
    g.add_argument("--weight_decay", "--wd", "--weight-decay", dest="weight_decay", type=float, default=2e-4)
    g.add_argument("--clip_gradient", "--gd", "--clip-gradient", dest="clip_gradient", type=float, default=None,
                   help="clip the gradient's global norm to this value (official tsm: 20; off otherwise)")
    g.add_argument("--global_lr_ratio", type=float, default=0.5, help="LR multiplier of the glance network and heads")
    g.add_argument("--stn_lr_ratio", type=float, default=0.2, help="LR multiplier of the spatial policy")
    g.add_argument("--stn_start_epoch", type=int, default=0,
                   help="the spatial policy trains from this epoch on (LR 0 before; 0: from the start, as "
                        "officially). For encoders trained from scratch, whose first feature maps carry no "
                        "localised evidence")
    g.add_argument("--temporal_lr_ratio", type=float, default=0.2, help="LR multiplier of the temporal policy")
    g.add_argument("--classifier_lr_ratio", type=float, default=20.0, help="LR multiplier of the exit classifier")
    g.add_argument("--amp", action=argparse.BooleanOptionalAction, default=False,
                   help="mixed precision for the backbones in training (policy math stays float32); evaluation "
                        "stays float32 as officially unless --eval_amp")
    g.add_argument("--amp_dtype", choices=("bfloat16", "float16"), default="bfloat16",
                   help="autocast type of --amp / --eval_amp; float16 training adds a gradient scaler and needs "
                        "CUDA, bfloat16 needs a GPU with bfloat16 arithmetic (compute capability 8.0+) on CUDA")
    g.add_argument("--sync_bn", action=argparse.BooleanOptionalAction, default=False,
                   help="synchronise BatchNorm statistics across GPUs (official: off, so BatchNorm sees the "
                        "per-process batch, --batch_size / processes)")
    g.add_argument("--iters_per_epoch", type=int, default=0, help="stop each epoch after N steps (0: full epochs)")

    g = p.add_argument_group("run")
    g.add_argument("--root_log", default="exp", help="folder of the run folders")
    g.add_argument("--root_model", default=None,
                   help="official tsm / x3d flag (checkpoint root): checkpoints are written beside the logs in "
                        "the run folder here; it sets --root_log when that is not given")
    g.add_argument("--store_name", default=None,
                   help="run folder name (default UniAdaFocus_{dataset}_{glance_arch}_segment{T0}_e{epochs})")
    g.add_argument("--resume", default="", help="checkpoint to continue from or evaluate; 'auto' = this run's last")
    g.add_argument("--evaluate", "-e", action=argparse.BooleanOptionalAction, default=False,
                   help="evaluate --resume once and exit")
    g.add_argument("--overwrite", action=argparse.BooleanOptionalAction, default=False,
                   help="start a training run over in a run folder that already holds one (its checkpoints, "
                        "metrics, summary and configuration are deleted); without it such a run refuses to start")
    g.add_argument("--eval_freq", "--eval-freq", dest="eval_freq", type=int, default=1,
                   help="validate every N epochs (and after the last)")
    g.add_argument("--eval_suffix", default="eval", help="--evaluate writes metrics_{suffix}.json")
    g.add_argument("--test_crops", type=int, choices=(1, 3), default=1,
                   help="spatial views per video in evaluation: 1 (centre crop) or 3 (left, right, centre; "
                        "their raw logits averaged, as officially); x3d's official 3-view figure uses 3")
    g.add_argument("--eval_amp", action=argparse.BooleanOptionalAction, default=False,
                   help="evaluate under --amp_dtype autocast too (faster on GPUs; not the official numbers, "
                        "which are float32)")
    g.add_argument("--policy_ablation", action=argparse.BooleanOptionalAction, default=False,
                   help="the final evaluation also scores the model with uniformly spaced focus frames, with its "
                        "patches at random positions, and both, at equal GFLOPs, and its glance exit alone "
                        "(metrics.json 'policy_ablation'; mn2_r50)")
    # Table 10: dynamics removed at evaluation time (ops/policy_ablation.py, docs/ablations.md)
    def dynamics_name(value: str) -> str:
        if value not in DYNAMICS:
            raise argparse.ArgumentTypeError(f"{value!r} is not one of {', '.join(DYNAMICS)}")
        return value

    def gflops_budget(value: str) -> float:
        try:
            budget = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{value!r} is not a number of GFLOPs") from None
        if not budget > 0 or budget == float("inf"):
            raise argparse.ArgumentTypeError(f"{value!r}: a budget must be a positive number of GFLOPs")
        return budget

    g.add_argument("--remove_dynamics", nargs="*", type=dynamics_name, default=None, metavar="DYNAMICS",
                   help="the final evaluation also reports the metric at equal average GFLOPs (--budgets) with "
                        "these dynamics removed: spatial (the focus encoder sees whole frames down-sampled to P x P), "
                        "temporal (uniformly spaced frames), samplewise (random early exit with the adaptive "
                        "policy's exit proportions); given with no name: the full model's row (metrics.json "
                        "'dynamics_ablation'; mn2_r50)")
    g.add_argument("--budgets", type=gflops_budget, nargs="+", default=None, metavar="GFLOPS",
                   help="average GFLOPs per video of --remove_dynamics (default: 6 evenly spaced between the model's "
                        "cheapest exit and its full cost)")
    g.add_argument("--thresholds", default=None,
                   help="early-exit thresholds file (test_early_exit.py --budget): --evaluate also reports the "
                        "metric, GFLOPs and exit distribution of early exit with them")
    g.add_argument("--print_freq", "--print-freq", "-p", dest="print_freq", type=int, default=20,
                   help="log every N steps")
    g.add_argument("--seed", type=int, default=1007, help="seed of every random choice")
    g.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    g.add_argument("--dist_url", "--dist-url", dest="dist_url", default="env://",
                   help="process-group initialisation (env://, file://...)")
    g.add_argument("--tensorboard", action=argparse.BooleanOptionalAction, default=True)
    g.add_argument("--num_visualised", type=int, default=4, help="videos drawn to TensorBoard at each evaluation")
    g.add_argument("--save_predictions", action=argparse.BooleanOptionalAction, default=False,
                   help="with --evaluate: also write predictions_{suffix}.pt (per-video logits, labels, frames, patches)")
    g.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)

    g = p.add_argument_group("CPU evaluation (models/inference.py)")
    g.add_argument("--plain_model", action=argparse.BooleanOptionalAction, default=False,
                   help="evaluate with the model as trained; by default a CPU evaluation runs an inference copy "
                        "of the current weights (the model's own glance and policy, so the same frames and "
                        "patches; the focus encoder with BatchNorm folded, channels-last, 32 images per call), "
                        "equal to rounding and faster")
    g.add_argument("--bf16_focus", action=argparse.BooleanOptionalAction, default=False,
                   help="CPU evaluation: the focus encoder under bfloat16 autocast, the glance in float32 (CPUs "
                        "with AVX512-BF16 or AMX; moves logits by ~0.05, not the official float32 numbers)")

    g = p.add_argument_group("frame decoding in evaluation (datasets/selected_frames.py)")
    g.add_argument("--decode_all_frames", action=argparse.BooleanOptionalAction, default=False,
                   help="decode all T0 candidate frames of every evaluated video, as before; by default the "
                        "mn2_r50 variant's loader decodes its T_G glance frames and the T_L focus frames its "
                        "policy selects are decoded afterwards, only those (identical predictions; tsm and x3d "
                        "always decode all)")
    g.add_argument("--gpu_decode", action=argparse.BooleanOptionalAction, default=False,
                   help="evaluation on CUDA: the loader reads the JPEG frames' bytes and they are decoded "
                        "(nvjpeg) and resized on the GPU, in one call per batch; equal to the CPU path up to "
                        "the decoders' rounding (mn2_r50; with or without --decode_all_frames)")

    g = p.add_argument_group("GPU speed (CUDA runs; ops/engine.py device_settings)")
    g.add_argument("--channels_last", action=argparse.BooleanOptionalAction, default=None,
                   help="run the 2-D encoders (MobileNetV2, ResNet, with or without the temporal shift) in "
                        "channels-last memory format (default: on CUDA, off on a CPU; X3D's 3-D encoders keep "
                        "their layout)")
    g.add_argument("--cudnn_benchmark", action=argparse.BooleanOptionalAction, default=True,
                   help="let cuDNN time the convolution algorithms of each input shape and use the fastest on "
                        "CUDA (the choice may differ between runs: --no-cudnn_benchmark keeps cuDNN's fixed "
                        "choice, for reproducing a run)")
    g.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False,
                   help="torch.compile the glance and focus encoders (the first steps of each input shape are "
                        "slow while compiling; checkpoints keep their keys)")

    # AdaFocusV3
    g = p.add_argument_group("AdaFocusV3 (--variant adafocus_v3; docs/adafocus-v3.md): cubes of --patch_size "
                                "squared x --cube_frames, --num_focus_segments cubes")
    g.add_argument("--cube_frames", type=int, default=1, help="T': frames of each video cube (paper: 1, or 12 on Sth-Sth)")
    g.add_argument("--v3_gradient", choices=("feature", "pixel"), default="feature",
                   help="how the cube centres get their gradient: 'feature' (AdaFocusV3, Eqs. 5-6: an enlarged cube, "
                        "interpolation of its feature map) or 'pixel' (AdaFocusV2, Eqs. 2-4: trilinear pixels)")
    g.add_argument("--tsm_encoders", action=argparse.BooleanOptionalAction, default=False,
                   help="temporal shift in both encoders (over the glance frames and over each cube's frames)")
    g.add_argument("--v3_loss", choices=("sum", "mean"), default="sum",
                   help="Eq. 1: the exits' cross-entropies summed over the K + 1 steps, or their mean")

    # AdaFocus V1
    g = p.add_argument_group("AdaFocus V1 (--variant adafocus_v1; docs/adafocus-v1.md): the official staged training "
                                "(ops/staged_training.py); names as the official configuration keys")
    g.add_argument("--stage", "--train_stage", dest="stage", type=int, choices=(0, 1, 2, 3), default=None,
                   help="official train_stage: 0 one encoder on whole frames (--pretrain_glancer picks which), 1 the "
                        "focus encoder and the classifier on random patches, 2 the policy by PPO, 3 the classifier on "
                        "the policy's patches")
    g.add_argument("--stage_checkpoint", nargs="+", default=None, metavar="PATH",
                   help="the previous stage's checkpoint (a run's ckpt.pth.tar or an official file): stage 1 takes "
                        "one or two stage-0 files (official pretrained_glancer / pretrained_focuser), stage 2 a "
                        "stage-1 one, stage 3 a stage-2 one (official resume); stage 0 may take the other encoder's "
                        "stage-0 file")
    g.add_argument("--pretrain_glancer", action=argparse.BooleanOptionalAction, default=True,
                   help="stage 0: train the glance encoder (else the focus encoder) with its own linear head")
    g.add_argument("--backbone_lr", type=float, default=0.01, help="SGD rate of the encoders (stages 0 and 1)")
    g.add_argument("--fc_lr", type=float, default=0.005, help="SGD rate of the recurrent classifier (stages 1 and 3)")
    g.add_argument("--policy_lr", type=float, default=3e-4, help="stage 2: Adam rate of the policy (no schedule)")
    g.add_argument("--gamma", type=float, default=0.7, help="stage 2: PPO discount of the per-frame rewards")
    g.add_argument("--reward", choices=("random", "prev", "conf"), default="random",
                   help="stage 2: the confidence gain over a random patch (official default), over the previous "
                        "frame, or the confidence itself")
    g.add_argument("--action_dim", type=int, default=None,
                   help="A: grid positions of the policy (adafocus_v1: 25, 36, 49 or 64; default: the variant's, 49)")
    g.add_argument("--hidden_state_dim", type=int, default=None,
                   help="width of the policy's encoder and GRU (default: the variant's, 1024)")
    g.add_argument("--with_glancer", action=argparse.BooleanOptionalAction, default=True,
                   help="the classifier reads the glance features with the focus features")

    g = p.add_argument_group("official flags the official code never read (accepted, with a warning)")
    g.add_argument("--num_steps", type=int, default=1)
    g.add_argument("--sample_sigma", type=float, default=0.015)
    g.add_argument("--hidden_dim", type=int, default=1024)
    g.add_argument("--sample", action=argparse.BooleanOptionalAction, default=False)
    g.add_argument("--save", default="")
    g.add_argument("--multi_sample_times", type=int, default=3)
    g.add_argument("--scale_factor", type=float, default=0.3)
    g.add_argument("--normal_sig", type=float, default=0.0)
    g.add_argument("--fold_id", type=int, default=None)
    g.add_argument("--arch", default="resnet50")
    g.add_argument("--consensus_type", choices=("avg",), default="avg")
    g.add_argument("--npb", "--no_partialbn", dest="npb", action=argparse.BooleanOptionalAction, default=False)

    g = p.add_argument_group("official launcher flags (refused with the equivalent torchrun command)")
    g.add_argument("--multiprocessing-distributed", "--multiprocessing_distributed", dest="multiprocessing_distributed",
                   action=argparse.BooleanOptionalAction, default=False)
    g.add_argument("--world-size", "--world_size", dest="world_size", type=int, default=None)
    g.add_argument("--rank", type=int, default=None)
    g.add_argument("--dist-backend", "--dist_backend", dest="dist_backend", default=None)
    g.add_argument("--pretrain", choices=("imagenet", "scratch"), default=None,
                   help="official tsm flag: imagenet = --pretrained, anything else = --no-pretrained")
    return p


def _given_dests(parser: argparse.ArgumentParser, argv: List[str]) -> set:
    """Destinations of the options that appear in ``argv``."""
    by_flag = {flag: action.dest for action in parser._actions for flag in action.option_strings}
    given = set()
    for token in argv:
        if token.startswith("-"):
            flag = token.split("=", 1)[0]
            if flag in by_flag:
                given.add(by_flag[flag])
    return given


def load_config_file(path: str, parser: argparse.ArgumentParser, with_base: bool = True, _chain=()) -> Dict:
    """Defaults from a YAML file of ``flag_name: value`` pairs, checked against the parser.

    ``base: FILE`` (a path relative to this file) loads FILE first, recursively, and this file's keys
    override its values; a missing base or a cycle of bases is a parser error naming the file.
    ``with_base=False``: this file's own keys only (its ``base`` dropped).
    """
    try:
        with open(path, encoding="utf-8") as f:
            values = yaml.safe_load(f) or {}
    except FileNotFoundError:
        parser.error(f"--config {path}: file not found")
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        parser.error(f"--config {path}{where}: invalid YAML ({getattr(exc, 'problem', exc)})")
    if not isinstance(values, dict):
        parser.error(f"--config {path}: expected a mapping of flag names to values")
    actions = {a.dest: a for a in parser._actions}
    values = {k.replace("-", "_"): v for k, v in values.items()}
    values.pop("config", None)  # a run's saved config.yaml names the preset it started from
    inherited = {}
    if "base" in values:
        base = values.pop("base")
        inherited = _load_base(path, base, parser, _chain) if with_base else {}
    unknown = sorted(k for k in values if k not in actions)
    if unknown:
        parser.error(f"--config {path}: unknown keys {unknown}")
    for key, value in values.items():  # YAML reads 1e-4 as a string: convert like the command line would
        kind = actions[key].type
        try:
            if kind is not None and isinstance(value, str):
                values[key] = kind(value)
            elif kind is not None and isinstance(value, list):
                values[key] = [kind(v) if isinstance(v, str) else v for v in value]
        except (TypeError, ValueError, argparse.ArgumentTypeError) as exc:
            parser.error(f"--config {path}: {key}: {exc}")
        choices = actions[key].choices
        if values[key] is None and actions[key].default is None:
            continue  # a saved configuration holds the unset optional flags too
        if choices is not None and values[key] not in choices:
            parser.error(f"--config {path}: {key} must be one of {sorted(choices)}, got {values[key]!r}")
    return {**inherited, **values}


def _load_base(path: str, base, parser: argparse.ArgumentParser, chain) -> Dict:
    """The values of ``base:`` in the config file ``path`` (its own bases first); ``chain``: the files that
    led here, to refuse a cycle."""
    if not isinstance(base, str) or not base:
        parser.error(f"--config {path}: base must be a path to a YAML file (relative to {path}), got {base!r}")
    base_path = os.path.normpath(os.path.join(os.path.dirname(path), base))
    here = os.path.realpath(path)
    if os.path.realpath(base_path) in chain + (here,):
        loop = " -> ".join([*chain, here, os.path.realpath(base_path)])
        parser.error(f"--config {path}: base {base} makes a cycle of config files ({loop})")
    if not os.path.isfile(base_path):
        parser.error(f"--config {path}: base {base} not found ({base_path})")
    return load_config_file(base_path, parser, _chain=chain + (here,))


#: The official tsm and x3d commands start with two positionals: ``something RGB`` (dataset, modality).
OFFICIAL_POSITIONAL_DATASETS = {"something": "tsm", "somethingv2": "tsm", "jester": "tsm", "kinetics": "x3d"}


def official_positionals(argv: List[str]) -> List[str]:
    """The official tsm / x3d command line ``DATASET MODALITY --flags...`` as ``--variant V --dataset DATASET ...``."""
    if len(argv) >= 2 and argv[0] in OFFICIAL_POSITIONAL_DATASETS and not argv[1].startswith("-"):
        if argv[1] != "RGB":
            raise SystemExit(f"modality {argv[1]!r}: only RGB frames are supported (the official commands use RGB)")
        variant = OFFICIAL_POSITIONAL_DATASETS[argv[0]]
        if variant == "tsm" and not any(t == "--variant" or t.startswith("--variant=") for t in argv):
            from .official_commands import OfficialCommandError, official_variant
            try:
                told = official_variant(argv, "main.py")
            except OfficialCommandError:
                told = "tsm"  # neither release's flags: the Uni-AdaFocus-TSM reading, as before
            if told == "adafocus_v2_tsm":  # its --num_segments is the glance count, ours the focus clip
                raise SystemExit(f"main.py {argv[0]} RGB ... --num_segments: this is AdaFocusV2's Sth-Sth command; "
                                 "python -m ops.official_commands 'python main.py ...' prints ours (--variant "
                                 "adafocus_v2_tsm, --num_glance_segments G --num_segments int(1.5 G))")
        return ["--variant", variant, "--dataset", argv[0]] + argv[2:]
    return argv


def parse_args(argv: Optional[List[str]] = None, parser: Optional[argparse.ArgumentParser] = None) -> argparse.Namespace:
    """Parse ``argv`` with ``parser`` (default: main.py's), defaults from ``--config FILE`` first.

    The variant's own defaults (``Variant.defaults``) apply to the flags neither the command line nor
    the config file sets.
    """
    argv = official_positionals(list(sys.argv[1:] if argv is None else argv))
    parser = parser or get_args_parser()
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--config", default=None)
    known, _ = pre.parse_known_args(argv)
    from_config = {}
    if known.config:
        from_config = load_config_file(known.config, parser)
        parser.set_defaults(**from_config)
    args = parser.parse_args(argv)
    explicit = _given_dests(parser, argv) | set(from_config)
    for key, value in models.get_variant(args.variant).defaults.items():
        if key not in explicit:
            setattr(args, key, value)
    validate(args, explicit, parser)
    args.explicit = sorted(explicit)
    return args


#: The official launcher flags (flag as named in errors, destination): torchrun starts the processes here.
LAUNCHER_FLAGS = (("--multiprocessing-distributed", "multiprocessing_distributed"), ("--world-size", "world_size"),
                  ("--rank", "rank"), ("--dist-backend", "dist_backend"))

#: Flags that must be positive / zero or more.
POSITIVE = ("batch_size", "val_batch_size", "epochs", "num_segments", "num_glance_segments", "num_focus_segments",
            "input_size", "patch_size", "stn_hidden_dim", "temporal_hidden_dim", "classifier_dim", "mc_samples",
            "print_freq", "prefetch_factor", "shift_div", "glance_size")
NON_NEGATIVE = ("workers", "eval_freq", "iters_per_epoch", "num_visualised", "weight_decay", "threshold_subset",
                "warmup_epochs", "lr_epochs")


def cuda_available() -> bool:
    """Whether ``--device auto`` picks CUDA (``ops.distributed.init_distributed``'s rule)."""
    import torch  # late, as this module's other uses of torch

    return torch.cuda.is_available()


def validate(args: argparse.Namespace, explicit: set, parser: argparse.ArgumentParser) -> None:
    """Checks across flags, and the flags that imply others (a parser error names the flag)."""
    if args.stn_start_epoch < 0:
        parser.error(f"--stn_start_epoch must be 0 or more, got {args.stn_start_epoch}")
    for name in POSITIVE:
        value = getattr(args, name, None)
        if value is not None and value <= 0:
            parser.error(f"--{name} must be positive, got {value}")
    for name in NON_NEGATIVE:
        value = getattr(args, name, None)
        if value is not None and value < 0:
            parser.error(f"--{name} must be 0 or more, got {value}")
    if "num_focus_segments" not in models.get_variant(args.variant).hyper_parameters:  # adafocus_v2: every frame
        args.num_glance_segments = args.num_focus_segments = args.num_segments  # is a glance and a focus frame
    if args.num_focus_segments > args.num_segments:
        parser.error(f"--num_focus_segments {args.num_focus_segments} must not exceed --num_segments "
                     f"{args.num_segments} (the focus frames are chosen among the candidates)")
    if args.patch_size > args.input_size:
        parser.error(f"--patch_size {args.patch_size} must not exceed --input_size {args.input_size}")
    if getattr(args, "synthetic", None) is not None and not isinstance(args.synthetic, dict):
        parser.error(f"synthetic: in {getattr(args, 'config', None) or 'the config file'} must be a mapping of generation options, got "
                     f"{type(args.synthetic).__name__} {args.synthetic!r}")
    launcher = [flag for flag, dest in LAUNCHER_FLAGS
                if getattr(args, dest, None) is not None and getattr(args, dest) is not False]
    if launcher:
        nodes = f"--nnodes={args.world_size} " if args.world_size and args.world_size > 1 else ""
        script = parser.prog if parser.prog.endswith(".py") else "main.py"
        parser.error(f"{launcher[0]}: processes are started by torchrun here; run "
                     f"torchrun {nodes}--nproc_per_node=NUM_GPUS {script} with the same flags, without "
                     "--multiprocessing-distributed, --world-size, --rank, --dist-url and --dist-backend "
                     "(python -m ops.official_commands 'OFFICIAL COMMAND' prints it)")
    if getattr(args, "root_model", None) and "root_log" not in explicit:
        args.root_log = args.root_model
    if getattr(args, "pretrain", None):
        args.pretrained = args.pretrain == "imagenet"
    if args.fused_adamw is not None and args.optimizer != "adamw":  # a run's saved config holds null
        parser.error(f"--fused_adamw/--no-fused_adamw set AdamW's implementation; --optimizer is {args.optimizer}")
    if args.clip_gradient is not None and args.clip_gradient <= 0:
        parser.error(f"--clip_gradient must be positive, got {args.clip_gradient}")
    if getattr(args, "paper_stop_gradient", False):
        if "temporal_objective" in explicit and args.temporal_objective != "paper":
            parser.error("--paper_stop_gradient uses --temporal_objective paper; "
                         f"--temporal_objective {args.temporal_objective} contradicts it")
        args.detach_temporal_input, args.temporal_objective = True, "paper"
    check_ablations(args, parser)
    check_evaluation_ablations(args, parser)
    if getattr(args, "bf16_focus", False):
        evaluates_on = "cuda" if args.device == "cuda" or (args.device == "auto" and cuda_available()) else "cpu"
        problem = sibling("models.inference").bf16_focus_problem(args.plain_model, evaluates_on,
                                                                 args.amp and args.eval_amp)
        if problem:
            parser.error(problem)
    variant = models.get_variant(args.variant)
    for role in ("glance", "focus"):
        arch = getattr(args, f"{role}_arch")
        if arch not in variant.encoders.get(role, ()):
            parser.error(f"--{role}_arch {arch}: the {variant.name} variant offers {', '.join(variant.encoders[role])}")
    if args.zero_init_residual and "zero_init_residual" not in variant.hyper_parameters:
        parser.error(f"--zero_init_residual: the {variant.name} variant's encoders do not offer it "
                     f"(mn2_r50 and tsm do)")
    if args.zero_init_residual and args.pretrained:
        parser.error("--zero_init_residual sets a random initialisation, which --pretrained replaces with ImageNet "
                     "weights in both encoders: add --no-pretrained")
    for name, allowed in variant.choices.items():
        if getattr(args, name) not in allowed:
            parser.error(f"--{name} {getattr(args, name)}: the {variant.name} variant offers {', '.join(allowed)}")
    if getattr(args, "gpu_decode", False):
        if args.video_files:
            parser.error("--gpu_decode decodes the JPEG files of frame folders; --video_files are decoded on the CPU")
        if variant.frame_source != "candidates":
            parser.error(f"--gpu_decode: the {variant.name} variant samples its glance frames apart from the "
                         f"candidates and decodes on the CPU; --gpu_decode is for mn2_r50")
        if not (args.device == "cuda" or (args.device == "auto" and cuda_available())):
            parser.error(f"--gpu_decode decodes on a CUDA device, but this run evaluates on the CPU (--device "
                         f"{args.device}{'' if args.device == 'cpu' else ', no CUDA device found'})")


#: The three kinds of dynamic computation the paper's Table 10 removes (``--remove_dynamics`` names).
DYNAMICS = ("spatial", "temporal", "samplewise")
#: The training-time ablation flags (paper Tables 6-9, 15): model keywords of the variants that offer them.
ABLATION_FLAGS = ("aux_supervision", "diversity_augmentation", "policy_stop_gradient", "spatial_training",
                  "patch_scale", "size_regulariser", "patch_location", "frame_sampling", "reuse_glance_features",
                  "spatial_supervision", "enlarged_patch_margin", "patch_transform")


def check_ablations(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Refuse, in one line, an ablation flag off its default that the variant cannot honour, and the
    combinations that contradict each other."""
    variant = models.get_variant(args.variant)
    for name in ABLATION_FLAGS:
        value = getattr(args, name, None)
        if value is not None and value != parser.get_default(name) and name not in variant.hyper_parameters:
            shown = f"--{name} {value}" if not isinstance(value, bool) else f"--{'' if value else 'no-'}{name}"
            parser.error(f"{shown}: the {variant.name} variant does not offer this ablation (mn2_r50 does)")
    if getattr(args, "enlarged_patch_margin", 0) < 0:
        parser.error(f"--enlarged_patch_margin must be 0 or more, got {args.enlarged_patch_margin}")
    if getattr(args, "spatial_supervision", "glance") == "local" and getattr(args, "spatial_training", None) == "pixels":
        parser.error("--spatial_supervision local trains the spatial policy through the focus features; "
                     "--spatial_training pixels trains it through the patch pixels instead: choose one")


def check_evaluation_ablations(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Refuse, in one line at start-up, ``--policy_ablation`` / ``--remove_dynamics`` on a variant that cannot
    honour them, and ``--remove_dynamics`` / ``--budgets`` values of a config file that the command line's
    types would have refused (YAML numbers and single names skip them)."""
    variant = models.get_variant(args.variant)
    if isinstance(getattr(args, "remove_dynamics", None), str):  # a config file's single name
        args.remove_dynamics = [args.remove_dynamics]
    for flag, used in (("--policy_ablation", getattr(args, "policy_ablation", False)),
                       ("--remove_dynamics", getattr(args, "remove_dynamics", None) is not None)):
        if used and not variant.evaluation_ablations:
            able = ", ".join(n for n, v in models.VARIANTS.items() if v.evaluation_ablations)
            parser.error(f"{flag}: the {variant.name} variant has no candidate-frame policy to replace "
                         f"(available for {able})")
    for name in getattr(args, "remove_dynamics", None) or ():
        if name not in DYNAMICS:
            parser.error(f"--remove_dynamics {name!r} is not one of {', '.join(DYNAMICS)}")
    budgets = getattr(args, "budgets", None)
    if budgets is not None:
        budgets = budgets if isinstance(budgets, list) else [budgets]
        for budget in budgets:
            if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not 0 < budget < float("inf"):
                parser.error(f"--budgets {budget!r}: a budget must be a positive number of GFLOPs")
        args.budgets = [float(b) for b in budgets]


#: Flags that set the model's shapes or its evaluation forward (frame counts, cube length, visiting order,
#: the policy's form). An own checkpoint's saved configuration supplies those that no flag (nor
#: ``--config``) sets; one that contradicts it is an error naming both values. Every hyper-parameter of a
#: registered variant is here, in :data:`PREDICTION_KEYS` or in :data:`TRAINING_ONLY_KEYS`.
MODEL_KEYS = ("variant", "glance_arch", "focus_arch", "num_segments", "num_glance_segments", "num_focus_segments",
              "patch_size", "input_size", "glance_size", "stn_hidden_dim", "temporal_hidden_dim", "classifier_dim",
              "shift_div", "patch_transform", "action_dim", "hidden_state_dim", "hidden_dim", "with_glancer",
              "cube_frames", "tsm_encoders", "sample", "ppo_continuous", "actorcritic_with_bn")


def model_keys(variant_name: str) -> List[str]:
    """The :data:`MODEL_KEYS` that matter to a variant."""
    used = set(models.get_variant(variant_name).hyper_parameters) | {"variant", "glance_arch", "focus_arch"}
    return [k for k in MODEL_KEYS if k in used]


def adopt_model_config(current: Dict, explicit: set, saved: Dict, source: str) -> Dict:
    """The model sizes of ``saved`` (a checkpoint's configuration) merged under the ``explicit`` ones of
    ``current``; raises ``ValueError`` naming both values when an explicit one contradicts ``saved``."""
    merged = {}
    variant = saved.get("variant", current.get("variant"))
    for key in model_keys(variant if variant in models.VARIANTS else current["variant"]):
        if key not in saved or saved[key] is None:
            continue
        if key in explicit and current.get(key) is not None and current[key] != saved[key]:
            raise ValueError(f"--{key} {current[key]} contradicts {source}, whose model has {key} {saved[key]} "
                             f"(drop --{key}: the checkpoint's configuration sets it)")
        merged[key] = saved[key]
    return merged


def official_variant(ckpt: Dict) -> Optional[str]:
    """The variant whose official key layout a checkpoint without configuration is in (None: unknown,
    or our own layout). Sizes that change no shape (frame counts, patch size) cannot be told from it."""
    from .checkpoint import official_state  # late: the checkpoint module needs torch

    state = official_state(ckpt)
    found = [name for name, v in models.VARIANTS.items() if state is not None and v.checkpoint.detect(state)]
    return found[0] if len(found) == 1 else None


#: Flags that say which data a run read. Our checkpoints save them: ``--resume`` takes those that no
#: flag (nor ``--config``) sets, as long as the data set is the saved one.
DATA_KEYS = ("dataset", "data_dir", "dataset_config", "synthetic", "video_files")
#: Other saved settings that change a checkpoint's predictions and are taken when no flag sets them (the
#: ablations' rules apply in evaluation too; spatial_supervision sets the auxiliary head's width; seed
#: seeds the evaluation draws of the random rules).
PREDICTION_KEYS = ("temperature", "patch_scale", "patch_location", "frame_sampling", "reuse_glance_features",
                   "spatial_supervision", "seed")
#: The variants' other hyper-parameters (``Variant.hyper_parameters``), which a checkpoint's saved
#: configuration need not give back: each changes only the training or the initial weights (which the
#: checkpoint's own replace), never the trained model's shapes nor its evaluation forward.
TRAINING_ONLY_KEYS = {
    "dropout": "dropout is off in evaluation",
    "fc_dropout": "dropout is off in evaluation",
    "pretrained": "the initial weights; the checkpoint's replace them",
    "glance_weights": "the initial weights; the checkpoint's replace them",
    "focus_weights": "the initial weights; the checkpoint's replace them",
    "zero_init_residual": "the initial weights; the checkpoint's replace them",
    "detach_temporal_input": "a stop-gradient: the same forward values",
    "aux_supervision": "objective terms only (the heads are built either way)",
    "diversity_augmentation": "the training forward's second, random-patch pass",
    "policy_stop_gradient": "a stop-gradient: the same forward values",
    "spatial_training": "which gradient trains the spatial policy",
    "size_regulariser": "an objective term",
    "enlarged_patch_margin": "training patches only (evaluation crops P x P)",
    "v3_gradient": "the training forward's gradient estimator (evaluation reads the cubes' frames either way)",
    "action_std": "the Gaussian policy's sampling in training (evaluation takes the mean)",
}


def adopt_data_config(current: Dict, explicit: set, saved: Dict) -> Dict:
    """The :data:`DATA_KEYS` and :data:`PREDICTION_KEYS` of ``saved`` (a checkpoint's configuration) that
    ``explicit`` does not set; no data key when an explicit ``dataset`` differs from the saved one."""
    same_data = "dataset" in saved and ("dataset" not in explicit or current.get("dataset") == saved["dataset"])
    keys = (DATA_KEYS if same_data else ()) + PREDICTION_KEYS
    return {k: saved[k] for k in keys if k in saved and k not in explicit}


def run_config_hint(checkpoint: str) -> str:
    """``--config RUN/config.yaml``: the run configuration saved beside ``checkpoint`` when there is one."""
    beside = os.path.join(os.path.dirname(checkpoint), "config.yaml")
    if os.path.isfile(beside):
        return f"--config {beside}"
    return "--config RUN/config.yaml (the run's saved configuration)"


def adopt_checkpoint_config(args: argparse.Namespace, parser: argparse.ArgumentParser,
                            path: Optional[str] = None) -> bool:
    """Take the model sizes, the data set and its folder that no flag sets from the configuration saved
    in our checkpoint ``path`` (default ``--resume``), so that ``--evaluate --resume RUN/ckpt.best.pth.tar``
    alone evaluates the run (and writes into RUN when neither ``--root_log`` nor ``--store_name`` is
    given). Official release files carry none: their key layout gives the variant (with its defaults)
    when ``--variant`` is not set, and the preset gives the rest. A data set that cannot be found is a
    parser error naming ``--config RUN/config.yaml``."""
    path = path or getattr(args, "resume", "")
    if not path or path == "auto" or not os.path.isfile(path):
        return False
    from .checkpoint import read_checkpoint  # late: the checkpoint module needs torch

    ckpt = read_checkpoint(path)
    saved = ckpt.get("config")
    explicit = set(getattr(args, "explicit", ()))
    own = isinstance(saved, dict)
    if not own:  # an official file: its key layout tells the variant, nothing more
        if getattr(args, "evaluate", False) and not explicit & {"dataset", "data_dir", "dataset_config"}:
            parser.error(f"--resume {path} holds no data set configuration (an official release file or a "
                         f"checkpoint without a saved run configuration): pass --dataset and --data_dir, a preset "
                         f"(--config configs/NAME.yaml --data_dir DIR) or {run_config_hint(path)}")
        recognised = official_variant(ckpt)
        if recognised is None or recognised == args.variant or "variant" in explicit:
            return False
        saved = {"variant": recognised}
    try:
        merged = adopt_model_config(vars(args), explicit, saved, f"the checkpoint {path}")
    except ValueError as exc:
        parser.error(str(exc))
    if merged.get("variant", args.variant) != args.variant:  # the variant's own defaults follow it
        for key, value in models.get_variant(merged["variant"]).defaults.items():
            if key not in explicit:
                setattr(args, key, value)
    merged.update(adopt_data_config(vars(args), explicit, saved))
    for key, value in merged.items():
        setattr(args, key, value)
    data_dir = merged.get("data_dir")
    if data_dir and not os.path.isdir(data_dir):
        parser.error(f"--resume {path}: the data folder {data_dir} of its saved configuration ({args.dataset} "
                     f"data) is not found: pass --data_dir DIR, or {run_config_hint(path)} with its data_dir "
                     f"corrected")
    if own and getattr(args, "evaluate", False) and not explicit & {"root_log", "store_name", "root_model"}:
        run_dir = os.path.dirname(os.path.abspath(path))  # our run: the evaluation writes beside its checkpoint
        args.root_log, args.store_name = os.path.dirname(run_dir), os.path.basename(run_dir)
    validate(args, explicit | set(merged), parser)
    return True


def plain_config(args: argparse.Namespace) -> Dict:
    """The resolved configuration as plain data (saved with the run and in checkpoints)."""
    return {k: v for k, v in vars(args).items() if k not in ("local_rank", "explicit")}


def run_name(args: argparse.Namespace) -> str:
    """The run folder's name: ``--store_name``, else the official rule of the main variant; other
    variants name the patch size and frame counts too (the official tsm name holds neither, so two
    of its README runs share one folder)."""
    if args.store_name:
        return args.store_name
    if args.variant == "mn2_r50":
        return f"UniAdaFocus_{args.dataset}_{args.glance_arch}_segment{args.num_segments}_e{args.epochs}"
    return (f"UniAdaFocus-{args.variant}_{args.dataset}_p{args.patch_size}_{args.num_glance_segments}+"
            f"{args.num_focus_segments}_segment{args.num_segments}_e{args.epochs}")


def run_folder(args: argparse.Namespace) -> str:
    """``{root_log}/{run name}``: where a run writes its checkpoints, logs and metrics."""
    return os.path.join(args.root_log, run_name(args))


