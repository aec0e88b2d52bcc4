"""``bigembed.show()`` in a notebook kernel against ``bigembed serve``, in the same run.

    python -m benchmarks.bench_notebook [--n 1000000] [--repeat 3] [--data DIR] [--prewarm]
        [--frames-only] [--browser] [--out benchmarks/results/notebook.json]

One dataset of ``n`` points (synthetic, 16-d, a PCA layout; built once under ``--data``).

- **first frame**: a real IPython kernel (``jupyter_client``, the one a notebook runs) opens the
  dataset (untimed: "after the dataset is open"), then runs ``m = bigembed.show(ds)``; timed
  from sending the cell to the client receiving the widget's display message, whose document
  carries the first frame (kernel-side figures beside it: the renderer build, the frame). Each
  repeat is a fresh kernel (``cold``: imports, Z-order sort, pyramid and JIT loads included);
  ``again`` is a second ``show`` of the same dataset in the same kernel (renderers reused).
  ``--prewarm`` also reports a kernel that imported ``bigembed.notebook`` and Bokeh before.
- **pan/zoom frames**: the same sequence of views (the full map, zooms 2-64x, pans) at
  800 x 800, colouring ``label``, each view reached from another one (a new frame is rendered).
  A pan is timed the same way in both, from the message a pan in the page sends to the new
  frame's last byte at the client:

  - notebook ``pan``: the comm message BokehJS sends (the plot's ``RangesUpdate`` event, as
    jupyter_bokeh's front end wraps it), to the comm message carrying the new frame (render on
    the kernel's pool, PNG, a document patch with the PNG as a binary buffer);
  - notebook ``jserver_pan``: the same comm message through a real Jupyter server (the
    kernel's websocket, as the notebook page holds it), to the websocket message carrying the
    frame: the notebook's real transport, with bigembed's server extension (TCP_NODELAY) on;
    ``jserver_pan_nagle``: the same with the extension off (Tornado's default, Nagle on);
  - notebook ``set_view``: ``m.set_view(...)`` run in a cell, to the same comm message;
  - serve ``pan``: the same event over the page's Bokeh websocket, the server's patch of the
    frame glyph's URL, the GET of that frame (a kept-alive connection, as a browser's);
  - serve ``get``: a bare ``GET /frame.png`` of the view (the render and HTTP alone).

  Medians per view and overall, and the ratios of each notebook way to serve's pan (the
  headline: ``jserver_pan``, what a notebook page gets), and notebook pan / serve get.

The browser's own PNG decode and paint are outside these timings (the same work in both).
``--browser`` adds the same views panned in headless Chromium, serve's page against the cell in
a real JupyterLab, to the frame painted (``benchmarks/bench_notebook_browser.py``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from bigembed.bench.harness import results_doc, write_results

log = logging.getLogger("bench_notebook")

W = H = 800
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def make_dataset(path: Path, n: int) -> Path:
    from bigembed.dataset.reader import Dataset
    from bigembed.ingest.synth import synth
    from bigembed.reduce.run import reduce

    from bigembed.view.frames import FrameRenderer
    from bigembed.view.store import build_map

    if not ((path / "manifest.json").exists() and Dataset.open(path, verify="none").rows == n
            and Dataset.open(path, verify="none").manifest.get("layouts")):
        synth(path, n=n, dim=16, clusters=10, seed=0, overwrite=True, progress=False)
        reduce(path, method="pca", progress=False)
    # the layout's map artifacts (Z-order, pyramid, label colouring), derived once with the
    # layout, as `bigembed serve` or a first show() leaves them: every kernel then maps them
    t0 = time.perf_counter()
    b = build_map(path, progress=False)
    FrameRenderer(path).colouring("label")
    log.info("map artifacts of %d points: %s in %.1fs", n, "built" if b.built else "there",
             time.perf_counter() - t0)
    return path


def views(full):
    (x0, x1), (y0, y1) = full
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    out = [("full", (x0, x1, y0, y1))]
    for z in (2, 4, 16, 64):
        hw, hh = (x1 - x0) / z / 2, (y1 - y0) / z / 2
        out.append((f"zoom{z}", (cx - hw, cx + hw, cy - hh, cy + hh)))
        out.append((f"zoom{z}-pan", (cx - hw + hw / 2, cx + hw + hw / 2, cy - hh, cy + hh)))
    return out


class Kernel:
    """A real IPython kernel and a blocking client (as a notebook server holds)."""

    def __init__(self):
        from jupyter_client.manager import start_new_kernel

        env = dict(os.environ, BIGEMBED_NO_PROGRESS="1")
        self.km, self.kc = start_new_kernel(kernel_name="python3", env=env)

    def run(self, code: str, *, until=None, timeout: float = 600.0):
        """Execute ``code``; return (seconds until ``until(msg)`` is true for an iopub message,
        or until the cell is idle, stdout text)."""
        t0 = time.perf_counter()
        mid = self.kc.execute(code)
        out, hit, idle = [], None, False
        deadline = t0 + timeout
        while time.perf_counter() < deadline and not (idle and (until is None or hit)):
            try:
                msg = self.kc.get_iopub_msg(timeout=max(0.05, deadline - time.perf_counter()))
            except Exception:
                break
            t = time.perf_counter()
            if until is not None and hit is None and until(msg):
                hit = t - t0
            if msg["parent_header"].get("msg_id") != mid:
                continue
            kind, c = msg["msg_type"], msg["content"]
            if kind == "stream":
                out.append(c["text"])
            elif kind == "error":
                raise RuntimeError(f"kernel error: {c['ename']}: {c['evalue']}")
            elif kind == "status" and c["execution_state"] == "idle":
                idle = True
                if until is None:
                    hit = t - t0
        if hit is None:
            raise TimeoutError(f"no answer in {timeout}s to {code[:60]!r}")
        return hit, "".join(out)

    def close(self):
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=True)


def _is_widget(msg) -> bool:
    return (msg["msg_type"] == "display_data"
            and "application/vnd.jupyter.widget-view+json" in msg["content"]["data"])


def _is_frame(msg) -> bool:
    """A comm message carrying a new frame: the PNG bytes as a binary buffer (frames after the
    first), or a PNG data URL in a document patch."""
    if msg["msg_type"] != "comm_msg":
        return False
    if any(bytes(b[:8]) == PNG_MAGIC for b in msg.get("buffers") or ()):
        return True
    return "data:image/png;base64" in json.dumps(msg["content"]["data"])


def first_frames(data: Path, repeat: int, prewarm: bool) -> dict:
    cold, again, kernel_side, warm_imports = [], [], [], []
    for _ in range(repeat):
        k = Kernel()
        try:
            k.run("import bigembed, time\nds = bigembed.Dataset.open(%r)" % str(data))
            if prewarm:
                k.run("import bigembed.notebook, bokeh.models, jupyter_bokeh.widgets")
            t, _ = k.run("t0 = time.perf_counter(); m = bigembed.show(ds, color='label'); "
                         "t1 = time.perf_counter()", until=_is_widget)
            (warm_imports if prewarm else cold).append(t)
            _, out = k.run("import json; print(json.dumps({'show': t1 - t0, 'frame': "
                           "m._s.last_frame.seconds, 'mode': m._s.last_frame.mode}))")
            kernel_side.append(json.loads(out))
            t2, _ = k.run("m2 = bigembed.show(ds, color='label')", until=_is_widget)
            again.append(t2)
        finally:
            k.close()
    key = "with_imports_done" if prewarm else "cold_kernel"
    return {key: {"median_s": statistics.median(warm_imports or cold),
                  "all_s": warm_imports or cold},
            "again_same_kernel": {"median_s": statistics.median(again), "all_s": again},
            "kernel_side": kernel_side}


def _ranges_event(plot_id: str, v) -> dict:
    """The plot's ``RangesUpdate`` event as BokehJS serializes it when the user pans or zooms
    to the view ``v`` = (x0, x1, y0, y1)."""
    entries = [["model", {"id": plot_id}]] + [
        [k, float(x)] for k, x in zip(("x0", "x1", "y0", "y1"), v)]
    return {"type": "event", "name": "rangesupdate", "values": {"type": "map", "entries": entries}}


def _pan_message(comm_id: str, plot_id: str, v) -> dict:
    """The comm message BokehJS sends when the user pans or zooms the map in the cell: the
    ``RangesUpdate`` event, as jupyter_bokeh's front end wraps it (``jsevent``)."""
    return {"comm_id": comm_id,
            "data": {"method": "custom",
                     "content": {"event": "jsevent", "kind": "MessageSent",
                                 "msg_type": "bokeh_event",
                                 "msg_data": _ranges_event(plot_id, v)}}}


