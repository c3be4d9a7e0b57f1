"""The inference copy (models.inference) and the CPU allocator tuning (ops.cpu) keep the numbers."""
import torch

from ops.cpu import tune_cpu_allocator
from models.inference import TracedEncoder, fold_batchnorm, prepare_for_inference
from support import random_video, tiny_model


def _calibrated(seed=0):
    torch.manual_seed(seed)
    model = tiny_model()
    with torch.no_grad():  # give BatchNorm non-trivial statistics
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
    return model.eval()


def test_prepared_copy_gives_the_same_outputs():
    model = _calibrated()
    fast = prepare_for_inference(model)
    video = random_video(batch=3, dtype=torch.uint8)
    with torch.no_grad():
        a, b = model(video), fast(video)
    torch.testing.assert_close(b.exit_logits, a.exit_logits, atol=1e-4, rtol=1e-4)
    assert torch.equal(a.focus_indices, b.focus_indices)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in list(fast.glance.modules()) + list(fast.focus.modules()))
    assert model.glance.features[0][1].__class__ is torch.nn.BatchNorm2d  # the original is untouched
    assert not any(p.requires_grad for p in fast.parameters())


def test_traced_glance_matches_the_eager_glance_at_any_batch_size():
    model = _calibrated(2)
    traced = prepare_for_inference(model, trace_glance=True)
    eager = prepare_for_inference(model, trace_glance=False)
    assert isinstance(traced.glance, TracedEncoder) and not isinstance(eager.glance, TracedEncoder)
    assert traced.glance.feature_dim == model.glance.feature_dim
    with torch.no_grad():
        for n in (1, 5):  # traced with a batch of 2
            frames = torch.randn(n, 3, model.input_size, model.input_size)
            for a, b in zip(eager.glance(frames), traced.glance(frames)):
                torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)
        video = random_video(batch=3, dtype=torch.uint8)
        torch.testing.assert_close(traced(video).exit_logits, eager(video).exit_logits, atol=1e-5, rtol=1e-5)


def test_every_encoder_batchnorm_is_folded():
    model = _calibrated()
    count = sum(isinstance(m, torch.nn.BatchNorm2d) for enc in (model.glance, model.focus) for m in enc.modules())
    copy = prepare_for_inference(model, fold_bn=False, channels_last=False, trace_glance=False)
    assert fold_batchnorm(copy.glance) + fold_batchnorm(copy.focus) == count


def test_chunked_encoder_calls_match_one_call():
    model = _calibrated(1)
    video = random_video(batch=4)
    with torch.no_grad():
        whole = model(video)
        model.encoder_chunk = 3
        chunked = model(video)
    torch.testing.assert_close(chunked.exit_logits, whole.exit_logits, atol=1e-5, rtol=1e-5)
    model.train()
    calls = []
    model.glance.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    model(video)
    assert calls == [4 * model.num_glance]  # never chunked in training (BatchNorm statistics)


def test_allocator_tuning_is_reported_and_idempotent():
    first = tune_cpu_allocator()
    assert tune_cpu_allocator() == first
    assert isinstance(first, bool)
