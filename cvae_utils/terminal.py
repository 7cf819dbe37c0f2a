"""Progress lines for the terminal that runs ``jupyter-book build``, kept out of the pages.

A chapter's kernel writes its stdout and stderr into the notebook, so a progress bar there ends
up in the page (or, with ``stderr_output: remove``, nowhere). This module is a second channel.
The build (`cvae_utils.bookbuild`) names a file in the environment variable ``CVAE_PROGRESS_FILE``
before the kernels start; they inherit it, and `say` appends one line to that file for every
finished epoch (`epoch_done`, called by `cvae_utils.train.fit`) and every
finished item of a long loop (`item_done`: the CLL table's quadrant counts, the variants' models).
In the build process a `Relay` thread reads the lines as they arrive and prints them.

Without the variable (the tests, a notebook opened by hand, ``python -m cvae_utils train``,
which has its own progress bars) `say` does nothing. Appending a short line is one ``write`` on a
file opened with ``O_APPEND``, so the lines of one kernel never interleave mid-line.
"""
from __future__ import annotations

import math
import os
import threading
import warnings
from pathlib import Path
from typing import Callable

__all__ = ["PROGRESS_ENV", "progress_file", "say", "epoch_done", "item_done",
           "format_duration", "Relay"]

PROGRESS_ENV = "CVAE_PROGRESS_FILE"


def progress_file() -> Path | None:
    """The file named by ``CVAE_PROGRESS_FILE``, or None when no build listens."""
    value = os.environ.get(PROGRESS_ENV, "").strip()
    return Path(value) if value else None


def say(line: str) -> bool:
    """Append ``line`` to the progress file, if there is one; True if it was written.

    A file that cannot be written is reported once per process with a warning (which lands in
    the notebook's stderr, dropped from the page) and training goes on: progress is never worth
    a failed chapter.
    """
    path = progress_file()
    if path is None:
        return False
    data = (line.rstrip("\n").replace("\n", " ") + "\n").encode("utf-8")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
    except OSError as error:
        if not getattr(say, "_warned", False):
            say._warned = True
            warnings.warn(f"cannot write progress to {path} ({error}); unset {PROGRESS_ENV} or "
                          f"make the file writable", stacklevel=2)
        return False
    return True


def format_duration(seconds: float) -> str:
    """``m:ss`` below an hour, ``h:mm:ss`` above; ``?`` for a value that is not finite."""
    if not math.isfinite(seconds):
        return "?"
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def epoch_done(desc: str, epoch: int, max_epochs: int, val_loss: float,
               epoch_seconds: list[float], best_epoch: int) -> bool:
    """Report one finished epoch of a training run (``desc``, e.g. ``"cvae k=1"``).

    The time left is an upper bound: the mean epoch so far times the epochs up to the cap;
    early stopping may end the run sooner.
    """
    if progress_file() is None:  # the common case outside a build: no formatting at all
        return False
    elapsed = sum(epoch_seconds)
    left = elapsed / max(epoch, 1) * (max_epochs - epoch)
    return say(f"{desc}: epoch {epoch}/{max_epochs}, validation loss {val_loss:.2f} "
               f"(best epoch {best_epoch}), {format_duration(elapsed)} elapsed, "
               f"at most {format_duration(left)} left")


def item_done(what: str, done: int, total: int, detail: str, seconds: float) -> bool:
    """Report item ``done`` of ``total`` of a long loop (``what``, e.g. ``"CLL table"``).

    The time left assumes the remaining items cost what this one did.
    """
    if progress_file() is None:
        return False
    return say(f"{what} {done}/{total}: {detail} ({format_duration(seconds)}; about "
               f"{format_duration(seconds * (total - done))} left)")


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
