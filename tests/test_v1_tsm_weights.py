"""adafocus_v1_tsm's encoders from the TSM repository's pre-trained files (the official stage 1's
``pretrained_glancer`` = a TSM MobileNetV2 file, ``pretrained_focuser`` = a TSM ResNet-50 file) through
``--glance_weights`` / ``--focus_weights``, and from plain ImageNet files as before.

The TSM files are written here from a randomised tiny model by the repository's layout, spelled out in this file
(not by the code under test): a dict with ``state_dict`` (and ``epoch``, ``arch``, ``best_prec1``) whose keys are
``module.base_model.`` + the backbone's keys and ``module.new_fc.weight/bias``; the backbone's own last layer is
absent; MobileNetV2 in tonylins' flat layer numbering (``features.N.conv.K``), the shifted convolutions
``...conv.0.net.weight`` (MobileNetV2) and ``layerI.J.conv1.net.weight`` (ResNet-50, torchvision's names
otherwise). Checked: every encoder tensor (and the glance head, from ``new_fc``) equals the file's, the focus
file's ``new_fc`` is not read (the README's ``load_pretrained_focuser_fc=False``), the glance and focus passes
equal those of the model the weights came from, an ImageNet download happens only for an encoder given no file,
a missing / unexpected / mis-shaped key and a file of the other encoder each give one line naming the file and
the key; and stage 1 through main.py starts from the files.
"""
from __future__ import annotations

import math

import pytest
import torch
import torchvision

import entry_points
from test_v1_sth_training import _main, _python
from test_v1_training import SYNTHETIC, _check, _env, _weights, data_dir  # noqa: F401 (a fixture)

from models.adafocus_v1_sth import AdaFocusV1TSM
from models.backbones import BackboneWeightsError

TINY = dict(num_classes=5, num_segments=4, num_glance_segments=4, patch_size=32, input_size=64, glance_size=64,
            hidden_state_dim=16)
#: tonylins' flat MobileNetV2 layer numbers of torchvision's grouped names, block 1 (no expansion layer) and the
#: others: [expand conv, BN, (ReLU6 2)], [depthwise conv, BN, (ReLU6 5)], projection conv, BN.
FLAT_BLOCK1 = {"0.0": "0", "0.1": "1", "1": "3", "2": "4"}
FLAT_BLOCKS = {"0.0": "0", "0.1": "1", "1.0": "3", "1.1": "4", "2": "6", "3": "7"}


def randomised(seed: int, **overrides) -> AdaFocusV1TSM:
    """A tiny model with every tensor drawn at random (BatchNorm statistics and counters too)."""
    torch.manual_seed(seed)
    model = AdaFocusV1TSM(**dict(TINY, **overrides))
    with torch.no_grad():
        for name, value in model.state_dict().items():
            if not value.is_floating_point():
                value.fill_(int(torch.randint(1, 1000, ())))
            elif name.endswith("running_var"):
                value.copy_(torch.rand_like(value) + 0.5)
            elif value.dim() >= 2:
                value.copy_(torch.randn_like(value) * math.sqrt(2.0 / value[0].numel()))
            else:
                value.copy_(0.1 * torch.randn_like(value) + (1.0 if name.endswith("weight") else 0.0))
    return model.eval()


def flat_mobilenet_key(key: str) -> str:
    """Our glance encoder's key (``features.N.conv.<torchvision group>...``) in tonylins' flat numbering."""
    parts = key.split(".")
    if parts[0] != "features" or len(parts) < 4 or parts[2] != "conv":
        return key  # features.0 and features.18 are named alike
    table = FLAT_BLOCK1 if parts[1] == "1" else FLAT_BLOCKS
    two = ".".join(parts[3:5])
    head, rest = (table[two], parts[5:]) if two in table else (table[parts[3]], parts[4:])
    return ".".join(parts[:3] + [head] + rest)


def tsm_files(model: AdaFocusV1TSM, folder, focus_classes: int = 7):
    """(glance file, focus file) in the TSM repository's layout from ``model``'s encoders (the glance file's
    ``new_fc`` = its glance head; the focus file's ``new_fc`` a random classifier of ``focus_classes``), and their
    state dicts."""
    state = model.state_dict()
    glance = {"module.base_model." + flat_mobilenet_key(k[len("glance."):]): v.clone()
              for k, v in state.items() if k.startswith("glance.")}
    glance.update({"module.new_fc.weight": state["glance_head.weight"].clone(),
                   "module.new_fc.bias": state["glance_head.bias"].clone()})
    focus = {"module.base_model." + k[len("focus."):]: v.clone() for k, v in state.items() if k.startswith("focus.")}
    focus.update({"module.new_fc.weight": torch.randn(focus_classes, 2048), "module.new_fc.bias": torch.randn(focus_classes)})
    paths = folder / "mobilenetv2_segment8.pth.tar", folder / "resnet50_segment12.pth.tar"
    for path, arch, entries in zip(paths, ("mobilenetv2", "resnet50"), (glance, focus)):
        torch.save({"epoch": 50, "arch": arch, "best_prec1": 45.5, "state_dict": entries}, path)
    return paths, (glance, focus)


