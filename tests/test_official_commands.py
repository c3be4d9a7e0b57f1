"""Every official command line runs here once its script name is mapped (ops/official_commands.py).

The command lines come from two places: the official READMEs and behaviour descriptions in the
reference folder (``papers/*.md`` of the uni-adafocus and AdaFocusV2 releases, ``reference/*.md``,
``reference/tsm``, ``reference/x3d``, ``reference/v2``; a README line with alternatives, ``main.py [something/somethingv2/jester] RGB ... --patch_size
[128/144/160/176]``, stands for each of its choices), and docs/official-commands.md, which quotes every
official README command of the releases with ours under it. Each one is translated, its paths are replaced with temporary ones, and it must parse with
the official meaning (a few values per command are checked against the official line itself); a few
run for real and must stop at the missing data folder with one line, no traceback. AdaFocus V1's
commands (Hydra ``key=value`` overrides; both trees' README commands as ``reference/v1/SPEC-V1.md`` §1
quotes them) are translated and parsed into the right variant, stage and flags, and each training stage's
equals its preset; a key or value that does not apply is refused in one line.
"""
from __future__ import annotations

import inspect
import os
import re
import shlex
import sys
from pathlib import Path

import pytest
import torch

import entry_points
from support import REPO, reference_dir, require_reference

import test_early_exit
from models import get_variant
from ops import config, flags
from ops import staged_training
from ops.official_commands import (DATA_PLACEHOLDER, FLAG_RELEASES, FLOAT16_TRAINING, OFFICIAL_SCRIPTS,
                                   OfficialCommandError, main, translate_command)
from ops.official_commands_v1 import HYDRA_SPAWN, STH_STAGES

SCRIPT_NAMES = {s.name for s in OFFICIAL_SCRIPTS}
#: READMEs in the papers folder read elsewhere: AdaFocus V1's top-level page quotes no command (its two trees'
#: README commands are quoted in reference/v1/SPEC-V1.md §1, read by the V1 tests below). The AdaFocusV2
#: README is read (its top-level page quotes no command; its ActivityNet-form commands are quoted in reference/v2).
OTHER_RELEASES = ("adafocusv1-readme.md",)
#: The AdaFocusV2 release's two forms (ActivityNet / FCVID / Mini-Kinetics; Something-Something / Jester).
V2_VARIANTS = ("adafocus_v2", "adafocus_v2_tsm")
#: A README token that lists alternatives: ``[something/somethingv2/jester]``.
ALTERNATIVES = re.compile(r"\[([^\[\]/\s]+(?:/[^\[\]/\s]+)+)\]")
DOCS = REPO / "docs" / "official-commands.md"
PROGRAM = re.compile(r"(^|\s)(python[0-9.]*|torchrun)\s")


def _invokes_official_script(text: str) -> bool:
    tokens = text.replace("\\\n", " ").split()
    return bool(PROGRAM.search(" " + text)) and any(t.rsplit("/", 1)[-1] in SCRIPT_NAMES for t in tokens)


def extract_commands(text: str):
    """``(line number, command)`` of every command line in a markdown text that runs an official script
    with python or torchrun: the logical lines of fenced code blocks (backslash continuations joined) and
    inline code spans elsewhere (kept as written, elision marks ``…`` included)."""
    found, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        if lines[i].lstrip().startswith("```"):
            i += 1
            while i < len(lines) and not lines[i].lstrip().startswith("```"):
                start, logical = i, lines[i]
                while logical.rstrip().endswith("\\") and i + 1 < len(lines):
                    i += 1
                    logical = logical.rstrip()[:-1] + " " + lines[i]
                if _invokes_official_script(logical):
                    found.append((start + 1, logical.strip()))
                i += 1
        else:
            for span in re.findall(r"`([^`]+)`", lines[i]):
                if _invokes_official_script(span):
                    found.append((i + 1, span))
        i += 1
    return found


def _official_sources():
    """The markdown files of the reference folder and of the papers folder beside it that may quote
    official commands of the releases built here."""
    root = reference_dir()
    files = [p for folder in (root, root / "tsm", root / "x3d", root / "v2") for p in sorted(folder.glob("*.md"))]
    papers = root.parent / "papers"
    files += [p for p in sorted(papers.glob("*.md")) if p.name not in OTHER_RELEASES]
    return files


def _tokens(command: str):
    return shlex.split(re.sub(r"\\\n", " ", command))


def expand_alternatives(command: str):
    """Every command a README line with ``[a/b/c]`` alternatives stands for (the line itself when it has none)."""
    match = ALTERNATIVES.search(command)
    if match is None:
        return [command]
    return [expanded for choice in match.group(1).split("/")
            for expanded in expand_alternatives(command[:match.start()] + choice + command[match.end():])]


