"""The project documents itself: no file points at documents outside the repository, and every
citation of ``docs/official-behaviour.md`` names one of its section headings; every command line of the
README and docs/ parses with its entry point's own parser, and those that need data or a GPU say so;
docs/layout.md names only what exists, and every module; the README's first screen runs what .ci/run
runs, and its table of contents lists every docs page."""
import argparse
import ast
import re
import subprocess

import pytest

from support import REPO

PAGE = "docs/official-behaviour.md"
SUFFIXES = (".py", ".md", ".yaml", ".sh", ".txt", ".ini")
OUTSIDE = re.compile(r"SPEC §|ECOSYSTEM §|SPEC\.md|ECOSYSTEM\.md|ANCHORS\.md|ARCHITECTURE\.md|"
                     r"shared/reference|shared/design|\.\./shared")
# The page's path, a comma and a quoted heading; possibly several: `, "A" and "B"` or `, "A", "B"`.
CITATION = re.compile(re.escape(PAGE) + r'((?:\s*(?:,|and)\s*"[^"\n]+")+)')


def _repository_files():
    """Tracked and untracked (not ignored) text files of the kinds checked, relative to the repo."""
    listing = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                             capture_output=True, text=True, check=True, timeout=60).stdout
    return sorted({p for p in listing.splitlines() if p.endswith(SUFFIXES) and (REPO / p).is_file()})


def _line_of(text, offset):
    return text.count("\n", 0, offset) + 1


def test_no_reference_outside_the_repository_and_every_citation_names_a_section():
    headings = {m.group(1).strip() for m in re.finditer(r"^## (.+)$", (REPO / PAGE).read_text(encoding="utf-8"),
                                                        flags=re.M)}
    outside, unknown = [], []
    for path in _repository_files():
        text = (REPO / path).read_text(encoding="utf-8", errors="replace")
        if not (path.startswith("tests/") or path == ".ci/run"):
            for m in OUTSIDE.finditer(text):
                outside.append(f"{path}:{_line_of(text, m.start())}: {m.group(0)!r}")
        for m in CITATION.finditer(text):
            for name in re.findall(r'"([^"\n]+)"', m.group(1)):
                if name not in headings:
                    unknown.append(f"{path}:{_line_of(text, m.start())}: {name!r}")
    problems = []
    if outside:
        problems.append("references to documents outside the repository (state the fact, or cite "
                        f"{PAGE} or the paper):\n  " + "\n  ".join(outside))
    if unknown:
        problems.append(f"citations of {PAGE} naming no heading of it (headings: {sorted(headings)}):\n  "
                        + "\n  ".join(unknown))
    assert not problems, "\n".join(problems)


# ------------------------------------------------------------------------------------------------
# Every command line of the README and docs/ parses with its entry point's own parser
# ------------------------------------------------------------------------------------------------
# Parsing is all these checks do: nothing runs, so a command may name data, checkpoints or GPUs that do
# not exist here. The commands that tests run for real, besides being parsed here:
# * the README's main job, `main.py --config configs/synthetic.yaml`, and its early-exit follow-up
#   sweep (`test_early_exit.py --config configs/synthetic.yaml ... --p_values ...`): tests/test_main_job.py (slow);
# * the README's test command: .ci/run (and the set-up commands before it);
# * docs/your-data.md's own-videos recipe (`datasets.extract`, then `main.py --dataset custom`):
#   tests/test_scripts.py;
# * docs/official-commands.md, every command on it, official and ours: translated and parsed by
#   tests/test_official_commands.py (that page is therefore left to it here), a few run to the data error;
# * each preset's resolution against its official command: tests/test_presets*.py, tests/test_v1_training.py;
# * docs/ablations.md's rows (`main.py --config configs/ablations/...`, inline on that page): each row file
#   trains a step and evaluates through main.py in tests/test_ablations.py; scripts.ablate in test_ablate.py.

