"""The README's Python example runs as written, on a dataset shaped like the demo's."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_readme_python_example_runs(tmp_path):
    from bigembed.ingest import synth

    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert blocks, "the README has no Python example"
    code = blocks[0]
    assert "demo-data/dataset" in code
    synth(tmp_path / "dataset", n=600, dim=16, clusters=4, space="fc1", seed=0)
    code = code.replace("demo-data/dataset", str(tmp_path / "dataset"))
    code += ("\nassert X.shape == (600, 16) and len(meta) == 600\n"
             "assert lay.rows == 600 and len(nb['neighbors']) == 10\n"
             "assert g.indices.shape == (600, 15)\nprint('ok')\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       cwd=tmp_path, env=dict(os.environ, BIGEMBED_NO_PROGRESS="1"))
    assert p.returncode == 0 and p.stdout.strip().endswith("ok"), p.stderr[-3000:]
