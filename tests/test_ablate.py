"""The ablation harness (scripts/ablate.py) and Table 10's removals of dynamic computation (--remove_dynamics)."""
import argparse
import json
import os
import re

import pytest
import torch
import torch.nn.functional as F
import yaml

import test_early_exit
from models import frame_selection, uni_adafocus_outputs
from ops import config, early_exit, flags, policy_ablation
from ops.run_log import RunLog
from scripts import ablate
from support import REPO, random_video, tiny_model

#: The sizes tests/test_main.py and tests/test_policy_ablation.py use.
TINY_BASE = {"num_segments": 8, "num_glance_segments": 4, "num_focus_segments": 2, "input_size": 64, "patch_size": 32,
             "focus_arch": "resnet18", "classifier_dim": 32, "stn_hidden_dim": 16, "temporal_hidden_dim": 8,
             "pretrained": False, "workers": 0, "device": "cpu", "tensorboard": False, "num_visualised": 0,
             "batch_size": 4, "val_batch_size": 3, "epochs": 1, "dataset": "synthetic",
             "synthetic": {"train_videos": 8, "val_videos": 5, "frames_per_video": 10, "frame_size": 64,
                           "num_classes": 4, "twin_classes": 1}}


def _row(folder, name, label, paper, **flags):
    table = name.split("-")[0][len("table"):]
    body = f"# Table {table}: {label}\n# paper: {paper}\nbase: ../base.yaml\n"
    if flags:
        body += yaml.safe_dump(flags)
    (folder / f"{name}.yaml").write_text(body, encoding="utf-8")


# ------------------------------------------------------------------------------------------------
# The harness
# ------------------------------------------------------------------------------------------------
def test_dry_run_lists_table10s_rows_and_one_model_per_seed(capsys, tmp_path):
    status = ablate.main(["--tables", "10", "--base", "configs/synthetic.yaml", "--seeds", "3", "4", "--out",
                          str(tmp_path / "out"), "--dry_run", "--", "--epochs", "1"])
    lines = capsys.readouterr().out.splitlines()
    assert status == 0 and not (tmp_path / "out").exists()  # nothing written
    documented = re.findall(r"configs/ablations/(table10-[a-z-]+)\.yaml", (REPO / "docs/ablations.md").read_text())
    assert len(documented) == 8 and documented[0] == "table10-remove-all" and documented[-1] == "table10-remove-none"
    trainings = [line for line in lines if ": training: " in line]
    evaluations = [line for line in lines if ": evaluation " in line]
    assert len(trainings) == 2 and len(evaluations) == 16  # one model per seed, each evaluated with every row
    for seed, block in ((3, evaluations[:8]), (4, evaluations[8:])):
        assert [re.search(r"--eval_suffix (\S+)", line).group(1) for line in block] == [d[len("table10-"):]
                                                                                      for d in documented]
        assert all(f"seed{seed}/ckpt.pth.tar" in line and line.endswith("--epochs 1") for line in block)
    assert all(line.endswith("ablation.yaml --epochs 1") for line in trainings)