def _shared_params():
    if not (reference_dir() / "make_parity_checkpoint.py").is_file():
        return [pytest.param(None, None, id="reference-folder-missing")]
    base = reference_dir().parent
    params = []
    for path in _official_sources():
        for line, template in extract_commands(path.read_text(encoding="utf-8")):
            expanded = expand_alternatives(template)
            for command in expanded:
                choice = "" if len(expanded) == 1 else "-" + "-".join(
                    t for t, u in zip(_tokens(command), _tokens(template)) if t != u)
                params.append(pytest.param(str(path.relative_to(base)), command,
                                           id=f"{path.relative_to(base)}:{line}{choice}"))
    return params


def documented_pairs():
    """``(line, official command, our command)`` of every pair quoted in docs/official-commands.md."""
    text = DOCS.read_text(encoding="utf-8")
    blocks = re.finditer(r"^(Official command|Our command):\n\n```\n(.*?)\n```", text, flags=re.M | re.S)
    pairs, official = [], None
    for block in blocks:
        if block.group(1) == "Official command":
            assert official is None, f"docs/official-commands.md:{official[0]}: an official command without ours"
            official = (text.count("\n", 0, block.start()) + 1, block.group(2))
        else:
            assert official is not None, f"a '{block.group(1)}' block without an 'Official command' block before it"
            pairs.append((official[0], official[1], block.group(2)))
            official = None
    return pairs


SHARED = _shared_params()
DOCUMENTED = documented_pairs()


def official_value(tokens, *flags):
    """The value of the first of ``flags`` in an official command's tokens (``--flag value`` or
    ``--flag=value``), None when absent."""
    for i, token in enumerate(tokens):
        name, _, value = token.partition("=")
        if name in flags:
            return value if value else tokens[i + 1]
    return None


def _with_paths(args, tmp_path: Path):
    """Our arguments with the official path placeholders replaced by temporary paths (the data folder
    is never created)."""
    paths = {"--data_dir": tmp_path / "missing-data", "--root_log": tmp_path / "log",
             "--root_model": tmp_path / "log", "--resume": tmp_path / "ckpt" / "official.pth.tar"}
    out = list(args)
    for i, token in enumerate(out[:-1]):
        if token in paths:
            out[i + 1] = str(paths[token])
    return out, paths


def _parser_for(script: str):
    return test_early_exit.get_args_parser() if script == "test_early_exit.py" else flags.get_args_parser()


def check_official_meaning(command: str, tmp_path: Path):
    """Translate, replace the paths, parse in-process, and compare values with the official line (an
    elided fragment, ``python -m torch.distributed.launch --nproc_per_node=4 … main.py``, as the flags
    it shows)."""
    command = command.replace("…", " ")
    translation = translate_command(command)
    if translation.official.form == "hydra":
        return check_v1_meaning(command)
    assert translation.script in ("main.py", "test_early_exit.py")
    args, paths = _with_paths(translation.args, tmp_path)
    parsed = config.parse_args(args, _parser_for(translation.script))
    official = _tokens(command)
    script = translation.official
    assert parsed.variant == script.variant
    frames = "num_segments"
    if script.variant == "adafocus_v2_tsm":  # its official --num_segments is G, with int(1.5 G) focus frames
        frames = "num_glance_segments"
        assert parsed.num_segments == parsed.num_focus_segments == int(1.5 * parsed.num_glance_segments)
        assert not parsed.amp  # the AdaFocusV2 Sth-Sth / Jester main.py trains in float32
    checks = {"patch_size": (int, ("--patch_size",)), "batch_size": (int, ("--batch_size", "--batch-size", "-b")),
              "lr": (float, ("--lr",)), "weight_decay": (float, ("--weight_decay", "--wd", "--weight-decay")),
              "num_segments": (int, ("--num_input_focus_segments",) + (("--num_segments",) if frames == "num_segments" else ())),
              "num_glance_segments": (int, ("--num_glance_segments",) + (("--num_segments",) if frames != "num_segments" else ())),
              "num_focus_segments": (int, ("--num_focus_segments",)), "norm_ratio": (float, ("--norm_ratio",)),
              "clip_gradient": (float, ("--gd", "--clip-gradient")), "dropout": (float, ("--dropout",)),
              "test_crops": (int, ("--test_crops",)), "glance_size": (int, ("--glance_size",))}
    for key, (kind, flags) in checks.items():
        value = official_value(official, *flags)
        if value is not None:
            assert getattr(parsed, key) == kind(value), (key, value)
    for flag in ("--data_dir", "--root_log", "--resume"):
        if official_value(official, flag) is not None:
            assert getattr(parsed, flag[2:]) == str(paths[flag])
    if official_value(official, "--root_model") is not None:  # accepted (with a warning): the run folder's root
        assert "root_model" in parsed.explicit and parsed.root_log == str(paths["--root_log"])
    if script.variant not in FLAG_RELEASES:
        assert parsed.dataset == official[official.index(next(t for t in official if t.endswith(".py"))) + 1]
        assert parsed.data_dir == str(paths["--data_dir"])
    if FLOAT16_TRAINING[0] in script.adds:
        assert parsed.amp and parsed.amp_dtype == "float16"
    if script.ours == "test_early_exit.py":
        if "--criterion" not in official:  # the script's own criteria (AdaFocusV2: confidence only)
            assert parsed.criterion == next(list(extra[1:]) for extra in script.adds if extra[0] == "--criterion")
    if script.name == "main_nViewEval.py" or "--evaluate" in official:
        assert parsed.evaluate
    return translation, args


