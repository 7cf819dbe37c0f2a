"""The book's Sphinx extension: what a ``jupyter-book build`` shows in its terminal, and its cache.

Listed in ``book/_config.yml`` under ``sphinx: local_extensions`` (with the other modules of
``book/_ext/``: the package `cvae_utils` imports none of them). It does five things:

* **A plan before the chapters run** (``book_plan.py``): the budget, the arithmetic the
  models will train in here, which models are in the model cache and which will be trained,
  which chapters will execute, and an estimate of the time on this machine.
* **Progress in the terminal, not in the pages**: it names a file in ``CVAE_PROGRESS_FILE``
  before any kernel starts; the kernels inherit it, and the launcher below installs a logging
  handler that appends there the line the package logs (`cvae_utils.progress`) per epoch, per
  quadrant count of the CLL table and per model of the variants (``book_terminal.py``); a
  thread of the build copies the lines to the terminal, each marked with the chapter that is
  executing.
* **No kernel noise**: a kernel spec for ``python3``, put first on ``JUPYTER_PATH`` for this
  build only, starts the kernels through ``book_kernel.py``, which drops ipykernel's warning
  about unencrypted TCP transport at every start (and nothing else) and installs that handler.
* **An execution cache per budget**: Jupyter Book re-executes a chapter only when its code
  changed, and the code does not change with ``CVAE_BUDGET``. So the execution cache
  (``nb_execution_cache_path``) gets one folder per pair of budgets, the book's and that of the
  chapter "Variants of the model" (``_build/.jupyter_cache/budget-smoke-variants-smoke``, with
  ``-fp32`` or ``-bf16`` appended when ``CVAE_PRECISION`` forces a precision, and ``-seeds-N``
  when ``CVAE_SEEDS`` sets the number of training seeds of the tables). Switching budgets
  changes a configuration value, so Sphinx reads every chapter again, and each one executes
  unless the folder of the new budgets already holds its outputs: switching back to a budget
  built before executes nothing.
* **A summary at the end**: the time of each chapter and whether it executed, the estimate
  against the real time, where the HTML is and how to read it locally. A chapter whose code
  failed (an exercise's hidden check included) makes the build exit with status 1, after every
  chapter has run and the pages, with the failure's report, are written.

* **Training on a cluster first**, when ``CVAE_SCHEDULER`` names a Dask scheduler: after the
  plan, every model the executing chapters need and the cache lacks is trained there
  (`cvae_utils.cluster.train_models`), with a line per finished model (done, running, left, an
  estimate), before the first chapter runs; the chapters then find them all in the cache.

An unknown ``CVAE_BUDGET`` or ``CVAE_VARIANTS_BUDGET``, or a bad ``CVAE_SEEDS``, stops the build
before anything runs, and so does a scheduler that cannot be reached.
"""
from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from sphinx.application import Sphinx
from sphinx.errors import ExtensionError
from sphinx.util import logging

from jupyter_cache import get_cache
from myst_nb.core.read import create_nb_reader
from myst_nb.sphinx_ import NbMetadataCollector

import book_kernel
from book_plan import ChapterStartProbe, build_plan, needs_of
from book_terminal import PROGRESS_ENV, Relay
from cvae_utils import settings
from cvae_utils.book_models import book_models
from cvae_utils.cluster import ClusterError, train_models
from cvae_utils.config import get_budget
from cvae_utils.files import write_atomically
from cvae_utils.progress import format_duration
from cvae_utils.seeds import training_seeds
from cvae_utils.settings import seeds as seeds_setting
from cvae_utils.speed import precision_override
from cvae_utils.variants import variants_budget

__all__ = ["setup", "execution_cache_folder", "write_kernel_spec", "BuildState",
           "train_on_cluster"]

logger = logging.getLogger(__name__)
PREFIX = "[cvae] "
KERNEL_NAME = "python3"  # the kernel the chapters declare
CHAPTER_OVER_PROBE = 2.0  # a chapter's fixed cost over the probe's (see _before_read)
FALLBACK_CHAPTER_SECONDS = 15.0  # when the probe fails (no MNIST?): the chapters will say why


@dataclass
class BuildState:
    """What the extension keeps during one build (on ``app.cvae_build``)."""

    start: float = field(default_factory=time.perf_counter)
    wall_start: float = field(default_factory=time.time)
    budget: str = ""
    variants_budget: str = ""
    precision: str = ""  # forced by CVAE_PRECISION, else "" (the machine decides)
    seeds: int | None = None           # training seeds set by CVAE_SEEDS, else None (the budget)
    probe: object = None               # a book_plan.ChapterStartProbe, running
    estimate: float | None = None
    relay: Relay | None = None
    progress_path: Path | None = None
    saved_env: dict = field(default_factory=dict)
    current: str = ""                  # the chapter being read (and executed)
    read_order: list = field(default_factory=list)
    started: dict = field(default_factory=dict)
    seconds: dict = field(default_factory=dict)


