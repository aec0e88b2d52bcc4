"""Hover thumbnails from an ``image`` metadata column: bytes or paths, /api/thumb, the page.

Thumbnails against Pillow-made images of known size and colour; the endpoint on a real server
on 127.0.0.1 (sizes, cache headers, 4xx on bad input); hovering in headless Chromium shows an
<img> that loads; the digits demo gains an image column that is each instance's own input.
"""

from __future__ import annotations

import io
import json
import urllib.error
import urllib.request

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import start_serve, stop_serve, wait_for
from PIL import Image
from test_browser import FRAME_JS, browser, model_text, open_map, to_screen  # noqa: F401

from bigembed.dataset.reader import Dataset
from bigembed.dataset.writer import DatasetWriter
from bigembed.server.state import Explorer
from bigembed.server.thumbs import NoImage, Thumbnails, thumbnail_png

N = 600


def _png(w, h, color, mode="RGB", fmt="PNG") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (w, h), color).save(buf, format=fmt)
    return buf.getvalue()


def _decode(png: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(png))
    assert img.format == "PNG"
    return img


def _colour(i: int) -> tuple:
    return (i * 37 % 256, i * 91 % 256, i * 13 % 256)


def _with_meta_columns(path, columns: dict) -> None:
    """Add metadata columns to a dataset, atomically (the dataset API)."""
    ds = Dataset.open(path)
    table = pq.read_table(ds.path / ds.manifest["meta"]["file"])
    for name, arr in columns.items():
        table = table.append_column(name, arr)
    with DatasetWriter(path, mode="append") as dw:
        dw.set_meta(table)


@pytest.fixture(scope="module")
def image_ds(tmp_path_factory):
    """600 synthetic points whose ``image`` is a PNG (bytes) of its own colour and size; a few
    rows have no image or broken bytes; ``text`` is a text column. PCA layout."""
    from bigembed.ingest.synth import synth
    from bigembed.reduce.run import reduce

    path = tmp_path_factory.mktemp("thumbs") / "ds"
    synth(path, n=N, dim=8, clusters=4, error_rate=0.1, seed=7)
    images = [_png(8 + i % 5, 8, _colour(i)) for i in range(N)]
    images[3] = None                  # no image
    images[4] = b""                   # empty
    images[5] = b"not an image at all"
    images[6] = _png(300, 120, (200, 10, 10), fmt="JPEG")
    _with_meta_columns(path, {"image": pa.array(images, type=pa.binary()),
                              "text": pa.array([f"caption number {i}" for i in range(N)])})
    reduce(path, method="pca")
    return path


@pytest.fixture(scope="module")
def image_served(image_ds):
    proc, url, port = start_serve(image_ds)
    try:
        yield url
    finally:
        stop_serve(proc)


def get(url):
    try:
        with urllib.request.urlopen(url, timeout=60) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


# -- the thumbnail function -----------------------------------------------------------------

@pytest.mark.parametrize("size, mode, fmt, want", [
    ((8, 8), "L", "PNG", (96, 96)),          # a digit: enlarged, pixels kept crisp
    ((300, 100), "RGB", "JPEG", (96, 32)),   # reduced, aspect kept
    ((50, 200), "RGBA", "PNG", (24, 96)),
    ((1, 1), "P", "PNG", (96, 96)),
    ((96, 96), "RGB", "PNG", (96, 96)),
    ((1000, 1), "RGB", "PNG", (96, 1)),
])
def test_thumbnail_sizes_and_modes(tmp_path, size, mode, fmt, want):
    data = _png(*size, 7 if mode in ("L", "P") else (10, 200, 30, 255)[:len(mode)], mode, fmt)
    png = thumbnail_png(data, base_dir=tmp_path)
    assert _decode(png).size == want
    # the same through a file path under the media root, relative and absolute
    f = tmp_path / "img" / f"x.{fmt.lower()}"
    f.parent.mkdir(exist_ok=True)
    f.write_bytes(data)
    assert thumbnail_png("img/" + f.name, base_dir=tmp_path) == png
    assert thumbnail_png(str(f), base_dir=tmp_path) == png
    assert _decode(thumbnail_png(data, base_dir=tmp_path, size=16)).size == \
        tuple(max(1, round(v * 16 / 96)) for v in want)


def test_thumbnail_follows_exif_orientation(tmp_path):
    img = Image.new("RGB", (200, 100), (0, 128, 0))
    exif = img.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif)
    assert _decode(thumbnail_png(buf.getvalue(), base_dir=tmp_path)).size == (48, 96)


def test_thumbnail_keeps_pixels():
    a = np.zeros((8, 8), np.uint8)
    a[2, 5] = 255
    buf = io.BytesIO()
    Image.fromarray(a, mode="L").save(buf, format="PNG")
    t = np.asarray(_decode(thumbnail_png(buf.getvalue(), base_dir=".")))
    assert t.shape == (96, 96)
    # nearest-neighbour enlargement: each source pixel is a 12x12 block
    assert (t[24:36, 60:72] == 255).all() and t.sum() == 255 * 144