def test_the_adafocus_v2_sources_are_read_and_the_v1_readme_is_not():
    require_reference()
    names = [p.name for p in _official_sources()]
    assert "adafocusv2-readme.md" in names and "SPEC-V2.md" in names and "adafocusv1-readme.md" not in names
    v2 = [p.values[1] for p in SHARED if p.values[0].startswith("reference/v2/")]
    assert not [p for p in SHARED if p.marks]
    assert any("main_v2.py" in c for c in v2) and any("test_early_exit.py" in c for c in v2)
    variants = {c: translate_command(c.replace("…", " ")).official.variant for c in v2}
    assert set(variants.values()) == set(V2_VARIANTS)
    sth = sorted(c for c, v in variants.items() if v == "adafocus_v2_tsm")
    assert all(" main.py " in c for c in sth) and len(sth) == 12  # 3 data sets x 4 patch sizes


def test_the_two_something_something_releases_are_told_apart_by_their_flags():
    """Uni-AdaFocus-TSM and AdaFocusV2 both run ``main.py something RGB``: V2's parser has none of the
    Uni-AdaFocus-TSM flags, and V2's frame count is --num_segments; a command with neither names its variant."""
    v2 = translate_command("python main.py jester RGB --num_segments=4 --patch_size 128")
    assert v2.official.variant == "adafocus_v2_tsm"
    assert v2.args[:6] == ["jester", "RGB", "--num_glance_segments", "4", "--num_segments", "6"]
    assert translate_command("python main.py something RGB --num_glance_segments 8").official.variant == "tsm"
    # a Uni-AdaFocus-TSM flag wins (its parser accepts --num_segments and never reads it; V2's refuses the other)
    assert translate_command("python main.py something RGB --num_segments 8 --norm_ratio 0.5").official.variant == "tsm"
    assert translate_command("python main.py something RGB --variant adafocus_v2_tsm").official.variant == \
        "adafocus_v2_tsm"
    with pytest.raises(OfficialCommandError, match="add --variant tsm or --variant adafocus_v2_tsm"):
        translate_command("python main.py something RGB --evaluate --resume ckpt.pth.tar")
    assert translate_command("python test_early_exit_uni_adafocus_tsm.py something RGB").official.variant == "tsm"


@pytest.mark.parametrize("source, command", SHARED)
def test_every_official_command_of_the_reference_folder_parses_with_its_meaning(source, command, tmp_path):
    require_reference()
    check_official_meaning(command, tmp_path)


@pytest.mark.parametrize("line, official, ours", DOCUMENTED, ids=[f"docs:{p[0]}" for p in DOCUMENTED])
def test_every_documented_command_parses_and_the_page_shows_our_translation(line, official, ours, tmp_path):
    translation, _ = check_official_meaning(official, tmp_path)
    assert _tokens(ours) == _tokens(translation.command()), f"docs/official-commands.md:{line}"


def _quoted(command: str, documented) -> bool:
    """Whether the page quotes a README line: the line itself or, for a line with ``[a/b/c]`` alternatives,
    some of the commands it stands for that together use every choice of every alternative."""
    expanded = [_tokens(c) for c in expand_alternatives(command)]
    quoted = [tokens for tokens in expanded if tokens in documented]
    template = _tokens(command)
    for i, token in enumerate(template):
        match = ALTERNATIVES.fullmatch(token)
        if match and set(match.group(1).split("/")) != {tokens[i] for tokens in quoted}:
            return False
    return bool(quoted)


def test_the_page_quotes_every_official_command_of_the_reference_folder():
    require_reference()
    documented = [_tokens(official) for _, official, _ in DOCUMENTED]
    def fragment(command):  # a script named without its flags ("the same arguments with `python X.py`")
        tokens = _tokens(command)
        return tokens[-1].endswith(".py") and any(t[:len(tokens)] == tokens or t[1:len(tokens) + 1] == tokens
                                                  for t in documented)

    base = reference_dir().parent
    missing = [f"{path.relative_to(base)}:{line}" for path in _official_sources()
               for line, command in extract_commands(path.read_text(encoding="utf-8"))
               if "…" not in command and not _quoted(command, documented) and not fragment(command)]
    # (an elided command is a fragment of a quoted one: `python -m torch.distributed.launch ... main.py`)
    assert not missing, f"official commands not quoted in docs/official-commands.md: {missing}"
    scripts = {(translate_command(o).official.name, translate_command(o).official.variant) for _, o, _ in DOCUMENTED}
    assert scripts == {(s.name, s.variant) for s in OFFICIAL_SCRIPTS}


def test_the_page_quotes_every_v1_readme_command_with_ours():
    require_reference()
    documented = [_tokens(o) for _, o, _ in DOCUMENTED]
    missing = [c for _, c in v1_readme_commands() if _tokens(c) not in documented]
    assert not missing, f"AdaFocus V1 README commands not quoted in docs/official-commands.md: {missing}"


