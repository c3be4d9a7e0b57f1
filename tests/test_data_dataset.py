"""The frame-folder dataset: sample fields, sampling through decoding, determinism, label rule, bad data."""
import logging
import os

import numpy as np
import pytest
import torch
import torchvision.transforms as T
from PIL import Image
from torch.utils.data import DataLoader

from datasets import FrameError, ListFileError, build_dataset
from datasets.sampling import segment_indices

PNG = "image_{:05d}.png"


def make(root, split="train", **kw):
    kw.setdefault("num_segments", 8)
    kw.setdefault("input_size", 16)
    return build_dataset("actnet", str(root), split, template=PNG, **kw)


def decoded_indices(video, grey_to_frame):
    """Frame numbers shown by a (T0, 3, S, S) clip of write_frames frames (its centre pixel)."""
    s = video.shape[-1] // 2
    return [grey_to_frame(v) for v in video[:, 1, s, s].tolist()]


def test_item_fields(tiny_actnet):
    for split in ("train", "val"):
        ds = make(tiny_actnet, split)
        item = ds[1]
        assert set(item) == {"video", "label", "labels", "index"}
        assert item["video"].dtype == torch.uint8 and item["video"].shape == (8, 3, 16, 16)
        assert item["video"].is_contiguous()
        assert item["label"].dtype == torch.int64 and item["label"].shape == ()
        assert item["labels"].dtype == torch.float32 and item["labels"].shape == (4,)
        assert item["index"].dtype == torch.int64 and item["index"].item() == 1
    assert make(tiny_actnet)[1]["labels"].tolist() == [1.0, 1.0, 0.0, 1.0]     # 'vid two': 0, 3, 1


def test_eval_sampling_reads_the_segment_centres(tiny_actnet, grey_to_frame):
    ds = make(tiny_actnet, "val")
    for i, record in enumerate(ds.records):             # 30 frames, and 5 frames (< T0: repeats)
        want = segment_indices(record.num_frames, 8).tolist()
        assert decoded_indices(ds[i]["video"], grey_to_frame) == want
        assert ds.frame_indices(i).tolist() == want


