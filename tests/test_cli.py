"""The walking end-to-end path through the CLI: synth, reduce, neighbors, render, demo."""

from __future__ import annotations

import json

import numpy as np
from conftest import assert_clean_error
from PIL import Image

from bigembed import Dataset


def test_end_to_end(cli, small_ds, tmp_path):
    p = cli("reduce", small_ds, "--method", "pca")
    assert p.returncode == 0 and "computed" in p.stdout, p.stderr
    p = cli("reduce", small_ds, "--method", "pca")
    assert "up to date" in p.stdout  # content-keyed: the second run reuses it
    p = cli("neighbors", small_ds, "--id", "7", "-k", "5", "--json")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    ids = [n["id"] for n in out["neighbors"]]
    assert len(ids) == 5 and 7 not in ids
    x = Dataset.open(small_ds).space().vectors
    d = np.linalg.norm(x - x[7], axis=1)
    d[7] = np.inf
    assert set(ids) == set(np.argsort(d)[:5].tolist())
    np.testing.assert_allclose([n["distance"] for n in out["neighbors"]], np.sort(d)[:5],
                               rtol=1e-4)
    assert "label" in out["neighbors"][0]
    p = cli("neighbors", small_ds, "--key", "synth-7", "-k", "5")
    assert p.returncode == 0 and "id 7" in p.stdout
    for color in (None, "label", "confidence"):
        png = tmp_path / f"v-{color}.png"
        args = ["render", small_ds, "--out", png] + (["--color-by", color] if color else [])
        p = cli(*args)
        assert p.returncode == 0, p.stderr
        img = np.asarray(Image.open(png).convert("RGB"))
        assert img.shape == (800, 800, 3)
        assert (img != 255).any(axis=2).mean() > 0.01  # points were drawn


def test_neighbors_bad_input(cli, small_ds):
    assert_clean_error(cli("neighbors", small_ds, "--id", "2000"), "out of range", "0..1999")
    assert_clean_error(cli("neighbors", small_ds, "--key", "nope"), "no instance", "'nope'")
    assert_clean_error(cli("neighbors", small_ds, "--id", "1", "--space", "x"), "no space 'x'")
    assert_clean_error(cli("neighbors", small_ds, "--id", "1", "-k", "0"), "-k")
    p = cli("neighbors", small_ds, "--id", "1", "-k", "5000", "--json")
    assert p.returncode == 0
    out = json.loads(p.stdout)
    assert len(out["neighbors"]) == 1999 and "1999" in out["notes"][0]


def test_render_bad_input(cli, small_ds, tmp_path):
    assert_clean_error(cli("render", small_ds, "--out", tmp_path / "v.png"), "no layout",
                       "bigembed reduce")
    cli("reduce", small_ds)
    assert_clean_error(cli("render", small_ds, "--out", tmp_path / "v.png", "--color-by", "zz"),
                       "--color-by", "'zz'")
    assert_clean_error(cli("render", small_ds, "--out", tmp_path / "v.jpg"), ".png")


def test_synth_bad_input(cli, tmp_path):
    assert_clean_error(cli("synth", tmp_path / "d", "--n", "0", "--dim", "4"), "--n")
    assert_clean_error(cli("synth", tmp_path / "d", "--n", "10", "--dim", "4",
                           "--error-rate", "2"), "--error-rate")
    assert cli("synth", tmp_path / "d", "--n", "10", "--dim", "4").returncode == 0
    assert_clean_error(cli("synth", tmp_path / "d", "--n", "10", "--dim", "4"),
                       "already exists", "--overwrite")


def test_demo_runs(cli, tmp_path):
    p = cli("demo", "--out", tmp_path / "demo", "--n", "3000", "--no-serve")
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "demo" / "view.png").exists()
    assert "nearest neighbours" in p.stdout


def test_table_fits_the_width_and_cuts_long_cells():
    from bigembed.commands._common import human_rate, table

    rows = [[1, "0.5", "a\nlong " * 200, "x"], [22, "0.25", "short", "y"]]
    out = table(rows, ["id", "distance", "text", "label"], width=60)
    lines = out.splitlines()
    assert max(len(ln) for ln in lines) <= 60 and "…" in out and "\n" not in lines[2][:-1]
    assert lines[3].split()[-1] == "y"  # the other columns keep their values
    assert table(rows, ["id", "distance", "text", "label"]).count("long") == 200  # no width
    assert human_rate(3_000, 1.0) == "3.00 KB/s" and human_rate(2.5e9, 1.0) == "2.50 GB/s"
    assert human_rate(40e6, 1.0) == "40 MB/s"


def test_auto_backend_log_names_what_was_skipped_and_why(caplog):
    import logging

    from bigembed.registry import stage

    with caplog.at_level(logging.INFO, logger="bigembed.registry"):
        b = stage("knn").resolve("auto")
    msg = [r.getMessage() for r in caplog.records if "using backend" in r.getMessage()][-1]
    assert repr(b.name) in msg and "unavailable" not in msg
    if "skipped" in msg:  # e.g. "skipped faiss-gpu: ...; torch: no CUDA device"
        assert msg.index("using backend") < msg.index("skipped")


def test_quiet_result_lines_rates_and_narrow_neighbour_tables(cli, tmp_path, rng):
    import pyarrow as pa
    import pyarrow.parquet as pq

    x = rng.standard_normal((300, 8)).astype(np.float32)
    np.save(tmp_path / "v.npy", x)
    docs = [f"document {i}\n" + "word " * 200 for i in range(300)]  # 1,000+ characters each
    pq.write_table(pa.table({"text": docs}), tmp_path / "m.parquet")
    p = cli("-q", "ingest", tmp_path / "v.npy", "--out", tmp_path / "d", "--meta",
            tmp_path / "m.parquet")
    assert p.returncode == 0 and p.stdout == "", p.stdout + p.stderr  # -q: nothing to say
    p = cli("ingest", tmp_path / "v.npy", "--out", tmp_path / "d", "--space", "b")
    assert p.returncode == 0 and "wrote space 'b'" in p.stdout
    assert "0.00 GB/s" not in p.stdout and "B/s)" in p.stdout  # a unit that shows a figure
    p = cli("neighbors", tmp_path / "d", "--id", "3", "-k", "4", "--space", "b",
            env={"COLUMNS": "80"})
    assert p.returncode == 0, p.stderr
    assert max(len(ln) for ln in p.stdout.splitlines()) <= 80 and "…" in p.stdout
    p = cli("-q", "neighbors", tmp_path / "d", "--id", "3", "-k", "4", "--space", "b",
            "--json")
    out = json.loads(p.stdout)  # --json keeps every value whole, -q or not
    assert [n["text"] for n in out["neighbors"]] == [docs[n["id"]] for n in out["neighbors"]]
    assert_clean_error(cli("-q", "neighbors", tmp_path / "d", "--id", "300"), "out of range")