#: Pages whose commands tests/test_official_commands.py translates and parses (official lines among them).
PARSED_ELSEWHERE = ("docs/official-commands.md",)
#: The marker of a command that cannot run out of the box: `# needs: WHAT` at the end of its line.
NEEDS = re.compile(r"#\s*needs:\s*\S")
#: Paths the documented commands may read that the main job (or the data it generates) writes.
MADE_BY_THE_MAIN_JOB = ("exp/synthetic", "data/synthetic")
#: Pages written to mark every command that needs data, a checkpoint or a GPU (the older pages predate it).
MARKED_PAGES = ("README.md", "docs/main-job.md", "docs/uni-adafocus.md", "docs/speed-and-gpu.md",
                "docs/reliability.md", "docs/early-exit.md", "docs/layout.md", "docs/metrics.md",
                "docs/your-data.md", "docs/flops.md", "docs/predict-and-visualize.md", "docs/differences.md",
                "docs/testing.md", "docs/family.md")
#: `python -m MODULE` lines that are not entry points of this repository.
OTHER_PROGRAMS = ("venv", "pip")
#: Flags of torchrun / torch.distributed.launch that take a value (the others are `--flag=value`).
LAUNCHER_VALUE_FLAGS = {"--nproc_per_node", "--nnodes", "--node_rank", "--master_addr", "--master_port",
                        "--rdzv_endpoint", "--rdzv_backend", "--rdzv_id"}


def documented_commands(text: str):
    """``(line number, logical line)`` of every fenced command line that starts a Python program: ``python``,
    ``python3``, ``.venv/bin/python`` or ``torchrun`` (after ``NAME=value`` environment settings),
    backslash continuations joined. Shell variables set on an earlier line of the same block
    (``P=configs/...``) are substituted."""
    found, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        if not lines[i].lstrip().startswith("```"):
            i += 1
            continue
        i, variables = i + 1, {}
        while i < len(lines) and not lines[i].lstrip().startswith("```"):
            start, logical = i, lines[i]
            while logical.rstrip().endswith("\\") and i + 1 < len(lines):
                i += 1
                logical = logical.rstrip()[:-1] + " " + lines[i]
            logical = logical.strip()
            assignment = re.fullmatch(r"([A-Za-z_][A-Za-z0-9_]*)=(\S+)", logical)
            if assignment:
                variables[assignment.group(1)] = assignment.group(2)
            for name, value in variables.items():
                logical = logical.replace("${%s}" % name, value)
            if re.match(r"(?:[A-Z_][A-Z0-9_]*=\S+\s+)*(?:python3?|\.venv/bin/python|torchrun)\s", logical):
                found.append((start + 1, logical))
            i += 1
        i += 1
    return found


def _alternatives(tokens):
    """Every token list a synopsis stands for: ``[--flag value]`` optional parts kept (brackets dropped),
    ``a|b|c`` choices expanded one per list, ``...`` elisions dropped."""
    lists = [[]]
    for token in tokens:
        if token in ("...", "…"):
            continue
        token = token.lstrip("[").rstrip("]")
        choices = token.split("|") if "|" in token and not token.startswith("-") else [token]
        lists = [done + [c] for done in lists for c in choices]
    return lists


def _program(tokens):
    """``(entry, arguments)``: entry is ``main.py``, ``test_early_exit.py``, ``-m MODULE`` or ``pytest``;
    launcher flags (torchrun, ``python -m torch.distributed.launch``) and environment settings skipped."""
    while re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S+", tokens[0]):
        tokens = tokens[1:]
    program, rest = tokens[0], tokens[1:]
    launched = program == "torchrun"
    if not launched and rest[:2] == ["-m", "torch.distributed.launch"]:
        launched, rest = True, rest[2:]
    if launched:
        while rest and rest[0].startswith("-"):
            rest = rest[2:] if rest[0] in LAUNCHER_VALUE_FLAGS else rest[1:]
        return rest[0], rest[1:]
    if rest[0] == "-m":
        return "-m " + rest[1], rest[2:]
    return rest[0], rest[1:]


class _Parsed(Exception):
    """Raised by the intercepted ``parse_args`` of an entry point whose parser lives inside its ``main``."""


