"""The chapters as notebooks a cloud service opens, and the "Open in Colab" button of each page.

Colab opens ``.ipynb`` files from GitHub, not MyST markdown. This module writes every chapter of
``_toc.yml`` that is a MyST notebook as ``<chapter>.ipynb`` (jupytext), with the chapter's cells
unchanged behind one first code cell, the set-up cell: where ``cvae_utils`` cannot be imported
it installs the package at the published commit, keeps the torch (and torchvision) already
installed by pinning their installed versions, and sets ``CVAE_BUDGET`` to ``quick`` unless it is
set (in Colab also after a restart, when the package is already installed); elsewhere, where
the package imports, it does nothing. Its comments say how to turn on a GPU in Colab
and how to ask for the ``paper`` budget.

Two uses:

- A script, run by ``.github/workflows/book.yml`` before the build, that writes the notebooks
  the workflow commits to the ``notebooks`` branch::

      python book/_ext/book_colab.py --out DIR --repository OWNER/NAME --commit SHA

  (``--install-from PATH`` installs from a local checkout instead: the tests do that.)
- A Sphinx extension (``book/_config.yml``, ``sphinx.local_extensions``): when the build's
  environment names the repository (``CVAE_BOOK_REPOSITORY=OWNER/NAME``) and the git ref that
  holds the notebooks (``CVAE_BOOK_NOTEBOOKS_REF``, the commit the workflow pushed to the
  ``notebooks`` branch; default ``notebooks``), each chapter page gets an "Open in Colab" button
  in the theme's launch menu, to
  ``https://colab.research.google.com/github/OWNER/NAME/blob/REF/notebooks/<chapter>.ipynb``.
  A local build, where no repository is named, shows none. The theme's own launch buttons
  cannot do this: they point at the chapter's source file, a ``.md`` that Colab cannot open.
  There is no Binder button: Binder would build an image from ``requirements.txt``, whose
  torch is the CUDA build of several GB, for sessions of 1 to 2 GB of memory; it is left out
  rather than offered untested.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

BOOK = Path(__file__).resolve().parents[1]
REPOSITORY_ENV = "CVAE_BOOK_REPOSITORY"
NOTEBOOKS_REF_ENV = "CVAE_BOOK_NOTEBOOKS_REF"
NOTEBOOKS_FOLDER = "notebooks"  # in the notebooks branch
DEFAULT_REF = "notebooks"
COLAB = "https://colab.research.google.com/github"
CLOUD_BUDGET = "quick"
# installed with the package in the cloud, pinned as in requirements.txt where pinned there:
# myst_nb (glue) is imported by the chapters, ONNX by the interactive chapter
EXTRAS = ("pyro-ppl", "myst-nb", "onnx", "onnxscript", "onnxruntime")
_REPOSITORY = re.compile(r"[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+")
_REF = re.compile(r"[A-Za-z0-9_./-]+")

SETUP_CELL = '''\
# Set-up for a cloud notebook such as Colab. Where cvae_utils imports, it does nothing
# (but in Colab, which keeps the budget below after a restart).
# It installs the book's package ({what}), keeping
# the torch and torchvision already installed, and sets the run length CVAE_BUDGET to
# "{budget}" (minutes). For the paper's full protocol, which trains far longer, run
#     import os; os.environ["CVAE_BUDGET"] = "paper"
# before this cell (smoke, quick and paper are the three budgets).
# A GPU: in Colab, Runtime > Change runtime type > a GPU (T4), before running;
# the package trains on it when present. MNIST is downloaded and checksummed.
import importlib, importlib.metadata, importlib.util, os, subprocess, sys

missing = importlib.util.find_spec("cvae_utils") is None
if missing or "google.colab" in sys.modules:  # (in Colab, after a restart too)
    os.environ.setdefault("CVAE_BUDGET", "{budget}")  # smoke | quick | paper
if missing:
    keep = []  # pins torch and torchvision at the versions installed here
    for name in ("torch", "torchvision"):
        try:
            keep.append(f"{{name}}=={{importlib.metadata.version(name)}}")
        except importlib.metadata.PackageNotFoundError:
            pass
    packages = [
{install}
    ]
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet",
                    *packages, *keep], check=True)
    importlib.invalidate_caches()
    print("cvae_utils installed; CVAE_BUDGET =", os.environ["CVAE_BUDGET"])
'''


# ---------------------------------------------------------------------------- the notebooks
def chapters(book: Path = BOOK) -> list[Path]:
    """The MyST notebook chapters of ``_toc.yml``, in its order (pages without code excluded)."""
    import jupytext
    import yaml

    toc = yaml.safe_load((book / "_toc.yml").read_text(encoding="utf-8"))
    names = [toc["root"]]
    for part in toc.get("parts", [{"chapters": toc.get("chapters", [])}]):
        names += [entry["file"] for entry in part.get("chapters", []) if "file" in entry]
    found = []
    for name in names:
        path = book / f"{name}.md"
        if path.is_file() and "kernelspec" in jupytext.read(path, fmt="md:myst").metadata:
            found.append(path)
    return found


def pip_requirements(repository: str, commit: str, requirements: Path) -> list[str]:
    """What the set-up cell gives pip: the package at ``commit`` and its extras, pinned as in
    ``requirements.txt`` where they are pinned there."""
    pinned = {}
    for line in requirements.read_text(encoding="utf-8").splitlines():
        line = line.split("#")[0].strip()
        match = re.match(r"([A-Za-z0-9_.-]+)\s*==", line)
        if match:
            pinned[match.group(1).lower()] = line
    return [f"cvae_utils @ git+https://github.com/{repository}@{commit}",
            *(pinned.get(name, name) for name in EXTRAS)]


def setup_cell_source(install: list[str], what: str, budget: str = CLOUD_BUDGET) -> str:
    lines = "\n".join(f"        {argument!r}," for argument in install)
    return SETUP_CELL.format(install=lines, what=what, budget=budget)


def cloud_notebook(chapter: Path, install: list[str], what: str):
    """The chapter as an nbformat notebook, the set-up cell first, the chapter's cells after."""
    import jupytext
    import nbformat

    source = jupytext.read(chapter, fmt="md:myst")
    notebook = nbformat.v4.new_notebook()
    notebook.metadata = {key: value for key, value in source.metadata.items()
                         if key != "jupytext"}
    notebook.metadata["colab"] = {"name": f"{chapter.stem}.ipynb"}
    setup = nbformat.v4.new_code_cell(setup_cell_source(install, what))
    setup.metadata["tags"] = ["cloud-setup"]
    notebook.cells = [setup]
    for cell in source.cells:
        make = {"code": nbformat.v4.new_code_cell, "markdown": nbformat.v4.new_markdown_cell,
                "raw": nbformat.v4.new_raw_cell}[cell.cell_type]
        notebook.cells.append(make(cell.source, metadata=dict(cell.metadata)))
    nbformat.validate(notebook)
    return notebook


