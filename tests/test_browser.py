"""The built book in a real browser: headless Chromium driven by Selenium, the HTML served on
127.0.0.1 by Python's own static file server (as ``python -m http.server`` serves it).

One smoke build serves every test: the one in ``CVAE_BOOK_HTML`` when that names a built
``html`` folder (``.ci/run`` builds first and sets it), else a build made here into a temporary
folder. Every page must load with no console error, every image must load, the maths must be
rendered by the MathJax of the build, and no page may show error output or fetch anything from
another host (other hosts do not even resolve). The interactive chapter is driven by pointer
events and its completions are compared with PyTorch's for the same input and noise. Each
chapter's ``.ipynb`` download is executed in a fresh folder. Screenshots of the interactive
page (desktop and phone widths, light and dark) go to ``CVAE_SCREENSHOT_DIR`` if set.

Needs Debian's ``chromium`` and ``chromium-driver`` (or ``CHROMIUM`` and ``CHROMEDRIVER``
naming the binaries), Selenium, and ``npm ci`` before the build. Without them the tests skip
with the reason, except under ``CI=true``, where a skip is a failure.
"""
from __future__ import annotations

import functools
import http.server
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = (os.environ.get("CHROMEDRIVER") or shutil.which("chromedriver")
                or "/usr/bin/chromedriver")
IN_CI = os.environ.get("CI", "").lower() == "true"
TOLERANCE = 1e-4


def _unavailable(reason: str):
    if IN_CI:
        pytest.fail(f"CI=true and the browser tests cannot run: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def book_html(tmp_path_factory) -> Path:
    """The html folder of a smoke build of the book (reused from CVAE_BOOK_HTML if set)."""
    given = os.environ.get("CVAE_BOOK_HTML")
    if given:
        html = Path(given)
        if not (html / "interactive.html").is_file():
            pytest.fail(f"CVAE_BOOK_HTML={given} holds no built book (no interactive.html)")
        return html
    _require_browser()  # before spending minutes on a build
    out = tmp_path_factory.mktemp("book")
    env = {**os.environ, "CVAE_BUDGET": os.environ.get("CVAE_BUDGET", "smoke")}
    script = Path(sys.executable).with_name("jupyter-book")
    command = [str(script) if script.exists() else "jupyter-book", "build", str(REPO / "book"),
               "--path-output", str(out)]
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        pytest.fail(f"the smoke build failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return out / "_build" / "html"


@pytest.fixture(scope="session")
def server(book_html):
    """Serve the build on 127.0.0.1 with the standard library's static file handler."""
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=str(book_html))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()


def _require_browser() -> None:
    try:
        import selenium  # noqa: F401
    except ImportError:
        _unavailable("selenium is not installed: pip install -r requirements.txt")
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not Path(path).exists():
            _unavailable(f"{path} is missing: apt-get install {package} (or set "
                         f"CHROMIUM and CHROMEDRIVER)")


def _driver(tmp_path_factory, width=1280, height=900):
    _require_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                 f"--window-size={width},{height}",
                 # no host but the test server resolves: a page that needs the network fails
                 "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)


@pytest.fixture(scope="session")
def browser(tmp_path_factory, server):
    driver = _driver(tmp_path_factory)
    driver.set_script_timeout(60)
    yield driver
    driver.quit()


def _pages(book_html: Path) -> list[str]:
    return sorted(p.name for p in book_html.glob("*.html"))


def _wait(driver, script: str, timeout: float = 30.0, what: str = ""):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = driver.execute_script(script)
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what or script}")


def _console_errors(driver) -> list[str]:
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


PAGE_REPORT = """
const images = Array.from(document.images).map(i => ({src: i.currentSrc || i.src,
  ok: i.complete && i.naturalWidth > 0}));
const origin = location.origin;
const foreign = performance.getEntriesByType('resource').map(e => e.name)
  .filter(n => !n.startsWith(origin) && !n.startsWith('data:'));
const main = (document.querySelector('main') || document.body).cloneNode(true);
main.querySelectorAll('pre, code, script, style, .highlight').forEach(n => n.remove());
const text = main.textContent;
return {images, foreign, mathjax: typeof MathJax !== 'undefined' && !!MathJax.startup,
        math_nodes: document.querySelectorAll('.math, span.math, div.math').length,
        rendered: document.querySelectorAll('mjx-container').length,
        raw_math: /\\\\\\(|\\\\\\[|\\$\\$/.test(text),
        errors: document.querySelectorAll(
          '.output.error, .output.traceback, .cell_output .stderr').length,
        traceback: /Traceback \\(most recent call last\\)/.test(text),
        mathjax_src: Array.from(document.scripts).map(s => s.src).filter(s => /mathjax/i.test(s))};
"""


