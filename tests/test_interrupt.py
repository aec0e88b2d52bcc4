"""SIGKILL a writer part-way: the dataset is the previous one or the complete new one, never a
partial one that opens silently; rerunning finishes the job."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from bigembed import Dataset, DatasetError

ENV = dict(os.environ, BIGEMBED_NO_PROGRESS="1", BIGEMBED_SHARD_BYTES=str(4 << 20))


def start(*args):
    return subprocess.Popen([sys.executable, "-m", "bigembed", *map(str, args)], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def kill_when(proc, cond, *, delay, timeout=60.0):
    """SIGKILL ``proc`` ``delay`` seconds after ``cond()`` first holds (bounded wait)."""
    t0 = time.monotonic()
    while not cond():
        if proc.poll() is not None or time.monotonic() - t0 > timeout:
            pytest.fail(f"writer ended or stalled before the kill point: {proc.poll()}")
        time.sleep(0.01)
    time.sleep(delay)
    if proc.poll() is not None:
        pytest.skip("the writer finished before it could be killed")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)


def temps(parent):
    return [p for p in parent.rglob("*") if ".tmp-" in p.name]


@pytest.mark.parametrize("delay", [0.0, 0.4])
def test_kill_synth_leaves_no_dataset_then_rerun_finishes(tmp_path, delay):
    out = tmp_path / "ds"
    args = ("synth", out, "--n", 300000, "--dim", 64)
    p = start(*args)
    kill_when(p, lambda: bool(temps(tmp_path)), delay=delay)
    assert not out.exists()
    with pytest.raises(DatasetError):
        Dataset.open(out)
    q = subprocess.run([sys.executable, "-m", "bigembed", *map(str, args)], env=ENV,
                       capture_output=True, text=True, timeout=300)
    assert q.returncode == 0, q.stderr
    ds = Dataset.open(out, verify="full")
    assert ds.rows == 300000 and len(ds.space().record["shards"]) > 1
    assert temps(tmp_path) == []


def test_kill_ingest_of_new_space_keeps_previous_dataset(tmp_path):
    rng = np.random.default_rng(0)
    small = rng.standard_normal((200000, 8)).astype(np.float32)
    np.save(tmp_path / "a.npy", small)
    subprocess.run([sys.executable, "-m", "bigembed", "ingest", tmp_path / "a.npy", "--out",
                    tmp_path / "ds"], env=ENV, check=True, capture_output=True)
    before = (tmp_path / "ds" / "manifest.json").read_bytes()
    np.save(tmp_path / "b.npy", rng.standard_normal((200000, 256)).astype(np.float32))
    args = ("ingest", tmp_path / "b.npy", "--out", tmp_path / "ds", "--space", "wide")
    p = start(*args)
    spaces = tmp_path / "ds" / "spaces"
    kill_when(p, lambda: any(".tmp-" in x.name for x in spaces.iterdir())
              and any(True for d in spaces.iterdir() if ".tmp-" in d.name
                      for _ in d.glob("part-*")), delay=0.1)
    assert (tmp_path / "ds" / "manifest.json").read_bytes() == before
    ds = Dataset.open(tmp_path / "ds", verify="full")
    assert sorted(ds.spaces) == ["default"]
    q = subprocess.run([sys.executable, "-m", "bigembed", *map(str, args)], env=ENV,
                       capture_output=True, text=True, timeout=300)
    assert q.returncode == 0, q.stderr
    ds = Dataset.open(tmp_path / "ds", verify="full")
    assert sorted(ds.spaces) == ["default", "wide"] and ds.space("wide").dim == 256
    assert not any(".tmp-" in x.name for x in spaces.iterdir())
