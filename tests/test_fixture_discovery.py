"""Any further fixture made like the reference ones runs too: the fixture-driven tests find their files by
globbing the reference folder and read everything else from the file.

The reference folder is mirrored into a temporary folder (symbolic links to its files), and every fixture
file gets a second name there (``parity_x.pt`` -> ``parity_x_copy.pt``, a manifest ``..._state_dict.json``
-> ``..._copy_state_dict.json``). pytest then runs against the mirror in a subprocess
(``UNIADAFOCUS_REFERENCE=<mirror>``, ``UNIADAFOCUS_REQUIRE_REFERENCE=1``):

* collecting the whole suite, every test whose id names a fixture file has the same id for the file's
  second name, and every fixture file is named by some test;
* running the second names' ids of the data and early-exit fixture tests, the manifest tests, and one
  parity test per variant (its whole forward), they pass (about a minute on two cores).
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from support import REPO, require_reference

#: The fixture files of each subfolder of the reference folder ("" for the folder itself) that tests find by
#: globbing.
FIXTURE_GLOBS = {
    "": ("parity_*.pt", "early_exit_*.pt", "*_state_dict.json"),
    "tsm": ("parity_*.pt", "data_indices_*.pt", "early_exit_*.pt"),
    "x3d": ("parity_*.pt", "early_exit_*.pt", "*_state_dict.json"),
    "v2": ("parity_*.pt", "train_loss_*.pt", "early_exit_*.pt", "*_state_dict.json"),
    "v1": ("parity_*.pt", "ppo_update_*.pt", "*_state_dict.json"),
}
MANIFEST_SUFFIX = "_state_dict.json"

#: Run for every second-name id: the data and early-exit fixture tests (seconds).
CHEAP_MODULES = ("tests/test_data_tsm.py", "tests/test_early_exit_two_exits.py", "tests/test_early_exit_solver.py",
                 "tests/test_data_kinetics.py", "tests/test_early_exit_v2.py")
#: Run for every second-name id too: one parity test per variant (it runs the fixture's whole forward), the
#: manifest tests and one test of the weight files a manifest gives.
SELECTED_TESTS = (
    "tests/test_parity.py::test_frame_indices_match_exactly",
    "tests/test_parity.py::test_manifest_file_is_json_list",
    "tests/test_parity_tsm.py::test_frame_indices_match_exactly",
    "tests/test_parity_x3d.py::test_frame_indices_match_exactly",
    "tests/test_parity_v2.py::test_glance_features_maps_and_logits",
    "tests/test_parity_v2_sth.py::test_glance_stages_features_maps_and_heads",
    "tests/test_parity_v1.py::test_policy_encoder_gru_actor_and_actions",
    "tests/test_parity_v1_sth.py::test_glance_stages_maps_and_logits",
    "tests/test_ppo_v1.py::test_initial_weights_are_the_recorded_ones",
    "tests/test_parity_v2.py::test_our_manifest_equals_the_official_manifest",
    "tests/test_parity_v2_sth.py::test_our_manifest_equals_the_official_manifest",
    "tests/test_parity_v2.py::test_crop_gradient_unit_case_is_exact",
    "tests/test_x3d_backbone.py::test_state_dict_equals_the_manifest_key_for_key_in_order",
    "tests/test_x3d_backbone.py::test_x3d_s_reproduces_the_official_glance_outputs",
    "tests/test_x3d_backbone.py::test_generated_pyth_loads_strictly_with_every_tensor_equal",
)


def second_name(name: str) -> str:
    """The name a fixture file's second copy gets; it still matches the file's glob."""
    if name.endswith(MANIFEST_SUFFIX):
        return name[: -len(MANIFEST_SUFFIX)] + "_copy" + MANIFEST_SUFFIX
    stem, dot, suffix = name.rpartition(".")
    return f"{stem}_copy{dot}{suffix}"


@pytest.fixture(scope="module")
def mirror(tmp_path_factory):
    """(folder, {file name: second name}): the reference folder mirrored with links, each fixture file twice."""
    source = require_reference()
    target = tmp_path_factory.mktemp("reference")
    for path in sorted(source.rglob("*")):
        if path.is_file():
            link = target / path.relative_to(source)
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(path.resolve())
    names = {}
    for sub, globs in FIXTURE_GLOBS.items():
        for pattern in globs:
            for path in sorted((source / sub).glob(pattern)):
                (target / sub / second_name(path.name)).symlink_to(path.resolve())
                names[path.name] = second_name(path.name)
    assert names, f"no fixture file in {source}"
    return target, names


def _pytest(folder: Path, args: list, basetemp: Path, timeout: int) -> subprocess.CompletedProcess:
    env = dict(os.environ, UNIADAFOCUS_REFERENCE=str(folder), UNIADAFOCUS_REQUIRE_REFERENCE="1")
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", f"--basetemp={basetemp}", *args],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def _param_tokens(node_id: str) -> list:
    """The parameter ids of a test id (``test_x[a.pt-l]`` -> ``['a.pt', 'l']``)."""
    match = re.search(r"\[(.*)\]$", node_id)
    return match.group(1).split("-") if match else []


@pytest.fixture(scope="module")
def collected(mirror, tmp_path_factory):
    """Every test id of the suite collected against the mirror."""
    folder, _ = mirror
    run = _pytest(folder, ["--collect-only", "-q", "tests"], tmp_path_factory.mktemp("collect"), timeout=300)
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    ids = [line.strip() for line in run.stdout.splitlines() if "::" in line]
    assert ids, run.stdout[-2000:]
    return ids


def test_every_fixture_test_has_an_id_per_fixture_file(mirror, collected):
    folder, names = mirror
    ids = set(collected)
    missing = []
    for node_id in collected:
        tokens = _param_tokens(node_id)
        for i, token in enumerate(tokens):
            if token in names:
                twin = node_id[: node_id.index("[") + 1] + "-".join(tokens[:i] + [names[token]] + tokens[i + 1:]) + "]"
                if twin not in ids:
                    missing.append(f"{node_id} has no {twin}")
    assert not missing, "\n".join(missing[:20])
    named = {token for node_id in collected for token in _param_tokens(node_id)}
    unused = sorted(name for pair in names.items() for name in pair if name not in named)
    assert not unused, f"fixture files no test id names: {unused}"
    assert not [node_id for node_id in collected if any(t.startswith("no-") for t in _param_tokens(node_id))]


def test_the_second_names_pass_the_data_early_exit_manifest_and_one_parity_test_per_variant(mirror, collected,
                                                                                           tmp_path):
    folder, names = mirror
    seconds = set(names.values())
    chosen = [node_id for node_id in collected if seconds & set(_param_tokens(node_id))
              and (node_id.startswith(CHEAP_MODULES) or node_id.split("[")[0] in SELECTED_TESTS)]
    for test in SELECTED_TESTS:                     # each selected test found its second fixture file
        assert any(node_id.split("[")[0] == test for node_id in chosen), test
    for module in CHEAP_MODULES:
        assert any(node_id.startswith(module) for node_id in chosen), module
    run = _pytest(folder, ["-q", "-rs", *chosen], tmp_path / "run", timeout=600)
    summary = run.stdout.strip().splitlines()[-1] if run.stdout.strip() else ""
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
    passed = re.search(r"(\d+) passed", summary)
    assert passed and int(passed.group(1)) >= len(SELECTED_TESTS), summary
    assert "failed" not in summary and "error" not in summary, summary
