"""metrics.json says what each figure is: every key a tiny run writes is in the code's table of keys and
meanings (ops.evaluation_report.METRICS_KEYS) and on docs/metrics.md, and an older run's names are read
back under today's."""
import json
import re

import torch

import main
from ops import early_exit, evaluation_report
from ops.metrics import SECONDARY_HEADS, head_metrics
from scripts import ablate
from support import REPO

TINY = ["--num_segments", "8", "--num_glance_segments", "4", "--num_focus_segments", "2", "--input_size", "64",
        "--patch_size", "32", "--focus_arch", "resnet18", "--classifier_dim", "32", "--stn_hidden_dim", "16",
        "--temporal_hidden_dim", "8", "--no-pretrained", "--workers", "0", "--device", "cpu", "--no-tensorboard",
        "--num_visualised", "0", "--batch_size", "4", "--val_batch_size", "3", "--epochs", "1"]
SYNTHETIC = {"train_videos": 8, "val_videos": 5, "frames_per_video": 10, "frame_size": 64, "num_classes": 4}
#: The figures holding figures of their own: the table names their keys under the figure's name.
NESTED = ("policy", "policy_ablation", "dynamics_ablation", "early_exit")


def _documented() -> set:
    """Every `name` docs/metrics.md quotes."""
    return set(re.findall(r"`([A-Za-z_0-9{}]+)`", (REPO / "docs" / "metrics.md").read_text(encoding="utf-8")))


def _written_keys(saved: dict) -> set:
    """(table, key) of every key of a metrics file: the file's own, ``best``'s, the figures' and theirs."""
    keys = set()
    for key, value in saved.items():
        keys.add(("file", key))
        if key == "best":
            keys |= {("best", k) for k in value}
        elif key in ("final", "metrics"):
            for figure, inner in value.items():
                keys.add(("figures", figure))
                if figure in NESTED:
                    keys |= {(figure, k) for k in inner}
    return keys


def test_every_key_a_tiny_run_writes_is_in_the_table_and_documented(tmp_path):
    common = TINY + ["--dataset", "synthetic", "--data_dir", str(tmp_path / "data"), "--synthetic",
                     json.dumps(SYNTHETIC), "--root_log", str(tmp_path / "exp"), "--store_name", "run"]
    assert main.main(common + ["--policy_ablation", "--remove_dynamics", "samplewise"]) == 0
    run = tmp_path / "exp" / "run"
    trained = json.loads((run / "metrics.json").read_text())
    stages = sum(score is not None for score in trained["final"]["stage_scores"])  # the model's exit stages
    thresholds = early_exit.save_thresholds(tmp_path / "thresholds.json", torch.full((stages,), 0.5),
                                            criterion="max_prob", flops=[float(k + 1) for k in range(stages)])
    assert main.main(common + ["--evaluate", "--resume", str(run / "ckpt.best.pth.tar"), "--thresholds",
                               str(thresholds)]) == 0
    evaluated = json.loads((run / "metrics_eval.json").read_text())

    written = _written_keys(trained) | _written_keys(evaluated)
    assert {"policy", "policy_ablation", "dynamics_ablation", "early_exit"} <= {k for t, k in written if t == "figures"}
    assert {"glance_head_top1", "focus_head_top1", "all_exits_top1"} <= {k for t, k in written if t == "figures"}
    outside_the_table = sorted(f"{t}: {k}" for t, k in written if k not in evaluation_report.METRICS_KEYS[t])
    assert outside_the_table == [], "keys written but not in ops.evaluation_report.METRICS_KEYS"
    documented = _documented()
    undocumented = sorted(f"{t}: {k}" for t, k in written if k not in documented)
    assert undocumented == [], "keys written but not on docs/metrics.md"


def test_every_key_of_the_table_is_documented_and_the_heads_are_named_by_it():
    documented = _documented()
    missing = sorted(f"{table}: {key}" for table, keys in evaluation_report.METRICS_KEYS.items() for key in keys
                     if key not in documented)
    assert missing == []
    torch.manual_seed(0)
    rows = {"prediction": torch.randn(12, 6), "label": torch.arange(12) % 6}
    rows["labels"] = torch.nn.functional.one_hot(rows["label"], 6)
    rows.update({row: torch.softmax(torch.randn(12, 6), dim=-1) for row in SECONDARY_HEADS})
    for metric in ("mAP", "top1"):
        figures = head_metrics(rows, metric, loss=0.0)
        assert set(figures) <= set(evaluation_report.METRICS_KEYS["figures"]), metric
    assert "glance_exit" not in evaluation_report.METRICS_KEYS["figures"]  # the exit is the policy ablation's


def test_an_older_runs_names_are_read_as_todays(tmp_path):
    old = {"final": {"score": 40.0, "glance_top1": 30.0, "focus_mAP": 20.0, "exits_mean_prob_mAP": 10.0,
                     "stage_scores": [1.0, 2.0], "policy_ablation": {"glance_exit": 5.0, "full": 40.0}},
           "best": {"score": 40.0, "epoch": 0}, "epochs_done": 1}
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps(old))
    read = ablate.read_json(str(path))
    assert read["final"] == {"score": 40.0, "glance_head_top1": 30.0, "focus_head_mAP": 20.0,
                             "all_exits_mean_prob_mAP": 10.0, "stage_scores": [1.0, 2.0],
                             "policy_ablation": {"glance_exit": 5.0, "full": 40.0}}
    assert read["best"] == old["best"] and read["epochs_done"] == 1
    # today's name wins over an old one in the same figures
    assert evaluation_report.current_names({"glance_top1": 1.0, "glance_head_top1": 2.0}) == {"glance_head_top1": 2.0}
