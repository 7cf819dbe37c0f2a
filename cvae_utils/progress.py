"""Progress of long runs as log records: one per finished epoch, one per item of a long loop.

Training (`History.report` in `cvae_utils.train`) calls `epoch_done` after every epoch, and the tables
(`cvae_utils.tables`) call `item_done` after every quadrant count of the CLL table and every
model of the variants. Each logs one line at INFO on the standard-library logger
``cvae_utils.progress`` (`logger`); what happens to the line is up to whoever listens:

* the book's build installs a handler in every chapter's kernel that appends each line to a file
  which the build copies to its terminal (``book/_ext/book_kernel.py`` and
  ``book/_ext/book_terminal.py``), so progress shows in the terminal and never in the pages;
* ``python -m cvae_utils train`` prints each line to stderr (`show_on`);
* anywhere else nobody listens: the logger is not enabled for INFO, and the functions return
  without formatting anything.

This module knows nothing of the book or its build.
"""
from __future__ import annotations

import logging
import math

__all__ = ["logger", "LOGGER_NAME", "epoch_done", "item_done", "format_duration", "show_on",
           "stop_showing"]

LOGGER_NAME = "cvae_utils.progress"
logger = logging.getLogger(LOGGER_NAME)


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
    """Report one finished epoch of a training run (``desc``, e.g. ``"cvae k=1"``); True if
    someone listens.

    The time left is an upper bound: the mean epoch so far times the epochs up to the cap;
    early stopping may end the run sooner.
    """
    if not logger.isEnabledFor(logging.INFO):  # nobody listens: no formatting at all
        return False
    elapsed = sum(epoch_seconds)
    left = elapsed / max(epoch, 1) * (max_epochs - epoch)
    logger.info("%s: epoch %s/%s, validation loss %.2f (best epoch %s), %s elapsed, "
                "at most %s left", desc, epoch, max_epochs, val_loss, best_epoch,
                format_duration(elapsed), format_duration(left))
    return True


def item_done(what: str, done: int, total: int, detail: str, seconds: float) -> bool:
    """Report item ``done`` of ``total`` of a long loop (``what``, e.g. ``"CLL table"``); True
    if someone listens.

    The time left assumes the remaining items cost what this one did.
    """
    if not logger.isEnabledFor(logging.INFO):
        return False
    logger.info("%s %s/%s: %s (%s; about %s left)", what, done, total, detail,
                format_duration(seconds), format_duration(seconds * (total - done)))
    return True


def show_on(stream) -> logging.Handler:
    """Print every progress line to ``stream`` (e.g. ``sys.stderr``) from now on; returns the
    handler, for ``logger.removeHandler``. The command line's way of listening."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler._previous = (logger.level, logger.propagate)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return handler


def stop_showing(handler: logging.Handler) -> None:
    """Undo `show_on`: remove ``handler`` and give the logger back its level."""
    logger.removeHandler(handler)
    logger.setLevel(handler._previous[0])
    logger.propagate = handler._previous[1]
