"""What the build copies from node_modules (book/_ext/book_browser.py), what it says without it,
and the files of the interactive page (cvae_utils.interactive)."""
from __future__ import annotations

import json

import pytest
import torch

from cvae_utils.variant_models import build_cvae
from book_browser import copy_mathjax, copy_runtime, served_name
from cvae_utils.interactive import DEMO_DIGITS, MATHJAX_ENTRY, RUNTIME_FILES, find_node_modules


def _fake_node_modules(root):
    dist = root / "onnxruntime-web" / "dist"
    dist.mkdir(parents=True)
    for name in RUNTIME_FILES + ("ort.all.min.js", "ort-wasm-simd-threaded.jsep.wasm"):
        (dist / name).write_bytes(b"x" * 10)
    es5 = root / "mathjax" / "es5"
    for path in (MATHJAX_ENTRY, "input/tex/extensions/ams.js", "output/chtml/fonts/woff-v2/a.woff",
                 "sre/speech.js", "tex-svg-full.js"):
        (es5 / path).parent.mkdir(parents=True, exist_ok=True)
        (es5 / path).write_text("//")
    return root


def test_missing_node_modules_are_named_with_the_fix(tmp_path):
    modules = find_node_modules(tmp_path / "nothing")
    assert modules.onnxruntime is None and modules.mathjax is None
    assert "onnxruntime-web and mathjax" in modules.missing and "npm ci" in modules.missing
    assert modules.runtime_bytes() == 0
    with pytest.raises(FileNotFoundError, match="npm ci"):
        copy_runtime(modules, tmp_path / "out")


def test_only_the_needed_files_are_copied(tmp_path):
    modules = find_node_modules(_fake_node_modules(tmp_path / "node_modules"))
    assert modules.missing == "" and modules.runtime_bytes() == 10 * len(RUNTIME_FILES)
    copied = copy_runtime(modules, tmp_path / "ort")
    assert sorted(p.name for p in (tmp_path / "ort").iterdir()) == sorted(p.name for p in copied)
    assert {p.name for p in copied} == {"ort.wasm.bundle.min.js", "ort-wasm-simd-threaded.wasm"}
    assert served_name("a.mjs") == "a.js" and served_name("b.wasm") == "b.wasm"
    assert copy_mathjax(modules, tmp_path / "mathjax") == 3
    assert (tmp_path / "mathjax" / MATHJAX_ENTRY).is_file()
    assert not (tmp_path / "mathjax" / "sre").exists()
    assert not (tmp_path / "mathjax" / "tex-svg-full.js").exists()


def test_export_interactive_writes_what_the_page_reads(tmp_path):
    pytest.importorskip("onnxruntime")
    from cvae_utils import book_config, input_mask
    from cvae_utils.interactive import export_interactive
    from cvae_utils.networks import CVAE, BaselineNet

    config = book_config()
    torch.manual_seed(0)
    index = export_interactive({2: build_cvae(BaselineNet(config.baseline), config)}, torch.rand(10, 28, 28),
                               tmp_path)
    assert json.loads((tmp_path / "index.json").read_text()) == index
    setting = index["settings"]["2"]
    assert setting["path"] == "k2" and setting["z_dim"] == config.z_dim
    assert setting["input_mask"] == input_mask(2).reshape(-1).int().tolist()
    for entry in setting["files"].values():
        assert (tmp_path / "k2" / entry["path"]).stat().st_size == entry["bytes"]
    digits = json.loads((tmp_path / "digits.json").read_text())["images"]
    assert len(digits) == DEMO_DIGITS and all(len(d) == 784 for d in digits)
    assert all(0 <= v <= 1 for d in digits for v in d)