@pytest.mark.parametrize("line, official, ours", [p for p in DOCUMENTED if "--multiprocessing-distributed" in p[1]][:2])
def test_the_launcher_flags_pasted_as_they_are_are_refused_in_one_line(line, official, ours, capsys):
    tokens = _tokens(official)
    script = next(i for i, t in enumerate(tokens) if t.endswith(".py"))
    with pytest.raises(SystemExit) as exc:
        config.parse_args(tokens[script + 1:], _parser_for(translate_command(official).script))
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "torchrun" in err[0] and "--nproc_per_node=NUM_GPUS" in err[0]


def test_launchers_become_torchrun():
    spawn = ("CUDA_VISIBLE_DEVICES=0,1 python main.py kinetics RGB --dist-url tcp://10.0.0.1:2345 --dist-backend nccl "
             "--multiprocessing-distributed --world-size 2 --rank 1 --patch_size 128")
    t = translate_command(spawn)
    assert t.env == ["CUDA_VISIBLE_DEVICES=0,1"]
    assert t.launcher == ["torchrun", "--nproc_per_node=2", "--nnodes=2", "--node_rank=1", "--master_addr=10.0.0.1",
                          "--master_port=2345"]
    assert t.args == ["kinetics", "RGB", "--patch_size", "128", "--amp", "--amp_dtype", "float16", "--data_dir",
                      DATA_PLACEHOLDER]
    t = translate_command("python main.py something RGB --multiprocessing-distributed --world-size 1 --rank 0")
    assert t.launcher == ["torchrun", "--nproc_per_node=NUM_GPUS"]
    t = translate_command("python -m torch.distributed.launch --nproc_per_node=1 main_semiAMP.py --amp_dtype bfloat16")
    assert t.launcher == ["python"] and t.args == ["--amp_dtype", "bfloat16", "--amp"]
    for bad, message in (("python main_nViewEval.py --dataset actnet", "not a script of the official mn2_r50"),
                         ("bash main.py", "starts with python or torchrun"), ("python -u", "expected the official")):
        with pytest.raises(OfficialCommandError, match=message):
            translate_command(bad)


def test_the_command_line_tool_prints_our_command():
    result = entry_points.run([sys.executable, "-m", "ops.official_commands",
                               "python main_nViewEval.py kinetics RGB --test_crops 3"], timeout=120)
    assert result.returncode == 0, result.stderr
    first = result.stdout.splitlines()[0]
    assert first == f"python main.py kinetics RGB --test_crops 3 --evaluate --data_dir {DATA_PLACEHOLDER}"
    result = entry_points.run([sys.executable, "-m", "ops.official_commands", "python nothing.py"], timeout=120)
    assert result.returncode == 1 and result.stderr.strip().splitlines() == [
        "official command: nothing.py: not a script of the official mn2_r50 release (its scripts: main.py, "
        "main_semiAMP.py, test_early_exit_uni_adafocus.py)"]


def _documented(script: str, variant: str):
    return next(o for _, o, _ in DOCUMENTED
                if translate_command(o).official.name == script and translate_command(o).official.variant == variant)


def test_official_commands_run_until_the_missing_data_folder(tmp_path):
    """One command per script kind, run as a user runs it (one process): each stops at the missing data
    folder with one line naming it. The early-exit scripts need a readable checkpoint first (an
    official-layout file without weights: the data is read before the model is built); tsm evaluates
    with --evaluate --resume added, as its README says."""
    cases = {"mn2_r50-train": _documented("main.py", "mn2_r50"),
             "mn2_r50-early-exit": _documented("test_early_exit_uni_adafocus.py", "mn2_r50"),
             "tsm-evaluate": _documented("main.py", "tsm") + " --evaluate --resume ckpt/sthv1.pth.tar",
             "x3d-3-view": _documented("main_nViewEval.py", "x3d"),
             "adafocus_v2-train": _documented("main_v2.py", "adafocus_v2"),
             "adafocus_v2_tsm-train": _documented("main.py", "adafocus_v2_tsm"),
             "adafocus_v1-stage0": _documented("main_dist.py", "adafocus_v1"),
             "adafocus_v1_tsm-evaluate": _documented("evaluate.py", "adafocus_v1_tsm")}
    commands, missing = [], {}
    for name, official in cases.items():
        folder = tmp_path / name
        translation = translate_command(official)
        args, paths = _with_paths(translation.args, folder)
        if translation.script == "test_early_exit.py":
            paths["--resume"].parent.mkdir(parents=True)
            torch.save({"epoch": 0, "state_dict": {}}, paths["--resume"])
        missing[name] = paths["--data_dir"]
        commands.append([sys.executable, translation.script] + args)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for name, result in zip(cases, entry_points.run_many(commands, env=env, timeout=300)):
        output = result.stdout + result.stderr
        assert result.returncode != 0 and "Traceback" not in output, f"{name}\n{output[-3000:]}"
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "not found" in errors[0] and str(missing[name]) in errors[0], f"{name}\n{output[-3000:]}"
        assert not missing[name].exists()