def test_train_sampling_reads_one_frame_per_segment(tiny_actnet, grey_to_frame):
    ds = make(tiny_actnet, "train", num_segments=5)
    record = ds.records[2]                               # 50 frames: segments of 10
    seen = set()
    for epoch in range(6):
        ds.set_epoch(epoch)
        got = decoded_indices(ds[2]["video"], grey_to_frame)
        assert got == ds.frame_indices(2).tolist()
        assert [(f - 1) // 10 for f in got] == list(range(5))
        seen.add(tuple(got))
    assert len(seen) > 1 and record.num_frames == 50


def test_determinism_under_seed_and_epoch(tiny_actnet):
    a, b = make(tiny_actnet, seed=3), make(tiny_actnet, seed=3)
    for i in range(len(a)):
        assert torch.equal(a[i]["video"], b[i]["video"])
    def clips(ds):
        return [ds[i]["video"] for i in range(len(ds))]
    base = clips(a)
    a.set_epoch(1)
    other_epoch = clips(a)
    other_seed = clips(make(tiny_actnet, seed=4))
    assert any(not torch.equal(x, y) for x, y in zip(base, other_epoch))
    assert any(not torch.equal(x, y) for x, y in zip(base, other_seed))
    a.set_epoch(0)
    assert all(torch.equal(x, y) for x, y in zip(base, clips(a)))       # "resume" at epoch 0 again


def test_label_rule(tiny_actnet):
    train = make(tiny_actnet)                          # default 'random' in training
    counts = np.zeros(4, dtype=int)
    for epoch in range(600):
        train.set_epoch(epoch)
        counts[train.choose_label(1)] += 1             # 'vid two': labels 0, 1, 3
    assert counts[2] == 0 and all(150 <= counts[c] <= 250 for c in (0, 1, 3))   # uniform, no 2/3-1/3 bias
    assert train.choose_label(0) == 2                  # single label: always it
    first = make(tiny_actnet, label_rule="first")
    chosen = set()
    for epoch in range(20):
        first.set_epoch(epoch)
        chosen.add(first.choose_label(1))
    assert chosen == {0}
    assert make(tiny_actnet, "val")[1]["label"].item() == 0                      # eval default: 'first'
    with pytest.raises(ValueError, match="label_rule"):
        make(tiny_actnet, label_rule="last")


def _collect(loader):
    out = {}
    for batch in loader:
        for index, video, label in zip(batch["index"].tolist(), batch["video"], batch["label"].tolist()):
            out[index] = (video, label)
    return out


def test_results_do_not_depend_on_workers_and_persistent_workers_follow_set_epoch(tiny_actnet):
    reference = make(tiny_actnet, seed=7)
    expected = {}
    for epoch in range(2):
        reference.set_epoch(epoch)
        expected[epoch] = _collect(DataLoader(reference, batch_size=2, num_workers=0))
    assert any(not torch.equal(expected[0][i][0], expected[1][i][0]) for i in expected[0])

    ds = make(tiny_actnet, seed=7)
    loader = DataLoader(ds, batch_size=1, num_workers=2, shuffle=True, persistent_workers=True,
                        generator=torch.Generator().manual_seed(0))
    for epoch in range(2):
        ds.set_epoch(epoch)
        got = _collect(loader)
        assert got.keys() == expected[epoch].keys()
        for i in got:
            assert torch.equal(got[i][0], expected[epoch][i][0]) and got[i][1] == expected[epoch][i][1]


# --- bad data ------------------------------------------------------------------------------------
def test_missing_frame_folder_is_reported_at_construction(tiny_actnet):
    os.rename(tiny_actnet / "frames" / "vid two", tiny_actnet / "frames" / "elsewhere")
    with pytest.raises(ListFileError) as e:
        make(tiny_actnet)
    message = str(e.value)
    assert "1 of 3 frame folders are missing" in message
    assert f"{tiny_actnet / 'actnet_train_split.txt'}:2" in message and "vid two" in message
    ds = make(tiny_actnet, check_folders=False)        # deferred: the item names the folder
    with pytest.raises(FrameError, match=r"actnet_train_split\.txt:2 \(video 'vid two'\): frame \d+ is missing.*does not exist"):
        ds[1]


def test_missing_frame_names_file_line_and_frame(tiny_actnet):
    os.remove(tiny_actnet / "frames" / "val one" / "image_00017.png")
    ds = make(tiny_actnet, "val")                      # centres of 30 frames in 8 segments include 17
    assert 17 in ds.frame_indices(0)
    with pytest.raises(FrameError) as e:
        ds[0]
    message = str(e.value)
    assert f"{tiny_actnet / 'actnet_val_split.txt'}:1" in message
    assert "frame 17 is missing" in message and str(tiny_actnet / "frames" / "val one" / "image_00017.png") in message
    assert "29 file(s)" in message


def test_list_claims_more_frames_than_the_folder_has(tiny_actnet):
    text = (tiny_actnet / "actnet_val_split.txt").read_text().replace("val one,30", "val one,300")
    (tiny_actnet / "actnet_val_split.txt").write_text(text)
    with pytest.raises(FrameError, match=r"frame \d+ is missing"):
        make(tiny_actnet, "val")[0]


def test_wrong_template_gets_a_hint(tiny_actnet):
    ds = build_dataset("actnet", str(tiny_actnet), "val", num_segments=4, input_size=8, template="img_{:05d}.png")
    with pytest.raises(FrameError, match=r"image_00001\.png.*set template="):
        ds[0]


@pytest.mark.parametrize("damage", [b"not an image at all", "truncate"])
def test_corrupt_frame(tiny_actnet, damage):
    path = tiny_actnet / "frames" / "val one" / "image_00002.png"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncate" else damage)
    ds = make(tiny_actnet, "val")
    assert 2 in ds.frame_indices(0)
    with pytest.raises(FrameError, match=r"actnet_val_split\.txt:1 .*frame 2 cannot be decoded: .*image_00002\.png"):
        ds[0]


def test_repeat_first_substitutes_and_logs_every_substitution(tiny_actnet, caplog, grey_to_frame):
    folder = tiny_actnet / "frames" / "val one"
    os.remove(folder / "image_00002.png")
    (folder / "image_00017.png").write_bytes(b"garbage")
    ds = make(tiny_actnet, "val", missing_frames="repeat_first")
    with caplog.at_level(logging.WARNING):
        video = ds[0]["video"]
    want = [1 if f in (2, 17) else f for f in ds.frame_indices(0).tolist()]
    assert decoded_indices(video, grey_to_frame) == want
    messages = [r.getMessage() for r in caplog.records if "substituting frame 1" in r.getMessage()]
    assert len(messages) == 2
    assert any("frame 2 is missing" in m and "actnet_val_split.txt:1" in m for m in messages)
    assert any("frame 17 cannot be decoded" in m for m in messages)


def test_repeat_first_cannot_hide_a_missing_first_frame(tiny_actnet):
    os.remove(tiny_actnet / "frames" / "val one" / "image_00001.png")
    os.remove(tiny_actnet / "frames" / "val one" / "image_00002.png")
    with pytest.raises(FrameError, match="frame 2 is missing.*substitute is unusable too.*frame 1 is missing"):
        make(tiny_actnet, "val", missing_frames="repeat_first")[0]


def test_frames_of_different_sizes(tiny_actnet, write_frames):
    write_frames(tiny_actnet / "frames" / "val one", 1, size=(41, 30), start=17)
    with pytest.raises(FrameError, match=r"frame 17 has size 41x30 but frame 2 has 40x30"):
        make(tiny_actnet, "val")[0]


def test_worker_errors_reach_the_main_process(tiny_actnet):
    os.remove(tiny_actnet / "frames" / "vid one" / "image_00003.png")
    ds = make(tiny_actnet, "train", num_segments=20)    # 20 frames, 20 segments: every frame is read
    loader = DataLoader(ds, batch_size=3, num_workers=1)
    with pytest.raises(FrameError, match=r"actnet_train_split\.txt:1 \(video 'vid one'\): frame 3 is missing"):
        next(iter(loader))


# --- official semantics on JPEG frames ------------------------------------------------------------------
def test_eval_item_matches_the_official_pipeline_on_jpeg(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "d"
    folder = root / "frames" / "v"
    folder.mkdir(parents=True)
    images = []
    for i in range(1, 13):
        small = rng.integers(0, 256, (12, 20, 3), dtype=np.uint8)
        image = Image.fromarray(small).resize((160, 96), Image.BICUBIC)
        image.save(folder / f"image_{i:05d}.jpg", quality=90)
        images.append(Image.open(folder / f"image_{i:05d}.jpg").convert("RGB"))
    (root / "classInd.txt").write_text("a\nb\n")
    (root / "actnet_val_split.txt").write_text("v,12,1\n")
    ds = build_dataset("actnet", str(root), "val", num_segments=4, input_size=64)
    video = ds[0]["video"]
    official = T.Compose([T.Resize(64 * 256 // 224), T.CenterCrop(64)])
    for t, index in enumerate(segment_indices(12, 4)):
        ref = np.asarray(official(images[index - 1])).astype(int)
        diff = np.abs(video[t].permute(1, 2, 0).numpy().astype(int) - ref)
        assert diff.max() <= 1 and diff.mean() < 0.2


def test_benchmark_script_and_its_official_re_creation(tmp_path, capsys):
    import importlib.util
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts", "bench_data.py")
    spec = importlib.util.spec_from_file_location("bench_data", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench.make_frames(str(tmp_path), videos=2, frames=10, width=80, height=48, quality=90)
    ds = build_dataset("actnet", str(tmp_path), "val", num_segments=4, input_size=32)
    official, label = bench.OfficialStyle(ds)[1]
    assert official.shape == (12, 32, 32) and label == 1
    mean = torch.tensor(bench.MEAN * 4).view(12, 1, 1)
    std = torch.tensor(bench.STD * 4).view(12, 1, 1)
    ours = ds[1]["video"].reshape(12, 32, 32).float()
    assert (official * std + mean).mul(255).sub(ours).abs().max() <= 1.01     # same pixels as ours
    assert bench.main(["--data_dir", str(tmp_path), "--num_segments", "4", "--input_size", "32",
                       "--clips", "2", "--rounds", "1"]) == 0
    out = capsys.readouterr().out
    assert "[train]" in out and "[val]" in out and out.count("clips/s per worker") == 4