def _save(path, entries):
    torch.save({"epoch": 50, "arch": "x", "best_prec1": 45.5, "state_dict": entries}, path)
    return str(path)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """A randomised model and its two TSM files."""
    folder = tmp_path_factory.mktemp("tsm_files")
    source = randomised(1)
    paths, states = tsm_files(source, folder)
    return source, paths, states


def test_tsm_files_load_into_the_shifted_encoders_and_the_glance_head(written):
    source, (glance_path, focus_path), (glance_file, focus_file) = written
    torch.manual_seed(2)
    fresh = AdaFocusV1TSM(**TINY)
    torch.manual_seed(2)
    model = AdaFocusV1TSM(**TINY, glance_weights=str(glance_path), focus_weights=str(focus_path)).eval()
    ours, theirs = model.state_dict(), source.state_dict()
    loaded = [k for k in ours if k.startswith(("glance.", "glance_head.", "focus."))]
    assert len(loaded) == len(glance_file) + len(focus_file) - 2  # all but the focus file's new_fc
    for key in loaded:
        assert torch.equal(ours[key], theirs[key]), key
    # every tensor equals the file's, by the file's own names
    for key in (k for k in ours if k.startswith("glance.")):
        assert torch.equal(ours[key], glance_file["module.base_model." + flat_mobilenet_key(key[len("glance."):])]), key
    assert torch.equal(ours["glance_head.weight"], glance_file["module.new_fc.weight"])
    for key in (k for k in ours if k.startswith("focus.")):
        assert torch.equal(ours[key], focus_file["module.base_model." + key[len("focus."):]]), key
    assert "glance.features.3.conv.0.0.net.weight" in ours and "focus.layer1.0.conv1.net.weight" in ours
    # the focus file's new_fc is not read: the classifier and the policy are the fresh model's
    for key in (k for k in ours if k.startswith(("classifier.", "policy."))):
        assert torch.equal(ours[key], fresh.state_dict()[key]), key
    # the glance and focus passes are those of the model the files were written from
    video = torch.randn(2, 4, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        for a, b in zip(model.glance_pass(video), source.glance_pass(video)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
        corners = torch.tensor([[5, 17], [30, 0]])
        torch.testing.assert_close(model.focus_pass(video, corners)[0], source.focus_pass(video, corners)[0],
                                   rtol=0, atol=0)


def test_imagenet_files_still_load_and_only_an_encoder_without_a_file_downloads(written, tmp_path, monkeypatch):
    source, (glance_path, _), _ = written
    state = source.state_dict()
    plain_glance = {k[len("glance."):].replace(".net.", "."): v for k, v in state.items() if k.startswith("glance.")}
    plain_glance.update({"classifier.1.weight": torch.randn(1000, 1280), "classifier.1.bias": torch.randn(1000)})
    plain_focus = {k[len("focus."):].replace(".net.", "."): v for k, v in state.items() if k.startswith("focus.")}
    plain_focus.update({"fc.weight": torch.randn(1000, 2048), "fc.bias": torch.randn(1000)})
    torch.save(plain_glance, tmp_path / "mobilenet_v2.pth")
    torch.save({"state_dict": {"module." + k: v for k, v in plain_focus.items()}}, tmp_path / "resnet50.pth")
    model = AdaFocusV1TSM(**TINY, glance_weights=str(tmp_path / "mobilenet_v2.pth"),
                          focus_weights=str(tmp_path / "resnet50.pth"))
    ours = model.state_dict()
    assert all(torch.equal(ours[k], state[k]) for k in ours if k.startswith(("glance.", "focus.")))
    assert not torch.equal(ours["glance_head.weight"], state["glance_head.weight"])  # an ImageNet file has no head

    def no_download(self, *args, **kwargs):
        raise AssertionError("the glance encoder's ImageNet weights were asked for")

    monkeypatch.setattr(torchvision.models.MobileNet_V2_Weights, "get_state_dict", no_download)
    monkeypatch.setattr(torchvision.models.ResNet50_Weights, "get_state_dict", lambda self, *a, **k: plain_focus)
    model = AdaFocusV1TSM(**TINY, pretrained=True, glance_weights=str(glance_path))
    ours = model.state_dict()
    assert all(torch.equal(ours[k], state[k]) for k in ours if k.startswith(("glance.", "glance_head.", "focus.")))


def _refusal(**weights) -> str:
    with pytest.raises(BackboneWeightsError) as refused:
        AdaFocusV1TSM(**TINY, **weights)
    message = str(refused.value)
    assert "\n" not in message
    return message


def test_a_file_that_does_not_fit_is_refused_in_one_line_naming_the_keys(written, tmp_path):
    _, _, (glance_file, focus_file) = written
    shifted = "module.base_model.features.3.conv.0.net.weight"
    path = _save(tmp_path / "missing.pth.tar", {k: v for k, v in glance_file.items() if k != shifted})
    message = _refusal(glance_weights=path)
    assert message.startswith(f"--glance_weights {path}: a TSM repository MobileNetV2 file that does not fit "
                              "the model's glance and glance_head: ")
    assert "missing keys (1): base_model.features.3.conv.0.net.weight" in message and "unexpected" not in message

    path = _save(tmp_path / "unexpected.pth.tar", dict(focus_file, **{"module.base_model.layer5.0.conv1.weight":
                                                                       torch.zeros(1)}))
    message = _refusal(focus_weights=path)
    assert message.startswith(f"--focus_weights {path}: a TSM repository ResNet-50 file that does not fit "
                              "the model's focus: ")
    assert "unexpected keys (1): base_model.layer5.0.conv1.weight" in message and "missing" not in message

    path = _save(tmp_path / "classes.pth.tar", dict(glance_file, **{"module.new_fc.weight": torch.zeros(7, 1280),
                                                                     "module.new_fc.bias": torch.zeros(7)}))
    message = _refusal(glance_weights=path)
    assert "mis-shaped: new_fc.weight: file (7, 1280) vs model (5, 1280)" in message and path in message
    # a TSM file without the temporal shift (plain convolutions where the shifted ones are)
    unshifted = {k.replace(".net.", "."): v for k, v in focus_file.items()}
    path = _save(tmp_path / "unshifted.pth.tar", unshifted)
    message = _refusal(focus_weights=path)
    assert "missing keys (16): base_model.layer1.0.conv1.net.weight" in message
    assert "unexpected keys (16): base_model.layer1.0.conv1.weight" in message


def test_a_file_of_the_other_encoder_is_refused_in_one_line(written, tmp_path):
    _, (glance_path, focus_path), _ = written
    message = _refusal(glance_weights=str(focus_path))
    assert message == (f"--glance_weights {focus_path}: a TSM repository ResNet-50 file (keys base_model.layer1.*), "
                       "but the glance encoder is MobileNetV2: it is the focus encoder's file (--focus_weights)")
    message = _refusal(focus_weights=str(glance_path))
    assert message.startswith(f"--focus_weights {glance_path}: a TSM repository MobileNetV2 file")
    plain = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), plain)
    message = _refusal(glance_weights=str(plain))
    assert message.startswith(f"--glance_weights {plain}: an ImageNet ResNet-50 file (keys layer1.*)")
    message = _refusal(focus_weights=str(tmp_path / "absent.pth"))
    assert message.startswith("--focus_weights: ") and "absent.pth" in message


