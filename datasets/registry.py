"""Dataset registry and :func:`build_dataset`.

Each entry of :data:`DATASETS` is a :class:`DatasetSpec` giving, relative to the data directory,
the class file, the train and val list files, the frame root and the frame-name template, plus the
list separator, the label rule of the list format and the evaluation metric:

=========== ================== ================================== ================================== ================ === ===== ====
name        class file         train / val list                   frame root                         template         sep multi flip
=========== ================== ================================== ================================== ================ === ===== ====
actnet      classInd.txt       actnet_{train,val}_split.txt       frames                             image_{:05d}.jpg ',' yes   yes
fcvid       classInd.txt       fcvid_{train,val}_split.txt        frames                             image_{:05d}.jpg ',' yes   yes
minik       minik_classInd.txt mini_{train,val}_videofolder.txt   .                                  img_{:05d}.jpg   ' ' no    yes
something   category.txt       {train,val}_videofolder.txt        20bn-something-something-v1        {:05d}.jpg       ' ' no    no
somethingv2 category.txt       {train,val}_videofolder.txt        20bn-something-something-v2-frames {:06d}.jpg       ' ' no    no
jester      category.txt       {train,val}_videofolder.txt        20bn-jester-v1                     {:05d}.jpg       ' ' no    no
kinetics    (none: 400) [*]    labels/{train,val}_videofolder.txt images                             img_{:05d}.jpg   ' ' no    yes
custom      classInd.txt       {train,val}_split.txt              frames                             image_{:05d}.jpg ',' yes   yes
synthetic   classInd.txt       synthetic_{train,val}_split.txt    frames                             image_{:05d}.jpg ',' yes   yes
=========== ================== ================================== ================================== ================ === ===== ====

[*] optional ``labels/kinetics_label_map.txt`` for the names (see below).

``something`` (Something-Something V1), ``somethingv2`` and ``jester`` are the datasets of the TSM
variant: the data directory is the dataset's own folder (the official ``ROOT/something-something-v1``
and so on), Jester's class file included (the official code looks for it relative to the working
directory). Their training crops are never flipped (left/right matters for their classes), as in the
official code.

``kinetics`` (Kinetics-400, the dataset of the X3D variant): the data directory is the official
``ROOT/kinetics`` folder, with the frames under ``images/`` and the lists under ``labels/`` (the
official code reads its lists from ``kinetics/labels/`` relative to the working directory; we read
them from the data directory). The official code has no class file: 400 is a number. So the entry sets
``class_count=400``; a class file ``labels/kinetics_label_map.txt`` (one name per line, line i = class
i: the label map the lists were numbered with, e.g. the ``kinetics_label_map.txt`` of the TSM list
tools), when present, only supplies names and must list 400 of them.

**Class count.** A spec's classes come from its class file (``class_file``, relative to the data
directory): the id of a class is its line number and the number of lines is the number of classes.
A spec with ``class_count`` set has a fixed number of classes: its class file is optional (absent:
:meth:`DatasetSpec.class_names` is None and :meth:`DatasetSpec.num_classes` is ``class_count``;
present: it gives the names and must hold exactly ``class_count`` lines). Without ``class_count`` (every
other entry) a missing class file is an error, as before.

``custom`` follows the layout of the official ``custom_finetune.md``. Any field can be overridden
by keyword options (``template='img_{:05d}.jpg'``, ``separator=' '``, ...), by a JSON file given as
``config=PATH``, or, for ``custom``, by a ``dataset.json`` in the data directory (what
``python -m datasets.extract`` writes). Precedence: keyword options > ``config`` > ``dataset.json``
> the registry entry.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

from .boxes import read_boxes
from .errors import ListFileError
from .frame_dataset import FrameFolderDataset, check_sources
from .lists import parse_list_file, read_class_file
from .video_frames import resolve_counts

SPLITS = ("train", "val")
METRICS = ("mAP", "top1")
#: Name of the description file that ``custom`` datasets read from their data directory.
CONFIG_NAME = "dataset.json"


@dataclass(frozen=True)
class DatasetSpec:
    """Where a dataset's files are (relative to the data directory) and how its lists read.

    ``multi_label`` selects the list rule (see :mod:`.lists`); ``metric`` is ``'mAP'`` or
    ``'top1'`` (the official choice per dataset); ``boxes_file`` is the ground-truth side file with
    ``{split}`` in its name, if the dataset has one; ``flip`` is the default of the training
    transform's random left-right flip (off for direction-sensitive datasets such as Something-Something
    and Jester); ``class_count`` fixes the number of classes of a dataset that needs no class file
    (Kinetics-400): the class file is then optional and, when present, must list ``class_count`` names.
    """

    name: str
    class_file: str
    train_list: str
    val_list: str
    frame_root: str
    template: str
    separator: str
    multi_label: bool
    metric: str
    boxes_file: Optional[str] = None
    description: str = ""
    flip: bool = True
    class_count: Optional[int] = None

    def list_file(self, split: str) -> str:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        return self.train_list if split == "train" else self.val_list

    def class_path(self, data_dir: str) -> Optional[str]:
        """The class file in ``data_dir``; None when the spec names none."""
        return os.path.join(data_dir, self.class_file) if self.class_file else None

    def class_names(self, data_dir: str) -> Optional[List[str]]:
        """The class names from the class file; None for a spec with ``class_count`` whose class file
        is absent. Raises ``ListFileError`` when a required class file is missing or malformed, or when a
        class file disagrees with ``class_count``."""
        path = self.class_path(data_dir)
        if self.class_count is not None and (path is None or not os.path.isfile(path)):
            return None
        if path is None:
            raise ListFileError(f"dataset {self.name!r} has neither a class_file nor a class_count")
        names = read_class_file(path)
        if self.class_count is not None and len(names) != self.class_count:
            raise ListFileError(f"{path} lists {len(names)} classes, but dataset {self.name!r} has "
                                f"{self.class_count} (class_count)")
        return names

    def num_classes(self, data_dir: str) -> int:
        """``class_count`` when set, else the number of lines of the class file."""
        return self.classes(data_dir)[0]

    def classes(self, data_dir: str) -> Tuple[int, Optional[List[str]]]:
        """``(number of classes, names or None)``, reading the class file at most once."""
        names = self.class_names(data_dir)
        return (self.class_count if names is None else len(names)), names

    def replace(self, **changes: Any) -> "DatasetSpec":
        return dataclasses.replace(self, **changes)


DATASETS: Dict[str, DatasetSpec] = {
    "actnet": DatasetSpec("actnet", "classInd.txt", "actnet_train_split.txt", "actnet_val_split.txt",
                          "frames", "image_{:05d}.jpg", ",", True, "mAP",
                          description="ActivityNet v1.3 (200 classes), official AR-Net splits"),
    "fcvid": DatasetSpec("fcvid", "classInd.txt", "fcvid_train_split.txt", "fcvid_val_split.txt",
                         "frames", "image_{:05d}.jpg", ",", True, "mAP",
                         description="FCVID (239 classes), official splits"),
    "minik": DatasetSpec("minik", "minik_classInd.txt", "mini_train_videofolder.txt", "mini_val_videofolder.txt",
                         ".", "img_{:05d}.jpg", " ", False, "top1",
                         description="Mini-Kinetics (200 classes), official splits"),
    "something": DatasetSpec("something", "category.txt", "train_videofolder.txt", "val_videofolder.txt",
                             "20bn-something-something-v1", "{:05d}.jpg", " ", False, "top1", flip=False,
                             description="Something-Something V1 (174 classes), official TSM lists"),
    "somethingv2": DatasetSpec("somethingv2", "category.txt", "train_videofolder.txt", "val_videofolder.txt",
                               "20bn-something-something-v2-frames", "{:06d}.jpg", " ", False, "top1", flip=False,
                               description="Something-Something V2 (174 classes), official TSM lists"),
    "jester": DatasetSpec("jester", "category.txt", "train_videofolder.txt", "val_videofolder.txt",
                          "20bn-jester-v1", "{:05d}.jpg", " ", False, "top1", flip=False,
                          description="Jester (27 classes), official TSM lists; category.txt in the data directory"),
    "kinetics": DatasetSpec("kinetics", "labels/kinetics_label_map.txt", "labels/train_videofolder.txt",
                            "labels/val_videofolder.txt", "images", "img_{:05d}.jpg", " ", False, "top1",
                            class_count=400,
                            description="Kinetics-400 (400 classes), official X3D-variant lists; class file optional"),
    "custom": DatasetSpec("custom", "classInd.txt", "train_split.txt", "val_split.txt",
                          "frames", "image_{:05d}.jpg", ",", True, "top1",
                          description="your own videos, laid out as in custom_finetune.md (override any field)"),
    "synthetic": DatasetSpec("synthetic", "classInd.txt", "synthetic_train_split.txt", "synthetic_val_split.txt",
                             "frames", "image_{:05d}.jpg", ",", True, "top1",
                             boxes_file="object_boxes_{split}.csv",
                             description="generated on first use; see docs/synthetic.md"),
}

SPEC_FIELDS = tuple(f.name for f in dataclasses.fields(DatasetSpec) if f.name != "name")
#: Options of build_dataset that are not spec fields.
DATASET_OPTIONS = ("label_rule", "missing_frames", "check_folders", "start_index", "scales", "max_distort",
                   "scale_size", "list_file", "min_frames", "glance_segments", "shared_crop", "test_crops",
                   "decode_positions", "jpeg_bytes", "video_files")
RESOLVE_OPTIONS = ("config", "synthetic", "generate")


def _read_config(path: str) -> Dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except FileNotFoundError:
        raise ListFileError(f"dataset config not found: {path}") from None
    except json.JSONDecodeError as e:
        raise ListFileError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
    if not isinstance(config, dict):
        raise ListFileError(f"{path}: a dataset config must be a JSON object")
    unknown = sorted(set(config) - set(SPEC_FIELDS) - {"name"})
    if unknown:
        raise ListFileError(f"{path}: unknown key(s) {unknown}; valid keys: {list(SPEC_FIELDS)}")
    config.pop("name", None)
    return config


def resolve_spec(name: str, data_dir: str, **options: Any) -> DatasetSpec:
    """The registry entry ``name`` with the overrides from options, ``config`` and ``dataset.json``.

    Only spec fields and ``config`` are read from ``options``; other keys are ignored here.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known: {sorted(DATASETS)}")
    spec = DATASETS[name]
    changes: Dict[str, Any] = {}
    auto = os.path.join(data_dir, CONFIG_NAME)
    if name == "custom" and os.path.isfile(auto):
        changes.update(_read_config(auto))
    if options.get("config"):
        changes.update(_read_config(options["config"]))
    changes.update({k: v for k, v in options.items() if k in SPEC_FIELDS})
    spec = spec.replace(**changes)
    if spec.metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {spec.metric!r}")
    if not isinstance(spec.separator, str) or not spec.separator:
        raise ValueError(f"separator must be a non-empty string, got {spec.separator!r}")
    if isinstance(spec.flip, str) or spec.flip not in (True, False):
        raise ValueError(f"flip must be true or false, got {spec.flip!r}")
    if spec.class_count is not None and (isinstance(spec.class_count, bool) or not isinstance(spec.class_count, int)
                                         or spec.class_count < 1):
        raise ValueError(f"class_count must be a positive integer (or None), got {spec.class_count!r}")
    if not spec.class_file and spec.class_count is None:
        raise ValueError(f"dataset {name!r} needs a class_file or a class_count")
    return spec


