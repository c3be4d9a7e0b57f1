"""Checkpoint reading/writing (ops.checkpoint) and backbone weight files (models.backbones)."""
import os
import urllib.error

import pytest
import torch
import torchvision

from models.backbones import BackboneWeightsError, FocusEncoder, GlanceEncoder, mbv2_torchvision_to_flat
from models.mn2_r50 import ours_to_official
from ops.checkpoint import CheckpointError, atomic_save, load_checkpoint, save_checkpoint
from support import tiny_model


def _official_checkpoint(model, optimizer=None, prefix="module.", **extra):
    state = {prefix + ours_to_official(k): v.clone() for k, v in model.state_dict().items()}
    gdim, fdim = model.glance.feature_dim, model.focus.feature_dim
    state[prefix + "global_CNN.classifier.weight"] = torch.zeros(1000, gdim)
    state[prefix + "global_CNN.classifier.bias"] = torch.zeros(1000)
    state[prefix + "local_CNN.fc.weight"] = torch.zeros(1000, fdim)
    state[prefix + "local_CNN.fc.bias"] = torch.zeros(1000)
    ckpt = {"epoch": 12, "state_dict": state, "optimizer": optimizer if optimizer is not None else {},
            "best_acc1": torch.tensor(77.5)}
    ckpt.update(extra)
    return ckpt


def _randomise(model, seed):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in model.state_dict().values():
            if t.is_floating_point():
                t.copy_(torch.randn(t.shape, generator=gen))
    return model


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("prefix", ["module.", ""])
def test_official_release_format_loads(tmp_path, prefix):
    source = _randomise(tiny_model(), 0)
    sgd = torch.optim.SGD(source.parameters(), lr=0.1, momentum=0.9)
    path = tmp_path / "official.pth.tar"
    torch.save(_official_checkpoint(source, optimizer=sgd.state_dict(), prefix=prefix, scaler={"scale": 1024.0}), path)
    target = tiny_model()
    info = load_checkpoint(str(path), target)
    assert _same_weights(source, target)
    assert info.format == "official" and info.epoch == 12 and info.best_metric == pytest.approx(77.5)
    assert info.optimizer is None  # parameter groups of the official model do not transfer
    assert info.extra["scaler"] == {"scale": 1024.0} and "optimizer" in info.extra
    assert sorted(info.dropped_keys) == ["global_CNN.classifier.bias", "global_CNN.classifier.weight",
                                         "local_CNN.fc.bias", "local_CNN.fc.weight"]


def test_plain_official_state_dict_loads(tmp_path):
    source = _randomise(tiny_model(), 1)
    path = tmp_path / "weights.pth"
    torch.save(_official_checkpoint(source)["state_dict"], path)
    target = tiny_model()
    assert load_checkpoint(str(path), target).format == "official"
    assert _same_weights(source, target)


def test_our_format_round_trips_with_weights_only(tmp_path):
    source = _randomise(tiny_model(), 2)
    sgd = torch.optim.SGD(source.parameters(), lr=0.1, momentum=0.9)
    source(torch.zeros(2, 8, 3, 64, 64)).exit_logits.sum().backward()
    sgd.step()
    path = tmp_path / "ckpt.pth.tar"
    save_checkpoint(str(path), source,
                    optimizer=sgd.state_dict(), epoch=3, best_metric=55.0, config={"lr": 0.1, "name": "x"})
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == "uniadafocus" and raw["config"] == {"lr": 0.1, "name": "x"}
    target = tiny_model()
    info = load_checkpoint(str(path), target)
    assert _same_weights(source, target)
    assert info.epoch == 3 and info.best_metric == 55.0 and info.extra["config"]["name"] == "x"
    sgd2 = torch.optim.SGD(target.parameters(), lr=0.1, momentum=0.9)
    sgd2.load_state_dict(info.optimizer)


def test_mismatches_are_named(tmp_path):
    source = tiny_model()
    state = source.state_dict()
    state.pop("focus_head.1.bias")
    state["classifier.extra.weight"] = torch.zeros(1)
    state["spatial_head.weight"] = torch.zeros(7, 1280)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(str(path), tiny_model())
    message = str(err.value)
    assert str(path) in message
    assert "missing keys (1): focus_head.1.bias" in message
    assert "unexpected keys (1): classifier.extra.weight" in message
    assert "mis-shaped: spatial_head.weight: checkpoint (7, 1280) vs model (5, 1280)" in message


