"""A hostile or unlucky visitor against the real server on 127.0.0.1 (issue 12).

DNS rebinding (a foreign ``Host``) and cross-origin requests (a foreign ``Origin``) are 403 on
every HTTP request; ``/autoload.js`` sends no wildcard CORS and hands a (signed) session only
to a same-origin page; invalid UTF-8 in any parameter of any data endpoint is a 4xx with a
short message; a malformed websocket token is a 4xx before the upgrade; a busy port is one
line and exit 2 before any data is loaded; image paths never leave the media root.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import socket
import subprocess
import sys
import time

import pyarrow as pa
import pytest

from conftest import _free_port, assert_clean_error, run_cli, start_serve, stop_serve
from test_thumbs import _png, _with_meta_columns

from bigembed.server.security import allowed_hosts, host_key, origin_key

SECRET = "k" * 40


def request(port, path, headers=None, method="GET", timeout=60):
    """(status, headers, body) of one raw HTTP request to 127.0.0.1:port; ``headers`` may
    replace ``Host``. http.client sends the path as given (no re-quoting of ``%ff``)."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    h = {"Host": f"127.0.0.1:{port}", **(headers or {})}
    try:
        c.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        for k, v in h.items():
            if v is not None:
                c.putheader(k, v)
        c.endheaders()
        r = c.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        c.close()


@pytest.fixture(scope="module")
def secret_served(explorer_served):
    _, _, path = explorer_served
    proc, url, port = start_serve(path, "--secret", SECRET)
    try:
        yield port
    finally:
        stop_serve(proc)


def _box():
    return "box=-100,100,-100,100"


# -- Host (DNS rebinding) ------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/", f"/api/select?{_box()}&format=csv", "/api/neighbors?id=1&k=3",
                                  "/frame.png?x0=0&x1=1&y0=0&y1=1&w=8&h=8", "/api/thumb?id=1",
                                  "/autoload.js?bokeh-autoload-element=x", "/ws",
                                  "/static/js/bokeh.min.js", "/no-such-page"])
@pytest.mark.parametrize("host", ["evil.com:{port}", "evil.com", "127.0.0.1.evil.com:{port}",
                                  "127.0.0.1:1", "localhost:{port}@evil.com", "", None])
def test_foreign_host_is_refused_everywhere(explorer_served, path, host):
    """The reported curl: ``Host: evil.com:PORT`` read the selection as CSV."""
    _, port, _ = explorer_served
    h = {"Host": None if host is None else host.format(port=port)}
    st, hdr, body = request(port, path, h)
    assert st in (400, 403), (st, body[:200])
    if st == 403:
        assert "Host" in json.loads(body)["error"]
    assert b"synth-" not in body and "access-control-allow-origin" not in hdr


@pytest.mark.parametrize("host", ["127.0.0.1:{port}", "localhost:{port}", "LOCALHOST:{port}"])
def test_own_host_is_answered(explorer_served, host):
    _, port, _ = explorer_served
    st, hdr, body = request(port, f"/api/select?{_box()}&format=csv",
                            {"Host": host.format(port=port)})
    assert st == 200 and body.startswith(b"id,")
    assert "access-control-allow-origin" not in hdr


def test_allowed_origin_host_is_answered(explorer_served, tmp_path):
    """``--allow-origin`` names a host the server answers to; others stay refused."""
    _, _, path = explorer_served
    proc, url, port = start_serve(path, "--allow-origin", "http://map.example:8080")
    try:
        st, _, _ = request(port, "/api/neighbors?id=1&k=3", {"Host": "map.example:8080"})
        assert st == 200
        st, _, body = request(port, "/api/neighbors?id=1&k=3",
                              {"Host": "map.example:8080", "Origin": "http://map.example:8080"})
        assert st == 200
        for bad in ({"Host": "map.example:8081"}, {"Host": "evil.com:8080"},
                    {"Host": "map.example:8080", "Origin": "http://evil.com"}):
            st, _, _ = request(port, "/api/neighbors?id=1&k=3", bad)
            assert st == 403, bad
    finally:
        stop_serve(proc)


# -- Origin --------------------------------------------------------------------------------

