"""The server for real on 127.0.0.1 (no browser): API answers, validation, origins, secrets."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request

import numpy as np
import pytest
from conftest import assert_clean_error, run_cli, start_serve, stop_serve

from bigembed.errors import InputError
from bigembed.server.app import is_loopback, normalise_origin, websocket_origins


def get(url, timeout=60):
    """(status, headers, body bytes) of a GET, without raising on 4xx/5xx."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def test_api_neighbors_same_as_cli(explorer_served):
    url, _, path = explorer_served
    st, hdr, body = get(f"{url}/api/neighbors?id=17&k=7")
    assert st == 200 and hdr["Content-Type"].startswith("application/json")
    api = json.loads(body)
    p = run_cli("neighbors", path, "--id", 17, "-k", 7, "--json", check=True)
    cli = json.loads(p.stdout)
    assert api["query"] == cli["query"]
    assert [n["id"] for n in api["neighbors"]] == [n["id"] for n in cli["neighbors"]]
    for a, c in zip(api["neighbors"], cli["neighbors"]):
        assert a["distance"] == pytest.approx(c["distance"])
        assert {k: a[k] for k in c} == pytest.approx(c)
        assert isinstance(a["neighbor_2d"], bool) and np.isfinite([a["x"], a["y"]]).all()
    assert api["also_2d"] == sum(n["neighbor_2d"] for n in api["neighbors"])
    # by key, too
    st, _, body = get(f"{url}/api/neighbors?key=synth-17&k=7")
    assert st == 200 and json.loads(body)["neighbors"] == api["neighbors"]


@pytest.mark.parametrize("query, frag", [
    ("id=-1&k=5", "id"), ("id=3000&k=5", "id"), ("id=abc", "integer"), ("id=1e3", "integer"),
    ("id=1&k=0", "k"), ("id=1&k=100000", "k"), ("id=1&k=1.5", "integer"), ("id=1&k=nan", "k"),
    ("k=5", "id"), ("id=1&space=nope", "space"), ("id=1&layout=nope", "layout"),
    ("key=not-a-key", "key"), ("id=" + "9" * 30000, "too long"),
])
def test_api_neighbors_bad_parameters(explorer_served, query, frag):
    url, _, _ = explorer_served
    st, hdr, body = get(f"{url}/api/neighbors?{query}")
    assert st == 400, (st, body)
    assert frag in json.loads(body)["error"]


def test_frame_endpoint(explorer_served):
    url, _, _ = explorer_served
    st, hdr, body = get(f"{url}/frame.png?x0=-20&x1=20&y0=-20&y1=20&w=300&h=200&color=label")
    assert st == 200 and hdr["Content-Type"] == "image/png" and body[:4] == b"\x89PNG"
    import io

    from PIL import Image

    assert Image.open(io.BytesIO(body)).size == (300, 200)
    assert hdr["X-Frame-Mode"].startswith("exact")
    st, hdr, body = get(f"{url}/frame.png?x0=-20&x1=20&y0=-20&y1=20&w=300&h=200"
                        f"&where=label:1%7C2;correct:False")
    assert st == 200 and body[:4] == b"\x89PNG"


@pytest.mark.parametrize("query, frag", [
    ("x0=nan&x1=1&y0=0&y1=1&w=10&h=10", "x0"), ("x0=0&x1=inf&y0=0&y1=1&w=10&h=10", "x1"),
    ("x0=2&x1=1&y0=0&y1=1&w=10&h=10", "x_range"), ("x0=0&x1=1&y0=0&y1=1&w=0&h=10", "w"),
    ("x0=0&x1=1&y0=0&y1=1&w=10&h=99999", "h"), ("x0=0&x1=1&y0=0&y1=1&w=10", "h"),
    ("x0=0&x1=1&y0=0&y1=1&w=10&h=10&color=nope", "color"),
    ("x0=0&x1=1&y0=0&y1=1&w=10&h=10&layout=nope", "layout"), ("", "x0"),
    ("x0=0&x1=1&y0=0&y1=1&w=10&h=10&where=label", "where"),
    ("x0=0&x1=1&y0=0&y1=1&w=10&h=10&where=label:99", "99"),
    ("x0=0&x1=1&y0=0&y1=1&w=10&h=10&where=nope:1", "nope"),
])
def test_frame_bad_parameters(explorer_served, query, frag):
    url, _, _ = explorer_served
    st, _, body = get(f"{url}/frame.png?{query}")
    assert st == 400, (st, body)
    assert frag in json.loads(body)["error"]


