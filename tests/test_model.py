"""Properties of the Uni-AdaFocus module: wiring, evaluation determinism and leanness, gradients."""
import pytest
import torch

from models import UniAdaFocus
from ops.objective import UniAdaFocusObjective
from support import random_video, tiny_model


def test_evaluation_is_deterministic_and_draws_no_random_numbers():
    model = tiny_model().eval()
    video = random_video()
    state = torch.random.get_rng_state()
    with torch.no_grad():
        a, b = model(video), model(video)
    assert torch.equal(state, torch.random.get_rng_state())
    assert torch.equal(a.exit_logits, b.exit_logits) and torch.equal(a.focus_indices, b.focus_indices)
    assert a.random_pass is None


def test_evaluation_runs_the_spatial_policy_once_and_no_random_patches():
    model = tiny_model().eval()
    calls = {"spatial": 0, "focus_batch": []}
    model.policy.spatial.register_forward_hook(lambda m, i, o: calls.__setitem__("spatial", calls["spatial"] + 1))
    model.focus.register_forward_hook(lambda m, i, o: calls["focus_batch"].append(i[0].shape[0]))
    with torch.no_grad():
        model(random_video(batch=3))
    assert calls["spatial"] == 1
    assert calls["focus_batch"] == [3 * model.num_focus]  # policy patches only


def test_training_runs_both_patch_passes_in_one_focus_call():
    model = tiny_model().train()
    calls = []
    model.focus.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    out = model(random_video(batch=3), generator=torch.Generator().manual_seed(0))
    assert calls == [2 * 3 * model.num_focus]
    assert out.random_pass is not None
    assert out.random_pass.exit_logits.shape == out.exit_logits.shape


def test_output_shapes():
    model = tiny_model().eval()
    with torch.no_grad():
        out = model(random_video(batch=2))
    b, g, l, c = 2, 4, 4, 5
    assert out.exit_logits.shape == (b, g + l, c) and out.logits.shape == (b, c)
    assert out.glance_logits.shape == (b, g, c) and out.focus_logits.shape == (b, l, c)
    assert out.spatial_logits.shape == (b, c) and out.spatial_frame_logits.shape == (b, g, c)
    assert out.frame_weights.shape == (b, g) and out.selection_weights.shape == (b, g)
    assert out.focus_indices.shape == (b, l) and out.glance_indices.shape == (b, g)
    assert out.glance_actions.shape == (b, g, 4) and out.focus_actions.shape == (b, l, 4)
    assert out.patch_boxes.shape == (b, l, 4)
    assert torch.equal(out.logits, out.exit_logits[:, -1])
    torch.testing.assert_close(out.frame_weights.sum(1), torch.ones(b))
    boxes = out.patch_boxes
    assert (boxes[..., :2] >= 0).all() and (boxes[..., 2:] <= 64 + 1e-4).all()


def test_uint8_video_is_normalised_like_the_float_pipeline():
    model = tiny_model().eval()
    raw = random_video(dtype=torch.uint8)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    with torch.no_grad():
        a = model(raw)
        b = model((raw.float() / 255 - mean) / std)
    torch.testing.assert_close(a.exit_logits, b.exit_logits)


def test_flattened_official_layout_is_accepted():
    model = tiny_model().eval()
    video = random_video()
    with torch.no_grad():
        a = model(video)
        b = model(video.flatten(1, 2))
    assert torch.equal(a.exit_logits, b.exit_logits)


def test_bad_inputs_are_reported():
    model = tiny_model().eval()
    with pytest.raises(ValueError, match="num_segments=8"):
        model(torch.zeros(1, 6, 3, 64, 64))
    with pytest.raises(ValueError, match="input_size=64"):
        model(torch.zeros(1, 8, 3, 32, 32))
    with pytest.raises(ValueError, match="T0\\*3 channels"):
        model(torch.zeros(1, 10, 64, 64))
    with pytest.raises(ValueError, match="num_focus_segments"):
        tiny_model(num_focus_segments=9)
    with pytest.raises(ValueError, match="glance_arch"):
        tiny_model(glance_arch="res50")