@pytest.mark.parametrize("table", ablate.TABLES)
def test_dry_run_lists_the_rows_of_each_table(capsys, tmp_path, table):
    rows_dir = tmp_path / "ablations"
    rows_dir.mkdir()
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(TINY_BASE))
    _row(rows_dir, f"table{table}-first-row", "first", "1.0% 2.0%", lr=0.01)
    _row(rows_dir, f"table{table}-second-row", "second", "3.0%", remove_dynamics=["temporal"])
    _row(rows_dir, f"table{99 if table != 99 else 98}-other", "other", "4.0%")  # another table's row: not listed
    assert ablate.main(["--tables", str(table), "--rows_dir", str(rows_dir), "--out", str(tmp_path / "o"),
                        "--dry_run"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("2 rows, 1 seed(s): 2 trained models, 3 step(s) to run (dry run)")
    assert f"table{table} first-row seed 1007: training: " in out
    assert re.search(rf"table{table} model-[0-9a-f]{{8}} seed 1007: evaluation second-row: .* --evaluate --resume "
                     rf"\S+/table{table}/model-[0-9a-f]{{8}}/seed1007/ckpt.pth.tar --eval_suffix second-row", out)
    assert "other" not in out


def test_bad_table_row_and_config_each_get_one_line(tmp_path):
    for argv, message in ((["--tables", "12"], "--tables 12: the paper's ablation tables are 6, 7, 8, 9, 10, 11, 15"),
                          (["--rows", "table10-nope"], "--rows table10-nope: no row file in configs/ablations"),
                          (["--tables", "10", "--base", "missing.yaml"], "--base missing.yaml: configuration file "
                                                                         "not found"),
                          ([], "give --tables N ... and/or --rows GLOB ...")):
        with pytest.raises(SystemExit, match=re.escape(message)):
            ablate.main(argv + ["--dry_run"])
    rows_dir = tmp_path / "ablations"
    rows_dir.mkdir()
    (rows_dir / "table9-bad.yaml").write_text("base: ../base.yaml\n")
    with pytest.raises(SystemExit, match=r"table9-bad.yaml:1: a row file starts with '# Table 9: <the row>'"):
        ablate.main(["--tables", "9", "--rows_dir", str(rows_dir), "--dry_run"])
    _row(rows_dir, "table9-bad", "row", "1%")
    with pytest.raises(SystemExit, match=r"base.yaml: configuration file not found"):
        ablate.main(["--tables", "9", "--rows_dir", str(rows_dir), "--dry_run"])


def test_a_rows_own_flags_apply_on_another_base():
    """A Table 10 row builds on Table 9's full model (no reuse of e^G): its flags are that row's and its own."""
    row = ablate.read_row(str(REPO / "configs/ablations/table10-remove-spatial-samplewise.yaml"))
    assert row.flags == {"reuse_glance_features": False, "remove_dynamics": ["spatial", "samplewise"]}
    assert row.base.endswith("configs/actnet_p128.yaml")
    base = config.load_config_file(str(REPO / "configs/synthetic.yaml"), flags.get_args_parser())
    merged = ablate.merged_config(row, str(REPO / "configs/synthetic.yaml"))
    assert merged == {**base, "reuse_glance_features": False, "remove_dynamics": ["spatial", "samplewise"]}
    own = ablate.merged_config(row, None)  # the row's own base
    assert own["dataset"] == "actnet" and own["patch_size"] == 128 and own["remove_dynamics"] == ["spatial", "samplewise"]


def test_rows_building_on_a_row_inherit_its_flags_and_epochs_scale_to_another_base(tmp_path, capsys):
    """Tables 10, 11 and 15 build on Table 9's full model; a row's epochs: is a fraction of its preset's,
    which another --base scales (rounded, at least 1), as the dry run says."""
    for table in (10, 11, 15):
        for path in sorted((REPO / "configs/ablations").glob(f"table{table}-*.yaml")):
            assert re.search(r"^base: table9-dynamic-ours\.yaml$", path.read_text(), re.M), path.name
            assert ablate.read_row(str(path)).flags["reuse_glance_features"] is False, path.name
    rows_dir = tmp_path / "ablations"
    rows_dir.mkdir()
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(dict(TINY_BASE, epochs=50)))
    (tmp_path / "other.yaml").write_text(yaml.safe_dump(dict(TINY_BASE, epochs=12)))
    _row(rows_dir, "table9-full", "full", "1.0%", reuse_glance_features=False, lr=0.01)
    (rows_dir / "table15-short.yaml").write_text("# Table 15: short\n# paper: 2.0%\nbase: table9-full.yaml\nepochs: 32\n"
                                                  "lr: 0.02\n")
    (rows_dir / "table15-tiny.yaml").write_text("# Table 15: tiny\n# paper: 3.0%\nbase: table9-full.yaml\nepochs: 1\n")
    short = ablate.read_row(str(rows_dir / "table15-short.yaml"))
    assert short.flags == {"reuse_glance_features": False, "lr": 0.02, "epochs": 32}
    assert short.base == str(tmp_path / "base.yaml")
    assert ablate.merged_config(short, None)["epochs"] == 32  # on its own preset: as written
    assert ablate.merged_config(short, str(tmp_path / "other.yaml"))["epochs"] == 8  # 32 / 50 x 12 = 7.68
    assert ablate.merged_config(ablate.read_row(str(rows_dir / "table15-tiny.yaml")), str(tmp_path / "other.yaml"))[
        "epochs"] == 1  # 1 / 50 x 12 rounds to 0: at least 1
    assert ablate.main(["--tables", "15", "--rows_dir", str(rows_dir), "--base", str(tmp_path / "other.yaml"),
                        "--out", str(tmp_path / "o"), "--dry_run"]) == 0
    out = capsys.readouterr().out
    assert "table15-short: epochs 32 of its preset's 50 -> 8 of --base's 12" in out
    assert "table15-tiny: epochs 1 of its preset's 50 -> 1 of --base's 12" in out
    (rows_dir / "table9-loop.yaml").write_text("# Table 9: loop\n# paper: 1.0%\nbase: table9-loop.yaml\n")
    with pytest.raises(SystemExit, match=r"table9-loop.yaml: base: table9-loop.yaml leads back to this row"):
        ablate.read_row(str(rows_dir / "table9-loop.yaml"))


def test_two_rows_end_to_end_and_a_second_invocation_reuses_the_runs(tmp_path, capsys):
    rows_dir = tmp_path / "ablations"
    rows_dir.mkdir()
    base = dict(TINY_BASE, data_dir=str(tmp_path / "data"))
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    _row(rows_dir, "table9-uniform", "Uniform Sampling", "1.5% 2.5%", lr=0.001)
    _row(rows_dir, "table10-remove-samplewise", "sample-wise ✗", "at 1, 2 GFLOPs/video: 62.6% (±7.0%) 67.5% (±6.8%)",
         remove_dynamics=["samplewise"])
    out = tmp_path / "out"
    argv = ["--rows", "table9-uniform", "table10-*", "--rows_dir", str(rows_dir), "--out", str(out), "--seeds", "5"]
    assert ablate.main(argv) == 0
    first = capsys.readouterr().out
    assert "3 step(s) to run" in first and first.count(" done in ") == 3
    tables = (out / "tables.md").read_text()
    results = json.loads((out / "tables.json").read_text())
    assert (out / "table9.png").stat().st_size > 0 and (out / "table10.png").stat().st_size > 0
    by_row = {r["row"]: r for r in results["rows"]}
    assert list(by_row) == ["table9-uniform", "table10-remove-samplewise"] and results["seeds"] == [5]
    frames, gflops = by_row["table9-uniform"], by_row["table10-remove-samplewise"]
    assert frames["form"] == "frames" and frames["columns"] == [1, 2] and frames["paper"] == [1.5, 2.5]
    assert gflops["form"] == "gflops" and len(gflops["columns"]) == 6 and gflops["paper"] == [62.6, 67.5]
    assert all(cell["mean"] is not None and 0 <= cell["mean"] <= 100 for r in (frames, gflops) for cell in r["cells"])
    assert "| row | t = 1 | t = 2 | paper | wall time |" in tables
    assert re.search(r"\| row \| (\S+ GFLOPs \| ){6}paper \| wall time \|", tables)
    assert "| Uniform Sampling (`table9-uniform`) |" in tables and "| 1.5 / 2.5 |" in tables
    # The run's configuration: the row's flags on the base, its seed and run folder.
    run9 = out / "table9" / "uniform" / "seed5"
    written = yaml.safe_load((run9 / "ablation.yaml").read_text())
    assert written == {**config.load_config_file(str(tmp_path / "base.yaml"), flags.get_args_parser()), "lr": 0.001,
                       "seed": 5, "root_log": str(out / "table9" / "uniform"), "store_name": "seed5"}
    assert yaml.safe_load((run9 / "config.yaml").read_text())["lr"] == 0.001
    model = next((out / "table10").glob("model-*/seed5"))
    evaluated = json.loads((model / "metrics_remove-samplewise.json").read_text())["metrics"]["dynamics_ablation"]
    assert evaluated["removed"] == ["samplewise"] and evaluated["metric"] == gflops["per_seed"]["5"]
    # A second invocation runs nothing and rewrites nothing of the runs.
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.suffix in (".tar", ".json", ".txt")
              and p.parent != out}
    assert ablate.main(argv) == 0
    second = capsys.readouterr().out
    assert "0 step(s) to run" in second and "finished run reused" in second and "evaluation remove-samplewise reused" in second
    assert " done in " not in second
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert (run9 / "ablate.log").read_text().count("---- scripts/ablate.py ") == 1  # main.py ran once
    # --report_only with a seed that has no run: the tables of what is there, nothing trained.
    assert ablate.main(argv[:-1] + ["5", "6", "--report_only"]) == 0
    third = capsys.readouterr().out
    assert "2 rows, 2 seed(s): 4 trained models, 3 step(s) left out (--report_only)" in third and " done in " not in third
    assert not (out / "table9" / "uniform" / "seed6").exists() and {p: p.stat().st_mtime_ns for p in stamps} == stamps
    tables = (out / "tables.md").read_text()
    assert "Mean over seeds 5, 6" in tables and "| Uniform Sampling (`table9-uniform`; seeds 5) |" in tables
    assert json.loads((out / "tables.json").read_text())["rows"][0]["per_seed"] == results["rows"][0]["per_seed"]
    with pytest.raises(SystemExit, match="--report_only and --dry_run"):
        ablate.main(argv + ["--report_only", "--dry_run"])


