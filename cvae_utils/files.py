"""Atomic file writing and checks of the directories written to (the model cache, the tables,
the animation).

A file is written to a temporary name in its destination directory, flushed to disk and then
renamed into place, so a reader sees either the old file or the complete new one, never half of
one, even if the writer is interrupted. A writer killed before the rename leaves its temporary
file behind; `clean_stale_temporaries` removes those whose process no longer runs.
`check_writable` tells, before any long computation, whether a directory can take the results.
"""
from __future__ import annotations

import errno
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Callable

__all__ = ["write_atomically", "check_writable", "clean_stale_temporaries", "WriteError",
           "MIN_FREE_BYTES"]

MIN_FREE_BYTES = 64 * 2**20  # a directory with less free space than this is refused up front
_TEMPORARY = re.compile(r"^\..+\.tmp-(\d+)-[^/]*$")  # .<stem>.tmp-<pid>-<random><suffix>


class WriteError(OSError):
    """A result cannot be written: the directory is missing, not writable or full."""


def _explain(path: Path, error: BaseException) -> str:
    reason = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
              errno.EACCES: "permission denied", errno.EPERM: "permission denied",
              errno.EROFS: "the file system is read-only",
              errno.ENOTDIR: "a part of the path is a file, not a directory"}.get(
                  getattr(error, "errno", None), f"{type(error).__name__}: {error}")
    return (f"cannot write {path}: {reason}. Free some space, fix the permissions, or point "
            f"the variable that names this directory (CVAE_CACHE_DIR for the model cache) to a "
            f"writable directory with room")


def write_atomically(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it to ``path``.

    The temporary name keeps ``path``'s suffix, so writers that pick a format from the suffix
    (imageio, pandas) work unchanged. Parent directories are created. Returns ``path``. An
    error of the file system (no directory, no permission, no space), or of a writer that runs
    out of space midway, is raised as a `WriteError` that says which; nothing is left behind.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.tmp-{os.getpid()}-",
                                   suffix=path.suffix)
        os.close(fd)
    except OSError as error:
        raise WriteError(_explain(path, error)) from error
    try:
        write(Path(tmp))
        with open(tmp, "rb+") as handle:  # make the bytes durable before the rename
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it private; these files are readable like others
        os.replace(tmp, path)
    except BaseException as error:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(error, OSError) and not isinstance(error, WriteError):
            raise WriteError(_explain(path, error)) from error
        if isinstance(error, RuntimeError) and shutil.disk_usage(path.parent).free < MIN_FREE_BYTES:
            # torch.save reports a full disk as an internal error ("unexpected pos ...")
            raise WriteError(_explain(path, OSError(errno.ENOSPC, "no space"))) from error
        raise
    return path


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def clean_stale_temporaries(directory: str | os.PathLike) -> list[Path]:
    """Remove the temporary files of `write_atomically` in ``directory`` whose writer no longer
    runs (killed before its rename); return what was removed."""
    removed = []
    directory = Path(directory)
    if not directory.is_dir():
        return removed
    for path in directory.iterdir():
        match = _TEMPORARY.match(path.name)
        if match and int(match.group(1)) != os.getpid() and not _running(int(match.group(1))):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def check_writable(directory: str | os.PathLike, what: str = "directory") -> Path:
    """Make sure ``directory`` exists (created if needed), takes a file, and has at least
    `MIN_FREE_BYTES` free, before work whose results go there; clean its stale temporaries.

    Raises a `WriteError` that names ``what``, the directory and the fix otherwise.
    """
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=directory, prefix=".write-check.tmp-")
        os.close(fd)
        os.unlink(probe)
    except OSError as error:
        raise WriteError(f"the {what} cannot be used: {_explain(directory, error)}") from error
    free = shutil.disk_usage(directory).free
    if free < MIN_FREE_BYTES:
        raise WriteError(f"the {what} cannot be used: {directory} has only {free / 2**20:.0f} MiB "
                         f"free (at least {MIN_FREE_BYTES // 2**20} MiB needed). Free some "
                         f"space or point CVAE_CACHE_DIR to a directory with room")
    clean_stale_temporaries(directory)
    return directory
