"""CPU tuning for large-activation workloads (video models on a CPU): the allocator, OpenMP's waiting.

PyTorch allocates CPU tensors with the system ``malloc``. glibc serves blocks above its mmap
threshold with fresh ``mmap`` calls and returns freed heap tops to the system, so every forward pass
of a video model page-faults its activations in again (measured on a 2-core VM: MobileNetV2
evaluation at 224 px ran 2.9x and training steps at 64 px 1.5x slower because of it).
``tune_cpu_allocator`` raises glibc's mmap threshold (1 GiB, or the 32 MiB that older versions
allow) and stops trimming, so freed activations are reused instead of faulted in again. The cost is
that the process keeps its peak memory. It changes no numbers; it is a no-op where glibc's
``mallopt`` is not available.

``prefer_passive_omp_wait`` sets ``OMP_WAIT_POLICY=PASSIVE`` when the environment leaves it unset.
By default OpenMP threads spin for a while after each parallel region; when the cores are shared
with other work those spins take the time slices the working threads need (measured on 2 shared
cores: 2-thread runs up to 5x slower). The OpenMP runtime reads the variable once, when it is loaded
(with torch), so the entry points call this before importing torch, and it does nothing once a
runtime is loaded: setting it then would change nothing.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_applied = False


def tune_cpu_allocator(mmap_threshold: int = 1 << 30, trim_threshold: int = (1 << 31) - 1) -> bool:
    """Apply the glibc settings once per process; returns whether they are in effect."""
    global _applied
    if _applied:
        return True
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mmap_ok = bool(mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) or bool(mallopt(_M_MMAP_THRESHOLD, 32 << 20))
    _applied = mmap_ok and bool(mallopt(_M_TRIM_THRESHOLD, trim_threshold))
    return _applied


#: Shared libraries of the OpenMP runtimes that read OMP_WAIT_POLICY when they load.
_OPENMP_LIBRARIES = ("libgomp", "libiomp", "libomp")


def openmp_loaded() -> bool:
    """Whether an OpenMP runtime is already loaded in this process (torch brings one)."""
    if "torch" in sys.modules:
        return True
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            return any(name in line for line in maps for name in _OPENMP_LIBRARIES)
    except OSError:  # no /proc: torch not imported is the best available sign
        return False


def prefer_passive_omp_wait() -> bool:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` for this process (and the processes it starts) when the
    environment does not set it and it can still take effect (no OpenMP runtime loaded yet); returns
    whether it was set here. Silent; an explicit ``OMP_WAIT_POLICY`` always wins."""
    if "OMP_WAIT_POLICY" in os.environ or openmp_loaded():
        return False
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    return True


def cpu_name() -> str:
    """The CPU's model name (benchmarks print it with their conditions)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine() or "unknown CPU"
