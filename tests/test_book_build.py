"""What ``jupyter-book build`` prints, and which budget its pages show: builds in subprocesses.

Each build is of a copy of the book with a few of its chapters (the real ``_config.yml``, so the
real extension ``book/_ext/book_build.py``), at the smoke budget, with a fresh model cache, so that
the chapters train. One build of the chapter "The CVAE in Pyro" is shared by the tests of the
terminal; four small builds into one output folder test that switching budgets re-executes.

Like the chapters themselves, they run under the README's test command, ``pytest --nbval tests
book`` (which CI runs), and are skipped by a plain ``pytest tests/``, which stays quick.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BOOK = REPO / "book"
ANSI = re.compile(r"\x1b\[[0-9;]*m")

BUDGETS_CHAPTER = """---
jupytext:
  text_representation:
    extension: .md
    format_name: myst
kernelspec:
  display_name: Python 3
  language: python
  name: python3
---

# Budgets of this build

```{code-cell} ipython3
from cvae_utils import get_budget, variants_budget

print(f"built at {get_budget().name}, variants at {variants_budget().name}")
```
"""


@pytest.fixture(scope="module", autouse=True)
def _only_with_the_book_tests(request):  # autouse: before the module's build below
    option = request.config.option
    if not (getattr(option, "nbval", False) or getattr(option, "nbval_lax", False)):
        pytest.skip("builds of the book run with the book's tests: pytest --nbval tests book")


def book_copy(root: Path, chapters: list[str], extra: dict[str, str] | None = None) -> Path:
    """``root/book``: the book's configuration, its introduction and ``chapters`` (file names
    without ``.md``), with ``root/cvae_utils`` linked so that the chapters' includes resolve."""
    book = root / "book"
    book.mkdir(parents=True)
    for name in ["_config.yml", "references.bib", "intro.md"] + [f"{c}.md" for c in chapters]:
        shutil.copy(BOOK / name, book / name)
    for folder in ("_ext", "_static"):  # the local extension _config.yml names, the favicon
        if (BOOK / folder).is_dir():
            shutil.copytree(BOOK / folder, book / folder,
                            ignore=shutil.ignore_patterns("generated", "__pycache__"))
    for name, text in (extra or {}).items():
        (book / f"{name}.md").write_text(text, encoding="utf-8")
        chapters = chapters + [name]
    toc = "format: jb-book\nroot: intro\nchapters:\n" + "".join(f"  - file: {c}\n"
                                                               for c in chapters)
    (book / "_toc.yml").write_text(toc, encoding="utf-8")
    (root / "cvae_utils").symlink_to(REPO / "cvae_utils", target_is_directory=True)
    return book


def build(book: Path, output: Path, cache: Path, data: Path, **env) -> tuple[int, str]:
    """Run ``jupyter-book build`` on ``book`` into ``output``; its exit code and its terminal."""
    environ = {k: v for k, v in os.environ.items()
               if k not in ("CVAE_PROGRESS_FILE", "CVAE_VARIANTS_BUDGET", "JUPYTER_PATH")}
    environ.update({"CVAE_BUDGET": "smoke", "CVAE_CACHE_DIR": str(cache),
                    "CVAE_DATA_DIR": str(data), "MPLBACKEND": "Agg", "PYTHONUNBUFFERED": "1",
                    **env})
    command = [sys.executable, "-c", "from jupyter_book.cli.main import main; main()", "build",
               str(book), "--path-output", str(output)]
    result = subprocess.run(command, env=environ, capture_output=True, text=True, timeout=1200)
    return result.returncode, ANSI.sub("", result.stdout + result.stderr)


def page_text(output: Path, name: str) -> str:
    html = (output / "_build" / "html" / f"{name}.html").read_text(encoding="utf-8")
    return re.sub(r"<[^>]+>", " ", html)


@pytest.fixture(scope="module")
def smoke_build(tmp_path_factory, mnist_root):
    """One smoke build of the introduction and "The CVAE in Pyro", every model trained."""
    root = tmp_path_factory.mktemp("book-cvae-pyro")
    book = book_copy(root, ["cvae_pyro"])
    code, terminal = build(book, root / "out", root / "models", mnist_root)
    assert code == 0, terminal[-4000:]
    return root / "out", terminal


def test_the_plan_comes_before_the_first_chapter_runs(smoke_build):
    _, terminal = smoke_build
    plan = terminal.index("[cvae] plan of this build")
    assert plan < terminal.index("cvae_pyro.md: Executing notebook")
    text = terminal[plan:terminal.index("cvae_pyro.md: Executing notebook")]
    assert "budget smoke: 512 training, 256 validation, 256 test images" in text
    assert re.search(r"precision: (bfloat16|float32) ", text)
    assert "models of the book: 0 of 25 in the model cache" in text
    assert re.search(r"to train \(smoke\): 3 cvae k=1,2,3, 1 epoch x [\d.]+ s each", text)
    assert "chapters to execute: 1 (cvae_pyro)" in text
    assert re.search(r"estimated time on this machine: \d+:\d\d", text)


