"""The dataset directory: round trips, zero-copy mapping, manifests, artifacts."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bigembed import Dataset, DatasetError, DatasetWriter, InputError
from bigembed.dataset.shards import read_shard


def write(path, x, *, space="a", rows_per_shard=None, dtype="float32", mode="create", **kw):
    with DatasetWriter(path, mode=mode, **kw) as dw:
        with dw.space(space, dim=x.shape[1], dtype=dtype, rows_per_shard=rows_per_shard,
                      total_rows=len(x)) as sw:
            for s in range(0, len(x), 333):
                sw.write(x[s:s + 333])


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_multi_shard_round_trip_is_one_zero_copy_array(tmp_path, rng, dtype):
    x = rng.standard_normal((5003, 40)).astype(dtype)
    write(tmp_path / "d", x, rows_per_shard=512, dtype=dtype)
    ds = Dataset.open(tmp_path / "d")
    sp = ds.space("a")
    assert len(sp.record["shards"]) == 10
    v = sp.vectors
    assert v.shape == (5003, 40) and v.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(v, x)
    # One contiguous mapping over every shard: no copy was made.
    assert not v.flags.owndata and not v.flags.writeable and v.flags.c_contiguous
    for shard in sp.shard_paths:
        _, info = read_shard(shard)
        assert info.body_offset % 4096 == 0
    assert ds.verify() == []
    names = sorted(p.name for p in (tmp_path / "d" / "spaces" / "a").iterdir())
    assert names[0] == "part-00000-of-00010.arrow" and names[-1] == "part-00009-of-00010.arrow"


def test_iter_batches_cover_all_rows(tmp_path, rng):
    x = rng.standard_normal((1000, 3)).astype(np.float32)
    write(tmp_path / "d", x, rows_per_shard=1024)
    sp = Dataset.open(tmp_path / "d").space()
    got = np.concatenate([b for _, b in sp.iter_batches(97)])
    np.testing.assert_array_equal(got, x)


def test_add_space_and_meta_rows_must_match(tmp_path, rng):
    x = rng.standard_normal((100, 8)).astype(np.float32)
    write(tmp_path / "d", x)
    write(tmp_path / "d", x[:, :4].copy(), space="b", mode="append")
    ds = Dataset.open(tmp_path / "d")
    assert sorted(ds.spaces) == ["a", "b"] and ds.space("b").dim == 4
    with pytest.raises(InputError, match="100"):
        write(tmp_path / "d", x[:50], space="c", mode="append")
    # The failed write left the dataset as it was.
    assert sorted(Dataset.open(tmp_path / "d", verify="full").spaces) == ["a", "b"]
    with pytest.raises(InputError, match="already has a space 'a'"):
        write(tmp_path / "d", x, space="a", mode="append")


def test_overwrite_space_replaces_and_drops_stale_artifacts(tmp_path, rng):
    from bigembed.reduce.run import reduce

    x = rng.standard_normal((300, 8)).astype(np.float32)
    write(tmp_path / "d", x)
    reduce(tmp_path / "d", method="pca")
    assert Dataset.open(tmp_path / "d").artifacts("layouts")
    write(tmp_path / "d", 2 * x, mode="append", overwrite=True)
    ds = Dataset.open(tmp_path / "d", verify="full")
    np.testing.assert_allclose(ds.space("a").vectors, 2 * x)
    assert ds.artifacts("layouts") == {}
    assert len(list((tmp_path / "d" / "spaces").iterdir())) == 1


def test_unknown_space_names_close_matches(small_ds):
    ds = Dataset.open(small_ds)
    with pytest.raises(InputError, match="did you mean"):
        ds.space("defualt")


def test_not_a_dataset(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        Dataset.open(tmp_path / "nope")
    (tmp_path / "f").write_text("x")
    with pytest.raises(DatasetError, match="not a directory"):
        Dataset.open(tmp_path / "f")
    (tmp_path / "e").mkdir()
    with pytest.raises(DatasetError, match="manifest.json"):
        Dataset.open(tmp_path / "e")
    (tmp_path / "e" / "manifest.json").write_text("{not json")
    with pytest.raises(DatasetError, match="not valid JSON"):
        Dataset.open(tmp_path / "e")


def test_manifest_lists_checksums_and_is_valid_json(small_ds):
    m = json.loads((small_ds / "manifest.json").read_text())
    assert m["format"] == "bigembed.dataset" and m["rows"] == 2000
    shard = m["spaces"]["default"]["shards"][0]
    assert set(shard) >= {"file", "rows", "bytes", "xxh3_64", "start"}
    assert m["meta"]["rows"] == 2000


def test_synth_meta(small_ds):
    ds = Dataset.open(small_ds)
    meta = ds.meta
    assert list(meta.columns[:2]) == ["id", "key"]
    assert (meta["id"].to_numpy() == np.arange(2000)).all()
    err = 1 - meta["correct"].mean()
    assert 0.05 < err < 0.15
    assert (meta.loc[~meta["correct"], "loss"].mean() > meta.loc[meta["correct"], "loss"].mean())
