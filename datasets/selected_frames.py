"""Selected-frame decoding: evaluation batches whose frames are decoded when the model needs them.

In evaluation the main variant reads only T_G evenly spaced glance frames of the T0 candidates and,
after its policy, the T_L focus frames it selected; with adaptive early exit a video that leaves at
the glance reads no focus frame at all, and one that leaves after k focus steps reads k of them.
Decoding all T0 candidates (48 JPEGs per video in the official setting) is wasted work for the rest.
This applies to variants whose glance frames are among the candidates (``mn2_r50``); the ``tsm`` and
``x3d`` variants sample a glance clip apart from the candidates and keep decoding every frame in the
workers, as does ``--decode_all_frames`` (``ops.loaders.frame_decoding_options``). Training is unchanged.

How it is split:

* **loader workers** — a dataset built with ``decode_positions`` (the glance positions) decodes only
  those frames of each video, in parallel as before (:class:`~.frame_dataset.FrameFolderDataset`,
  deferred items: ``'frames'`` and ``'frame_size'`` instead of ``'video'``);
* **main process** — :class:`FrameFeed` turns each batch into :class:`FeedBatch`, whose ``video`` is
  the uint8 ``(B*V, T0, 3, S, S)`` tensor the model gathers frames from (V spatial views per video,
  views of a video consecutive, as ``ops.evaluation.evaluate`` flattens them), with the decoded frames
  filled in and the others zero (one buffer reused from batch to batch: a batch's ``video`` is valid
  until the next one). :meth:`FeedBatch.require` is the model's ``before_focus`` hook: it
  decodes the frames the model is about to read that are not there yet, one job per video in a
  thread pool (Pillow's decoder and the resize release the GIL), and writes them in. The full
  forward calls it once with the T_L selected frames; the adaptive early-exit runtime once per focus
  step with each running video's next frame (lazily, step by step: a video that leaves at stage k
  has decoded exactly its first k focus frames).

Exactness: a frame decoded on its own goes through the same reader, the geometry drawn from the same
frame size and the same resize kernel as inside the full clip, so every filled frame is bit-identical
to the full path's and the model, which reads frames only by index, gives identical logits. Frames
never required stay zero; the model never reads them.

Video files (datasets built with ``video_files=True``) take the same path: the workers decode the
frames at the decode positions from the file, and each :meth:`FeedBatch.require` reads the frames it
needs from the video, going on from where the previous require of that video left its decoder when
they come later (the main process keeps the videos open between reads, :data:`.open_videos.OPEN_VIDEOS`),
else opening it again and seeking (:mod:`.video_frames`); ``jpeg_bytes`` needs frame folders.

What is decoded, per video: the distinct frame files at the decode positions (in the worker), then,
for each :meth:`FeedBatch.require`, the distinct files of the required positions that no position
filled before shares; a focus frame that is also a glance frame (or two positions on one file of a
video shorter than T0) is decoded once and copied. :attr:`FeedBatch.decoded` counts the files per
video.

Decoding on the device (``jpeg_bytes=True`` datasets, ``--gpu_decode``): the workers read the JPEG
files' bytes (and their sizes from the headers) without decoding; the files of a batch (its glance
frames, then those of each :meth:`FeedBatch.require`, read by the thread pool) are decoded in one
``torchvision.io.decode_jpeg`` call on the device (nvjpeg on CUDA) and resized there by the same
geometry. The same code runs with a CPU device: torchvision's CPU decoder is libjpeg-turbo, like
Pillow's, and the CPU resize is the uint8 kernel of the CPU path, so there the frames equal the CPU
path's exactly. On CUDA two things round differently: nvjpeg's inverse DCT and chroma upsampling are
not libjpeg-turbo's (torchvision holds its CUDA decoder to a mean absolute difference below 2
levels from its CPU one), and the CUDA resize interpolates in float32 and rounds, where the CPU kernel uses
fixed-point arithmetic (emulated on a CPU: at most 1 level, on about a fifth of the values).
"""
from __future__ import annotations