def test_every_page_loads_cleanly(browser, server, book_html):
    pages = _pages(book_html)
    assert "interactive.html" in pages and "index.html" in pages
    problems = []
    for page in pages:
        browser.get(server + page)
        _wait(browser, "return document.readyState === 'complete'", what=f"{page} to load")
        has_math = browser.execute_script("return document.querySelectorAll('.math').length > 0")
        if has_math:
            browser.execute_async_script(
                "const done = arguments[0]; (window.MathJax && MathJax.startup ? "
                "MathJax.startup.promise : Promise.resolve()).then(() => done(true), "
                "() => done(false));")
        if page == "interactive.html":
            _wait(browser, "return ['ready', 'error'].includes("
                  "document.getElementById('cvae-interactive').dataset.state)", 60,
                  "the interactive page")
        report = browser.execute_script(PAGE_REPORT)
        errors = _console_errors(browser)
        if errors:
            problems.append(f"{page}: console errors {errors}")
        if not all(image["ok"] for image in report["images"]):
            problems.append(f"{page}: images not loaded "
                            f"{[i['src'] for i in report['images'] if not i['ok']]}")
        if report["foreign"]:
            problems.append(f"{page}: fetched from other hosts {report['foreign']}")
        if report["errors"] or report["traceback"]:
            problems.append(f"{page}: error output on the page")
        if has_math and (not report["rendered"] or report["raw_math"]):
            problems.append(f"{page}: maths not rendered ({report['rendered']} rendered, "
                            f"raw TeX left: {report['raw_math']})")
        if not all(src.startswith(server) for src in report["mathjax_src"]):
            problems.append(f"{page}: MathJax from {report['mathjax_src']}")
    assert not problems, "\n".join(problems)


def test_header_buttons_work(browser, server, book_html):
    """Every link in the header goes somewhere in the book (but "Open in Colab", which a
    published build has); the theme switch changes the theme."""
    import urllib.request

    for page in ("index.html", "data.html", "interactive.html"):
        browser.get(server + page)
        links = browser.execute_script(
            "return Array.from(document.querySelectorAll('.bd-header-article a[href], "
            ".header-article-items a[href]')).map(a => a.href)")
        assert any(link.endswith(".ipynb") for link in links) or page == "index.html", links
        for link in links:
            if link.startswith("https://colab.research.google.com/github/"):
                continue  # "Open in Colab" of a published build: tests/test_colab.py
            assert link.startswith(server), f"{page}: a header button leaves the book: {link}"
            with urllib.request.urlopen(link) as response:
                assert response.status == 200, link
        # the theme switch cycles auto -> light -> dark: within three clicks both themes show
        themes = set()
        for _ in range(3):
            browser.execute_script("document.querySelector('.theme-switch-button').click()")
            themes.add(browser.execute_script("return document.documentElement.dataset.theme"))
        assert themes == {"light", "dark"}, f"the theme switch gave {themes}"


SOLUTIONS = """
return Array.from(document.querySelectorAll('.solution.dropdown')).map(s => ({
  id: s.id, hidden: s.classList.contains('toggle-hidden'),
  height: s.querySelector(':scope > section').getBoundingClientRect().height}))"""


def test_solutions_stay_closed_until_the_reader_opens_them(browser, server, book_html):
    """Every chapter's solutions start closed (their body takes no space) and open on a click
    of their toggle (sphinx-exercise's dropdown with sphinx-togglebutton)."""
    chapters = [page for page in _pages(book_html)
                if 'class="solution dropdown' in (book_html / page).read_text("utf-8")]
    assert len(chapters) >= 10, chapters  # every numbered chapter has exercises
    for page in chapters:
        browser.get(server + page)
        _wait(browser, "return document.readyState === 'complete' && "
              "document.querySelector('.solution.dropdown button.toggle-button')",
              what=f"{page}'s toggle buttons")
        closed = browser.execute_script(SOLUTIONS)
        assert closed and all(s["hidden"] and s["height"] == 0 for s in closed), (page, closed)
        browser.execute_script("document.querySelectorAll('.solution.dropdown "
                               "button.toggle-button').forEach(b => b.click())")
        opened = browser.execute_script(SOLUTIONS)
        assert all(not s["hidden"] and s["height"] > 0 for s in opened), (page, opened)


