"""Pan/zoom frames as a user sees them: ``bigembed serve``'s page against ``bigembed.show()`` in
a real JupyterLab, both in the same headless Chromium, in the same run.

    python -m benchmarks.bench_notebook_browser --data DIR [--n 20000] [--repeat 3]
        [--uncombined] [--timeout 120] [--out benchmarks/results/notebook-browser.json]

``--data``: a dataset with a layout (its map built, as ``bigembed serve`` or a first ``show()``
leaves it); where none is, a synthetic one of ``--n`` points is built there
(``bench_notebook.make_dataset``). An existing dataset is only read.

Two pages in one Debian Chromium (headless, Playwright through ``executable_path``):

- **serve**: ``bigembed serve DATA`` on a free 127.0.0.1 port, its page opened at
  ``/?color=label``. A pan: BokehJS sends the plot's ``RangesUpdate`` event over the Bokeh
  websocket, the server patches the frame glyph's source with a new ``/frame.png?...`` URL,
  the page GETs it.
- **notebook**: a JupyterLab on 127.0.0.1 (token set, no browser of its own), a notebook whose
  one cell runs ``m = bigembed.show(DATA, color='label')``, run in the page. A pan: the same
  ``RangesUpdate`` event travels as a comm message (jupyter_bokeh's widget) to the kernel,
  which renders the frame and sends it back as PNG bytes, a binary buffer of a document patch
  of ``png_src``, that the cell's CustomJS turns into a ``blob:`` URL for the frame glyph.

The same views in both (``bench_notebook.views``: the full map, zooms 2-64x and pans, on the
dataset's default range), the same 800 x 800 frame, colouring ``label``. Each timed view is
reached from a view one unit wider on each side first (``away``, its frame waited for), so a
new frame must be rendered, and each round shifts the views by 1e-7 of their size (a URL the
serve page has not loaded: Chromium would show an image it holds without asking); a warm-up pass of every view first, then ``--repeat`` rounds, the
pages alternating view by view (so load on the machine hits them alike).

What is timed, in the page (``performance.now()``), the same way in both:

- **start**: just before the page asks for the view the way a box-zoom or a pan tool does:
  ``plot_view.update_range({xrs, yrs})`` then ``plot_view.trigger_ranges_update_event()``
  (BokehJS 3.9's own path; the ranges' property changes and the ``RangesUpdate`` event go to
  the server / the kernel as they do on a drag).
- **end** (``total``): the frame glyph (the ImageURL glyph named ``frame``) has drawn the image
  of the URL its source now holds, for the asked view, into the plot's canvas, and a pixel of
  that canvas has been read back (which forces the canvas to rasterise: the PNG's decode and
  the paint are inside, in both pages).
- **bytes** (when the frame's bytes were in the page): serve: ``responseEnd`` of the
  ``/frame.png`` request (Resource Timing); notebook: the kernel websocket message carrying the
  PNG (a listener on every ``WebSocket``, added before the page's own). ``after_bytes`` =
  total - bytes: the page's own work (serve: image load/decode/paint; notebook: unpacking the
  comm message, applying the patch, the blob URL, image load/decode/paint; before bigembed
  made the frame's sources unsyncable, also jupyter_bokeh sending the applied patch, PNG
  included, back to the kernel before the image loaded).
  ``event_sent``: the websocket message carrying the ``RangesUpdate`` event left the page (in
  the notebook, jupyter_bokeh's ``combine_events``, which ``show()`` turns on, holds each
  document change until the kernel is idle again: before bigembed made the plot's ranges
  unsyncable, a pan's range changes went one kernel round trip each before the event). Serve also records ``patch`` (the Bokeh websocket message
  with the new frame URL arrived), ``request_start`` (its GET went out) and
  ``response_start`` (the first byte of its answer, i.e. the server had rendered it); the
  notebook ``kernel_sent``, the date in the header of the kernel's message carrying the PNG
  (the kernel's clock, the same machine's; millisecond resolution), so ``bytes - kernel_sent``
  is the transport (ZMQ, jupyter_server, websocket) and ``kernel_sent - event_sent`` the
  kernel's work. ``loaded`` in the samples is the image's ``load`` event where it came before
  the paint.
- ``--uncombined``: a third page, the same notebook with ``m.widget.combine_events = False``
  run after ``show()`` (what the notebook's pans cost without that queueing).

A frame that never comes is waited for at most ``--timeout`` seconds and reported under
``missing``; it is left out of the medians.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bigembed.bench.harness import results_doc, write_results

from ._serve import free_port, stop, wait_until_up
from .bench_notebook import _away, make_dataset, views

log = logging.getLogger("bench_notebook_browser")

#: the flags of the headless Chromium the tests launch (tests/conftest.py)
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]

#: run in every page before its own scripts: when each websocket message and each image arrive
INIT_JS = r"""
(() => {
  const be = window.__be = {ws: [], sent: [], loaded: new Map()};
  try { performance.setResourceTimingBufferSize(100000); } catch (e) {}
  function isPng(u) {  // a PNG signature in the message (the first few 0x89 bytes tried)
    let i = u.indexOf(0x89), k = 0;
    while (i >= 0 && k++ < 64) {
      if (u[i + 1] === 0x50 && u[i + 2] === 0x4e && u[i + 3] === 0x47) return true;
      i = u.indexOf(0x89, i + 1);
    }
    return false;
  }
  const WS = window.WebSocket;
  window.WebSocket = class extends WS {
    constructor(...args) {
      super(...args);
      this.addEventListener("message", (ev) => {
        const t = performance.now(), d = ev.data;
        const rec = {t, size: 0, png: false, frame_url: false};
        if (d instanceof ArrayBuffer) {
          rec.size = d.byteLength; rec.png = isPng(new Uint8Array(d));
          if (rec.png) {  // when the kernel sent it: its header's date (the first in the message)
            const head = new TextDecoder().decode(new Uint8Array(d, 0, Math.min(d.byteLength, 4096)));
            const m = /"date":\s*"([^"]+)"/.exec(head);
            const ms = m ? Date.parse(m[1]) : NaN;
            if (isFinite(ms)) rec.sender_t = ms - (Date.now() - t);
          }
        }
        else if (typeof d === "string") { rec.size = d.length; rec.frame_url = d.includes("frame.png?"); }
        else if (d && d.size !== undefined) { rec.size = d.size; }
        be.ws.push(rec);
        if (be.ws.length > 2000) be.ws.splice(0, 1000);
      });
    }
    send(d) {
      const t = performance.now(), size = d && (d.byteLength ?? d.length ?? d.size);
      let text = typeof d === "string" ? d : "";
      if (!text && size < 8192 && (d instanceof ArrayBuffer || ArrayBuffer.isView(d))) {
        text = new TextDecoder("utf-8", {fatal: false}).decode(d);
      }
      // the plot's RangesUpdate event leaving the page (Bokeh's EVENT message, or the comm
      // message jupyter_bokeh wraps it in)
      be.sent.push({t, size, ranges_event: text.includes("rangesupdate")});
      if (be.sent.length > 2000) be.sent.splice(0, 1000);
      return super.send(d);
    }
  };
  const desc = Object.getOwnPropertyDescriptor(HTMLElement.prototype, "onload");
  Object.defineProperty(HTMLImageElement.prototype, "onload", {
    configurable: true, enumerable: true,
    get() { return desc.get.call(this); },
    set(fn) {
      desc.set.call(this, typeof fn !== "function" ? fn : function (ev) {
        const s = this.src || "";
        if (s.startsWith("blob:") || s.includes("frame.png")) {
          be.loaded.set(s, performance.now());
          if (be.loaded.size > 500) be.loaded.clear();
        }
        return fn.call(this, ev);
      });
    },
  });
})();
"""

#: the map's plot view (the plot named 'map', the last one laid out on the page)
FIND_JS = r"""
window.__be_map = () => {
  if (typeof Bokeh === "undefined" || !Bokeh.index) return null;
  function walk(v) {
    if (v.model && v.model.name == "map") return v;
    for (const c of (v.child_views || [])) { const r = walk(c); if (r) return r; }
    return null;
  }
  let found = null;
  for (const root of Bokeh.index) {
    const v = walk(root);
    if (v && v.canvas_view.el.getBoundingClientRect().width > 0) found = v;
  }
  return found;
};
window.__be_col = (src, k) => { const d = src.data; return (d instanceof Map ? d.get(k) : d[k])[0]; };
window.__be_state = () => {
  const pv = window.__be_map();
  if (!pv) return null;
  const rv = [...pv.renderer_views.values()].find((r) => r.model.name == "frame");
  if (!rv) return null;
  const src = rv.model.data_source, col = (k) => window.__be_col(src, k);
  const img = rv.glyph.image && rv.glyph.image[0];
  return {url: String(col("url")).slice(0, 60), x: col("x"), y: col("y"), w: col("w"), h: col("h"),
          painted: !!(img && img.complete && img.naturalWidth > 0 &&
                      img.src === new URL(String(col("url")), document.baseURI).href)};
};
"""

#: ask for view ``v`` as a box zoom / pan tool does; resolve when its frame is in the canvas
GOTO_JS = r"""
([v, timeout_ms]) => new Promise((resolve) => {
  const pv = window.__be_map();
  if (!pv) { resolve({error: "no map on the page"}); return; }
  const rv = [...pv.renderer_views.values()].find((r) => r.model.name == "frame");
  const gvs = [rv.glyph, rv.selection_glyph, rv.nonselection_glyph, rv.decimated_glyph,
               rv.hover_glyph, rv.muted_glyph].filter((g) => g && g._render_image);
  const src = rv.model.data_source, col = (k) => window.__be_col(src, k);
  const tol = 1e-12 * Math.max(v[1] - v[0], v[3] - v[2]);
  const near = (a, b) => Math.abs(a - b) <= tol;
  const be = window.__be;
  try { performance.clearResourceTimings(); } catch (e) {}
  let done = false, timer = null, t0 = 0;
  function finish(r) {
    if (done) return;
    done = true;
    clearTimeout(timer);
    for (const g of gvs) delete g._render_image;  // back to the prototype's
    resolve(r);
  }
  for (const g of gvs) {
    const orig = Object.getPrototypeOf(g)._render_image;
    g._render_image = function (ctx, i, image, ...rest) {
      const out = orig.call(this, ctx, i, image, ...rest);
      if (done) return out;
      const url = String(col("url"));
      const abs = new URL(url, document.baseURI).href;
      if (image.src === abs && near(col("x"), v[0]) && near(col("w"), v[1] - v[0]) &&
          near(col("y"), v[2]) && near(col("h"), v[3] - v[2])) {
        const bb = pv.frame.bbox;
        let readback = true;
        try { ctx.getImageData(Math.round(bb.left + bb.width / 2), Math.round(bb.top + bb.height / 2), 1, 1); }
        catch (e) { readback = false; }
        const t = performance.now();
        // the image's load event, when it came before the paint (BokehJS also paints an image
        // whose ``complete`` is set before its load event has run)
        const ld = be.loaded.get(abs);
        const r = {t0, painted: t, readback, url: url.slice(0, 60),
                   loaded: ld != null && ld >= t0 && ld <= t ? ld : null};
        const sent = be.sent.filter((m) => m.t >= t0 && m.t <= t);
        if (sent.length) { r.sent = sent[0].t; r.sent_last = sent[sent.length - 1].t; }
        r.n_sent = sent.length;
        const ev = sent.find((m) => m.ranges_event);
        if (ev) r.event_sent = ev.t;
        if (url.startsWith("blob:")) {
          const png = be.ws.filter((m) => m.png && m.t >= t0 && m.t <= t);
          if (png.length) {
            const m = png[png.length - 1];
            r.bytes = m.t; r.bytes_size = m.size;
            if (m.sender_t != null) r.kernel_sent = m.sender_t;
          }
          r.png_messages = png.length;
        } else {
          r.abs = abs;  // its Resource Timing entry is read by NET_JS (it may come after the paint)
          const p = be.ws.find((m) => m.frame_url && m.t >= t0);
          if (p) r.patch = p.t;
        }
        finish(r);
      }
      return out;
    };
  }
  timer = setTimeout(() => finish({t0, timeout: true, state: window.__be_state()}), timeout_ms);
  t0 = performance.now();
  pv.update_range({xrs: new Map([[pv.model.x_range, {start: v[0], end: v[1]}]]),
                   yrs: new Map([[pv.model.y_range, {start: v[2], end: v[3]}]])});
  pv.trigger_ranges_update_event();
})
"""


#: the Resource Timing entry of a frame's GET after ``t0`` (waited for at most 2 s: Chromium
#: may add it to the timeline after the image's load event)
NET_JS = r"""
([abs, t0]) => new Promise((resolve) => {
  const end = performance.now() + 2000;
  (function poll() {
    const ents = performance.getEntriesByName(abs).filter((e) => e.startTime >= t0);
    if (ents.length || performance.now() > end) {
      const r = {fetched: ents.length};
      if (ents.length) {
        const e = ents[ents.length - 1];
        Object.assign(r, {bytes: e.responseEnd, request_start: e.requestStart || e.startTime,
                          response_start: e.responseStart, bytes_size: e.encodedBodySize});
      }
      resolve(r);
    } else setTimeout(poll, 20);
  })();
})
"""


def _chromium_path() -> str:
    for p in ("/usr/bin/chromium", "/usr/bin/chromium-browser"):
        if Path(p).exists():
            return p
    raise RuntimeError("no Debian chromium at /usr/bin/chromium (apt-get install chromium); "
                       "this benchmark never downloads a browser")


@contextlib.contextmanager
def _browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=_chromium_path(), args=CHROMIUM_ARGS,
                               headless=True)
        try:
            yield b
        finally:
            b.close()


def _wait(pred, timeout: float, page, what: str):
    """Poll ``pred()`` through the page (its events keep running) for at most ``timeout``."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = pred()
        if v:
            return v
        page.wait_for_timeout(100)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