@pytest.mark.parametrize("value, frag", [
    (None, "no image"), (float("nan"), "no image"), (pd.NA, "no image"), (b"", "empty"), ("", "empty"),
    (b"\x89PNG\r\n\x1a\n broken", "not a readable image"), ("missing.png", "cannot be read"),
    (".", "not a file"), (12, "int"),
    (_png(64, 64, (9, 9, 9), fmt="JPEG")[:300], "not a readable image"),  # truncated data
])
def test_thumbnail_bad_values(tmp_path, value, frag):
    with pytest.raises(NoImage, match=frag):
        thumbnail_png(value, base_dir=tmp_path)


def test_thumbnail_refuses_huge_images(tmp_path, monkeypatch):
    import bigembed.server.thumbs as th

    monkeypatch.setattr(th, "MAX_PIXELS", 100)
    with pytest.raises(NoImage, match="too large"):
        thumbnail_png(_png(20, 20, (0, 0, 0)), base_dir=tmp_path)
    f = tmp_path / "big.png"
    f.write_bytes(_png(4, 4, (0, 0, 0)))
    monkeypatch.setattr(th, "MAX_FILE_BYTES", 10)
    with pytest.raises(NoImage, match="limit"):
        thumbnail_png(str(f), base_dir=tmp_path)


def test_thumbnails_cache_is_bounded(tmp_path):
    col = np.array([_png(4, 4, _colour(i)) for i in range(5)], dtype=object)
    th = Thumbnails(col, tmp_path, cache_items=2)
    a = th.png(0)
    assert th.png(0) is a  # served from the cache
    th.png(1)
    th.png(2)  # evicts 0 (least recently used)
    assert th.png(0) is not a and th.png(0) == a
    assert len(th._cache) == 2
    with pytest.raises(NoImage, match="id 9"):
        Thumbnails(np.array([None] * 10, dtype=object), tmp_path).png(9)


def test_explorer_thumbnails_from_paths(tmp_path):
    """An image column of paths (relative to the dataset, absolute, missing); an absolute
    path outside the dataset is read only when the media root holds it."""
    from bigembed.ingest.synth import synth
    from bigembed.reduce.run import reduce

    path = tmp_path / "ds"
    synth(path, n=40, dim=4, clusters=2, seed=1)
    (path / "imgs").mkdir()
    outside = tmp_path / "outside.jpg"
    outside.write_bytes(_png(64, 32, (0, 0, 255), fmt="JPEG"))
    paths = []
    for i in range(40):
        (path / "imgs" / f"{i}.png").write_bytes(_png(10, 20, _colour(i)))
        paths.append(f"imgs/{i}.png")
    paths[1], paths[2], paths[3] = str(outside), "imgs/gone.png", None
    _with_meta_columns(path, {"image": pa.array(paths, type=pa.string())})
    reduce(path, method="pca")
    ex = Explorer(path)
    assert ex.has_images
    t = _decode(ex.thumbnail(0))
    assert t.size == (48, 96) and t.convert("RGB").getpixel((10, 10)) == _colour(0)
    with pytest.raises(NoImage, match="outside the media root"):
        ex.thumbnail(1)
    assert _decode(Explorer(path, media_root=tmp_path).thumbnail(1)).size == (96, 48)
    for i, frag in ((2, "cannot be read"), (3, "no image")):
        with pytest.raises(NoImage, match=frag):
            ex.thumbnail(i)
    # the image column is neither searched as text nor offered as a colouring
    assert ex.search("imgs") == []


# -- the endpoint ---------------------------------------------------------------------------

def test_thumb_endpoint(image_served):
    url = image_served
    st, hdr, body = get(f"{url}/api/thumb?id=10")
    assert st == 200 and hdr["Content-Type"] == "image/png"
    assert "max-age" in hdr["Cache-Control"]
    img = _decode(body).convert("RGB")
    w = 8 + 10 % 5
    assert img.size == (96, round(8 * 96 / w))
    assert img.getpixel((5, 5)) == _colour(10)
    st, _, body = get(f"{url}/api/thumb?id=10&size=24")
    assert st == 200 and _decode(body).size == (24, round(8 * 24 / w))
    st, _, body = get(f"{url}/api/thumb?id=6")  # a JPEG, reduced
    assert st == 200 and _decode(body).size == (96, round(120 * 96 / 300))


