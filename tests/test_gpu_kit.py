"""The GPU kit (benchmarks/gpu/) cannot rot: its dry run runs every step at tiny sizes here."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_gpu_kit_dry_run_runs_every_step(tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, OUT=str(out), PYTHON=sys.executable)
    # about a minute on 2 idle cores; bounded well above that for a busy machine
    p = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu" / "run.sh"), "--cpu-dry-run"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=540)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dry_run"] and set(summary["steps"]) == {"frames", "knn", "umap", "vit",
                                                              "compare"}
    bad = {k: v for k, v in summary["steps"].items() if v["status"] != "ok"}
    assert not bad, bad
    # what the device tool brings back: at most 8 files, 2 folders deep, plain names
    files = [f for f in out.rglob("*") if f.is_file()]
    assert len(files) <= 8 and all(len(f.relative_to(out).parts) <= 3 for f in files)
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+", f.name) for f in files)
    frames = json.loads((out / "frames.json").read_text())["results"]
    assert len(frames["sizes"]) == 2 and all(r["frames"] for r in frames["sizes"])
    knn = json.loads((out / "knn.json").read_text())["results"]
    assert knn["graph_recall_vs_faiss_exact"] >= 0.99 and knn["lookup_ms_median"] > 0
    umap = json.loads((out / "umap.json").read_text())["results"]
    assert {"torch", "cpu"} <= set(umap["sample"]) and umap["torch_full"]["quality"]
    vit = json.loads((out / "vit.json").read_text())["results"]
    assert vit["images_per_s"] > 0
    cmp = json.loads((out / "compare.json").read_text())["results"]
    assert cmp["end_to_end_s"] > 0 and cmp["movers_recovered"] >= 0.9
    assert "skipped" in (out / "pytest.log").read_text()  # gpu tests: skipped without CUDA