def _show_code(data: Path, combine_events=None) -> str:
    code = f"import bigembed\nm = bigembed.show({str(data)!r}, color='label')"
    if combine_events is not None:
        code += f"\nm.widget.combine_events = {bool(combine_events)!r}"
    return code


@contextlib.contextmanager
def _jupyterlab(data: Path, timeout: float = 120.0, cells=None):
    """A JupyterLab on a free loopback port with a token (no browser of its own), serving a
    temporary folder with one notebook per entry of ``cells`` (name -> the code of its one cell;
    by default ``pan``: ``m = bigembed.show(DATA, color='label')``); yields {name: the notebook's
    URL with its token}."""
    import nbformat as nbf

    with tempfile.TemporaryDirectory(prefix="bigembed-bench-lab-") as tmp:
        root = Path(tmp)
        for name, code in (cells or {"pan": _show_code(data)}).items():
            nb = nbf.v4.new_notebook()
            nb.cells = [nbf.v4.new_code_cell(code)]
            nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                         "language": "python"}
            nbf.write(nb, str(root / f"{name}.ipynb"))
        port, token = free_port(), secrets.token_hex(16)
        env = dict(os.environ, BIGEMBED_NO_PROGRESS="1", JUPYTER_CONFIG_DIR=str(root / ".cfg"),
                   JUPYTER_RUNTIME_DIR=str(root / ".run"),
                   JUPYTERLAB_WORKSPACES_DIR=str(root / ".ws"),
                   JUPYTERLAB_SETTINGS_DIR=str(root / ".settings"), JUPYTER_PLATFORM_DIRS="1")
        with open(root / "lab.log", "w") as logf:
            proc = subprocess.Popen(
                [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1",
                 f"--port={port}", "--port-retries=0", f"--IdentityProvider.token={token}",
                 f"--ServerApp.root_dir={root}", "--LabApp.news_url=",
                 "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
                 "--ServerApp.shutdown_no_activity_timeout=1800", "--allow-root",
                 ("--ServerApp.jpserver_extensions={'panel.io.jupyter_server_extension': False, "
                  "'jupyter_lsp': False, 'jupyter_server_terminals': False}")],
                stdout=logf, stderr=subprocess.STDOUT, env=env, cwd=root)
            base = f"http://127.0.0.1:{port}"
            try:
                wait_until_up(f"{base}/api/status?token={token}", proc, timeout, "jupyter lab",
                              root / "lab.log")
                # a workspace per notebook: a page restores only its own tab
                yield {name: f"{base}/lab/workspaces/{name}/tree/{name}.ipynb?reset&token={token}"
                       for name in (cells or {"pan": None})}
            finally:
                stop(proc, timeout=20)


