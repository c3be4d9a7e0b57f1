"""Shared helpers for the tests: where the reference fixtures live, small model configurations."""
from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from typing import NamedTuple

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def reference_dir() -> Path:
    """The official-behaviour fixtures: $UNIADAFOCUS_REFERENCE or ../shared/reference beside the repo."""
    env = os.environ.get("UNIADAFOCUS_REFERENCE")
    return Path(env) if env else REPO.parent / "shared" / "reference"


def require_reference() -> Path:
    """The reference folder; skips when it is absent (fails instead when $UNIADAFOCUS_REQUIRE_REFERENCE=1)."""
    path = reference_dir()
    if not (path / "make_parity_checkpoint.py").is_file():
        reason = f"reference fixtures not found in {path} (set UNIADAFOCUS_REFERENCE)"
        if os.environ.get("UNIADAFOCUS_REQUIRE_REFERENCE") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    return path


class MissingFixture(NamedTuple):
    """The one parameter :func:`fixture_params` gives when no file matches ``pattern`` in ``where``."""
    where: str
    pattern: str


def fixture_params(pattern: str, *subfolders: str) -> list:
    """pytest parameters, one per file of the reference folder matching ``pattern`` (a glob) in each of
    ``subfolders`` ("" for the folder itself), with the file name as the test id; collected at import time
    from file names only (nothing is loaded). Where no file matches, one :class:`MissingFixture`
    parameter, which :func:`require_fixture` turns into a skip or a failure."""
    root, subfolders = reference_dir(), subfolders or ("",)
    found = [path for sub in subfolders if (root / sub).is_dir() for path in sorted((root / sub).glob(pattern))]
    if found:
        return [pytest.param(path, id=path.name) for path in found]
    where = " or ".join(str(root / sub) for sub in subfolders)
    return [pytest.param(MissingFixture(where, pattern), id=f"no-{pattern}")]


def require_fixture(param) -> Path:
    """A parameter of :func:`fixture_params` as a path. Without the reference folder the test skips (fails
    with $UNIADAFOCUS_REQUIRE_REFERENCE=1, as :func:`require_reference`); with the folder but no matching
    file it fails: the folder was meant to hold one."""
    if isinstance(param, MissingFixture):
        require_reference()
        pytest.fail(f"no {param.pattern} in {param.where}")
    return param


