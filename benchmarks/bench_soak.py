"""Soak: many clients against one real ``bigembed serve`` on 127.0.0.1, for minutes.

    python -m benchmarks.bench_soak [--clients 20] [--minutes 10] [--n 1000000]
                                    [--session-lifetime 10] [--out benchmarks/results/soak.json]

A synthetic dataset (``bigembed synth`` + a PCA layout, ``--n`` points) is served by the CLI,
as a user runs it, with unused sessions discarded after ``--session-lifetime`` seconds. Each
client loops over a mix of what a browser does: a page load (``GET /`` plus the websocket
session a browser opens: ACK, pull of the document, close), frames at random zooms (1x to
4096x, 800 x 800, density or label colouring), neighbour lookups (``/api/neighbors``) and
box selections (``/api/select``). Reported: requests and errors per type (zero errors
expected; a 503 "too many frames in flight" counts as shed, not as an error), median and p95
latency per type, RSS over time, and RSS after every session has expired against the
baseline measured before the load. Bounded: the load stops after ``--minutes``, each request
has a 60 s timeout.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

import numpy as np

log = logging.getLogger("bench_soak")

TIMEOUT_S = 60
ZOOMS = (1, 4, 16, 64, 256, 1024, 4096)
#: the share of each request type in a client's loop
MIX = (("page", 1), ("frame", 6), ("neighbors", 2), ("select", 1))


# -- a browser's requests ---------------------------------------------------------------------

def get(base: str, path: str, timeout: float = TIMEOUT_S) -> tuple[int, bytes]:
    """(status, body) of a GET; 4xx/5xx are returned, not raised."""
    try:
        with urllib.request.urlopen(base + path, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def page_load(base: str, timeout: float = TIMEOUT_S) -> int:
    """What a browser does to show the map: ``GET /``, then open the session's websocket
    (subprotocol ``bokeh, TOKEN``, this server's Origin), wait for the ACK, pull the
    document, close. The session then lingers unused until the server discards it.
    Returns the HTTP status of the page (the websocket raises on failure)."""
    import websocket
    from bokeh.protocol import Protocol

    st, page = get(base, "/", timeout)
    if st != 200:
        return st
    m = re.search(rb'"token":\s*"([^"]+)"', page)
    if not m:
        raise RuntimeError("no session token in the page")
    ws = websocket.create_connection(base.replace("http://", "ws://") + "/ws",
                                     subprotocols=["bokeh", m.group(1).decode()],
                                     origin=base, timeout=timeout)
    try:
        def message():  # header, metadata, content (+ buffers, none here)
            header = json.loads(ws.recv())
            ws.recv()
            ws.recv()
            for _ in range(header.get("num_buffers", 0)):
                ws.recv()
            return header["msgtype"]

        if message() != "ACK":
            raise RuntimeError("no ACK from the server")
        req = Protocol().create("PULL-DOC-REQ")
        for part in (req.header_json, req.metadata_json, req.content_json):
            ws.send(part)
        if message() != "PULL-DOC-REPLY":
            raise RuntimeError("no document from the server")
    finally:
        ws.close()
    return st


def rss_mb(pid: int) -> float:
    import psutil

    return psutil.Process(pid).memory_info().rss / 2**20


# -- the server -------------------------------------------------------------------------------

def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(dataset, *extra, timeout: float = 300):
    """``bigembed serve DATASET`` on a free loopback port: (process, base url)."""
    port = free_port()
    env = dict(os.environ, BIGEMBED_NO_PROGRESS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "bigembed", "serve", str(dataset), "--port",
                             str(port), *map(str, extra)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)
    lines: list[str] = []
    ready = threading.Event()

    def pump():
        for line in proc.stdout:
            lines.append(line)
            if "bigembed serve: serving" in line:
                ready.set()
        ready.set()

    threading.Thread(target=pump, daemon=True).start()
    if not ready.wait(timeout) or proc.poll() is not None:
        proc.kill()
        raise RuntimeError("bigembed serve did not start:\n" + "".join(lines[-30:]))
    proc._bigembed_lines = lines
    return proc, f"http://127.0.0.1:{port}"


def stop_server(proc) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=20)


# -- the load ---------------------------------------------------------------------------------

class Client(threading.Thread):
    """One simulated user: a loop over :data:`MIX` until ``stop`` is set."""

    def __init__(self, base, n, extent, stop, seed):
        super().__init__(daemon=True)
        self.base, self.n, self.extent, self.stop = base, n, extent, stop
        self.rng = random.Random(seed)
        self.times: dict = {k: [] for k, _ in MIX}
        self.errors: dict = {k: 0 for k, _ in MIX}
        self.shed = 0
        self.examples: list = []

    def _frame(self):
        (x0, x1), (y0, y1) = self.extent
        z = self.rng.choice(ZOOMS)
        cx, cy = self.rng.uniform(x0, x1), self.rng.uniform(y0, y1)
        hw, hh = (x1 - x0) / z / 2, (y1 - y0) / z / 2
        color = self.rng.choice(("density", "label"))
        return get(self.base, f"/frame.png?x0={cx - hw!r}&x1={cx + hw!r}&y0={cy - hh!r}"
                              f"&y1={cy + hh!r}&w=800&h=800&color={color}")[0]

    def _select(self):
        (x0, x1), (y0, y1) = self.extent
        w, h = (x1 - x0) / 20, (y1 - y0) / 20
        cx, cy = self.rng.uniform(x0, x1 - w), self.rng.uniform(y0, y1 - h)
        return get(self.base, f"/api/select?box={cx!r},{cx + w!r},{cy!r},{cy + h!r}")[0]

    def run(self):
        kinds = [k for k, w in MIX for _ in range(w)]
        do = {"page": lambda: page_load(self.base),
              "frame": self._frame,
              "neighbors": lambda: get(self.base, f"/api/neighbors?id="
                                                  f"{self.rng.randrange(self.n)}&k=10")[0],
              "select": self._select}
        while not self.stop.is_set():
            kind = self.rng.choice(kinds)
            t0 = time.perf_counter()
            try:
                st = do[kind]()
            except Exception as e:  # a timeout, a refused websocket: an error of this type
                st = repr(e)[:200]
            dt = time.perf_counter() - t0
            if st == 503 and kind == "frame":
                self.shed += 1
            elif st != 200:
                self.errors[kind] += 1
                if len(self.examples) < 5:
                    self.examples.append(f"{kind}: {st}")
            else:
                self.times[kind].append(dt)


def summarise(clients) -> dict:
    out = {}
    for kind, _ in MIX:
        t = np.concatenate([np.asarray(c.times[kind], float) for c in clients])
        out[kind] = {"requests": int(len(t)), "errors": int(sum(c.errors[kind] for c in clients)),
                     "median_s": float(np.median(t)) if len(t) else None,
                     "p95_s": float(np.percentile(t, 95)) if len(t) else None,
                     "max_s": float(t.max()) if len(t) else None}
    out["frame"]["shed_503"] = int(sum(c.shed for c in clients))
    return out


def soak(base, pid, *, n, clients, seconds, lifetime_s, sample_s=2.0) -> dict:
    extent = _extent(base, n)
    # Warm round: the same mix for a while (Bokeh's templates, colourings, pyramid levels and
    # allocator arenas are made once), then every session expires: the baseline is after it.
    warm = threading.Event()
    ws = [Client(base, n, extent, warm, seed=1000 + i) for i in range(clients)]
    for c in ws:
        c.start()
    time.sleep(min(60.0, max(10.0, seconds / 10)))
    warm.set()
    for c in ws:
        c.join(timeout=TIMEOUT_S + 5)
    time.sleep(lifetime_s * 2 + 2)
    baseline = rss_mb(pid)
    stop = threading.Event()
    cs = [Client(base, n, extent, stop, seed=i) for i in range(clients)]
    rss = []
    t0 = time.monotonic()
    for c in cs:
        c.start()
    while time.monotonic() - t0 < seconds:
        rss.append((round(time.monotonic() - t0, 1), round(rss_mb(pid), 1)))
        time.sleep(sample_s)
    stop.set()
    for c in cs:
        c.join(timeout=TIMEOUT_S + 5)
    peak = max(r for _, r in rss)
    # every session expires after lifetime_s unused; the server checks every lifetime_s / 2
    deadline = time.monotonic() + lifetime_s * 3 + 30
    after = rss_mb(pid)
    while time.monotonic() < deadline and after > 1.10 * baseline:
        time.sleep(1.0)
        after = rss_mb(pid)
    res = summarise(cs)
    return {"by_type": res, "errors": int(sum(v["errors"] for v in res.values())),
            "error_examples": [e for c in cs for e in c.examples][:10],
            "seconds": round(time.monotonic() - t0, 1),
            "rss_mb": {"baseline": round(baseline, 1), "peak": round(peak, 1),
                       "after_sessions_expired": round(after, 1),
                       "after_over_baseline": round(after / baseline, 3),
                       "over_time": rss}}


def _extent(base, n, probes: int = 20):
    """The layout's extent, as the API reports it: the (x, y) of the 50 nearest neighbours of
    ``probes`` random points (1st to 99th percentile)."""
    rng = random.Random(0)
    xs, ys = [], []
    for _ in range(probes):
        st, body = get(base, f"/api/neighbors?id={rng.randrange(n)}&k=50")
        if st != 200:
            raise RuntimeError(f"the server does not answer: {st} {body[:200]!r}")
        for nb in json.loads(body)["neighbors"]:
            xs.append(nb["x"])
            ys.append(nb["y"])
    return tuple(np.percentile(xs, [1, 99]).tolist()), tuple(np.percentile(ys, [1, 99]).tolist())


def main(argv=None):
    from bigembed.bench.harness import results_doc, write_results

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--session-lifetime", type=float, default=10.0)
    ap.add_argument("--out", default="benchmarks/results/soak.json")
    args = ap.parse_args(argv)
    if not (1 <= args.clients <= 500 and 0 < args.minutes <= 120 and 1000 <= args.n):
        ap.error("--clients 1..500, --minutes up to 120, --n at least 1000")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    env = dict(os.environ, BIGEMBED_NO_PROGRESS="1")
    with tempfile.TemporaryDirectory(prefix="bench-soak-", ignore_cleanup_errors=True) as tmp:
        ds = os.path.join(tmp, "ds")
        t0 = time.perf_counter()
        for cmd in (["synth", ds, "--n", str(args.n), "--dim", "32", "--clusters", "20"],
                    ["reduce", ds, "--method", "pca"]):
            subprocess.run([sys.executable, "-m", "bigembed", *cmd], check=True, env=env,
                           capture_output=True, text=True)
        log.info("dataset of %d points made in %.0fs", args.n, time.perf_counter() - t0)
        t0 = time.perf_counter()
        proc, base = start_server(ds, "--session-lifetime", args.session_lifetime)
        startup = time.perf_counter() - t0
        log.info("serving at %s (started in %.1fs)", base, startup)
        try:
            res = soak(base, proc.pid, n=args.n, clients=args.clients,
                       seconds=args.minutes * 60, lifetime_s=args.session_lifetime)
        finally:
            stop_server(proc)
        res["server_startup_s"] = round(startup, 1)
        res["server_log_tail"] = [l.rstrip() for l in proc._bigembed_lines[-5:]]
    for kind, r in res["by_type"].items():
        log.info("%-9s %6d requests, %d errors, median %.3fs, p95 %.3fs", kind, r["requests"],
                 r["errors"], r["median_s"] or 0, r["p95_s"] or 0)
    m = res["rss_mb"]
    log.info("RSS: baseline %.0f MB, peak %.0f MB, after sessions expired %.0f MB (x%.3f)",
             m["baseline"], m["peak"], m["after_sessions_expired"], m["after_over_baseline"])
    path = write_results(args.out, results_doc("soak", res, params=vars(args)))
    log.info("wrote %s", path)


if __name__ == "__main__":
    main()
