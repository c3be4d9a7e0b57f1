"""AdaFocusV2's early exit (16 exits, one per frame): parity with the official solver.

Every ``early_exit_*.pt`` in the ``v2/`` subfolder of the reference folder is one case (the test ids name
the file). Each file describes itself: the inputs (threshold-set and evaluation logits (N, 16, C), the
official (N, 3) label lists), the configuration (glance architecture, patch size), the official per-frame
FLOPs table, and under ``runs['{dataset}/{criterion}']`` one official result per dataset metric (actnet:
mAP, minik: top-1) and criterion, with its own p grid (p/10 values). The sweep is the family's
``budget_sweep`` with V2's options: q_k proportional to r**(k + 1) (``first_power=1``), no random baseline,
the official mAP (absent classes count as zero), linear FLOPs from the official table.
"""
import sys

import numpy as np
import pytest
import torch

from models.adafocus_v2 import OFFICIAL_FLOPS_PER_FRAME, linear_exit_flops, official_flops_per_frame
from ops.early_exit import (LAST_STAGE_THRESHOLD, NO_EXIT_THRESHOLD, P_GRIDS, assign_exits, budget_sweep,
                            exit_scores)
from ops.early_exit.solver import exit_distribution_ratio
from support import REPO, fixture_params, require_fixture

#: The official metric of each dataset the runs are keyed by (SPEC: minik top-1, the others mAP).
DATASET_METRICS = {"actnet": "mAP", "fcvid": "mAP", "minik": "top1"}
#: The official per-frame table's spelling of the ResNet-50 glance.
OFFICIAL_ARCH = {"res50": "resnet50"}


def _table_entries(data):
    """The fixture's official FLOPs table: [(glance_arch, patch_size, GFLOPs or the error it records)]."""
    out = []
    for key, value in data["get_flops_per_frame"].items():
        arch, patch = key.split("/")
        out.append((OFFICIAL_ARCH.get(arch, arch), int(patch), value))
    return out


def _exit_flops(data):
    """(K,) float32 GFLOPs of every exit for the fixture's configuration: the official table's per-frame
    value (read from the file) times the frames seen."""
    config = data["config"]
    arch = OFFICIAL_ARCH.get(config["glance_arch"], config["glance_arch"])
    per_frame = dict(((a, p), v) for a, p, v in _table_entries(data))[(arch, int(config["patch_size"]))]
    return linear_exit_flops(per_frame, data["inputs"]["train_logits"].shape[1])


def _load(path):
    path = require_fixture(path)
    data = torch.load(path, weights_only=True)
    inputs = data["inputs"]
    flops = _exit_flops(data)
    first_power = P_GRIDS["v2"].first_power
    sweeps = {}
    for name, run in data["runs"].items():
        dataset, criterion = name.split("/")
        metric = DATASET_METRICS[dataset]
        sweeps[name] = budget_sweep(inputs["train_logits"], inputs["train_targets"], inputs["val_logits"],
                                    inputs["val_targets"], flops, criterion=criterion, metric=metric,
                                    p_values=[float(p) for p in run["p_values"]], p_scale=1.0,
                                    first_power=first_power, absent="zero", random_baseline=False)
    return data, sweeps


@pytest.fixture(scope="module", params=fixture_params("early_exit_*.pt", "v2"))
def case(request):
    """One V2 early-exit fixture and our sweeps of it, one per recorded run: (data, {run name: sweep})."""
    return _load(request.param)


def _stack(points, attr, dtype):
    return torch.tensor([getattr(pt, attr) for pt in points], dtype=dtype)


def test_registry_grid_is_the_files_grid(case):
    """``P_GRIDS['v2']`` (p = 5..39 over 10, what test_early_exit.py --variant adafocus_v2 sweeps) gives the
    same float32 ratios as the file's p/10 values, and has no random baseline."""
    data, _ = case
    grid = P_GRIDS["v2"]
    assert not grid.random_baseline and grid.first_power == 1
    for run in data["runs"].values():
        ours = [exit_distribution_ratio(p, grid.p_scale) for p in grid.p_values]
        ref = [exit_distribution_ratio(float(p)) for p in run["p_values"]]
        assert ours == ref