@pytest.mark.parametrize("origin, ok", [
    (None, True), ("http://127.0.0.1:{port}", True), ("http://localhost:{port}", True),
    ("http://evil.com", False), ("http://evil.com:{port}", False), ("null", False),
    ("http://127.0.0.1:{port}.evil.com", False), ("http://127.0.0.1:{port}@evil.com", False),
])
def test_origin_of_api_requests(explorer_served, origin, ok):
    _, port, _ = explorer_served
    h = {} if origin is None else {"Origin": origin.format(port=port)}
    st, hdr, body = request(port, "/api/neighbors?id=1&k=3", h)
    assert (st == 200) is ok, (st, body[:200])
    if not ok:
        assert st == 403 and "Origin" in json.loads(body)["error"]
    assert "access-control-allow-origin" not in hdr


AUTOLOAD = "/autoload.js?bokeh-autoload-element=el1&bokeh-app-path=/&bokeh-absolute-url=http://127.0.0.1:{port}/"


@pytest.mark.parametrize("served", ["explorer_served", "secret_served"])
def test_autoload_js_refuses_foreign_pages(request_fixture, served):
    """Bokeh's /autoload.js answered ``Access-Control-Allow-Origin: *`` and, with --secret,
    handed a signed session id to ``Origin: http://evil.com``."""
    port = request_fixture(served)
    port = port[1] if isinstance(port, tuple) else port
    path = AUTOLOAD.format(port=port)
    for bad in ({"Origin": "http://evil.com"},
                {"Referer": "http://evil.com/page.html"},
                {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "no-cors"},
                {"Origin": "http://evil.com", "Cookie": "a=b"}):
        for method in ("GET", "OPTIONS"):
            st, hdr, body = request(port, path, bad, method=method)
            assert st == 403, (bad, method, st)
            assert "access-control-allow-origin" not in hdr
            assert b"token" not in body
    # a page of this server gets its script, with no wildcard CORS anywhere
    for good in ({}, {"Sec-Fetch-Site": "same-origin"},
                 {"Referer": f"http://127.0.0.1:{port}/page"},
                 {"Origin": f"http://127.0.0.1:{port}"}):
        st, hdr, body = request(port, path, good)
        assert st == 200, (good, st, body[:300])
        assert hdr.get("access-control-allow-origin") in (None, good.get("Origin"))
        assert b"token" in body


@pytest.fixture
def request_fixture(request):
    return request.getfixturevalue


def test_secret_session_from_evil_origin_is_refused(secret_served):
    """The chain of the report: evil origin -> signed session -> API. The first step fails,
    and the API refuses the foreign Origin even with a valid session id."""
    from bokeh.util.token import generate_session_id

    port = secret_served
    sid = generate_session_id(secret_key=SECRET.encode(), signed=True)
    st, _, _ = request(port, f"/api/select?{_box()}&format=csv&session={sid}",
                       {"Origin": "http://evil.com"})
    assert st == 403
    st, _, body = request(port, f"/api/select?{_box()}&format=csv&session={sid}")
    assert st == 200 and body.startswith(b"id,")
    st, _, body = request(port, f"/api/select?{_box()}&session=%ff")
    assert st == 400 and "UTF-8" in json.loads(body)["error"]


def test_host_rules():
    assert host_key("LocalHost:5006") == "localhost:5006"
    assert host_key("example.org") == "example.org:80"
    assert host_key("[::1]:5006") == "[::1]:5006"
    for bad in (None, "", "a b:1", "h:0", "h:99999", "h:x", "[::1", "h:1:2", "\u00e9:1"):
        assert host_key(bad) is None, bad
    assert origin_key("http://127.0.0.1:5006") == "127.0.0.1:5006"
    assert origin_key("https://x.org") == "x.org:443"
    for bad in ("null", "file://", "ftp://x:1", "http://user@evil.com:1@127.0.0.1:5006", None):
        assert origin_key(bad) is None, bad
    assert allowed_hosts("127.0.0.1", 5006) == {"localhost:5006", "127.0.0.1:5006",
                                                "[::1]:5006"}
    assert allowed_hosts("0.0.0.0", 81, ["http://h.example:81"]) == {
        "h.example:81", "localhost:81", "127.0.0.1:81", "[::1]:81"}
    assert allowed_hosts("192.168.1.4", 81, ["192.168.1.4:81"]) == {"192.168.1.4:81"}


