"""Who may talk to the server: exact Host and Origin checks on every HTTP request.

A page on another site can reach a server on 127.0.0.1 through the user's browser. Two
defences keep its data to the user:

- **DNS rebinding**: the attacker's name resolves to 127.0.0.1, so the browser treats the
  server as the attacker's own origin and lets the page read its answers. Every request then
  carries the attacker's name in ``Host``. So every HTTP request (the page, ``/ws``, static
  files, the API) must name this server in ``Host``: a loopback name with the bound port, the
  bound address, or an ``--allow-origin`` host (as Jupyter's ``allow_remote_access``).
- **Cross-origin requests**: a request whose ``Origin`` is not this server or an allowed
  origin is refused, and no answer carries ``Access-Control-Allow-Origin: *``. Bokeh's
  ``/autoload.js`` (which embeds a new, with ``--secret`` signed, session id) answers only a
  same-origin or allowed-origin page; the websocket's token is checked before the upgrade,
  so a malformed one is a 4xx rather than a 101 followed by an error in the log.

Refusals are 403 (400 for a malformed token) with a short JSON message.
"""

from __future__ import annotations

import calendar
import datetime as dt
import ipaddress
import json
import logging
import socket
from urllib.parse import urlparse

from tornado.routing import Matcher, Rule
from tornado.web import RequestHandler

from ..errors import InputError

log = logging.getLogger(__name__)

LOOPBACK_NAMES = ("localhost",)
#: hosts of a loopback (or every-interface) bind that this machine's own browser uses
LOCAL_HOSTS = ("localhost", "127.0.0.1", "[::1]")
WILDCARD_ADDRESSES = ("0.0.0.0", "::", "")


def is_loopback(address: str) -> bool:
    if address in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def _host(name: str) -> str:
    """A host name as it appears in ``Host`` (IPv6 literals in brackets), lower case."""
    name = name.strip().lower()
    if ":" in name and not name.startswith("["):
        return f"[{name}]"
    return name


def normalise_origin(origin: str) -> str:
    """``http://host:port`` or ``host:port`` -> ``host:port`` (what Bokeh compares exactly)."""
    o = str(origin).strip()
    if not o or "*" in o or any(c.isspace() for c in o):
        raise InputError(f"--allow-origin must be an exact host:port or URL (no wildcards), "
                         f"got {origin!r}")
    if "://" in o:
        u = urlparse(o)
        try:
            port = u.port
        except ValueError:
            port = -1
        if u.scheme not in ("http", "https") or not u.hostname or u.path not in ("", "/") \
                or port == -1:
            raise InputError(f"--allow-origin must be http(s)://host[:port], got {origin!r}")
        port = port or (443 if u.scheme == "https" else 80)
        return f"{u.hostname.lower()}:{port}"
    host, _, port = o.rpartition(":")
    if not host or not port.isdigit():
        raise InputError(f"--allow-origin must be host:port or a URL, got {origin!r}")
    return f"{host.lower()}:{int(port)}"


def websocket_origins(address: str, port: int, allow_origin=()) -> list[str]:
    """The exact origins allowed to open a session (``host:port``)."""
    out = [normalise_origin(o) for o in allow_origin]
    if is_loopback(address):
        out += [f"localhost:{port}", f"127.0.0.1:{port}"]
    elif not allow_origin:
        raise InputError(f"--address {address} is not a loopback address: anyone who can reach "
                         f"it could open the map. Give the exact origin(s) browsers will use with "
                         f"--allow-origin (e.g. --allow-origin http://{address}:{port})")
    return list(dict.fromkeys(out))


def allowed_hosts(address: str, port: int, allow_origin=()) -> frozenset:
    """Every ``host:port`` a request may name in ``Host`` (or its ``Origin``)."""
    out = set()
    for o in allow_origin:
        h, _, p = normalise_origin(o).rpartition(":")
        out.add(f"{_host(h)}:{p}")
    if is_loopback(address) or address in WILDCARD_ADDRESSES:
        out.update(f"{h}:{port}" for h in LOCAL_HOSTS)
    if address not in WILDCARD_ADDRESSES:
        out.add(f"{_host(address)}:{port}")
    return frozenset(out)


