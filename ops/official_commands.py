"""The official command lines of the releases (Uni-AdaFocus: mn2_r50, tsm, x3d; AdaFocusV2 and AdaFocus V1: their two forms), as this project's commands.

The official releases name one script per job (``main.py``, ``main_semiAMP.py``, ``main_nViewEval.py``,
``test_early_exit_*.py``; AdaFocusV2's ``main_v2.py`` and ``test_early_exit.py``) and start their processes in two ways (``python -m torch.distributed.launch``,
or ``python main.py ... --multiprocessing-distributed --world-size 1 --rank 0 --dist-url URL``). Here
there are two entry points, ``main.py`` and ``test_early_exit.py``, which take every official flag, and
torchrun starts the processes. :data:`OFFICIAL_SCRIPTS` is the one table of what each official script
is here; :func:`translate_command` turns a pasted official command line into ours::

    python -m ops.official_commands "CUDA_VISIBLE_DEVICES=0,1,2,3 python main_nViewEval.py kinetics RGB ..."

prints the command to run (docs/official-commands.md lists every script). AdaFocus V1's scripts take Hydra
``key=value`` overrides of their YAML instead of flags (``main_dist.py train_stage=1 patch_size=128 ...``);
:data:`HYDRA_KEYS` maps each key onto our flags (:func:`translate_hydra`), and its Something-Something
training scripts (``stage1.py``, ``stage2.py``, ``stage3.py``) are refused in one line.
"""
from __future__ import annotations

import difflib
import re
import shlex
import sys
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

from models.adafocus_v2_sth import default_focus_segments

from .config import OFFICIAL_POSITIONAL_DATASETS

#: Both criteria, as every official early-exit script sweeps them.
BOTH_CRITERIA = (("--criterion", "confidence", "entropy"),)
#: Official training under float16 autocast with a gradient scaler.
FLOAT16_TRAINING = (("--amp",), ("--amp_dtype", "float16"))
#: The AdaFocusV2 release's scripts build its variant (their flags are the same as mn2_r50's).
ADAFOCUS_V2 = (("--variant", "adafocus_v2"),)
#: The AdaFocusV2 Something-Something / Jester main.py builds its variant (float32, no autocast).
ADAFOCUS_V2_TSM = (("--variant", "adafocus_v2_tsm"),)
#: Releases whose commands start with flags (no positional data set); their script names tell them apart.
FLAG_RELEASES = ("mn2_r50", "adafocus_v2")
#: Two releases run ``main.py DATASET RGB ...`` on Something-Something / Jester: Uni-AdaFocus-TSM (``tsm``) and
#: AdaFocusV2 (``adafocus_v2_tsm``). Their flags tell them apart: the AdaFocusV2 parser has none of these
#: (it would refuse them), and its frame count is ``--num_segments``, which the Uni-AdaFocus-TSM code never reads.
UNI_TSM_ONLY_FLAGS = ("--num_glance_segments", "--num_input_focus_segments", "--num_focus_segments",
                      "--stn_hidden_dim", "--temporal_hidden_dim", "--temporal_lr_ratio", "--norm_ratio",
                      "--temperature", "--multiprocessing-distributed", "--world-size", "--rank", "--dist-url",
                      "--dist-backend")
V2_TSM_FRAMES_FLAG = "--num_segments"


@dataclass(frozen=True)
class OfficialScript:
    """One official script: its file name, the variant whose release holds it, our entry point, and the
    flags that give our entry point the script's fixed behaviour (each one unless the command sets it)."""

    name: str
    variant: str
    ours: str
    adds: Tuple[Tuple[str, ...], ...]
    meaning: str
    #: One process spreads each batch over the visible GPUs (``DataParallel``): torchrun starts one per GPU here.
    data_parallel: bool = False
    #: ``flags`` (argparse flags) or ``hydra`` (AdaFocus V1: Hydra ``key=value`` overrides of the script's YAML).
    form: str = "flags"
    #: A script that does not run here: the one line saying so and what runs instead (``ours`` is empty).
    refused: str = ""


