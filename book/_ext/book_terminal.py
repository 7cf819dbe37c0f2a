"""Progress lines for the terminal that runs ``jupyter-book build``, kept out of the pages.

A chapter's kernel writes its stdout and stderr into the notebook, so a progress bar there ends
up in the page (or, with ``stderr_output: remove``, nowhere). This module is a second channel.
The build (``book_build.py``) names a file in the environment variable ``CVAE_PROGRESS_FILE``
before the kernels start; they inherit it, and the kernel launcher (``book_kernel.py``) installs
a `ProgressFileHandler` on the logger of `cvae_utils.progress`, which appends one line to that
file for every finished epoch (`cvae_utils.progress.epoch_done`, called by `History.report`
in `cvae_utils.train`) and every finished item of a long loop (`cvae_utils.progress.item_done`:
the CLL table's quadrant counts, the variants' models). In the build process a `Relay` thread
reads the lines as they arrive and prints them.

Without the variable (the tests, a notebook opened by hand, ``python -m cvae_utils train``,
which prints the lines itself through `cvae_utils.progress.show_on`) nothing is installed here.
Appending a short line is one ``write`` on a file opened with ``O_APPEND``, so the lines of one
kernel never interleave mid-line. This module uses the standard library only: the kernel
launcher imports it before anything else.
"""
from __future__ import annotations

import logging
import os
import threading
import warnings
from pathlib import Path
from typing import Callable

__all__ = ["PROGRESS_ENV", "PROGRESS_LOGGER", "progress_file", "append_line",
           "ProgressFileHandler", "listen_to_progress", "Relay"]

PROGRESS_ENV = "CVAE_PROGRESS_FILE"
PROGRESS_LOGGER = "cvae_utils.progress"  # `cvae_utils.progress.LOGGER_NAME`


def progress_file() -> Path | None:
    """The file named by ``CVAE_PROGRESS_FILE``, or None when no build listens."""
    value = os.environ.get(PROGRESS_ENV, "").strip()
    return Path(value) if value else None


def append_line(path: str | os.PathLike, line: str) -> None:
    """Append ``line`` (its newlines made spaces) to ``path`` in one ``write`` with ``O_APPEND``;
    an OSError if it cannot."""
    data = (line.rstrip("\n").replace("\n", " ") + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


class ProgressFileHandler(logging.Handler):
    """A logging handler that appends each record's message as one line to ``path``.

    A file that cannot be written is reported once with a warning (which lands in the notebook's
    stderr, dropped from the page) and training goes on: progress is never worth a failed
    chapter.
    """

    def __init__(self, path: str | os.PathLike, level: int = logging.INFO):
        super().__init__(level)
        self.path = Path(path)
        self.warned = False

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = record.getMessage()
            append_line(self.path, line)
        except OSError as error:
            if not self.warned:
                self.warned = True
                warnings.warn(f"cannot write progress to {self.path} ({error}); unset "
                              f"{PROGRESS_ENV} or make the file writable", stacklevel=2)


def listen_to_progress(path: str | os.PathLike | None = None) -> ProgressFileHandler | None:
    """Send the package's progress lines to ``path`` (default: ``CVAE_PROGRESS_FILE``; None
    when it is not set, and then nothing is installed). Returns the handler, which
    ``logging.getLogger(PROGRESS_LOGGER).removeHandler`` takes off again."""
    if path is None:
        path = progress_file()
        if path is None:
            return None
    handler = ProgressFileHandler(path)
    logger = logging.getLogger(PROGRESS_LOGGER)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False  # the lines go to the build's terminal, not to the kernel's stderr
    return handler


class Relay:
    """Copies the lines appended to ``path`` to ``write`` from a background thread.

    ``start()`` creates (empties) the file; complete lines are passed on every ``interval``
    seconds; ``stop()`` passes on what is left and ends the thread. Used by the build process.
    """

    def __init__(self, path: str | os.PathLike, write: Callable[[str], None],
                 interval: float = 0.25):
        self.path = Path(path)
        self.write = write
        self.interval = interval
        self._offset = 0
        self._partial = b""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def start(self) -> "Relay":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_bytes(b"")
        self._thread = threading.Thread(target=self._run, name="cvae-progress-relay",
                                        daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.poll()

    def poll(self) -> int:
        """Pass on the complete lines that arrived since the last call; how many there were."""
        with self._lock:
            try:
                with open(self.path, "rb") as handle:
                    handle.seek(self._offset)
                    chunk = handle.read()
            except OSError:
                return 0
            self._offset += len(chunk)
            *lines, self._partial = (self._partial + chunk).split(b"\n")
        for line in lines:
            self.write(line.decode("utf-8", errors="replace"))
        return len(lines)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.poll()