def test_main_py_refuses_adafocus_v2s_sth_command_given_to_it_untranslated(capsys):
    """``main.py something RGB --num_segments G ...`` is AdaFocusV2's command (its --num_segments is the glance
    count); run untranslated it would have built Uni-AdaFocus-TSM with G candidate frames."""
    from ops import config

    with pytest.raises(SystemExit) as stop:
        config.parse_args(["something", "RGB", "--num_segments", "8", "--patch_size", "144"])
    assert "this is AdaFocusV2's Sth-Sth command" in str(stop.value.code)
    assert "python -m ops.official_commands" in str(stop.value.code)
    tsm = config.parse_args(["something", "RGB", "--num_glance_segments", "8", "--num_segments", "36"])
    assert tsm.variant == "tsm"
    named = config.parse_args(["something", "RGB", "--variant", "adafocus_v2_tsm", "--num_segments", "12"])
    assert named.variant == "adafocus_v2_tsm"


# ------------------------------------------------------------------------------------------------
# AdaFocus V1: key=value commands (both trees' READMEs, quoted in reference/v1/SPEC-V1.md §1)
# ------------------------------------------------------------------------------------------------
HYDRA_SCRIPTS = {s.name for s in OFFICIAL_SCRIPTS if s.form == "hydra"}


def _script_of(command: str) -> str:
    return next(t for t in _tokens(command) if t.endswith(".py")).rsplit("/", 1)[-1]


def v1_readme_commands():
    """``(line, command)`` of every README command of both V1 trees that SPEC-V1.md §1 quotes (its inline
    code spans that run a V1 script), plus the two it states in words: the focus network's stage 0 (the
    glance network's with ``pretrain_glancer=false``) and the evaluation (the stage-3 command plus
    ``evaluate=true``)."""
    text = (reference_dir() / "v1" / "SPEC-V1.md").read_text(encoding="utf-8")
    section = text[:text.index("\n## 2.")]
    found = [(n, c) for n, c in extract_commands(section) if _script_of(c) in HYDRA_SCRIPTS]
    assert "the same with `pretrain_glancer=false`" in section and "plus `evaluate=true`" in section
    stage0 = next((n, c) for n, c in found if "train_stage=0" in c and "pretrain_glancer=true" in c)
    stage3 = next((n, c) for n, c in found if "main_dist.py" in c and "train_stage=3" in c)
    return found + [(stage0[0], stage0[1].replace("pretrain_glancer=true", "pretrain_glancer=false")),
                    (stage3[0], stage3[1] + " evaluate=true")]


def _v1_params():
    if not (reference_dir() / "v1" / "SPEC-V1.md").is_file():
        return [pytest.param(None, id="reference-folder-missing")]
    return [pytest.param(c, id=f"SPEC-V1.md:{n}-{_script_of(c)}-{i}") for i, (n, c) in enumerate(v1_readme_commands())]


V1_COMMANDS = _v1_params()
#: Keys whose value our flag of the same name takes, and their types (the official meaning: SPEC-V1.md §2).
V1_SAME = {"workers": int, "dropout": float, "patch_size": int, "glance_size": int, "eval_freq": int,
           "backbone_lr": float, "fc_lr": float, "lr_type": str, "hidden_dim": int, "action_dim": int,
           "policy_lr": float, "gamma": float, "print_freq": int}
#: The Something-Something training scripts' hand-over keys: the previous stage's checkpoint.
STH_HANDOVER = {"stage2.py": "pretrained", "stage3.py": "pretrained_s2"}


def _v1_with_paths(command: str, tmp_path: Path) -> str:
    """The command with every ``PATH_TO_*`` placeholder replaced by a temporary path of its own (the key in
    the name, so that each path can be followed to its flag; nothing is created)."""
    tokens = _tokens(command)
    for i, token in enumerate(tokens):
        key, _, value = token.partition("=")
        if value.startswith("PATH_TO_"):
            tokens[i] = f"{key}={tmp_path / key / 'file'}"
    return shlex.join(tokens)


