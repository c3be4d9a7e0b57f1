"""One clear line, no traceback, for the errors a user can fix: the command-line wrapper of the entry points.

    if __name__ == "__main__":
        sys.exit(cli.run_main(main))

A user error (bad data, a bad checkpoint or thresholds file, missing weights, an argument that does
not validate) prints ``error: <message>`` to stderr and exits with status 2; ``SystemExit("text")``
raised by the entry points is reported the same way. Ctrl-C (``KeyboardInterrupt``) prints one
``interrupted:`` line (for :class:`Interrupted`, the entry point's own: where the run stopped and how
to continue) and exits with status 130, as a shell reports SIGINT. ``UNIADAFOCUS_DEBUG=1`` re-raises
instead, with the traceback. Anything else is a bug and keeps its traceback.

An error raised in a ``DataLoader`` worker process reaches the main process re-raised by PyTorch
with the worker's traceback inside the message; :func:`user_message` keeps the original message only.
Ctrl-C reaches the workers too (the terminal signals the whole process group): :func:`loader_worker_init`
(every loader's ``worker_init_fn``) leaves it to the main process, and keeps a worker quiet when the main
process stopped reading in the middle of a batch (the broken connection of the batch's shared-memory
hand-over), so that Ctrl-C prints the one ``interrupted:`` line and no worker traceback.
``models`` and ``datasets`` do not import ``ops``: ``models/flops.py`` and ``datasets/extract.py``
have their own small copies of this wrapper.
"""
from __future__ import annotations

import os
import signal
import sys
from typing import Callable, Optional, Sequence

from .packages import sibling

DEBUG_ENV = "UNIADAFOCUS_DEBUG"
EXIT_STATUS = 2
#: The exit status of a command stopped by Ctrl-C (128 + SIGINT, what a shell reports).
INTERRUPTED_STATUS = 130


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, with a message saying where the command stopped and how to continue (one line)."""


def user_error_types() -> tuple:
    """The project's exception types that describe a user's mistake (their messages name the culprit)."""
    errors = sibling("datasets.errors")
    weights = sibling("models.weights")
    thresholds = sibling("ops.early_exit.thresholds_file")
    # WeightsError covers CheckpointError, BackboneWeightsError and X3DWeightsError; DataError covers
    # ListFileError and FrameError; ValueError covers the arguments the constructors validate.
    return (errors.DataError, weights.WeightsError, thresholds.ThresholdsFileError, ValueError, FileNotFoundError)


def user_message(exc: BaseException) -> str:
    """The message of ``exc``; for an error PyTorch re-raised from a DataLoader worker, the original one."""
    text = str(exc)
    if "Original Traceback" in text:
        marker = f"{type(exc).__name__}: "
        at = text.rfind(marker)
        if at >= 0:
            text = text[at + len(marker):]
    return text.strip()


#: A peer that stopped reading: what a loader worker meets when its main process stops (Ctrl-C).
GONE_READER = (BrokenPipeError, ConnectionResetError)


def loader_worker_init(worker_id: int) -> None:
    """``worker_init_fn`` of every DataLoader: in the worker process, Ctrl-C is ignored (the main process
    handles it and stops the workers; a worker whose main process has gone exits on its own), and a main
    process that stopped reading in the middle of a batch's hand-over ends it silently: a batch's tensors
    travel as shared-memory file descriptors that the worker's ``multiprocessing.resource_sharer`` thread
    sends when the main process asks, and that thread reports a failed send through ``sys.excepthook``
    (the traceback of a ``BrokenPipeError`` when Ctrl-C stopped the main process mid-receive). Any other
    error is reported as before."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    default_hook = sys.excepthook

    def excepthook(kind, value, traceback):
        if not issubclass(kind, GONE_READER):
            default_hook(kind, value, traceback)

    sys.excepthook = excepthook


def debugging() -> bool:
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


def report(message: str) -> int:
    print(f"error: {message}", file=sys.stderr, flush=True)
    return EXIT_STATUS


def interrupted_message(exc: KeyboardInterrupt) -> str:
    """The line that reports Ctrl-C: the :class:`Interrupted` message, or a plain one."""
    return str(exc) or "stopped by Ctrl-C"


def run_main(main: Callable[..., Optional[int]], argv: Optional[Sequence[str]] = None) -> int:
    """Run ``main(argv)``; a user error becomes one ``error:`` line and exit status 2, Ctrl-C one
    ``interrupted:`` line and exit status 130."""
    try:
        return main(argv) or 0
    except KeyboardInterrupt as exc:
        if debugging():
            raise
        print(f"interrupted: {interrupted_message(exc)}", file=sys.stderr, flush=True)
        return INTERRUPTED_STATUS
    except SystemExit as exc:
        if isinstance(exc.code, str) and not debugging():
            return report(exc.code)
        raise
    except user_error_types() as exc:
        if debugging():
            raise
        return report(user_message(exc))