def _away(v):
    """A view the map does not show (one unit wider on each side), visited before ``v`` so the
    timed one renders a new frame."""
    return (v[0] - 1, v[1] + 1, v[2] - 1, v[3] + 1)


def _time_views(go, vs, repeat: int, warm: bool = True) -> dict:
    """``go(view) -> seconds`` for each view of ``vs`` reached from :func:`_away`: a warm-up
    pass of every view first (``warm``: pyramid levels, JIT), then ``repeat`` timed rounds."""
    def once(v):
        go(_away(v))
        return go(v)

    if warm:
        for _, v in vs:
            once(v)
    return {name: [once(v) for _ in range(repeat)] for name, v in vs}


def notebook_frames(data: Path, vs, repeat: int) -> dict:
    """Pan/zoom frames in the cell, two ways: ``pan`` sends the comm message a pan in the page
    sends (the plot's RangesUpdate event) and times it to the comm message carrying the new
    frame, the path a user's drag takes; ``set_view`` runs ``m.set_view(...)`` in a cell (an
    execute request and its reply around the same work)."""
    k = Kernel()
    try:
        k.run("import bigembed\nm = bigembed.show(%r, color='label')" % str(data),
              until=_is_widget)
        _, ids = k.run("print(m.widget.comm.comm_id, m._s.plot.id)")
        comm_id, plot_id = ids.split()

        def pan(v, timeout=120.0):
            msg = k.kc.session.msg("comm_msg", _pan_message(comm_id, plot_id, v))
            t0 = time.perf_counter()
            k.kc.shell_channel.send(msg)
            deadline = t0 + timeout
            while time.perf_counter() < deadline:
                try:
                    m = k.kc.get_iopub_msg(timeout=max(0.05, deadline - time.perf_counter()))
                except Exception:
                    break
                if _is_frame(m):
                    return time.perf_counter() - t0
            raise TimeoutError(f"no frame in {timeout}s after a pan to {v}")

        def set_view(v):
            return k.run("m.set_view(%r, %r, %r, %r)" % tuple(v), until=_is_frame,
                         timeout=120)[0]

        out = {"pan": _time_views(pan, vs, repeat),
               "set_view": _time_views(set_view, vs, repeat, warm=False)}
        _, n = k.run("print(m._s.frames)")
        log.info("frames drawn in the cell: %s", n.strip())
        return out
    finally:
        k.close()