def test_every_epoch_is_a_line_in_the_terminal_while_the_chapter_runs(smoke_build):
    _, terminal = smoke_build
    start = terminal.index("cvae_pyro.md: Executing notebook")
    end = terminal.index("cvae_pyro.md: Executed notebook")
    running = terminal[start:end]
    for model in ("baseline", "cvae"):
        for k in (1, 2, 3):
            assert re.search(rf"\[cvae\]   cvae_pyro: {model} k={k}: epoch 1/1, validation loss "
                             rf"[\d.]+ \(best epoch 1\), \d+:\d\d elapsed, at most 0:00 left",
                             running), (model, k)


def test_the_pages_stay_free_of_progress(smoke_build):
    output, _ = smoke_build
    page = page_text(output, "cvae_pyro")
    executed = (output / "_build" / "jupyter_execute" / "cvae_pyro.ipynb").read_text()
    for text in (page, executed):
        assert "epoch 1/1" not in text and "at most 0:00 left" not in text
        assert "[cvae]" not in text


def test_no_kernel_noise_in_the_terminal(smoke_build):
    _, terminal = smoke_build
    assert "without encryption" not in terminal
    assert "[IPKernelApp] WARNING" not in terminal
    assert "Warning:" not in terminal  # no library warnings (TqdmWarning, UserWarning, ...)


def test_the_summary_times_chapters_and_says_how_to_read_the_html(smoke_build):
    output, terminal = smoke_build
    summary = terminal[terminal.index("[cvae] summary: budget smoke, variants smoke"):]
    assert re.search(r"cvae_pyro\s+\d+:\d\d\s+executed", summary)
    assert re.search(r"intro\s+0:0\d\s+no code to execute", summary)
    assert re.search(r"this build took \d+:\d\d \(estimated before it: \d+:\d\d\)", summary)
    html = (output / "_build" / "html").resolve()
    assert f"HTML: {html / 'index.html'}" in summary
    assert f"python -m http.server 8000 --directory {html}" in summary
    assert not list((output / "_build").glob("cvae-progress-*.log"))  # the channel is removed


def test_switching_budgets_re_executes_and_switching_back_reuses(tmp_path, mnist_root):
    book = book_copy(tmp_path, ["data"], extra={"budgets": BUDGETS_CHAPTER})
    out, models = tmp_path / "out", tmp_path / "models"

    def run(**env):
        code, terminal = build(book, out, models, mnist_root, **env)
        assert code == 0, terminal[-4000:]
        executed = set(re.findall(r"/(\w+)\.md: Executing notebook", terminal))
        return executed, page_text(out, "data"), page_text(out, "budgets"), terminal

    executed, data, budgets, _ = run()
    assert executed == {"data", "budgets"}
    assert "this build: budget smoke" in data and "built at smoke, variants at smoke" in budgets

    executed, data, budgets, terminal = run(CVAE_BUDGET="quick")
    assert executed == {"data", "budgets"}  # without a cache per budget: nothing, 1 s
    assert "this build: budget quick" in data and "10,000" in data
    assert "built at quick, variants at quick" in budgets
    assert ".jupyter_cache/budget-quick-variants-quick" in terminal

    executed, data, budgets, terminal = run()  # back to smoke: its cache is still there
    assert executed == set()
    assert "this build: budget smoke" in data and "built at smoke, variants at smoke" in budgets
    assert re.search(r"data\s+\d+:\d\d\s+from the execution cache", terminal)

    executed, _, budgets, _ = run(CVAE_VARIANTS_BUDGET="quick")
    assert "budgets" in executed
    assert "built at smoke, variants at quick" in budgets


def test_an_unknown_budget_stops_the_build_before_any_chapter(tmp_path, mnist_root):
    book = book_copy(tmp_path, [], extra={"budgets": BUDGETS_CHAPTER})
    code, terminal = build(book, tmp_path / "out", tmp_path / "models", mnist_root,
                           CVAE_BUDGET="huge")
    assert code != 0
    assert "unknown budget 'huge'" in terminal and "CVAE_BUDGET=smoke" in terminal
    assert "Executing notebook" not in terminal


WRONG_SOLUTION_CHAPTER = BUDGETS_CHAPTER.replace("# Budgets of this build", "# A wrong solution") + '''
```{code-cell} ipython3
:tags: [remove-cell]

assert 0.5 - 0.5 == 1.0, "the solution's claim does not hold"
```
'''


def test_a_failing_cell_fails_the_build_after_every_chapter_ran(tmp_path, mnist_root):
    """A solution whose hidden check fails is a failed build (exit status 1), yet the other
    chapters still run and the pages are written, so the failure's report can be read."""
    book = book_copy(tmp_path, [], extra={"wrong": WRONG_SOLUTION_CHAPTER,
                                          "budgets": BUDGETS_CHAPTER})
    code, terminal = build(book, tmp_path / "out", tmp_path / "models", mnist_root)
    assert code == 1, terminal[-3000:]
    assert "the solution's claim does not hold" in terminal
    assert "FAILED: wrong: a cell raised; the build exits with status 1" in terminal
    assert re.search(r"budgets +\S+ +executed", terminal)   # the next chapter still ran
    assert (tmp_path / "out" / "_build" / "html" / "budgets.html").is_file()
