"""The frame-folder video dataset: list records -> uint8 clips plus labels.

Each item is a dict:

* ``'video'``: uint8 ``(T0, 3, S, S)``, S = input_size (normalise on the device);
* ``'label'``: int64 scalar, the label for single-label cross-entropy (see *label rule*);
* ``'labels'``: float32 ``(num_classes,)``, multi-hot over all the video's labels (for mAP);
* ``'index'``: int64 scalar, the sample's index in the dataset;
* with ``glance_segments=G`` (the TSM variant) also ``'glance'``: uint8 ``(G, 3, S, S)``, a second
  frame set sampled separately from the T0 focus candidates in ``'video'`` (each set tiles the whole
  video; in training the glance set's uniforms are drawn first, then the focus set's, from the same
  per-sample generator). In training each set gets its own random crop, as in the official code,
  unless ``shared_crop=True`` (then the glance frames get the focus candidates' crop); in evaluation
  both get the same resize and centre crop;
* with a ground-truth box table (the synthetic dataset) also ``'object_boxes'`` float32 ``(T0, 4)``
  as ``(x1, y1, x2, y2)`` in pixels of the returned clip (mapped through the sampling, crop, resize
  and flip actually applied, clipped to the clip) and ``'object_visible'`` bool ``(T0,)``: the
  object is drawn in that frame and its box keeps a positive area inside the crop.

Multi-view evaluation (``test_crops=3``, evaluation only): the official three-crop test
(``GroupFullResSample``: short side to ``scale_size``, then left, right and centre ``S × S`` views, in
that order) is applied to both frame sets, and every spatial tensor gets a leading view axis:
``'video'`` uint8 ``(3, T0, 3, S, S)``, ``'glance'`` uint8 ``(3, G, 3, S, S)`` and, with boxes,
``'object_boxes'`` ``(3, T0, 4)`` / ``'object_visible'`` ``(3, T0)``. ``'label'``, ``'labels'`` and
``'index'`` are unchanged. With ``test_crops=1`` (default) items are exactly those of the one centre crop.

Selected-frame decoding (evaluation only, see :mod:`.selected_frames`): with ``decode_positions``
(positions of the T0 candidates, e.g. the model's glance frames) an item decodes only the frames at
those positions and holds no ``'video'``; instead ``'frames'`` uint8 ``(P, 3, S, S)`` (``(V, P, 3,
S, S)`` with views), the frames at the P positions in their order, and ``'frame_size'`` int64 ``(2,)``,
the video's frame size ``(w, h)``. :meth:`FrameFolderDataset.decode_frames` decodes any other frame
later, exactly as the full clip holds it. With ``jpeg_bytes=True`` an item holds, instead of
``'frames'``, the undecoded files for decoding on the device: ``'jpeg'`` uint8 ``(n,)``, the bytes of
the distinct files concatenated, and ``'jpeg_spans'`` int64 ``(P, 2)``, where each position's file
starts and ends in it (``decode_positions`` None means all T0 positions). ``'label'``, ``'labels'``,
``'index'`` and the boxes are unchanged. Collate such items with :func:`.selected_frames.collate_items`.

Video files (``video_files=True``): each record names a video file under ``frame_root`` instead of a
frame folder, and :class:`~.video_frames.VideoFrameReader` takes the place of the frame reader: frame
``k`` is the image the extraction writes as file ``k`` of that video, so the sampling, the transforms
and the deferred items above (``jpeg_bytes`` excepted) are the same code for both sources. A record
whose ``num_frames`` is 0 gets the video's frame count when the dataset is built.

Label rule (single label for cross-entropy): ``'first'`` takes the smallest class id of the video;
``'random'`` takes one of the video's labels uniformly at random from the per-sample generator (the
official code also picks a random one, but with a 2/3–1/3 bias for two labels). The
default is ``'random'`` when training and ``'first'`` in evaluation. Single-label videos are
unaffected either way.

Randomness: every random choice (temporal offsets, crop, flip, label) comes from
:func:`~.sampling.sample_rng` seeded with ``(seed, epoch, index)`` (the focus candidates' crop is
drawn first, then, with independent crops, the glance frames'), so results do not depend on
the number of workers or their scheduling. :meth:`FrameFolderDataset.set_epoch` stores the epoch in
shared memory, so persistent ``DataLoader`` workers see it too; call it before iterating an epoch.
"""
from __future__ import annotations