import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Subset, default_collate

from .frame_dataset import FrameFolderDataset
from .frames import read_jpeg_file

__all__ = ["FeedBatch", "FrameFeed", "collate_items", "decode_jpeg_files", "frame_dataset_of"]


def collate_items(items: Sequence[dict]) -> dict:
    """``default_collate`` of dataset items, except ``'jpeg'`` (per item the files' bytes, of different
    lengths), which stays a list of B tensors."""
    if not items or "jpeg" not in items[0]:
        return default_collate(list(items))
    batch = default_collate([{k: v for k, v in item.items() if k != "jpeg"} for item in items])
    batch["jpeg"] = [item["jpeg"] for item in items]
    return batch


def frame_dataset_of(dataset) -> FrameFolderDataset:
    """The frame-folder dataset under ``torch.utils.data.Subset`` wrappers (items keep its indices)."""
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    return dataset


def decode_jpeg_files(files: Sequence[torch.Tensor], device) -> List[torch.Tensor]:
    """``torchvision.io.decode_jpeg`` of JPEG files (uint8 ``(n,)`` tensors on the CPU), as RGB, in one
    call on ``device`` -> uint8 ``(3, h, w)`` tensors on ``device``. Raises ``RuntimeError`` when a
    file cannot be decoded (on CUDA without telling which)."""
    from torchvision.io import ImageReadMode, decode_jpeg

    with warnings.catch_warnings():  # torchvision 0.29 marks its image decoders deprecated
        warnings.simplefilter("ignore", DeprecationWarning)
        return decode_jpeg(list(files), mode=ImageReadMode.RGB, device=device)