def _check_options(options: Dict[str, Any]) -> None:
    unknown = sorted(set(options) - set(SPEC_FIELDS) - set(DATASET_OPTIONS) - set(RESOLVE_OPTIONS))
    if unknown:
        raise TypeError(f"unknown dataset option(s) {unknown}; valid: "
                        f"{sorted(SPEC_FIELDS + DATASET_OPTIONS + RESOLVE_OPTIONS)}")


def _prepare(name: str, data_dir: str, options: Dict[str, Any]) -> DatasetSpec:
    _check_options(options)
    if name == "synthetic" and options.get("generate", True):
        from .synthetic import ensure_generated
        ensure_generated(data_dir, **(options.get("synthetic") or {}))
    return resolve_spec(name, data_dir, **options)


def num_classes(name: str, data_dir: str, **options: Any) -> int:
    """Number of classes of dataset ``name`` in ``data_dir``: its ``class_count`` when the spec fixes one
    (Kinetics-400: 400), else the line count of its class file.

    For ``synthetic`` the data is generated first if needed (unless ``generate=False``).
    """
    return _prepare(name, data_dir, options).num_classes(data_dir)


def class_names(num_classes: int, *, path: Optional[str] = None, dataset: Optional[str] = None,
                data_dir: Optional[str] = None) -> Optional[List[str]]:
    """Names of a model's classes, for display: from the class file ``path``, else from the class file
    of ``dataset`` in ``data_dir`` when it exists; None when there is neither (e.g. Kinetics-400 without
    its optional class file).

    Raises ``ListFileError`` when the file is malformed or does not list ``num_classes`` names.
    """
    if path is None and dataset in DATASETS and data_dir:
        candidate = resolve_spec(dataset, data_dir).class_path(data_dir)
        path = candidate if candidate and os.path.isfile(candidate) else None
    if path is None:
        return None
    names = read_class_file(path)
    if len(names) != num_classes:
        raise ListFileError(f"{path} lists {len(names)} classes, the model has {num_classes}")
    return names