def test_training_is_reproducible_with_a_generator_and_leaves_the_global_rng_alone():
    """Frame, patch and offset draws come from the generator (dropout, off here, uses the global RNG)."""
    torch.manual_seed(0)
    model = tiny_model(dropout=0.0, fc_dropout=0.0).train()
    video = random_video()
    state = torch.random.get_rng_state()
    a = model(video, generator=torch.Generator().manual_seed(7))
    assert torch.equal(state, torch.random.get_rng_state())
    model.load_state_dict(model.state_dict())
    b = model(video, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a.glance_indices, b.glance_indices) and torch.equal(a.focus_indices, b.focus_indices)
    assert torch.equal(a.random_pass.focus_actions, b.random_pass.focus_actions)


def test_every_parameter_gets_a_gradient_in_training():
    """Needed for DDP without find_unused_parameters: no unused heads in the graph."""
    torch.manual_seed(0)
    model = tiny_model().train()
    out = model(random_video(batch=3), generator=torch.Generator().manual_seed(0))
    terms = UniAdaFocusObjective(8, 4, 4)(out, torch.tensor([0, 1, 2]), generator=torch.Generator().manual_seed(1))
    terms.total.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, missing


def _grad_names(model, loss):
    model.zero_grad(set_to_none=True)
    loss.backward()
    return {n.split(".")[0] + ("." + n.split(".")[1] if n.startswith("policy") else "")
            for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}


def test_gradient_paths_follow_the_official_design():
    torch.manual_seed(0)
    model = tiny_model().train()
    video, target = random_video(batch=3), torch.tensor([0, 1, 2])
    ce = torch.nn.functional.cross_entropy
    out = model(video, generator=torch.Generator().manual_seed(0))
    # focus patches are cut with detached actions: the focus loss does not reach the policy
    assert _grad_names(model, ce(out.focus_logits.flatten(0, 1), target.repeat_interleave(4))) == {"focus", "focus_head"}
    out = model(video, generator=torch.Generator().manual_seed(0))
    # the spatial term reaches the spatial policy and the auxiliary head, not the glance network
    assert _grad_names(model, ce(out.spatial_logits, target)) == {"policy.spatial", "spatial_head"}
    out = model(video, generator=torch.Generator().manual_seed(0))
    # official: the temporal policy's input is not detached, so its loss reaches the glance network
    assert "glance" in _grad_names(model, out.frame_weights[:, 0].sum())
    detached = tiny_model(detach_temporal_input=True).train()
    out = detached(video, generator=torch.Generator().manual_seed(0))
    assert _grad_names(detached, out.frame_weights[:, 0].sum()) == {"policy.temporal"}


def test_parameter_counts_match_the_official_modules():
    """The official parameter counts, without the two unused ImageNet heads (1,281,000 + 2,049,000 parameters)."""
    for classes, heads, clf in ((200, 256_200, 52_984_064), (239, 306_159, 60_653_024)):
        model = UniAdaFocus(num_classes=classes, patch_size=96)
        count = {name: sum(p.numel() for p in module.parameters()) for name, module in model.named_children()}
        assert count["glance"] == 3_504_872 - 1_281_000
        assert count["focus"] == 25_557_032 - 2_049_000
        assert count["glance_head"] == heads and count["spatial_head"] == heads
        assert count["focus_head"] == {200: 409_800, 239: 489_711}[classes]
        assert sum(p.numel() for p in model.policy.spatial.parameters()) == 1_074_432
        assert sum(p.numel() for p in model.policy.temporal.parameters()) == 258_368
        assert count["classifier"] == clf