def _parse_inside_main(main, argv):
    """Run ``main(argv)`` only as far as its own ``ArgumentParser.parse_args`` (the scripts that build their
    parser in ``main``): the parse happens for real, then stops the function."""
    from unittest import mock

    original = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        raise _Parsed(original(self, args, namespace))

    with mock.patch.object(argparse.ArgumentParser, "parse_args", parse_then_stop):
        try:
            main(argv)
        except _Parsed as parsed:
            return parsed.args[0]
    raise AssertionError("the entry point returned without parsing its arguments")


def parse_command(entry: str, argv):
    """Parse ``argv`` as ``entry`` would, with its own parser; nothing runs. Raises SystemExit on a bad flag."""
    import importlib

    from ops import config, flags

    if entry == "main.py":
        return config.parse_args(argv)
    if entry == "test_early_exit.py":
        import test_early_exit
        return test_early_exit.parse_args(argv)
    if entry == "-m pytest":
        return _check_pytest_arguments(argv)
    if entry == "-m ops.official_commands":
        from ops.official_commands import translate_command
        return translate_command(argv[0] if len(argv) == 1 else " ".join(argv))
    if not entry.startswith("-m "):
        raise AssertionError(f"{entry}: not an entry point of the repository (main.py, test_early_exit.py, "
                             "python -m MODULE)")
    module = importlib.import_module(entry[3:])
    own, extra = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    if extra:  # scripts.ablate: main.py's own flags after --
        flags.get_args_parser().parse_args(extra)
    if entry == "-m scripts.visualize":
        return config.parse_args(own, module.get_args_parser())
    for name in ("get_args_parser", "build_parser", "_build_parser"):
        if hasattr(module, name):
            return getattr(module, name)().parse_args(own)
    main = getattr(module, "main_cli", None) or getattr(module, "main")
    return _parse_inside_main(main, own)


def _check_pytest_arguments(argv):
    """``python -m pytest [-m MARK] [-k EXPR] [-x] [-q] [PATHS]``: the marks are pytest.ini's, the paths exist."""
    ini = (REPO / "pytest.ini").read_text(encoding="utf-8")
    marks = set(re.findall(r"^\s+([a-z_]+):", ini[ini.index("markers"):], flags=re.M))
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "-m":
            named = set(re.findall(r"[a-z_]+", argv[i + 1])) - {"not", "and", "or"}
            assert named <= marks, f"pytest -m {argv[i + 1]!r}: marks not in pytest.ini {sorted(marks)}"
            i += 2
            continue
        if arg == "-k":
            i += 2
            continue
        if arg.startswith("-"):
            assert arg in ("-x", "-q", "-v", "-ra"), f"pytest option {arg!r} not among those the docs use"
        else:
            assert (REPO / arg.split("::")[0]).exists(), f"pytest: {arg} does not exist"
        i += 1
    return argv


def _doc_pages():
    return ["README.md"] + sorted(f"docs/{p.name}" for p in (REPO / "docs").glob("*.md"))


def _every_documented_command():
    for page in _doc_pages():
        if page in PARSED_ELSEWHERE:
            continue
        for line, command in documented_commands((REPO / page).read_text(encoding="utf-8")):
            yield page, line, command


def test_every_documented_command_parses_with_its_entry_points_parser(capsys, monkeypatch):
    import shlex

    monkeypatch.chdir(REPO)  # the commands name presets relative to the repository root

    checked, problems = 0, []
    for page, line, command in _every_documented_command():
        tokens = shlex.split(command, comments=True)
        entry, arguments = _program(tokens)
        if entry.startswith("-m ") and entry[3:] in OTHER_PROGRAMS:
            continue
        for argv in _alternatives(arguments):
            try:
                parse_command(entry, argv)
            except SystemExit as exc:
                problems.append(f"{page}:{line}: {command}\n    -> {exc.code if isinstance(exc.code, str) else ''}"
                                f"{capsys.readouterr().err.strip()}")
            except Exception as exc:  # a translation error, an assertion of the pytest check, ...
                problems.append(f"{page}:{line}: {command}\n    -> {type(exc).__name__}: {exc}")
            checked += 1
    assert checked >= 40, f"only {checked} documented commands found"
    assert not problems, "documented commands that do not parse:\n" + "\n".join(problems)