def _say(line: str = "") -> None:
    logger.info(PREFIX + line if line else "")


def execution_cache_folder(base: str | os.PathLike, budget: str, variants_budget: str,
                           precision: str = "", seeds: int | None = None) -> Path:
    """The execution cache of a pair of budgets (and of a training precision forced by
    ``CVAE_PRECISION``, and of a count of training seeds set by ``CVAE_SEEDS``, when they are):
    a folder of its own under ``base``."""
    return Path(base) / (f"budget-{budget}-variants-{variants_budget}"
                         + (f"-{precision}" if precision else "")
                         + (f"-seeds-{seeds}" if seeds is not None else ""))


def write_kernel_spec(root: str | os.PathLike, python: str = sys.executable) -> Path:
    """Write ``root/kernels/python3/kernel.json`` starting ``book_kernel.py`` by its path."""
    spec = {"argv": [python, str(Path(book_kernel.__file__).resolve()), "-f", "{connection_file}"],
            "display_name": "Python 3 (ipykernel)", "language": "python",
            "metadata": {"debugger": True}}
    path = Path(root) / "kernels" / KERNEL_NAME / "kernel.json"
    write_atomically(path, lambda tmp: tmp.write_text(json.dumps(spec, indent=1),
                                                      encoding="utf-8"))
    return path


def _set_env(state: BuildState, name: str, value: str) -> None:
    state.saved_env.setdefault(name, os.environ.get(name))
    os.environ[name] = value


def _restore_env(state: BuildState) -> None:
    for name, value in state.saved_env.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    state.saved_env.clear()


def _config_inited(app: Sphinx, config) -> None:
    state = app.cvae_build = BuildState()
    try:
        state.budget = get_budget().name
        state.variants_budget = variants_budget().name
        state.precision = precision_override() or ""
        # the budget decides the count of training seeds, unless CVAE_SEEDS does (checked here)
        state.seeds = len(training_seeds()) if seeds_setting() else None
    except ValueError as error:
        raise ExtensionError(f"{error} (before any chapter ran)") from None

    build = Path(app.outdir).parent  # _build, beside the html folder
    base = config.nb_execution_cache_path or build / ".jupyter_cache"
    config.nb_execution_cache_path = str(execution_cache_folder(base, state.budget,
                                                                state.variants_budget,
                                                                state.precision, state.seeds))
    kernels = build / "cvae-kernels"
    write_kernel_spec(kernels)
    path = os.environ.get("JUPYTER_PATH")
    _set_env(state, "JUPYTER_PATH", os.pathsep.join([str(kernels)] + ([path] if path else [])))
    state.progress_path = build / f"cvae-progress-{os.getpid()}.log"
    _set_env(state, PROGRESS_ENV, str(state.progress_path))
    state.probe = ChapterStartProbe().start()  # runs while Sphinx sets up


def _notebooks_to_execute(app: Sphinx, env, docnames) -> tuple[list[str], list[str], set]:
    """The documents among ``docnames`` that will execute, those the cache will serve, and
    what the first ask for (`cvae_utils.book_models.needs_of`)."""
    nb_config = env.mystnb_config
    mode = nb_config.execution_mode
    execute, cached, needs = [], [], set()
    cache = get_cache(nb_config.execution_cache_path) if mode == "cache" else None
    for docname in sorted(docnames):
        path = Path(env.doc2path(docname))
        try:
            text = path.read_text(encoding="utf-8")
            reader = create_nb_reader(str(path), env.myst_config, nb_config, text)
            if reader is None:
                continue  # a plain page
            notebook = reader.read(text)
        except Exception:  # the parser will report it; count the page as a notebook to run
            execute.append(docname)
            needs |= needs_of(path.read_text(encoding="utf-8", errors="replace"))
            continue
        if not any(cell.cell_type == "code" for cell in notebook.cells) or mode == "off":
            continue
        if cache is not None:
            try:
                cache.match_cache_notebook(notebook)
                cached.append(docname)
                continue
            except KeyError:
                pass
        execute.append(docname)
        needs |= needs_of("\n".join(cell.source for cell in notebook.cells
                                     if cell.cell_type == "code"))
    return execute, cached, needs


