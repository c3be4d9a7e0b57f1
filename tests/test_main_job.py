"""The README's main job: configs/synthetic.yaml trains from scratch and learns (slow).

Run with ``pytest -m slow tests/test_main_job.py``: the job once per seed of the README's table
(about 5.5 minutes each on 2 CPU cores). The margins are below the worst of those three seeds, so a
failure means the method or the code changed, not the luck of a seed. The fast suite checks the
preset's resolution only.
"""
import json
import subprocess
import sys

import pytest

from support import REPO

from ops import config

PRESET = REPO / "configs" / "synthetic.yaml"
SEEDS = (1007, 1, 2)  # 1007: the preset's own seed


def test_synthetic_preset_resolves_to_the_readme_run():
    args = config.parse_args(["--config", str(PRESET)])
    assert (args.dataset, args.data_dir, args.root_log, args.store_name) == ("synthetic", "data/synthetic", "exp",
                                                                              "synthetic")
    assert args.synthetic["num_classes"] == 5 and not args.pretrained and not args.evaluate
    assert args.policy_ablation and args.seed == SEEDS[0]
    # Small enough for two CPU cores: the full model costs under 1 GFLOP per video (measured 0.86).
    from models import get_variant
    from models.flops import flops_breakdown

    assert flops_breakdown(get_variant("mn2_r50").build_from(args, num_classes=5)).stages()[-1] < 1.0


@pytest.fixture(scope="module")
def shared_data(tmp_path_factory):
    return tmp_path_factory.mktemp("main_job") / "data"


@pytest.mark.slow
@pytest.mark.parametrize("seed", SEEDS)
def test_main_job_learns_the_class_when_and_where_it_happens(seed, shared_data, tmp_path):
    """What the preset shows on every seed measured for the README (margins below the worst of them)."""
    run = tmp_path / "exp" / "synthetic"
    subprocess.run([sys.executable, "main.py", "--config", str(PRESET), "--root_log", str(tmp_path / "exp"),
                    "--data_dir", str(shared_data), "--no-tensorboard", "--seed", str(seed)],
                   cwd=REPO, check=True, timeout=1800)
    final = json.loads((run / "metrics.json").read_text())["final"]
    chance = 100.0 / 5
    assert final["prediction_top1"] >= 4 * chance, final                       # measured 99.5-100
    policy = final["policy"]
    # The temporal policy picks frames that show the object clearly more often than uniform sampling
    # (measured +19.6 to +33.0 points).
    assert policy["frames_show_object"] >= policy["uniform_frames_show_object"] + 10.0, policy
    # The patches cover the object more often than random patches of the same sizes (measured +8.9 to
    # +33.6 points: the spatial policy is the weak part of this preset).
    assert policy["patches_cover_object"] >= policy["random_patches_cover_object"] + 3.0, policy
    # The policy ablation is reported at equal GFLOPs (on this data the glance alone already solves the
    # task, so the replacements cost nothing: measured within 0.6 points of the full model).
    ablation = final["policy_ablation"]
    assert set(ablation) == {"metric", "full", "glance_exit", "uniform_frames", "random_patches",
                             "uniform_frames_random_patches"} and ablation["full"] == final["prediction_top1"]
    assert (run / "ckpt.best.pth.tar").is_file()
