"""models/x3d.py: X3D-S / X3D-L in SlowFast's key layout (shared/reference/x3d/SPEC-X3D.md 3.1, 6.2, 7.3).

Full-size networks are built (cheap); forwards run on short, small clips except the two MAC counts.
"""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from models.flops import count_gmacs
from models.x3d import (X3D, PROJECTION_KEYS, SqueezeExcite, Swish, X3DOutput, X3DWeightsError, load_x3d_pyth,
                        load_x3d_state_dict, read_x3d_pyth, round_width, stage_depths, x3d_l, x3d_s)
from support import (fixture_generator, fixture_manifest_path, fixture_params, manifest_entries, pyth_num_classes,
                     require_fixture)

PREFIXES = {"s": "global_CNN.", "l": "local_CNN."}
BUILD = {"s": x3d_s, "l": x3d_l}


@pytest.fixture(scope="module")
def nets():
    torch.manual_seed(0)
    return {"s": x3d_s(400), "l": x3d_l(400)}


def clip(n=1, t=2, size=64, seed=0):
    return torch.randn(n, 3, t, size, size, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------------------
# Structure
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("which", ["s", "l"])
@pytest.mark.parametrize("manifest", fixture_params("*_state_dict.json", "x3d"))
def test_state_dict_equals_the_manifest_key_for_key_in_order(manifest, which):
    """Each X3D manifest of the reference folder: its glance (X3D-S) or focus (X3D-L) part, key for key, at
    the manifest's class count."""
    entries = manifest_entries(require_fixture(manifest))
    prefix = PREFIXES[which]
    expected = [(k[len(prefix):], list(shape)) for k, shape, _ in entries if k.startswith(prefix)]
    classes = dict((k, shape) for k, shape in expected)["head.projection.weight"][0]
    got = [(k, list(v.shape)) for k, v in BUILD[which](classes).state_dict().items()]
    assert got == expected


def test_parameter_counts(nets):
    assert sum(p.numel() for p in nets["s"].parameters()) == 3_794_322
    assert sum(p.numel() for p in nets["l"].parameters()) == 6_153_432


def test_widths_depths_and_rounding(nets):
    assert stage_depths(2.2) == (3, 5, 11, 7) and stage_depths(5.0) == (5, 10, 25, 15)
    for net in nets.values():
        assert net.stage_widths == [24, 48, 96, 192] and net.inner_widths == [54, 108, 216, 432]
        assert net.feature_dim == 432 and net.head_dim == 2048
        assert [s.depth for s in net.stages()] == list(net.depths)
    assert round_width(12, 2.0) == 24
    assert [round_width(c, 0.0625, min_width=8, divisor=8) for c in (54, 108, 216, 432)] == [8, 8, 16, 32]
    stem = nets["s"].s1.pathway0_stem
    assert stem.conv_xy.kernel_size == (1, 3, 3) and stem.conv_xy.stride == (1, 2, 2)
    assert stem.conv.kernel_size == (5, 1, 1) and stem.conv.groups == 24 and stem.conv.padding == (2, 0, 0)
    for m in nets["l"].modules():
        if isinstance(m, nn.BatchNorm3d):
            assert m.eps == 1e-5 and m.momentum == 0.1


def test_se_on_even_block_indices_and_projection_shortcut_on_block_zero(nets):
    for net in nets.values():
        for stage in net.stages():
            for i, block in enumerate(stage.blocks()):
                assert (block.branch2.se is not None) == (i % 2 == 0)
                assert (block.branch1 is not None) == (i == 0)
                assert block.branch2.b.stride == ((1, 2, 2) if i == 0 else (1, 1, 1))
                assert block.branch2.b.groups == block.branch2.b.in_channels


def test_branch_order_bn_se_swish_then_c(nets):
    block = nets["s"].s3.pathway0_res0  # has SE
    calls = []
    hooks = [getattr(block.branch2, name).register_forward_hook(
        lambda m, i, o, name=name: calls.append((name, i[0], o))) for name in ("b_bn", "se", "b_swish", "c")]
    try:
        with torch.no_grad():
            block.eval()(torch.randn(1, 24, 2, 8, 8))
    finally:
        for h in hooks:
            h.remove()
    assert [c[0] for c in calls] == ["b_bn", "se", "b_swish", "c"]
    (_, _, bn_out), (_, se_in, se_out), (_, sw_in, sw_out), (_, c_in, _) = calls
    assert torch.equal(se_in, bn_out) and torch.equal(sw_in, se_out) and torch.equal(c_in, sw_out)
    assert torch.allclose(sw_out, se_out * torch.sigmoid(se_out))
    # The SE gate: clip mean -> fc1 -> ReLU -> fc2 -> sigmoid.
    se = block.branch2.se
    gate = torch.sigmoid(se.fc2(torch.relu(se.fc1(se_in.mean(dim=(2, 3, 4), keepdim=True)))))
    assert torch.allclose(se_out, se_in * gate)
    assert isinstance(block.branch2.b_swish, Swish) and isinstance(se, SqueezeExcite)


def test_initialisation_follows_slowfast():
    torch.manual_seed(1)
    net = X3D(400, 2.2)
    for name, m in net.named_modules():
        if isinstance(m, nn.BatchNorm3d):
            assert torch.all(m.weight == (0.0 if name.endswith("branch2.c_bn") else 1.0)), name
            assert torch.all(m.bias == 0) and torch.all(m.running_mean == 0) and torch.all(m.running_var == 1)
        elif isinstance(m, nn.Conv3d) and m.bias is not None:
            assert torch.all(m.bias == 0), name
    # kaiming normal, fan_out: std = sqrt(2 / (out_channels * kernel volume)).
    for conv in (net.head.lin_5, net.head.conv_5, net.s5.pathway0_res0.branch2.b):
        fan_out = conv.weight.shape[0] * conv.weight[0, 0].numel()
        assert conv.weight.std().item() == pytest.approx((2.0 / fan_out) ** 0.5, rel=0.05)
    assert net.head.projection.weight.std().item() == pytest.approx(0.01, rel=0.05)
    assert torch.all(net.head.projection.bias == 0)


# ------------------------------------------------------------------------------------------------
# Forward
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("which, t, size, hw", [("s", 3, 160, 5), ("l", 2, 128, 4), ("l", 2, 96, 3),
                                                ("l", 1, 144, 5), ("s", 5, 64, 2)])
def test_feature_map_shapes(nets, which, t, size, hw):
    net = nets[which].eval()
    with torch.no_grad():
        out = net(clip(2, t, size))
    assert isinstance(out, X3DOutput)
    assert out.final_logits.shape == (2, 400)
    assert out.feature_maps.shape == (2, 432, t, hw, hw)
    assert out.frame_features.shape == (2, t, 432)
    assert torch.allclose(out.frame_features, out.feature_maps.mean(dim=(3, 4)).permute(0, 2, 1))
    assert torch.all(out.feature_maps >= 0)  # after ReLU


def test_rejects_a_non_clip_input(nets):
    with pytest.raises(ValueError, match=r"\(N, 3, T, H, W\)"):
        nets["s"](torch.zeros(1, 3, 64, 64))


def test_global_pool_equals_the_official_fixed_pool_on_the_configured_clip(nets):
    net = nets["s"].eval()
    with torch.no_grad():
        maps = net.feature_map(clip(1, 4, 160))
        fixed = nn.AvgPool3d((4, 5, 5), stride=1)(maps)  # official kernel (T, ceil(S/32), ceil(S/32))
        assert fixed.shape == (1, 432, 1, 1, 1)
        assert torch.allclose(net.head.avg_pool(maps), fixed, atol=1e-6)
        head = net.head
        official = head.projection(head.dropout(head.lin_5_relu(head.lin_5(fixed)).permute(0, 2, 3, 4, 1))).view(1, -1)
        assert torch.allclose(net.clip_logits(maps), official, atol=1e-5)


def test_clip_head_trains_only_lin5_and_projection(nets):
    net = nets["l"].train()
    net.zero_grad(set_to_none=True)
    try:
        out = net(clip(2, 2, 64))
        out.final_logits.square().sum().backward()
        with_grad = {n for n, p in net.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
        assert with_grad == {"head.lin_5.weight", "head.projection.weight", "head.projection.bias"}
        assert all(p.grad is None for n, p in net.named_parameters() if not n.startswith(("head.lin_5", "head.proj")))
        net.zero_grad(set_to_none=True)
        out = net(clip(2, 2, 64))
        out.frame_features.sum().backward()  # the per-frame path trains the backbone
        assert net.s1.pathway0_stem.conv_xy.weight.grad is not None
        assert net.head.lin_5.weight.grad is None
    finally:
        net.zero_grad(set_to_none=True)
        net.eval()


def test_head_linear_weights_reproduce_the_clip_head_on_the_mean_feature(nets):
    net = nets["s"].eval()
    mlp = nn.Sequential(nn.Linear(432, 2048, bias=False), nn.ReLU(), nn.Dropout(0.5), nn.Linear(2048, 400))
    mlp.load_state_dict(net.head_linear_weights())
    mlp.eval()
    with torch.no_grad():
        out = net(clip(2, 3, 64))
        assert torch.allclose(mlp(out.frame_features.mean(dim=1)), out.final_logits, atol=1e-5)


@pytest.mark.parametrize("path", fixture_params("parity_*.pt", "x3d"))
def test_x3d_s_reproduces_the_official_glance_outputs(path):
    """The official X3D-S (global_CNN) on each forward parity fixture's glance clip, with the fixture's
    synthetic weights (its generator, manifest and checkpoint seed)."""
    import test_parity_x3d

    path = require_fixture(path)
    fixture = torch.load(path, map_location="cpu", weights_only=True)
    if "glance_clip_frame0" not in fixture:
        pytest.skip(f"{path.name} records no glance clip (a three-crop fixture)")
    generator = fixture_generator(path, fixture)
    manifest = generator.load_manifest(str(fixture_manifest_path(path, fixture)))
    state = generator.make_state_dict(manifest, fixture["checkpoint_seed"])
    cfg = fixture["config"]
    net = x3d_s(cfg["num_classes"])
    assert load_x3d_state_dict(net, {k[len("global_CNN."):]: v for k, v in state.items()
                                     if k.startswith("global_CNN.")}) == []
    glance = test_parity_x3d.glance_input(fixture)  # (B, 3G, S, S), as the fixture's recipe draws it
    b, g, side = cfg["batch_size"], cfg["num_glance_segments"], cfg["glance_size"]
    glance = F.interpolate(glance, (side, side), mode="bilinear").view(b, g, 3, side, side).permute(0, 2, 1, 3, 4)
    assert torch.equal(glance[:, :, 0], fixture["glance_clip_frame0"])
    with torch.no_grad():
        out = net.eval()(glance.contiguous())
    torch.testing.assert_close(out.final_logits, fixture["global_final_logit"], atol=2e-3, rtol=1e-3)
    torch.testing.assert_close(out.feature_maps, fixture["global_feat_maps"], atol=5e-3, rtol=1e-3)
    torch.testing.assert_close(out.frame_features.reshape(b * g, -1), fixture["global_feat"], atol=2e-3, rtol=1e-3)


@pytest.mark.parametrize("which, shape, official", [("s", (1, 3, 16, 160, 160), 2.415453044),
                                                    ("l", (1, 3, 32, 128, 128), 5.984521316)])
def test_gmacs_match_the_official_constants(nets, which, shape, official):
    # Counted on the whole forward, clip head included (lin_5 + projection: ~0.0017 GMACs).
    gmacs = count_gmacs(nets[which].eval(), torch.zeros(shape))
    assert gmacs == pytest.approx(official, rel=0.01)


# ------------------------------------------------------------------------------------------------
# SlowFast .pyth files
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("which", ["s", "l"])
def test_generated_pyth_loads_strictly_with_every_tensor_equal(x3d_pyth, which):
    path = x3d_pyth / f"x3d_{which}.pyth"
    model_state = torch.load(path, map_location="cpu", weights_only=True)["model_state"]
    torch.manual_seed(2)
    net = BUILD[which](pyth_num_classes(x3d_pyth))
    assert load_x3d_pyth(net, str(path)) == []
    own = net.state_dict()
    assert list(own) == list(model_state)
    for key, value in model_state.items():
        assert torch.equal(own[key], value), key


def test_constructor_weights_argument(x3d_pyth):
    net = x3d_s(pyth_num_classes(x3d_pyth), weights=str(x3d_pyth / "x3d_s.pyth"))
    state = read_x3d_pyth(str(x3d_pyth / "x3d_s.pyth"))
    assert torch.equal(net.head.lin_5.weight, state["head.lin_5.weight"])


def test_another_class_count_skips_only_the_projection(x3d_pyth):
    path = str(x3d_pyth / "x3d_s.pyth")
    classes = pyth_num_classes(x3d_pyth)
    other = classes // 2 + 1
    net = x3d_s(other)
    before = {k: net.state_dict()[k].clone() for k in PROJECTION_KEYS}
    notes = load_x3d_pyth(net, path)
    assert len(notes) == 1 and "head.projection" in notes[0] and str(classes) in notes[0] and str(other) in notes[0]
    state = read_x3d_pyth(path)
    for key, value in net.state_dict().items():
        assert torch.equal(value, before[key] if key in PROJECTION_KEYS else state[key]), key
    with pytest.raises(X3DWeightsError, match=r"mis-shaped: head\.projection\.weight"):
        load_x3d_pyth(x3d_s(other), path, skip_mismatched_projection=False)


def test_missing_file_names_the_path(tmp_path):
    path = tmp_path / "absent" / "x3d_s.pyth"
    with pytest.raises(X3DWeightsError, match="not found") as err:
        load_x3d_pyth(x3d_s(400), str(path))
    assert str(path) in str(err.value)


@pytest.mark.parametrize("content", ["truncated", "garbage"])
def test_corrupt_file_names_the_path(x3d_pyth, tmp_path, content):
    path = tmp_path / "x3d_s.pyth"
    data = (x3d_pyth / "x3d_s.pyth").read_bytes()
    path.write_bytes(data[: len(data) // 2] if content == "truncated" else b"not a checkpoint" * 64)
    with pytest.raises(X3DWeightsError, match="corrupt") as err:
        load_x3d_pyth(x3d_s(400), str(path))
    assert str(path) in str(err.value)
    assert "weights_only=False" not in str(err.value)  # torch's retry advice does not help a broken file


def test_wrong_key_names_the_file_and_the_key(x3d_pyth, tmp_path):
    state = read_x3d_pyth(str(x3d_pyth / "x3d_s.pyth"))
    state["s3.pathway0_res1.branch2.a.kernel"] = state.pop("s3.pathway0_res1.branch2.a.weight")
    path = tmp_path / "renamed.pyth"
    torch.save({"model_state": state, "epoch": 0}, path)
    net = x3d_s(pyth_num_classes(x3d_pyth))
    before = net.state_dict()["s1.pathway0_stem.conv_xy.weight"].clone()
    with pytest.raises(X3DWeightsError) as err:
        load_x3d_pyth(net, str(path))
    message = str(err.value)
    assert str(path) in message
    assert "missing keys (1): s3.pathway0_res1.branch2.a.weight" in message
    assert "unexpected keys (1): s3.pathway0_res1.branch2.a.kernel" in message
    assert torch.equal(net.state_dict()["s1.pathway0_stem.conv_xy.weight"], before)  # nothing loaded


def test_misshaped_backbone_key_is_an_error(x3d_pyth):
    state = read_x3d_pyth(str(x3d_pyth / "x3d_s.pyth"))
    state["s2.pathway0_res0.branch2.a.weight"] = torch.zeros(55, 24, 1, 1, 1)
    with pytest.raises(X3DWeightsError, match=r"mis-shaped: s2\.pathway0_res0\.branch2\.a\.weight: "
                                              r"file \(55, 24, 1, 1, 1\) vs model \(54, 24, 1, 1, 1\)"):
        load_x3d_state_dict(x3d_s(pyth_num_classes(x3d_pyth)), state, "edited x3d_s.pyth")


def test_x3d_l_file_into_x3d_s_names_the_extra_blocks(x3d_pyth):
    with pytest.raises(X3DWeightsError, match=r"unexpected keys \(\d+\): s2\.pathway0_res3\."):
        load_x3d_pyth(x3d_s(pyth_num_classes(x3d_pyth)), str(x3d_pyth / "x3d_l.pyth"))


class Marker:
    """A non-tensor object in a weight file; unpickling it would set ``unpickled``."""

    unpickled = False

    def __setstate__(self, state):
        Marker.unpickled = True
        self.__dict__.update(state)


def test_file_with_pickled_objects_is_refused_with_conversion_advice(tmp_path):
    path = tmp_path / "zoo.pyth"
    marker = Marker()
    marker.value = 1
    torch.save({"model_state": x3d_s(400).state_dict(), "cfg": marker, "epoch": 3}, path)
    with pytest.raises(X3DWeightsError) as err:
        load_x3d_pyth(x3d_s(400), str(path))
    message = str(err.value)
    assert str(path) in message and "non-tensor objects" in message and "Marker" in message
    assert "weights_only=False" in message and "model_state" in message
    assert not Marker.unpickled  # never loaded unsafely


def test_file_without_model_state(tmp_path):
    path = tmp_path / "other.pyth"
    torch.save({"epoch": 1, "optimizer_state": {}}, path)
    with pytest.raises(X3DWeightsError, match="model_state") as err:
        read_x3d_pyth(str(path))
    assert str(path) in str(err.value)
