"""Exceptions raised for bad data.

Every message names the file and the line (list and class files) or the frame (frame folders), so a
user can go straight to the problem. The classes take a single message argument on purpose: when
one is raised inside a ``DataLoader`` worker, PyTorch re-raises it in the main process by calling
``type(exc)(message)``, so a richer constructor would turn the real error into a ``TypeError``.
"""


class DataError(ValueError):
    """Base class of every data problem reported by this package."""


class ListFileError(DataError):
    """A list file, class file or side file is missing or malformed, or names a missing folder."""


class FrameError(DataError):
    """A frame file is missing, cannot be decoded, or does not match the other frames of its clip."""
