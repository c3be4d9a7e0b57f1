"""What a run writes to its folder: a readable log, a per-epoch CSV, TensorBoard and JSON files.

Only the main process writes (``enabled=False`` on other ranks makes every call a no-op). Files:

* ``log.txt``        the human-readable log (also echoed to the console);
* ``summary.csv``    one row per epoch (training losses, learning rate, validation metrics);
* ``tb/``            TensorBoard scalars and images (when the ``tensorboard`` package is present);
* ``*.json``         written atomically (``config.yaml`` / ``metrics.json`` by the caller).
"""
from __future__ import annotations

import csv
import io
import logging
import os
import sys
from typing import Any, Dict, List

from .packages import sibling

_files = sibling("datasets.files")
write_json_atomic = _files.write_json_atomic
write_text_atomic = _files.write_text_atomic


class RunLog:
    """Logging for one run folder; inert when ``enabled`` is False (ranks other than 0)."""

    def __init__(self, folder: str, enabled: bool = True, tensorboard: bool = True, resume_epoch: int = 0,
                 console: bool = True):
        self.folder, self.enabled = folder, enabled
        self.logger = logging.getLogger(f"uniadafocus.run.{id(self)}")
        self.logger.propagate = False
        self.logger.setLevel(logging.INFO)
        self.writer = None
        self.rows: List[Dict[str, Any]] = []
        if not enabled:
            self.logger.addHandler(logging.NullHandler())
            return
        os.makedirs(folder, exist_ok=True)
        fmt = logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S")
        file_handler = logging.FileHandler(os.path.join(folder, "log.txt"), encoding="utf-8")
        file_handler.setFormatter(fmt)
        self.logger.addHandler(file_handler)
        if console:
            stream = logging.StreamHandler(sys.stdout)
            stream.setFormatter(fmt)
            self.logger.addHandler(stream)
        self.rows = [r for r in self._read_summary() if int(r.get("epoch", 0)) < resume_epoch]
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                self.info("tensorboard is not installed: no TensorBoard logs (pip install tensorboard)")
            else:
                self.writer = SummaryWriter(os.path.join(folder, "tb"), purge_step=resume_epoch or None)

    # -- text ---------------------------------------------------------------------------------
    def info(self, message: str) -> None:
        self.logger.info(message)

    def warning(self, message: str) -> None:
        self.logger.warning("WARNING: " + message)

    # -- TensorBoard --------------------------------------------------------------------------
    def scalars(self, values: Dict[str, float], step: int, prefix: str = "") -> None:
        if self.writer is not None:
            for name, value in values.items():
                self.writer.add_scalar(prefix + name, float(value), step)

    def image(self, tag: str, image, step: int) -> None:
        """``image``: a PIL image or an (H, W, 3) uint8 array."""
        if self.writer is not None:
            import numpy as np

            self.writer.add_image(tag, np.asarray(image), step, dataformats="HWC")

    # -- per-epoch CSV ------------------------------------------------------------------------
    def _summary_path(self) -> str:
        return os.path.join(self.folder, "summary.csv")

    def _read_summary(self) -> List[Dict[str, Any]]:
        path = self._summary_path()
        if not os.path.isfile(path):
            return []
        with open(path, newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))

    def epoch_row(self, row: Dict[str, Any]) -> None:
        """Add (or replace) the row of ``row['epoch']`` and rewrite ``summary.csv`` atomically."""
        if not self.enabled:
            return
        self.rows = [r for r in self.rows if int(r["epoch"]) != int(row["epoch"])] + [row]
        self.rows.sort(key=lambda r: int(r["epoch"]))
        columns: List[str] = []
        for r in self.rows:
            columns += [k for k in r if k not in columns]
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=columns)
        writer.writeheader()
        for r in self.rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
        write_text_atomic(self._summary_path(), out.getvalue())

    def json(self, name: str, obj: Any) -> None:
        if self.enabled:
            write_json_atomic(os.path.join(self.folder, name), obj)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        for handler in list(self.logger.handlers):
            handler.close()
            self.logger.removeHandler(handler)


def progress(iterable, enabled: bool, log: "RunLog" = None, every_s: float = 60.0, **kwargs):
    """A tqdm progress bar on the main process when stderr is a terminal. Otherwise the bare iterable,
    or with ``log`` one plain line ``desc [i/n] elapsed`` in the log about every tenth of the way and
    at least every ``every_s`` seconds (a log file has no bar)."""
    if not enabled:
        return iterable
    if not sys.stderr.isatty():
        return iterable if log is None else _logged(iterable, log, every_s, kwargs.get("desc", ""),
                                                     kwargs.get("total"))
    from tqdm import tqdm

    return tqdm(iterable, dynamic_ncols=True, leave=False, **kwargs)


def _logged(iterable, log: "RunLog", every_s: float, desc: str, total=None):
    import time

    total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)
    step_every = max(1, total // 10) if total else None
    started = last = time.time()
    for i, item in enumerate(iterable, 1):
        yield item
        now = time.time()
        if (step_every and (i % step_every == 0 or i == total)) or now - last >= every_s:
            last = now
            log.info(f"{desc} [{i}/{total if total else '?'}] {now - started:.1f}s")
