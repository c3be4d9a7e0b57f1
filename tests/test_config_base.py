"""Config files' ``base:`` key (ops/config.py load_config_file): a path relative to the file, loaded first."""
from __future__ import annotations

import pytest

from ops import config, flags


def _write(path, text: str):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_base_is_relative_to_the_file_and_loaded_first(tmp_path):
    _write(tmp_path / "presets" / "base.yaml", "patch_size: 128\nlr: 0.01\nepochs: 50\n")
    row = _write(tmp_path / "presets" / "rows" / "row.yaml", "base: ../base.yaml\nepochs: 32\n")
    args = config.parse_args(["--config", str(row)])
    assert (args.patch_size, args.lr, args.epochs) == (128, 0.01, 32)


def test_override_order_base_then_file_then_command_line(tmp_path):
    _write(tmp_path / "grand.yaml", "patch_size: 96\nlr: 0.01\nepochs: 10\nnum_focus_segments: 8\n")
    _write(tmp_path / "parent.yaml", "base: grand.yaml\nlr: 0.02\nepochs: 20\n")
    child = _write(tmp_path / "child.yaml", "base: parent.yaml\nepochs: 30\n")
    args = config.parse_args(["--config", str(child), "--num_focus_segments", "4"])
    assert (args.patch_size, args.lr, args.epochs, args.num_focus_segments) == (96, 0.02, 30, 4)
    # the inherited keys count as set by the config file (a variant's defaults do not replace them)
    assert {"patch_size", "lr", "epochs"} <= set(args.explicit)


def test_own_keys_without_base(tmp_path):
    _write(tmp_path / "base.yaml", "patch_size: 128\n")
    row = _write(tmp_path / "row.yaml", "base: base.yaml\nepochs: 3\n")
    parser = flags.get_args_parser()
    assert config.load_config_file(str(row), parser, with_base=False) == {"epochs": 3}
    assert config.load_config_file(str(row), parser) == {"patch_size": 128, "epochs": 3}


def test_a_base_with_bad_values_names_the_base(tmp_path, capsys):
    _write(tmp_path / "base.yaml", "lr_type: sometimes\n")
    row = _write(tmp_path / "row.yaml", "base: base.yaml\n")
    with pytest.raises(SystemExit):
        config.parse_args(["--config", str(row)])
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"--config {tmp_path / 'base.yaml'}: lr_type" in err


def test_missing_base_is_one_line_naming_the_file(tmp_path, capsys):
    row = _write(tmp_path / "row.yaml", "base: ../nowhere.yaml\nepochs: 3\n")
    with pytest.raises(SystemExit) as exc:
        config.parse_args(["--config", str(row)])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert f"--config {row}: base ../nowhere.yaml not found" in err


@pytest.mark.parametrize("base", [None, 3, ""])
def test_base_must_be_a_path(tmp_path, capsys, base):
    row = _write(tmp_path / "row.yaml", f"base: {'' if base is None else repr(base)}\n")
    with pytest.raises(SystemExit):
        config.parse_args(["--config", str(row)])
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"--config {row}: base must be a path" in err


def test_cycle_is_refused_in_one_line(tmp_path, capsys):
    a = _write(tmp_path / "a.yaml", "base: sub/b.yaml\nepochs: 1\n")
    _write(tmp_path / "sub" / "b.yaml", "base: ../a.yaml\nepochs: 2\n")
    with pytest.raises(SystemExit) as exc:
        config.parse_args(["--config", str(a)])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "makes a cycle of config files" in err and "a.yaml" in err and "b.yaml" in err


def test_a_file_that_is_its_own_base_is_a_cycle(tmp_path, capsys):
    row = _write(tmp_path / "row.yaml", "base: row.yaml\n")
    with pytest.raises(SystemExit):
        config.parse_args(["--config", str(row)])
    assert f"--config {row}: base row.yaml makes a cycle" in capsys.readouterr().err


def test_a_chain_of_bases_without_repeats_is_no_cycle(tmp_path):
    _write(tmp_path / "root.yaml", "epochs: 5\n")
    _write(tmp_path / "mid.yaml", "base: root.yaml\n")
    child = _write(tmp_path / "child.yaml", "base: mid.yaml\n")
    assert config.parse_args(["--config", str(child)]).epochs == 5


def test_a_synthetic_mapping_is_merged_option_by_option_over_the_base_and_by_the_command_line(tmp_path):
    _write(tmp_path / "base.yaml", 'dataset: synthetic\nsynthetic: {"num_classes": 6, "frame_size": 160, "quality": 95}\n')
    child = _write(tmp_path / "child.yaml", 'base: base.yaml\nsynthetic: {"video_files": true, "quality": 90}\n')
    args = config.parse_args(["--config", str(child)])
    assert args.synthetic == {"num_classes": 6, "frame_size": 160, "quality": 90, "video_files": True}
    args = config.parse_args(["--config", str(child), "--synthetic", '{"frame_size": 96}'])
    assert args.synthetic == {"num_classes": 6, "frame_size": 96, "quality": 90, "video_files": True}
    # other flags are replaced, not merged; without a config file the command line's mapping is all there is
    args = config.parse_args(["--dataset", "synthetic", "--synthetic", '{"frame_size": 96}'])
    assert args.synthetic == {"frame_size": 96}


def test_the_video_file_preset_is_the_main_job_from_videos():
    from pathlib import Path

    repo = Path(__file__).resolve().parent.parent
    frames = config.parse_args(["--config", str(repo / "configs" / "synthetic.yaml")])
    videos = config.parse_args(["--config", str(repo / "configs" / "synthetic_videos.yaml")])
    changed = {k for k in vars(frames) if getattr(frames, k) != getattr(videos, k)}
    assert changed == {"config", "synthetic", "video_files", "data_dir", "store_name", "explicit"}
    assert videos.synthetic == dict(frames.synthetic, video_files=True) and videos.video_files
    assert videos.data_dir != frames.data_dir  # its own data folder: the two sets never meet