import os
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset

from .boxes import BoxTable
from .errors import ListFileError
from .frames import MISSING_POLICIES, FrameReader, check_template
from .lists import VideoRecord
from .video_frames import VideoFrameReader, resolve_counts
from .sampling import STREAM_LABEL, STREAM_SPATIAL, STREAM_TEMPORAL, glance_focus_indices, sample_rng
from .transforms import OFFICIAL_SCALES, FullResSample, MultiScaleCrop, ResizeCenterCrop

LABEL_RULES = ("first", "random")
#: Spatial views of one video in evaluation: 1 (centre crop) or 3 (left, right, centre).
TEST_CROPS = (1, 3)


class FrameFolderDataset(Dataset):
    """Videos stored as folders of frames, described by list records.

    records: parsed list lines; frame_root: folder the record paths are relative to; template:
    frame file name with one integer field; num_segments: T0 frames per clip; input_size: output
    side S; train: random segment sampling + multi-scale crop + flip if True, segment centres +
    resize + centre crop otherwise; seed: base seed of all random choices; label_rule: see module
    doc; missing_frames: ``'error'`` or ``'repeat_first'``; start_index: number of the first frame
    file; boxes: optional ground-truth table (see :mod:`.boxes`); scales, max_distort, flip: training
    crop settings; scale_size: evaluation resize (default ``input_size*256//224``); glance_segments:
    G, the size of the separately sampled glance set (None: no glance set); shared_crop: in training,
    crop the glance frames like the focus candidates (default: an independent draw, as the official
    code does); test_crops: spatial views per video in evaluation, 1 (the centre crop) or 3 (left,
    right, centre; a leading view axis on ``'video'`` and ``'glance'``), refused in training;
    decode_positions: the positions (of T0) an item decodes, the others being left for
    :meth:`decode_frames` (None: all; evaluation only, see the module doc); jpeg_bytes: items hold the
    JPEG files' bytes instead of decoded frames (evaluation only, frame folders only); video_files: the
    records name video files under ``frame_root``, read without extraction (see the module doc; the
    template is then unused); spec, list_file: where the records came from (kept as attributes for
    the caller).
    """

    def __init__(self, records: Sequence[VideoRecord], *, frame_root: str, template: str, num_classes: int,
                 num_segments: int, input_size: int = 224, train: bool = True, seed: int = 0,
                 label_rule: Optional[str] = None, missing_frames: str = "error", start_index: int = 1,
                 boxes: Optional[BoxTable] = None, class_names: Optional[List[str]] = None,
                 scales: Sequence[float] = OFFICIAL_SCALES, max_distort: int = 1, flip: bool = True,
                 scale_size: Optional[int] = None, glance_segments: Optional[int] = None,
                 shared_crop: bool = False, test_crops: int = 1, decode_positions: Optional[Sequence[int]] = None,
                 jpeg_bytes: bool = False, video_files: bool = False, spec: Any = None,
                 list_file: Optional[str] = None):
        if not records:
            raise ValueError("a dataset needs at least one record")
        if num_segments < 1 or input_size < 1 or num_classes < 1:
            raise ValueError(f"num_segments ({num_segments}), input_size ({input_size}) and num_classes "
                             f"({num_classes}) must be positive")
        if int(seed) < 0:
            raise ValueError(f"seed must be non-negative, got {seed}")
        if glance_segments is not None and int(glance_segments) < 1:
            raise ValueError(f"glance_segments must be positive (or None), got {glance_segments}")
        if isinstance(test_crops, bool) or test_crops not in TEST_CROPS:
            raise ValueError(f"test_crops must be one of {TEST_CROPS} (spatial views per video in evaluation; "
                             f"the official 5- and 10-view tests are not implemented), got {test_crops!r}")
        if train and test_crops != 1:
            raise ValueError(f"test_crops={test_crops} asks for multi-view evaluation, but this dataset is built "
                             f"for training, whose transform draws one random crop per clip; use test_crops=1 "
                             f"(the default) for training and test_crops={test_crops} for the evaluation set only")
        if decode_positions is not None or jpeg_bytes:
            if train or glance_segments is not None:
                raise ValueError("decode_positions and jpeg_bytes are for evaluation clips of the T0 candidates only "
                                 "(train=False, no glance_segments)")
            if decode_positions is not None:
                positions = np.asarray(decode_positions, dtype=np.int64).reshape(-1)
                if (not len(positions) or len(np.unique(positions)) != len(positions) or positions.min() < 0
                        or positions.max() >= num_segments):
                    raise ValueError(f"decode_positions must be distinct positions in [0, {num_segments}), "
                                     f"got {list(decode_positions)}")
        if video_files and jpeg_bytes:
            raise ValueError("jpeg_bytes reads the JPEG files of frame folders (for decoding on the device); "
                             "video files are decoded in the loader workers")
        uncounted = [r for r in records if r.num_frames < 1]
        if uncounted and not video_files:
            raise ValueError(f"{uncounted[0].where}: num_frames {uncounted[0].num_frames}; only a video file's "
                             f"count may be left to the file (0, with video_files=True)")
        label_rule = ("random" if train else "first") if label_rule is None else label_rule
        if label_rule not in LABEL_RULES:
            raise ValueError(f"label_rule must be one of {LABEL_RULES}, got {label_rule!r}")
        if missing_frames not in MISSING_POLICIES:
            raise ValueError(f"missing_frames must be one of {MISSING_POLICIES}, got {missing_frames!r}")
        self.video_files = bool(video_files)
        self.frame_root = frame_root
        self.records = resolve_counts(records, frame_root) if uncounted else list(records)
        self.template = check_template(template)
        self.num_classes = int(num_classes)
        self.class_names = class_names
        self.num_segments = int(num_segments)
        self.glance_segments = None if glance_segments is None else int(glance_segments)
        self.shared_crop = bool(shared_crop)
        self.input_size = int(input_size)
        self.train = bool(train)
        self.seed = int(seed)
        self.label_rule = label_rule
        self.missing_frames = missing_frames
        self.start_index = int(start_index)
        self.test_crops = int(test_crops)
        self.decode_positions = None if decode_positions is None else np.asarray(decode_positions, dtype=np.int64)
        self.jpeg_bytes = bool(jpeg_bytes)
        if self.train:
            self.transform = MultiScaleCrop(input_size, scales, max_distort, flip=flip)
        elif self.test_crops == 1:
            self.transform = ResizeCenterCrop(input_size, scale_size)
        else:
            self.transform = FullResSample(input_size, scale_size)
        self.spec = spec
        self.list_file = list_file
        self.boxes = boxes
        if boxes is not None:
            self._check_boxes(boxes)
        # Shared memory, so that persistent DataLoader workers see set_epoch() of the main process.
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()

    # ------------------------------------------------------------------------------------------
    @property
    def epoch(self) -> int:
        return int(self._epoch[0])

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose random choices the following items use."""
        if int(epoch) < 0:
            raise ValueError(f"epoch must be non-negative, got {epoch}")
        self._epoch[0] = int(epoch)

    def __len__(self) -> int:
        return len(self.records)

    def folder(self, record: VideoRecord) -> str:
        """The record's frame folder (its video file with ``video_files``)."""
        return os.path.join(self.frame_root, record.path)

    def check_folders(self) -> None:
        """Raise :class:`ListFileError` naming the list lines whose frame folder (video file) does not exist."""
        check_sources(self.records, self.frame_root, self.video_files)

    def _check_boxes(self, boxes: BoxTable) -> None:
        for record in self.records:
            entry = boxes.get(record.path)
            if entry is None or len(entry[0]) < record.num_frames:
                found = "no rows" if entry is None else f"{len(entry[0])} rows"
                raise ListFileError(f"{record.where}: the object box file has {found} for video "
                                    f"{record.path!r}, which has {record.num_frames} frames")

    @property
    def deferred(self) -> bool:
        """Whether items leave frames undecoded (``decode_positions`` or ``jpeg_bytes``): no ``'video'``."""
        return self.decode_positions is not None or self.jpeg_bytes

    @property
    def item_positions(self) -> np.ndarray:
        """The positions (of T0) whose frames (or bytes) a deferred item holds, in item order."""
        return np.arange(self.num_segments) if self.decode_positions is None else self.decode_positions

    def reader(self, index: int) -> FrameReader:
        """The frame reader of video ``index`` (its messages name the list line and the video)."""
        record = self.records[index]
        where = f"{record.where} (video {record.path!r})"
        if self.video_files:
            return VideoFrameReader(self.folder(record), missing=self.missing_frames, where=where,
                                    first_index=self.start_index, num_frames=record.num_frames)
        return FrameReader(self.folder(record), self.template, missing=self.missing_frames, where=where,
                           first_index=self.start_index)

    def frame_geometry(self, width: int, height: int):
        """The evaluation transform's geometry for frames of ``width x height`` (deterministic)."""
        if self.train:
            raise ValueError("frame_geometry is the evaluation transform's; this dataset is built for training")
        return self.transform.draw(width, height, None)

    def decode_frames(self, index: int, frames: Sequence[int],
                      expected: Optional[Tuple[Tuple[int, int], int]] = None) -> torch.Tensor:
        """Decode the frames numbered ``frames`` (distinct) of video ``index`` through the evaluation
        transform -> uint8 ``(n, 3, S, S)``, or ``(V, n, 3, S, S)`` with ``test_crops=V``.

        Each frame is exactly the one the full clip of :meth:`__getitem__` holds for it: the same
        reader, the geometry drawn from the same frame size, the same resize. ``expected``: ``((w, h),
        frame)``, the video's frame size as found on frame ``frame`` before (a frame of another size
        raises :class:`FrameError`, like a mismatch inside one clip).
        """
        return self._decode(index, frames, expected)[0]

    def _decode(self, index: int, frames: Sequence[int], expected=None):
        """(:meth:`decode_frames`, the frame size (w, h))."""
        geometry, size = None, None

        def region(width, height):                                     # called with the first frame's size
            nonlocal geometry, size
            geometry, size = self.frame_geometry(width, height), (width, height)
            return geometry.region

        pixels = self.reader(index).read(frames, crop=region, expected=expected)  # (n, h, w, 3)
        return geometry.apply(torch.from_numpy(pixels).permute(0, 3, 1, 2), cropped=True), size

    def read_jpeg(self, index: int, frames: Sequence[int],
                  expected: Optional[Tuple[Tuple[int, int], int]] = None) -> Tuple[List[torch.Tensor], Tuple[int, int]]:
        """The undecoded JPEG files of frames ``frames`` of video ``index``: ``(list of uint8 (n,)
        tensors, frame size (w, h) from the files' headers)``. Missing files, files that are not JPEGs
        and sizes that differ (from each other or from ``expected``) are reported as :meth:`decode_frames`
        reports them."""
        reader = self.reader(index)
        files, size, first = [], None, None
        for frame in frames:
            data, frame_size = reader.read_jpeg(int(frame))
            if size is None:
                size, first = frame_size, int(frame)
                if expected is not None:
                    reader.check_size(first, size, *expected)
            else:
                reader.check_size(int(frame), frame_size, size, first)
            files.append(data)
        if size is None:
            raise ValueError("no frame indices given")
        return files, size

    # ------------------------------------------------------------------------------------------
    def sample_indices(self, index: int, epoch: Optional[int] = None):
        """``(glance (G,) or None, focus (T0,))``: the frame numbers (int64) of sample ``index``
        (default: current epoch); glance is None without ``glance_segments``."""
        record = self.records[index]
        epoch = self.epoch if epoch is None else epoch
        rng = sample_rng(self.seed, epoch, index, STREAM_TEMPORAL) if self.train else None
        return glance_focus_indices(record.num_frames, self.num_segments, self.glance_segments, rng=rng,
                                    start_index=self.start_index)

    def frame_indices(self, index: int, epoch: Optional[int] = None) -> np.ndarray:
        """The T0 frame numbers ``(T0,)`` int64 of ``'video'`` for sample ``index`` (default: current epoch)."""
        return self.sample_indices(index, epoch)[1]

    def glance_indices(self, index: int, epoch: Optional[int] = None) -> Optional[np.ndarray]:
        """The G frame numbers ``(G,)`` int64 of ``'glance'`` (None without ``glance_segments``)."""
        return self.sample_indices(index, epoch)[0]

    def choose_label(self, index: int, epoch: Optional[int] = None) -> int:
        """The single label of sample ``index`` under the label rule (default: current epoch)."""
        labels = self.records[index].labels
        if self.label_rule == "first" or len(labels) == 1:
            return labels[0]
        epoch = self.epoch if epoch is None else epoch
        rng = sample_rng(self.seed, epoch, index, STREAM_LABEL)
        return labels[int(rng.integers(len(labels)))]

    def __getitem__(self, index: int) -> dict:
        index = int(index)
        if not 0 <= index < len(self.records):
            raise IndexError(f"index {index} out of range for a dataset of {len(self.records)} videos")
        record = self.records[index]
        epoch = self.epoch                                             # read once: set_epoch may run meanwhile
        glance_indices, indices = self.sample_indices(index, epoch)
        if self.deferred:
            item, geometry = self._deferred_frames(index, indices)
        else:
            item, geometry = self._clip(index, epoch, glance_indices, indices)
        labels = torch.zeros(self.num_classes, dtype=torch.float32)
        labels[list(record.labels)] = 1.0
        item.update({
            "label": torch.tensor(self.choose_label(index, epoch), dtype=torch.int64),
            "labels": labels,
            "index": torch.tensor(index, dtype=torch.int64),
        })
        if self.boxes is not None:
            boxes, visible = self.boxes[record.path]
            rows = indices - self.start_index
            mapped = geometry.map_boxes(torch.from_numpy(boxes[rows]))
            area = (mapped[..., 2] - mapped[..., 0]) * (mapped[..., 3] - mapped[..., 1])  # (T0,) or (V, T0)
            item["object_boxes"] = mapped.float()
            item["object_visible"] = torch.from_numpy(visible[rows]) & (area > 0)
        return item

    def _deferred_frames(self, index: int, indices: np.ndarray):
        """({'frames' or 'jpeg', 'frame_size'}, geometry) of a deferred item: the frames (or files) at
        :attr:`item_positions` only, each distinct file read once."""
        numbers = indices[self.item_positions]                          # (P,) frame numbers
        distinct, inverse = np.unique(numbers, return_inverse=True)
        inverse = inverse.reshape(-1)
        if self.jpeg_bytes:  # one tensor per item (a DataLoader worker shares each tensor through a file descriptor)
            files, size = self.read_jpeg(index, distinct)
            lengths = np.array([f.numel() for f in files], dtype=np.int64)
            spans = np.stack([np.cumsum(lengths) - lengths, np.cumsum(lengths)], axis=1)  # (U, 2) start, end
            item = {"jpeg": torch.cat(files), "jpeg_spans": torch.from_numpy(spans[inverse])}
        else:
            frames, size = self._decode(index, distinct)                # (U, 3, S, S) or (V, U, 3, S, S)
            item = {"frames": _take_frames(frames, inverse) if len(distinct) != len(numbers) else frames}
        item["frame_size"] = torch.tensor(size, dtype=torch.int64)
        return item, self.frame_geometry(*size)

    def _clip(self, index: int, epoch: int, glance_indices: Optional[np.ndarray], indices: np.ndarray):
        """({'video'[, 'glance']}, the candidates' geometry): every sampled frame, each distinct file once."""
        num_glance = 0 if glance_indices is None else len(glance_indices)
        wanted = indices if glance_indices is None else np.concatenate([glance_indices, indices])
        # Each distinct frame is decoded once, for both sets.
        unique, inverse = np.unique(wanted, return_inverse=True)
        inverse = inverse.reshape(-1)
        reader = self.reader(index)
        rng = sample_rng(self.seed, epoch, index, STREAM_SPATIAL) if self.train else None
        geometry = glance_geometry = None
        read_region = None

        def region(width, height):                                     # called with the first frame's size
            nonlocal geometry, glance_geometry, read_region
            geometry = self.transform.draw(width, height, rng)         # the focus candidates' crop first
            if num_glance and self.train and not self.shared_crop:
                glance_geometry = self.transform.draw(width, height, rng)
            else:                                                      # shared, or the deterministic eval one
                glance_geometry = geometry
            read_region = _bounding_region(geometry.region, glance_geometry.region)
            return read_region

        frames = reader.read(unique, crop=region)                      # (U, h, w, 3) uint8, the region only
        clip = torch.from_numpy(frames).permute(0, 3, 1, 2)            # (U, 3, h, w), channels-last memory
        if glance_geometry is geometry:
            out = geometry.apply(clip, cropped=True)                   # (U, 3, S, S) or views (V, U, 3, S, S)
            if num_glance:
                glance = _take_frames(out, inverse[:num_glance])
                out = _take_frames(out, inverse[num_glance:])
            elif len(unique) != len(wanted):
                out = _take_frames(out, inverse)
        else:                                                          # independent crops of one decoded region
            glance = _render(clip, read_region, glance_geometry, inverse[:num_glance])
            out = _render(clip, read_region, geometry, inverse[num_glance:])
        item = {"video": out}
        if glance_indices is not None:
            item["glance"] = glance
        return item, geometry

    def __repr__(self) -> str:
        views = f"test_crops={self.test_crops}, " if self.test_crops != 1 else ""
        if self.decode_positions is not None:
            views += f"decode_positions={self.decode_positions.tolist()}, "
        if self.jpeg_bytes:
            views += "jpeg_bytes=True, "
        if self.video_files:
            views += "video_files=True, "
        return (f"{type(self).__name__}({len(self)} videos, {self.num_classes} classes, T0={self.num_segments}, "
                f"train={self.train}, glance_segments={self.glance_segments}, shared_crop={self.shared_crop}, "
                f"{views}transform={self.transform!r}, frame_root={self.frame_root!r}, "
                f"template={self.template!r})")