def test_select_and_export(explorer_served):
    url, _, path = explorer_served
    from bigembed.dataset.layouts import load_layout
    from bigembed.dataset.reader import Dataset

    ds = Dataset.open(path)
    lay = load_layout(ds)
    x0, x1 = (float(v) for v in np.percentile(lay.x, [30, 70]))
    y0, y1 = (float(v) for v in np.percentile(lay.y, [30, 70]))
    want = np.flatnonzero((lay.x >= x0) & (lay.x <= x1) & (lay.y >= y0) & (lay.y <= y1))
    st, _, body = get(f"{url}/api/select?box={x0!r},{x1!r},{y0!r},{y1!r}")
    assert st == 200
    js = json.loads(body)
    assert js["ids"] == want.tolist() and js["count"] == len(want) and js["total"] == 3000
    meta = ds.meta.iloc[want]
    assert js["error_rate"] == pytest.approx(1 - meta["correct"].mean())
    assert js["mean_confidence"] == pytest.approx(meta["confidence"].mean())
    assert sum(js["label_mix"].values()) == len(want)
    # a lasso (triangle) against a brute-force point-in-triangle test
    tri = [(x0, y0), (x1, y0), (x0, y1)]
    poly = ",".join(f"{a!r},{b!r}" for a, b in tri)
    st, _, body = get(f"{url}/api/select?poly={poly}")
    inside = want[(lay.x[want] - x0) / (x1 - x0) + (lay.y[want] - y0) / (y1 - y0) < 1]
    got = json.loads(body)["ids"]
    assert abs(len(got) - len(inside)) <= 2 and len(set(got) ^ set(inside.tolist())) <= 2
    st, hdr, body = get(f"{url}/api/select?box={x0!r},{x1!r},{y0!r},{y1!r}&format=csv")
    assert st == 200 and hdr["Content-Type"] == "text/csv"
    lines = body.decode().strip().splitlines()
    assert lines[0].startswith("id,") and len(lines) == len(want) + 1
    st, hdr, body = get(f"{url}/api/select?box={x0!r},{x1!r},{y0!r},{y1!r}&format=parquet")
    import io

    import pandas as pd

    assert st == 200 and pd.read_parquet(io.BytesIO(body))["id"].tolist() == want.tolist()
    for bad in ("box=1,2,3", "box=2,1,0,1", "poly=0,0,1,1", "box=a,b,c,d", "",
                "box=0,1,0,1&poly=0,0,1,1,1,0", "box=0,1,0,1&format=xls", "box=nan,1,0,1"):
        st, _, body = get(f"{url}/api/select?{bad}")
        assert st == 400, (bad, st, body)


def _token(url):
    st, _, page = get(url + "/")
    assert st == 200
    m = re.search(rb'"token":\s*"([^"]+)"', page) or re.search(rb"token=([A-Za-z0-9_.\-]+)", page)
    assert m, page[:2000]
    return m.group(1).decode()


@pytest.mark.parametrize("origin, ok", [
    (None, True), ("http://evil.example", False), ("http://127.0.0.1:{port}.evil.example", False),
    ("http://evil127.0.0.1:{port}", False), ("http://127.0.0.1:1", False),
    ("http://localhost:{port}", True),
])
def test_websocket_origin_allow_list_is_exact(explorer_served, origin, ok):
    import websocket

    url, port, _ = explorer_served
    origin = f"http://127.0.0.1:{port}" if origin is None else origin.format(port=port)
    token = _token(url)
    ws = websocket.WebSocket()
    try:
        ws.connect(f"ws://127.0.0.1:{port}/ws", origin=origin, subprotocols=["bokeh", token],
                   timeout=20)
        accepted = True
        ws.close()
    except websocket.WebSocketBadStatusException as e:
        assert e.status_code == 403, e
        accepted = False
    assert accepted is ok


