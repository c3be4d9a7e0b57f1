"""The training and evaluation numerics: evaluation in float32 as officially, the official log's head metrics, the
paper's stop-gradient as one flag, and the variant's objective terms."""
import json
import re

import pytest
import torch

import main
from models import get_variant
from models.backbones import FocusEncoder, GlanceEncoder
from models.variants import OBJECTIVE_TERMS, VARIANTS
from ops import build, config, evaluation, loaders, training
from ops.rng import epoch_seed, seed_everything
from ops.metrics import SECONDARY_HEADS, head_metrics, mean_average_precision
from reference_math import official_map
from support import REPO, random_video, tiny_model

TINY = ["--dataset", "synthetic", "--num_segments", "8", "--num_glance_segments", "4", "--num_focus_segments", "4",
        "--input_size", "64", "--patch_size", "32", "--focus_arch", "resnet18", "--classifier_dim", "32",
        "--stn_hidden_dim", "16", "--temporal_hidden_dim", "8", "--no-pretrained", "--workers", "0", "--device", "cpu",
        "--no-tensorboard", "--num_visualised", "0", "--batch_size", "4", "--val_batch_size", "4"]
SYNTHETIC = {"train_videos": 8, "val_videos": 4, "frames_per_video": 10, "frame_size": 64, "num_classes": 3}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    from datasets import synthetic

    root = tmp_path_factory.mktemp("synthetic") / "data"
    synthetic.ensure_generated(str(root), workers=1, **SYNTHETIC)
    return root


@pytest.fixture
def backbone_calls(monkeypatch):
    """{'train': [...], 'eval': [...]}: (encoder, autocast enabled, output dtype) of every backbone call
    made inside ``ops.training.train_one_epoch`` / ``ops.evaluation.evaluate`` (FLOPs counting is left out)."""
    calls, phase = {"train": [], "eval": []}, []
    for name, module, function in (("train", training, training.train_one_epoch),
                                   ("eval", evaluation, evaluation.evaluate)):
        def in_phase(*args, _name=name, _function=function, **kwargs):
            phase.append(_name)
            try:
                return _function(*args, **kwargs)
            finally:
                phase.pop()
        monkeypatch.setattr(module, function.__name__, in_phase)
    for cls in (GlanceEncoder, FocusEncoder):
        def spy(self, x, _forward=cls.forward, _name=cls.__name__):
            out = _forward(self, x)
            if phase:
                first = out[0] if isinstance(out, tuple) else out
                calls[phase[-1]].append((_name, torch.is_autocast_enabled("cpu"), first.dtype))
            return out
        monkeypatch.setattr(cls, "forward", spy)
    return calls


def _run_main(data_dir, tmp_path, *extra):
    argv = TINY + ["--data_dir", str(data_dir), "--synthetic", json.dumps(SYNTHETIC), "--root_log", str(tmp_path)]
    assert main.main(argv + list(extra)) == 0


@pytest.mark.parametrize("preset", ["fcvid_p128", "minik_p128"])
def test_evaluating_an_amp_preset_runs_the_backbones_in_float32(preset, data_dir, tmp_path, backbone_calls):
    args = config.parse_args(["--config", str(REPO / "configs" / f"{preset}.yaml")])
    assert args.amp and args.amp_dtype == "float16" and not args.eval_amp  # the official semi-AMP training
    _run_main(data_dir, tmp_path, "--config", str(REPO / "configs" / f"{preset}.yaml"), "--evaluate")
    assert {name for name, *_ in backbone_calls["eval"]} == {"GlanceEncoder", "FocusEncoder"}
    assert all(not enabled and dtype == torch.float32 for _, enabled, dtype in backbone_calls["eval"])


def test_eval_amp_asks_for_autocast_in_evaluation(data_dir, tmp_path, backbone_calls):
    _run_main(data_dir, tmp_path, "--amp", "--amp_dtype", "bfloat16", "--eval_amp", "--evaluate")
    calls = backbone_calls["eval"]
    assert calls and all(enabled and dtype == torch.bfloat16 for _, enabled, dtype in calls)


def test_amp_applies_to_training_steps(data_dir, tmp_path, backbone_calls):
    _run_main(data_dir, tmp_path, "--amp", "--amp_dtype", "bfloat16", "--epochs", "1", "--iters_per_epoch", "1",
              "--eval_freq", "0")
    train_calls, eval_calls = backbone_calls["train"], backbone_calls["eval"]  # one step, then the last evaluation
    assert train_calls and all(enabled and dtype == torch.bfloat16 for _, enabled, dtype in train_calls)
    assert eval_calls and all(not enabled and dtype == torch.float32 for _, enabled, dtype in eval_calls)


