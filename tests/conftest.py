"""Shared fixtures: small seeded datasets on disk and a CLI runner (a real subprocess)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("BIGEMBED_NO_PROGRESS", "1")


def run_cli(*args, cwd=None, timeout=300, env=None, check=None):
    """Run ``python -m bigembed ARGS`` in a subprocess; returns CompletedProcess (text)."""
    e = dict(os.environ)
    e["BIGEMBED_NO_PROGRESS"] = "1"
    if env:
        e.update(env)
    p = subprocess.run([sys.executable, "-m", "bigembed", *map(str, args)], cwd=cwd,
                       capture_output=True, text=True, timeout=timeout, env=e)
    if check is True and p.returncode != 0:
        raise AssertionError(f"bigembed {args} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return p


def assert_clean_error(p, *fragments):
    """A CLI failure: non-zero exit, one clear message containing ``fragments``, no traceback."""
    assert p.returncode != 0, f"expected failure, got 0:\n{p.stdout}\n{p.stderr}"
    assert "Traceback" not in p.stderr, p.stderr
    for f in fragments:
        assert f in p.stderr, f"{f!r} not in stderr:\n{p.stderr}"


@pytest.fixture
def cli():
    return run_cli


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture
def small_ds(tmp_path):
    """A 2,000 x 16 synthetic dataset with labels (on disk, real shards)."""
    from bigembed.ingest.synth import synth

    synth(tmp_path / "ds", n=2000, dim=16, clusters=5, error_rate=0.1, seed=3)
    return tmp_path / "ds"


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    skip_browser = pytest.mark.skip(reason="needs /usr/bin/chromium")
    has_browser = chromium_path() is not None
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(skip_gpu)
        if "browser" in item.keywords and not has_browser:
            item.add_marker(skip_browser)


def chromium_path() -> str | None:
    for p in ("/usr/bin/chromium", "/usr/bin/chromium-browser"):
        if Path(p).exists():
            return p
    return None


#: the flags of every headless Chromium the tests (and docs/screenshot.py) launch
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]


@contextlib.contextmanager
def chromium():
    """Debian's headless Chromium driven by Playwright (with :data:`CHROMIUM_ARGS`); yields
    the browser and closes it on exit."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS,
                               headless=True)
        try:
            yield b
        finally:
            b.close()


def wait_for(pred, timeout=30.0, page=None, what="condition"):
    """Poll ``pred()`` until truthy, at most ``timeout`` seconds (bounded wait); returns its
    value. With a Playwright ``page``, waits through the page (its events keep running)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = pred()
        if v:
            return v
        if page is not None:
            page.wait_for_timeout(100)
        else:
            time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_serve(dataset, *extra, timeout=90):
    """Start ``bigembed serve DATASET`` on a free loopback port; returns (proc, url, port).

    Waits (bounded) for the line announcing the URL; raises with the output if it never comes.
    """
    import time

    port = _free_port()
    e = dict(os.environ, BIGEMBED_NO_PROGRESS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "bigembed", "serve", str(dataset), "--port",
                             str(port), *map(str, extra)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=e)
    import queue
    import threading

    lines: queue.Queue = queue.Queue()

    def pump():
        # A thread reads every line (and keeps draining, so a chatty server never blocks on
        # a full pipe); select() on the pipe would miss lines already in Python's buffer.
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.5)
        except queue.Empty:
            continue
        if line is None:
            proc.wait(timeout=10)
            raise AssertionError(f"bigembed serve exited {proc.returncode}:\n{''.join(seen)}")
        seen.append(line)
        if "bigembed serve: serving" in line:
            return proc, f"http://127.0.0.1:{port}", port
    proc.kill()
    raise AssertionError(f"bigembed serve did not start in {timeout}s:\n{''.join(seen)}")


def stop_serve(proc) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=15)


@pytest.fixture(scope="session")
def explorer_served(tmp_path_factory):
    """A 3,000-point synthetic dataset with a PCA layout, served for real on 127.0.0.1.

    Yields (url, port, dataset path).
    """
    from bigembed.ingest.synth import synth
    from bigembed.reduce.run import reduce

    path = tmp_path_factory.mktemp("explorer") / "ds"
    synth(path, n=3000, dim=16, clusters=6, error_rate=0.1, seed=5)
    reduce(path, method="pca")
    proc, url, port = start_serve(path)
    try:
        yield url, port, path
    finally:
        stop_serve(proc)
