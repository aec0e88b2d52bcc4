"""``bigembed serve`` of a dataset for a benchmark: a child process on a free 127.0.0.1 port."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time


@contextlib.contextmanager
def served(path, timeout: float = 600.0):
    """Start ``bigembed serve PATH`` on a free port and wait (bounded) until it says it is
    serving; yields (base URL, seconds it took to start); stops it on exit."""
    with socket.socket() as sk:
        sk.bind(("127.0.0.1", 0))
        port = sk.getsockname()[1]
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
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
