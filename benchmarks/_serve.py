"""Servers a benchmark starts as child processes on free 127.0.0.1 ports: ``bigembed serve`` of a
dataset, and the small pieces the Jupyter servers of the notebook benchmarks share."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request


def free_port() -> int:
    with socket.socket() as sk:
        sk.bind(("127.0.0.1", 0))
        return sk.getsockname()[1]


def stop(proc, timeout: float = 30.0) -> None:
    """Terminate ``proc``; kill it if it has not exited after ``timeout`` seconds."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def wait_until_up(url: str, proc, timeout: float, what: str, log_path=None) -> None:
    """Poll ``url`` (bounded by ``timeout``) until it answers 200; raise, with the end of the
    log at ``log_path``, when ``proc`` exits first or the time is up."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            tail = ""
            if log_path is not None:
                with contextlib.suppress(OSError), open(log_path) as f:
                    tail = ":\n" + f.read()[-3000:]
            raise RuntimeError(f"{what} did not start{tail}")
        time.sleep(0.3)


@contextlib.contextmanager
def served(path, timeout: float = 600.0):
    """Start ``bigembed serve PATH`` on a free port and wait (bounded) until it says it is
    serving; yields (base URL, seconds it took to start); stops it on exit."""
    port = free_port()
    env = dict(os.environ, BIGEMBED_NO_PROGRESS="1", PYTHONUNBUFFERED="1")
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "bigembed", "serve", str(path), "--port",
                             str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env)
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if "serving" in line or time.perf_counter() - t0 > timeout:
                break
        if not lines or "serving" not in lines[-1]:
            raise RuntimeError("bigembed serve did not start: " + "".join(lines[-20:]))
        yield f"http://127.0.0.1:{port}", time.perf_counter() - t0
    finally:
        stop(proc)
