"""List files, class files and the dataset registry."""
import json

import pytest

from datasets import DATASETS, ListFileError, build_dataset, num_classes, resolve_spec
from datasets.lists import format_list_line, parse_list_file, parse_list_line, read_class_file


def write(path, text, encoding="utf-8"):
    path.write_text(text, encoding=encoding)
    return str(path)


# --- list lines ----------------------------------------------------------------------------------
def test_actnet_lines_with_spaces_and_many_labels(tmp_path):
    path = write(tmp_path / "l.txt", "v_abc,120,3\nmy video (1),99,7,2,9,2,0,11,5\n\n  spaced ,10,1\n")
    records = parse_list_file(path, separator=",", multi_label=True, num_classes=12)
    assert [(r.path, r.num_frames, r.labels, r.line) for r in records] == [
        ("v_abc", 120, (3,), 1),
        ("my video (1)", 99, (0, 2, 5, 7, 9, 11), 2),   # sorted, duplicates once, more than 3 labels
        ("spaced", 10, (1,), 4),                           # blank line 3 skipped; line stripped
    ]
    assert records[1].where == f"{path}:2"


def test_minik_paths_with_spaces_single_label(tmp_path):
    path = write(tmp_path / "mini.txt", "abseiling/clip a 300 0\nriding a bike/x  y z 12 1\nplain 5 1\r\n")
    records = parse_list_file(path, separator=" ", multi_label=False, num_classes=2)
    assert [(r.path, r.num_frames, r.labels) for r in records] == [
        ("abseiling/clip a", 300, (0,)), ("riding a bike/x  y z", 12, (1,)), ("plain", 5, (1,))]


@pytest.mark.parametrize("sep", [";", "\t", " | "])
def test_custom_separators(tmp_path, sep):
    path = write(tmp_path / "l.txt", f"a b{sep}4{sep}0{sep}1\n")
    (record,) = parse_list_file(path, separator=sep, multi_label=True)
    assert (record.path, record.num_frames, record.labels) == ("a b", 4, (0, 1))


def test_utf8_bom_and_crlf(tmp_path):
    path = write(tmp_path / "l.txt", "\ufeffvidéo,3,0\r\nb,4,1\r\n", encoding="utf-8")
    assert [r.path for r in parse_list_file(path, separator=",", multi_label=True)] == ["vidéo", "b"]


@pytest.mark.parametrize("line, reason", [
    ("only,2", "found 2 field"),
    ("v,abc,1", "num_frames 'abc' is not an integer"),
    ("v,0,1", "num_frames must be at least 1"),
    ("v,10,x", "label 'x' is not an integer"),
    ("v,10,1,", "empty label field"),
    (",10,1", "empty path"),
])
def test_malformed_line_reasons(line, reason):
    with pytest.raises(ValueError, match=reason):
        parse_list_line(line, separator=",", multi_label=True)


def test_malformed_lines_reported_with_file_and_line(tmp_path):
    path = write(tmp_path / "bad.txt", "ok,3,0\nbroken line\nok2,3,1\nv,x,1\n")
    with pytest.raises(ListFileError) as e:
        parse_list_file(path, separator=",", multi_label=True)
    message = str(e.value)
    assert "2 malformed lines" in message
    assert f"{path}:2:" in message and "'broken line'" in message
    assert f"{path}:4:" in message and "num_frames 'x'" in message


def test_official_splitter_bug_gives_clear_error(tmp_path):
    # A comma list read with the space splitter (the official custom-dataset failure).
    path = write(tmp_path / "l.txt", "video_1,100,3\n")
    with pytest.raises(ListFileError, match=r"l\.txt:1: .*found 1 field"):
        parse_list_file(path, separator=" ", multi_label=False)


def test_label_out_of_range(tmp_path):
    path = write(tmp_path / "l.txt", "a,3,0\nb,3,1,4\nc,3,-1\n")
    with pytest.raises(ListFileError) as e:
        parse_list_file(path, separator=",", multi_label=True, num_classes=4)
    assert f"{path}:2: label 4 is out of range [0, 4)" in str(e.value)
    assert f"{path}:3: label -1 is out of range" in str(e.value)