def check_v1_meaning(command: str):
    """Translate a V1 command, parse ours with main.py's parser and compare it with the official keys."""
    translation = translate_command(command)
    args = config.parse_args(translation.args)
    tokens = _tokens(command)
    env = [t for t in tokens if t.startswith("CUDA_VISIBLE_DEVICES=")]
    values = dict(t.split("=", 1) for t in tokens[next(i for i, t in enumerate(tokens) if t.endswith(".py")) + 1:])
    script = translation.official
    evaluating = script.name == "evaluate.py" or values.get("evaluate", "false").lower() == "true"
    assert translation.script == "main.py" and args.variant == script.variant and args.evaluate == evaluating
    assert args.stage == (None if evaluating else int(values["train_stage"]))
    assert args.data_dir == values["data_dir"]
    if script.name in STH_STAGES:
        assert args.dataset == {"somethingv1": "something", "somethingv2": "somethingv2"}[values["dataset"]]
        assert args.num_glance_segments == int(values["num_segments_glancer"])
        assert args.num_segments == args.num_focus_segments == int(values["num_segments_focuser"])
        for key, kind in V1_SAME.items():
            if key in values:
                assert getattr(args, key) == kind(values[key]), key
        assert (args.epochs, args.lr_epochs) == (int(values["epochs"]) + 1, int(values["epochs"]))
        handover = values.get(STH_HANDOVER.get(script.name, ""))
        assert args.stage_checkpoint == ([handover] if handover else None) and args.resume == ""
        assert args.official_lr_groups  # the official optimiser's rates, as the released files were trained
        staged_training.check_flags(args)  # main.py's own check of the stage's hand-over flags
    elif script.name == "main_dist.py":
        assert args.dataset == values["dataset"]
        for key, kind in V1_SAME.items():
            if key in values:
                assert getattr(args, key) == kind(values[key]), key
        assert (args.epochs, args.lr_epochs) == (int(values["epochs"]) + 1, int(values["epochs"]))
        if "pretrain_glancer" in values:
            assert args.pretrain_glancer == (values["pretrain_glancer"] == "true")
        handover = [values[k] for k in ("pretrained_glancer", "pretrained_focuser", "resume") if k in values]
        if evaluating:
            assert args.resume == values["resume"] and args.stage_checkpoint is None
        else:
            assert args.stage_checkpoint == (handover or None) and args.resume == ""
            staged_training.check_flags(args)  # main.py's own check of the stage's hand-over flags
    else:  # evaluate.py
        assert args.dataset == {"somethingv1": "something", "somethingv2": "somethingv2"}[values["dataset"]]
        assert args.num_glance_segments == int(values["num_segments_glancer"])
        assert args.num_segments == args.num_focus_segments == int(values["num_segments_focuser"])
        assert (args.patch_size, args.glance_size, args.workers) == \
            (int(values["patch_size"]), int(values["glance_size"]), int(values["workers"]))
        assert args.resume == values["resume"]
    assert (args.val_batch_size if evaluating else args.batch_size) == int(values["batch_size"])
    gpus = len(env[0].split("=", 1)[1].split(",")) if env else None
    spawn = values.get("multiprocessing_distributed", HYDRA_SPAWN[script.name])
    if gpus == 1 or spawn.lower() == "false" and gpus is None:
        assert translation.launcher == ["python"]
    else:
        assert translation.launcher == ["torchrun", f"--nproc_per_node={gpus or 'NUM_GPUS'}"]
    return translation, args


@pytest.mark.parametrize("command", V1_COMMANDS)
def test_every_v1_readme_command_translates_with_its_meaning(command, tmp_path):
    require_reference()
    command = _v1_with_paths(command, tmp_path)
    translation, args = check_v1_meaning(command)
    if "pretrained_glancer" in command and "main_dist.py" in command:  # the glance's stage 0, then the focus's
        assert args.stage_checkpoint == [str(tmp_path / "pretrained_glancer" / "file"),
                                         str(tmp_path / "pretrained_focuser" / "file")]
    elif "pretrained_glancer" in command:  # stage1.py: the TSM repository's files start the two encoders
        assert (args.glance_weights, args.focus_weights) == (str(tmp_path / "pretrained_glancer" / "file"),
                                                             str(tmp_path / "pretrained_focuser" / "file"))
        assert not any("pretrained_" in n for n in translation.notes)


def test_the_v1_commands_cover_both_trees_and_the_stage_2_command_is_one_process():
    require_reference()
    commands = [c for _, c in v1_readme_commands()]
    assert sorted({_script_of(c) for c in commands}) == sorted(HYDRA_SCRIPTS)
    for script, stage in STH_STAGES.items():  # the Something-Something stages: main.py --stage N of its variant
        args = config.parse_args(translate_command(next(c for c in commands if _script_of(c) == script)).args)
        assert (args.variant, args.stage, args.evaluate) == ("adafocus_v1_tsm", stage, False)
    stages = sorted(int(t.split("=")[1]) for c in commands if "main_dist.py" in c and "evaluate=true" not in c
                    for t in _tokens(c) if t.startswith("train_stage="))
    assert stages == [0, 0, 1, 2, 3]
    stage2 = translate_command(next(c for c in commands if "main_dist.py" in c and "train_stage=2" in c))
    assert stage2.launcher == ["python"] and stage2.env == ["CUDA_VISIBLE_DEVICES=0"]
    assert stage2.args[stage2.args.index("--stage") + 1] == "2"


@pytest.mark.parametrize("dataset, patch, stage", [("actnet", 128, 0), ("fcvid", 160, 1), ("minik", 192, 2),
                                                   ("actnet", 160, 3)])