def host_key(value: str | None, default_port: int = 80) -> str | None:
    """``Host`` header value -> ``host:port`` as in :func:`allowed_hosts`; None if malformed."""
    if not value or any(c.isspace() or ord(c) < 33 or ord(c) > 126 for c in value):
        return None
    v = value.lower()
    if v.startswith("["):
        host, sep, rest = v.partition("]")
        host += "]"
        if not sep or (rest and not rest.startswith(":")):
            return None
        port = rest[1:]
    else:
        host, _, port = v.partition(":")
        if ":" in port:
            return None
    if not host or host == "[]":
        return None
    if port == "":
        port = str(default_port)
    if not port.isdigit() or not 0 < int(port) < 65536:
        return None
    return f"{host}:{int(port)}"


def origin_key(origin: str | None) -> str | None:
    """An ``Origin`` (or ``Referer``) URL -> its ``host:port``; None if it is not http(s)."""
    if not origin:
        return None
    try:
        u = urlparse(origin.strip())
    except ValueError:
        return None
    if u.scheme not in ("http", "https") or not u.netloc or "@" in u.netloc:
        return None
    return host_key(u.netloc, 443 if u.scheme == "https" else 80)


def refusal(request, allowed: frozenset) -> str | None:
    """Why ``request`` must be refused (a short message), or None when it may go on."""
    if host_key(request.headers.get("Host")) not in allowed:
        return "this server does not answer to that Host (a DNS-rebinding defence)"
    origin = request.headers.get("Origin")
    if origin is not None and origin_key(origin) not in allowed:
        return "requests from that Origin are not allowed (see --allow-origin)"
    return None


def page_origin_refusal(request, allowed: frozenset) -> str | None:
    """A stricter check for what hands out a session: the requesting page itself must be
    this server or an allowed origin (``Origin``, else ``Referer``); a browser request that
    names neither but says it is cross-site (``Sec-Fetch-Site``) is refused too."""
    why = refusal(request, allowed)
    if why:
        return why
    h = request.headers
    src = h.get("Origin") or h.get("Referer")
    if src is not None:
        return None if origin_key(src) in allowed else \
            "only a page of this server (or an allowed origin) may load this"
    if h.get("Sec-Fetch-Site", "same-origin") not in ("same-origin", "none"):
        return "only a page of this server (or an allowed origin) may load this"
    return None


class _Refused(RequestHandler):
    """Answers every method with 403 and the reason (no handler work, no session)."""

    SUPPORTED_METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")

    def initialize(self, allowed):
        self.allowed = allowed

    def set_default_headers(self):
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Cache-Control", "no-store")

    def prepare(self):
        self.set_status(403)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"error": refusal(self.request, self.allowed) or "refused"}))


class _RefusedMatcher(Matcher):
    def __init__(self, allowed):
        self.allowed = allowed

    def match(self, request):
        return {} if refusal(request, self.allowed) else None


def guarded_autoload_handler():
    """Bokeh's ``/autoload.js`` without its wildcard CORS: only a same-origin (or allowed
    origin) page gets a session, and CORS names that origin exactly."""
    from bokeh.server.views.autoload_js_handler import AutoloadJsHandler

    class GuardedAutoloadJs(AutoloadJsHandler):
        def set_default_headers(self):
            self.set_header("X-Content-Type-Options", "nosniff")
            self.set_header("Cache-Control", "no-store")

        def _guard(self) -> bool:
            why = page_origin_refusal(self.request, self.application._bigembed_allowed_hosts)
            if why:
                self.set_status(403)
                self.set_header("Content-Type", "application/json")
                self.finish(json.dumps({"error": why}))
                return False
            origin = self.request.headers.get("Origin")
            if origin:
                self.set_header("Access-Control-Allow-Origin", origin)  # checked just above
                self.set_header("Vary", "Origin")
            return True

        async def get(self, *args, **kwargs):
            if self._guard():
                await super().get(*args, **kwargs)
                # Bokeh sets CORS to the request's Origin when it has cookies: checked above
        async def options(self, *args, **kwargs):
            if self._guard():
                self.set_header("Access-Control-Allow-Methods", "GET, OPTIONS")

    return GuardedAutoloadJs


