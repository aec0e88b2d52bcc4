"""A hostile or unlucky user (issue 12): kills at the rename moments, two writers at once,
damaged bytes, read-only datasets, orphans, keys. Real files, real subprocesses, real SIGKILLs.

After any of it the dataset opens, ``info`` is clean (or reports only orphans, which ``gc``
removes), and rerunning the command succeeds; damage is named in one line with exit 2.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import assert_clean_error

from bigembed import Dataset, DatasetWriter
from bigembed.dataset.gc import collect_garbage, find_orphans
from bigembed.ingest.run import ingest
from bigembed.reduce.run import reduce
from bigembed.search.index import build_index

ENV = dict(os.environ, BIGEMBED_NO_PROGRESS="1", BIGEMBED_SHARD_BYTES=str(1 << 20))


def bigembed(*args, env=None, **kw):
    e = dict(ENV, **(env or {}))
    return subprocess.run([sys.executable, "-m", "bigembed", *map(str, args)], env=e,
                          capture_output=True, text=True, timeout=kw.pop("timeout", 180), **kw)


def ok(*args, **kw):
    p = bigembed(*args, **kw)
    assert p.returncode == 0, f"bigembed {args} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}"
    return p


def start(*args, env=None):
    return subprocess.Popen([sys.executable, "-m", "bigembed", *map(str, args)],
                            env=dict(ENV, **(env or {})), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(proc, timeout=180):
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"{proc.args} failed ({proc.returncode}):\n{out}\n{err}"
    return out + err


def info_json(ds):
    p = bigembed("info", ds, "--json")
    assert "Traceback" not in p.stderr, p.stderr
    return p.returncode, json.loads(p.stdout)


def assert_sound(ds):
    """What ``info`` checks, in-process (the CLI costs seconds a call here): the dataset opens
    with every checksum, nothing invalid; orphans are allowed, and ``gc`` removes them all."""
    d = Dataset.open(ds, verify="full")
    assert d.verify() == []
    collect_garbage(ds)
    assert [o for o in find_orphans(ds) if not o.live] == []
    return d


def assert_clean(ds):
    """``bigembed info`` (the real command, once): valid, no orphans, nothing being written."""
    rc, info = info_json(ds)
    assert rc == 0 and info["valid"] and info["orphans"] == [] and not info["being_written"], info
    return info


def make_ds(path, rows=3000, dim=16, seed=0, meta=True):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, dim)).astype(np.float32)
    src = path.parent / f"{path.name}-vectors.npy"
    np.save(src, x)
    mp = None
    if meta:
        mp = path.parent / f"{path.name}-meta.parquet"
        pq.write_table(pa.table({"key": [f"k{i}" for i in range(rows)],
                                 "label": rng.integers(0, 5, rows)}), mp)
    ingest(src, out=path, meta=mp, key="key" if meta else None)
    return path


def kill_at(proc, changed, *, timeout=120.0):
    """SIGKILL ``proc`` the moment ``changed()`` holds (a bounded, tight polling loop on the
    target file's inode / a new name appearing). Returns whether it was killed (False: it
    finished first)."""
    t0 = time.monotonic()
    while not changed():
        if proc.poll() is not None:
            return False
        if time.monotonic() - t0 > timeout:
            proc.kill()
            pytest.fail(f"{proc.args} stalled before the kill point")
        time.sleep(0.0002)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    return proc.returncode == -signal.SIGKILL


def final_names(d: Path) -> set:
    try:
        return {p.name for p in d.iterdir() if ".tmp-" not in p.name}
    except FileNotFoundError:
        return set()


# -- kills at the rename moments ------------------------------------------------------------


@pytest.mark.slow
def test_kill_at_meta_rename_into_existing_dataset(tmp_path):
    """Finding 1: the new meta lands before the manifest recording it; killed between the two,
    every command refused the dataset. Now the new meta gets a new name."""
    rows = 60000
    ds = make_ds(tmp_path / "ds", rows=rows, dim=8)
    rng = np.random.default_rng(1)
    np.save(tmp_path / "b.npy", rng.standard_normal((rows, 8)).astype(np.float32))
    words = np.array([f"instance-{i}-{'x' * (i % 50)}" for i in range(rows)], dtype=object)
    pq.write_table(pa.table({"key": [f"k{i}" for i in range(rows)], "text": words.tolist(),
                             "loss": rng.random(rows)}), tmp_path / "m2.parquet")
    args = ("ingest", tmp_path / "b.npy", "--out", ds, "--space", "b", "--meta",
            tmp_path / "m2.parquet", "--key", "key", "--overwrite")
    def metas():  # name -> inode of every metadata file: a rename changes one or the other
        out = {}
        for p in ds.glob("meta*.parquet"):
            try:
                out[p.name] = p.stat().st_ino
            except FileNotFoundError:
                pass
        return out

    killed = 0
    for _ in range(3):
        before = metas()
        killed += kill_at(start(*args), lambda: metas() != before)
        assert_sound(ds)
    ingest(tmp_path / "b.npy", out=ds, space="b", meta=tmp_path / "m2.parquet", key="key",
           overwrite=True)
    info = assert_clean(ds)
    assert "text" in info["meta"]["columns"] and sorted(info["spaces"]) == ["b", "default"]
    assert killed, "the writer was never killed at the rename"


@pytest.mark.slow
def test_kill_at_space_rename_of_overwrite(tmp_path):
    ds = make_ds(tmp_path / "ds", rows=5000, dim=32)
    np.save(tmp_path / "c.npy", np.ones((5000, 32), np.float32))
    build_index(ds, kind="flat")
    args = ("ingest", tmp_path / "c.npy", "--out", ds, "--overwrite")
    before = final_names(ds / "spaces")
    kill_at(start(*args), lambda: final_names(ds / "spaces") != before)
    assert_sound(ds)
    ingest(tmp_path / "c.npy", out=ds, overwrite=True)
    assert_clean(ds)
    d = Dataset.open(ds)
    assert d.space().vectors[0, 0] == 1.0 and d.artifacts("indexes") == {}


def test_kill_at_index_force_rename(tmp_path):
    ds = make_ds(tmp_path / "ds")
    build_index(ds, kind="flat")
    before = final_names(ds / "indexes")
    kill_at(start("index", ds, "--kind", "flat", "--force"),
            lambda: final_names(ds / "indexes") != before)
    assert_sound(ds)
    build_index(ds, kind="flat", force=True)
    info = assert_clean(ds)
    assert len(info["indexes"]) == 1 and len(list((ds / "indexes").iterdir())) == 1


@pytest.mark.slow
def test_kill_at_layout_rename(tmp_path):
    ds = make_ds(tmp_path / "ds")
    reduce(ds, method="pca", quality=False)
    before = final_names(ds / "layouts")
    kill_at(start("reduce", ds, "--method", "pca", "--force", "--no-quality"),
            lambda: final_names(ds / "layouts") != before)
    assert_sound(ds)
    reduce(ds, method="pca", quality=False, force=True)
    info = assert_clean(ds)
    assert len(info["layouts"]) == 1 and len(list((ds / "layouts").iterdir())) == 1


# -- two writers at once --------------------------------------------------------------------


def _wide(tmp_path, name, rows, dim=256, seed=5):
    p = tmp_path / f"{name}.npy"
    np.save(p, np.random.default_rng(seed).standard_normal((rows, dim)).astype(np.float32))
    return p


def _while_ingesting(ds, proc):
    """Wait (bounded) until ``proc`` is writing its space: a temporary dir holds a shard."""
    t0 = time.monotonic()
    while not any(True for d in (ds / "spaces").iterdir() if ".tmp-" in d.name
                  for _ in d.glob("*part-*")):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() - t0 < 60, "ingest never started writing"
        time.sleep(0.005)


@contextlib.contextmanager
def paused(proc):
    """SIGSTOP ``proc`` inside the block (a real signal: a slow disk, a laptop lid), so
    another writer surely runs while it is half-way; SIGCONT after."""
    proc.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        proc.send_signal(signal.SIGCONT)


@pytest.mark.parametrize("other", ["ingest", "index",
                                   pytest.param("reduce", marks=pytest.mark.slow)])
def test_second_writer_during_an_ingest_keeps_both(tmp_path, other):
    """Finding 2: an ingest wrote back the manifest it read at its start."""
    rows = 20000
    ds = make_ds(tmp_path / "ds", rows=rows)
    wide = _wide(tmp_path, "wide", rows, dim=256)
    a = start("ingest", wide, "--out", ds, "--space", "w1")
    _while_ingesting(ds, a)
    with paused(a):
        _other_writer(tmp_path, ds, rows, other)
    finish(a)
    m = Dataset.open(ds).manifest
    assert "w1" in m["spaces"]
    if other == "ingest":
        assert "w2" in m["spaces"]
    else:
        assert len(m.get("indexes" if other == "index" else "layouts", {})) == 1
    assert_clean(ds)


def _other_writer(tmp_path, ds, rows, other):
    if other == "ingest":
        b = start("ingest", _wide(tmp_path, "other", rows, dim=8, seed=6), "--out", ds,
                  "--space", "w2")
    elif other == "index":
        b = start("index", ds, "--space", "default", "--kind", "flat")
    else:
        b = start("reduce", ds, "--space", "default", "--method", "pca", "--no-quality")
    finish(b)


def test_two_ingests_started_together_both_kept(tmp_path):
    rows = 20000
    ds = make_ds(tmp_path / "ds", rows=rows)
    a = start("ingest", _wide(tmp_path, "x1", rows, dim=64), "--out", ds, "--space", "x1")
    b = start("ingest", _wide(tmp_path, "x2", rows, dim=64, seed=7), "--out", ds,
              "--space", "x2")
    finish(a)
    finish(b)
    assert sorted(Dataset.open(ds).spaces) == ["default", "x1", "x2"]
    assert_clean(ds)
    d = Dataset.open(ds, verify="full")
    assert d.space("x2").vectors.shape == (rows, 64)


@pytest.mark.slow
def test_two_reduces_at_once_both_kept(tmp_path):
    ds = make_ds(tmp_path / "ds")
    a = start("reduce", ds, "--method", "pca", "--seed", "1", "--no-quality")
    b = start("reduce", ds, "--method", "pca", "--seed", "2", "--no-quality")
    finish(a)
    finish(b)
    assert len(Dataset.open(ds).manifest["layouts"]) == 2
    assert_clean(ds)


def test_same_new_space_twice_at_once_second_is_refused(tmp_path):
    rows = 20000
    ds = make_ds(tmp_path / "ds", rows=rows)
    x = _wide(tmp_path, "x", rows, dim=64)
    procs = [start("ingest", x, "--out", ds, "--space", "x") for _ in range(2)]
    outs = [p.communicate(timeout=180) for p in procs]
    assert sorted(p.returncode for p in procs) == [0, 2], outs
    err = next(o[1] for p, o in zip(procs, outs) if p.returncode == 2)
    assert "already has a space 'x'" in err or "another command added" in err, err
    assert "Traceback" not in err
    assert_sound(ds)


def test_waiting_writer_logs_then_times_out_clearly(tmp_path):
    ds = make_ds(tmp_path / "ds", rows=500, meta=False)
    with open(ds / ".lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        t0 = time.monotonic()
        p = bigembed("gc", ds, env={"BIGEMBED_LOCK_TIMEOUT": "1"})
        assert time.monotonic() - t0 < 30
        assert_clean_error(p, "locked by another writer", "BIGEMBED_LOCK_TIMEOUT")
        assert p.returncode == 2 and "waiting" in p.stderr
        q = start("gc", ds)
        time.sleep(1.0)
        assert q.poll() is None  # waits while the lock is held
    assert "removed 0 orphans" in finish(q)


# -- damaged bytes: named, exit 2 -------------------------------------------------------------


def flip(path: Path, at: float = 0.5):
    data = bytearray(path.read_bytes())
    data[int(len(data) * at)] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def indexed_once(tmp_path_factory):
    ds = make_ds(tmp_path_factory.mktemp("indexed") / "ds")
    build_index(ds, kind="ivf")
    reduce(ds, method="pca", quality=False)
    return ds


@pytest.fixture
def indexed(indexed_once, tmp_path):
    """A dataset with a stored IVF index and a layout (a fresh copy per test)."""
    shutil.copytree(indexed_once, tmp_path / "ds")
    return tmp_path / "ds"


def test_flipped_byte_in_a_shard_stops_a_lookup(indexed):
    shard = sorted((indexed / "spaces" / "default").glob("part-*"))[-1]
    flip(shard, 0.9)
    for p in (bigembed("neighbors", indexed, "--id", "2999"), bigembed("info", indexed)):
        assert p.returncode == 2, p.stdout + p.stderr
        assert shard.name in p.stdout + p.stderr and "checksum" in p.stdout + p.stderr
        assert "Traceback" not in p.stderr


def test_flipped_byte_in_an_index_stops_a_lookup(indexed):
    idx = next((indexed / "indexes").glob("*.faiss"))
    flip(idx, 0.7)
    p = bigembed("neighbors", indexed, "--id", "1")
    assert_clean_error(p, idx.name, "checksum", "--force")
    assert p.returncode == 2
    q = bigembed("info", indexed)
    assert q.returncode == 2 and idx.name in q.stdout


def test_meta_damaged_in_place_is_named(indexed, tmp_path):
    meta = indexed / "meta.parquet"
    size = meta.stat().st_size
    flip(meta, 0.3)
    assert meta.stat().st_size == size
    for cmd in (["neighbors", indexed, "--id", "1"],
                ["render", indexed, "--out", tmp_path / "v.png", "--color-by", "label"],
                ["info", indexed]):
        p = bigembed(*cmd)
        assert p.returncode == 2, (cmd, p.stdout, p.stderr)
        assert "meta.parquet" in p.stdout + p.stderr and "Traceback" not in p.stderr


# -- read-only datasets ---------------------------------------------------------------------


@pytest.fixture
def read_only(tmp_path):
    """A dataset no command can write: a read-only bind mount as root (permission bits do not
    stop root), read-only permission bits otherwise."""
    ds = tmp_path / "ds"
    with DatasetWriter(ds, mode="create") as dw:
        with dw.space("default", dim=8) as sw:
            x = np.random.default_rng(0).standard_normal((500, 8)).astype(np.float32)
            x[7, 3] = np.nan  # computing anything from it fails: the refusal must come first
            sw.write(x)
    np.save(tmp_path / "more.npy", np.zeros((500, 8), np.float32))
    if os.geteuid() == 0:
        ro = tmp_path / "ro"
        ro.mkdir()
        if subprocess.run(["mount", "--bind", str(ds), str(ro)], capture_output=True).returncode:
            pytest.skip("cannot make a read-only mount here")
        try:
            if subprocess.run(["mount", "-o", "remount,bind,ro", str(ro)],
                              capture_output=True).returncode:
                pytest.skip("cannot make a read-only mount here")
            yield ro
        finally:
            subprocess.run(["umount", str(ro)], capture_output=True)
    else:
        paths = [ds, *ds.rglob("*")]
        for p in paths:
            os.chmod(p, 0o555 if p.is_dir() else 0o444)
        try:
            yield ds
        finally:
            for p in paths:
                os.chmod(p, 0o755 if p.is_dir() else 0o644)


def test_read_only_dataset_refused_before_computing(read_only):
    """Finding 4: `reduce` computed for seconds, then died with a PermissionError traceback."""
    ds = read_only
    for cmd in (["reduce", ds, "--space", "default", "--method", "umap"],
                ["index", ds, "--space", "default"],
                ["ingest", ds.parent / "more.npy", "--out", ds, "--space", "more"],
                ["neighbors", ds, "--id", "1"]):
        p = bigembed(*cmd)
        assert_clean_error(p, "not writable")
        assert p.returncode == 2 and "NaN" not in p.stderr and "non-finite" not in p.stderr
        assert not (ds / "layouts").exists() and not (ds / "indexes").exists()
    # Reading needs no write: info validates it (and finds nothing to collect).
    p = bigembed("info", ds)
    assert p.returncode == 0, p.stdout + p.stderr


# -- orphans --------------------------------------------------------------------------------


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_info_reports_orphans_and_gc_removes_only_them(tmp_path):
    ds = make_ds(tmp_path / "ds", rows=2000)
    build_index(ds)
    reduce(ds, method="pca", quality=False)
    dead = _dead_pid()
    dirs = [ds / "spaces" / f".x.tmp-{dead}-0000abcd", ds / "spaces" / "lost",
            tmp_path / f".ds.tmp-{dead}-00001111"]
    files = [ds / "indexes" / f".a.faiss.tmp-{dead}-1234abcd",
             ds / "graphs" / f".g.arrow.tmp-{dead}-1234abcd", ds / "layouts" / "old.arrow",
             ds / "meta.0123456789abcdef.parquet", ds / f".meta.parquet.tmp-{dead}-0000beef"]
    orphans = dirs + files
    for o in dirs:
        o.mkdir(parents=True)
        (o / "part-00000-of-00001.arrow").write_bytes(b"y" * 5000)
    for o in files:
        o.parent.mkdir(parents=True, exist_ok=True)
        o.write_bytes(b"x" * 1000)
    keep = [ds / "cache" / "anything.bin", ds / "notes.txt"]
    for k in keep:
        k.parent.mkdir(exist_ok=True)
        k.write_text("mine")
    live = ds / "indexes" / f".b.faiss.tmp-{os.getppid()}-5678abcd"  # a live process's
    live.write_bytes(b"z")
    p = ok("info", ds)
    assert "orphans: 8" in p.stdout and "bigembed gc" in p.stdout, p.stdout
    assert "being written" in p.stdout
    rc, info = info_json(ds)
    assert rc == 0 and info["valid"]
    assert sorted(o["path"] for o in info["orphans"]) == sorted(map(str, orphans))
    g = ok("gc", ds, "--dry-run")
    assert "would remove 8 orphans" in g.stdout and all(o.exists() for o in orphans)
    g = ok("gc", ds)
    assert "removed 8 orphans" in g.stdout
    assert not any(o.exists() for o in orphans)
    assert all(k.exists() for k in keep) and live.exists()
    live.unlink()
    assert_clean(ds)
    ok("neighbors", ds, "--id", "5")


def test_gc_never_removes_what_a_live_writer_is_writing(tmp_path):
    rows = 20000
    ds = make_ds(tmp_path / "ds", rows=rows)
    a = start("ingest", _wide(tmp_path, "wide", rows, dim=256), "--out", ds, "--space", "w")
    _while_ingesting(ds, a)
    with paused(a):
        g = ok("gc", ds)
        assert "removed 0 orphans" in g.stdout and "kept" in g.stdout
        assert "being written by process" in ok("info", ds).stdout
    finish(a)
    assert "w" in assert_clean(ds)["spaces"]


def test_writer_collects_a_killed_writers_orphans_first(tmp_path):
    ds = make_ds(tmp_path / "ds", rows=2000)
    dead = _dead_pid()
    junk = ds / "spaces" / f".big.tmp-{dead}-0000abcd"
    junk.mkdir()
    (junk / "part-00000.arrow").write_bytes(b"0" * 100000)
    (ds / "spaces" / "unlisted").mkdir()
    ok("index", ds)
    assert not junk.exists() and not (ds / "spaces" / "unlisted").exists()
    assert_clean(ds)


# -- keys -----------------------------------------------------------------------------------


def _keyed_input(tmp_path, keys):
    n = len(keys)
    x = np.random.default_rng(2).standard_normal((n, 4)).astype(np.float32)
    t = pa.table({"key": keys, "vec": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), 4)})
    pq.write_table(t, tmp_path / "in.parquet")
    return tmp_path / "in.parquet"


def test_duplicate_keys_refused_or_allowed_and_reported(tmp_path):
    keys = [f"k{i}" for i in range(100)]
    keys[40] = keys[70] = "twin"
    src = _keyed_input(tmp_path, keys)
    p = bigembed("ingest", src, "--out", tmp_path / "ds")
    assert_clean_error(p, "'twin'", "more than once", "--allow-duplicate-keys")
    assert p.returncode == 2 and not (tmp_path / "ds").exists()
    ok("ingest", src, "--out", tmp_path / "ds", "--allow-duplicate-keys")
    q = ok("neighbors", tmp_path / "ds", "--key", "twin", "--json")
    r = json.loads(q.stdout)
    assert r["query"]["id"] == 40
    assert any("matches 2 instances" in n and "id 40" in n for n in r["notes"]), r["notes"]
    q = ok("neighbors", tmp_path / "ds", "--key", "twin")
    assert "matches 2 instances (ids 40, 70)" in q.stdout


def test_unknown_key_column_is_refused_naming_the_columns(tmp_path):
    src = _keyed_input(tmp_path, [f"k{i}" for i in range(50)])
    p = bigembed("ingest", src, "--out", tmp_path / "ds", "--key", "name")
    assert_clean_error(p, "--key", "'name'", "'key'")
    np.save(tmp_path / "v.npy", np.zeros((50, 3), np.float32))
    pq.write_table(pa.table({"label": np.arange(50)}), tmp_path / "m.parquet")
    p = bigembed("ingest", tmp_path / "v.npy", "--out", tmp_path / "ds", "--meta",
                 tmp_path / "m.parquet", "--key", "id")
    assert_clean_error(p, "'id'", "'label'")
    assert not (tmp_path / "ds").exists()
