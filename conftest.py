"""Pytest plugin that runs the book's MyST markdown chapters with nbval: ``pytest --nbval book/``.

nbval collects only ``.ipynb`` files, and the chapters are MyST markdown notebooks stored without
outputs. This plugin reads every ``.md`` file whose front matter declares a jupytext MyST notebook
with a kernelspec (so plain pages such as the introduction are skipped), converts it with
jupytext, and hands it to nbval's own collector: one kernel per chapter, one test item per code
cell, cells run in order. A cell fails when it raises. Since there are no stored outputs, nothing
is compared (as with ``--nbval-lax``). The copies of executed notebooks that Jupyter Book writes
under ``_build/`` are not collected.

Every pytest run, with or without ``--nbval``, defaults ``CVAE_BUDGET`` to ``smoke`` (kernels and
subprocesses inherit the environment), so that no test trains at the ``paper`` budget unless
asked; tests of the default budget unset the variable themselves. With ``--nbval`` the kernel is
the Python running pytest, unless ``--nbval-kernel-name`` names another. Without
``--nbval``/``--nbval-lax`` the plugin collects nothing.
"""
from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path

import pytest

try:
    from nbval.plugin import IPyNbCell, IPyNbFile, find_comment_markers, find_metadata_tags
except ImportError:  # nbval is a book dependency; the unit tests do not need it
    IPyNbFile = None


def _nbval_active(config) -> bool:
    return bool(getattr(config.option, "nbval", False) or getattr(config.option, "nbval_lax", False))


def pytest_configure(config):
    os.environ.setdefault("CVAE_BUDGET", "smoke")
    if not _nbval_active(config):
        return
    if not config.option.nbval_kernel_name:
        config.option.nbval_current_env = True  # the kernel runs the Python that runs pytest


def pytest_ignore_collect(collection_path: Path, config):
    """Skip Jupyter Book's build folder (it holds executed .ipynb copies of the chapters)."""
    if _nbval_active(config) and ("_build" in collection_path.parts
                                  or ".ipynb_checkpoints" in collection_path.parts):
        return True
    return None


def is_myst_notebook(path: Path) -> bool:
    """Whether ``path`` is a MyST markdown notebook: a jupytext ``myst`` header and a kernelspec."""
    with open(path, encoding="utf-8") as handle:
        head = handle.read(4096)
    if not head.startswith("---"):
        return False
    import jupytext

    metadata = jupytext.read(path, fmt="md:myst").metadata
    text_format = metadata.get("jupytext", {}).get("text_representation", {})
    return text_format.get("format_name") == "myst" and "kernelspec" in metadata


if IPyNbFile is not None:

    class MystNotebookFile(IPyNbFile):
        """nbval's notebook collector, reading a MyST markdown file through jupytext."""

        def collect(self):
            import jupytext

            self.nb = jupytext.read(self.path, fmt="md:myst")
            cell_num = 0
            for cell in self.nb.cells:
                if cell.cell_type != "code":
                    continue
                options = defaultdict(bool, find_metadata_tags(cell.metadata))
                options.update(dict(find_comment_markers(cell.source)))
                options.setdefault("check", False)  # no stored outputs: run, do not compare
                yield IPyNbCell.from_parent(self, name=f"Cell {cell_num}", cell_num=cell_num,
                                            cell=cell, options=options)
                cell_num += 1


def pytest_collect_file(file_path: Path, parent):
    if (IPyNbFile is None or file_path.suffix != ".md" or not _nbval_active(parent.config)
            or not is_myst_notebook(file_path)):
        return None
    return MystNotebookFile.from_parent(parent, path=file_path)