def test_rows_that_train_the_same_model_share_one_run_also_with_an_earlier_invocations(tmp_path, capsys):
    rows_dir = tmp_path / "ablations"
    rows_dir.mkdir()
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(TINY_BASE))
    _row(rows_dir, "table9-full", "full", "1.0%", lr=0.01)
    _row(rows_dir, "table9-same-again", "the same flags, another order", "1.0%", lr=0.01)
    _row(rows_dir, "table9-other", "another lr", "2.0%", lr=0.02)
    _row(rows_dir, "table10-remove-none", "nothing removed", "3.0%", lr=0.01, remove_dynamics=[])
    rows = ablate.find_rows([9, 10], [], str(rows_dir))
    out = tmp_path / "out"
    runs = ablate.plan_runs(rows, None, [3, 4], str(out))
    by_rows = {tuple(r.name for r in run.rows): run for run in runs if run.seed == 3}
    assert sorted(by_rows) == [("table9-full", "table9-same-again", "table10-remove-none"), ("table9-other",)]
    assert len(runs) == 4 and by_rows[("table9-other",)].run_dir == str(out / "table9" / "other" / "seed3")
    # An earlier invocation trained the full model under Table 10's folder: Table 9 alone now finds it there.
    earlier = out / "table10" / "model-0123abcd" / "seed3"
    earlier.mkdir(parents=True)
    shared = next(run for run in runs if run.seed == 3 and len(run.rows) == 3)
    (earlier / "ablation.yaml").write_text(yaml.safe_dump(dict(
        shared.config, root_log=str(earlier.parent), store_name="seed3")))
    again = ablate.plan_runs(ablate.find_rows([9], [], str(rows_dir)), None, [3, 4], str(out))
    found = [run for run in again if "table9-full" in [r.name for r in run.rows]]
    assert [(run.seed, run.run_dir, run.table) for run in found] == [
        (3, str(earlier), 10), (4, str(out / "table9" / "full" / "seed4"), 9)]  # seed 4 was not trained earlier
    assert [r.name for r in found[0].rows] == ["table9-full", "table9-same-again"] and not found[0].evaluations
    # Another seed's or another configuration's folder is not taken.
    assert next(run for run in again if run.seed == 3 and run.rows[0].name == "table9-other").run_dir == str(
        out / "table9" / "other" / "seed3")


