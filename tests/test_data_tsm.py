"""The data side of the TSM variant (Something-Something V1/V2, Jester): two frame sets per video
(glance + focus candidates), checked against the official dataset's recorded indices and files."""
from pathlib import Path

import numpy as np
import pytest
import torch

import datasets.frames as frames_module
from datasets import DATASETS, build_dataset, num_classes
from datasets.sampling import STREAM_SPATIAL, STREAM_TEMPORAL, glance_focus_indices, sample_rng, segment_indices
from datasets.transforms import crop_size_pairs, fixed_offsets
from support import fixture_params, require_fixture

TSM_DATASETS = ("something", "somethingv2", "jester")
#: The frame opener as the module defines it, captured once: tests that count opened files wrap this one.
ORIGINAL_OPEN_FRAME = frames_module.open_frame
#: The official training crop draws of the data fixtures: ``GroupMultiScaleCrop(224, ...)`` (fixture README;
#: the files record the frame size and the draws, not the crop size).
TRAIN_CROP_SIZE = 224


@pytest.fixture(scope="module", params=fixture_params("data_indices_*.pt", "tsm"))
def data_fixture(request):
    """One ``tsm/data_indices_*.pt`` of the reference folder (each describes itself): (file name, contents)."""
    path = require_fixture(request.param)
    return path.name, torch.load(path, weights_only=True)


def _sizes(fx):
    return fx["config"]["num_segments_glancer"], fx["config"]["num_segments_focuser"]


def _rows(fx):
    """The fixture's temporary list: video ``vidNNN`` has the NNN-th length and label NNN."""
    return [(f"vid{i:03d}", int(n), i) for i, n in enumerate(fx["lengths"].tolist())]


def test_eval_indices_equal_the_official_glance_and_focus_sets(data_fixture):
    name, fx = data_fixture
    g, t0 = _sizes(fx)
    for i, n in enumerate(fx["lengths"].tolist()):
        glance, focus = glance_focus_indices(n, t0, g)
        assert glance.tolist() == fx["val"]["glance"][i].tolist(), (name, n)
        assert focus.tolist() == fx["val"]["focus"][i].tolist(), (name, n)
        assert segment_indices(n, g).tolist() == glance.tolist()


def test_train_indices_equal_the_official_draws_for_each_seed(data_fixture):
    name, fx = data_fixture
    g, t0 = _sizes(fx)
    seeds = list(fx["train_seeds"])
    assert seeds and sorted(fx["train"]) == sorted(seeds), name  # every recorded seed has its draws
    for seed in seeds:
        # The official recipe: the global numpy RNG seeded once, then for every length in list
        # order rand(G) for the glance set and rand(T0) for the focus set.
        rng = np.random.RandomState(seed)
        for i, n in enumerate(fx["lengths"].tolist()):
            glance, focus = glance_focus_indices(n, t0, g, rng=rng)
            assert glance.tolist() == fx["train"][seed]["glance"][i].tolist(), (name, seed, n)
            assert focus.tolist() == fx["train"][seed]["focus"][i].tolist(), (name, seed, n)


def test_train_order_divides_by_the_segment_count_before_multiplying():
    # With U_k = 0.5 the training rule must give the evaluation centres, including where the official
    # operation order rounds down: 18.5 / 36 * 216 = 110.99999999999999 (frame 111, not 112).
    class Halves:
        def random(self, size):
            return np.full(size, 0.5)

    assert segment_indices(216, 36, rng=Halves())[18] == 111
    for n in (216, 360, 480, 1000):
        for s in (8, 36, 48):
            assert segment_indices(n, s, rng=Halves()).tolist() == segment_indices(n, s).tolist()


