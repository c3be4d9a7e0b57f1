"""Shared helpers for the tests: where the reference fixtures live, small model configurations."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

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


X3D_MANIFEST = "uni_adafocus_x3d_k400_p128_16and32_state_dict.json"


def x3d_reference() -> Path:
    """The X3D fixtures' folder (reference/x3d); skips when its manifest is absent."""
    folder = require_reference() / "x3d"
    if not (folder / X3D_MANIFEST).is_file():
        pytest.skip(f"X3D reference fixtures not found in {folder}")
    return folder


def parity_generator():
    """The fixtures' own checkpoint generator module (make_parity_checkpoint.py), imported by path."""
    path = require_reference() / "make_parity_checkpoint.py"
    spec = importlib.util.spec_from_file_location("make_parity_checkpoint", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fixture_generator(fixture_path: Path, fixture: dict):
    """The checkpoint generator a parity fixture names (``checkpoint_generator``, relative to its folder)."""
    path = (fixture_path.parent / fixture["checkpoint_generator"]).resolve()
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fixture_manifest_path(fixture_path: Path, fixture: dict) -> Path:
    """The manifest a parity fixture names (``manifest``), in its folder or the folder above."""
    for folder in (fixture_path.parent, fixture_path.parent.parent):
        if (folder / fixture["manifest"]).is_file():
            return folder / fixture["manifest"]
    raise FileNotFoundError(f"{fixture['manifest']} (named by {fixture_path})")


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
