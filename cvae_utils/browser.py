"""What the book's pages need from npm, and the files of the interactive chapter
(chapter "Completing digits in the browser").

The npm packages pinned in the repository's ``package.json`` (installed by ``npm ci`` into
``node_modules/`` beside this package, or where ``CVAE_NODE_MODULES`` points) are
onnxruntime-web, which runs the exported networks in the reader's browser, and MathJax, served
from the build so that the maths renders with no network. Only the files a page loads are
copied into the HTML: `RUNTIME_FILES` of onnxruntime-web (its single-file WebAssembly bundle,
run single-threaded) and the parts of MathJax that `MATHJAX_PARTS` names. `find_node_modules`
says what is missing, so a build without Node still works and the chapter can say why its page
is inert. `export_interactive` writes the models, a few test digits and the index that the
page's script, `PAGE_SCRIPT` (``cvae_utils/web/interactive.js``), reads.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .files import write_atomically

__all__ = ["PAGE_SCRIPT", "RUNTIME_FILES", "MATHJAX_ENTRY", "MATHJAX_PARTS", "NodeModules",
           "find_node_modules", "copy_runtime", "copy_mathjax", "served_name",
           "export_interactive", "DEMO_DIGITS"]

# onnxruntime-web's ES-module bundle (the JavaScript glue included) and its WebAssembly binary;
# the WebGPU/WebGL/JSPI/asyncify variants are not needed for four small MLPs
RUNTIME_FILES = ("ort.wasm.bundle.min.mjs", "ort-wasm-simd-threaded.wasm")
MATHJAX_ENTRY = "tex-mml-chtml.js"  # the component Sphinx loads from a CDN by default
# what that component loads lazily: TeX extensions, the CHTML fonts, the context menu
MATHJAX_PARTS = (MATHJAX_ENTRY, "input/tex/extensions", "output/chtml", "ui", "a11y", "adaptors")
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
    if root is None:
        root = (os.environ.get("CVAE_NODE_MODULES")
                or Path(__file__).resolve().parents[1] / "node_modules")
    root = Path(root)
    ort = root / "onnxruntime-web" / "dist"
    mathjax = root / "mathjax" / "es5"
    have_ort = all((ort / name).is_file() for name in RUNTIME_FILES)
    have_mathjax = (mathjax / MATHJAX_ENTRY).is_file()
    missing = [name for name, ok in (("onnxruntime-web", have_ort), ("mathjax", have_mathjax))
               if not ok]
    sentence = (f"{' and '.join(missing)} not found in {root}: run `npm ci` in the repository "
                f"(Node.js 18 or newer) and build again" if missing else "")
    return NodeModules(root, ort if have_ort else None, mathjax if have_mathjax else None, sentence)


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


def export_interactive(cvaes: dict, test_images, directory: str | os.PathLike, *,
                       float16: bool = True) -> dict:
    """Everything the interactive page fetches, written into ``directory``.

    ``cvaes``: {k: CVAE} for the layouts of the page; each goes to ``k<k>/`` with
    `cvae_utils.export.export_cvae`. ``test_images``: (n, 28, 28) or (n, 784) in [0, 1]; the
    first `DEMO_DIGITS` are shipped in ``digits.json`` (rounded to 1/255, as MNIST stores them).
    Writes ``index.json`` (the layouts and their manifests) and returns it as a dict.
    """
    from .export import export_cvae

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