OFFICIAL_SCRIPTS: Tuple[OfficialScript, ...] = (
    OfficialScript("main.py", "mn2_r50", "main.py", (), "training; --evaluate --resume CKPT evaluates (float32)"),
    OfficialScript("main_semiAMP.py", "mn2_r50", "main.py", FLOAT16_TRAINING,
                   "main.py with float16 autocast around the backbones and a gradient scaler in training "
                   "(evaluation stays float32)"),
    OfficialScript("test_early_exit_uni_adafocus.py", "mn2_r50", "test_early_exit.py", BOTH_CRITERIA,
                   "early-exit budget sweep, confidence and entropy criteria"),
    OfficialScript("main.py", "tsm", "main.py", FLOAT16_TRAINING,
                   "training under float16 autocast with a gradient scaler; --evaluate --resume CKPT evaluates "
                   "(float32)"),
    OfficialScript("test_early_exit_uni_adafocus_tsm.py", "tsm", "test_early_exit.py", BOTH_CRITERIA,
                   "early-exit budget sweep, confidence and entropy criteria"),
    OfficialScript("main.py", "x3d", "main.py", FLOAT16_TRAINING,
                   "training under float16 autocast with a gradient scaler; --evaluate --resume CKPT evaluates "
                   "one view (float32)"),
    OfficialScript("main_nViewEval.py", "x3d", "main.py", (("--evaluate",),),
                   "one evaluation pass (with or without --evaluate) over --test_crops views per video (1, or 3: "
                   "left, right, centre, raw logits averaged)"),
    OfficialScript("test_early_exit_unifocus_X3D_nViewEval.py", "x3d", "test_early_exit.py", BOTH_CRITERIA,
                   "two-exit early-exit sweep over --test_crops views, confidence and entropy criteria"),
    OfficialScript("main_v2.py", "adafocus_v2", "main.py", ADAFOCUS_V2,
                   "AdaFocusV2 (ActivityNet / FCVID / Mini-Kinetics form) training; --evaluate --resume CKPT "
                   "evaluates. Its loop runs one epoch more than --epochs, at learning rate 0: add "
                   "--epochs 51 --lr_epochs 50 for that", data_parallel=True),
    OfficialScript("test_early_exit.py", "adafocus_v2", "test_early_exit.py", ADAFOCUS_V2 + (("--criterion", "confidence"),),
                   "AdaFocusV2 early-exit budget sweep over its 16 exits (p = 5..39 over 10), confidence criterion",
                   data_parallel=True),
    OfficialScript("main.py", "adafocus_v2_tsm", "main.py", ADAFOCUS_V2_TSM,
                   "AdaFocusV2 (Something-Something / Jester form) training in float32; --evaluate --resume CKPT "
                   "evaluates", data_parallel=True),
    OfficialScript("main_dist.py", "adafocus_v1", "main.py", (("--variant", "adafocus_v1"),),
                   "AdaFocus V1 (ActivityNet / FCVID / Mini-Kinetics form), key=value overrides of conf/default.yaml: "
                   "train_stage=0..3 trains that stage from the previous stage's checkpoint (main.py --stage N "
                   "--stage_checkpoint PATH); evaluate=true resume=CKPT evaluates", form="hydra"),
    OfficialScript("evaluate.py", "adafocus_v1_tsm", "main.py", (("--variant", "adafocus_v1_tsm"), ("--evaluate",)),
                   "AdaFocus V1 (Something-Something form) evaluation of resume=CKPT, key=value overrides of "
                   "conf/evaluate.yaml", form="hydra"),
) + tuple(OfficialScript(f"stage{n}.py", "adafocus_v1_tsm", "", (), f"AdaFocus V1 (Something-Something form) "
                         f"training stage {n}, key=value overrides of conf/stage{n}.yaml", form="hydra",
                         refused="the training of AdaFocus V1's Something-Something form is not built here; what runs: "
                                 "its evaluation (official evaluate.py: main.py --variant adafocus_v1_tsm --evaluate "
                                 "--resume CKPT) and the ActivityNet / FCVID / Mini-Kinetics form's stages (official "
                                 "main_dist.py train_stage=0..3: main.py --variant adafocus_v1 --stage N)")
          for n in (1, 2, 3))

#: Official launcher flags that take a value, and the one that takes none; torchrun replaces them.
LAUNCHER_VALUE_FLAGS = ("--world-size", "--world_size", "--rank", "--dist-url", "--dist_url", "--dist-backend",
                        "--dist_backend")
LAUNCHER_SWITCHES = ("--multiprocessing-distributed", "--multiprocessing_distributed")
#: The modules that launch processes when run with ``python -m``.
LAUNCH_MODULES = ("torch.distributed.launch", "torch.distributed.run")
#: Placeholders of the translated command where the official one has no value.
DATA_PLACEHOLDER = "PATH_TO_DATASET"
GPUS_PLACEHOLDER = "NUM_GPUS"