def _new_page(browser):
    ctx = browser.new_context(viewport={"width": 1500, "height": 1100})
    ctx.add_init_script(INIT_JS)
    return ctx.new_page()


def _ready(page, timeout: float) -> None:
    """The map is laid out and shows its first frame."""
    page.evaluate(FIND_JS)
    _wait(lambda: (page.evaluate("() => window.__be_state && window.__be_state()") or {})
          .get("painted"), timeout, page, "the map's first frame")
    page.evaluate("() => window.__be_map().canvas_view.el.scrollIntoView({block: 'center'})")


def _open_serve(browser, root: str, timeout: float):
    page = _new_page(browser)
    page.goto(f"{root}/?color=label", timeout=timeout * 1000)
    _ready(page, timeout)
    return page


def _open_notebook(browser, url: str, timeout: float):
    page = _new_page(browser)
    page.goto(url, timeout=timeout * 1000)
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=timeout * 1000)
    # a cell run before the kernel is connected is skipped: wait for the status bar
    _wait(lambda: page.evaluate("() => /\\| Idle/.test(document.body.innerText)"), timeout,
          page, "the notebook's kernel to be idle")
    cell = page.locator(".jp-Notebook .jp-Cell").nth(0)
    cell.locator(".jp-InputArea-editor").click()
    page.keyboard.press("Shift+Enter")
    # a fresh kernel imports bigembed, Bokeh and numba and maps the dataset
    _wait(lambda: re.search(r"\[\d+\]", cell.locator(".jp-InputArea-prompt").inner_text()),
          timeout * 3, page, "the show() cell to finish")
    _ready(page, timeout)
    return page


