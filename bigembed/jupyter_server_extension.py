"""A Jupyter server extension: kernel websockets send without Nagle's delay.

A map in a notebook cell (:func:`bigembed.show`) gets each new frame as a few comm messages
(jupyter_bokeh's document patch: header, metadata, content, the PNG's buffer), which the Jupyter
server writes to the page's websocket one after another. Tornado leaves Nagle's algorithm on for
websockets, so each small write after the first waits until the browser ACKs the one before,
and a delayed ACK is 40 ms: on 1M points a pan at zoom 64x through a Jupyter server took
47.2 ms without this extension and 15.7 ms with it (``python -m benchmarks.bench_notebook``,
``jserver_pan_nagle`` / ``jserver_pan`` in ``benchmarks/results/notebook.json``). This
extension sets ``TCP_NODELAY`` on the server's end of each kernel websocket, as browsers do on
theirs, whatever connection class the server is configured with (the default ZMQ one, or a
gateway's). It changes nothing else.

Installed with bigembed and enabled by ``etc/jupyter/jupyter_server_config.d/bigembed.json``;
to turn it off: ``jupyter server extension disable bigembed.jupyter_server_extension``.
"""

from __future__ import annotations

KEY = "kernel_websocket_connection_class"


def _jupyter_server_extension_points():
    return [{"module": "bigembed.jupyter_server_extension"}]


def with_nodelay(base: type) -> type:
    """``base`` (a kernel websocket connection class) setting TCP_NODELAY on its websocket
    when it connects; ``base`` itself when it does already."""
    if getattr(base, "_bigembed_nodelay", False):
        return base

    class NoDelay(base):
        _bigembed_nodelay = True

        def connect(self):
            handler = getattr(self, "websocket_handler", None)
            if handler is not None and getattr(handler, "ws_connection", None) is not None:
                handler.set_nodelay(True)
            return super().connect()

    NoDelay.__name__ = NoDelay.__qualname__ = f"NoDelay{base.__name__}"
    NoDelay.__module__ = __name__
    return NoDelay


def _load_jupyter_server_extension(serverapp) -> None:
    settings = serverapp.web_app.settings
    base = settings.get(KEY)
    if base is None:
        serverapp.log.warning("bigembed: this Jupyter server has no %s setting; kernel "
                              "websockets keep Nagle's algorithm", KEY)
        return
    settings[KEY] = with_nodelay(base)
    serverapp.log.info("bigembed: kernel websockets send without Nagle's delay (TCP_NODELAY; "
                       "%s)", base.__name__)