def test_getitem_val_reads_the_official_files_and_label(data_fixture, tmp_path, monkeypatch, write_frames,
                                                        grey_to_frame):
    name, fx = data_fixture
    g, t0 = _sizes(fx)
    dataset = fx["config"]["dataset"]
    spec = DATASETS[dataset]
    assert fx["config"]["image_tmpl"] == spec.template
    root = tmp_path / "data"
    root.mkdir()
    rows = _rows(fx)
    (root / spec.class_file).write_text("".join(f"class {i}\n" for i in range(len(rows))))
    (root / spec.val_list).write_text("".join(f"{v} {n} {label}\n" for v, n, label in rows))
    recorded = fx["getitem_val"]
    for entry in recorded:                              # frames of the first kept videos only
        video, n, _ = entry["row"].split(" ")
        write_frames(root / spec.frame_root / video, int(n), template=spec.template)
    ds = build_dataset(dataset, str(root), "val", num_segments=t0, input_size=32, glance_segments=g,
                       min_frames=3, check_folders=False)
    assert [r.num_frames for r in ds.records] == fx["kept_by_parse_list"].tolist()

    opened = []
    monkeypatch.setattr(frames_module, "open_frame", lambda path: opened.append(path) or ORIGINAL_OPEN_FRAME(path))
    frame_root = root / spec.frame_root
    for i, entry in enumerate(recorded):
        record = ds.records[i]
        assert f"{record.path} {record.num_frames} {record.labels[0]}" == entry["row"]
        assert (entry["n_glance"], entry["n_focus"]) == (g, t0)
        opened.clear()
        item = ds[i]
        files = entry["files"]
        # Each distinct file is decoded once, in frame order ...
        assert [str(Path(p).relative_to(frame_root)) for p in opened] == sorted(set(files))
        # ... and the frames come out in the official order: G glance files, then T0 focus files.
        shown = [f"{record.path}/{spec.template.format(grey_to_frame(v))}"
                 for v in torch.cat([item["glance"], item["video"]])[:, 1, 16, 16].tolist()]
        assert shown == files
        assert item["label"].item() == entry["label"]


def test_train_crop_candidates_hold_the_official_draws(data_fixture):
    name, fx = data_fixture
    width, height = fx["crop_image_size_wh"]
    for d in fx["train_crops"]:
        assert (d["crop_w"], d["crop_h"]) in crop_size_pairs(width, height, TRAIN_CROP_SIZE), (name, d)
        assert (d["offset_w"], d["offset_h"]) in fixed_offsets(width, height, d["crop_w"], d["crop_h"]), (name, d)
    # The official glance and focus crops of one video are separate draws (the public fixture's differ for
    # every video); that ours are is test_train_crops_of_the_two_sets_are_independent_unless_shared.


def _sth_layout(root, write_frames, name="something", videos=(("a", 9, 1), ("b", 30, 0)), size=(40, 30),
                static=False):
    """An official-layout data dir of ``name`` with JPEG frames named by the registry template."""
    spec = DATASETS[name]
    (root / spec.class_file).write_text("push\npull\nturn\n")
    for list_name in (spec.train_list, spec.val_list):
        (root / list_name).write_text("".join(f"{v} {n} {label}\n" for v, n, label in videos))
    for v, n, _ in videos:
        folder = root / spec.frame_root / v
        if static:                                      # every frame the same textured image
            from PIL import Image
            image = (np.random.default_rng(0).random((size[1], size[0], 3)) * 255).astype(np.uint8)
            folder.mkdir(parents=True)
            for i in range(1, n + 1):
                Image.fromarray(image).save(folder / spec.template.format(i))
        else:
            write_frames(folder, n, size=size, template=spec.template)
    return spec


def test_train_crops_of_the_two_sets_are_independent_unless_shared(tmp_path, write_frames):
    _sth_layout(tmp_path, write_frames, videos=(("still", 12, 0),), size=(176, 100), static=True)
    common = dict(num_segments=6, input_size=32, glance_segments=4)
    independent = build_dataset("something", str(tmp_path), "train", **common)
    shared = build_dataset("something", str(tmp_path), "train", shared_crop=True, **common)
    full = torch.from_numpy(np.array(frames_module.open_frame(
        str(tmp_path / "20bn-something-something-v1" / "still" / "00001.jpg")))).permute(2, 0, 1)[None]
    differ = 0
    for epoch in range(12):
        independent.set_epoch(epoch)
        shared.set_epoch(epoch)
        item = independent[0]
        # The crops are the per-sample generator's draws: the focus candidates' first, then the glance set's.
        rng = sample_rng(0, epoch, 0, STREAM_SPATIAL)
        focus_geometry = independent.transform.draw(176, 100, rng)
        glance_geometry = independent.transform.draw(176, 100, rng)
        assert torch.equal(item["video"], focus_geometry.apply(full).expand(6, -1, -1, -1))
        assert torch.equal(item["glance"], glance_geometry.apply(full).expand(4, -1, -1, -1))
        differ += not torch.equal(item["glance"][0], item["video"][0])
        same = shared[0]
        assert torch.equal(same["glance"], same["video"][:1].expand(4, -1, -1, -1))
        assert torch.equal(same["video"], item["video"])          # the focus crop does not depend on sharing
    assert differ > 0


