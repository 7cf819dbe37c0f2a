"""An unusable cache fails before any training, write errors are one clear message, and the
temporary files of a killed writer are cleaned."""
from __future__ import annotations

import errno
import os
import subprocess
import sys

import pytest

import cvae_utils.cache as cache_module
import cvae_utils.files as files
from cvae_utils import trained_cvae
from cvae_utils.files import WriteError, check_writable, clean_stale_temporaries, write_atomically


@pytest.fixture
def no_training(monkeypatch):
    def must_not_train(*args, **kwargs):
        raise AssertionError("trained although the cache cannot take the result")

    monkeypatch.setattr(cache_module, "train_baseline", must_not_train)
    monkeypatch.setattr(cache_module, "train_cvae", must_not_train)


def test_a_cache_inside_a_regular_file_fails_before_any_training(tmp_path, tiny_data, no_training,
                                                                  small_config, tiny_budget):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(WriteError, match="model cache cannot be used.*not a directory"):
        trained_cvae(1, small_config, tiny_budget, tiny_data, device="cpu",
                     cache=blocker / "models")


def test_a_cache_without_write_permission_fails_before_any_training(
        tmp_path, tiny_data, no_training, monkeypatch, small_config, tiny_budget):
    def refused(*args, **kwargs):  # what a read-only directory answers (root would write)
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(files.tempfile, "mkstemp", refused)
    with pytest.raises(WriteError, match="model cache cannot be used.*permission denied"):
        trained_cvae(1, small_config, tiny_budget, tiny_data, device="cpu",
                     cache=tmp_path / "models")


def test_a_full_disk_fails_before_any_training(tmp_path, tiny_data, no_training, monkeypatch,
                                                small_config, tiny_budget):
    usage = files.shutil.disk_usage(tmp_path)
    monkeypatch.setattr(files.shutil, "disk_usage",
                        lambda path: usage._replace(free=files.MIN_FREE_BYTES // 2))
    with pytest.raises(WriteError, match="MiB free .* needed"):
        trained_cvae(1, small_config, tiny_budget, tiny_data, device="cpu",
                     cache=tmp_path / "models")


def test_a_disk_that_fills_during_a_write_gives_one_clear_error(tmp_path):
    def full(tmp):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(WriteError, match="the disk is full"):
        write_atomically(tmp_path / "model.pt", full)
    assert list(tmp_path.iterdir()) == []  # nothing half-written is left


def test_torchs_internal_error_on_a_full_disk_is_explained(tmp_path, monkeypatch):
    usage = files.shutil.disk_usage(tmp_path)

    def torch_save_on_a_full_disk(tmp):
        monkeypatch.setattr(files.shutil, "disk_usage", lambda path: usage._replace(free=0))
        raise RuntimeError("[enforce fail at inline_container.cc] . unexpected pos 123 vs 456")

    with pytest.raises(WriteError, match="the disk is full"):
        write_atomically(tmp_path / "model.pt", torch_save_on_a_full_disk)


def test_the_temporary_file_of_a_killed_writer_is_cleaned(tmp_path):
    code = ("import os, sys\n"
            "from cvae_utils.files import write_atomically\n"
            "def write(tmp):\n"
            "    tmp.write_bytes(b'half of a checkpoint')\n"
            "    os._exit(9)  # killed before the rename\n"
            f"write_atomically({str(tmp_path / 'model.pt')!r}, write)\n")
    subprocess.run([sys.executable, "-c", code], check=False)
    left = [p.name for p in tmp_path.iterdir()]
    assert len(left) == 1 and left[0].startswith(".model.tmp-")  # hidden, half-written
    mine = tmp_path / f".other.tmp-{os.getpid()}-x.pt"  # a live writer's file stays
    mine.write_bytes(b"being written")
    check_writable(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [mine.name]
    assert clean_stale_temporaries(tmp_path) == []
