"""Packaging: kernels/ and server/ install under the package namespace, from a wheel as from the
tree; and a plain ``pip install bigembed`` (no extras) in a fresh virtual environment can
synth, ingest, lay out with PCA, index, look up, render and serve, while UMAP and t-SNE say
which extra to install."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_editable_install_maps_subpackages():
    out = subprocess.run([sys.executable, "-c", "import bigembed.kernels, bigembed.server;"
                          "print(bigembed.kernels.__file__); print(bigembed.server.__file__)"],
                         capture_output=True, text=True, check=True, cwd="/")
    k, s = out.stdout.split()
    assert Path(k).parent.name == "kernels" and Path(s).parent.name == "server"


def test_import_needs_no_gpu_packages():
    code = ("import sys, bigembed; bad = [m for m in ('torch', 'cupy', 'cuml', 'triton') "
            "if m in sys.modules]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(out), str(ROOT)], check=True, capture_output=True)
    return next(out.glob("bigembed-*.whl"))


@pytest.mark.slow
def test_wheel_contains_namespaced_subpackages(tmp_path, wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert "bigembed/kernels/__init__.py" in names and "bigembed/server/__init__.py" in names
    # the Jupyter server extension (kernel websockets without Nagle) is enabled by a config
    # file the wheel installs under the environment's etc/jupyter
    conf = [n for n in names if n.endswith(
        ".data/data/etc/jupyter/jupyter_server_config.d/bigembed.json")]
    assert len(conf) == 1, names
    import json

    on = json.loads(zipfile.ZipFile(wheel).read(conf[0]))["ServerApp"]["jpserver_extensions"]
    assert on == {"bigembed.jupyter_server_extension": True}
    assert not any(n.startswith(("kernels/", "server/")) for n in names)
    # Installed from the wheel alone (no source tree on the path), both import.
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target",
                    str(target), str(wheel)], check=True, capture_output=True)
    # -S: no site processing, so the editable install's finder is not loaded; the wheel's copy
    # comes first and the dependencies come from this environment's site-packages.
    import sysconfig

    site = sysconfig.get_paths()["purelib"]
    code = (f"import sys; sys.path[:0] = [{str(target)!r}, {site!r}]; "
            "import bigembed.kernels, bigembed.server, bigembed; print(bigembed.__file__); "
            "print(bigembed.kernels.__file__)")
    out = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True,
                         cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    for line in out.stdout.split():
        assert line.startswith(str(target)), out.stdout


@pytest.fixture(scope="module")
def plain_venv(tmp_path_factory, wheel):
    """A fresh virtual environment with ``pip install bigembed`` and nothing else (its
    declared dependencies come from the package index, as for a user)."""
    venv = tmp_path_factory.mktemp("plain") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    p = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q",
                        "--no-compile", str(wheel)], capture_output=True, text=True,
                       timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    return venv / "bin"


def _run(bin_dir, *args, cwd, timeout=300):
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(cwd), "BIGEMBED_NO_PROGRESS": "1",
           "LANG": "C.UTF-8"}
    return subprocess.run([str(bin_dir / "bigembed"), *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=timeout)


@pytest.mark.slow
def test_plain_install_runs_the_core_commands(plain_venv, tmp_path):
    import json
    import time
    import urllib.request

    import numpy as np

    py = plain_venv / "python"
    probe = subprocess.run([str(py), "-c", "import importlib.util as u; print([m for m in "
                            "('umap', 'openTSNE', 'torch', 'sentence_transformers') "
                            "if u.find_spec(m)])"], capture_output=True, text=True, check=True)
    assert probe.stdout.strip() == "[]", "the plain environment must lack the extras"
    assert (plain_venv.parent / "etc" / "jupyter" / "jupyter_server_config.d"
            / "bigembed.json").is_file()

    def ok(*args):
        p = _run(plain_venv, *args, cwd=tmp_path)
        assert p.returncode == 0, f"bigembed {' '.join(map(str, args))}:\n{p.stderr[-2000:]}"
        return p

    d = tmp_path / "d"
    ok("synth", d, "--n", 3000, "--dim", 16)
    np.save(tmp_path / "v.npy", np.random.default_rng(0).standard_normal((3000, 8), np.float32))
    ok("ingest", tmp_path / "v.npy", "--out", d, "--space", "extra")
    ok("reduce", d, "--method", "pca", "--space", "default")
    ok("index", d, "--space", "default")
    nb = json.loads(ok("neighbors", d, "--id", 5, "-k", 3, "--space", "default", "--json").stdout)
    assert [n["id"] for n in nb["neighbors"]] and len(nb["neighbors"]) == 3
    ok("render", d, "--out", tmp_path / "v.png")
    assert (tmp_path / "v.png").stat().st_size > 1000
    # UMAP runs on bigembed's own optimiser (numba comes with Datashader); t-SNE needs openTSNE.
    assert "backend 'numba'" in ok("reduce", d, "--method", "umap", "--space", "default").stderr
    p = _run(plain_venv, "reduce", d, "--method", "tsne", "--space", "default", cwd=tmp_path)
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert "pip install 'bigembed[layout]'" in p.stderr, p.stderr

    env = {"PATH": f"{plain_venv}:/usr/bin:/bin", "HOME": str(tmp_path), "LANG": "C.UTF-8",
           "BIGEMBED_NO_PROGRESS": "1"}
    from conftest import _free_port

    port = _free_port()
    proc = subprocess.Popen([str(plain_venv / "bigembed"), "serve", str(d), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            cwd=tmp_path)
    try:
        deadline = time.monotonic() + 120
        status = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as r:
                    status = r.status
                    page = r.read().decode()
                break
            except OSError:
                time.sleep(0.5)
        assert status == 200, proc.stdout.read() if proc.poll() is not None else "no answer"
        assert "bokeh" in page.lower()
    finally:
        proc.terminate()
        proc.wait(timeout=20)