def test_a_flag_that_does_not_exist_fails_the_parse(monkeypatch):
    """The check above can fail: a misspelt flag on each kind of entry point is a SystemExit."""
    monkeypatch.chdir(REPO)
    for entry, argv in (("main.py", ["--config", "configs/synthetic.yaml", "--no_such_flag"]),
                        ("test_early_exit.py", ["--budgett", "1"]),
                        ("-m scripts.predict", ["v.mp4", "--checkpoint", "c.pth", "--no_such_flag"]),
                        ("-m scripts.bench_gpu", ["--no_such_flag"]),
                        ("-m datasets.extract", ["a", "b", "--no_such_flag"]),
                        ("-m models.flops", ["--patch_sizes", "96"])):
        with pytest.raises(SystemExit):
            parse_command(entry, argv)
    commands = documented_commands("```\nP=configs/x\npython main.py --config ${P}.yaml \\\n    --epochs 2  # needs: DATA\n```\n")
    assert commands == [(3, "python main.py --config configs/x.yaml      --epochs 2  # needs: DATA")]
    assert _alternatives(["--a", "[--b", "x|y]", "..."]) == [["--a", "--b", "x"], ["--a", "--b", "y"]]


def _needs_a_marker(entry: str, tokens) -> list:
    """What a command reads that a fresh clone lacks: data folders, checkpoints, logits files (paths under
    the main job's output excepted) and CUDA devices."""
    needed = []
    if entry == "-m datasets.extract":  # its first argument is the videos to extract
        source = next(t for t in tokens[tokens.index("datasets.extract") + 1:] if not t.startswith("-"))
        if not (REPO / source).exists():
            needed.append(f"videos {source}")
    for flag in ("--data_dir", "--resume", "--checkpoint", "--logits", "--thresholds", "--stage_checkpoint"):
        if flag in tokens:
            path = tokens[tokens.index(flag) + 1]
            if path != "auto" and not path.startswith(MADE_BY_THE_MAIN_JOB) and not (REPO / path).exists():
                needed.append(f"{flag} {path}")
    if "--device" in tokens and tokens[tokens.index("--device") + 1] == "cuda":
        needed.append("--device cuda")
    return needed


def test_commands_that_need_data_or_a_gpu_say_so():
    """On the pages written with the marker, a command that reads what a fresh clone does not have (data,
    a checkpoint) ends with `# needs: WHAT` (a command may carry one for what this check cannot see: a GPU,
    video files given as positional arguments)."""
    import shlex

    problems = []
    for page in MARKED_PAGES:
        for line, command in documented_commands((REPO / page).read_text(encoding="utf-8")):
            tokens = shlex.split(command, comments=True)
            needed, marked = _needs_a_marker(_program(tokens)[0], tokens), bool(NEEDS.search(command))
            if needed and not marked:
                problems.append(f"{page}:{line}: reads {', '.join(needed)} without a `# needs: ...` marker")
    assert not problems, "\n".join(problems)


# ------------------------------------------------------------------------------------------------
# docs/layout.md names what exists, and every module
# ------------------------------------------------------------------------------------------------
LAYOUT = "docs/layout.md"
#: The packages whose every module docs/layout.md names.
PACKAGES = ("models", "ops", "datasets")
#: `models.policy.Policy`, `ops.early_exit.sweeps`, `scripts.predict`: a module, maybe with attributes after it.
DOTTED = re.compile(r"(?<![\w./-])((?:models|ops|datasets|scripts)(?:\.[A-Za-z_]\w*)+)")
#: `path/to/file.py` (also .sh, .yaml, .md) anywhere on the page.
PATH = re.compile(r"(?<![\w./-])((?:[\w-]+/)+[\w.-]+\.(?:py|sh|yaml|md))")
#: A bare file name in the folder tree, under the top-level folder of its block of lines.
BARE = re.compile(r"(?<![\w./-])(\w+\.(?:py|sh))\b")


