"""Shared fixtures: the real test videos, small frame folders, the generated X3D weight files."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import entry_points
from support import fixture_params, require_fixture

REPO = Path(__file__).resolve().parents[1]
TEST_VIDEOS = ("Megamind.avi", "Megamind_bugy.avi", "tree.avi", "vtest.avi")
DEFAULT_VIDEO_DIR = Path.home() / ".cache" / "uniadafocus" / "test-videos"
#: The X3D fixtures' checkpoint generator (the ``checkpoint_generator`` their parity fixtures name).
X3D_GENERATOR = "make_parity_checkpoint_x3d.py"


def _complete(folder: Path) -> bool:
    return all((folder / name).is_file() and (folder / name).stat().st_size > 0 for name in TEST_VIDEOS)


@pytest.fixture(scope="session")
def test_videos() -> Path:
    """Folder with OpenCV's sample videos (scripts/fetch_test_videos.sh).

    Looks at $UNIADAFOCUS_TEST_VIDEOS, then ~/.cache/uniadafocus/test-videos, then runs the fetch
    script once. Skips when they cannot be had, or fails when $UNIADAFOCUS_REQUIRE_TEST_VIDEOS=1.
    """
    env = os.environ.get("UNIADAFOCUS_TEST_VIDEOS")
    candidates = [Path(env)] if env else []
    candidates.append(DEFAULT_VIDEO_DIR)
    for folder in candidates:
        if _complete(folder):
            return folder
    target = candidates[0]
    try:
        run = subprocess.run(["bash", str(REPO / "scripts" / "fetch_test_videos.sh"), str(target)],
                             capture_output=True, text=True, timeout=600)
        detail = (run.stderr or run.stdout).strip().splitlines()[-1:] or [f"exit {run.returncode}"]
    except (OSError, subprocess.TimeoutExpired) as e:
        detail = [str(e)]
    if _complete(target):
        return target
    reason = (f"real test videos unavailable (scripts/fetch_test_videos.sh {target} failed: {detail[0]}); "
              f"set UNIADAFOCUS_TEST_VIDEOS to a folder holding {', '.join(TEST_VIDEOS)}")
    if os.environ.get("UNIADAFOCUS_REQUIRE_TEST_VIDEOS") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


def frame_value(index: int) -> int:
    """The grey level that :func:`write_frames` gives frame ``index`` (1..51: 5, 10, ..., 255)."""
    if not 1 <= index <= 51:
        raise ValueError("write_frames encodes frame numbers 1..51 only")
    return 5 * index


@pytest.fixture
def write_frames():
    """Factory: ``write_frames(folder, n, size=(w, h), template=..., start=1)`` writes n frames.

    Frame i is a uniform image of grey level ``frame_value(i)`` with a 2-pixel red square at the
    top-left corner (so orientation can be checked); PNG frames decode exactly.
    """
    def write(folder, n, size=(40, 30), template="image_{:05d}.png", start=1):
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        w, h = size
        for i in range(start, start + n):
            frame = np.full((h, w, 3), frame_value(i), dtype=np.uint8)
            frame[:2, :2] = (255, 0, 0)
            Image.fromarray(frame).save(folder / template.format(i))
        return folder
    return write


@pytest.fixture
def tiny_actnet(tmp_path, write_frames):
    """An ActivityNet-layout data dir: 4 classes, 3 train videos (one with 3 labels), 2 val videos.

    Paths contain spaces; frames are PNG (``template='image_{:05d}.png'`` must be passed).
    """
    root = tmp_path / "actnet"
    (root / "frames").mkdir(parents=True)
    (root / "classInd.txt").write_text("walk\nrun\njump\nswim\n")
    train = [("vid one", 20, [2]), ("vid two", 7, [0, 3, 1]), ("vid three", 50, [3])]
    val = [("val one", 30, [1]), ("val two", 5, [0, 2])]
    for name, n, _ in train + val:
        write_frames(root / "frames" / name, n)
    (root / "actnet_train_split.txt").write_text(
        "".join(f"{name},{n},{','.join(map(str, labels))}\n" for name, n, labels in train))
    (root / "actnet_val_split.txt").write_text(
        "".join(f"{name},{n},{','.join(map(str, labels))}\n" for name, n, labels in val))
    return root


@pytest.fixture
def grey_to_frame():
    """Inverse of :func:`frame_value` (to the nearest level): grey level -> frame number."""
    return lambda grey: int(round(float(grey) / 5))


@pytest.fixture(scope="session", params=fixture_params("*_state_dict.json", "x3d"))
def x3d_pyth(request, tmp_path_factory) -> Path:
    """A folder with x3d_s.pyth and x3d_l.pyth in SlowFast's layout, written by the X3D fixtures' generator
    (``make_parity_checkpoint_x3d.py --pyth``, seed 0) from each manifest of the reference x3d folder."""
    manifest = require_fixture(request.param)
    out = tmp_path_factory.mktemp("pyth")
    run = entry_points.run([sys.executable, str(manifest.parent / X3D_GENERATOR), str(manifest), "--seed", "0",
                            "--pyth", str(out)], timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    return out
