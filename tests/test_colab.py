"""The chapters as cloud notebooks (``book/_ext/book_colab.py``) and their "Open in Colab" buttons.

- The generated notebooks carry the chapters' code unchanged behind one set-up cell, which
  does nothing where ``cvae_utils`` imports.
- Every generated notebook runs top to bottom at the smoke budget in a fresh virtual
  environment of its own, where ``cvae_utils`` does not import: its set-up cell installs the
  package from a copy of this checkout (offline, ``--no-deps``). The environment sees this
  one's site-packages through a ``.pth`` line, which adds the folder without running the
  editable install's import hook, so torch and the rest are not installed again. The models
  come from ``CVAE_CACHE_DIR``, which the smoke build or the tests have filled.
- A build made as the workflow makes it (``CVAE_BOOK_REPOSITORY`` and
  ``CVAE_BOOK_NOTEBOOKS_REF`` set) has one Colab link on every chapter page, to the generated
  notebook of that chapter; a build without them has none. The build of ``CVAE_BOOK_HTML`` is
  checked when there is one (``.ci/run`` makes it with a stand-in repository); the other kind
  is built here without executing the chapters, which the links do not depend on.

The runs and the builds take minutes: they run with the book's tests (``pytest --nbval tests
book``), as ``tests/test_book_build.py`` does; the rest runs with the unit tests.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BOOK = REPO / "book"
STAND_IN = ("cvae-book/stand-in", "0123456789abcdef0123456789abcdef01234567")

_spec = importlib.util.spec_from_file_location("book_colab", BOOK / "_ext" / "book_colab.py")
book_colab = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(book_colab)


def _code(cells) -> list[str]:
    return [cell.source for cell in cells if cell.cell_type == "code"]


# ---------------------------------------------------------------------------- the notebooks
@pytest.fixture(scope="module")  # before the module-scoped build below
def with_the_book_tests(request):
    """The slow tests (every notebook run, builds of the book) run with the book's tests."""
    option = request.config.option
    if not (getattr(option, "nbval", False) or getattr(option, "nbval_lax", False)):
        pytest.skip("runs with the book's tests: pytest --nbval tests book")


def test_every_chapter_becomes_a_notebook_with_its_own_code(tmp_path):
    import jupytext
    import nbformat

    written = book_colab.main(["--out", str(tmp_path), "--repository", STAND_IN[0],
                               "--commit", STAND_IN[1]])
    assert written == 0
    chapters = book_colab.chapters()
    assert len(chapters) >= 10 and all(p.parent == BOOK for p in chapters)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{p.stem}.ipynb"
                                                                for p in chapters)
    for chapter in chapters:
        notebook = nbformat.read(tmp_path / f"{chapter.stem}.ipynb", as_version=4)
        nbformat.validate(notebook)
        source = jupytext.read(chapter, fmt="md:myst")
        setup, rest = notebook.cells[0], notebook.cells[1:]
        assert setup.cell_type == "code" and setup.metadata["tags"] == ["cloud-setup"]
        assert [(c.cell_type, c.source) for c in rest] == [(c.cell_type, c.source)
                                                           for c in source.cells]
        assert notebook.metadata["kernelspec"]["name"] == "python3"
        assert "jupytext" not in notebook.metadata
        # installs the package at the commit, from the repository, and says how to get a GPU
        assert f"cvae_utils @ git+https://github.com/{STAND_IN[0]}@{STAND_IN[1]}" in setup.source
        assert "Change runtime type" in setup.source and '"paper"' in setup.source
        assert "pyro-ppl==" in setup.source  # pinned as in requirements.txt