def test_a_translated_readme_command_is_its_preset(dataset, patch, stage):
    """The README command of a stage (another data set and patch size where the released files have them)
    translates to the flags of the preset configs/v1_{dataset}_p{P}_stage{N}.yaml (the official defaults of
    the keys it leaves out included), but for the paths."""
    require_reference()
    command = next(c for _, c in v1_readme_commands() if "main_dist.py" in c and f"train_stage={stage}" in c
                   and "evaluate=true" not in c and "pretrain_glancer=false" not in c)
    command = command.replace("dataset=actnet", f"dataset={dataset}").replace("patch_size=128", f"patch_size={patch}")
    ours = vars(config.parse_args(translate_command(command).args))
    preset = vars(config.parse_args(["--config", str(REPO / "configs" / f"v1_{dataset}_p{patch}_stage{stage}.yaml")]))
    # a model size no flag sets (None) is the model's default, the official one (action_dim 49, ...)
    built = {k: p.default for k, p in inspect.signature(get_variant("adafocus_v1").build).parameters.items()}
    ours = {k: built[k] if v is None and k in built else v for k, v in ours.items()}
    ignored = {"config", "explicit", "data_dir", "stage_checkpoint"}
    assert {k: v for k, v in ours.items() if k not in ignored} == {k: v for k, v in preset.items() if k not in ignored}


def _sth_readme_command(stage: int, dataset: str, patch: int) -> str:
    command = next(c for _, c in v1_readme_commands() if _script_of(c) == f"stage{stage}.py")
    return command.replace("dataset=somethingv1", f"dataset={dataset}").replace("patch_size=144", f"patch_size={patch}")


@pytest.mark.parametrize("stage", (1, 2, 3))
@pytest.mark.parametrize("dataset, patch", [("sthv1", 144), ("sthv1", 176), ("sthv2", 160)])
def test_a_translated_sth_readme_command_is_its_preset(stage, dataset, patch):
    """The Something-Something README command of a stage (the other data set and patch sizes of the released
    files too) translates to the flags of configs/v1_{sthv1,sthv2}_p{P}_stage{N}.yaml, but for the paths."""
    require_reference()
    official = {"sthv1": "somethingv1", "sthv2": "somethingv2"}[dataset]
    ours = vars(config.parse_args(translate_command(_sth_readme_command(stage, official, patch)).args))
    # stage 1's TSM files are paths, as the hand-over of stages 2 and 3 (the presets leave them to the command line)
    files = ("PATH_TO_PRETRAINED_GLANCER", "PATH_TO_PRETRAINED_FOCUSER") if stage == 1 else (None, None)
    assert (ours.pop("glance_weights"), ours.pop("focus_weights")) == files
    preset = vars(config.parse_args(["--config", str(REPO / "configs" / f"v1_{dataset}_p{patch}_stage{stage}.yaml")]))
    assert (preset.pop("glance_weights"), preset.pop("focus_weights")) == (None, None)
    built = {k: p.default for k, p in inspect.signature(get_variant("adafocus_v1_tsm").build).parameters.items()}
    ours = {k: built[k] if v is None and k in built else v for k, v in ours.items()}
    preset = {k: built[k] if v is None and k in built else v for k, v in preset.items()}
    ignored = {"config", "explicit", "data_dir", "stage_checkpoint"}
    assert {k: v for k, v in ours.items() if k not in ignored} == {k: v for k, v in preset.items() if k not in ignored}


V1_STAGE1 = ("python main_dist.py dataset=actnet train_stage=1 random_patch=true patch_size=128 "
             "pretrained_glancer=g.pth.tar pretrained_focuser=f.pth.tar")
V1_EVALUATE = "python evaluate.py dataset=somethingv1 ppo_continuous=True patch_size=144 resume=s.pth.tar"
V1_STH2 = "python stage2.py dataset=somethingv1 train_stage=2 action_std=0.25 pretrained=s1.pth.tar"