def default_threads() -> int:
    """Decoding threads of the main process: the CPUs available to it, at most 8."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(8, cpus))


@dataclass
class _Job:
    """Frames of one video to decode: distinct frame numbers and the positions (of T0) each fills."""

    video: int
    frames: List[int]
    positions: List[List[int]]


class FrameFeed:
    """Turns the batches of a deferred dataset (see the module doc) into :class:`FeedBatch` objects on
    ``device``; owns the decoding thread pool (``threads``, default :func:`default_threads`). Use it as
    a context manager, or call :meth:`close`.

    dataset: a :class:`~.frame_dataset.FrameFolderDataset` built with ``decode_positions`` and/or
    ``jpeg_bytes`` (or a ``Subset`` of one); with ``jpeg_bytes`` the frames are decoded on ``device``.
    """

    def __init__(self, dataset, device, threads: Optional[int] = None):
        self.dataset = frame_dataset_of(dataset)
        if not isinstance(self.dataset, FrameFolderDataset) or not self.dataset.deferred:
            raise ValueError("FrameFeed needs a FrameFolderDataset built with decode_positions or jpeg_bytes")
        self.device = torch.device(device)
        self.pool = ThreadPoolExecutor(max_workers=threads or default_threads(), thread_name_prefix="frame-decode")
        self._buffer: Optional[torch.Tensor] = None

    def buffer(self, shape) -> torch.Tensor:
        """A zeroed uint8 tensor of ``shape`` (B, ...) on the device, in memory reused from batch to batch
        (a fresh allocation per batch costs more than the zeroing: first-touch page faults on a CPU)."""
        shape = tuple(shape)
        if self._buffer is None or self._buffer.shape[1:] != shape[1:] or self._buffer.shape[0] < shape[0]:
            self._buffer = torch.zeros(shape, dtype=torch.uint8, device=self.device)
            return self._buffer
        return self._buffer[:shape[0]].zero_()

    def batch(self, batch: dict) -> "FeedBatch":
        """The :class:`FeedBatch` of one collated batch (:func:`collate_items`) of the dataset. Its frames
        live in the feed's reused buffer: valid until the next call."""
        return FeedBatch(self, batch)

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        self._buffer = None

    def __enter__(self) -> "FrameFeed":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class FeedBatch:
    """One evaluation batch whose frames are decoded on demand (see the module doc).

    ``video``: uint8 ``(B*V, T0, 3, S, S)`` on the feed's device, the frames decoded so far filled in,
    zeros elsewhere (row ``b*V + v`` is view v of video b; valid until the feed's next batch);
    ``views``: V; ``decoded``: int64 ``(B,)`` frame files decoded per video so far; ``filled``: bool
    ``(B, T0)`` positions filled so far.
    """

    def __init__(self, feed: FrameFeed, batch: dict):
        self.feed = feed
        dataset, device = feed.dataset, feed.device
        self.indices = [int(i) for i in batch["index"]]
        self.numbers = np.stack([dataset.frame_indices(i) for i in self.indices])  # (B, T0) frame numbers
        b, t0 = self.numbers.shape
        self.views, size = dataset.test_crops, dataset.input_size
        self._frames = feed.buffer((b, self.views, t0, 3, size, size))
        self.video = self._frames.view(b * self.views, t0, 3, size, size)
        self.filled = np.zeros((b, t0), dtype=bool)
        self.decoded = torch.zeros(b, dtype=torch.int64)
        positions = dataset.item_positions  # (P,)
        # The video's frame size, as found on its first decoded frame (later frames must have it too).
        self._expected = [((int(w), int(h)), int(self.numbers[i, positions].min()))
                          for i, (w, h) in enumerate(batch["frame_size"].tolist())]
        if "frames" in batch:  # decoded by the workers: (B, P, 3, S, S) or (B, V, P, 3, S, S)
            frames = batch["frames"]
            frames = frames.unsqueeze(1) if frames.dim() == 5 else frames
            frames = frames.to(device, non_blocking=True)
            for j, position in enumerate(positions.tolist()):
                self._frames[:, :, position].copy_(frames[:, :, j])
            self.filled[:, positions] = True
            self.decoded += torch.from_numpy(np.array([len(np.unique(row[positions])) for row in self.numbers]))
        else:  # the files' bytes, to decode on the device
            jobs, files = [], []
            for i, (data, spans) in enumerate(zip(batch["jpeg"], batch["jpeg_spans"].tolist())):
                job = self._job(i, positions)  # (P, 2) spans: where each position's file is in data
                span = {int(n): spans[j] for j, n in enumerate(self.numbers[i, positions])}
                jobs.append(job)
                files.append([data[span[n][0]:span[n][1]] for n in job.frames])
            self._run_on_device(jobs, files)

    # ------------------------------------------------------------------------------------------
    def require(self, indices: torch.Tensor, rows: Optional[torch.Tensor] = None) -> None:
        """Make sure that the frames at positions ``indices`` (n, K) of the rows ``rows`` (n,) of
        :attr:`video` (default: all rows) are filled in, decoding those that are not (the model's
        ``before_focus`` hook)."""
        idx = indices.detach().cpu().numpy().reshape(indices.shape[0], -1)
        rows_np = np.arange(idx.shape[0]) if rows is None else rows.detach().cpu().numpy().reshape(-1)
        videos = rows_np // self.views
        jobs = []
        for video in np.unique(videos):
            wanted = np.unique(idx[videos == video])
            missing = wanted[~self.filled[video, wanted]]
            if not len(missing):
                continue
            job = self._job(int(video), missing)
            if job.frames:
                jobs.append(job)
        if not jobs:
            return
        if self.feed.dataset.jpeg_bytes:
            read = self.feed.pool.map(lambda job: self.feed.dataset.read_jpeg(
                self.indices[job.video], job.frames, self._expected[job.video])[0], jobs)
            self._run_on_device(jobs, list(read))
        else:
            decode = self.feed.pool.map(lambda job: self.feed.dataset.decode_frames(
                self.indices[job.video], job.frames, self._expected[job.video]), jobs)
            for job, frames in zip(jobs, decode):
                self._write(job, frames)

    def complete(self, count: int) -> torch.Tensor:
        """The first ``count`` videos with every candidate frame decoded (for drawing): uint8
        ``(count, T0, 3, S, S)``, the last view (the centre crop in the three-view order)."""
        count = min(int(count), self.numbers.shape[0])
        t0 = self.numbers.shape[1]
        rows = torch.arange(count) * self.views
        self.require(torch.arange(t0).expand(count, t0), rows)
        return self._frames[:count, -1]

    # ------------------------------------------------------------------------------------------
    def _job(self, video: int, positions: Sequence[int]) -> _Job:
        """Fill ``positions`` of ``video`` from frames decoded before where their file was, and return
        the job of decoding the other files (marking every position filled)."""
        numbers = self.numbers[video]
        known = {int(numbers[p]): int(p) for p in np.flatnonzero(self.filled[video])}
        new: Dict[int, List[int]] = {}
        sources, targets = [], []
        for p in (int(p) for p in positions):
            frame = int(numbers[p])
            if frame in known:
                sources.append(known[frame])
                targets.append(p)
            else:
                new.setdefault(frame, []).append(p)
        view = self._frames[video]  # (V, T0, 3, S, S)
        for source, target in zip(sources, targets):
            view[:, target].copy_(view[:, source])
        self.filled[video, list(positions)] = True
        return _Job(video, list(new), list(new.values()))

    def _write(self, job: _Job, frames: torch.Tensor) -> None:
        """Write decoded ``frames`` (n, 3, S, S) or (V, n, 3, S, S), one per ``job.frames``, at their positions."""
        frames = (frames.unsqueeze(0) if frames.dim() == 4 else frames).to(self._frames.device)
        view = self._frames[job.video]  # (V, T0, 3, S, S)
        for j, positions in enumerate(job.positions):
            for position in positions:  # frame by frame: contiguous copies (index_copy_ is slow for uint8 on CPUs)
                view[:, position].copy_(frames[:, j])
        self.decoded[job.video] += len(job.frames)

    def _run_on_device(self, jobs: List[_Job], files: List[List[torch.Tensor]]) -> None:
        """Decode the jobs' files in one call on the device, resize them there and write them in."""
        pairs = [(job, video_files) for job, video_files in zip(jobs, files) if job.frames]
        if not pairs:
            return
        jobs, files = [job for job, _ in pairs], [video_files for _, video_files in pairs]
        device, dataset = self.feed.device, self.feed.dataset
        flat = [f for video_files in files for f in video_files]
        try:
            images = decode_jpeg_files(flat, device)
        except RuntimeError:  # find the culprit (nvjpeg does not tell which file failed)
            images = [self._decode_one(job, frame, data)
                      for job, video_files in zip(jobs, files) for frame, data in zip(job.frames, video_files)]
        start = 0
        for job in jobs:
            part = images[start:start + len(job.frames)]
            start += len(job.frames)
            (width, height), first = self._expected[job.video]
            reader = dataset.reader(self.indices[job.video])
            for frame, image in zip(job.frames, part):  # the headers agreed; the decoder must too
                reader.check_size(frame, (image.shape[-1], image.shape[-2]), (width, height), first)
            geometry = dataset.frame_geometry(width, height)
            self._write(job, geometry.apply(torch.stack(part), cropped=True))

    def _decode_one(self, job: _Job, frame: int, data: torch.Tensor) -> torch.Tensor:
        """One file decoded on the device; a file that fails is reported (or substituted) by the reader."""
        device = self.feed.device
        try:
            return decode_jpeg_files([data], device)[0]
        except RuntimeError as error:
            return self.feed.dataset.reader(self.indices[job.video]).unusable(
                frame, error, lambda path: _decode_path(path, device))


def _decode_path(path: str, device) -> torch.Tensor:
    """The JPEG file ``path`` decoded on ``device`` (a decoder failure as ``ValueError``)."""
    data, _ = read_jpeg_file(path)
    try:
        return decode_jpeg_files([data], device)[0]
    except RuntimeError as error:
        raise ValueError(str(error)) from None