def _goto(page, v, timeout: float) -> dict:
    page.evaluate(FIND_JS)  # (again: a notebook may have re-rendered its output)
    r = page.evaluate(GOTO_JS, [list(map(float, v)), int(timeout * 1000)])
    if r.get("error"):
        raise RuntimeError(r["error"])
    if r.get("abs"):
        r.update(page.evaluate(NET_JS, [r.pop("abs"), r["t0"]]))
    return r


def _sample(r: dict) -> dict:
    """Seconds from the request (``t0``) to each point the page recorded."""
    out = {}
    for k in ("painted", "bytes", "loaded", "patch", "request_start", "response_start", "sent",
              "sent_last", "event_sent", "kernel_sent"):
        if r.get(k) is not None:
            out[k] = (r[k] - r["t0"]) / 1000
    if "painted" in out:
        out["total"] = out.pop("painted")
    if "bytes" in out and "total" in out:
        out["after_bytes"] = out["total"] - out["bytes"]
    for k in ("fetched", "png_messages", "bytes_size", "readback", "n_sent"):
        if k in r:
            out[k] = r[k]
    return out


def _nudged(v, k: int):
    """``v`` shifted by ``k`` x 1e-7 of its width and height (a ten-thousandth of a pixel): the
    same frame, but a URL the page has not loaded before. Chromium keeps images it loaded in
    memory (its list of available images, whatever ``Cache-Control`` says) and shows the same
    ``/frame.png?...`` URL again without a request, so a view timed again would not be rendered
    again in the serve page (the notebook's blob URLs are new for every frame anyway)."""
    dx, dy = (v[1] - v[0]) * 1e-7 * k, (v[3] - v[2]) * 1e-7 * k
    return (v[0] + dx, v[1] + dx, v[2] + dy, v[3] + dy)