def token_refusal(token: str | None, *, signed: bool, secret_key) -> str | None:
    """Why a websocket session token is unusable, or None when Bokeh may open it."""
    from bokeh.util.token import check_token_signature, get_session_id, get_token_payload

    if not token:
        return "no session token in the websocket subprotocol header"
    if len(token) > 16384 or not token.isascii():
        return "malformed session token"
    try:
        sid = get_session_id(token)
        payload = get_token_payload(token)
        ok = check_token_signature(token, signed=signed, secret_key=secret_key)
    except Exception:  # bad base64, bad UTF-8, bad JSON, bad zlib: all mean malformed
        return "malformed session token"
    if not isinstance(sid, str) or not isinstance(payload, dict):
        return "malformed session token"
    if not ok:
        return "invalid session token signature"
    expiry = payload.get("session_expiry")
    now = calendar.timegm(dt.datetime.now(tz=dt.timezone.utc).timetuple())
    if not isinstance(expiry, (int, float)) or now >= expiry:
        return "session token expired or without expiry; reload the page"
    return None


def guarded_ws_handler():
    """Bokeh's websocket handler, checking the token before the upgrade (4xx, not 101)."""
    from bokeh.server.views.ws import WSHandler

    class GuardedWS(WSHandler):
        async def get(self, *args, **kwargs):
            protos = [p.strip() for p in
                      self.request.headers.get("Sec-WebSocket-Protocol", "").split(",")]
            app = self.application
            why = None
            if len(protos) != 2 or protos[0] != "bokeh":
                why = "the websocket subprotocol header must be 'bokeh, TOKEN'"
            else:
                why = token_refusal(protos[1], signed=app.sign_sessions, secret_key=app.secret_key)
            if why:
                self.set_status(400)
                self.set_header("Content-Type", "application/json")
                self.finish(json.dumps({"error": why}))
                return
            await super().get(*args, **kwargs)

        def open(self):
            # Bokeh writes each protocol message as 3+ websocket frames (header, metadata,
            # content): without TCP_NODELAY, Nagle's algorithm holds the second frame until
            # the page ACKs the first, and a delayed ACK is 40 ms: every patch (a pan's new
            # frame URL, a hover's point) came 40 ms late
            self.set_nodelay(True)
            return super().open()

    return GuardedWS


def install(tornado_app, *, allowed: frozenset) -> None:
    """Put the checks in front of every handler of a Bokeh server's Tornado application.

    A first routing rule answers any request with a bad ``Host`` or ``Origin`` (403), before
    Bokeh's or bigembed's handlers see it; ``/autoload.js`` and ``/ws`` get guarded handlers.
    """
    from bokeh.server.views.autoload_js_handler import AutoloadJsHandler
    from bokeh.server.views.ws import WSHandler

    tornado_app._bigembed_allowed_hosts = allowed
    tornado_app.default_router.rules.insert(
        0, Rule(_RefusedMatcher(allowed), _Refused, dict(allowed=allowed)))
    autoload, ws = guarded_autoload_handler(), guarded_ws_handler()
    swapped = 0
    for rule in tornado_app.wildcard_router.rules:
        if rule.target is AutoloadJsHandler:
            rule.target, swapped = autoload, swapped + 1
        elif rule.target is WSHandler:
            rule.target, swapped = ws, swapped + 1
    if swapped < 2:  # a Bokeh that routes differently: refuse to run unguarded
        raise RuntimeError("could not guard Bokeh's /autoload.js and /ws handlers")


def check_address(address) -> None:
    """``address`` is a loopback name or an address (or name) of this machine."""
    if not isinstance(address, str) or not address:
        raise InputError(f"--address must be a host address, got {address!r}")
    if not is_loopback(address):
        try:
            ipaddress.ip_address(address)
        except ValueError:
            try:
                socket.getaddrinfo(address, None)
            except OSError:
                raise InputError(f"--address {address!r} is not an address of this machine") from None