def test_a_tiny_configuration_overfits_a_fixed_batch():
    torch.manual_seed(0)
    model = tiny_model(num_classes=4, dropout=0.0, fc_dropout=0.0).train()
    video = random_video(batch=4, seed=1)
    target = torch.tensor([0, 1, 2, 3])
    objective = UniAdaFocusObjective(8, 4, 4, norm_ratio=0.0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)  # at 1e-3 it took 26-30 steps over seeds 0-3
    gen = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(24):  # under a quarter by steps 13-16 over seeds 0-5, 0.02-0.11 of the first at step 24
        terms = objective(model(video, generator=gen), target, generator=gen)
        optimizer.zero_grad()
        terms.total.backward()
        optimizer.step()
        losses.append(terms.cat.item())
    assert losses[-1] < 0.25 * losses[0], losses


def test_zero_init_residual_starts_every_residual_block_as_the_identity():
    """--zero_init_residual: each residual block of both encoders starts as the identity map (its last
    BatchNorm at zero); without it the encoders keep torchvision's initialisation."""
    from models import get_variant
    from ops import config

    flags = ["--no-pretrained", "--focus_arch", "resnet18", "--num_segments", "4", "--num_glance_segments", "4",
             "--num_focus_segments", "2", "--input_size", "64", "--patch_size", "32", "--classifier_dim", "16"]
    torch.manual_seed(0)
    plain = get_variant("mn2_r50").build_from(config.parse_args(flags), num_classes=5)
    zeroed = get_variant("mn2_r50").build_from(config.parse_args(flags + ["--zero_init_residual"]), num_classes=5)
    glance_blocks = [(p, z) for p, z in zip(plain.glance.features, zeroed.glance.features)
                     if getattr(z, "use_res_connect", False)]
    assert len(glance_blocks) == 10  # MobileNetV2's inverted residuals with a shortcut
    focus_blocks = [(p, z) for name in ("layer1", "layer2", "layer3", "layer4")
                    for p, z in zip(getattr(plain.focus, name), getattr(zeroed.focus, name)) if z.downsample is None]
    assert len(focus_blocks) == 5  # ResNet-18's blocks without a projection shortcut
    with torch.no_grad():
        for p, z in glance_blocks + focus_blocks:
            channels = z.conv[0][0].in_channels if hasattr(z, "use_res_connect") else z.conv1.in_channels
            x = torch.relu(torch.randn(2, channels, 8, 8))  # a ReLU's output, as a ResNet block receives
            torch.testing.assert_close(z.train()(x), x, rtol=0, atol=0)
            assert not torch.allclose(p.train()(x), x)


def test_zero_init_residual_is_refused_where_it_cannot_apply(capsys):
    from ops import config

    for flags, message in ((["--zero_init_residual"], "which --pretrained replaces with ImageNet weights in both "
                                                      "encoders: add --no-pretrained"),
                           (["--zero_init_residual", "--no-pretrained", "--variant", "x3d", "--glance_arch", "x3d_s",
                             "--focus_arch", "x3d_l", "--glance_size", "32"],
                            "--zero_init_residual: the x3d variant's encoders do not offer it")):
        with pytest.raises(SystemExit):
            config.parse_args(flags)
        assert message in capsys.readouterr().err


def test_a_detached_output_keeps_every_field_and_detaches_every_tensor_nested_ones_too():
    """``output.detach()`` of a training forward (with its random-patch pass) for every variant's output
    type that has one: the same values, no gradient history, the non-tensor fields kept."""
    model = tiny_model().train()
    video = torch.randn(2, 8, 3, 64, 64)
    out = model(video, generator=torch.Generator().manual_seed(0))
    assert out.random_pass is not None and out.exit_logits.requires_grad
    detached = out.detach()
    assert type(detached) is type(out) and type(detached.random_pass) is type(out.random_pass)
    for name, value in vars(out).items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(getattr(detached, name), value) and not getattr(detached, name).requires_grad, name
    for name, value in vars(out.random_pass).items():
        assert torch.equal(getattr(detached.random_pass, name), value)
        assert not getattr(detached.random_pass, name).requires_grad, name