def load_generator(path: Path):
    """A checkpoint generator script (make_parity_checkpoint*.py), imported by path."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


#: The generator of a parity fixture that names none (the mn2_r50 fixtures): the one in its folder.
DEFAULT_GENERATOR = "make_parity_checkpoint.py"


def fixture_generator(fixture_path: Path, fixture: dict):
    """The checkpoint generator a parity fixture names (``checkpoint_generator``, relative to its folder;
    :data:`DEFAULT_GENERATOR` in its folder where it names none)."""
    return load_generator((fixture_path.parent / fixture.get("checkpoint_generator", DEFAULT_GENERATOR)).resolve())


def fixture_manifest_path(fixture_path: Path, fixture: dict) -> Path:
    """The manifest a parity fixture names (``manifest``), in its folder or the folder above; a fixture that
    names none (the mn2_r50 ones) has the official file name of its configuration,
    ``uni_adafocus_{dataset}_p{patch_size}_state_dict.json``, in its folder."""
    cfg = fixture.get("config", {})
    name = fixture.get("manifest") or f"uni_adafocus_{cfg.get('dataset')}_p{cfg.get('patch_size')}_state_dict.json"
    for folder in (fixture_path.parent, fixture_path.parent.parent):
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(f"{name} (the manifest of {fixture_path})")


def fixture_checkpoint(fixture_path: Path, fixture: dict, folder: Path):
    """The fixture's synthetic official checkpoint, made by its generator from its manifest and
    ``checkpoint_seed``, checked against its ``state_dict_sha256`` and written to ``folder/ckpt.pth.tar``:
    (that path, the manifest)."""
    generator = fixture_generator(fixture_path, fixture)
    manifest = generator.load_manifest(fixture_manifest_path(fixture_path, fixture))
    ckpt = generator.make_checkpoint(manifest, fixture["checkpoint_seed"])
    if "state_dict" in ckpt:  # DataParallel / DDP layout: the digest is over the unprefixed state dict
        state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in ckpt["state_dict"].items()}
    else:  # a layout that splits the state over several entries (AdaFocus V1)
        state = generator.make_state_dict(manifest, fixture["checkpoint_seed"])
    assert generator.state_dict_digest(state) == fixture["state_dict_sha256"], \
        f"the synthetic checkpoint differs from the one {fixture_path.name} was made with"
    path = Path(folder) / "ckpt.pth.tar"
    torch.save(ckpt, path)
    return path, manifest


class Capture:
    """Forward hooks recording the outputs of named submodules during a forward: ``values[name]``."""

    def __init__(self, modules: dict):
        self.values = {}
        self.handles = [m.register_forward_hook(self._hook(name)) for name, m in modules.items()]

    def _hook(self, name):
        def record(module, inputs, output):
            self.values[name] = output
        return record

    def remove(self):
        for h in self.handles:
            h.remove()


def manifest_entries(path: Path) -> list:
    """A state-dict manifest: the JSON list of ``[key, shape, dtype]``, checked to be one (ValueError
    naming the file and the entry otherwise)."""
    entries = json.loads(Path(path).read_text())
    if not isinstance(entries, list):
        raise ValueError(f"{path}: not a JSON list")
    for i, entry in enumerate(entries):
        ok = (isinstance(entry, list) and len(entry) == 3 and isinstance(entry[0], str) and isinstance(entry[2], str)
              and isinstance(entry[1], list) and all(isinstance(n, int) and n >= 0 for n in entry[1]))
        if not ok:
            raise ValueError(f"{path}: entry {i} is not [key, shape, dtype]: {entry!r}")
    return entries


def pyth_num_classes(folder: Path) -> int:
    """The class count of the X3D-S weight file ``folder/x3d_s.pyth`` (rows of its head projection)."""
    state = torch.load(folder / "x3d_s.pyth", map_location="cpu", weights_only=True)["model_state"]
    return state["head.projection.weight"].shape[0]


TINY = dict(num_classes=5, num_segments=8, num_glance_segments=4, num_focus_segments=4, patch_size=32,
            input_size=64, stn_hidden_dim=16, temporal_hidden_dim=8, classifier_dim=32, focus_arch="resnet18")


def tiny_model(**overrides):
    """A small, fast configuration for CPU tests (MobileNetV2 + ResNet-18 at 64 px, 8 frames)."""
    from models import UniAdaFocus

    cfg = dict(TINY)
    cfg.update(overrides)
    return UniAdaFocus(**cfg)


def random_video(batch=2, frames=8, size=64, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    if dtype == torch.uint8:
        return torch.randint(0, 256, (batch, frames, 3, size, size), generator=g, dtype=torch.uint8)
    return torch.randn(batch, frames, 3, size, size, generator=g, dtype=dtype)


class RandomVideos(torch.utils.data.Dataset):
    """``size`` seeded random uint8 videos (frames, 3, side, side) with labels, as the datasets give items
    (``video``, ``label``, ``index``); ``set_epoch`` as the training loop calls it."""

    def __init__(self, size=8, frames=8, side=64, num_classes=5, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.videos = torch.randint(0, 256, (size, frames, 3, side, side), generator=g, dtype=torch.uint8)
        self.labels = torch.randint(0, num_classes, (size,), generator=g)
        self.epoch = 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        return {"video": self.videos[index], "label": int(self.labels[index]), "index": index}


def random_video_loader(batch_size=2, pin_memory=False, **dataset_options):
    """A one-process training loader over :class:`RandomVideos` (DistributedSampler, as main.py builds it)."""
    dataset = RandomVideos(**dataset_options)
    sampler = torch.utils.data.DistributedSampler(dataset, num_replicas=1, rank=0, shuffle=True, seed=0, drop_last=True)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=True,
                                       pin_memory=pin_memory)
