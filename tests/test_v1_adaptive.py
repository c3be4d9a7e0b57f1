"""AdaFocus V1's adaptive early exit (``AdaFocusV1.early_exit_steps`` driven by ``ops.early_exit.AdaptiveRunner``).

One exit per frame: exit t after frames 0..t. The runtime must give the post-hoc decision on the full forward's
per-step logits (``exit_scores`` -> ``assign_exits``) and those logits, while processing frame t only for the
videos still running (glance, policy step, patch, focus encoder, classifier step), and its FLOPs must be the
variant's table. Tiny random models with random BatchNorm statistics (so that videos differ); the runtime's
batches are smaller than the full pass's, so logits agree to rounding (``LOGITS``) and decisions exactly (the
thresholds sit between two scores).
"""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from models import get_variant
from models.adafocus_v1 import AdaFocusV1
from models.flops import count_gmacs
from ops.early_exit import LAST_STAGE_THRESHOLD, NO_EXIT_THRESHOLD, AdaptiveRunner, assign_exits, exit_scores

TINY = dict(num_classes=5, num_segments=4, patch_size=32, input_size=64, glance_size=64, action_dim=25,
            hidden_state_dim=16, hidden_dim=12, dropout=0.5, focus_arch="resnet18")
LOGITS = dict(atol=1e-5, rtol=1e-5)
BATCH = 8


