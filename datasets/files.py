"""Atomic file writing: a file that matters is written beside its target and renamed over it.

An interrupted write (crash, SIGKILL, full disk) leaves the previous version intact, and readers
never see a partial file.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from typing import IO, Any, Iterable, Iterator


@contextlib.contextmanager
def atomic_write(path, mode: str = "w") -> Iterator[IO]:
    """Open a temporary file in ``path``'s folder; on success fsync it and rename it to ``path``."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-" + os.path.basename(path) + "-", dir=folder)
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files: honour the umask like open() does
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _umask() -> int:
    """The process's umask (read by setting it and putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_text_atomic(path, text: str) -> None:
    with atomic_write(path, "w") as f:
        f.write(text)


def write_lines_atomic(path, lines: Iterable[str]) -> None:
    """Write text lines (each ended by a newline) atomically."""
    with atomic_write(path, "w") as f:
        for line in lines:
            f.write(line + "\n")


def write_json_atomic(path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, default=_jsonable) + "\n")


def _jsonable(value):
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    return str(value)