def test_probs_and_quotas(case):
    """q after the solver's second normalisation, bit for bit, and the float32 quotas floor(N q_k)."""
    data, sweeps = case
    for name, res in sweeps.items():
        run = data["runs"][name]
        assert torch.equal(_stack(res.points, "q", torch.float32), run["probs"].float()), name
        ours = [pt.quota[:-1] for pt in res.points]
        assert ours == [list(map(int, row)) for row in run["train_out_n"]], name


def test_float32_quota_case(case):
    """Where exact arithmetic would give another quota than float32 (e.g. N = 297, p/10 = 3.0, stage 13: 21
    officially, 22 exactly), ours is the official one. A file with no such case cannot tell and says so."""
    from fractions import Fraction

    data, sweeps = case
    n_train, k_stages = data["inputs"]["train_logits"].shape[:2]
    found = 0
    for name, res in sweeps.items():
        for pt, row in zip(res.points, data["runs"][name]["train_out_n"]):
            r = Fraction(str(pt.p))
            weights = [r ** (k + 1) for k in range(k_stages)]
            exact = [(n_train * w / sum(weights)).__floor__() for w in weights][:-1]
            if exact != list(row):
                found += 1
                assert pt.quota[:-1] == list(row), (name, pt.p)
    if not found:
        pytest.skip("no p of this file where float32 and exact quotas differ")


def test_thresholds_counts_and_stages(case):
    """Thresholds, exit counts and every evaluation sample's exit stage, exactly."""
    data, sweeps = case
    val_logits = data["inputs"]["val_logits"]
    for name, res in sweeps.items():
        run, criterion = data["runs"][name], name.split("/")[1]
        ours = _stack(res.points, "thresholds", torch.float64).float()
        ref = run["thresholds"].float()
        assert torch.equal(ours, ref), name
        assert (ref[:, -1] == LAST_STAGE_THRESHOLD).all()
        assert ((ours == NO_EXIT_THRESHOLD) == (ref == NO_EXIT_THRESHOLD)).all(), name
        assert torch.equal(_stack(res.points, "exit_counts", torch.float64), run["exit_counts"].double()), name
        scores = exit_scores(val_logits, criterion)
        stages = torch.stack([assign_exits(scores, torch.tensor(pt.thresholds)) for pt in res.points])
        assert torch.equal(stages, run["exit_stage"].long()), name


def test_expected_flops_and_metrics(case):
    data, sweeps = case
    for name, res in sweeps.items():
        run = data["runs"][name]
        assert res.flops_list == pytest.approx([float(f) for f in run["flops_list"]], rel=1e-6, abs=0), name
        assert res.metric_list == pytest.approx([float(m) for m in run["metric_list"]], rel=1e-5, abs=0), name
        assert res.last_stage_metric == pytest.approx(float(run["last_stage_metric"]), rel=1e-5, abs=0), name
        # what the official script prints: the last exit's metric, then "flops metric" per budget, 3 decimals
        # (half a printed unit plus the metric tolerance: a value on a rounding boundary may print either way)
        assert float(run["printed_header"][1].split(": ")[1]) == pytest.approx(res.last_stage_metric, rel=1e-5)
        ours = np.array([[pt.expected_gflops, pt.metric] for pt in res.points])
        printed = np.array([[float(a), float(b)] for a, b in run["printed_table"]])
        assert (np.abs(ours - printed) <= 5e-4 + 1e-5 * np.abs(printed)).all(), name