def _resolve_dotted(name: str):
    """The module file a dotted name refers to (the longest prefix that is a module), and whether the rest
    of the name are attributes of it."""
    import importlib

    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        base = REPO.joinpath(*parts[:end])
        for candidate in (base.with_suffix(".py"), base / "__init__.py"):
            if candidate.is_file():
                obj = importlib.import_module(".".join(parts[:end]))
                for attr in parts[end:]:
                    if not hasattr(obj, attr):
                        return candidate, False
                    obj = getattr(obj, attr)
                return candidate, True
    return None, False


def _layout_names(text: str):
    """``(files named, problems)``: every file the page names (tree entries resolved under their top-level
    folder, paths, dotted module names) and the names that do not exist."""
    named, problems = set(), []
    for m in PATH.finditer(text):
        path = REPO / m.group(1)
        if path.is_file() or (REPO / "docs" / m.group(1)).is_file():
            named.add(path.resolve())
        else:
            problems.append(f"{m.group(1)}: no such file")
    for m in DOTTED.finditer(text):
        module, attributes_exist = _resolve_dotted(m.group(1))
        if module is None or not attributes_exist:
            problems.append(f"{m.group(1)}: no such module or attribute")
        else:
            named.add(module.resolve())
    tree = text[text.index("```") + 3:text.index("```", text.index("```") + 3)]
    folder = REPO
    for line in tree.splitlines():
        top = re.match(r"(\w+)/\s", line + " ")
        if top:
            folder = REPO / top.group(1)
        for m in BARE.finditer(line):
            if m.group(1) in {p.name for p in REPO.glob("*.py")} and not line.startswith(" "):
                named.add((REPO / m.group(1)).resolve())
                continue
            found = sorted(folder.rglob(m.group(1))) if folder != REPO else []
            if found:
                named.update(p.resolve() for p in found)
            else:
                problems.append(f"{m.group(1)}: not a file under {folder.relative_to(REPO)}/")
    return named, problems


def test_the_layout_page_names_what_exists_and_every_module():
    text = (REPO / LAYOUT).read_text(encoding="utf-8")
    named, problems = _layout_names(text)
    modules = sorted(p for package in PACKAGES for p in (REPO / package).rglob("*.py")
                     if p.name != "__init__.py" and "__pycache__" not in p.parts)
    unnamed = [str(p.relative_to(REPO)) for p in modules if p.resolve() not in named]
    assert not problems, f"{LAYOUT} names what does not exist:\n  " + "\n  ".join(problems)
    assert not unnamed, f"{LAYOUT} does not name these modules (add them to its folder tree):\n  " + "\n  ".join(unnamed)


def test_the_layout_check_catches_a_missing_module_and_a_wrong_name():
    named, problems = _layout_names("`models.no_such_module`, `ops.training.no_such_function`, `models/nope.py`\n"
                                    "```\nmodels/\n  no_such_file.py\n```\n")
    assert len(problems) == 4 and not named, problems