def tiny_v1(seed: int = 0, **overrides) -> AdaFocusV1:
    torch.manual_seed(seed)
    model = AdaFocusV1(**{**TINY, **overrides})
    with torch.no_grad():  # random BatchNorm statistics: different videos get different predictions
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def clip(model: AdaFocusV1, batch: int = BATCH, seed: int = 1, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    shape = (batch, model.num_segments, 3, model.input_size, model.input_size)
    if dtype == torch.uint8:
        return torch.randint(0, 256, shape, generator=g, dtype=torch.uint8)
    return torch.randn(shape, generator=g)


@pytest.fixture(scope="module")
def setup():
    model = tiny_v1()
    video = clip(model)
    with torch.no_grad():
        out = model(video)
    return model, video, out


def _all_exits_allowed(model):
    return [NO_EXIT_THRESHOLD] * (model.num_exit_stages - 1) + [LAST_STAGE_THRESHOLD]


def _batch_sizes(model, fn):
    """Run ``fn`` and record the batch of every call of the per-frame parts: {part: [rows per call]}."""
    parts = {"glance": model.glance, "policy": model.policy.spatial.state_encoder, "focus": model.focus,
             "classifier": model.classifier.gru}
    seen = {name: [] for name in parts}
    hooks = [module.register_forward_hook(lambda m, i, o, name=name: seen[name].append(i[0].shape[0]))
             for name, module in parts.items()]
    try:
        result = fn()
    finally:
        for h in hooks:
            h.remove()
    return result, seen


def test_steps_equal_the_forward_per_step_logits(setup):
    """Driven without exits, the generator yields the forward's step t logits for every t."""
    model, video, out = setup
    assert model.exit_focus_frames == (1, 2, 3, 4)
    steps = model.early_exit_steps(video, (False, torch.bfloat16))
    logits = [next(steps)] + [steps.send(torch.arange(BATCH)) for _ in range(model.num_segments - 1)]
    steps.close()
    torch.testing.assert_close(torch.stack(logits, dim=1), out.step_logits, **LOGITS)


@pytest.mark.parametrize("stage", range(4))
def test_forced_exits_at_every_stage(setup, stage):
    """Every video forced out at ``stage``: the forward's step ``stage`` logits; frames after it are read by
    nobody (every per-frame part runs stage + 1 times, on the whole batch)."""
    model, video, out = setup
    runner = AdaptiveRunner(model, _all_exits_allowed(model), "confidence", flops=[1.0] * 4)
    result, seen = _batch_sizes(model, lambda: runner.run(video, forced_exits=torch.full((BATCH,), stage)))
    assert result.exit_stage.tolist() == [stage] * BATCH
    torch.testing.assert_close(result.logits, out.step_logits[:, stage], **LOGITS)
    assert seen == {name: [BATCH] * (stage + 1) for name in seen}
    assert result.stage_batch_sizes == [BATCH] * (stage + 1) + [0] * (3 - stage)


def test_mixed_forced_exits_process_only_the_continuing_videos(setup):
    """Video i forced out at stage i % T: each video's logits are the forward's at its stage, and frame t is
    processed (glance, policy, focus, classifier) for the videos with stage >= t only."""
    model, video, out = setup
    forced = torch.arange(BATCH) % model.num_segments
    runner = AdaptiveRunner(model, _all_exits_allowed(model), "entropy", flops=[1.0] * 4)
    result, seen = _batch_sizes(model, lambda: runner.run(video, forced_exits=forced))
    assert torch.equal(result.exit_stage, forced)
    torch.testing.assert_close(result.logits, out.step_logits[torch.arange(BATCH), forced], **LOGITS)
    running = [int((forced >= t).sum()) for t in range(model.num_segments)]
    assert seen == {name: running for name in seen} and running == [8, 6, 4, 2]
    assert result.stage_batch_sizes == running
    expected_scores = exit_scores(out.step_logits, "entropy")[torch.arange(BATCH), forced]
    torch.testing.assert_close(result.scores, expected_scores, **LOGITS)


@pytest.mark.parametrize("criterion", ("confidence", "entropy", "max_prob"))
def test_thresholds_give_the_posthoc_decisions(setup, criterion):
    """Thresholds between two scores of every stage: the runtime's exits are ``assign_exits`` on the full
    forward's per-step scores, its logits the forward's at those exits, its GFLOPs the table's."""
    model, video, out = setup
    scores = exit_scores(out.step_logits, criterion)  # (B, T)
    ordered = scores.sort(dim=0).values
    thresholds = ((ordered[4] + ordered[5]) / 2).double()  # between two videos' scores
    thresholds[-1] = LAST_STAGE_THRESHOLD
    expected = assign_exits(scores, thresholds)
    assert len(expected.unique()) >= 2, expected.tolist()
    runner = AdaptiveRunner(model, thresholds, criterion)  # counts the model's FLOPs table (no flops=)
    result, seen = _batch_sizes(model, lambda: runner.run(video))
    assert torch.equal(result.exit_stage, expected)
    torch.testing.assert_close(result.logits, out.step_logits[torch.arange(BATCH), expected], **LOGITS)
    running = [n for n in (int((expected >= t).sum()) for t in range(model.num_segments)) if n]
    assert seen["focus"] == running and result.stage_batch_sizes[:len(running)] == running
    table = get_variant("adafocus_v1").flops(model).stages()
    assert result.gflops.tolist() == [table[k] for k in expected.tolist()]


def test_counted_flops_of_the_runtime_are_the_flops_table(setup):
    """FlopCounterMode around the runtime with every video sent out at stage k counts B times the table's
    stage k: the table charges what the runtime runs."""
    model, video, _ = setup
    table = get_variant("adafocus_v1").flops(model).stages()
    runner = AdaptiveRunner(model, _all_exits_allowed(model), flops=table)
    b = 3
    for k in range(model.num_segments):
        counted = count_gmacs(lambda: runner.run(video[:b], forced_exits=torch.full((b,), k)))
        assert counted == pytest.approx(b * table[k], rel=1e-9), k


def test_uint8_and_flattened_videos_and_the_frame_hook():
    """uint8 frames are normalised per frame as the forward normalises them; the official (B, 3T, H, W) layout
    gives the same; ``before_focus`` is told each frame's index and the rows still running before it is read."""
    model = tiny_v1(seed=3)
    video = clip(model, batch=4, seed=2, dtype=torch.uint8)
    with torch.no_grad():
        full = model(video).step_logits
    forced = torch.tensor([0, 3, 1, 3])
    runner = AdaptiveRunner(model, _all_exits_allowed(model), flops=[1.0] * 4)
    read = []
    result = runner.run(video, forced_exits=forced,
                        before_focus=lambda indices, rows: read.append((indices[:, 0].tolist(), rows.tolist())))
    torch.testing.assert_close(result.logits, full[torch.arange(4), forced], **LOGITS)
    assert read == [([0] * 4, [0, 1, 2, 3]), ([1] * 3, [1, 2, 3]), ([2] * 2, [1, 3]), ([3] * 2, [1, 3])]
    flat = runner.run(video.flatten(1, 2), forced_exits=forced)
    assert torch.equal(flat.logits, result.logits) and torch.equal(flat.exit_stage, forced)


def test_predict_takes_early_exit_thresholds(tmp_path, capsys):
    """scripts/predict.py --thresholds on an adafocus_v1 checkpoint: the adaptive runtime, exit t after t + 1
    frames; thresholds that take every video at the first exit report 1 of the T frames used."""
    from PIL import Image

    from ops.checkpoint import save_checkpoint
    from ops.early_exit import save_thresholds
    from scripts import predict

    model = tiny_v1(seed=4)
    config = {"variant": "adafocus_v1", **{k: v for k, v in TINY.items() if k != "num_classes"}}
    ckpt = tmp_path / "ckpt.pth.tar"
    save_checkpoint(str(ckpt), model, config=config)
    frames = tmp_path / "video"
    frames.mkdir()
    g = torch.Generator().manual_seed(0)
    for i in range(6):
        pixels = torch.randint(0, 256, (80, 96, 3), generator=g, dtype=torch.uint8).numpy()
        Image.fromarray(pixels).save(frames / f"img_{i + 1:05d}.jpg")
    first_exit = save_thresholds(tmp_path / "first.json", torch.tensor([LAST_STAGE_THRESHOLD] * 4),
                                 criterion="entropy", flops=[0.1] * 4)
    assert predict.main([str(frames), "--checkpoint", str(ckpt), "--thresholds", str(first_exit), "--device", "cpu",
                         "--short_side", "64", "--plain_model"]) == 0
    assert "exit step 1 of 4 focus frames (early exit (entropy))" in capsys.readouterr().out
    last_exit = save_thresholds(tmp_path / "last.json", torch.tensor(_all_exits_allowed(model)), criterion="entropy",
                                flops=[0.1] * 4)
    assert predict.main([str(frames), "--checkpoint", str(ckpt), "--thresholds", str(last_exit), "--device", "cpu",
                         "--short_side", "64"]) == 0
    assert "exit step 4 of 4 focus frames (early exit (entropy))" in capsys.readouterr().out
