"""bigembed's Jupyter server extension in a real Jupyter server on 127.0.0.1 (in this process,
so the test can look at the server's end of a kernel websocket): TCP_NODELAY is set on it.

Without it, a notebook map's frame (a few comm messages written one after another) waited on
Nagle's algorithm and the browser's 40 ms delayed ACK (see bigembed/jupyter_server_extension.py).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import socket
import threading
import urllib.request

import pytest
from conftest import _free_port

pytest.importorskip("jupyter_server")


def _run_server(tmp_path, extensions: dict):
    """Initialise a Jupyter ServerApp on a free loopback port in this (main) thread."""
    from jupyter_server.serverapp import ServerApp

    port, token = _free_port(), secrets.token_hex(16)
    app = ServerApp()
    app.initialize(argv=[
        "--ip=127.0.0.1", f"--port={port}", "--port-retries=0", "--no-browser", "--allow-root",
        f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={tmp_path}",
        "--ServerApp.jpserver_extensions=" + repr(extensions)], new_httpserver=True)
    return app, f"127.0.0.1:{port}", token


def _nodelay_of_kernel_websockets(tmp_path, extensions: dict) -> list[int]:
    """Start the server, open a kernel and its websocket from a client thread, and read
    TCP_NODELAY on the server's end of every open kernel websocket."""
    import websocket
    from jupyter_server.services.kernels.connection.channels import (
        ZMQChannelsWebsocketConnection,
    )

    asyncio.set_event_loop(asyncio.new_event_loop())
    app, host, token = _run_server(tmp_path, extensions)
    loop = app.io_loop
    box: dict = {}

    def client():
        ws = None
        try:
            req = urllib.request.Request(f"http://{host}/api/kernels?token={token}",
                                         data=b'{"name": "python3"}', method="POST",
                                         headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=120) as r:
                kid = json.load(r)["id"]
            ws = websocket.create_connection(
                f"ws://{host}/api/kernels/{kid}/channels?token={token}&session_id=t",
                timeout=120)
            done = threading.Event()

            def inspect():  # on the server's loop
                box["flags"] = [
                    h.ws_connection.stream.socket.getsockopt(socket.IPPROTO_TCP,
                                                             socket.TCP_NODELAY)
                    for h in ZMQChannelsWebsocketConnection._open_sessions.values()
                    if h.ws_connection is not None]
                done.set()

            loop.add_callback(inspect)
            done.wait(60)
        except BaseException as e:  # reported by the test, not lost in the thread
            box["error"] = e
        finally:
            if ws is not None:
                ws.close()
            loop.add_callback(app._stop)  # shuts the kernel down, then stops the loop

    t = threading.Thread(target=client, daemon=True)
    timer = loop.call_later(240, loop.stop)  # bounded, whatever happens
    loop.add_callback(t.start)
    try:
        app.start_app()
        loop.start()
    finally:
        loop.remove_timeout(timer)
        t.join(30)
        app.http_server.stop()
        app.clear_instance()
    if "error" in box:
        raise box["error"]
    return box.get("flags", [])


@pytest.mark.slow
def test_kernel_websockets_send_without_nagle(tmp_path):
    # (the server extensions this test does not need are off: Panel's takes seconds to load)
    others = {k: False for k in ("panel.io.jupyter_server_extension", "jupyterlab",
                                 "jupyter_lsp", "jupyter_server_terminals", "notebook_shim")}
    on = _nodelay_of_kernel_websockets(tmp_path, {**others,
                                                  "bigembed.jupyter_server_extension": True})
    assert on and all(on), on


def test_with_nodelay_wraps_once():
    from jupyter_server.services.kernels.connection.channels import (
        ZMQChannelsWebsocketConnection as Z,
    )

    from bigembed.jupyter_server_extension import with_nodelay

    cls = with_nodelay(Z)
    assert issubclass(cls, Z) and cls is not Z and with_nodelay(cls) is cls
    assert cls._open_sessions is Z._open_sessions  # the server's close_all still sees them
