"""load_clip: a raw video file gives the evaluation clip the datasets give for its extracted frames."""
import shutil

import pytest
import torch

from datasets import DataError, build_dataset
from datasets.clip import load_clip
from datasets.extract import main as extract
from datasets.sampling import segment_indices

pytest.importorskip("av")


@pytest.fixture(scope="module")
def extracted(test_videos, tmp_path_factory):
    """Megamind.avi and its frames extracted the default way (360 px short side), as a custom dataset."""
    root = tmp_path_factory.mktemp("clip")
    (root / "videos").mkdir()
    video = root / "videos" / "Megamind.avi"
    shutil.copy(test_videos / "Megamind.avi", video)
    assert extract([str(root / "videos"), str(root / "data"), "--workers", "1", "--quiet"]) == 0
    data = root / "data"
    (data / "classInd.txt").write_text("only\n")
    (data / "val_split.txt").write_text("Megamind,270,0\n")
    return video, data


def test_video_file_matches_its_extracted_frame_folder(extracted):
    video, data = extracted
    from_video, info = load_clip(str(video), 8, 112)
    from_frames, frame_info = load_clip(str(data / "frames" / "Megamind"), 8, 112)
    assert from_video.dtype == torch.uint8 and from_video.shape == (8, 3, 112, 112)
    assert info.num_frames == frame_info.num_frames == 270
    assert info.frame_indices == frame_info.frame_indices == [int(i) for i in segment_indices(270, 8)]
    # Same frames, same scaling; only the JPEG round trip of the extracted frames differs.
    assert (from_video.float() - from_frames.float()).abs().mean() < 3.0


def test_frame_folder_clip_equals_the_dataset_item(extracted):
    _, data = extracted
    item = build_dataset("custom", str(data), "val", num_segments=8, input_size=112, train=False)[0]
    clip, _ = load_clip(str(data / "frames" / "Megamind"), 8, 112)
    assert (item["video"].int() - clip.int()).abs().max() <= 1


def test_damaged_videos(extracted, tmp_path):
    video, _ = extracted
    data = video.read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: len(data) * 3 // 10])  # a truncated download: sample the frames that decode
    clip, info = load_clip(str(cut), 8, 64)
    assert clip.shape == (8, 3, 64, 64) and 0 < info.num_frames < 270 and max(info.frame_indices) <= info.num_frames
    junk = tmp_path / "notes.mp4"
    junk.write_text("this is not a video\n")
    with pytest.raises(DataError, match="notes.mp4"):
        load_clip(str(junk), 8, 64)
    with pytest.raises(DataError, match="no such video file or frame folder"):
        load_clip(str(tmp_path / "missing.mp4"), 8, 64)