def test_empty_and_missing_list(tmp_path):
    path = write(tmp_path / "empty.txt", "\n  \n")
    with pytest.raises(ListFileError, match="empty.txt: the list file has no entries"):
        parse_list_file(path, separator=",", multi_label=True)
    with pytest.raises(ListFileError, match="list file not found: .*nope.txt"):
        parse_list_file(str(tmp_path / "nope.txt"), separator=",", multi_label=True)


def test_many_problems_are_summarised(tmp_path):
    path = write(tmp_path / "l.txt", "".join(f"bad{i}\n" for i in range(9)))
    with pytest.raises(ListFileError, match=r"9 malformed lines(.|\n)*and 4 more"):
        parse_list_file(path, separator=",", multi_label=True)


# --- class files -----------------------------------------------------------------------------------
def test_class_file(tmp_path):
    assert read_class_file(write(tmp_path / "c.txt", "a\nb c\n\n\n")) == ["a", "b c"]
    with pytest.raises(ListFileError, match=r"c2\.txt:2: blank line"):
        read_class_file(write(tmp_path / "c2.txt", "a\n\nb\n"))
    with pytest.raises(ListFileError, match="no classes"):
        read_class_file(write(tmp_path / "c3.txt", "\n"))


# --- writing -----------------------------------------------------------------------------------------
def test_format_list_line_round_trip():
    for sep, multi, path, labels in [(",", True, "a b", [1, 5, 9]), (" ", False, "x y", [3]), (";", True, "p", [0])]:
        line = format_list_line(path, 17, labels, separator=sep, multi_label=multi)
        assert parse_list_line(line, separator=sep, multi_label=multi) == (path, 17, tuple(labels))
    with pytest.raises(ValueError, match="contains the list separator"):
        format_list_line("a,b", 3, [0], separator=",", multi_label=True)
    with pytest.raises(ValueError, match="exactly one label"):
        format_list_line("a", 3, [0, 1], separator=" ", multi_label=False)


# --- registry --------------------------------------------------------------------------------------
def test_registry_matches_official_configuration():
    expected = {  # docs/official-behaviour.md, "Data: list files, sampling, transforms"
        "actnet": ("classInd.txt", "actnet_train_split.txt", "actnet_val_split.txt", "frames", "image_{:05d}.jpg", ","),
        "fcvid": ("classInd.txt", "fcvid_train_split.txt", "fcvid_val_split.txt", "frames", "image_{:05d}.jpg", ","),
        "minik": ("minik_classInd.txt", "mini_train_videofolder.txt", "mini_val_videofolder.txt", ".",
                  "img_{:05d}.jpg", " "),
        "custom": ("classInd.txt", "train_split.txt", "val_split.txt", "frames", "image_{:05d}.jpg", ","),
    }
    for name, fields in expected.items():
        s = DATASETS[name]
        assert (s.class_file, s.train_list, s.val_list, s.frame_root, s.template, s.separator) == fields
    assert DATASETS["minik"].multi_label is False and DATASETS["actnet"].multi_label is True
    assert DATASETS["minik"].metric == "top1" and DATASETS["actnet"].metric == DATASETS["fcvid"].metric == "mAP"


def _official_layout(root, name, write_frames):
    """Write a two-video data dir in the official layout of ``name``; returns the expected records."""
    spec = DATASETS[name]
    ext_template = spec.template.replace(".jpg", ".png")
    (root / spec.class_file).write_text("".join(f"class {i}\n" for i in range(5)))
    videos = [("a video", 6, (1,)), ("b", 9, (4,))] if name == "minik" else [("a video", 6, (1, 3)), ("b", 9, (4,))]
    for split in ("train", "val"):
        lines = [format_list_line(v, n, l, separator=spec.separator, multi_label=spec.multi_label) for v, n, l in videos]
        (root / spec.list_file(split)).write_text("\n".join(lines) + "\n")
    for v, n, _ in videos:
        write_frames(root / spec.frame_root / v, n, template=ext_template)
    return ext_template, videos