CODE_WIDER_THAN_ITS_CELL = """
document.querySelectorAll('details').forEach(d => { d.open = true; });
document.querySelectorAll('.solution.dropdown.toggle-hidden button.toggle-button')
  .forEach(b => b.click());
return Array.from(document.querySelectorAll('div.cell_input pre')).filter(pre =>
    pre.scrollWidth > pre.clientWidth + 1
  ).map(pre => pre.textContent.split('\\n').reduce((a, b) => b.length > a.length ? b : a));"""


def test_code_cells_fit_their_width_on_a_desktop_screen(browser, server, book_html):
    """No code cell of a chapter scrolls sideways at 1280 px, the width of the shared browser:
    with every folded cell and every solution opened, each code cell's text fits its box. In
    the theme's code font that is 75 characters for a plain cell, 73 for a folded one and 68
    inside a solution."""
    chapters = [page for page in _pages(book_html)
                if 'class="cell_input' in (book_html / page).read_text("utf-8")]
    assert len(chapters) >= 10, chapters
    assert browser.execute_script("return window.innerWidth") == 1280
    wide = {}
    for page in chapters:
        browser.get(server + page)
        _wait(browser, "return document.readyState === 'complete'", what=page)
        lines = browser.execute_script(CODE_WIDER_THAN_ITS_CELL)
        if lines:
            wide[page] = lines
    assert not wide, ("code cells wider than their box (the longest line of each): "
                      + "; ".join(f"{page}: {lines}" for page, lines in wide.items()))


# ----------------------------------------------------------------------- the interactive page
def _open_interactive(driver, server):
    driver.get(server + "interactive.html")
    _wait(driver, "return document.getElementById('cvae-interactive').dataset.state === 'ready'",
          60, "the first completion")


def _fetched(driver, pattern: str) -> list[str]:
    return driver.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)"
        ".filter(n => n.includes(arguments[0]))", pattern)


def _draw(driver, strokes):
    """Pointer strokes on the input canvas: lists of (column, row) in pixels of the 28 x 28 grid."""
    from selenium.webdriver.common.action_chains import ActionChains

    canvas = driver.find_element("css selector", ".cvae-input")
    size = canvas.size["width"]
    for stroke in strokes:
        # selenium's offsets are from the element's centre
        points = [((c + 0.5) / 28 * size - size / 2, (r + 0.5) / 28 * size - size / 2)
                  for c, r in stroke]
        chain = ActionChains(driver, duration=10).move_to_element_with_offset(canvas, *points[0])
        chain.click_and_hold()
        for (x0, y0), (x1, y1) in zip(points[:-1], points[1:]):
            chain.move_by_offset(x1 - x0, y1 - y0)
        chain.release().perform()


@pytest.fixture(scope="session")
def pytorch_models():
    import torch

    from cvae_utils import book_config, load_mnist, trained_cvae
    from cvae_utils.export import round_weights_float16

    torch.set_num_threads(1)
    data = load_mnist()
    return {k: round_weights_float16(trained_cvae(k, book_config(), data=data)[0])
            for k in (1, 2, 3)}


def _compare(driver, k, models, seed):
    from cvae_utils.export import torch_completions

    x = np.asarray(driver.execute_script("return window.cvaeInteractive.currentInput()"),
                   dtype=np.float32)
    z_dim = models[k].config.z_dim
    eps = np.random.default_rng(seed).standard_normal((16, z_dim)).astype(np.float32)
    page = driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "window.cvaeInteractive.complete(arguments[0], arguments[1], arguments[2])"
        ".then(done, e => done({error: String(e)}))", k, x.tolist(), eps.reshape(-1).tolist())
    assert "error" not in page, page
    guess, samples = torch_completions(models[k], x[None], eps[:, None])
    assert np.abs(np.asarray(page["guess"]) - guess[0]).max() < TOLERANCE
    assert np.abs(np.asarray(page["samples"]).reshape(16, 784) - samples[:, 0]).max() < TOLERANCE
    return x


