"""The thresholds file: fitted early-exit thresholds as a small JSON document.

Written by ``test_early_exit.py --budget`` and read by the adaptive runtime, ``main.py`` and the
scripts. Content (:data:`THRESHOLDS_FORMAT`, version :data:`THRESHOLDS_VERSION`)::

    {"format": "uniadafocus-early-exit-thresholds", "version": 1, "criterion": "entropy",
     "num_stages": K, "thresholds": [K numbers], "flops": [K GFLOPs per stage],
     "budget_gflops": number or null, "p": number or null, "expected_gflops": number or null}

All numbers are finite (NaN and infinities are rejected on both sides). Thresholds are stored as
float64, which is exact for float32 thresholds.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Union

import torch

from ..packages import sibling
from .criteria import check_criterion

write_text_atomic = sibling("datasets.files").write_text_atomic

__all__ = ["THRESHOLDS_FORMAT", "THRESHOLDS_VERSION", "ThresholdsFile", "ThresholdsFileError",
           "save_thresholds", "load_thresholds"]

THRESHOLDS_FORMAT = "uniadafocus-early-exit-thresholds"
THRESHOLDS_VERSION = 1


class ThresholdsFileError(ValueError):
    """A thresholds file that cannot be read or does not validate."""


@dataclass
class ThresholdsFile:
    """Content of a thresholds file (see :func:`save_thresholds`)."""
    criterion: str
    thresholds: torch.Tensor       # (K,) float64 (exact for float32 thresholds)
    flops: List[float]
    budget_gflops: Optional[float] = None
    p: Optional[float] = None
    expected_gflops: Optional[float] = None
    version: int = THRESHOLDS_VERSION

    @property
    def num_stages(self) -> int:
        return int(self.thresholds.numel())


def _finite_or_none(name: str, value) -> Optional[float]:
    if value is None:
        return None
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def save_thresholds(path: Union[str, os.PathLike], thresholds: torch.Tensor, *, criterion: str,
                    flops: Sequence[float], budget_gflops: Optional[float] = None,
                    p: Optional[float] = None, expected_gflops: Optional[float] = None) -> Path:
    """Write a thresholds file (JSON) atomically (temp file in the same folder + ``os.replace``).

    Keys: ``format``, ``version``, ``criterion``, ``num_stages``, ``thresholds``, ``flops``,
    ``budget_gflops``, ``p``, ``expected_gflops`` (the last three may be null).
    """
    check_criterion(criterion)
    thr = [float(v) for v in torch.as_tensor(thresholds).detach().cpu().reshape(-1).tolist()]
    fl = [float(v) for v in flops]
    if len(thr) != len(fl) or not thr:
        raise ValueError(f"{len(thr)} thresholds for {len(fl)} FLOPs values")
    if not all(math.isfinite(v) for v in thr + fl):
        raise ValueError("thresholds and FLOPs must be finite")
    doc = {
        "format": THRESHOLDS_FORMAT, "version": THRESHOLDS_VERSION, "criterion": criterion,
        "num_stages": len(thr), "thresholds": thr, "flops": fl,
        "budget_gflops": _finite_or_none("budget_gflops", budget_gflops),
        "p": _finite_or_none("p", p), "expected_gflops": _finite_or_none("expected_gflops", expected_gflops),
    }
    path = Path(path)
    write_text_atomic(path, json.dumps(doc, indent=2, allow_nan=False) + "\n")
    return path


def _reject_constant(name: str):
    raise ValueError(f"non-finite number {name}")


def _is_finite_number(value) -> bool:
    """A JSON number (not a boolean) that is finite."""
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


def load_thresholds(path: Union[str, os.PathLike]) -> ThresholdsFile:
    """Read and validate a thresholds file; raises :class:`ThresholdsFileError` naming the problem."""
    path = Path(path)

    def fail(msg: str):
        raise ThresholdsFileError(f"{path}: {msg}")

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        fail(f"cannot read thresholds file ({exc})")
    try:
        doc = json.loads(text, parse_constant=_reject_constant)
    except ValueError as exc:
        fail(f"not a valid JSON thresholds file ({exc})")
    if not isinstance(doc, dict):
        fail("top level must be a JSON object")
    if doc.get("format") != THRESHOLDS_FORMAT:
        fail(f"'format' must be {THRESHOLDS_FORMAT!r}, got {doc.get('format')!r}")
    version = doc.get("version")
    if not isinstance(version, int) or isinstance(version, bool):
        fail(f"'version' must be an integer, got {version!r}")
    if version != THRESHOLDS_VERSION:
        fail(f"unsupported version {version} (this code reads version {THRESHOLDS_VERSION})")
    missing = [k for k in ("criterion", "thresholds", "flops") if k not in doc]
    if missing:
        fail(f"missing key(s): {', '.join(missing)}")
    try:
        check_criterion(doc["criterion"])
    except ValueError as exc:
        fail(str(exc))

    def numbers(key: str) -> List[float]:
        vals = doc[key]
        if not isinstance(vals, list) or not vals:
            fail(f"'{key}' must be a non-empty list of numbers")
        for v in vals:
            if not _is_finite_number(v):
                fail(f"'{key}' must hold finite numbers, found {v!r}")
        return [float(v) for v in vals]

    thr, fl = numbers("thresholds"), numbers("flops")
    if len(thr) != len(fl):
        fail(f"{len(thr)} thresholds but {len(fl)} FLOPs values")
    if "num_stages" in doc and doc["num_stages"] != len(thr):
        fail(f"'num_stages' is {doc['num_stages']!r} but there are {len(thr)} thresholds")
    if any(f < 0 for f in fl):
        fail("FLOPs must be non-negative")
    optional = {}
    for key in ("budget_gflops", "p", "expected_gflops"):
        v = doc.get(key)
        if v is not None and not _is_finite_number(v):
            fail(f"'{key}' must be a finite number or null, got {v!r}")
        optional[key] = None if v is None else float(v)
    if optional["p"] is not None and optional["p"] <= 0:
        fail(f"'p' must be positive, got {optional['p']}")
    return ThresholdsFile(criterion=doc["criterion"], thresholds=torch.tensor(thr, dtype=torch.float64),
                          flops=fl, version=version, **optional)