def _med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def _summary(samples: dict) -> dict:
    """Per view and overall medians of each recorded point, from ``{view: [sample, ...]}``."""
    keys = ("total", "bytes", "after_bytes", "event_sent", "patch", "request_start",
            "response_start", "kernel_sent")
    per = {name: {k: _med([s.get(k) for s in got]) for k in keys} for name, got in samples.items()}
    every = [s for got in samples.values() for s in got]
    overall = {k: _med([s.get(k) for s in every]) for k in keys}
    return {"per_view": per, "overall": overall, "n": len(every)}


#: the steps of a frame, per page: (name, from, to) of the sample's points (seconds after t0)
STEPS = {
    "serve": [("request_to_event_sent", None, "event_sent"),
              ("server_to_url_patch", "event_sent", "patch"),
              ("patch_to_get", "patch", "request_start"),
              ("get_to_first_byte", "request_start", "response_start"),
              ("body", "response_start", "bytes"),
              ("page_load_decode_paint", "bytes", "total")],
    "notebook": [("request_to_event_sent", None, "event_sent"),
                 ("kernel", "event_sent", "kernel_sent"),
                 ("kernel_to_page", "kernel_sent", "bytes"),
                 ("page_patch_load_decode_paint", "bytes", "total")],
}


def _steps(which: str, every: list) -> dict:
    """Median seconds of each step of a frame (medians of per-frame differences)."""
    out = {}
    for name, a, b in STEPS["serve" if which == "serve" else "notebook"]:
        out[name] = _med([s[b] - (s[a] if a else 0.0) for s in every
                          if s.get(b) is not None and (a is None or s.get(a) is not None)])
    return out