@pytest.mark.parametrize("query, status, frag", [
    ("id=-1", 400, "id"), (f"id={N}", 400, "id"), ("id=abc", 400, "integer"), ("", 400, "id"),
    ("id=1.5", 400, "integer"), ("id=1&size=0", 400, "size"), ("id=1&size=100000", 400, "size"),
    ("id=" + "9" * 30000, 400, "too long"),
    ("id=3", 404, "no image"), ("id=4", 404, "empty"), ("id=5", 404, "not a readable image"),
])
def test_thumb_endpoint_bad_input(image_served, query, status, frag):
    st, hdr, body = get(f"{image_served}/api/thumb?{query}")
    assert st == status, (st, body)
    assert frag in json.loads(body)["error"]


def test_neighbors_json_names_image_bytes(image_served, image_ds):
    """Image bytes are listed as their size in neighbour JSON, not decoded as text."""
    st, _, body = get(f"{image_served}/api/neighbors?id=10&k=3")
    assert st == 200
    out = json.loads(body)
    assert out["query"]["image"] == f"<{len(_png(8, 8, _colour(10)))} bytes>"
    assert out["query"]["text"] == "caption number 10"
    assert all(n["image"].endswith(" bytes>") for n in out["neighbors"]
               if n["id"] not in (3, 4, 5))


def test_thumb_endpoint_without_image_column(explorer_served):
    url, _, _ = explorer_served
    st, _, body = get(f"{url}/api/thumb?id=1")
    assert st == 404 and "no 'image' metadata column" in json.loads(body)["error"]


# -- the page -------------------------------------------------------------------------------

def _hover(browser, url, path, i):  # noqa: F811  (the fixture, passed in)
    from bigembed.dataset.layouts import load_layout

    lay = load_layout(Dataset.open(path))
    x, y = float(lay.x[i]), float(lay.y[i])
    r = 0.02 * float(np.ptp(lay.x))
    page, _ = open_map(browser, f"{url}/?x0={x - r}&x1={x + r}&y0={y - r}&y1={y + r}")
    f = page.evaluate(FRAME_JS)
    page.mouse.move(*to_screen(f, x, y))
    return page


@pytest.mark.browser
def test_hover_shows_thumbnail_and_text(browser, image_served, image_ds):  # noqa: F811
    i = 12
    page = _hover(browser, image_served, image_ds, i)
    try:
        wait_for(lambda: f"caption number {i}<" in model_text(page, "hover"), 30, page,
                 "hover metadata")
        text = model_text(page, "hover")
        assert f"/api/thumb?id={i}" in text and "<img" in text
        assert "image</th>" not in text  # the bytes are not listed as text
        img = page.locator("img.thumb").first  # Playwright's CSS pierces Bokeh's shadow DOM
        wait_for(lambda: img.evaluate("e => e.complete && e.naturalWidth") == 96, 30, page,
                 "the thumbnail to load")
        assert img.is_visible()
        opts = page.evaluate("() => Bokeh.documents[0].get_model_by_name('color').options")
        assert "image" not in opts and "label" in opts
    finally:
        page.close()


@pytest.mark.browser
def test_hover_without_image_column_has_no_img(browser, explorer_served):  # noqa: F811
    url, _, path = explorer_served
    page = _hover(browser, url, path, 42)
    try:
        wait_for(lambda: "synth-42" in model_text(page, "hover"), 30, page, "hover metadata")
        assert "<img" not in model_text(page, "hover")
    finally:
        page.close()


# -- the demo's digits ----------------------------------------------------------------------

@pytest.mark.slow
def test_digits_dataset_gains_its_images(tmp_path):
    from bigembed.models.digits import (
        N_REAL,
        _digits,
        add_digit_images,
        build_digits_dataset,
    )

    path = tmp_path / "digits"
    build_digits_dataset(path, n=N_REAL + 50, progress=False)
    before = Dataset.open(path).meta
    assert add_digit_images(path) is True
    ds = Dataset.open(path, verify="full")
    meta = ds.meta
    assert list(meta.columns) == list(before.columns) + ["image"]
    pd.testing.assert_frame_equal(meta.drop(columns="image"), before)
    images, _ = _digits()
    for i in (0, 17, N_REAL - 1):  # real digits: the sklearn image, ink dark on white
        a = np.asarray(Image.open(io.BytesIO(meta["image"][i])))
        assert a.shape == (8, 8)
        np.testing.assert_array_equal(a, np.rint(255 * (1 - images[i])).astype(np.uint8))
    aug = np.asarray(Image.open(io.BytesIO(meta["image"][N_REAL + 3])))
    assert aug.shape == (8, 8) and not (aug == np.rint(255 * (1 - images[3]))).all()
    assert add_digit_images(path) is False  # already there: nothing rewritten
    # the extraction is still complete and cached: a second build does not redo it
    assert build_digits_dataset(path, n=N_REAL + 50, progress=False).cached
    assert _decode(thumbnail_png(meta["image"][0], base_dir=path)).size == (96, 96)