def test_exit_flops_are_linear_in_frames(case):
    """The official per-frame table is ours entry by entry (the entries the official raises for, ours refuses
    in one line), and exit k costs (k + 1) frames, rounded to float32 as officially."""
    data, _ = case
    for arch, patch, value in _table_entries(data):
        if isinstance(value, str):                      # 'raises ValueError' / 'raises IndexError'
            with pytest.raises(ValueError, match=f"patch_size={patch}"):
                official_flops_per_frame(arch, patch)
        else:
            assert official_flops_per_frame(arch, patch) == float(value) == OFFICIAL_FLOPS_PER_FRAME[arch][patch]
    flops = _exit_flops(data)
    for name, run in data["runs"].items():
        assert torch.equal(torch.tensor(flops, dtype=torch.float32), run["flops_exits"]), name
        total = float(run["printed_header"][0].split(": ")[1])     # "Flops Tot": all frames
        config = data["config"]
        assert total == pytest.approx(len(flops) * official_flops_per_frame(config["glance_arch"],
                                                                            int(config["patch_size"])), rel=1e-12)


def test_entropy_underflow_gets_an_exit():
    """Where a softmax entry underflows the official entropy is NaN and its fallback crashes (RuntimeError);
    here 0 log 0 counts as 0, the score stays finite and every sample gets an exit."""
    g = torch.Generator().manual_seed(0)
    train, val = torch.randn(40, 16, 5, generator=g), torch.randn(20, 16, 5, generator=g)
    val[:, :, 0] += 200.0                               # softmax entries exp(-200) underflow to 0
    scores = exit_scores(val, "entropy")
    assert torch.isfinite(scores).all()
    grid = P_GRIDS["v2"]
    res = budget_sweep(train, None, val, torch.zeros(20, dtype=torch.long), linear_exit_flops(1.0, 16),
                       criterion="entropy", metric="top1", p_values=grid.p_values, p_scale=grid.p_scale,
                       first_power=grid.first_power, random_baseline=False)
    assert all(sum(pt.exit_counts) == 20 for pt in res.points)
    assert all(pt.metric == 100.0 for pt in res.points)


def test_entry_point_sweeps_the_v2_grid(case, tmp_path):
    """``test_early_exit.py --logits`` on a cache of the variant adafocus_v2 sweeps its grid: the file's
    thresholds and expected FLOPs for every p."""
    import json
    import subprocess

    data, sweeps = case
    inputs = data["inputs"]
    name = next(n for n in data["runs"] if n.endswith("/confidence"))
    dataset = name.split("/")[0]
    metric = DATASET_METRICS[dataset]

    def split(logits, targets):
        labels = torch.zeros(targets.shape[0], logits.shape[2], dtype=torch.bool)
        rows, cols = (targets >= 0).nonzero(as_tuple=True)
        labels[rows, targets[rows, cols]] = True
        return {"logits": logits, "label": targets[:, 0], "labels": labels}

    folder = tmp_path / "run" / "early_exit"
    folder.mkdir(parents=True)
    cache = folder / "logits_v2.pt"
    torch.save({"version": 1, "metric": metric, "flops": _exit_flops(data), "exit_grid": "v2",
                "num_classes": inputs["val_logits"].shape[2],
                "threshold": split(inputs["train_logits"], inputs["train_targets"]),
                "eval": split(inputs["val_logits"], inputs["val_targets"])}, cache)
    subprocess.run([sys.executable, "test_early_exit.py", "--logits", str(cache), "--criterion", "confidence",
                    "--absent_classes", "zero"], cwd=REPO, check=True, capture_output=True)
    written = json.loads((folder / "confidence.json").read_text())
    run = data["runs"][name]
    assert [pt["p"] / P_GRIDS["v2"].p_scale for pt in written["points"]] == [float(p) for p in run["p_values"]]
    assert written["first_power"] == 1 and written["seed"] is None
    assert np.array_equal(np.array([pt["thresholds"] for pt in written["points"]], dtype=np.float32),
                          run["thresholds"].numpy())
    assert [pt["expected_gflops"] for pt in written["points"]] == pytest.approx(
        [float(f) for f in run["flops_list"]], rel=1e-6, abs=0)
    assert [pt["metric"] for pt in written["points"]] == pytest.approx(
        [float(m) for m in run["metric_list"]], rel=1e-5, abs=0)