# -- invalid UTF-8 -------------------------------------------------------------------------

ENDPOINTS = {
    "/frame.png": dict(x0="0", x1="1", y0="0", y1="1", w="8", h="8", color="label",
                       layout="", where="label:1"),
    "/api/neighbors": dict(id="1", k="3", space="default", layout="", key=None),
    "/api/select": dict(box="0,1,0,1", format="json", layout="", poly=None),
    "/api/thumb": dict(id="1", size="24"),
}
CASES = [(ep, name) for ep, ps in ENDPOINTS.items() for name in ps]


@pytest.mark.parametrize("ep, name", CASES)
@pytest.mark.parametrize("bad", ["%ff", "%c0%af", "1%ff", "%ed%a0%80"])
def test_invalid_utf8_in_any_parameter_is_4xx(explorer_served, ep, name, bad):
    _, port, _ = explorer_served
    params = {k: v for k, v in ENDPOINTS[ep].items() if v is not None and k != name}
    if name in ("poly",):
        params.pop("box")
    q = "&".join(f"{k}={v}" for k, v in params.items())
    st, hdr, body = request(port, f"{ep}?{q}&{name}={bad}")
    assert 400 <= st < 500, (ep, name, st, body[:300])
    msg = json.loads(body)["error"]
    assert name in msg and "UTF-8" in msg and len(msg) < 200, msg


@pytest.mark.parametrize("path", ["/?x0=%ff&color=%c0%af&id=%ff&box=%ff", "/?bokeh-session-id=%ff",
                                  "/?where=%c0%af"])
def test_invalid_utf8_in_the_page_url(explorer_served, path):
    _, port, _ = explorer_served
    st, _, _ = request(port, path)
    assert st == 200 or 400 <= st < 500


def _ws_upgrade(port, protocol, origin=None):
    """Status of a websocket upgrade request with the given subprotocol header."""
    import base64

    key = base64.b64encode(os.urandom(16)).decode()
    h = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Key": key,
         "Sec-WebSocket-Version": "13", "Origin": origin or f"http://127.0.0.1:{port}",
         "Sec-WebSocket-Protocol": protocol}
    st, _, body = request(port, "/ws", h, timeout=20)
    return st, body


def _ws_token(port):
    st, _, page = request(port, "/")
    m = re.search(rb'"token":\s*"([^"]+)"', page)
    return m.group(1).decode()


def test_bad_websocket_token_is_4xx_before_upgrade(explorer_served):
    """A bad token was a 101 and then an uncaught UnicodeDecodeError in the log."""
    import base64

    _, port, _ = explorer_served
    bad_json = base64.urlsafe_b64encode(b"\xff\xfe{not json").decode().rstrip("=")
    for token in ("%ff", "\u00ff\u00fe", bad_json, "a.b.c", "eyJzZXNzaW9uX2lkIjogMX0",
                  "x" * 20000):
        st, body = _ws_upgrade(port, f"bokeh, {token}")
        assert 400 <= st < 500, (token[:40], st, body[:200])
    for proto in ("bokeh", "other, x", ""):
        st, _ = _ws_upgrade(port, proto)
        assert 400 <= st < 500
    # a real token still upgrades, from this server's origin only
    assert _ws_upgrade(port, f"bokeh, {_ws_token(port)}")[0] == 101
    assert _ws_upgrade(port, f"bokeh, {_ws_token(port)}", "http://evil.com")[0] == 403


# -- a busy port -----------------------------------------------------------------------------

