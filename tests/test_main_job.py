"""The README's main job: configs/synthetic.yaml trains from scratch and shows the method working (slow).

Run with ``pytest -m slow tests/test_main_job.py``: per seed of the README's table, the whole command as a
newcomer runs it (data generation included: 5 min 13 s to 5 min 29 s on 2 cores of an AMD EPYC, 6 min 44 s
to 7 min 26 s on an Intel Xeon at 2.0 GHz), then the README's early-exit follow-up. Each run prints its
figures (``-rP`` or ``-s`` shows them) and, with ``$UNIADAFOCUS_MAIN_JOB_RESULTS`` set to a folder, writes
them there as ``main_job_seed<S>.json`` (a passed test's own folder is deleted with its checkpoints). The
margins are well below the worst of these three seeds on both machines, so a failure on them means that the
method, the code or the machine changed. The fast suite checks the preset's resolution only.
"""
import json
import os
import pathlib
import re
import subprocess
import sys
import time

import pytest

from support import REPO

from ops import config

PRESET = REPO / "configs" / "synthetic.yaml"
SEEDS = (1007, 1, 2)  # 1007: the preset's own seed
NUM_CLASSES = 6
#: The README's early-exit follow-up command's criteria and exit distributions.
EARLY_EXIT_FLAGS = ["--criterion", "max_prob", "entropy", "--p_values", "0.5", "0.8", "1.0", "1.2", "1.4", "1.7", "2",
                    "2.5", "3", "4", "6"]


def test_synthetic_preset_resolves_to_the_readme_run():
    args = config.parse_args(["--config", str(PRESET)])
    assert (args.dataset, args.data_dir, args.root_log, args.store_name) == ("synthetic", "data/synthetic", "exp",
                                                                              "synthetic")
    assert args.synthetic["num_classes"] == NUM_CLASSES and args.synthetic["twin_classes"] == 2
    assert not args.pretrained and not args.evaluate and args.policy_ablation and args.seed == SEEDS[0]
    assert args.zero_init_residual and args.epochs == 12  # random initialisation, every residual block the identity
    # The glance works at a fifth of the frames' resolution: the twins' 3-pixel checker is below it.
    assert args.input_size == 5 * args.glance_size and args.synthetic["checker_cell"] == 3
    assert args.input_size == args.synthetic["frame_size"]
    from models import get_variant
    from models.flops import flops_breakdown

    stages = flops_breakdown(get_variant("mn2_r50").build_from(args, num_classes=NUM_CLASSES)).stages()
    assert len(stages) == 3 and stages[-1] < 0.5 and stages[0] < 0.3 * stages[-1]  # measured 0.37 and 0.10 GFLOPs


def test_the_synthetic_docs_describe_the_presets_data():
    """docs/synthetic.md names the main job's generation settings; they must be the preset's."""
    args = config.parse_args(["--config", str(PRESET)])
    text = (REPO / "docs" / "synthetic.md").read_text()
    sentence = text[text.index("The README's main job (`configs/synthetic.yaml`)"):]
    sentence = " ".join(sentence[:sentence.index("\n\n")].split())  # one line
    for key in ("object_size", "visible_fraction"):
        low, high = re.search(rf"`{key}=\(([0-9.]+), ([0-9.]+)\)`", sentence).groups()
        assert [float(low), float(high)] == args.synthetic[key], (key, sentence)
    syn = args.synthetic
    assert f"{syn['num_classes']} classes with `twin_classes={syn['twin_classes']}`" in sentence
    assert f"`checker_cell={syn['checker_cell']}`" in sentence
    assert f"{syn['frame_size']}-px frames" in sentence and f"at {args.glance_size} px" in sentence
    assert f"{syn['chroma_subsampling']} JPEG" in sentence