def build_dataset(name: str, data_dir: str, split: str, *, num_segments: int, input_size: int = 224,
                  train: Optional[bool] = None, seed: int = 0, **options: Any) -> FrameFolderDataset:
    """Build the dataset ``name`` stored under ``data_dir`` for ``split`` ('train' or 'val').

    ``train`` (default ``split == 'train'``) selects random sampling + training crop, otherwise
    segment centres + resize + centre crop. Options:

    * spec overrides: ``class_file, train_list, val_list, frame_root, template, separator,
      multi_label, metric, boxes_file, flip, class_count``; ``config=PATH`` (JSON with these keys);
      ``list_file=PATH`` replaces the split's list file;
    * ``label_rule`` ('first' | 'random'), ``missing_frames`` ('error' | 'repeat_first'),
      ``check_folders`` (default True: every frame folder must exist, checked now),
      ``start_index`` (default 1), ``scales``, ``max_distort``, ``scale_size``;
    * ``min_frames`` (default 1: keep every video; 3 drops the videos of fewer than 3 frames, as
      the official code does in training and validation);
    * ``glance_segments=G`` (default None): each item also holds ``'glance'``, G frames sampled
      separately from the T0 focus candidates (the TSM variant); ``shared_crop`` (default False):
      in training, give the glance frames the focus candidates' random crop instead of their own;
    * ``test_crops`` (default 1): spatial views per video in evaluation, 1 (resize + centre crop) or 3
      (the official three-crop test: left, right, centre views, a leading view axis on ``'video'``
      ``(3, T0, 3, S, S)`` and ``'glance'`` ``(3, G, 3, S, S)``); a training dataset refuses views;
    * ``decode_positions`` (default None), ``jpeg_bytes`` (default False), evaluation only: items that
      decode only the frames at those positions of the T0 candidates, or hold the JPEG files' bytes,
      the rest being decoded when needed (:mod:`~.selected_frames`; see :mod:`~.frame_dataset`);
    * ``video_files`` (default False): the list files name video files under the frame root (paths with
      their extension) instead of frame folders, read without extraction (:mod:`~.video_frames`); a
      ``num_frames`` of 0 is counted from the file now (before ``min_frames`` applies), any other is
      checked against the file when the video is read; ``check_folders`` checks that the files exist;
    * synthetic only: ``synthetic={...}`` generation options for
      :func:`~.synthetic.ensure_generated`, ``generate`` (default True).

    Returns a :class:`~.frame_dataset.FrameFolderDataset`; its ``spec`` attribute holds the
    resolved :class:`DatasetSpec`.
    """
    spec = _prepare(name, data_dir, options)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    train = split == "train" if train is None else bool(train)
    count, class_names = spec.classes(data_dir)
    list_file = options.get("list_file") or os.path.join(data_dir, spec.list_file(split))
    video_files = bool(options.get("video_files", False))
    frame_root = os.path.join(data_dir, spec.frame_root)
    records = parse_list_file(list_file, separator=spec.separator, multi_label=spec.multi_label,
                              num_classes=count, count_from_file=video_files)
    if video_files and any(r.num_frames == 0 for r in records):
        if options.get("check_folders", True):
            check_sources(records, frame_root, video_files=True)
        records = resolve_counts(records, frame_root)
    min_frames = int(options.get("min_frames", 1))
    if min_frames < 1:
        raise ValueError(f"min_frames must be at least 1, got {min_frames}")
    if min_frames > 1:
        records = [r for r in records if r.num_frames >= min_frames]
        if not records:
            raise ListFileError(f"{list_file}: no video has at least {min_frames} frames (min_frames)")
    start_index = int(options.get("start_index", 1))
    boxes = None
    if spec.boxes_file:
        boxes = read_boxes(os.path.join(data_dir, spec.boxes_file.format(split=split)), first_index=start_index)
    dataset = FrameFolderDataset(
        records, frame_root=frame_root, template=spec.template,
        num_classes=count, class_names=class_names, num_segments=num_segments,
        input_size=input_size, train=train, seed=seed, label_rule=options.get("label_rule"),
        missing_frames=options.get("missing_frames", "error"), start_index=start_index, boxes=boxes,
        spec=spec, list_file=list_file, flip=bool(spec.flip), glance_segments=options.get("glance_segments"),
        shared_crop=bool(options.get("shared_crop", False)), test_crops=options.get("test_crops", 1),
        decode_positions=options.get("decode_positions"), jpeg_bytes=bool(options.get("jpeg_bytes", False)),
        video_files=video_files,
        **{k: options[k] for k in ("scales", "max_distort", "scale_size") if k in options})
    if options.get("check_folders", True):
        dataset.check_folders()
    return dataset