class OfficialCommandError(ValueError):
    """A command line that is not an official one (the message is one line)."""


def official_variant(args: Sequence[str], script_name: str = "") -> str:
    """The variant whose official command ``args`` (the script's arguments) are: tsm, adafocus_v2_tsm and
    x3d commands start with their positional data set; mn2_r50 and adafocus_v2 commands with flags, and
    then the script's name tells them apart (``main_v2.py`` and ``test_early_exit.py`` are AdaFocusV2's).

    ``main.py`` on Something-Something / Jester is Uni-AdaFocus-TSM's when it sets a flag of
    :data:`UNI_TSM_ONLY_FLAGS`, AdaFocusV2's when it sets ``--num_segments`` instead; a command with
    neither must name its variant (``--variant tsm`` or ``--variant adafocus_v2_tsm``)."""
    base = script_name.replace("\\", "/").rsplit("/", 1)[-1]
    if args and args[0] in OFFICIAL_POSITIONAL_DATASETS:
        variant = OFFICIAL_POSITIONAL_DATASETS[args[0]]
        if variant != "tsm" or base != "main.py":
            return variant
        named = [t.split("=", 1)[-1] if "=" in t else (args[i + 1] if i + 1 < len(args) else "")
                 for i, t in enumerate(args) if _flag_of(t) == "--variant"]
        if named:
            return named[-1]
        if any(_given(args, flag) for flag in UNI_TSM_ONLY_FLAGS):
            return "tsm"
        if _given(args, V2_TSM_FRAMES_FLAG):
            return "adafocus_v2_tsm"
        raise OfficialCommandError(
            f"main.py {args[0]}: both the Uni-AdaFocus-TSM and the AdaFocusV2 release run this command, and it sets "
            f"none of the flags that tell them apart ({V2_TSM_FRAMES_FLAG}: AdaFocusV2; "
            f"{', '.join(UNI_TSM_ONLY_FLAGS[:3])} ...: Uni-AdaFocus-TSM): add --variant tsm or --variant adafocus_v2_tsm")
    return next((v for v in FLAG_RELEASES if any(s.name == base and s.variant == v for s in OFFICIAL_SCRIPTS)),
                "mn2_r50")