def check_directions(final: dict, early_exit: dict) -> None:
    """What the main job shows on the slow test's seeds, with margins well below the worst of them (seeds 1007,
    1 and 2, each alone on 2 CPU cores of an Intel Xeon at 2.0 GHz and of an AMD EPYC, and again on the AMD
    EPYC after the loaders' own generator moved every run's random stream; the measured ranges over those nine
    runs are in the comments). ``early_exit``: criterion -> the test_early_exit.py sweep
    (``<criterion>.json``)."""
    chance = 100.0 / NUM_CLASSES
    ablation = final["policy_ablation"]
    assert set(ablation) == {"metric", "full", "glance_exit", "uniform_frames", "random_patches",
                             "uniform_frames_random_patches"} and ablation["full"] == final["prediction_top1"]
    # 1. The focus sees what the glance cannot: the full model is above its glance exit (measured +19.8 to
    #    +28.2 points), which is itself far above chance (65.6-70.3 %: it resolves all but the twins).
    assert ablation["glance_exit"] >= 2.5 * chance, ablation
    assert ablation["full"] >= ablation["glance_exit"] + 10.0, ablation
    # 2. The temporal policy picks frames that show the object more often than uniform frames (measured
    #    +34.6 to +62.5 points), and replacing its frames by uniform ones at equal GFLOPs costs top-1
    #    (measured 6.2 to 11.5 points; with random patches too, 6.8 to 15.5). The spatial policy's random-patch
    #    cost (-2.5 to 2.7 points) is not asserted. Seed 5 (AMD EPYC, not run here) fails this and the early-exit
    #    check below: its frames showed the object 56.5 % of the time, uniform frames cost 2.1 points (3.3 with
    #    random patches), and its cheapest exit within 1 point was 3.7 points above random exits.
    policy = final["policy"]
    assert policy["frames_show_object"] >= policy["uniform_frames_show_object"] + 20.0, policy
    assert ablation["uniform_frames"] <= ablation["full"] - 3.0, ablation
    assert ablation["uniform_frames_random_patches"] <= ablation["full"] - 5.0, ablation
    # 3. Early exit saves compute: with one of the two criteria, some thresholds keep top-1 within 1 point of
    #    the last exit at under 80 % of its GFLOPs and beat random exits with the same exit counts (the
    #    cheapest such point: 57-75 % of the GFLOPs, random exits 5.2-11.4 points below).
    good = [(criterion, pt) for criterion, sweep in early_exit.items() for pt in sweep["points"]
            if pt["expected_gflops"] <= 0.8 * sweep["flops"][-1] and pt["metric"] >= sweep["last_stage_metric"] - 1.0
            and pt["metric"] >= pt["random_metric"] + 4.0]
    assert good, {criterion: sweep["points"] for criterion, sweep in early_exit.items()}


@pytest.mark.slow
@pytest.mark.parametrize("seed", SEEDS)
def test_main_job_shows_the_focus_the_policy_and_early_exit_earning_their_compute(seed, tmp_path):
    """What the preset shows on every seed measured for the README (data generated by the run itself)."""
    root, data = tmp_path / "exp", tmp_path / "data"
    run = root / "synthetic"
    flags = ["--config", str(PRESET), "--root_log", str(root), "--data_dir", str(data)]
    started = time.time()
    subprocess.run([sys.executable, "main.py", *flags, "--no-tensorboard", "--seed", str(seed)], cwd=REPO, check=True,
                   timeout=1800)
    job_s = time.time() - started
    subprocess.run([sys.executable, "test_early_exit.py", *flags, "--evaluate", "--resume",
                    str(run / "ckpt.best.pth.tar"), *EARLY_EXIT_FLAGS], cwd=REPO, check=True, timeout=900)
    final = json.loads((run / "metrics.json").read_text())["final"]
    early_exit = {criterion: json.loads((run / "early_exit" / f"{criterion}.json").read_text())
                  for criterion in ("max_prob", "entropy")}
    record = json.dumps({"seed": seed, "wall_s": job_s, "final": final, "early_exit": early_exit}, indent=1)
    if os.environ.get("UNIADAFOCUS_MAIN_JOB_RESULTS"):
        keep = pathlib.Path(os.environ["UNIADAFOCUS_MAIN_JOB_RESULTS"])
        keep.mkdir(parents=True, exist_ok=True)
        (keep / f"main_job_seed{seed}.json").write_text(record)
    ablation = final["policy_ablation"]
    print(f"seed {seed}: {job_s:.0f} s; " + ", ".join(f"{k} {v:.1f}" for k, v in ablation.items() if k != "metric")
          + f"; frames show the object {final['policy']['frames_show_object']:.1f} %")
    check_directions(final, early_exit)