# ------------------------------------------------------------------------------------------------
# Table 10's removals
# ------------------------------------------------------------------------------------------------
def _evaluated(seed=0, batch=3):
    torch.manual_seed(seed)
    model = tiny_model(num_focus_segments=3).eval()
    video = random_video(batch=batch, seed=seed)
    with torch.no_grad():
        out = model(video)
    return model, video, out


def _whole_frames_logits(model, video, out, indices):
    """Stage logits from the whole frames at ``indices``, resized to P x P with F.interpolate."""
    frames = model.gather_frames(model.frames_view(video), indices)  # (B, T_L, 3, H, W)
    resized = F.interpolate(frames.flatten(0, 1), size=(model.patch_size,) * 2, mode="bilinear", align_corners=False)
    with torch.no_grad():
        feats = model.focus(resized)
        feats = (feats[-1] if isinstance(feats, tuple) else feats).view(*indices.shape, -1)
        logits = model.classifier(out.glance_features, feats)
    return uni_adafocus_outputs.stage_logits(logits, out.glance_features.shape[1])


def test_spatial_removal_feeds_the_whole_frame_resized():
    model, video, out = _evaluated()
    seen = []
    model.focus.register_forward_hook(lambda m, i, o: seen.append(i[0].clone()))
    removed = policy_ablation.dynamics_stage_logits(model, video, out, ["spatial"])
    frames = model.gather_frames(model.frames_view(video), out.focus_indices).flatten(0, 1)
    expected = F.interpolate(frames, size=(model.patch_size,) * 2, mode="bilinear", align_corners=False)
    torch.testing.assert_close(seen[0], expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(removed, _whole_frames_logits(model, video, out, out.focus_indices), atol=1e-4, rtol=1e-4)
    # Nothing removed: the forward's own stages; temporal: the uniformly spaced frames.
    assert torch.equal(policy_ablation.dynamics_stage_logits(model, video, out, []), out.stage_logits.float())
    seen.clear()
    policy_ablation.dynamics_stage_logits(model, video, out, ["temporal", "samplewise"])
    assert seen[0].shape == (3 * 3, 3, model.patch_size, model.patch_size)


def _sets(seed=0):
    """(evaluation stage logits, label ids, threshold-set stage logits, FLOPs) of a synthetic 4-exit problem."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 5, (40,), generator=g)
    evaluation = torch.randn(40, 4, 5, generator=g) + 2.0 * F.one_hot(labels, 5)[:, None] * torch.arange(4)[None, :, None]
    threshold = torch.randn(60, 4, 5, generator=g) * 2
    return evaluation, labels, threshold, [1.0, 2.0, 3.0, 4.0]


def test_random_early_exit_takes_exactly_the_adaptive_policys_exit_counts(monkeypatch):
    evaluation, labels, threshold, flops = _sets()
    drawn = []
    original = early_exit.random_exit_baseline
    monkeypatch.setattr(early_exit, "random_exit_baseline", lambda counts, gen: drawn.append(original(counts, gen))
                        or drawn[-1])
    budgets = [1.5, 2.5, 3.2]
    random = policy_ablation.dynamics_metrics(evaluation, labels, threshold, flops, ["samplewise"], "top1",
                                              budgets=budgets, seed=3, draws=2)
    adaptive = policy_ablation.dynamics_metrics(evaluation, labels, threshold, flops, [], "top1", budgets=budgets)
    assert len(drawn) == 2 * len(budgets)
    for k, counts in enumerate(adaptive["exit_counts"]):
        for exits in drawn[2 * k:2 * k + 2]:
            assert early_exit.count_exits(exits, 4).tolist() == counts  # the same proportions, exactly
    assert random["gflops"] == adaptive["gflops"] and random["exit_counts"] == adaptive["exit_counts"]
    assert random["metric"] != adaptive["metric"]
    again = policy_ablation.dynamics_metrics(evaluation, labels, threshold, flops, ["samplewise"], "top1",
                                             budgets=budgets, seed=3, draws=2)
    assert again["metric"] == random["metric"]  # deterministic given the seed


def test_the_no_removal_row_is_the_ordinary_early_exit_at_the_budget(tmp_path):
    evaluation, labels, threshold, flops = _sets(1)
    data = {"threshold": {"logits": threshold}, "eval": {"logits": evaluation, "label": labels}, "flops": flops}
    log = RunLog(str(tmp_path), tensorboard=False)
    found = policy_ablation.dynamics_metrics(evaluation, labels, threshold, flops, [], "top1", budgets=[2.2, 3.1])
    for k, budget in enumerate((2.2, 3.1)):
        _, ordinary = test_early_exit.solve_budget(data, "entropy", "top1", budget, str(tmp_path),
                                                   argparse.Namespace(absent_classes="exclude"), log)
        assert found["metric"][k] == ordinary.metric and found["gflops"][k] == ordinary.expected_gflops
        assert found["exit_counts"][k] == ordinary.exit_counts.tolist()
    log.close()
    low = policy_ablation.dynamics_metrics(evaluation, labels, threshold, flops, [], "top1", budgets=[0.5])
    assert low["metric"] == [None]  # below the cheapest exit
    assert early_exit.evenly_spaced_budgets(flops) == [1.5, 2.0, 2.5, 3.0, 3.5, 4.0]


def test_everything_removed_at_the_full_budget_is_uniform_frames_seen_whole():
    model, video, out = _evaluated(seed=1, batch=4)
    removed = policy_ablation.dynamics_stage_logits(model, video, out, policy_ablation.DYNAMICS)
    uniform = frame_selection.select_focus_frames(torch.full((4, model.num_glance), 1 / model.num_glance), 8, 3)
    expected = _whole_frames_logits(model, video, out, uniform)
    torch.testing.assert_close(removed, expected, atol=1e-4, rtol=1e-4)
    labels = torch.tensor([0, 1, 2, 3])
    flops = [1.0, 2.0, 3.0, 4.0]
    result = policy_ablation.dynamics_metrics(removed, labels, removed, flops, policy_ablation.DYNAMICS, "top1",
                                              budgets=[4.0])
    assert result["exit_counts"] == [[0, 0, 0, 4]] and result["gflops"] == [4.0]
    assert result["metric"] == [early_exit.StageMetric(expected, labels, "top1").stage(3)]


def test_the_flags_refuse_bad_values(capsys):
    parser = flags.get_args_parser()
    for argv, message in ((["--remove_dynamics", "spacial"], "'spacial' is not one of spatial, temporal, samplewise"),
                          (["--budgets", "-1"], "'-1': a budget must be a positive number of GFLOPs")):
        with pytest.raises(SystemExit):
            parser.parse_args(argv)
        assert message in capsys.readouterr().err
    args = parser.parse_args(["--remove_dynamics"])
    assert args.remove_dynamics == [] and parser.parse_args([]).remove_dynamics is None
    assert os.path.isfile(REPO / "configs/ablations/table10-remove-none.yaml")


@pytest.mark.parametrize("variant", ["tsm", "adafocus_v2", "adafocus_v3"])
@pytest.mark.parametrize("flag", [["--policy_ablation"], ["--remove_dynamics", "spatial"], ["--remove_dynamics"]])
def test_evaluation_ablations_on_a_variant_without_them_are_refused_at_start_up(capsys, variant, flag):
    """Refused when the flags are read (one line), not at the final evaluation after training."""
    with pytest.raises(SystemExit):
        config.parse_args(["--variant", variant] + flag)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{flag[0]}: the {variant} variant has no candidate-frame policy to replace " \
                              "(available for mn2_r50)" in err[0], err


@pytest.mark.parametrize("text,shown", [("budgets: [2.0, -1]", "-1"), ("budgets: [0]", "0"), ("budgets: -3.5", "-3.5"),
                                        ("budgets: [.inf]", "inf"), ("budgets: [true]", "True"),
                                        ("remove_dynamics: [1]", None)])
def test_config_file_budgets_and_dynamics_get_one_line(capsys, tmp_path, text, shown):
    """A config file's numbers skip the command line's types: --budgets and --remove_dynamics are checked
    again, one line naming the flag and the value, no traceback."""
    path = tmp_path / "run.yaml"
    path.write_text(f"remove_dynamics: [spatial]\n{text}\n" if text.startswith("budgets") else text + "\n")
    with pytest.raises(SystemExit):
        config.parse_args(["--config", str(path)])
    err = capsys.readouterr().err.strip().splitlines()
    expected = (f"--budgets {shown}: a budget must be a positive number of GFLOPs" if shown is not None else
                "--remove_dynamics 1 is not one of spatial, temporal, samplewise")
    assert len(err) == 1 and expected in err[0], err


def test_config_file_budgets_and_a_single_dynamics_name_are_read():
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "run.yaml")
        with open(path, "w", encoding="utf-8") as f:
            f.write("remove_dynamics: temporal\nbudgets: [2, 3.5]\n")
        args = config.parse_args(["--config", path])
    assert args.remove_dynamics == ["temporal"] and args.budgets == [2.0, 3.5]
    assert all(isinstance(b, float) for b in args.budgets)
