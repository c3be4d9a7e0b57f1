"""The official command lines of the releases (Uni-AdaFocus: mn2_r50, tsm, x3d; AdaFocusV2 and AdaFocus V1: their two forms), as this project's commands.

The official releases name one script per job (``main.py``, ``main_semiAMP.py``, ``main_nViewEval.py``,
``test_early_exit_*.py``; AdaFocusV2's ``main_v2.py`` and ``test_early_exit.py``) and start their processes in two ways (``python -m torch.distributed.launch``,
or ``python main.py ... --multiprocessing-distributed --world-size 1 --rank 0 --dist-url URL``). Here
there are two entry points, ``main.py`` and ``test_early_exit.py``, which take every official flag, and
torchrun starts the processes. :data:`OFFICIAL_SCRIPTS` is the one table of what each official script
is here; :func:`translate_command` turns a pasted official command line into ours::

    python -m ops.official_commands "CUDA_VISIBLE_DEVICES=0,1,2,3 python main_nViewEval.py kinetics RGB ..."

prints the command to run (docs/official-commands.md lists every script). AdaFocus V1's scripts take Hydra
``key=value`` overrides of their YAML instead of flags (``main_dist.py train_stage=1 patch_size=128 ...``,
``stage2.py dataset=somethingv1 ...``): ``ops.official_commands_v1`` maps each key onto our flags.
"""
from __future__ import annotations

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
) + tuple(OfficialScript(f"stage{n}.py", "adafocus_v1_tsm", "main.py", (("--variant", "adafocus_v1_tsm"),),
                         f"AdaFocus V1 (Something-Something form) training stage {n} (main.py --stage {n}"
                         f"{'' if n == 1 else ' --stage_checkpoint PATH'}), key=value overrides of conf/stage{n}.yaml",
                         form="hydra")
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
        from .official_commands_v1 import translate_hydra  # it builds on this module's Translation and launchers

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
    # through the imported module, whose OfficialCommandError the key=value translator (ops.official_commands_v1)
    # raises: run as a script, this file is also __main__, a second copy with classes of its own
    from ops import official_commands

    sys.exit(official_commands.main())