def find_script(name: str, variant: str) -> OfficialScript:
    """The :data:`OFFICIAL_SCRIPTS` row of the official script ``name`` (a path or a file name) of ``variant``."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    for script in OFFICIAL_SCRIPTS:
        if script.name == base and script.variant == variant:
            return script
    known = ", ".join(s.name for s in OFFICIAL_SCRIPTS if s.variant == variant)
    raise OfficialCommandError(f"{base}: not a script of the official {variant} release (its scripts: {known})")


def _flag_of(token: str) -> str:
    return token.split("=", 1)[0] if token.startswith("--") else token


def _given(args: Sequence[str], flag: str) -> bool:
    """Whether ``args`` set ``flag`` (in either spelling, ``-`` or ``_``, or its ``--no-`` form)."""
    name = flag[2:].replace("-", "_")
    return any(_flag_of(t).replace("-", "_") in (f"__{name}", f"__no_{name}") for t in args)


@dataclass
class Translation:
    """Our command for an official one: ``env`` assignments, the ``launcher`` (``python`` or torchrun with
    its options), our ``script`` and its ``args``; ``notes`` say what changed besides the names."""

    env: List[str]
    launcher: List[str]
    script: str
    args: List[str]
    official: OfficialScript
    notes: List[str] = field(default_factory=list)

    def command(self) -> str:
        """The command line to run, shell-quoted."""
        return " ".join(self.env + [shlex.join(self.launcher + [self.script] + self.args)])


def translate_arguments(script_name: str, args: Sequence[str]) -> Tuple[OfficialScript, List[str], List[str], dict]:
    """An official script's arguments as our entry point's: (script row, our arguments, notes, launcher
    settings taken out of the arguments: ``world_size``, ``rank``, ``dist_url``, ``spawn``)."""
    args = list(args)
    script = find_script(script_name, official_variant(args, script_name))
    ours, notes, launch = [], [], {"spawn": False}
    i = 0
    while i < len(args):
        token = args[i]
        flag = _flag_of(token)
        if flag in LAUNCHER_SWITCHES:
            launch["spawn"] = True
        elif flag in LAUNCHER_VALUE_FLAGS:
            if "=" in token:
                value = token.split("=", 1)[1]
            elif i + 1 < len(args):
                i += 1
                value = args[i]
            else:
                raise OfficialCommandError(f"{flag}: expected a value")
            launch[flag.lstrip("-").replace("-", "_")] = value
        else:
            ours.append(token)
        i += 1
    if script.variant == "adafocus_v2_tsm":
        ours = _v2_tsm_frame_counts(ours, notes)
    kept_url = "dist_url" in launch and not launch["spawn"]  # our own --dist_url (process-group init)
    if kept_url:
        ours += ["--dist_url", launch.pop("dist_url")]
    for extra in script.adds:
        if not _given(ours, extra[0]):
            ours += list(extra)
    if script.adds:
        notes.append(f"{script.name}: {script.meaning}")
    if script.variant not in FLAG_RELEASES and not _given(ours, "--data_dir"):
        ours += ["--data_dir", DATA_PLACEHOLDER]
        notes.append(f"the official {script.variant} code hard-codes the data root: --data_dir names it here")
    return script, ours, notes, launch


def _v2_tsm_frame_counts(args: List[str], notes: List[str]) -> List[str]:
    """The AdaFocusV2 Sth-Sth / Jester ``--num_segments G`` (the glance frames; the focus frames are officially
    int(1.5 G)) as ``--num_glance_segments G --num_segments L``: here ``--num_segments`` is the focus clip."""
    out, i = [], 0
    while i < len(args):
        token = args[i]
        if _flag_of(token).replace("-", "_") != "__num_segments":
            out.append(token)
        else:
            value = token.split("=", 1)[1] if "=" in token else (args[i + 1] if i + 1 < len(args) else None)
            i += 0 if "=" in token else 1
            try:
                glance = int(value)
            except (TypeError, ValueError):
                raise OfficialCommandError(f"--num_segments: expected a frame count, got {value!r}") from None
            out += ["--num_glance_segments", str(glance), "--num_segments", str(default_focus_segments(glance))]
            notes.append(f"--num_segments {glance}: the official glance frame count G, with int(1.5 G) = "
                         f"{default_focus_segments(glance)} focus frames; here --num_glance_segments is G and "
                         "--num_segments the focus frames")
        i += 1
    return out


# ------------------------------------------------------------------------------------------------
# AdaFocus V1: Hydra key=value overrides
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class HydraKey:
    """One key of AdaFocus V1's official configuration and what it is here. ``kind``: ``value`` (``--flag
    VALUE``, ``flag`` by default ``--KEY``), ``bool`` (``--KEY`` or ``--no-KEY``), ``fixed`` (no flag here:
    one of ``allowed``, else refused with ``why``), ``dead`` (not read by the official script, or not in
    evaluation: any value, dropped), ``launcher`` (torchrun), ``special`` (:func:`_special_key`).
    ``default``: the official value where ours differs, used when the command leaves the key out."""

    key: str
    scripts: Tuple[str, ...]
    kind: str = "value"
    flag: str = ""
    allowed: Tuple[str, ...] = ()
    why: str = ""
    default: Optional[str] = None
    note: str = ""


ACT, STH = ("main_dist.py",), ("evaluate.py",)


def _rows(kind: str, scripts: Tuple[str, ...], names: str, **fields) -> Tuple[HydraKey, ...]:
    return tuple(HydraKey(name, scripts, kind, **fields) for name in names.split())


_TRAINING = "a training setting; evaluate.py does not train"
_DEAD = "never read by the official code"
#: The one mapping of AdaFocus V1's official keys (``conf/default.yaml`` of ``main_dist.py``,
#: ``conf/evaluate.yaml`` of ``evaluate.py``) onto our flags.
HYDRA_KEYS: Tuple[HydraKey, ...] = (
    _rows("special", ACT + STH, "dataset resume")
    + _rows("special", ACT, "train_stage evaluate pretrained_glancer pretrained_focuser lr_steps")
    + (HydraKey("epochs", ACT, "special", default="50"), HydraKey("batch_size", ACT, "special", default="64"),
       HydraKey("random_patch", ACT, "special", default="false"), HydraKey("batch_size", STH, "special"),
       HydraKey("random_patch", STH, "special"), HydraKey("num_segments_focuser", STH, "special"))
    + (HydraKey("data_dir", ACT + STH, default=DATA_PLACEHOLDER),)
    + _rows("value", ACT + STH, "workers glance_size input_size seed print_freq hidden_state_dim")
    + (HydraKey("patch_size", ACT + STH, default="96"), HydraKey("dropout", ACT, default="0.5"),
       HydraKey("dropout", STH), HydraKey("eval_freq", ACT, default="5"),
       HydraKey("num_segments_glancer", STH, flag="--num_glance_segments"), HydraKey("shift_div", STH))
    + _rows("value", ACT, "num_segments backbone_lr fc_lr lr_type momentum weight_decay action_dim hidden_dim "
                          "reward gamma policy_lr")
    + _rows("bool", ACT, "pretrain_glancer with_glancer")
    + (HydraKey("consensus", ACT, "fixed", allowed=("gru",), why="the linear classifier (consensus=fc) is not built; "
                "the recurrent one is consensus=gru"),
       HydraKey("policy_conv", ACT, "fixed", allowed=("true",), why="the MLP state encoder (policy_conv=false) is "
                "not built; the convolutional one is policy_conv=true"),
       HydraKey("feature_map_channels", ACT, "fixed", allowed=("1280",), why="the glance maps of MobileNetV2 have "
                "1280 channels"),
       HydraKey("amp", ACT, "fixed", allowed=("true", "false"), why="expected true or false",
                note="every stage trains in float32 here (the official stages 0, 1 and 3 under float16 autocast)"))
    + _rows("fixed", ACT, "train_list val_list root_path", allowed=("",),
            why="the list files and frames are found under data_dir here (--data_dir)")
    + _rows("fixed", ACT, "partial_fcvid_eval ada_reso_skip reso_list random_crop center_crop ada_crop_list "
                          "rescale_to policy_input_offset save_meta",
            why="a data-set option the official code leaves inert at its default; not offered here (drop it)")
    + _rows("dead", ACT, "continuous arch k clip_grad npb penalty gpus", why=_DEAD)
    + (HydraKey("num_classes", ACT + STH, "dead", why="the class count comes from the data set"),)
    + _rows("launcher", ACT + STH, "multiprocessing_distributed distributed dist_url dist_backend world_size rank gpu")
    + (HydraKey("video_div", STH, "fixed", allowed=("1",), why="one policy step per video is built (video_div=1, "
                "the README's); several are not"),
       HydraKey("ppo_continuous", STH, "fixed", allowed=("true",), default="false", why="main.py builds the "
                "README's Gaussian policy (ppo_continuous=True); the grid policy is built in models.adafocus_v1_sth"),
       HydraKey("actorcritic_with_bn", STH, "fixed", allowed=("true",), why="main.py builds the README's policy "
                "encoder with BatchNorm (actorcritic_with_bn=True); the one without is built in models.adafocus_v1_sth"),
       HydraKey("with_glancer", STH, "fixed", allowed=("true",), why="the prediction adds the glance logits here "
                "(with_glancer=True, the README's)"),
       HydraKey("base_model", STH, "fixed", allowed=("resnet50",), why="the focus network is ResNet-50"),
       HydraKey("is_shift", STH, "fixed", allowed=("true",), why="both networks shift (is_shift=true)"),
       HydraKey("shift_place", STH, "fixed", allowed=("blockres",), why="the shift sits on the residual branch "
                "(shift_place=blockres)"))
    + _rows("fixed", STH, "partial_bn temporal_pool non_local", allowed=("false",),
            why="not built (the official configuration's false)")
    + _rows("dead", STH, "train_stage", why="evaluate.py ignores it")
    + (HydraKey("evaluate", STH, "fixed", allowed=("true",), why="evaluate.py evaluates (evaluate=True)"),)
    + _rows("dead", STH, "action_std", why="the evaluation takes the Gaussian's mean")
    + _rows("dead", STH, "action_dim", why="the grid policy's size; the Gaussian policy has none")
    + _rows("dead", STH, "policy_lr gamma epochs eval_freq start_eval backbone_lr fc_lr fc_lr5 lr_type lr_steps "
                         "momentum weight_decay amp", why=_TRAINING)
    + _rows("dead", STH, "pretrain consensus reward dropout_lstm penalty hidden_dim k npb clip_grad pretrain_glancer",
            why=_DEAD)
)
#: Each script's own YAML (Hydra's --config-name).
HYDRA_CONFIGS = {"main_dist.py": "default", "evaluate.py": "evaluate", "stage1.py": "stage1", "stage2.py": "stage2",
                 "stage3.py": "stage3"}
#: Whether each script starts one process per GPU (multiprocessing_distributed) by default.
HYDRA_SPAWN = {"main_dist.py": "true", "evaluate.py": "false"}
#: The official data set names of each script, and ours.
V1_DATASETS = {"main_dist.py": {"actnet": "actnet", "fcvid": "fcvid", "minik": "minik"},
               "evaluate.py": {"somethingv1": "something", "somethingv2": "somethingv2"}}
#: The :data:`HYDRA_KEYS` rows of each script, by key.
HYDRA_BY_SCRIPT = {script: {row.key: row for row in HYDRA_KEYS if script in row.scripts} for script in ACT + STH}


def _truth(key: str, value: str) -> bool:
    if value.lower() not in ("true", "false"):
        raise OfficialCommandError(f"{key}={value}: expected true or false")
    return value.lower() == "true"


def _int(key: str, value: str) -> int:
    if not re.fullmatch(r"[0-9]+", value):
        raise OfficialCommandError(f"{key}={value}: expected a whole number")
    return int(value)


def hydra_values(script: OfficialScript, args: Sequence[str]) -> Tuple[dict, set]:
    """The ``key=value`` overrides of a V1 command, checked against the script's keys (an unknown key is
    refused naming the closest known one), with the official defaults that differ from ours added; and the
    keys so added."""
    keys, values, i = HYDRA_BY_SCRIPT[script.name], {}, 0
    while i < len(args):
        token = args[i]
        if token in ("--config-name", "-cn") or token.startswith("--config-name="):
            name = token.split("=", 1)[1] if "=" in token else (args[i + 1] if i + 1 < len(args) else "")
            i += 0 if "=" in token else 1
            if name.removesuffix(".yaml") != HYDRA_CONFIGS[script.name]:
                raise OfficialCommandError(f"--config-name {name}: {script.name} reads conf/"
                                           f"{HYDRA_CONFIGS[script.name]}.yaml")
        elif "=" in token and not token.startswith("-"):
            key, value = token.lstrip("+").split("=", 1)
            if key not in keys:
                closest = difflib.get_close_matches(key, list(keys), n=1, cutoff=0.0)
                raise OfficialCommandError(f"{script.name}: unknown key {key!r} (the closest known key: {closest[0]})")
            values[key] = value
        else:
            raise OfficialCommandError(f"{script.name}: {token!r} is not a key=value override (the official "
                                       f"{script.name} takes Hydra key=value arguments, e.g. patch_size=128)")
        i += 1
    defaults = {row.key: row.default for row in keys.values() if row.default is not None and row.key not in values}
    if "dataset" not in values:
        defaults["dataset"] = next(iter(V1_DATASETS[script.name]))
    return {**values, **defaults}, set(defaults)


def _special_key(key: str, value: str, script: str, stage: Optional[int], evaluate: bool) -> List[str]:
    """Our flags for the :data:`HYDRA_KEYS` of kind ``special``."""
    if key == "dataset":
        if value not in V1_DATASETS[script]:
            raise OfficialCommandError(f"dataset={value}: {script} reads {', '.join(V1_DATASETS[script])}")
        return ["--dataset", V1_DATASETS[script][value]]
    if key == "train_stage":
        return [] if evaluate else ["--stage", str(stage)]
    if key == "evaluate":
        return ["--evaluate"] if evaluate else []
    if key == "resume":
        if evaluate or script == "evaluate.py":
            return ["--resume", value]
        if stage in (0, 1):
            raise OfficialCommandError(f"resume={value} with train_stage={stage}: the official resume is the previous "
                                       "stage's checkpoint of stages 2 and 3; stage 1 starts from pretrained_glancer / "
                                       "pretrained_focuser (our --resume continues a run of the same stage)")
        return ["--stage_checkpoint", value]
    if key in ("pretrained_glancer", "pretrained_focuser"):
        if stage != 1 or evaluate:
            raise OfficialCommandError(f"{key}: the stage-0 checkpoint that train_stage=1 starts from (read by no "
                                       "other stage)")
        return []  # both in one --stage_checkpoint (translate_hydra)
    if key == "random_patch":
        training = script == "main_dist.py" and not evaluate
        given, wanted = _truth(key, value), {1: True, 2: False, 3: False}.get(stage) if training else False
        if wanted is not None and given != wanted:
            raise OfficialCommandError(f"random_patch={value} with {f'train_stage={stage}' if training else 'the evaluation'}"
                                       ": here stages 0 and 1 train on random patches and stages 2, 3 and the "
                                       "evaluation use the policy's (the README's settings)")
        return []
    if key == "batch_size":
        return ["--val_batch_size" if evaluate or script == "evaluate.py" else "--batch_size", value]
    if key == "epochs":
        return ["--epochs", str(_int(key, value) + 1), "--lr_epochs", value]
    if key == "lr_steps":
        return ["--lr_steps"] + [s.strip() for s in value.strip("[]").split(",") if s.strip()]
    if key == "num_segments_focuser":
        return ["--num_segments", value, "--num_focus_segments", value]
    raise AssertionError(key)


def translate_hydra(script: OfficialScript, args: Sequence[str], env: List[str],
                    launcher_options: Optional[List[str]]) -> Translation:
    """An AdaFocus V1 command (``key=value`` overrides) as ours: each key through :data:`HYDRA_KEYS`;
    ``multiprocessing_distributed`` (and its ``dist_url``, ``world_size``, ``rank``) become torchrun."""
    if script.refused:
        raise OfficialCommandError(f"{script.name}: {script.refused}")
    (values, defaulted), keys = hydra_values(script, args), HYDRA_BY_SCRIPT[script.name]
    evaluate = script.name == "evaluate.py" or _truth("evaluate", values.get("evaluate", "false"))
    stage = _int("train_stage", values["train_stage"]) if "train_stage" in values and script.name in ACT else None
    if script.name in ACT and not evaluate and stage not in (0, 1, 2, 3):
        raise OfficialCommandError(f"train_stage={values.get('train_stage', '')}: {script.name} trains "
                                   "train_stage=0, 1, 2 or 3 (or evaluates: evaluate=true resume=CKPT)")
    ours, notes, launch, dropped = [], [], {}, []
    for key, value in values.items():
        row = keys[key]
        try:
            if row.kind == "value":
                ours += [row.flag or f"--{key}", value]
            elif row.kind == "bool":
                ours.append(f"--{'' if _truth(key, value) else 'no-'}{key}")
            elif row.kind == "fixed" and value.lower() not in row.allowed:
                raise OfficialCommandError(f"{key}={value}: {row.why}")
            elif row.kind == "dead":
                dropped.append(f"{key} ({row.why})")
            elif row.kind == "launcher":
                launch[key] = value
            elif row.kind == "special":
                ours += _special_key(key, value, script.name, stage, evaluate)
        except OfficialCommandError as exc:
            if key in defaulted:
                raise OfficialCommandError(f"{key} not given: the official configuration's {key}={value}; {exc}") from None
            raise
        if row.note:
            notes.append(f"{key}={value}: {row.note}")
    checkpoints = [values[k] for k in ("pretrained_glancer", "pretrained_focuser") if k in values]
    if checkpoints:
        ours += ["--stage_checkpoint"] + checkpoints
    for extra in script.adds:
        if not _given(ours, extra[0]):
            ours += list(extra)
    if "epochs" in values and not evaluate:
        notes.append(f"epochs={values['epochs']}: the official loop runs epochs + 1 epochs, the last at rate 0")
    if dropped:
        notes.append("dropped: " + "; ".join(dropped))
    if launcher_options is None:
        if _truth("multiprocessing_distributed", launch.get("multiprocessing_distributed", HYDRA_SPAWN[script.name])):
            launcher_options = _spawn_options(env, launch)
            notes.append("multiprocessing_distributed and its dist_url, world_size, rank: torchrun starts the "
                         "processes here")
        elif (_visible_devices(env) or 1) > 1:
            launcher_options = [f"--nproc_per_node={_visible_devices(env)}"]
            notes.append(f"{script.name} without multiprocessing_distributed spreads each batch over the visible "
                         "GPUs in one process: torchrun starts one process per GPU here, same global batch")
    return Translation(env, _launcher(launcher_options), script.ours, ours, script, notes)


def _split_line(line: str) -> List[str]:
    try:
        return shlex.split(re.sub(r"\\\r?\n", " ", line))
    except ValueError as exc:
        raise OfficialCommandError(f"cannot split the command line: {exc}") from None


def translate_command(line: str) -> Translation:
    """A pasted official command line (continuation backslashes allowed) as ours.

    ``VAR=value`` assignments stay in front. ``python -m torch.distributed.launch OPTIONS`` becomes
    ``torchrun OPTIONS``; ``--multiprocessing-distributed --world-size W --rank R --dist-url URL
    --dist-backend B`` becomes ``torchrun --nproc_per_node=N`` (N: the devices in
    ``CUDA_VISIBLE_DEVICES``, else ``NUM_GPUS``; on W > 1 nodes also ``--nnodes``, ``--node_rank`` and the
    master's address from URL), or plain ``python`` for one process."""
    tokens = _split_line(line)
    env = []
    while tokens and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", tokens[0]):
        env.append(tokens.pop(0))
    if not tokens:
        raise OfficialCommandError("no command")
    launcher_options: Optional[List[str]] = None
    program = tokens.pop(0)
    if program.rsplit("/", 1)[-1] == "torchrun":
        launcher_options = []
    elif re.fullmatch(r"python[0-9.]*", program.rsplit("/", 1)[-1]):
        if tokens[:1] == ["-m"] and len(tokens) > 1 and tokens[1] in LAUNCH_MODULES:
            del tokens[:2]
            launcher_options = []
    else:
        raise OfficialCommandError(f"{program}: an official command starts with python or torchrun")
    while tokens and not tokens[0].endswith(".py"):
        if launcher_options is None:
            raise OfficialCommandError(f"{tokens[0]}: expected the official script after {program}")
        launcher_options.append(tokens.pop(0))
    if not tokens:
        raise OfficialCommandError("no official script (a file name ending in .py) in the command")
    base = tokens[0].replace("\\", "/").rsplit("/", 1)[-1]
    hydra = next((s for s in OFFICIAL_SCRIPTS if s.form == "hydra" and s.name == base), None)
    if hydra is not None:
        return translate_hydra(hydra, tokens[1:], env, launcher_options)
    script, args, notes, launch = translate_arguments(tokens[0], tokens[1:])
    if launch["spawn"]:
        launcher_options = _spawn_options(env, launch)
        notes.append("--multiprocessing-distributed and its --world-size, --rank, --dist-url, --dist-backend: "
                     "torchrun starts the processes here")
    elif script.data_parallel and launcher_options is None:
        count = _visible_devices(env)
        if count not in (None, 1):
            launcher_options = [f"--nproc_per_node={count}"]
            notes.append(f"{script.name} spreads each batch over the visible GPUs in one process (DataParallel): "
                         "torchrun starts one process per GPU here, with the same global --batch_size")
    return Translation(env, _launcher(launcher_options), script.ours, args, script, notes)


def _launcher(options: Optional[List[str]]) -> List[str]:
    """``python`` for one process, else torchrun with ``options``."""
    return ["python"] if options is None or options == ["--nproc_per_node=1"] else ["torchrun"] + options


def _visible_devices(env: List[str]) -> Optional[int]:
    """The number of devices ``CUDA_VISIBLE_DEVICES`` lists among the command's assignments (None: not set)."""
    devices = next((a.split("=", 1)[1] for a in env if a.startswith("CUDA_VISIBLE_DEVICES=")), None)
    return None if devices is None else len([d for d in devices.split(",") if d.strip()])


def _spawn_options(env: List[str], launch: dict) -> List[str]:
    """torchrun's options for the official ``--multiprocessing-distributed`` start (one process per
    visible GPU on each of ``world_size`` nodes)."""
    count = _visible_devices(env) or GPUS_PLACEHOLDER
    options = [f"--nproc_per_node={count}"]
    try:
        nodes = int(launch.get("world_size") or 1)
    except ValueError:
        raise OfficialCommandError(f"world size {launch['world_size']!r}: expected a whole number") from None
    if nodes > 1:
        options += [f"--nnodes={nodes}", f"--node_rank={launch.get('rank', 0)}"]
        url = re.fullmatch(r"tcp://([^:/]+):(\d+)", launch.get("dist_url", ""))
        if url:
            options += [f"--master_addr={url.group(1)}", f"--master_port={url.group(2)}"]
    return options


def main(argv: Optional[List[str]] = None) -> int:
    """Print our command for the official command line given as arguments (or on standard input)."""
    argv = sys.argv[1:] if argv is None else argv
    line = (argv[0] if len(argv) == 1 else shlex.join(argv)) if argv else sys.stdin.read()
    try:
        translation = translate_command(line)
    except OfficialCommandError as exc:
        raise SystemExit(f"official command: {exc}") from None
    print(translation.command())
    for note in translation.notes:
        print(f"# {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