# ------------------------------------------------------------------------------------------------
# The README: the first screen, .ci/run's commands, the table of contents, links
# ------------------------------------------------------------------------------------------------
def _ci_commands(section: str):
    """The command lines .ci/run runs under its ``# README set-up`` / ``# README test command`` comment."""
    lines = (REPO / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    start = lines.index(f"# {section}") + 1
    block = []
    for line in lines[start:]:
        if not line.strip() or line.startswith("#"):
            break
        block.append(line.strip())
    return block


def test_the_readme_runs_what_ci_runs_within_the_first_screen():
    """The README's set-up and test commands are .ci/run's (which adds only pip's --quiet), and they and
    the main job's command are in the README's first 40 lines."""
    first_screen = (REPO / "README.md").read_text(encoding="utf-8").splitlines()[:40]
    commands = [c for _, c in documented_commands("\n".join(first_screen))] + [
        line.strip() for line in first_screen if line.startswith(".venv/bin/pip ")]
    setup, test = _ci_commands("README set-up"), _ci_commands("README test command")
    assert setup and test
    for line in setup + test:
        assert line.replace(" --quiet", "") in commands, (line, commands)
    assert ".venv/bin/python main.py --config configs/synthetic.yaml" in commands, commands


def test_every_docs_page_is_in_the_readme_contents_and_every_link_resolves():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    contents = readme[readme.index("## Documentation"):]
    pages = sorted(f"docs/{p.name}" for p in (REPO / "docs").glob("*.md"))
    missing = [p for p in pages if f"]({p})" not in contents]
    assert not missing, f"docs pages missing from the README's Documentation table: {missing}"
    broken = []
    for page in _doc_pages():
        text = (REPO / page).read_text(encoding="utf-8")
        for m in re.finditer(r"\]\(([^)\s#]+)(#[^)]*)?\)", text):
            target = m.group(1)
            if re.match(r"[a-z]+://", target):
                continue
            if not ((REPO / page).parent / target).exists():
                broken.append(f"{page}:{_line_of(text, m.start())}: {target}")
    assert not broken, "links to files that do not exist:\n  " + "\n  ".join(broken)


# ------------------------------------------------------------------------------------------------
# The layout page's data flow against the imports
# ------------------------------------------------------------------------------------------------
ARROW = re.compile(r"`([A-Za-z_][\w.]*)[^`]*`\s*→\s*`([A-Za-z_][\w.]*)[^`]*`")


def _module_path(dotted: str):
    """The longest prefix of ``dotted`` that is a module or package of the repository, as (name, file)."""
    parts = dotted.split(".")
    for end in range(len(parts), 0, -1):
        name = ".".join(parts[:end])
        for path in (REPO / (name.replace(".", "/") + ".py"), REPO / name.replace(".", "/") / "__init__.py"):
            if path.is_file():
                return name, path
    return None, None


def _imported_modules(name: str, path) -> set:
    """Every module ``path`` (module ``name``) imports: import statements (relative ones resolved), the
    packages ``ops.packages`` hands out and the ``sibling("...")`` look-ups ``ops`` uses for its neighbours."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[:len(package.split(".")) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            if node.module:  # `from . import x` imports x, not its whole package
                found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
            if module == "ops.packages":  # ops reaches the lower packages through it: `from .packages import models`
                found.update(alias.name for alias in node.names)
        elif (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "sibling" and node.args
              and isinstance(node.args[0], ast.Constant)):
            found.add(node.args[0].value)
    return found


def _arrow_problems(text: str):
    problems, pairs = [], ARROW.findall(text)
    for caller, callee in pairs:
        (caller_module, caller_path), (callee_module, _) = _module_path(caller), _module_path(callee)
        if caller_module is None or callee_module is None:
            problems.append(f"{caller} → {callee}: not a module of the repository")
        elif caller_module != callee_module and not any(
                callee_module == m or callee_module.startswith(m + ".")  # the module, or its package's exports
                for m in _imported_modules(caller_module, caller_path)):
            problems.append(f"{caller} → {callee}: {caller_module} does not import {callee_module}")
    return pairs, problems


def test_the_layout_pages_calls_are_imports_of_the_caller():
    """Each ``caller → callee`` of the data flow is backed by an import of the callee's module in the caller's."""
    pairs, problems = _arrow_problems((REPO / LAYOUT).read_text(encoding="utf-8"))
    assert len(pairs) >= 4, pairs
    assert not problems, f"{LAYOUT}:\n  " + "\n  ".join(problems)


def test_the_call_check_catches_a_call_without_an_import():
    _, problems = _arrow_problems("`ops.run_state.restore` → `datasets.synthetic.generate`\n")
    assert problems == ["ops.run_state.restore → datasets.synthetic.generate: ops.run_state does not import "
                        "datasets.synthetic"]