def test_official_layouts_templates_and_no_flip(tmp_path, write_frames):
    expected = {
        "something": ("20bn-something-something-v1", "{:05d}.jpg", "00001.jpg"),
        "somethingv2": ("20bn-something-something-v2-frames", "{:06d}.jpg", "000001.jpg"),
        "jester": ("20bn-jester-v1", "{:05d}.jpg", "00001.jpg"),
    }
    rng = np.random.default_rng(0)
    for name, (frame_root, template, first) in expected.items():
        spec = DATASETS[name]
        assert (spec.class_file, spec.train_list, spec.val_list, spec.frame_root, spec.template) == (
            "category.txt", "train_videofolder.txt", "val_videofolder.txt", frame_root, template)
        assert spec.template.format(1) == first
        assert (spec.separator, spec.multi_label, spec.metric, spec.flip) == (" ", False, "top1", False)
        root = tmp_path / name
        root.mkdir()
        _sth_layout(root, write_frames, name)
        assert num_classes(name, str(root)) == 3
        for split in ("train", "val"):
            ds = build_dataset(name, str(root), split, num_segments=4, input_size=16, glance_segments=2)
            assert [(r.path, r.num_frames, r.labels) for r in ds.records] == [("a", 9, (1,)), ("b", 30, (0,))]
            assert ds[1]["video"].shape == (4, 3, 16, 16)
        train = build_dataset(name, str(root), "train", num_segments=4, input_size=16)
        assert train.transform.flip is False
        assert not any(train.transform.draw(40, 30, rng).flip for _ in range(100))
        assert build_dataset(name, str(root), "train", num_segments=4, input_size=16, flip=True).transform.flip
    for name in ("actnet", "fcvid", "minik", "custom", "synthetic"):
        assert DATASETS[name].flip is True


def test_item_keys_and_shapes(tmp_path, write_frames):
    _sth_layout(tmp_path, write_frames)
    for split in ("train", "val"):
        ds = build_dataset("something", str(tmp_path), split, num_segments=6, input_size=16, glance_segments=4)
        item = ds[1]
        assert set(item) == {"video", "glance", "label", "labels", "index"}
        assert item["glance"].dtype == item["video"].dtype == torch.uint8
        assert item["glance"].shape == (4, 3, 16, 16) and item["video"].shape == (6, 3, 16, 16)
        assert item["glance"].is_contiguous() and item["video"].is_contiguous()
        assert item["label"].dtype == torch.int64 and item["label"].item() == 0
        assert item["labels"].tolist() == [1.0, 0.0, 0.0] and item["index"].item() == 1
        assert ds.glance_indices(1).shape == (4,) and ds.frame_indices(1).shape == (6,)
        plain = build_dataset("something", str(tmp_path), split, num_segments=6, input_size=16)
        assert set(plain[1]) == {"video", "label", "labels", "index"}
    with pytest.raises(ValueError, match="glance_segments"):
        build_dataset("something", str(tmp_path), "val", num_segments=6, glance_segments=0)


def test_two_sets_follow_their_indices_and_are_deterministic(tmp_path, write_frames, grey_to_frame):
    _sth_layout(tmp_path, write_frames)
    make = lambda: build_dataset("something", str(tmp_path), "train", num_segments=6, input_size=16,
                                 glance_segments=4, seed=3)
    a, b = make(), make()
    a.set_epoch(2)
    b.set_epoch(2)
    for index in range(2):
        x, y = a[index], b[index]
        assert all(torch.equal(x[k], y[k]) for k in x)
        # The frames shown are the sampled ones; the temporal draw is glance first, then focus.
        glance, focus = glance_focus_indices(a.records[index].num_frames, 6, 4,
                                             rng=sample_rng(3, 2, index, STREAM_TEMPORAL))
        assert [grey_to_frame(v) for v in x["glance"][:, 1, 8, 8].tolist()] == glance.tolist()
        assert [grey_to_frame(v) for v in x["video"][:, 1, 8, 8].tolist()] == focus.tolist()
    a.set_epoch(3)
    assert not torch.equal(a[1]["video"], b[1]["video"]) or not torch.equal(a[1]["glance"], b[1]["glance"])
