"""Parsing and writing of the list files and class files.

A list file has one video per line: ``path SEP num_frames SEP label [SEP label ...]``. ``path`` is a
frame folder relative to the dataset's frame root, ``num_frames`` the number of frames in it, and
the labels are 0-based class ids (as many as the video has). Two rules locate the fields:

* ``multi_label=True`` (ActivityNet, FCVID; separator ``,``): ``path`` is the first field,
  ``num_frames`` the second and every further field is a label. A path may contain spaces but not
  the separator.
* ``multi_label=False`` (Mini-Kinetics; separator ``' '``): the last field is the one label, the one
  before it ``num_frames`` and everything before that, joined back with the separator, is the path.
  This is the official rule that lets Mini-Kinetics paths contain spaces.

Lines are stripped of surrounding white space (as the official code does), and so is every field
(so ``video , 120, 3`` reads like ``video,120,3``); blank lines are skipped.
Duplicated labels on a line count once. A dataset of video files (``video_files=True``) names a video
file as ``path``; its ``num_frames`` may be ``0``, "count the frames from the file" (``count_from_file=True``
here; the dataset counts them when it is built). A class file has one class name per line; the number of
lines is the number of classes, and a class's id is its 0-based line number.

Every problem raises :class:`~.errors.ListFileError` naming the file and the line.

A video listed twice (the same path on two lines) is kept as listed, with one warning per file naming
the first repeat's line, the line it repeats and how many repeated lines there are in all. Keeping
the data as it is is the least surprising choice (the official code reads the list as it is, and so
does a list that repeats a video on purpose, to weigh it more in training); the warning is there
because a repeat is almost always a mistake, and in a validation list it skews the metrics: the
video counts twice. The official lists have no repeats.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

from .errors import ListFileError

#: Most problems quoted in one error message; the total count is always given.
MAX_REPORTED = 5

logger = logging.getLogger(__name__)
#: The list files whose repeated videos were warned about in this process (each file is warned about once).
_warned_repeats = set()


@dataclass(frozen=True)
class VideoRecord:
    """One line of a list file.

    path: the frame folder (or video file) relative to the frame root; num_frames: frames in the folder
    (>= 1; 0 for a video file whose frames are to be counted from the file);
    labels: sorted distinct class ids (at least one); line: 1-based line number in ``source``.
    """

    path: str
    num_frames: int
    labels: Tuple[int, ...]
    line: int
    source: str = ""

    @property
    def where(self) -> str:
        """``'file:line'``, for messages."""
        return f"{self.source}:{self.line}"


def _read_lines(path: str, what: str) -> List[str]:
    if not os.path.isfile(path):
        raise ListFileError(f"{what} not found: {path}")
    try:
        with open(path, encoding="utf-8-sig") as f:
            return f.read().splitlines()
    except UnicodeDecodeError as e:
        raise ListFileError(f"{path}: not a UTF-8 text file ({e})") from None


def _to_int(text: str, what: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise ValueError(f"{what} {text.strip()!r} is not an integer") from None


def parse_list_line(text: str, *, separator: str, multi_label: bool,
                    count_from_file: bool = False) -> Tuple[str, int, Tuple[int, ...]]:
    """Split one stripped, non-empty line into ``(path, num_frames, labels)``.

    ``count_from_file``: accept ``num_frames`` 0 (a video file whose frames are counted later).

    Raises ``ValueError`` with a short reason (without file and line; the caller adds them). Label
    ranges are not checked here.
    """
    fields = text.split(separator)
    if len(fields) < 3:
        raise ValueError(f"expected 'path{separator}num_frames{separator}label', found {len(fields)} "
                         f"field(s) when splitting on {separator!r}")
    if multi_label:
        path, frames_field, label_fields = fields[0], fields[1], fields[2:]
    else:
        path, frames_field, label_fields = separator.join(fields[:-2]), fields[-2], fields[-1:]
    path = path.strip()
    if not path:
        raise ValueError("empty path")
    num_frames = _to_int(frames_field, "num_frames")
    if num_frames < (0 if count_from_file else 1):
        zero = " (or 0: count the frames from the video file)" if count_from_file else ""
        raise ValueError(f"num_frames must be at least 1{zero}, got {num_frames}")
    labels = []
    for field in label_fields:
        if not field.strip():
            raise ValueError("empty label field")
        labels.append(_to_int(field, "label"))
    return path, num_frames, tuple(sorted(set(labels)))


def parse_list_file(path: str, *, separator: str, multi_label: bool,
                    num_classes: Optional[int] = None, count_from_file: bool = False) -> List[VideoRecord]:
    """Read a whole list file into :class:`VideoRecord` s (in file order).

    ``count_from_file``: ``num_frames`` 0 is accepted (see :func:`parse_list_line`).

    With ``num_classes`` every label must lie in ``[0, num_classes)``. All bad lines are collected
    and reported in one :class:`ListFileError` (the first few quoted, the total counted). An
    existing file without any entry is an error too.
    """
    lines = _read_lines(path, "list file")
    records: List[VideoRecord] = []
    problems: List[str] = []
    for number, raw in enumerate(lines, start=1):
        text = raw.strip()
        if not text:
            continue
        try:
            video, num_frames, labels = parse_list_line(text, separator=separator, multi_label=multi_label,
                                                        count_from_file=count_from_file)
            if num_classes is not None:
                bad = [l for l in labels if not 0 <= l < num_classes]
                if bad:
                    raise ValueError(f"label {bad[0]} is out of range [0, {num_classes})")
        except ValueError as e:
            problems.append(f"{path}:{number}: {e}: {text!r}")
            continue
        records.append(VideoRecord(video, num_frames, labels, number, path))
    if problems:
        raise ListFileError(_summarise(problems, "malformed line"))
    if not records:
        raise ListFileError(f"{path}: the list file has no entries")
    warn_repeated_videos(records, path)
    return records


def repeated_videos(records: Sequence[VideoRecord]) -> List[Tuple[VideoRecord, VideoRecord]]:
    """``(repeat, first)`` for every record whose video path an earlier record of the list already has."""
    first = {}
    repeats = []
    for record in records:
        if record.path in first:
            repeats.append((record, first[record.path]))
        else:
            first[record.path] = record
    return repeats


def warn_repeated_videos(records: Sequence[VideoRecord], path: str) -> None:
    """Log one warning (once per file and process) when the list names a video on more than one line."""
    repeats = repeated_videos(records)
    key = os.path.abspath(path)
    if not repeats or key in _warned_repeats:
        return
    _warned_repeats.add(key)
    repeat, first = repeats[0]
    count = f"{len(repeats)} repeated line{'s' if len(repeats) != 1 else ''} in all"
    logger.warning(f"warning: {path}:{repeat.line}: video {repeat.path!r} is already on line {first.line}; {count}, "
                   f"kept as listed (each copy counts, in training and in the metrics)")


def read_class_file(path: str) -> List[str]:
    """Class names, one per line; the id of a class is its 0-based position.

    Trailing blank lines are ignored; a blank line between two classes is an error because it would
    shift every later id.
    """
    lines = [l.strip() for l in _read_lines(path, "class file")]
    while lines and not lines[-1]:
        lines.pop()
    blank = [i + 1 for i, l in enumerate(lines) if not l]
    if blank:
        raise ListFileError(f"{path}:{blank[0]}: blank line inside the class file (class ids are line "
                            f"numbers, so a blank line would shift them)")
    if not lines:
        raise ListFileError(f"{path}: the class file has no classes")
    return lines


def format_list_line(path: str, num_frames: int, labels: Sequence[int], *, separator: str,
                     multi_label: bool) -> str:
    """One list line (without newline) that :func:`parse_list_line` reads back unchanged.

    Raises ``ValueError`` when the path cannot be written in this format (it contains the
    separator under the multi-label rule, a line break, or surrounding white space).
    """
    if not labels:
        raise ValueError(f"video {path!r} has no label")
    if not multi_label and len(labels) != 1:
        raise ValueError(f"video {path!r}: the single-label format holds exactly one label, got {list(labels)}")
    if multi_label and separator in path:
        raise ValueError(f"video path {path!r} contains the list separator {separator!r}")
    if path != path.strip() or "\n" in path or "\r" in path:
        raise ValueError(f"video path {path!r} has surrounding white space or a line break")
    return separator.join([path, str(int(num_frames))] + [str(int(l)) for l in labels])


def _summarise(problems: List[str], what: str) -> str:
    head = "\n  ".join(problems[:MAX_REPORTED])
    more = f"\n  ... and {len(problems) - MAX_REPORTED} more" if len(problems) > MAX_REPORTED else ""
    plural = "s" if len(problems) != 1 else ""
    return f"{len(problems)} {what}{plural}:\n  {head}{more}"
