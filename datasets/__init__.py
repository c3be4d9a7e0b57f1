"""Data pipeline: frame-folder and video-file datasets, the synthetic dataset and frame extraction.

Public entry points::

    build_dataset(name, data_dir, split, *, num_segments, input_size=224, train=None, seed=0, **options)
    num_classes(name, data_dir, **options)
    DATASETS            # registry: name -> DatasetSpec
    synthetic.generate(root, ...), synthetic.ensure_generated(root, ...)
    python -m datasets.extract VIDEOS OUT ...   (module datasets.extract, function main(argv))

Workers return uint8 clips ``(T0, 3, H, W)`` (``(3, T0, 3, H, W)``, views first, for the three-crop
evaluation ``test_crops=3``); normalise on the device. See ``docs/data.md``. Evaluation can decode only the
frames the model reads (``decode_positions``, :mod:`.selected_frames`). With ``video_files=True`` the list
files name video files, read without extraction (:mod:`.video_frames`).
The package imports its own modules relatively only, so it also works installed as
``uniadafocus.datasets``.
"""
from . import selected_frames, synthetic
from .errors import DataError, FrameError, ListFileError
from .frame_dataset import FrameFolderDataset
from .selected_frames import FrameFeed, collate_items
from .video_frames import VideoFrameReader
from .lists import VideoRecord, parse_list_file, read_class_file
from .registry import DATASETS, DatasetSpec, build_dataset, class_names, num_classes, resolve_spec

__all__ = [
    "DATASETS", "DatasetSpec", "DataError", "FrameError", "FrameFeed", "FrameFolderDataset", "ListFileError",
    "VideoRecord", "build_dataset", "class_names", "collate_items", "num_classes", "parse_list_file",
    "read_class_file", "resolve_spec", "selected_frames", "synthetic", "VideoFrameReader",
]