def test_interactive_page_matches_pytorch(browser, server, pytorch_models):
    from cvae_utils import input_mask

    _open_interactive(browser, server)
    # only the first layout's models were fetched
    assert _fetched(browser, "/k1/")
    assert not _fetched(browser, "/k2/") and not _fetched(browser, "/k3/")
    browser.find_element("css selector", ".cvae-clear").click()
    _wait(browser, "return document.getElementById('cvae-interactive').dataset.state === 'ready'")
    # a stroke in the bottom-left quadrant, and one that strays into the output region
    _draw(browser, [[(4, 26), (6, 20), (10, 16), (13, 15)], [(8, 18), (20, 8)]])
    _wait(browser, "return document.getElementById('cvae-interactive').dataset.state === 'ready'")
    x = _compare(browser, 1, pytorch_models, seed=1).reshape(28, 28)
    mask = input_mask(1).numpy()
    assert (x[~mask] == -1).all(), "ink outside the input region reached the models"
    assert (x[mask] > 0.5).sum() >= 10, "the strokes left no ink"
    assert x[20, 6] > 0.5 and x[mask].min() >= 0
    # another layout: its models are fetched when picked; a test digit as input
    browser.find_element("css selector", "input[name=cvae-k][value='3']").click()
    _wait(browser, "return window.cvaeInteractive.layout() === 3 && "
          "document.getElementById('cvae-interactive').dataset.state === 'ready'")
    assert _fetched(browser, "/k3/") and not _fetched(browser, "/k2/")
    browser.execute_async_script("const done = arguments[0]; "
                                 "window.cvaeInteractive.loadDigit(2).then(done)")
    _compare(browser, 3, pytorch_models, seed=2)
    # the button for new samples redraws with new noise
    before = browser.execute_script("return document.querySelector('.cvae-samples').toDataURL()")
    browser.find_element("css selector", ".cvae-resample").click()
    _wait(browser, "return window.cvaeInteractive.timings.clicks.length >= 1")
    after = browser.execute_script("return document.querySelector('.cvae-samples').toDataURL()")
    assert after != before
    assert not _console_errors(browser)