def write_notebooks(out: Path, install: list[str], what: str, book: Path = BOOK) -> list[Path]:
    """Write ``out/<chapter>.ipynb`` for every chapter (each file atomically)."""
    import nbformat

    out.mkdir(parents=True, exist_ok=True)
    written = []
    for chapter in chapters(book):
        target = out / f"{chapter.stem}.ipynb"
        partial = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        try:
            nbformat.write(cloud_notebook(chapter, install, what), partial)
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)
        written.append(target)
    return written


# ---------------------------------------------------------------------------- the buttons
def launch_settings(environ=os.environ) -> tuple[str, str] | None:
    """(repository, ref) named by the environment, or None for a local build."""
    repository = environ.get(REPOSITORY_ENV, "").strip()
    if not repository:
        return None
    ref = environ.get(NOTEBOOKS_REF_ENV, "").strip() or DEFAULT_REF
    if not _REPOSITORY.fullmatch(repository):
        raise ValueError(f"{REPOSITORY_ENV}={repository!r} is not OWNER/NAME")
    if not _REF.fullmatch(ref) or ".." in ref:
        raise ValueError(f"{NOTEBOOKS_REF_ENV}={ref!r} is not a git ref")
    return repository, ref


def colab_url(repository: str, ref: str, chapter: str) -> str:
    return f"{COLAB}/{repository}/blob/{ref}/{NOTEBOOKS_FOLDER}/{chapter}.ipynb"


def _read_settings(app, config) -> None:
    from sphinx.errors import ExtensionError

    try:
        app.colab_launch = launch_settings()
    except ValueError as error:
        raise ExtensionError(f"[book_colab] {error}") from None
    app.cloud_chapters = {path.stem for path in chapters(Path(app.srcdir))}


def add_colab_button(app, pagename, templatename, context, doctree) -> None:
    """Put "Open in Colab" in the theme's launch menu of a chapter page."""
    settings = getattr(app, "colab_launch", None)
    if (settings is None or app.builder.format != "html"
            or pagename not in app.cloud_chapters or "header_buttons" not in context):
        return
    repository, ref = settings
    context["header_buttons"].append({
        "type": "group",
        "tooltip": "Launch interactive content",
        "icon": "fas fa-rocket",
        "label": "launch-buttons",
        "buttons": [{
            "type": "link",
            "text": "Open in Colab",
            "tooltip": "Open this chapter in Colab",
            "icon": "_static/images/logo_colab.png",  # shipped with sphinx-book-theme
            "url": colab_url(repository, ref, pagename),
            "label": "colab-button",
        }],
    })


def setup(app):
    app.connect("config-inited", _read_settings)
    app.connect("html-page-context", add_colab_button, priority=502)  # after the theme's
    return {"parallel_read_safe": True, "parallel_write_safe": True}


# ---------------------------------------------------------------------------- the script
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder of the notebooks")
    parser.add_argument("--repository", help="OWNER/NAME on GitHub the package installs from")
    parser.add_argument("--commit", help="the commit the package installs at")
    parser.add_argument("--install-from", type=Path,
                        help="a local checkout to install from instead (tests), offline")
    args = parser.parse_args(argv)
    if args.install_from is not None:
        install = local_install(args.install_from)
        what = f"from {args.install_from}"
    elif args.repository and args.commit:
        if not _REPOSITORY.fullmatch(args.repository):
            parser.error(f"--repository {args.repository!r} is not OWNER/NAME")
        install = pip_requirements(args.repository, args.commit, BOOK.parent / "requirements.txt")
        what = f"github.com/{args.repository} at commit {args.commit[:12]}"
    else:
        parser.error("give --repository and --commit, or --install-from")
    for path in write_notebooks(args.out, install, what):
        print(path)
    return 0


def local_install(checkout: Path) -> list[str]:
    """pip arguments that install the package from a local folder, offline, nothing else."""
    return ["--no-deps", "--no-build-isolation", "--no-index", str(Path(checkout).resolve())]


if __name__ == "__main__":
    sys.exit(main())