def check_sources(records: Sequence[VideoRecord], root: str, video_files: bool = False) -> None:
    """Raise :class:`ListFileError` naming the list lines whose frame folder (``video_files``: video file)
    under ``root`` does not exist; a missing folder whose name ends like a video file gets a hint."""
    exists = os.path.isfile if video_files else os.path.isdir
    missing = [r for r in records if not exists(os.path.join(root, r.path))]
    if not missing:
        return
    shown = "\n  ".join(f"{r.where}: {os.path.join(root, r.path)}" for r in missing[:5])
    more = f"\n  ... and {len(missing) - 5} more" if len(missing) > 5 else ""
    what = "video files" if video_files else "frame folders"
    from .extract import VIDEO_EXTENSIONS                              # (extract imports the registry, which imports us)
    hint = ""
    if not video_files and all(os.path.isfile(os.path.join(root, r.path)) for r in missing[:5]) \
            and missing[0].path.lower().endswith(tuple(VIDEO_EXTENSIONS)):
        hint = "\n  (these are video files: read them with video_files=True, flag --video_files)"
    raise ListFileError(f"{len(missing)} of {len(records)} {what} are missing (frame root {root}):\n  {shown}{more}{hint}")


def _take_frames(clip: torch.Tensor, rows: np.ndarray) -> torch.Tensor:
    """Frames ``rows`` of a clip ``(U, 3, S, S)`` or of every view of ``(V, U, 3, S, S)`` (contiguous)."""
    rows = torch.from_numpy(rows)
    return clip[rows] if clip.dim() == 4 else clip.index_select(1, rows)


def _bounding_region(a, b):
    """The smallest region ``(x, y, w, h)`` holding both regions ``a`` and ``b``."""
    x0, y0 = min(a[0], b[0]), min(a[1], b[1])
    x1, y1 = max(a[0] + a[2], b[0] + b[2]), max(a[1] + a[3], b[1] + b[3])
    return x0, y0, x1 - x0, y1 - y0


def _render(clip: torch.Tensor, clip_region, geometry, rows: np.ndarray) -> torch.Tensor:
    """Frames ``rows`` of ``clip`` (which holds ``clip_region`` of the source frames) through
    ``geometry`` -> contiguous uint8 ``(len(rows), 3, S, S)``; each distinct row is resized once."""
    distinct, inverse = np.unique(rows, return_inverse=True)
    x, y, w, h = geometry.region
    left, top = x - clip_region[0], y - clip_region[1]
    part = clip[torch.from_numpy(distinct), :, top:top + h, left:left + w]
    out = geometry.apply(part, cropped=True)
    if len(distinct) != len(rows):
        out = out[torch.from_numpy(inverse.reshape(-1))]
    return out
