"""Take the README's screenshot of the demo map: serve the demo dataset on 127.0.0.1, open
it in Debian's headless Chromium, colour by label, tap a misclassified digit (its true
neighbours are listed and ringed) and hover another (its thumbnail shows), then save a PNG.

    .venv/bin/bigembed demo --no-serve          # builds demo-data/ once
    .venv/bin/python docs/screenshot.py [--data demo-data/dataset] [--out docs/explorer.png]
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

# The browser tests' launch flags and page helpers (Bokeh's view of the plot frame).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import CHROMIUM_ARGS  # noqa: E402
from test_browser import FRAME_JS, to_screen  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(pred, timeout, what):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return
        time.sleep(0.2)
    raise SystemExit(f"timed out after {timeout}s waiting for {what}")


@contextlib.contextmanager
def serve(data, *args: str, timeout: float = 120):
    """``bigembed -q serve DATA --port P *args`` on a free port of 127.0.0.1, waited for (its
    page answers 200 within ``timeout`` s); yields the base URL and stops the server on exit.
    The one start-and-wait of the screenshot scripts."""
    port = _free_port()
    srv = subprocess.Popen([sys.executable, "-m", "bigembed", "-q", "serve", str(data),
                            "--port", str(port), *args])
    base = f"http://127.0.0.1:{port}"

    def up():
        try:
            return urllib.request.urlopen(f"{base}/", timeout=2).status == 200
        except OSError:
            return False

    try:
        _wait(up, timeout, "the server")
        yield base
    finally:
        srv.terminate()
        srv.wait(timeout=30)


def open_page(pw, url, *, viewport, timeout_ms):
    """Headless Chromium (Debian's, the browser tests' flags) on ``url``, once Bokeh has drawn
    its documents; returns (browser, page)."""
    b = pw.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS,
                           headless=True)
    page = b.new_page(viewport=viewport)
    page.goto(url, timeout=timeout_ms)
    page.wait_for_function("() => typeof Bokeh !== 'undefined' && Bokeh.index && "
                           "[...Bokeh.index].length > 0", timeout=timeout_ms)
    return b, page


def main(argv=None):
    import numpy as np
    from playwright.sync_api import sync_playwright

    from bigembed import Dataset
    from bigembed.dataset.layouts import find_layouts, load_layout

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="demo-data/dataset")
    ap.add_argument("--out", default="docs/explorer.png")
    a = ap.parse_args(argv)
    ds = Dataset.open(a.data)
    name = find_layouts(ds, method="umap")[0]
    lay = load_layout(ds, name=name)
    meta = ds.meta
    wrong = np.flatnonzero(~meta["correct"].to_numpy().astype(bool))
    tap = int(wrong[0]) if len(wrong) else 0
    hover = int((tap + 1) % ds.rows)
    with serve(a.data, timeout=120) as base, sync_playwright() as pw:
        b, page = open_page(pw, f"{base}/?color=label&layout={name}&id={tap}",
                            viewport={"width": 1250, "height": 1400}, timeout_ms=60_000)
        page.wait_for_timeout(3000)  # the frame and the tapped instance's neighbours
        f = page.evaluate(FRAME_JS)
        x, y = float(lay.x[hover]), float(lay.y[hover])
        page.mouse.move(*to_screen(f, x, y))
        page.wait_for_timeout(1500)
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=a.out)
        b.close()
    print(f"wrote {a.out} (tapped id {tap}, hovered id {hover})")


if __name__ == "__main__":
    main()
