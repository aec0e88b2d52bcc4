"""Damaged datasets: each problem named (which shard, expected vs found), no traceback, and
nothing on disk changed by looking."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import assert_clean_error

from bigembed import Dataset, DatasetError, DatasetWriter


@pytest.fixture
def sharded(tmp_path, rng):
    x = rng.standard_normal((3000, 24)).astype(np.float32)
    with DatasetWriter(tmp_path / "ds", mode="create") as dw:
        with dw.space("default", dim=24, rows_per_shard=1024, total_rows=3000) as sw:
            sw.write(x)
    return tmp_path / "ds"


def shard(ds, i):
    return sorted((ds / "spaces" / "default").glob("part-*.arrow"))[i]


def snapshot(path):
    return {p: p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file() and p.name != ".lock"}


def check_reported(cli, ds, *frags):
    before = snapshot(ds)
    p = cli("info", ds)
    assert p.returncode != 0 and "Traceback" not in p.stderr + p.stdout
    for f in frags:
        assert f in p.stdout, f"{f!r} not in:\n{p.stdout}"
    # Vectors are verified (checksums, once per process) before they feed a layout or answer
    # a lookup; every failure is one line and exit 2, `info`'s included.
    assert p.returncode == 2
    for cmd in (["reduce", ds], ["neighbors", ds, "--id", "0"]):
        q = cli(*cmd)
        assert_clean_error(q, *frags)
        assert q.returncode == 2
    assert snapshot(ds) == before


def test_truncated_shard(cli, sharded):
    p = shard(sharded, 1)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    check_reported(cli, sharded, "part-00001-of-00003.arrow", "truncated")


def test_flipped_bytes_found_by_checksum(cli, sharded):
    p = shard(sharded, 2)
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0xFF
    p.write_bytes(bytes(data))
    check_reported(cli, sharded, "part-00002-of-00003.arrow", "checksum")
    with pytest.raises(DatasetError, match="checksum"):
        Dataset.open(sharded, verify="full")


def test_missing_shard(cli, sharded):
    shard(sharded, 0).unlink()
    check_reported(cli, sharded, "part-00000-of-00003.arrow", "missing")


def test_empty_shard(cli, sharded):
    shard(sharded, 1).write_bytes(b"")
    check_reported(cli, sharded, "part-00001-of-00003.arrow")


def _replace_shard_with(sharded, tmp_path, *, dim, dtype):
    """Swap shard 1 for a well-formed shard of another dimension/dtype, manifest updated."""
    x = np.zeros((1024, dim), dtype)
    with DatasetWriter(tmp_path / "other", mode="create") as dw:
        with dw.space("default", dim=dim, dtype=dtype, rows_per_shard=1024) as sw:
            sw.write(x)
    src = sorted((tmp_path / "other" / "spaces" / "default").glob("part-*"))[0]
    dst = shard(sharded, 1)
    shutil.copy(src, dst)
    m = json.loads((sharded / "manifest.json").read_text())
    rec = m["spaces"]["default"]["shards"][1]
    rec["bytes"] = dst.stat().st_size
    (sharded / "manifest.json").write_text(json.dumps(m))


def test_shard_with_other_dimension(cli, sharded, tmp_path):
    _replace_shard_with(sharded, tmp_path, dim=8, dtype="float32")
    check_reported(cli, sharded, "part-00001-of-00003.arrow", "dimension 8, expected 24")


def test_shard_with_other_dtype(cli, sharded, tmp_path):
    _replace_shard_with(sharded, tmp_path, dim=24, dtype="float16")
    check_reported(cli, sharded, "part-00001-of-00003.arrow", "float16, expected float32")


def test_meta_replaced_by_other_row_count(cli, sharded):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": np.arange(10)}), sharded / "meta.parquet")
    check_reported(cli, sharded, "meta.parquet")


def test_dataset_path_is_a_file(cli, tmp_path):
    (tmp_path / "f").write_text("hello")
    assert_clean_error(cli("info", tmp_path / "f"), "not a directory")
    assert_clean_error(cli("neighbors", tmp_path / "f", "--id", "1"), "not a directory")