class JupyterServer:
    """A real Jupyter server on a free 127.0.0.1 port (token set, no browser), a kernel in it
    and the kernel's websocket, as a notebook page holds it: the notebook's real transport
    (kernel -> Jupyter server -> page) without the browser. ``nodelay``: bigembed's server
    extension (TCP_NODELAY on kernel websockets) on, as installed, or off."""

    def __init__(self, workdir: Path, nodelay: bool = True, timeout: float = 120.0):
        import secrets
        import subprocess
        import uuid

        import websocket

        from ._serve import free_port, wait_until_up

        port = free_port()
        self.token, self.session, self.timeout = secrets.token_hex(16), uuid.uuid4().hex, timeout
        workdir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, BIGEMBED_NO_PROGRESS="1", JUPYTER_PLATFORM_DIRS="1",
                   JUPYTER_RUNTIME_DIR=str(workdir / "run"))
        ext = {"bigembed.jupyter_server_extension": nodelay, "jupyterlab": False,
               "panel.io.jupyter_server_extension": False, "jupyter_lsp": False,
               "jupyter_server_terminals": False, "notebook_shim": False}
        log_path = workdir / f"jupyter-server-{port}.log"
        self.log = open(log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "jupyter_server", "--no-browser", "--ip=127.0.0.1",
             f"--port={port}", "--port-retries=0", f"--IdentityProvider.token={self.token}",
             f"--ServerApp.root_dir={workdir}", "--allow-root",
             f"--ServerApp.jpserver_extensions={ext!r}"],
            stdout=self.log, stderr=subprocess.STDOUT, env=env)
        base = f"http://127.0.0.1:{port}"
        try:
            wait_until_up(f"{base}/api/status?token={self.token}", self.proc, timeout,
                          "the Jupyter server", log_path)
        except RuntimeError:
            self.close()
            raise
        req = urllib.request.Request(f"{base}/api/kernels?token={self.token}",
                                     data=b'{"name": "python3"}', method="POST",
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            kid = json.load(r)["id"]
        self.ws = websocket.create_connection(
            f"ws://127.0.0.1:{port}/api/kernels/{kid}/channels?token={self.token}"
            f"&session_id={self.session}", timeout=timeout)

    def message(self, msg_type: str, content: dict) -> dict:
        import uuid

        return {"header": {"msg_id": uuid.uuid4().hex, "msg_type": msg_type, "username": "b",
                           "session": self.session, "date": "", "version": "5.3"},
                "parent_header": {}, "metadata": {}, "content": content, "channel": "shell",
                "buffers": []}

    def recv(self) -> dict:
        """The next kernel message from the websocket (JSON, or the binary framing the server
        uses for messages with buffers: a count, offsets, the JSON, the buffers)."""
        r = self.ws.recv()
        if isinstance(r, str):
            return json.loads(r)
        n = int.from_bytes(r[:4], "big")
        offs = [int.from_bytes(r[4 + 4 * i:8 + 4 * i], "big") for i in range(n)] + [len(r)]
        msg = json.loads(r[offs[0]:offs[1]])
        msg["buffers"] = [r[offs[i]:offs[i + 1]] for i in range(1, n)]
        return msg

    def execute(self, code: str, until=None) -> str:
        m = self.message("execute_request", {"code": code, "silent": False,
                                             "store_history": False, "user_expressions": {},
                                             "allow_stdin": False, "stop_on_error": True})
        self.ws.send(json.dumps(m))
        out, idle, hit = [], False, until is None
        deadline = time.perf_counter() + self.timeout
        while not (idle and hit):
            if time.perf_counter() > deadline:
                raise TimeoutError(f"no answer in {self.timeout}s to {code[:60]!r}")
            r = self.recv()
            if until is not None and until(r):
                hit = True
            if r["parent_header"].get("msg_id") != m["header"]["msg_id"]:
                continue
            if r["msg_type"] == "stream":
                out.append(r["content"]["text"])
            elif r["msg_type"] == "error":
                raise RuntimeError(f"kernel error: {r['content']['ename']}: "
                                   f"{r['content']['evalue']}")
            elif r["msg_type"] == "status" and r["content"]["execution_state"] == "idle":
                idle = True
        return "".join(out)

    def close(self):
        if getattr(self, "ws", None) is not None:
            self.ws.close()
        from ._serve import stop

        stop(self.proc)
        self.log.close()


def jupyter_server_frames(data: Path, vs, repeat: int, nodelay: bool = True) -> dict:
    """The notebook's ``pan`` through a real Jupyter server: the comm message of a pan sent on
    the kernel's websocket, timed to the websocket message carrying the new frame."""
    js = JupyterServer(Path(tempfile.mkdtemp(prefix="bigembed-bench-jserver-")), nodelay)
    try:
        js.execute("import bigembed\nm = bigembed.show(%r, color='label')" % str(data),
                   until=lambda r: r["msg_type"] == "display_data")
        comm_id, plot_id = js.execute("print(m.widget.comm.comm_id, m._s.plot.id)").split()

        def pan(v):
            js.ws.send(json.dumps(js.message("comm_msg", _pan_message(comm_id, plot_id, v))))
            t0 = time.perf_counter()
            while time.perf_counter() - t0 < js.timeout:
                if _is_frame(js.recv()):
                    return time.perf_counter() - t0
            raise TimeoutError(f"no frame in {js.timeout}s after a pan to {v}")

        return _time_views(pan, vs, repeat)
    finally:
        js.close()


class ServePage:
    """What a browser holds of a ``bigembed serve`` page: its Bokeh websocket session (the
    page's token, this server's Origin, the ACK, the document pulled) and one keep-alive HTTP
    connection for the frames, as the page's image requests use."""

    def __init__(self, root: str, timeout: float = 120.0):
        import http.client
        import re

        import websocket
        from bokeh.protocol import Protocol

        self.timeout = timeout
        with urllib.request.urlopen(root + "/", timeout=timeout) as r:
            page = r.read()
        m = re.search(rb'"token":\s*"([^"]+)"', page)
        if not m:
            raise RuntimeError("no session token in the page")
        self.ws = websocket.create_connection(root.replace("http://", "ws://") + "/ws",
                                              subprotocols=["bokeh", m.group(1).decode()],
                                              origin=root, timeout=timeout)
        if self.message()[0] != "ACK":
            raise RuntimeError("no ACK from the server")
        self.send(Protocol().create("PULL-DOC-REQ"))
        kind, content = self.message()
        if kind != "PULL-DOC-REPLY":
            raise RuntimeError(f"no document from the server ({kind})")
        m = re.search(r'"name":"Figure","id":"([^"]+)"', content)
        if not m:
            raise RuntimeError("no plot in the page's document")
        self.plot_id = m.group(1)
        host = root.split("//", 1)[1]
        self.http = http.client.HTTPConnection(host, timeout=timeout)

    def send(self, msg) -> None:
        for part in (msg.header_json, msg.metadata_json, msg.content_json):
            self.ws.send(part)

    def message(self) -> tuple[str, str]:
        """The next Bokeh protocol message: (type, content JSON text); buffers are skipped."""
        header = json.loads(self.ws.recv())
        self.ws.recv()
        content = self.ws.recv()
        for _ in range(2 * header.get("num_buffers", 0)):
            self.ws.recv()
        return header["msgtype"], content

    def pan(self, v) -> float:
        """Send the ``RangesUpdate`` event a pan in the page sends; wait for the server's
        patch of the frame glyph's URL; GET that frame to its last byte. Seconds."""
        import re

        from bokeh.protocol import Protocol

        cls = Protocol()._messages["PATCH-DOC"]
        msg = cls(cls.create_header(), {}, {"events": [
            {"kind": "MessageSent", "msg_type": "bokeh_event",
             "msg_data": _ranges_event(self.plot_id, v)}]})
        t0 = time.perf_counter()
        self.send(msg)
        deadline = t0 + self.timeout
        url = None
        while url is None:
            if time.perf_counter() > deadline:
                raise TimeoutError(f"no new frame URL in {self.timeout}s after a pan to {v}")
            kind, content = self.message()
            if kind == "PATCH-DOC":
                m = re.search(r'"(/frame\.png\?[^"]+)"', content)
                url = m.group(1) if m else None
        self.http.request("GET", url)
        r = self.http.getresponse()
        body = r.read()
        if r.status != 200 or body[:8] != PNG_MAGIC:
            raise RuntimeError(f"frame {url}: HTTP {r.status}")
        return time.perf_counter() - t0

    def close(self):
        self.ws.close()
        self.http.close()


def serve_frames(data: Path, vs, repeat: int) -> dict:
    """``bigembed serve``'s frames, two ways: ``pan``, the page's path for a pan (the
    ``RangesUpdate`` event over the page's websocket, the server's patch of the frame URL, the
    GET of that frame on a kept-alive connection), timed from the event sent to the frame's
    last byte, as the notebook's ``pan`` is; ``get``, a bare ``GET /frame.png`` of the view on a
    new connection (the render and HTTP alone)."""
    from ._serve import served

    with served(data) as (root, _):
        base = f"{root}/frame.png?layout=&color=label&w={W}&h={H}"

        def get(v):
            q = "&x0=%r&x1=%r&y0=%r&y1=%r" % v
            t0 = time.perf_counter()
            with urllib.request.urlopen(base + q, timeout=120) as r:
                r.read()
            return time.perf_counter() - t0

        for _, v in vs:
            get(v)
        page = ServePage(root)
        try:
            return {"pan": _time_views(page.pan, vs, repeat),
                    "get": {name: [get(v) for _ in range(repeat)] for name, v in vs}}
        finally:
            page.close()


#: (notebook way, serve way) compared: a pan in the page in both; a pan or a cell's set_view in
#: the notebook against serve's bare GET of the frame (render and HTTP alone)
PAIRS = (("pan", "pan"), ("jserver_pan", "pan"), ("jserver_pan_nagle", "pan"),
         ("set_view", "pan"), ("pan", "get"))


def compare_frames(nb: dict, sv: dict) -> dict:
    """Medians per view and overall of each way, and the notebook/serve ratio of each pair."""
    med = statistics.median
    out = {"per_view": {}}
    for name in sv["pan"]:
        row = {f"serve_{how}_s": med(sv[how][name]) for how in sv}
        row.update({f"notebook_{how}_s": med(nb[how][name]) for how in nb})
        row.update({f"ratio_{a}_vs_serve_{b}": row[f"notebook_{a}_s"] / row[f"serve_{b}_s"]
                    for a, b in PAIRS})
        out["per_view"][name] = row
    flat = {f"notebook_{how}": [t for v in got.values() for t in v] for how, got in nb.items()}
    flat.update({f"serve_{how}": [t for v in got.values() for t in v] for how, got in sv.items()})
    out.update({f"{k}_median_s": med(v) for k, v in flat.items()})
    out.update({f"ratio_{a}_vs_serve_{b}_median": med(flat[f"notebook_{a}"])
                / med(flat[f"serve_{b}"]) for a, b in PAIRS})
    out.update({f"{k}_all_s": v for k, v in (("notebook_" + h, g) for h, g in nb.items())})
    out.update({f"serve_{h}_all_s": g for h, g in sv.items()})
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--data", default=None, help="where the dataset is built (kept)")
    ap.add_argument("--prewarm", action="store_true")
    ap.add_argument("--frames-only", action="store_true", help="skip the first-frame kernels")
    ap.add_argument("--browser", action="store_true",
                    help="also the pans in headless Chromium (bench_notebook_browser)")
    ap.add_argument("--out", default="benchmarks/results/notebook.json")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    data = Path(args.data or Path(tempfile.gettempdir()) / f"bigembed-bench-notebook-{args.n}")
    make_dataset(data, args.n)
    from bigembed.dataset.reader import Dataset
    from bigembed.view.frames import FrameRenderer

    r = FrameRenderer(Dataset.open(data))
    vs = views(r.default_range())
    del r
    res = {"n": args.n, "views": {name: v for name, v in vs}}
    if not args.frames_only:
        log.info("first frame in a notebook kernel ...")
        res["first_frame"] = first_frames(data, args.repeat, False)
        if args.prewarm:
            warm = first_frames(data, args.repeat, True)
            res["first_frame"]["kernel_side_imports_done"] = warm.pop("kernel_side")
            res["first_frame"]["again_same_kernel_imports_done"] = warm.pop("again_same_kernel")
            res["first_frame"].update(warm)
    log.info("pan/zoom frames: notebook ...")
    nb = notebook_frames(data, vs, args.repeat)
    log.info("pan/zoom frames: notebook through a Jupyter server ...")
    nb["jserver_pan"] = jupyter_server_frames(data, vs, args.repeat)
    nb["jserver_pan_nagle"] = jupyter_server_frames(data, vs, args.repeat, nodelay=False)
    log.info("pan/zoom frames: bigembed serve ...")
    sv = serve_frames(data, vs, args.repeat)
    res["frames"] = compare_frames(nb, sv)
    if args.browser:
        from .bench_notebook_browser import browser_frames

        log.info("pan/zoom frames in Chromium: serve's page and the cell in JupyterLab ...")
        res["browser"] = browser_frames(data, vs, args.repeat)
    path = write_results(args.out, results_doc("notebook", res, params=vars(args)))
    print(json.dumps({"first_frame": {k: v.get("median_s") if isinstance(v, dict) else None
                                      for k, v in res.get("first_frame", {}).items()},
                      "frames": {k: v for k, v in res["frames"].items() if "all" not in k
                                 and k != "per_view"},
                      "browser": {k: v for k, v in res.get("browser", {}).items()
                                  if k.endswith("median_s") or k == "ratio_median"}},
                     indent=1))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