def test_screenshots_light_dark_desktop_phone(tmp_path_factory, server):
    """The page at desktop and phone widths in both themes; figures keep a light background."""
    from PIL import Image

    out = Path(os.environ.get("CVAE_SCREENSHOT_DIR") or tmp_path_factory.mktemp("screenshots"))
    out.mkdir(parents=True, exist_ok=True)
    for name, (width, height) in {"desktop": (1280, 1100), "phone": (390, 1400)}.items():
        driver = _driver(tmp_path_factory, max(width, 500), height)
        try:
            if name == "phone":  # a phone's viewport and touch (windows are at least 500 px)
                driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
                    "width": width, "height": height, "deviceScaleFactor": 2, "mobile": True})
                driver.execute_cdp_cmd("Emulation.setTouchEmulationEnabled",
                                       {"enabled": True, "maxTouchPoints": 5})
            for theme in ("light", "dark"):
                driver.get(server + "interactive.html")
                driver.execute_script("localStorage.setItem('theme', arguments[0]);"
                                      "localStorage.setItem('mode', arguments[0]);", theme)
                _open_interactive(driver, server)
                shown = driver.execute_script("return document.documentElement.dataset.theme")
                assert shown == theme
                driver.execute_script("document.getElementById('cvae-interactive')"
                                      ".scrollIntoView({block: 'start'})")
                time.sleep(0.3)
                path = out / f"interactive-{name}-{theme}.png"
                driver.save_screenshot(str(path))
                shot = np.asarray(Image.open(path).convert("RGB")).astype(int)
                ratio = driver.execute_script("return window.devicePixelRatio")
                box = driver.execute_script(
                    "const r = document.querySelector('.cvae-input').getBoundingClientRect();"
                    "return [r.left, r.top, r.width, r.height];")
                assert box[2] > 100, f"{name}: the input canvas is {box[2]} px wide"
                # the canvas keeps the book's colours in both themes: the output region of
                # one input quadrant (top left) in MISSING_COLOR, the input region white
                top_left = shot[int((box[1] + 4) * ratio), int((box[0] + 4) * ratio)]
                bottom_left = shot[int((box[1] + box[3] - 4) * ratio), int((box[0] + 4) * ratio)]
                assert np.abs(top_left - [0xc9, 0xd9, 0xee]).max() <= 3, (name, theme, top_left)
                assert (bottom_left > 240).all(), (name, theme, bottom_left)
                page_colour = shot[5, int(width * ratio) // 2 if name == "phone" else 5]
                assert (page_colour < 80).all() if theme == "dark" else (page_colour > 200).all()
            # a chapter with figures, in dark mode: the figures' backgrounds are opaque white
            driver.get(server + "data.html")
            _wait(driver, "return document.readyState === 'complete' && "
                  "Array.from(document.images).every(i => i.complete)")
            light = driver.execute_script("""
              const out = [];
              for (const img of document.querySelectorAll('figure img, .cell_output img')) {
                const c = document.createElement('canvas');
                c.width = img.naturalWidth; c.height = img.naturalHeight;
                const ctx = c.getContext('2d'); ctx.drawImage(img, 0, 0);
                const d = ctx.getImageData(0, 0, c.width, c.height).data;
                let minAlpha = 255;
                for (let i = 3; i < d.length; i += 4) minAlpha = Math.min(minAlpha, d[i]);
                out.push(minAlpha);
              }
              return out;""")
            assert light and min(light) == 255, light
            driver.execute_script("document.querySelector('figure img')"
                                  ".scrollIntoView({block: 'center'})")
            time.sleep(0.3)
            driver.save_screenshot(str(out / f"data-{name}-dark.png"))
        finally:
            driver.quit()


# ---------------------------------------------------------------------------- the downloads
def test_downloaded_notebooks_run_in_a_fresh_folder(book_html, tmp_path):
    """Each chapter's .ipynb download, outputs cleared, runs top to bottom at the smoke budget
    in an empty folder (only the data and model caches of the environment are shared)."""
    from concurrent.futures import ThreadPoolExecutor

    import jupytext
    import nbformat
    from nbclient import NotebookClient

    chapters = [p for p in sorted((REPO / "book").glob("*.md"))
                if "kernelspec" in jupytext.read(p, fmt="md:myst").metadata]
    assert len(chapters) >= 10
    jobs = []
    for chapter in chapters:
        download = book_html / "_sources" / f"{chapter.stem}.ipynb"
        assert download.is_file(), f"{chapter.name} has no .ipynb download in the build"
        notebook = nbformat.read(download, as_version=4)
        nbformat.validate(notebook)
        source = jupytext.read(chapter, fmt="md:myst")
        assert ([c.source for c in notebook.cells if c.cell_type == "code"]
                == [c.source for c in source.cells if c.cell_type == "code"]), chapter.name
        for cell in notebook.cells:
            if cell.cell_type == "code":
                cell.outputs, cell.execution_count = [], None
        folder = tmp_path / chapter.stem
        folder.mkdir()
        jobs.append(NotebookClient(notebook, timeout=1800, kernel_name="python3",
                                   resources={"metadata": {"path": str(folder)}}))
    os.environ.setdefault("CVAE_BUDGET", "smoke")  # the kernels inherit the environment

    def run(client):
        client.execute()  # raises CellExecutionError on the first failing cell
        return client

    with ThreadPoolExecutor(max_workers=2) as pool:  # two kernels at a time
        list(pool.map(run, jobs))


def test_bench_browser_runs_on_the_built_book(book_html):
    """The benchmark of the interactive page (benchmarks/bench_browser.py) on the same build,
    one run and two clicks, so that the script cannot drift from the page."""
    import re

    _require_browser()
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, str(root / "benchmarks" / "bench_browser.py"),
                             "--html", str(book_html), "--repeats", "1", "--clicks", "2",
                             "--chromium", str(CHROMIUM), "--chromedriver", str(CHROMEDRIVER)],
                            cwd=root, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    out = result.stdout
    first = re.search(r"first completion after opening the page: (\d+) ms", out)
    clicks = re.search(r"'New samples' \(16 samples\), 2 clicks: median ([\d.]+) ms", out)
    total = re.search(r"total transferred\s+([\d.]+) MB", out)
    assert first and clicks and total, out
    assert float(total.group(1)) > 1.0  # the runtime and one layout's models were fetched
