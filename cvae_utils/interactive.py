"""The files of the interactive chapter (chapter "Completing digits in the browser").

`export_interactive` writes the models, a few test digits and the index that the page's script,
`PAGE_SCRIPT` (``cvae_utils/web/interactive.js``), reads. The page runs the models with
onnxruntime-web, an npm package pinned in the repository's ``package.json`` and installed by
``npm ci`` into ``node_modules/`` (or where ``CVAE_NODE_MODULES`` points) with MathJax, which
serves the book's maths with no network. `find_node_modules` says where they are and what is
missing, so that the chapter can say why its page is inert in a build without Node; copying them
into the HTML is the build's work (``book/_ext/book_browser.py``).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import settings
from .export import export_cvae
from .files import write_atomically

__all__ = ["PAGE_SCRIPT", "RUNTIME_FILES", "MATHJAX_ENTRY", "NodeModules", "find_node_modules",
           "export_interactive", "DEMO_DIGITS"]

# onnxruntime-web's ES-module bundle (the JavaScript glue included) and its WebAssembly binary;
# the WebGPU/WebGL/JSPI/asyncify variants are not needed for four small MLPs
RUNTIME_FILES = ("ort.wasm.bundle.min.mjs", "ort-wasm-simd-threaded.wasm")
MATHJAX_ENTRY = "tex-mml-chtml.js"  # the component Sphinx loads from a CDN by default
DEMO_DIGITS = 6  # test digits shipped with the page
PAGE_SCRIPT = Path(__file__).resolve().parent / "web" / "interactive.js"


@dataclass
class NodeModules:
    """Where the npm packages are, and a sentence on what is missing (empty if nothing)."""

    root: Path
    onnxruntime: Path | None
    mathjax: Path | None
    missing: str

    def runtime_bytes(self) -> int:
        """Bytes of the onnxruntime-web files a page downloads (0 when missing)."""
        if self.onnxruntime is None:
            return 0
        return sum((self.onnxruntime / name).stat().st_size for name in RUNTIME_FILES)


def find_node_modules(root: str | os.PathLike | None = None) -> NodeModules:
    """Look for onnxruntime-web and MathJax in ``root`` (default: ``CVAE_NODE_MODULES``, else
    ``node_modules/`` of the repository holding this package)."""
    root = settings.node_modules_dir() if root is None else Path(root)
    ort = root / "onnxruntime-web" / "dist"
    mathjax = root / "mathjax" / "es5"
    have_ort = all((ort / name).is_file() for name in RUNTIME_FILES)
    have_mathjax = (mathjax / MATHJAX_ENTRY).is_file()
    missing = [name for name, ok in (("onnxruntime-web", have_ort), ("mathjax", have_mathjax))
               if not ok]
    sentence = (f"{' and '.join(missing)} not found in {root}: run `npm ci` in the repository "
                f"(Node.js 18 or newer) and build again" if missing else "")
    return NodeModules(root, ort if have_ort else None, mathjax if have_mathjax else None, sentence)


def export_interactive(cvaes: dict, test_images, directory: str | os.PathLike, *,
                       float16: bool = True) -> dict:
    """Everything the interactive page fetches, written into ``directory``.

    ``cvaes``: {k: CVAE} for the layouts of the page; each goes to ``k<k>/`` with
    `cvae_utils.export.export_cvae`. ``test_images``: (n, 28, 28) or (n, 784) in [0, 1]; the
    first `DEMO_DIGITS` are shipped in ``digits.json`` (rounded to 1/255, as MNIST stores them).
    Writes ``index.json`` (the layouts and their manifests) and returns it as a dict.
    """
    directory = Path(directory)
    settings = {}
    for k, cvae in sorted(cvaes.items()):
        manifest = export_cvae(cvae, directory / f"k{k}", num_quadrants=k, float16=float16)
        settings[str(k)] = {"path": f"k{k}", **manifest}
    images = np.asarray(test_images, dtype=np.float32).reshape(-1, 784)[:DEMO_DIGITS]
    digits = {"images": (np.round(images * 255) / 255).round(4).tolist()}
    write_atomically(directory / "digits.json",
                     lambda tmp: tmp.write_text(json.dumps(digits), encoding="utf-8"))
    index = {"settings": settings, "digits": "digits.json"}
    write_atomically(directory / "index.json",
                     lambda tmp: tmp.write_text(json.dumps(index, indent=1), encoding="utf-8"))
    return index