def _before_read(app: Sphinx, env, docnames) -> None:
    state: BuildState = app.cvae_build
    try:
        execute, cached, needs = _notebooks_to_execute(app, env, docnames)
    except Exception as error:  # myst-nb's internals changed: plan without the cache check
        logger.debug(f"{PREFIX}cannot tell which chapters are cached: {error}")
        execute, cached, needs = sorted(docnames), [], None
    _say("plan of this build")
    probe = state.probe.seconds() if execute else None
    state.probe.stop()
    state.probe = None
    # beyond the probe's imports and data, a chapter draws its figures and glues its numbers:
    # in the smoke builds of the book on two cores, chapters that trained nothing took about
    # twice the probe's time
    per_chapter = CHAPTER_OVER_PROBE * probe if probe is not None else FALLBACK_CHAPTER_SECONDS
    plan = build_plan(chapters=execute, cached_chapters=cached, needs=needs,
                      seconds_per_chapter=per_chapter)
    for line in plan.lines():
        _say("  " + line)
    state.estimate = plan.seconds if execute else None
    scheduler = settings.scheduler()
    if scheduler and execute and plan.to_train:
        _say(f"training on the Dask cluster at {scheduler} before the chapters run")
        train_on_cluster(scheduler, needs, lambda line: _say("  " + line))
        state.estimate = None  # the plan counted the training done now
    state.relay = Relay(state.progress_path, lambda line: _say(f"  {state.current}: {line}"))
    state.relay.start()


def train_on_cluster(scheduler: str, needs: set | None, log) -> int:
    """Train on the cluster of ``scheduler`` every model of the book's budgets that ``needs``
    (what the executing chapters ask for; None: everything) names and the cache lacks."""
    needs = needs if needs is not None else {"book", "classifier", "variants"}
    models = [model for model in book_models() if model.groups & needs]
    try:
        return train_models(models, scheduler=scheduler, log=log)
    except ClusterError as error:
        raise ExtensionError(f"{error} (before any chapter ran; unset CVAE_SCHEDULER to train "
                             f"in the chapters instead)") from None


def _source_read(app: Sphinx, docname: str, source: list) -> None:
    state: BuildState = app.cvae_build
    state.current = docname
    state.read_order.append(docname)
    state.started[docname] = time.perf_counter()


def _doctree_read(app: Sphinx, doctree) -> None:
    state: BuildState = app.cvae_build
    docname = app.env.docname
    if docname in state.started:
        state.seconds[docname] = time.perf_counter() - state.started[docname]
    if state.relay is not None:
        state.relay.poll()  # the chapter's last lines, before the next chapter starts


def _how(app: Sphinx, docname: str) -> str:
    state: BuildState = app.cvae_build
    try:
        data = NbMetadataCollector.get_exec_data(app.env, docname)
    except Exception:
        data = None
    if not data:
        return "no code to execute"
    if not data.get("succeeded", True):
        return f"FAILED ({data.get('error')}; the report is in the html folder's reports/)"
    if (data.get("mtime") or 0) >= state.wall_start:
        return "executed"
    return "from the execution cache"


def _build_finished(app: Sphinx, exception) -> None:
    state: BuildState | None = getattr(app, "cvae_build", None)
    if state is None:
        return
    if state.relay is not None:
        state.relay.stop()
        state.relay = None
    if state.probe is not None:
        state.probe.stop()
    _restore_env(state)
    if state.progress_path is not None:
        state.progress_path.unlink(missing_ok=True)
    total = time.perf_counter() - state.start
    _say(f"summary: budget {state.budget}, variants {state.variants_budget}")
    how = {docname: _how(app, docname) for docname in state.read_order}
    for docname in state.read_order:
        _say(f"  {docname:<14} {format_duration(state.seconds.get(docname, float('nan'))):>8}"
             f"  {how[docname]}")
    unchanged = sorted(set(app.env.found_docs) - set(state.read_order))
    if unchanged:
        _say(f"  not read again (unchanged since the last build): {', '.join(unchanged)}")
    estimate = ("" if state.estimate is None
                else f" (estimated before it: {format_duration(state.estimate)})")
    _say(f"  this build took {format_duration(total)}{estimate}")
    failed = [docname for docname in state.read_order if how[docname].startswith("FAILED")]
    if failed and exception is None:
        # a chapter whose code failed (a solution's own check included) is not a finished book:
        # the pages are written, so its report can be read, but the build exits with status 1
        app.statuscode = 1
        _say(f"  FAILED: {', '.join(failed)}: a cell raised; the build exits with status 1")
    if exception is None and app.builder is not None and app.builder.format == "html":
        html = Path(app.outdir).resolve()
        _say(f"  HTML: {html / 'index.html'}")
        _say("  to read it, open that file in a browser, or serve the folder and open "
             "http://localhost:8000 :")
        _say(f"    python -m http.server 8000 --directory {html}")


def setup(app: Sphinx) -> dict:
    app.connect("config-inited", _config_inited)
    app.connect("env-before-read-docs", _before_read)
    app.connect("source-read", _source_read)
    app.connect("doctree-read", _doctree_read)
    app.connect("build-finished", _build_finished)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
