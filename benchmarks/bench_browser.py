"""Latency and transfer of the interactive chapter in headless Chromium.

Serves a built book (``--html``, default ``book/_build/html``) on 127.0.0.1 with Python's
static file server (as ``python -m http.server``), then, in a fresh Chromium profile per run (so
nothing comes from the browser's cache), opens ``interactive.html`` and prints:

* the time from the start of navigation to the first completion drawn (the page loads the
  runtime, the models of one input quadrant and a test digit, and completes it);
* the bytes the page fetched, by kind: onnxruntime-web's script and WebAssembly binary, the
  models of the one layout it uses, the page's own script and data, and the rest (the theme's
  CSS, fonts and scripts, MathJax), as the Resource Timing API reports them (no compression:
  the standard library's server sends files as they are);
* the time per click of "New samples" (16 samples: baseline, prior, generation, drawing), over
  ``--clicks`` clicks, after the first completion.

Run from the repository root after a build (``npm ci`` first, so the build has the runtime):

    CVAE_BUDGET=smoke jupyter-book build book/
    python benchmarks/bench_browser.py --repeats 3

Needs Debian's chromium and chromium-driver (or --chromium/--chromedriver) and selenium.
"""
from __future__ import annotations

import argparse
import functools
import http.server
import statistics
import tempfile
import threading
import time
from pathlib import Path

RESOURCES = """
return performance.getEntriesByType('resource').map(e => ({name: e.name, bytes: e.transferSize,
  body: e.encodedBodySize})).concat(performance.getEntriesByType('navigation').map(e =>
  ({name: e.name, bytes: e.transferSize, body: e.encodedBodySize})));
"""


def kind(url: str) -> str:
    if "/_static/ort/" in url:
        return "runtime (onnxruntime-web .js + .wasm)"
    if "/_static/generated/interactive/k" in url:
        return "models of one layout (.onnx, manifest)"
    if "/_static/generated/interactive/" in url or "/_static/interactive/" in url:
        return "page script and data (interactive.js, index, digits)"
    return "the rest (HTML, theme, fonts, MathJax)"


def run_once(server: str, args) -> dict:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = args.chromium
    with tempfile.TemporaryDirectory() as profile:
        for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                     "--no-first-run", "--disable-background-networking",
                     "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                     "--window-size=1280,1000", f"--user-data-dir={profile}",
                     "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"):
            options.add_argument(flag)
        driver = webdriver.Chrome(service=Service(executable_path=args.chromedriver),
                                  options=options)
        try:
            driver.get(server + "interactive.html")
            deadline = time.monotonic() + 60
            while driver.execute_script("return document.getElementById('cvae-interactive')"
                                        ".dataset.state") != "ready":
                if time.monotonic() > deadline:
                    raise RuntimeError("no completion within 60 s")
                time.sleep(0.02)
            first = driver.execute_script("return window.cvaeInteractive.timings.firstCompletion")
            resources = driver.execute_script(RESOURCES)
            marks = driver.execute_script(
                "const n = performance.getEntriesByType('navigation')[0];"
                "return Object.fromEntries([['DOMContentLoaded', n.domContentLoadedEventEnd],"
                " ['load', n.loadEventEnd]].concat(performance.getEntriesByType('mark')"
                ".map(m => [m.name, m.startTime])));")
            for i in range(args.clicks):
                driver.execute_script("document.querySelector('.cvae-resample').click()")
                while driver.execute_script(
                        "return window.cvaeInteractive.timings.clicks.length") < i + 1:
                    time.sleep(0.005)
            clicks = driver.execute_script("return window.cvaeInteractive.timings.clicks")
        finally:
            driver.quit()
    by_kind: dict[str, int] = {}
    for entry in resources:
        by_kind[kind(entry["name"])] = by_kind.get(kind(entry["name"]), 0) + int(entry["bytes"])
    return {"first_ms": float(first), "clicks_ms": clicks, "bytes": by_kind, "marks": marks}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--html", type=Path, default=Path("book/_build/html"))
    parser.add_argument("--repeats", type=int, default=3, help="fresh browser runs")
    parser.add_argument("--clicks", type=int, default=20, help="clicks of 'New samples' per run")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--chromedriver", default="/usr/bin/chromedriver")
    args = parser.parse_args()
    if not (args.html / "interactive.html").is_file():
        raise SystemExit(f"{args.html} holds no built book: run `jupyter-book build book/` first")

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *a):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                            functools.partial(Quiet, directory=str(args.html)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    server = f"http://127.0.0.1:{httpd.server_address[1]}/"
    runs = [run_once(server, args) for _ in range(args.repeats)]
    httpd.shutdown()

    print(f"interactive page of {args.html}, {args.repeats} fresh Chromium runs")
    firsts = [r["first_ms"] for r in runs]
    print(f"first completion after opening the page: {', '.join(f'{t:.0f}' for t in firsts)} ms "
          f"(median {statistics.median(firsts):.0f} ms; target 3000 ms)")
    for r in runs:
        print("  milestones (ms): " + ", ".join(f"{name.removeprefix('cvae:')} {t:.0f}"
                                                for name, t in sorted(r["marks"].items(),
                                                                      key=lambda item: item[1])))
    clicks = [t for r in runs for t in r["clicks_ms"]]
    print(f"'New samples' (16 samples), {len(clicks)} clicks: median "
          f"{statistics.median(clicks):.1f} ms, max {max(clicks):.1f} ms (target 100 ms)")
    sizes = runs[-1]["bytes"]
    for name, size in sorted(sizes.items()):
        print(f"  {name:55s} {size / 1e6:7.2f} MB")
    core = sum(v for k, v in sizes.items() if not k.startswith("the rest"))
    print(f"  {'scripts, wasm, one layout of models, page data':55s} {core / 1e6:7.2f} MB")
    print(f"  {'total transferred':55s} {sum(sizes.values()) / 1e6:7.2f} MB")


if __name__ == "__main__":
    main()
