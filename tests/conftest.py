"""Shared fixtures: small seeded datasets on disk and a CLI runner (a real subprocess)."""

from __future__ import annotations

import os
import subprocess
import sys
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
    from bigembed.synth import synth

    synth(tmp_path / "ds", n=2000, dim=16, clusters=5, error_rate=0.1, seed=3)
    return tmp_path / "ds"


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(skip_gpu)


def chromium_path() -> str | None:
    for p in ("/usr/bin/chromium", "/usr/bin/chromium-browser"):
        if Path(p).exists():
            return p
    return None
