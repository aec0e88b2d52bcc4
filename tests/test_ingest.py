"""Ingest from every supported format, metadata joins, and every kind of bad input."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.feather as feather
import pyarrow.parquet as pq
import pytest
from conftest import assert_clean_error

from bigembed import Dataset


@pytest.fixture
def vecs(rng):
    return rng.standard_normal((257, 12)).astype(np.float32)


def table_with_list(x, fixed=True):
    typ = pa.list_(pa.float32(), x.shape[1]) if fixed else pa.list_(pa.float32())
    flat = pa.array(x.reshape(-1))
    if fixed:
        arr = pa.FixedSizeListArray.from_arrays(flat, x.shape[1])
    else:
        offsets = pa.array(np.arange(0, x.size + 1, x.shape[1], dtype=np.int32))
        arr = pa.ListArray.from_arrays(offsets, flat)
    return pa.table({"key": [f"k{i}" for i in range(len(x))],
                     "label": np.arange(len(x)) % 3, "emb": arr.cast(typ)})


def ingested(path, space="default"):
    ds = Dataset.open(path, verify="full")
    return ds, np.asarray(ds.space(space).vectors)


@pytest.mark.parametrize("fmt", ["npy", "npz", "npz_compressed", "parquet_fixed",
                                 "parquet_list", "arrow", "feather", "csv_header", "csv_plain",
                                 "parquet_wide"])
def test_every_format_round_trips(tmp_path, cli, vecs, fmt):
    x = vecs
    if fmt == "npy":
        src = tmp_path / "v.npy"
        np.save(src, x)
    elif fmt.startswith("npz"):
        src = tmp_path / "v.npz"
        (np.savez_compressed if "compressed" in fmt else np.savez)(src, vectors=x,
                                                                    labels=np.arange(len(x)))
    elif fmt == "parquet_fixed":
        src = tmp_path / "v.parquet"
        pq.write_table(table_with_list(x), src, row_group_size=50)
    elif fmt == "parquet_list":
        src = tmp_path / "v.parquet"
        pq.write_table(table_with_list(x, fixed=False), src)
    elif fmt == "arrow":
        src = tmp_path / "v.arrow"
        t = table_with_list(x)
        with pa.OSFile(str(src), "wb") as f, pa.ipc.new_file(f, t.schema) as w:
            for b in t.to_batches(max_chunksize=100):
                w.write_batch(b)
    elif fmt == "feather":
        src = tmp_path / "v.feather"
        feather.write_feather(table_with_list(x), src)
    elif fmt == "csv_header":
        src = tmp_path / "v.csv"
        pcsv.write_csv(pa.table({f"f{j}": x[:, j] for j in range(x.shape[1])}), src)
    elif fmt == "csv_plain":
        src = tmp_path / "v.csv"
        np.savetxt(src, x, delimiter=",", fmt="%.9g")
    elif fmt == "parquet_wide":
        src = tmp_path / "v.parquet"
        cols = {f"f{j}": x[:, j] for j in range(x.shape[1])}
        cols["label"] = np.arange(len(x)) % 4
        pq.write_table(pa.table(cols), src)
    p = cli("ingest", src, "--out", tmp_path / "ds")
    assert p.returncode == 0, p.stderr
    ds, got = ingested(tmp_path / "ds")
    np.testing.assert_allclose(got, x, rtol=1e-6, atol=1e-6)
    assert ds.rows == len(x) and (ds.meta["id"].to_numpy() == np.arange(len(x))).all()
    if fmt in ("parquet_fixed", "parquet_list", "arrow", "feather"):
        assert list(ds.meta["label"]) == list(np.arange(len(x)) % 3)
        assert ds.meta["key"].iloc[5] == "k5"
    if fmt == "parquet_wide":
        assert "label" in ds.meta.columns and ds.space().dim == 12


def test_several_inputs_concatenate_and_spaces_add(tmp_path, cli, vecs):
    np.save(tmp_path / "a.npy", vecs[:100])
    np.save(tmp_path / "b.npy", vecs[100:])
    assert cli("ingest", tmp_path / "a.npy", tmp_path / "b.npy", "--out", tmp_path / "ds",
               "--space", "layer1").returncode == 0
    np.save(tmp_path / "c.npy", vecs[:, :5].astype(np.float16))
    p = cli("ingest", tmp_path / "c.npy", "--out", tmp_path / "ds", "--space", "layer2")
    assert p.returncode == 0, p.stderr
    ds = Dataset.open(tmp_path / "ds", verify="full")
    assert sorted(ds.spaces) == ["layer1", "layer2"]
    np.testing.assert_array_equal(ds.space("layer1").vectors, vecs)
    assert ds.space("layer2").dtype == "float16" and ds.space("layer2").dim == 5
    # The same space again is refused unless --overwrite.
    p = cli("ingest", tmp_path / "c.npy", "--out", tmp_path / "ds", "--space", "layer2")
    assert_clean_error(p, "already has a space 'layer2'", "--overwrite")


def test_meta_by_row_order_and_by_key(tmp_path, cli, vecs):
    np.save(tmp_path / "v.npy", vecs)
    meta = pa.table({"name": [f"n{i}" for i in range(len(vecs))], "score": np.arange(len(vecs))})
    pq.write_table(meta, tmp_path / "m.parquet")
    p = cli("ingest", tmp_path / "v.npy", "--out", tmp_path / "ds", "--meta",
            tmp_path / "m.parquet", "--key", "name")
    assert p.returncode == 0, p.stderr
    ds = Dataset.open(tmp_path / "ds")
    assert ds.meta["key"].iloc[7] == "n7" and ds.meta["score"].iloc[7] == 7
    # By key: vectors in a table carrying the key, metadata shuffled.
    t = table_with_list(vecs)
    pq.write_table(t, tmp_path / "v.parquet")
    perm = np.random.default_rng(0).permutation(len(vecs))
    shuffled = pa.table({"key": [f"k{i}" for i in perm], "colour": [f"c{i}" for i in perm]})
    pq.write_table(shuffled, tmp_path / "m2.parquet")
    p = cli("ingest", tmp_path / "v.parquet", "--out", tmp_path / "ds2", "--meta",
            tmp_path / "m2.parquet", "--key", "key")
    assert p.returncode == 0, p.stderr
    m = Dataset.open(tmp_path / "ds2").meta
    assert (m["colour"] == [f"c{i}" for i in range(len(vecs))]).all()


def test_nan_rows_refused_then_dropped_and_recorded(tmp_path, cli, vecs):
    x = vecs.copy()
    x[[3, 50, 51], 2] = np.nan
    x[100, 0] = np.inf
    np.save(tmp_path / "v.npy", x)
    p = cli("ingest", tmp_path / "v.npy", "--out", tmp_path / "ds")
    assert_clean_error(p, "4 of 257 rows hold NaN or Inf", "[3, 50, 51, 100]", "--drop-invalid")
    assert not (tmp_path / "ds").exists()
    assert not any(x.name.startswith(".ds") for x in tmp_path.iterdir())
    p = cli("ingest", tmp_path / "v.npy", "--out", tmp_path / "ds", "--drop-invalid")
    assert p.returncode == 0, p.stderr
    ds = Dataset.open(tmp_path / "ds", verify="full")
    assert ds.rows == 253
    assert ds.manifest["spaces"]["default"]["dropped"]["count"] == 4
    assert ds.manifest["spaces"]["default"]["dropped"]["first_input_rows"] == [3, 50, 51, 100]
    keep = np.setdiff1d(np.arange(257), [3, 50, 51, 100])
    np.testing.assert_array_equal(ds.space().vectors, vecs[keep])
    assert (ds.meta["source_row"].to_numpy() == keep).all()


def test_bad_inputs_each_get_one_clear_message(tmp_path, cli, vecs):
    out = tmp_path / "ds"
    cases = []
    (tmp_path / "empty.npy").write_bytes(b"")
    cases.append(([tmp_path / "empty.npy"], ["empty.npy", "empty"]))
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    cases.append(([tmp_path / "obj.npy"], ["obj.npy", "Python objects"]))
    np.save(tmp_path / "one.npy", np.arange(5.0))
    cases.append(([tmp_path / "one.npy"], ["one.npy", "expected 2-D"]))
    (tmp_path / "adir.npy").mkdir()
    cases.append(([tmp_path / "adir.npy"], ["adir.npy", "is a directory"]))
    np.save(tmp_path / "a.npy", vecs)
    np.save(tmp_path / "b.npy", vecs[:, :5])
    cases.append(([tmp_path / "a.npy", tmp_path / "b.npy"], ["b.npy", "dimension 5", "12"]))
    ragged = pa.table({"emb": pa.array([[1.0, 2.0], [3.0], [4.0, 5.0]])})
    pq.write_table(ragged, tmp_path / "ragged.parquet")
    cases.append(([tmp_path / "ragged.parquet"], ["ragged.parquet", "row 1 has 1 values",
                                                  "expected 2"]))
    pq.write_table(pa.table({"a": [1.0, 2.0], "b": ["x", "y"]}), tmp_path / "str.parquet")
    cases.append(([tmp_path / "str.parquet"], ["str.parquet", "column 'b'", "expected numbers"]))
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n3,abc\n")
    cases.append(([tmp_path / "bad.csv"], ["bad.csv", "column 'b'"]))
    (tmp_path / "trunc.npy").write_bytes(open(tmp_path / "a.npy", "rb").read()[:300])
    cases.append(([tmp_path / "trunc.npy"], ["trunc.npy"]))
    (tmp_path / "v.txt").write_text("1,2")
    cases.append(([tmp_path / "v.txt"], ["v.txt", "unknown file type"]))
    with zipfile.ZipFile(tmp_path / "two.npz", "w"):
        pass
    cases.append(([tmp_path / "two.npz"], ["two.npz", "no arrays"]))
    for inputs, frags in cases:
        p = cli("ingest", *inputs, "--out", out)
        assert_clean_error(p, *frags)
        assert not out.exists(), f"{inputs} left {out} behind"


def test_meta_with_wrong_row_count(tmp_path, cli, vecs):
    np.save(tmp_path / "v.npy", vecs)
    pq.write_table(pa.table({"label": np.arange(10)}), tmp_path / "m.parquet")
    p = cli("ingest", tmp_path / "v.npy", "--out", tmp_path / "ds", "--meta",
            tmp_path / "m.parquet")
    assert_clean_error(p, "m.parquet", "10 rows", "257")
    assert not (tmp_path / "ds").exists()


def test_add_space_with_wrong_rows_keeps_dataset(tmp_path, cli, vecs):
    np.save(tmp_path / "v.npy", vecs)
    assert cli("ingest", tmp_path / "v.npy", "--out", tmp_path / "ds").returncode == 0
    before = (tmp_path / "ds" / "manifest.json").read_text()
    np.save(tmp_path / "w.npy", vecs[:10])
    p = cli("ingest", tmp_path / "w.npy", "--out", tmp_path / "ds", "--space", "other")
    assert_clean_error(p, "10 rows", "257")
    assert (tmp_path / "ds" / "manifest.json").read_text() == before
    assert sorted(x.name for x in (tmp_path / "ds" / "spaces").iterdir()) == ["default"]


def test_info_json(tmp_path, cli, small_ds):
    p = cli("info", small_ds, "--json")
    assert p.returncode == 0, p.stderr
    info = json.loads(p.stdout)
    assert info["rows"] == 2000 and info["valid"] is True
    assert info["spaces"]["default"]["dim"] == 16
    assert info["verified"] == "checksums"


def test_layout_made_elsewhere_is_ingested_rendered_and_described(tmp_path, cli, rng):
    """`ingest --layout x,y`: the coordinates become a layout like any other (method imported,
    content-keyed, with its quality); render draws it and info lists it."""
    from bigembed.dataset.layouts import find_layouts, load_layout
    from bigembed.errors import InputError
    from bigembed.reduce.run import import_layout

    centres = rng.normal(0, 5, (4, 8))
    lab = np.arange(400) % 4
    x = (centres[lab] + rng.standard_normal((400, 8))).astype(np.float32)
    xy = x[:, :2] * 1.5 + 3  # a layout that keeps the clusters apart
    # wide numeric columns: x and y must not be taken for vector components
    t = pa.table({**{f"f{i}": x[:, i] for i in range(8)}, "label": lab,
                  "x": xy[:, 0], "y": xy[:, 1]})
    pq.write_table(t, tmp_path / "v.parquet")
    p = cli("ingest", tmp_path / "v.parquet", "--out", tmp_path / "d", "--layout", "x,y")
    assert p.returncode == 0, p.stderr
    assert "imported from columns x,y" in p.stdout
    ds = Dataset.open(tmp_path / "d")
    assert ds.space().dim == 8
    (name,) = find_layouts(ds, method="imported")
    lay = load_layout(ds, name=name)
    np.testing.assert_allclose(lay.xy, xy, rtol=1e-6)
    q = lay.record["quality"]
    assert 0 < q["knn_preservation"] <= 1 and q["trustworthiness"] > 0.5
    assert lay.columns["knn_preservation"].shape == (400,)
    assert lay.record["source"]["columns"] == ["x", "y"]
    png = tmp_path / "v.png"
    p = cli("render", tmp_path / "d", "--out", png, "--color-by", "label")
    assert p.returncode == 0 and name in p.stdout, p.stderr
    p = cli("info", tmp_path / "d", "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["layouts"][name]["method"] == "imported"
    p = cli("info", tmp_path / "d")
    assert name in p.stdout and "knn_preservation" in p.stdout

    # from --meta, for .npy vectors (the library call the CLI makes); a missing or
    # non-numeric column is a clear error before anything is written
    from bigembed.ingest.run import ingest

    np.save(tmp_path / "v.npy", x)
    pq.write_table(pa.table({"px": xy[:, 0], "py": xy[:, 1], "s": ["a"] * 400}),
                   tmp_path / "m.parquet")
    r = ingest(tmp_path / "v.npy", out=tmp_path / "e", meta=tmp_path / "m.parquet",
               layout=("px", "py"))
    assert r.layout.method == "imported" and r.layout.name.startswith("default.imported.")
    again = import_layout(Dataset.open(tmp_path / "e"), xy)  # same content, same artifact
    assert again.cached and again.name == r.layout.name
    with pytest.raises(InputError, match="layout: no column 'nope'"):
        ingest(tmp_path / "v.npy", out=tmp_path / "f", meta=tmp_path / "m.parquet",
               layout="px,nope")
    assert not (tmp_path / "f").exists()
    with pytest.raises(InputError, match="layout: column 's' holds string"):
        ingest(tmp_path / "v.npy", out=tmp_path / "g", meta=tmp_path / "m.parquet",
               layout="px,s")
