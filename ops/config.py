"""The configuration of a run: main.py's command line resolved, YAML presets, and their validation.

:func:`parse_args` parses main.py's flags (``ops.flags``; an entry point that extends them passes its
own parser) with defaults from ``--config FILE``, a YAML file of ``flag_name: value`` pairs
(``configs/*.yaml``, ``base: FILE`` to build on another); the command line overrides them (a mapping of
options, ``synthetic``, option by option: :data:`MERGED_MAPPINGS`). It then
applies the variant's defaults and validates the result. Evaluating an own checkpoint adopts its saved
model configuration (:data:`MODEL_KEYS`, :data:`PREDICTION_KEYS`; :data:`TRAINING_ONLY_KEYS` never
matter there); :func:`run_name` / :func:`run_folder` name the run's folder.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Dict, List, Optional

import yaml

from .flags import DYNAMICS, get_args_parser
from .packages import models, sibling


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
    return merge_values(inherited, values)


#: Flags whose value is a mapping of options: a later source (a file over its base, the command line over the
#: file) sets the options it names and keeps the others.
MERGED_MAPPINGS = ("synthetic",)


def merge_values(under: Dict, over: Dict) -> Dict:
    """``over``'s values over ``under``'s; a mapping flag of :data:`MERGED_MAPPINGS` set in both is merged key by key."""
    merged = {**under, **over}
    for key in MERGED_MAPPINGS:
        if isinstance(under.get(key), dict) and isinstance(over.get(key), dict):
            merged[key] = {**under[key], **over[key]}
    return merged


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
    given = _given_dests(parser, argv)
    for key in MERGED_MAPPINGS:                    # the command line's options on top of the file's
        if key in given:
            setattr(args, key, merge_values(from_config, {key: getattr(args, key)})[key])
    explicit = given | set(from_config)
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
        offering = sorted(v.name for v in models.VARIANTS.values() if "zero_init_residual" in v.hyper_parameters)
        parser.error(f"--zero_init_residual: the {variant.name} variant's encoders do not offer it "
                     f"({', '.join(offering)} do)")
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
