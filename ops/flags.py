"""main.py's flags: every official flag with its name and meaning, and ours (:func:`get_args_parser`).

The entry points that share these flags (``test_early_exit.py``, ``scripts/visualize.py``) extend
:func:`get_args_parser` with their own group first (:func:`own_options_first`); ``ops.config`` parses
them, with the defaults of a ``--config`` file, and validates the result. Official flags the official
code never read are accepted and warned about (:data:`UNUSED_OFFICIAL_FLAGS`).
"""
from __future__ import annotations

import argparse
import json
from typing import List, Optional

from .packages import datasets, models, sibling

#: The three kinds of dynamic computation the paper's Table 10 removes (``--remove_dynamics`` names).
DYNAMICS = ("spatial", "temporal", "samplewise")

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
                   help='generation options of the synthetic dataset, as JSON, e.g. \'{"train_videos": 200}\'; with '
                        '--config, on top of the file\'s synthetic: options (the others keep the file\'s values)')

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
                   help="local ImageNet MobileNetV2 weights (torchvision or the official file layout); adafocus_v1_tsm "
                        "also a TSM repository MobileNetV2 file (mobilenetv2_segment8.pth.tar)")
    g.add_argument("--focus_weights", default=None, help="local ImageNet ResNet weights (torchvision layout); "
                   "adafocus_v1_tsm also a TSM repository ResNet-50 file (resnet50_segment12.pth.tar)")
    g.add_argument("--zero_init_residual", action=argparse.BooleanOptionalAction, default=False,
                   help="random initialisation: the last BatchNorm of every residual block of both encoders starts "
                        "at zero, so that each block starts as the identity (Goyal et al., 2017); pretrained weights "
                        "replace it; variants whose encoders lack it refuse it, naming those that offer it (default: off, as "
                        "officially)")
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

    g = p.add_argument_group("GPU speed (CUDA runs; ops/device_setup.py device_settings)")
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
    g = p.add_argument_group("AdaFocus V1 (--variant adafocus_v1 or adafocus_v1_tsm; docs/adafocus-v1.md): the official "
                                "staged training (ops/staged_training.py); names as the official configuration keys")
    g.add_argument("--stage", "--train_stage", dest="stage", type=int, choices=(0, 1, 2, 3), default=None,
                   help="official train_stage: 0 one encoder on whole frames (--pretrain_glancer picks which; "
                        "adafocus_v1 only), 1 the focus encoder and the classifier on random patches, 2 the policy by "
                        "PPO, 3 the classifier on the policy's patches (adafocus_v1_tsm: stages 1-3, its encoders "
                        "pre-trained apart)")
    g.add_argument("--stage_checkpoint", nargs="+", default=None, metavar="PATH",
                   help="the previous stage's checkpoint (a run's ckpt.pth.tar or an official file): stage 2 takes a "
                        "stage-1 one (adafocus_v1: official resume; adafocus_v1_tsm: pretrained), stage 3 a stage-2 "
                        "one (resume; pretrained_s2); adafocus_v1's stage 1 takes one or two stage-0 files (official "
                        "pretrained_glancer / pretrained_focuser) and its stage 0 may take the other encoder's; "
                        "adafocus_v1_tsm's stage 1 takes none (its encoders: --pretrained / --glance_weights / "
                        "--focus_weights)")
    g.add_argument("--pretrain_glancer", action=argparse.BooleanOptionalAction, default=True,
                   help="adafocus_v1 stage 0: train the glance encoder (else the focus encoder) with its own linear "
                        "head")
    g.add_argument("--backbone_lr", type=float, default=0.01,
                   help="SGD rate of the encoders (adafocus_v1: stages 0 and 1; adafocus_v1_tsm: the focus encoder in "
                        "stage 1, and in stage 3 when > 0; with --official_lr_groups its first convolution only)")
    g.add_argument("--fc_lr", type=float, default=0.005,
                   help="SGD rate of the classifier (stages 1 and 3; adafocus_v1: the recurrent one, adafocus_v1_tsm: "
                        "the focus linear layer; unused with adafocus_v1_tsm's --official_lr_groups)")
    g.add_argument("--policy_lr", type=float, default=3e-4, help="stage 2: Adam rate of the policy (no schedule)")
    g.add_argument("--gamma", type=float, default=0.7, help="stage 2: PPO discount of the rewards (adafocus_v1: per frame; adafocus_v1_tsm: one "
                        "step per video)")
    g.add_argument("--reward", choices=("random", "prev", "conf"), default="random",
                   help="adafocus_v1 stage 2: the confidence gain over a random patch (official default), over the "
                        "previous frame, or the confidence itself (adafocus_v1_tsm: the gain over a random box)")
    g.add_argument("--action_dim", type=int, default=None,
                   help="A: grid positions of the policy (adafocus_v1: 25, 36, 49 or 64; default: the variant's, 49)")
    g.add_argument("--hidden_state_dim", type=int, default=None,
                   help="width of the policy's encoder and GRU (default: the variant's, 1024 in both forms)")
    g.add_argument("--with_glancer", action=argparse.BooleanOptionalAction, default=True,
                   help="adafocus_v1: the classifier reads the glance features with the focus features "
                        "(adafocus_v1_tsm: the prediction adds the glance logits; it is built with them only)")
    g.add_argument("--official_lr_groups", action=argparse.BooleanOptionalAction, default=True,
                   help="adafocus_v1_tsm stages 1 and 3: the official optimiser's rates, which reach only the focus "
                        "encoder's first convolution (as the released checkpoints were trained); --no-: the "
                        "intended focus encoder and classifier (docs/adafocus-v1.md)")

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
