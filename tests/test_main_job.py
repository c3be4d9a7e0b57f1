"""The README's main job: configs/synthetic.yaml trains from scratch and learns (slow: about 8 minutes).

Run with ``pytest -m slow tests/test_main_job.py``. The fast suite checks the preset's resolution only.
"""
import json
import subprocess
import sys

import pytest

from support import REPO

from ops import config

PRESET = REPO / "configs" / "synthetic.yaml"


def test_synthetic_preset_resolves_to_the_readme_run():
    args = config.parse_args(["--config", str(PRESET)])
    assert (args.dataset, args.data_dir, args.root_log, args.store_name) == ("synthetic", "data/synthetic", "exp",
                                                                              "synthetic")
    assert args.synthetic["num_classes"] == 5 and not args.pretrained and not args.evaluate
    # Small enough for two CPU cores: the full model costs under 1 GFLOP per video (measured 0.86).
    from models import get_variant
    from models.flops import flops_breakdown

    assert flops_breakdown(get_variant("mn2_r50").build_from(args, num_classes=5)).stages()[-1] < 1.0


@pytest.mark.slow
def test_main_job_learns_the_class_when_and_where_it_happens(tmp_path):
    cmd = [sys.executable, "main.py", "--config", str(PRESET), "--root_log", str(tmp_path / "exp"),
           "--data_dir", str(tmp_path / "data"), "--no-tensorboard"]
    subprocess.run(cmd, cwd=REPO, check=True, timeout=1800)
    metrics = json.loads((tmp_path / "exp" / "synthetic" / "metrics.json").read_text())
    final = metrics["final"]
    chance = 100.0 / 5
    assert final["prediction_top1"] >= 2.5 * chance, final
    policy = final["policy"]
    # The temporal policy picks frames that show the object clearly more often than uniform sampling.
    assert policy["frames_show_object"] >= policy["uniform_frames_show_object"] + 10.0, policy
    # The spatial policy puts its patches on the object clearly more often than random patches of the
    # same sizes would be.
    assert policy["patches_cover_object"] >= policy["random_patches_cover_object"] + 10.0, policy
    assert (tmp_path / "exp" / "synthetic" / "ckpt.best.pth.tar").is_file()
