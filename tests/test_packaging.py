"""kernels/ and server/ install under the package namespace, from a wheel as from the tree."""

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


@pytest.mark.slow
def test_wheel_contains_namespaced_subpackages(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(tmp_path), str(ROOT)], check=True, capture_output=True)
    wheel = next(tmp_path.glob("bigembed-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "bigembed/kernels/__init__.py" in names and "bigembed/server/__init__.py" in names
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