def test_stage_1_through_main_py_starts_from_the_tsm_files(data_dir, tmp_path):
    """The official stage 1's starting point: main.py --stage 1 with the two files (the tiny flags of
    tests/test_v1_sth_training.py); the glance encoder and head are the files' after the stage (frozen), the focus
    encoder too but for what the official groups train (its first convolution, BatchNorm statistics)."""
    source = randomised(4, num_classes=SYNTHETIC["num_classes"])
    (glance_path, focus_path), _ = tsm_files(source, tmp_path)
    root = tmp_path / "runs"
    _check(entry_points.run(_python(_main(data_dir, root, "--stage", "1", "--epochs", "1", "--iters_per_epoch", "1",
                                          "--eval_freq", "0", "--store_name", "s1", "--glance_weights", str(glance_path),
                                          "--focus_weights", str(focus_path))), env=_env(), timeout=300))
    after, state = _weights(root / "s1" / "ckpt.pth.tar"), source.state_dict()
    assert all(torch.equal(after[k], state[k]) for k in state if k.startswith(("glance.", "glance_head.")))
    focus = [k for k in state if k.startswith("focus.") and k != "focus.conv1.weight" and ".running_" not in k
             and not k.endswith("num_batches_tracked")]
    assert len(focus) > 100 and all(torch.equal(after[k], state[k]) for k in focus)
    wrong = entry_points.run(_python(_main(data_dir, root, "--stage", "1", "--epochs", "1", "--store_name", "w",
                                           "--glance_weights", str(focus_path))), env=_env(), timeout=300)
    errors = [line for line in wrong.stderr.splitlines() if line.strip()]
    assert wrong.returncode != 0 and "Traceback" not in wrong.stderr and len(errors) == 1, wrong.stderr[-2000:]
    assert str(focus_path) in errors[0] and "--focus_weights" in errors[0]