def test_the_setup_cell_does_nothing_where_the_package_is_installed(tmp_path):
    """Here cvae_utils imports: the cell must not call pip (the address it would install
    from does not exist) nor set the budget."""
    cell = book_colab.setup_cell_source(book_colab.local_install(tmp_path / "nowhere"), "test")
    env = {k: v for k, v in os.environ.items() if k != "CVAE_BUDGET"}
    env["PYTHONPATH"] = str(REPO)
    script = cell + "\nprint('budget', os.environ.get('CVAE_BUDGET'))\n"
    done = subprocess.run([sys.executable, "-c", script], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "budget None\n"


def _run_setup_cell(monkeypatch, missing: bool, colab: bool) -> list[list[str]]:
    """Run the set-up cell here with cvae_utils missing or not, in Colab or not, and pip
    replaced by a recorder; what it would have run."""
    cell = book_colab.setup_cell_source(["example"], "test")
    check = 'importlib.util.find_spec("cvae_utils") is None'
    assert check in cell
    ran: list[list[str]] = []

    class Done:
        returncode = 0

    recorder = type(sys)("subprocess")
    recorder.run = lambda args, check: ran.append(args) or Done()
    monkeypatch.setitem(sys.modules, "subprocess", recorder)
    if colab:
        monkeypatch.setitem(sys.modules, "google.colab", type(sys)("google.colab"))
    else:
        monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    monkeypatch.delenv("CVAE_BUDGET", raising=False)
    code = cell.replace(check, str(missing))
    exec(compile(code, "<set-up cell>", "exec"), {"__name__": "__main__"})
    return ran


def test_the_setup_cell_keeps_the_installed_torch(monkeypatch):
    """Where the package is missing: pip gets the package and its extras, and torch and
    torchvision pinned at the installed versions, so that it keeps them (Colab's CUDA build);
    the budget is quick."""
    from importlib.metadata import version

    ran = _run_setup_cell(monkeypatch, missing=True, colab=False)
    assert len(ran) == 1 and ran[0][:4] == [sys.executable, "-m", "pip", "install"]
    assert "example" in ran[0]
    keep = [a for a in ran[0] if a.startswith(("torch==", "torchvision=="))]
    assert keep == [f"torch=={version('torch')}", f"torchvision=={version('torchvision')}"]
    assert os.environ["CVAE_BUDGET"] == "quick"


def test_in_colab_after_a_restart_the_budget_stays_quick(monkeypatch):
    assert _run_setup_cell(monkeypatch, missing=False, colab=True) == []
    assert os.environ["CVAE_BUDGET"] == "quick"
    monkeypatch.setenv("CVAE_BUDGET", "paper")  # a reader's choice is kept
    exec(compile(book_colab.setup_cell_source(["example"], "test"), "<cell>", "exec"), {})
    assert os.environ["CVAE_BUDGET"] == "paper"


RUNNER = r"""
import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

notebook_path, folder = Path(sys.argv[1]), Path(sys.argv[2])
notebook = nbformat.read(notebook_path, as_version=4)
NotebookClient(notebook, timeout=1800, kernel_name="cloud-test",
               resources={"metadata": {"path": str(folder)}}).execute()
nbformat.write(notebook, notebook_path)
"""


def _fresh_venv(root: Path) -> tuple[Path, dict]:
    """A virtual environment where cvae_utils does not import, seeing this one's packages."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
    python = root / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; "
                              "print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    outer = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    Path(purelib, "outer-packages.pth").write_text("\n".join(sorted(outer)) + "\n")
    kernel = root / "share" / "jupyter" / "kernels" / "cloud-test"
    kernel.mkdir(parents=True)
    (kernel / "kernel.json").write_text(json.dumps({
        "argv": [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "cloud test", "language": "python"}))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(JUPYTER_PATH=str(root / "share" / "jupyter"), CVAE_BUDGET="smoke",
               MPLBACKEND="Agg", PIP_NO_INPUT="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    return python, env


def _package_copy(target: Path) -> Path:
    """The package's files of this checkout (pip builds in the folder it installs from)."""
    target.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, target / name)
    shutil.copytree(REPO / "cvae_utils", target / "cvae_utils",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return target


def test_every_notebook_runs_in_a_fresh_environment(with_the_book_tests, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    import nbformat

    jobs = []
    for chapter in book_colab.chapters():
        # a copy of the package per notebook: pip builds in the folder it installs from
        package = _package_copy(tmp_path / "checkouts" / chapter.stem)
        notebook = tmp_path / "notebooks" / f"{chapter.stem}.ipynb"
        notebook.parent.mkdir(exist_ok=True)
        nbformat.write(book_colab.cloud_notebook(chapter, book_colab.local_install(package),
                                                 "a test"), notebook)
        root = tmp_path / "venvs" / chapter.stem
        python, env = _fresh_venv(root)
        hidden = subprocess.run([str(python), "-c", "import cvae_utils"], env=env,
                                cwd=tmp_path, capture_output=True, text=True)
        assert hidden.returncode != 0, "cvae_utils imports before the set-up cell ran"
        folder = tmp_path / "run" / notebook.stem
        folder.mkdir(parents=True)
        jobs.append((notebook, python, env, folder))

    def run(job):
        notebook, python, env, folder = job
        return subprocess.run([str(python), "-c", RUNNER, str(notebook), str(folder)],
                              env=env, cwd=folder, capture_output=True, text=True)

    with ThreadPoolExecutor(max_workers=2) as pool:  # two kernels at a time
        results = list(pool.map(run, jobs))
    failed = [f"{job[0].name}:\n{done.stderr[-3000:]}" for job, done in zip(jobs, results)
              if done.returncode != 0]
    assert not failed, "\n\n".join(failed)
    for notebook, python, env, folder in jobs:
        executed = nbformat.read(notebook, as_version=4)
        said = "".join(out.get("text", "") for out in executed.cells[0].outputs)
        assert "cvae_utils installed; CVAE_BUDGET = smoke" in said, (notebook.name, said)
        installed = subprocess.run(
            [str(python), "-c", "import cvae_utils; print(cvae_utils.__file__)"],
            env=env, cwd=folder, capture_output=True, text=True, check=True).stdout
        assert installed.startswith(str(python.parents[1])), installed  # in the fresh venv


# ---------------------------------------------------------------------------- the buttons
def _build_without_executing(out: Path, env: dict) -> Path:
    """The book built as usual but with execution off (the links do not depend on it)."""
    import yaml

    config = yaml.safe_load((BOOK / "_config.yml").read_text(encoding="utf-8"))
    config["execute"]["execute_notebooks"] = "off"
    # the folder of the local extensions is relative to the configuration file's folder
    config["sphinx"]["local_extensions"] = {name: str(BOOK / folder) for name, folder
                                            in config["sphinx"]["local_extensions"].items()}
    config_path = out / "_config.yml"
    out.mkdir(parents=True, exist_ok=True)
    config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
    script = Path(sys.executable).with_name("jupyter-book")
    command = [str(script) if script.exists() else "jupyter-book", "build", str(BOOK),
               "--path-output", str(out), "--config", str(config_path)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out / "_build" / "html"


def _colab_links(html: Path) -> dict[str, list[str]]:
    return {page.stem: re.findall(r'href="(https://colab\.research\.google\.com/[^"]*)"',
                                  page.read_text(encoding="utf-8"))
            for page in sorted(html.glob("*.html"))}


def _given_build(with_repository: bool) -> Path | None:
    given = os.environ.get("CVAE_BOOK_HTML")
    named = bool(os.environ.get(book_colab.REPOSITORY_ENV))
    return Path(given) if given and named == with_repository else None


@pytest.fixture(scope="module")
def published_html(tmp_path_factory) -> tuple[Path, str, str]:
    html = _given_build(with_repository=True)
    if html is not None:
        repository, ref = book_colab.launch_settings()
        return html, repository, ref
    env = {**os.environ, book_colab.REPOSITORY_ENV: STAND_IN[0],
           book_colab.NOTEBOOKS_REF_ENV: STAND_IN[1]}
    return _build_without_executing(tmp_path_factory.mktemp("published"), env), *STAND_IN


def test_a_published_build_opens_every_chapter_in_colab(with_the_book_tests, published_html,
                                                       tmp_path):
    html, repository, ref = published_html
    # the notebooks the workflow pushes, in the folder of the notebooks branch
    branch = tmp_path / "branch"
    book_colab.main(["--out", str(branch / book_colab.NOTEBOOKS_FOLDER),
                     "--repository", repository, "--commit", STAND_IN[1]])
    chapters = {p.stem for p in book_colab.chapters()}
    links = _colab_links(html)
    assert chapters <= set(links), "a chapter has no page"
    prefix = f"https://colab.research.google.com/github/{repository}/blob/{ref}/"
    for page, found in links.items():
        if page not in chapters:
            assert found == [], f"{page}.html is no chapter and links to Colab"
            continue
        assert len(found) == 1, (page, found)
        assert found[0] == book_colab.colab_url(repository, ref, page)
        assert found[0].startswith(prefix)
        assert (branch / found[0][len(prefix):]).is_file(), found[0]
    if _given_build(with_repository=True):  # executed: the .ipynb download is still there
        assert all((html / "_sources" / f"{page}.ipynb").is_file() for page in chapters)


def test_a_local_build_has_no_colab_button(with_the_book_tests, tmp_path):
    html = _given_build(with_repository=False)
    if html is None:
        env = {k: v for k, v in os.environ.items()
               if k not in (book_colab.REPOSITORY_ENV, book_colab.NOTEBOOKS_REF_ENV)}
        html = _build_without_executing(tmp_path / "local", env)
    assert len(list(html.glob("*.html"))) >= 10
    assert all(found == [] for found in _colab_links(html).values())


def test_a_wrong_repository_name_is_refused():
    assert book_colab.launch_settings({}) is None
    assert book_colab.launch_settings({"CVAE_BOOK_REPOSITORY": "a/b"}) == ("a/b", "notebooks")
    for bad in ("a", "a/b/c", "a b/c", "https://github.com/a/b"):
        with pytest.raises(ValueError, match="OWNER/NAME"):
            book_colab.launch_settings({"CVAE_BOOK_REPOSITORY": bad})
    with pytest.raises(ValueError, match="git ref"):
        book_colab.launch_settings({"CVAE_BOOK_REPOSITORY": "a/b",
                                    "CVAE_BOOK_NOTEBOOKS_REF": "x..y"})