# ------------------------------------------------------------------------------------------------
# metrics as the official log prints them
# ------------------------------------------------------------------------------------------------
def _rows(n=60, c=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    label = torch.arange(n) % c  # every class present
    labels = torch.nn.functional.one_hot(label, c).bool()
    probs = lambda: torch.softmax(3 * torch.randn(n, c, generator=g), dim=1)  # noqa: E731
    return {"prediction": torch.randn(n, c, generator=g), "exits": probs(), "glance": probs(), "focus": probs(),
            "label": label, "labels": labels}


def test_secondary_head_maps_are_the_official_logs():
    rows = _rows()
    metrics = head_metrics(rows, "mAP", loss=0.0)
    # The official cal_map softmaxes whatever it gets: for the averaged-probability heads that is a
    # second softmax. With every class present, its label handling agrees with ours.
    for head, name in SECONDARY_HEADS.items():
        assert metrics[f"{name}_mAP"] == pytest.approx(official_map(rows[head], rows["label"])[0], abs=1e-3)
        assert metrics[f"{name}_mean_prob_mAP"] == pytest.approx(mean_average_precision(rows[head], rows["labels"])[0])
    assert any(abs(metrics[f"{h}_mAP"] - metrics[f"{h}_mean_prob_mAP"]) > 0.1 for h in SECONDARY_HEADS.values())
    assert metrics["prediction_mAP"] == pytest.approx(official_map(rows["prediction"], rows["label"])[0], abs=1e-3)
    assert metrics["score"] == metrics["prediction_mAP"]


def test_top1_heads_do_not_depend_on_the_second_softmax():
    rows = _rows(seed=1)
    metrics = head_metrics(rows, "top1", loss=0.0)
    for head, name in SECONDARY_HEADS.items():
        expected = (rows[head].argmax(1) == rows["label"]).double().mean().item() * 100
        assert metrics[f"{name}_top1"] == pytest.approx(expected)
    assert "all_exits_mAP" not in metrics and metrics["score"] == metrics["prediction_top1"]
    with pytest.raises(ValueError, match="metric must be one of"):
        head_metrics(rows, "map", loss=0.0)


# ------------------------------------------------------------------------------------------------
# the paper's stop-gradient, variants and their objective terms
# ------------------------------------------------------------------------------------------------
def test_paper_stop_gradient_is_one_flag():
    args = config.parse_args(["--paper_stop_gradient"])
    assert args.detach_temporal_input and args.temporal_objective == "paper"
    official = config.parse_args([])
    assert not official.detach_temporal_input and official.temporal_objective == "official"
    with pytest.raises(SystemExit):
        config.parse_args(["--paper_stop_gradient", "--temporal_objective", "official"])


def test_paper_stop_gradient_trains_the_temporal_policy_alone():
    """With the flag, the temporal term's gradient reaches the temporal policy and nothing before it."""
    args = config.parse_args(TINY + ["--paper_stop_gradient", "--dataset", "synthetic"])
    model = get_variant(args.variant).build_from(args, num_classes=3).train()
    objective = build.build_objective(args)
    out = model(random_video(batch=2, frames=8, size=64), generator=torch.Generator().manual_seed(0))
    objective(out, torch.tensor([0, 2]), generator=torch.Generator().manual_seed(1)).temporal.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.policy.temporal.parameters())
    for module in (model.glance, model.glance_head):
        assert all(p.grad is None or p.grad.abs().sum() == 0 for p in module.parameters())


def test_objective_computes_exactly_the_variant_terms():
    args = config.parse_args(TINY + ["--KL_ratio", "0.5"])
    model = tiny_model(num_classes=3).train()
    out = model(random_video(batch=2, frames=8, size=64), generator=torch.Generator().manual_seed(0))
    target = torch.tensor([1, 2])
    full = build.build_objective(args)(out, target, generator=torch.Generator().manual_seed(1))
    assert set(get_variant("mn2_r50").objective_terms) == set(OBJECTIVE_TERMS)
    assert all(getattr(full, name).item() != 0 for name in OBJECTIVE_TERMS)
    without_kl = type(build.build_objective(args))(8, 4, 4, terms=[t for t in OBJECTIVE_TERMS if t != "kl"],
                                                   kl_ratio=0.5)(out, target, generator=torch.Generator().manual_seed(1))
    assert without_kl.kl.item() == 0
    assert without_kl.total.item() == pytest.approx(full.total.item() - full.kl.item(), rel=1e-6)