def test_port_in_use_is_one_line_and_exit_2(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        t0 = time.monotonic()
        # a dataset that does not exist: the port is checked before anything is loaded
        p = run_cli("serve", tmp_path / "missing", "--port", port, timeout=120)
        took = time.monotonic() - t0
    assert p.returncode == 2, (p.returncode, p.stderr)
    assert_clean_error(p, f"port {port}", "in use")
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert took < 30


# -- thumbnails stay under the media root ----------------------------------------------------

@pytest.fixture(scope="module")
def traversal_ds(tmp_path_factory):
    """Image paths that try to leave the dataset directory (and one that may not)."""
    from bigembed.reduce import reduce
    from bigembed.ingest.synth import synth

    root = tmp_path_factory.mktemp("trav")
    path = root / "ds"
    synth(path, n=40, dim=4, clusters=2, seed=1)
    (root / "secret.png").write_bytes(_png(9, 9, (255, 0, 0)))
    (root / "media").mkdir()
    (root / "media" / "m.png").write_bytes(_png(7, 7, (0, 255, 0)))
    (path / "imgs").mkdir()
    (path / "imgs" / "ok.png").write_bytes(_png(10, 20, (0, 0, 255)))
    (path / "imgs" / "link.png").symlink_to(root / "secret.png")
    (path / "imgs" / "dirlink").symlink_to(root)
    os.mkfifo(path / "imgs" / "fifo.png")
    paths = ["imgs/ok.png", "../secret.png", str(root / "secret.png"), "/etc/shadow",
             "imgs/../../secret.png", "imgs/link.png", "imgs/dirlink/secret.png",
             str(path / "imgs" / "ok.png"), "imgs/fifo.png", "imgs/missing.png",
             "../media/m.png"] + ["imgs/ok.png"] * 29
    _with_meta_columns(path, {"image": pa.array(paths, type=pa.string())})
    reduce(path, method="pca")
    return root, path


@pytest.mark.parametrize("media_root", [False, True])
def test_thumbnail_paths_stay_under_the_media_root(traversal_ds, media_root):
    root, path = traversal_ds
    extra = ("--media-root", root / "media") if media_root else ()
    proc, url, port = start_serve(path, *extra)
    try:
        def thumb(i):
            st, _, body = request(port, f"/api/thumb?id={i}")
            return st, body

        # ../, absolute outside, /etc/shadow, ../ after a folder, symlinks out (under another
        # media root the two symlinks are simply missing files)
        for i in (1, 2, 3, 4, 5, 6):
            st, body = thumb(i)
            assert st == 404, (i, st, body)
            msg = json.loads(body)["error"]
            assert str(root) not in msg and "/etc" not in msg, msg
            assert ("outside the media root" in msg) or (media_root and i in (5, 6)), msg
        if media_root:  # the dataset's own images are outside this root now; ../media is in
            assert thumb(10)[0] == 200 and thumb(0)[0] == 404 and thumb(7)[0] == 404
            return
        assert thumb(0)[0] == 200 and thumb(7)[0] == 200 and thumb(10)[0] == 404
        st, body = thumb(8)  # a FIFO: refused without blocking a worker
        assert st == 404 and "not a file" in json.loads(body)["error"]
        st, body = thumb(9)
        msg = json.loads(body)["error"]
        assert st == 404 and "imgs/missing.png" in msg and str(root) not in msg
    finally:
        stop_serve(proc)


def test_media_root_from_python_and_cli_errors(traversal_ds):
    from bigembed.errors import InputError
    from bigembed.server.state import Explorer
    from bigembed.server.thumbs import NoImage

    root, path = traversal_ds
    ex = Explorer(path, media_root=root / "media")
    assert ex.thumbnail(10)[:4] == b"\x89PNG"
    with pytest.raises(NoImage, match="outside the media root"):
        ex.thumbnail(1)
    with pytest.raises(InputError, match="media_root"):
        Explorer(path, media_root=root / "nope")
    p = subprocess.run([sys.executable, "-m", "bigembed", "serve", str(path), "--media-root",
                        str(root / "nope"), "--port", str(_free_port())], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 2 and "Traceback" not in p.stderr


# -- heavy frames ----------------------------------------------------------------------------

def test_frame_pixels_are_capped(explorer_served):
    """A frame may not be 4096 x 4096 (16 Mpx a request); the page's 800 x 800 is fine."""
    _, port, _ = explorer_served
    st, _, body = request(port, "/frame.png?x0=0&x1=1&y0=0&y1=1&w=4096&h=4096")
    assert st == 400 and "pixels" in json.loads(body)["error"]
    st, _, body = request(port, "/frame.png?x0=0&x1=1&y0=0&y1=1&w=800&h=800")
    assert st == 200 and body[:4] == b"\x89PNG"