def test_non_strict_loading_skips_what_does_not_fit(tmp_path):
    source = _randomise(tiny_model(), 3)
    path = tmp_path / "c.pth"
    save_checkpoint(str(path), source)
    target = tiny_model(num_classes=7)
    load_checkpoint(str(path), target, strict=False)
    assert torch.equal(target.glance.features[0][0].weight, source.glance.features[0][0].weight)
    assert target.spatial_head.weight.shape == (7, 1280)


def test_unreadable_files_give_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(str(tmp_path / "nope.pth"), tiny_model())
    broken = tmp_path / "broken.pth"
    broken.write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read checkpoint .*broken.pth"):
        load_checkpoint(str(broken), tiny_model())
    listing = tmp_path / "list.pth"
    torch.save([1, 2], listing)
    with pytest.raises(CheckpointError, match="holds a list"):
        load_checkpoint(str(listing), tiny_model())


def test_atomic_save_never_leaves_a_partial_file(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pth.tar"
    atomic_save({"a": torch.ones(3)}, str(path))

    def crash(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        atomic_save({"a": torch.zeros(3)}, str(path))
    monkeypatch.undo()
    assert torch.equal(torch.load(path, weights_only=True)["a"], torch.ones(3))
    assert os.listdir(tmp_path) == ["ckpt.pth.tar"]


def test_glance_weights_load_in_torchvision_and_official_layouts(tmp_path):
    reference = _randomise(torchvision.models.mobilenet_v2(), 4)
    tv_file, flat_file = tmp_path / "tv.pth", tmp_path / "flat.pth.tar"
    torch.save(reference.state_dict(), tv_file)
    flat = {mbv2_torchvision_to_flat(k): v for k, v in reference.state_dict().items()}
    flat["classifier.weight"], flat["classifier.bias"] = flat.pop("classifier.1.weight"), flat.pop("classifier.1.bias")
    assert "features.1.conv.3.weight" in flat and "features.2.conv.7.running_var" in flat
    torch.save(flat, flat_file)
    for path in (tv_file, flat_file):
        enc = GlanceEncoder(weights=str(path)).eval()
        assert all(torch.equal(a, b) for a, b in zip(enc.features.state_dict().values(),
                                                     reference.features.state_dict().values()))


def test_focus_weights_load_from_a_torchvision_file(tmp_path):
    reference = _randomise(torchvision.models.resnet18(), 5)
    path = tmp_path / "r18.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in reference.state_dict().items()}}, path)
    enc = FocusEncoder("resnet18", weights=str(path))
    torch.testing.assert_close(enc.layer4[1].conv2.weight, reference.layer4[1].conv2.weight)
    with pytest.raises(BackboneWeightsError, match="missing"):
        FocusEncoder("resnet34", weights=str(path))


def test_offline_pretrained_request_explains_what_to_do(monkeypatch):
    def offline(self, *args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torchvision.models.ResNet18_Weights, "get_state_dict", offline)
    with pytest.raises(BackboneWeightsError) as err:
        FocusEncoder("resnet18", pretrained=True)
    message = str(err.value)
    assert "resnet18" in message and "--focus_weights" in message and "checkpoints" in message


def test_resuming_returns_where_the_run_stands_from_our_and_official_checkpoints(tmp_path):
    """run_state.restore: our checkpoint carries epoch, best, best epoch and the seconds so far; an official one
    continues at its epoch with no time; a missing --resume auto checkpoint starts from scratch."""
    import argparse

    from ops import run_state
    from ops.run_log import RunLog

    log = RunLog(str(tmp_path), enabled=False)
    source = _randomise(tiny_model(), 2)
    sgd = torch.optim.SGD(source.parameters(), lr=0.1, momentum=0.9)
    ours = tmp_path / "ours.pth.tar"
    run_state.save_run_checkpoint(str(ours), source, sgd, None, 3, 61.5, 2, argparse.Namespace(), time_s=42.0)
    official = tmp_path / "official.pth.tar"
    torch.save(_official_checkpoint(source), official)
    for path, expected in ((str(ours), (3, 61.5, 2, 42.0)), (str(official), (12, pytest.approx(77.5), None, 0.0)),
                           ("auto", (0, None, None, 0.0))):
        model = tiny_model()
        args = argparse.Namespace(resume=path, evaluate=False)
        epoch, best, best_epoch, time_s = run_state.restore(args, model, torch.optim.SGD(model.parameters(), lr=0.1),
                                                            None, log, str(tmp_path / "empty"))
        assert (epoch, best, best_epoch, time_s) == expected, path