def test_variant_registry_names_and_checks():
    variant = get_variant("mn2_r50")
    assert variant.build is not None and "patch_size" in variant.hyper_parameters
    model = variant.build_from(config.parse_args(TINY), num_classes=3)
    assert model.variant == "mn2_r50" and len(variant.flops(model).stages()) == 4 + 1
    manifest = variant.checkpoint.manifest(model)
    official = {k: torch.zeros(shape) for k, shape, _ in manifest}
    assert variant.checkpoint.detect(official) and variant.checkpoint.num_classes(official) == 3
    converted, dropped, unknown = variant.checkpoint.convert(official)
    assert unknown == [] and set(converted) == set(model.state_dict()) and dropped
    known = ", ".join(sorted(VARIANTS))  # every registered variant, listed in order
    assert {"mn2_r50", "tsm", "x3d"} <= set(VARIANTS)
    with pytest.raises(KeyError, match=re.escape(f"unknown variant 'i3d'; known: {known}")):
        get_variant("i3d")
    with pytest.raises(SystemExit):
        config.parse_args(["--glance_arch", "x3d_s"])


def test_three_view_evaluation_averages_each_videos_raw_logits(data_dir, tmp_path):
    """--test_crops 3: every video once, its prediction the mean of its three views' raw logits."""
    flags = ["--variant", "x3d", "--glance_arch", "x3d_s", "--focus_arch", "x3d_l", "--glance_size", "32",
             "--num_focus_segments", "2", "--test_crops", "3", "--save_predictions", "--store_name", "views"]
    _run_main(data_dir, tmp_path, *flags, "--evaluate")
    saved = torch.load(tmp_path / "views" / "predictions_eval.pt", weights_only=True)

    # The same untrained model as main.py's (seeded the same way before it is built), view by view.
    args = config.parse_args(TINY + ["--data_dir", str(data_dir), "--synthetic", json.dumps(SYNTHETIC), *flags,
                                     "--evaluate"])
    info = type("Info", (), {"is_main": True, "distributed": False, "rank": 0, "world_size": 1,
                             "device": torch.device("cpu")})()
    seed_everything(epoch_seed(args.seed, 0, 0))
    dataset = loaders.build_dataset(args, "val", info)
    model = build.build_model(args, dataset.num_classes, info).eval()
    assert saved["index"].tolist() == list(range(len(dataset)))
    for i in range(len(dataset)):
        item = dataset[i]
        assert item["video"].shape[0] == 3 and item["glance"].shape[0] == 3  # (views, frames, 3, S, S)
        with torch.no_grad():
            views = model(item["video"], glance=item["glance"])  # the 3 views as 3 videos
        torch.testing.assert_close(saved["prediction"][i], views.logits.mean(dim=0), atol=1e-5, rtol=1e-5)


def test_warm_up_ramps_the_rate_per_step_through_its_epochs_only(data_dir, tmp_path):
    # 8 training videos in batches of 4: 2 steps per epoch; the logged rate is the classifier's (x1)
    _run_main(data_dir, tmp_path, "--epochs", "2", "--eval_freq", "0", "--warmup_epochs", "1", "--print_freq", "1",
              "--lr", "0.01", "--classifier_lr_ratio", "1", "--store_name", "warm")
    text = (tmp_path / "warm" / "log.txt").read_text()
    rates = [float(rate) for rate in re.findall(r"epoch \d+ \[\d+/2\] lr (\S+)", text)]
    assert rates == pytest.approx([0.005, 0.01, 0.005, 0.005])  # epoch 1: the cosine's 0.005, no ramp


def test_threshold_set_loader_draws_a_seeded_subset_for_test_early_exit(data_dir):
    """One threshold-set loader: the training videos (with or without their augmentation), or a seeded,
    ordered subset of them, which test_early_exit.py's --threshold_subset takes."""
    import test_early_exit
    from ops import distributed as dist_ops

    info = dist_ops.DistInfo(device=torch.device("cpu"))
    args = config.parse_args(TINY + ["--data_dir", str(data_dir), "--synthetic", json.dumps(SYNTHETIC), "--seed", "3"])
    whole = loaders.threshold_set_loader(args, info).dataset
    assert len(whole) == SYNTHETIC["train_videos"] and whole.train
    part = loaders.threshold_set_loader(args, info, augmentation=False, subset=3).dataset
    assert len(part.indices) == 3 and part.indices == sorted(set(part.indices)) and not part.dataset.train
    assert (part.num_classes, part.spec) == (whole.num_classes, whole.spec)
    assert loaders.threshold_set_loader(args, info, subset=3).dataset.indices == part.indices  # seeded by --seed
    assert len(loaders.threshold_set_loader(args, info, subset=99).dataset) == SYNTHETIC["train_videos"]
    ee = test_early_exit.get_args_parser().parse_args(["--resume", "x.pth", "--threshold_subset", "3",
                                                       "--no-threshold_augmentation"] + TINY[:-4]
                                                      + ["--data_dir", str(data_dir), "--seed", "3"])
    ee.synthetic = SYNTHETIC
    chosen = test_early_exit._threshold_loader(ee, info, None).dataset
    assert chosen.indices == part.indices and not chosen.dataset.train