@pytest.mark.parametrize("name", ["actnet", "fcvid", "minik"])
def test_build_official_datasets(tmp_path, write_frames, name):
    template, videos = _official_layout(tmp_path, name, write_frames)
    assert num_classes(name, str(tmp_path)) == 5
    for split in ("train", "val"):
        ds = build_dataset(name, str(tmp_path), split, num_segments=4, input_size=16, template=template)
        assert [(r.path, r.num_frames, r.labels) for r in ds.records] == videos
        assert ds.train == (split == "train")
        item = ds[0]
        assert item["video"].shape == (4, 3, 16, 16)
        assert item["labels"].tolist() == [1.0 if c in videos[0][2] else 0.0 for c in range(5)]


def test_custom_dataset_by_options_config_and_dataset_json(tmp_path, write_frames):
    root = tmp_path / "mine"
    (root / "imgs" / "clip 1").mkdir(parents=True)
    write_frames(root / "imgs" / "clip 1", 5, template="f{:03d}.png")
    (root / "labels.txt").write_text("x\ny\nz\n")
    (root / "tr.txt").write_text("clip 1;5;2;0\n")
    options = dict(class_file="labels.txt", train_list="tr.txt", val_list="tr.txt", frame_root="imgs",
                   template="f{:03d}.png", separator=";")
    ds = build_dataset("custom", str(root), "train", num_segments=3, input_size=8, **options)
    assert ds.records[0].labels == (0, 2) and ds[0]["video"].shape == (3, 3, 8, 8)

    config = tmp_path / "cfg.json"
    config.write_text(json.dumps(options))
    ds = build_dataset("custom", str(root), "val", num_segments=3, input_size=8, config=str(config))
    assert ds.spec.separator == ";" and len(ds) == 1

    (root / "dataset.json").write_text(json.dumps(options))
    ds = build_dataset("custom", str(root), "val", num_segments=3, input_size=8)
    assert ds.spec.template == "f{:03d}.png"
    assert num_classes("custom", str(root)) == 3
    # keyword options override dataset.json
    assert resolve_spec("custom", str(root), metric="mAP").metric == "mAP"


def test_unknown_options_and_names(tmp_path):
    with pytest.raises(TypeError, match="unknown dataset option"):
        build_dataset("actnet", str(tmp_path), "train", num_segments=2, tempalte="x")
    with pytest.raises(ValueError, match="unknown dataset 'kinetics700'"):
        build_dataset("kinetics700", str(tmp_path), "train", num_segments=2)
    with pytest.raises(ValueError, match="split must be one of"):
        resolve_spec("actnet", str(tmp_path)).list_file("test")


def test_bad_config_file(tmp_path):
    config = tmp_path / "c.json"
    config.write_text('{"template": "x_{:d}.jpg",\n "colour": 3}')
    with pytest.raises(ListFileError, match=r"c\.json: unknown key\(s\) \['colour'\]"):
        resolve_spec("custom", str(tmp_path), config=str(config))
    config.write_text('{"template": \n')
    with pytest.raises(ListFileError, match=r"c\.json:2: invalid JSON"):
        resolve_spec("custom", str(tmp_path), config=str(config))


def test_bad_template_is_rejected(tiny_actnet):
    for template in ("image.jpg", "image_{:05d}_{:d}.jpg", "sub/{:05d}.jpg"):
        with pytest.raises(ValueError, match="frame template"):
            build_dataset("actnet", str(tiny_actnet), "val", num_segments=2, template=template)


def test_class_names_for_display(tiny_actnet, tmp_path):
    from datasets import class_names

    assert class_names(4, dataset="actnet", data_dir=str(tiny_actnet)) == ["walk", "run", "jump", "swim"]
    assert class_names(4, dataset="actnet", data_dir=str(tmp_path)) is None  # no class file there
    assert class_names(4) is None
    with pytest.raises(ListFileError, match="lists 4 classes, the model has 5"):
        class_names(5, dataset="actnet", data_dir=str(tiny_actnet))
    named = write(tmp_path / "names.txt", "a\nb\n")
    assert class_names(2, path=str(named), dataset="actnet", data_dir=str(tiny_actnet)) == ["a", "b"]
