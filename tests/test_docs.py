"""The project documents itself: no file points at documents outside the repository, and every
citation of ``docs/official-behaviour.md`` names one of its section headings."""
import re
import subprocess

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
