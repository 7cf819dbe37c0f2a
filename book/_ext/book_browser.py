"""Sphinx extension of the book: what its pages need in a browser, served from the build.

- MathJax from the pinned npm package (``npm ci``), copied into ``_static/mathjax`` (only the
  `MATHJAX_PARTS` a page loads, `copy_mathjax`) and set as ``mathjax_path``, so the maths renders without a network. Without ``node_modules`` the build
  keeps Sphinx's default CDN and says so in its log.
- onnxruntime-web's files for the interactive chapter, copied into ``_static/ort`` (only those
  in `cvae_utils.interactive.RUNTIME_FILES`, `copy_runtime`), and the page's own script,
  `cvae_utils.interactive.PAGE_SCRIPT`, into ``_static/interactive/``. It is kept out of
  ``book/_static`` because Jupyter Book adds every ``.js`` file found there to every page, and
  the script belongs to one page only.
- A downloadable ``.ipynb`` for every chapter: the notebook that MyST-NB executed is copied to
  ``_sources/`` and offered by the theme's download button (the theme does this only when
  launch buttons are configured, and the book has none: Colab cannot open MyST sources).
- sphinx-thebe's inline configuration (``const THEBE_JS_URL = ...``) written once per page:
  it reached every page twice (see `dedupe_inline_scripts`), and the second ``const``
  declaration is a SyntaxError in the browser.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from sphinx.util import logging

from cvae_utils.files import write_atomically
from cvae_utils.interactive import (MATHJAX_ENTRY, PAGE_SCRIPT, RUNTIME_FILES, NodeModules,
                                    find_node_modules)

logger = logging.getLogger(__name__)

# what MathJax's entry component loads lazily: TeX extensions, the CHTML fonts, the context menu
MATHJAX_PARTS = (MATHJAX_ENTRY, "input/tex/extensions", "output/chtml", "ui", "a11y", "adaptors")


def served_name(name: str) -> str:
    """The name a runtime file has in the build: ``.mjs`` becomes ``.js``, a suffix that every
    static host serves as JavaScript (module scripts are refused under other MIME types)."""
    return name[:-4] + ".js" if name.endswith(".mjs") else name


def _copy_file(source: Path, target: Path) -> None:
    if target.exists() and target.stat().st_size == source.stat().st_size \
            and target.stat().st_mtime >= source.stat().st_mtime:
        return
    write_atomically(target, lambda tmp: shutil.copyfile(source, tmp))


def copy_runtime(modules: NodeModules, target: str | os.PathLike) -> list[Path]:
    """Copy onnxruntime-web's `RUNTIME_FILES` into ``target``; returns the copied paths."""
    if modules.onnxruntime is None:
        raise FileNotFoundError(modules.missing)
    target = Path(target)
    for name in RUNTIME_FILES:
        _copy_file(modules.onnxruntime / name, target / served_name(name))
    return [target / served_name(name) for name in RUNTIME_FILES]


def copy_mathjax(modules: NodeModules, target: str | os.PathLike) -> int:
    """Copy the `MATHJAX_PARTS` of MathJax's ``es5`` folder into ``target``; returns the count."""
    if modules.mathjax is None:
        raise FileNotFoundError(modules.missing)
    target, count = Path(target), 0
    for part in MATHJAX_PARTS:
        source = modules.mathjax / part
        files = ([source] if source.is_file()
                 else sorted(p for p in source.rglob("*") if p.is_file()))
        for path in files:
            _copy_file(path, target / path.relative_to(modules.mathjax))
            count += 1
    return count


def use_local_mathjax(app, config) -> None:
    modules = find_node_modules()
    if modules.mathjax is not None:
        config.mathjax_path = f"mathjax/{MATHJAX_ENTRY}"  # relative to _static
    else:
        logger.info(f"[book_browser] MathJax from a CDN: {modules.missing}")


def dedupe_inline_scripts(app, pagename, templatename, context, doctree) -> None:
    """Keep one copy of each inline script (same body, no file) among a page's scripts.

    Sphinx registers an extension's inline script under the file name None at
    ``env-before-read-docs`` and again under "" when it re-reads the registry, and its own
    de-duplication compares the two as different scripts.
    """
    files = context.get("script_files")
    if not isinstance(files, list):
        return
    seen, kept = set(), []
    for script in files:
        body = script.attributes.get("body") if not script.filename else None
        if body is not None:
            if body in seen:
                continue
            seen.add(body)
        kept.append(script)
    files[:] = kept


def offer_notebook(app, pagename, templatename, context, doctree) -> None:
    """Copy the executed notebook of a MyST chapter to _sources/ for the download button."""
    if app.builder.format != "html" or not str(context.get("sourcename", "")).endswith(".md"):
        return
    executed = Path(app.outdir).parent / "jupyter_execute" / f"{pagename}.ipynb"
    if not executed.is_file():
        return
    target = Path(app.outdir) / "_sources" / f"{pagename}.ipynb"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(executed, target)
    context["ipynb_source"] = f"{pagename}.ipynb"


def copy_browser_files(app, exception) -> None:
    if exception is not None or app.builder.format != "html":
        return
    modules = find_node_modules()
    static = Path(app.outdir) / "_static"
    target = static / "interactive" / PAGE_SCRIPT.name
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(PAGE_SCRIPT, target)
    if modules.onnxruntime is not None:
        copy_runtime(modules, static / "ort")
    else:
        logger.info(f"[book_browser] the interactive chapter has no runtime: {modules.missing}")
    if modules.mathjax is not None:
        copy_mathjax(modules, static / "mathjax")


def setup(app):
    app.connect("config-inited", use_local_mathjax)
    app.connect("html-page-context", dedupe_inline_scripts, priority=900)
    app.connect("html-page-context", offer_notebook, priority=400)
    app.connect("build-finished", copy_browser_files)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