@pytest.mark.parametrize("command, message", [
    (V1_STAGE1 + " patchsize=96", "main_dist.py: unknown key 'patchsize' (the closest known key: patch_size)"),
    (V1_EVALUATE + " num_segment_glancer=8",
     "evaluate.py: unknown key 'num_segment_glancer' (the closest known key: num_segments_glancer)"),
    (V1_STAGE1 + " --patch_size 96", "main_dist.py: '--patch_size' is not a key=value override"),
    (V1_STAGE1 + " consensus=fc", "consensus=fc: the linear classifier (consensus=fc) is not built"),
    (V1_STAGE1 + " policy_conv=false", "policy_conv=false: the MLP state encoder"),
    (V1_STAGE1.replace("random_patch=true", "random_patch=false"), "random_patch=false with train_stage=1: here"),
    (V1_STAGE1.replace(" random_patch=true", ""), "random_patch not given: the official configuration's "
                                                  "random_patch=false; random_patch=false with train_stage=1"),
    (V1_STAGE1.replace("train_stage=1", "train_stage=4"), "train_stage=4: main_dist.py trains train_stage=0, 1, 2 or 3"),
    (V1_STAGE1.replace("train_stage=1 random_patch=true", "train_stage=2 random_patch=false"),
     "pretrained_glancer: the stage-0 checkpoint that "
                                                          "train_stage=1 starts from"),
    (V1_STAGE1 + " resume=x.pth.tar", "resume=x.pth.tar with train_stage=1: the official resume is the previous"),
    (V1_STAGE1.replace("dataset=actnet", "dataset=kinetics"), "dataset=kinetics: main_dist.py reads actnet, fcvid, minik"),
    (V1_STAGE1 + " with_glancer=maybe", "with_glancer=maybe: expected true or false"),
    (V1_STAGE1 + " epochs=ten", "epochs=ten: expected a whole number"),
    (V1_STAGE1 + " save_meta=true", "save_meta=true: a data-set option the official code leaves inert"),
    (V1_STAGE1 + " --config-name stage1", "--config-name stage1: main_dist.py reads conf/default.yaml"),
    (V1_EVALUATE.replace(" ppo_continuous=True", ""), "ppo_continuous not given: the official configuration's "
                                                      "ppo_continuous=false; ppo_continuous=false: main.py builds"),
    (V1_EVALUATE + " video_div=2", "video_div=2: one policy step per video is built"),
    (V1_EVALUATE + " actorcritic_with_bn=False", "actorcritic_with_bn=False: main.py builds the README's policy"),
    (V1_EVALUATE + " random_patch=True", "random_patch=True with the evaluation: here stages 0 and 1"),
    (V1_EVALUATE.replace("somethingv1", "something"), "dataset=something: evaluate.py reads somethingv1, somethingv2"),
    (V1_STH2.replace("train_stage=2", "train_stage=3"), "train_stage=3: stage2.py trains stage 2"),
    (V1_STH2.replace(" action_std=0.25", ""), "action_std not given: the official configuration's action_std=0.1; "
                                               "action_std=0.1: the Gaussian policy's standard deviation"),
    (V1_STH2 + " random_patch=True", "random_patch=True with train_stage=2: here"),
    (V1_STH2 + " evaluate=True", "evaluate=True: the training scripts train here; the evaluation is evaluate.py's"),
    (V1_STH2.replace("stage2.py", "stage3.py").replace("pretrained=", "pretrained_s="),
     "stage3.py: unknown key 'pretrained_s' (the closest known key: pretrained_s2)"),
    ("python stage3.py load_pretrained_s2_fc=False", "load_pretrained_s2_fc=False: stage 3 takes the stage-2"),
    ("python stage1.py start_eval=5", "start_eval=5: validation runs every --eval_freq epochs from the first"),
    ("python stage1.py dataset=something", "dataset=something: stage1.py reads somethingv1, somethingv2"),
])
def test_v1_commands_with_unknown_keys_or_wrong_values_are_refused_in_one_line(command, message):
    with pytest.raises(OfficialCommandError) as refused:
        translate_command(command)
    assert str(refused.value).startswith(message) and "\n" not in str(refused.value)


def test_v1_keys_accepted_at_their_only_value_and_dropped_keys_are_named(capsys):
    translation = translate_command(V1_STAGE1 + " consensus=gru policy_conv=true feature_map_channels=1280 arch=x "
                                    "num_classes=7 amp=true lr_steps=[20,40]")
    assert translation.args[translation.args.index("--lr_steps") + 1:][:2] == ["20", "40"]
    for dropped in ("arch", "num_classes", "consensus", "policy_conv", "feature_map_channels", "amp"):
        assert f"--{dropped}" not in translation.args
    assert any(n.startswith("dropped: ") and "arch (" in n and "num_classes (" in n for n in translation.notes)
    assert any(n.startswith("amp=true: every stage trains in float32 here") for n in translation.notes)
    # the official defaults where ours differ are written out; the launcher: one process per listed GPU
    bare = translate_command("CUDA_VISIBLE_DEVICES=0,1,2 python main_dist.py train_stage=0")
    assert bare.launcher == ["torchrun", "--nproc_per_node=3"]
    assert bare.args == ["--stage", "0", "--epochs", "51", "--lr_epochs", "50", "--batch_size", "64", "--data_dir",
                         DATA_PLACEHOLDER, "--patch_size", "96", "--dropout", "0.5", "--eval_freq", "5", "--dataset",
                         "actnet", "--variant", "adafocus_v1"]
    parsed = config.parse_args(bare.args)
    assert (parsed.patch_size, parsed.dropout, parsed.eval_freq, parsed.batch_size) == (96, 0.5, 5, 64)
    single = translate_command("CUDA_VISIBLE_DEVICES=0,1 python main_dist.py train_stage=3 resume=s2.pth.tar "
                               "multiprocessing_distributed=false")
    assert single.launcher == ["torchrun", "--nproc_per_node=2"]  # official: one process over both (DataParallel)
    # a Something-Something stage left at its YAML: stage 3 at P = 160 with the step schedule, one process per GPU
    assert main(["python stage3.py dataset=somethingv1 pretrained_s2=s2.pth.tar"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == ("torchrun --nproc_per_node=NUM_GPUS main.py --dataset something --stage_checkpoint s2.pth.tar "
                          "--stage 3 --data_dir PATH_TO_DATASET --patch_size 160 --lr_type step --variant adafocus_v1_tsm")
    with pytest.raises(SystemExit) as stop:
        main(["python stage3.py train_stage=2"])
    assert str(stop.value.code) == ("official command: train_stage=2: stage3.py trains stage 3 (it asserts its own "
                                    "train_stage; stage N is stage{N}.py)")