def browser_frames(data: Path, vs, repeat: int, timeout: float = 120.0,
                   uncombined: bool = False) -> dict:
    """Pan/zoom frames in the browser, ``bigembed serve``'s page against ``bigembed.show()`` in
    JupyterLab, both in one headless Chromium (see the module's docstring for what is timed).

    ``vs``: ``[(name, (x0, x1, y0, y1)), ...]`` (``bench_notebook.views``); ``repeat``: timed
    rounds after one warm-up pass; ``timeout``: seconds a frame (or a page) is waited for at
    most. ``uncombined``: also a second notebook whose widget has jupyter_bokeh's
    ``combine_events`` off (``notebook_uncombined``; ``show()`` turns it on).

    Returns per view the medians in seconds (``serve_s``, ``notebook_s``, ``ratio`` =
    notebook / serve), the overall medians (``serve_median_s``, ``notebook_median_s``,
    ``ratio_median``), per page the medians of each point recorded (``bytes``, ``after_bytes``,
    ``event_sent``, ...), the medians of each step of a frame (``steps``: see :data:`STEPS`),
    every sample, and ``missing`` (frames that never came: page, view,
    round).
    """
    from ._serve import served

    data = Path(data)
    names = ["serve", "notebook"] + (["notebook_uncombined"] if uncombined else [])
    cells = {"pan": _show_code(data)}
    if uncombined:
        cells["pan_uncombined"] = _show_code(data, combine_events=False)
    samples = {w: {n: [] for n, _ in vs} for w in names}
    missing = []
    with served(data) as (root, serve_start), _jupyterlab(data, timeout, cells) as lab, \
            _browser() as browser:
        log.info("opening the serve page ...")
        pages = {"serve": _open_serve(browser, root, timeout)}
        for which, nb in (("notebook", "pan"), ("notebook_uncombined", "pan_uncombined")):
            if which in names:
                log.info("opening %s in JupyterLab and running its show() cell ...", nb)
                t = time.perf_counter()
                pages[which] = _open_notebook(browser, lab[nb], timeout)
                log.info("its cell shows the map after %.1fs", time.perf_counter() - t)

        def away_and_back(which, name, v, rnd):
            page = pages[which]
            a = _goto(page, _away(v), timeout)
            if a.get("timeout"):
                missing.append({"page": which, "view": name + " (away)", "round": rnd,
                                "state": a.get("state")})
            r = _goto(page, v, timeout)
            if r.get("timeout"):
                missing.append({"page": which, "view": name, "round": rnd,
                                "state": r.get("state")})
                return None
            return _sample(r)

        log.info("warm-up pass (%d views, %d pages) ...", len(vs), len(names))
        for name, v in vs:
            for which in names:
                away_and_back(which, name, v, "warm-up")
        for rnd in range(repeat):
            log.info("round %d/%d ...", rnd + 1, repeat)
            for name, v in vs:
                for which in names:
                    s = away_and_back(which, name, _nudged(v, rnd + 1), rnd)
                    if s is not None:
                        samples[which][name].append(s)
    summ = {w: _summary(samples[w]) for w in names}
    sv = summ["serve"]

    def ratio(a, b):
        return a / b if a and b else None

    per = {}
    for name, _ in vs:
        b = sv["per_view"][name]["total"]
        per[name] = {"serve_s": b}
        for w in names[1:]:
            a = summ[w]["per_view"][name]["total"]
            per[name].update({f"{w}_s": a, "ratio" if w == "notebook" else f"ratio_{w}":
                              ratio(a, b)})
        for w in names:
            per[name][f"{w}_bytes_s"] = summ[w]["per_view"][name]["bytes"]
            per[name][f"{w}_after_bytes_s"] = summ[w]["per_view"][name]["after_bytes"]
    out = {"per_view": per, "serve_median_s": sv["overall"]["total"]}
    for w in names[1:]:
        a = summ[w]["overall"]["total"]
        out[f"{w}_median_s"] = a
        out["ratio_median" if w == "notebook" else f"ratio_{w}_median"] = ratio(
            a, sv["overall"]["total"])
    out.update(summ)
    out["steps"] = {w: _steps(w, [s for g in samples[w].values() for s in g]) for w in names}
    out.update({"missing": missing, "serve_start_s": serve_start, "samples": samples,
                "serve_frames_fetched": sum(s.get("fetched", 0) for g in samples["serve"].values()
                                            for s in g),
                "serve_frames_timed": sv["n"]})
    if out["serve_frames_fetched"] < sv["n"]:
        log.warning("only %d of the serve page's %d timed frames show a /frame.png request "
                    "(Resource Timing): the others may have come from Chromium's image memory",
                    out["serve_frames_fetched"], sv["n"])
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True,
                    help="a dataset with a layout (only read), or where to build one of --n points")
    ap.add_argument("--n", type=int, default=None,
                    help="points, when --data has no dataset (20,000 by default)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=120.0,
                    help="seconds a frame or a page is waited for at most")
    ap.add_argument("--uncombined", action="store_true",
                    help="also a notebook whose widget has jupyter_bokeh's combine_events off")
    ap.add_argument("--out", default="benchmarks/results/notebook-browser.json")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    os.environ.setdefault("BIGEMBED_NO_PROGRESS", "1")
    data = Path(args.data)
    if not (data / "manifest.json").exists():
        make_dataset(data, args.n or 20_000)
    from bigembed.dataset.reader import Dataset
    from bigembed.view.frames import FrameRenderer

    ds = Dataset.open(data, verify="none")
    if not ds.manifest.get("layouts"):
        print(f"--data: {data} has no layout; run `bigembed reduce {data}` first "
              f"(this benchmark only reads an existing dataset)", file=sys.stderr)
        return 2
    vs = views(FrameRenderer(ds).default_range())
    res = {"n": ds.rows, "views": dict(vs)}
    del ds
    res["frames"] = browser_frames(data, vs, args.repeat, args.timeout, args.uncombined)
    path = write_results(args.out, results_doc("notebook-browser", res, params=vars(args)))
    f = res["frames"]
    short = {k: v for k, v in f.items() if k.endswith("_median_s") or k.startswith("ratio")}
    short["steps"] = f["steps"]
    print(json.dumps({"per_view": f["per_view"], **short, "missing": f["missing"]}, indent=1))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
