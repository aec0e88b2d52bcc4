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