def test_origin_rules():
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.4")
    assert normalise_origin("http://Example.org:8080") == "example.org:8080"
    assert normalise_origin("https://example.org") == "example.org:443"
    assert normalise_origin("example.org:81") == "example.org:81"
    for bad in ("*", "http://*.example.org", "ftp://x:1", "example.org", "http://x:1/path"):
        with pytest.raises(InputError):
            normalise_origin(bad)
    assert websocket_origins("127.0.0.1", 5006) == ["localhost:5006", "127.0.0.1:5006"]
    with pytest.raises(InputError, match="--allow-origin"):
        websocket_origins("0.0.0.0", 5006)
    assert websocket_origins("0.0.0.0", 5006, ["http://h.example:5006"]) == ["h.example:5006"]


@pytest.mark.parametrize("args, frag", [
    (["--address", "0.0.0.0"], "--allow-origin"),
    (["--port", "0"], "--port"),
    (["--secret", "short"], "--secret"),
    (["--allow-origin", "*", "--address", "0.0.0.0"], "--allow-origin"),
])
def test_serve_cli_bad_arguments(explorer_served, args, frag):
    _, _, path = explorer_served
    p = run_cli("serve", path, *args, timeout=120)
    assert_clean_error(p, frag)


def test_serve_cli_bad_dataset(tmp_path, small_ds):
    assert_clean_error(run_cli("serve", tmp_path / "nothing", timeout=120), "does not exist")
    assert_clean_error(run_cli("serve", small_ds, timeout=120), "no layout")


def test_signed_sessions(explorer_served):
    _, _, path = explorer_served
    secret = "s" * 40
    proc, url, port = start_serve(path, "--secret", secret)
    try:
        st, _, body = get(f"{url}/api/neighbors?id=1&k=3")
        assert st == 403 and "session" in json.loads(body)["error"]
        st, _, body = get(f"{url}/api/neighbors?id=1&k=3&session=forged-id")
        assert st == 403
        from bokeh.util.token import generate_session_id

        sid = generate_session_id(secret_key=secret.encode(), signed=True)
        st, _, body = get(f"{url}/api/neighbors?id=1&k=3&session={sid}")
        assert st == 200 and len(json.loads(body)["neighbors"]) == 3
        st, _, page = get(url + "/")
        assert st == 200
    finally:
        stop_serve(proc)


def test_websocket_sends_without_nagle_delay(explorer_served):
    """Bokeh writes a protocol message as several websocket frames (header, metadata,
    content). With Nagle's algorithm on, the server held each message's second frame until
    the page ACKed the first, and a delayed ACK is 40 ms: every pan's new frame URL came
    40 ms late (bench_notebook's serve pan, measured under load: 73 ms -> 23 ms). The
    server's end of each page's websocket must have TCP_NODELAY set."""
    import asyncio
    import concurrent.futures
    import socket
    import threading

    import websocket
    from conftest import _free_port

    from bigembed.server.app import make_server

    _, _, path = explorer_served
    port, box, started = _free_port(), {}, threading.Event()

    def run():
        asyncio.set_event_loop(asyncio.new_event_loop())
        try:
            server, _ = make_server(path, port=port, warm=False, workers=1, frame_workers=1)
            box["server"] = server
            server.start()
        finally:
            started.set()
        server.io_loop.start()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    assert started.wait(120) and "server" in box
    server = box["server"]
    ws = None
    try:
        _, _, page = get(f"http://127.0.0.1:{port}/")
        token = re.search(rb'"token":\s*"([^"]+)"', page).group(1).decode()
        ws = websocket.create_connection(f"ws://127.0.0.1:{port}/ws", timeout=30,
                                         subprotocols=["bokeh", token],
                                         origin=f"http://127.0.0.1:{port}")
        assert json.loads(ws.recv())["msgtype"] == "ACK"
        got = concurrent.futures.Future()

        def inspect():  # on the server's loop: its end of every open page websocket
            got.set_result([c._socket.ws_connection.stream.socket.getsockopt(
                socket.IPPROTO_TCP, socket.TCP_NODELAY) for c in server._tornado._clients])

        server.io_loop.add_callback(inspect)
        flags = got.result(timeout=30)
        assert flags and all(flags), flags
    finally:
        if ws is not None:
            ws.close()
        server.io_loop.add_callback(server.io_loop.stop)
        t.join(30)
        server.stop()
        server._bigembed_pools.shutdown()
