"""``bigembed render`` draws the map's frame: the CLI PNG equals ``FrameRenderer.render`` of the
same view laid on the same background, for every kind of colouring."""

from __future__ import annotations

import io

import numpy as np
import pytest
from conftest import assert_clean_error, run_cli
from PIL import Image

from bigembed.dataset.reader import Dataset
from bigembed.errors import InputError
from bigembed.view.frames import FrameRenderer
from bigembed.view.render import composite, render, render_image


@pytest.fixture(scope="module")
def laid_out(tmp_path_factory):
    """2,000 points in 5 clusters (labels, confidence, correctness) with a PCA layout."""
    from bigembed.ingest.synth import synth
    from bigembed.reduce.run import reduce

    path = tmp_path_factory.mktemp("render") / "ds"
    synth(path, n=2000, dim=16, clusters=5, error_rate=0.1, seed=3)
    reduce(path, method="pca")
    return path


def _rgba(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGBA")).astype(np.int32)


def _over_white(rgba: np.ndarray) -> np.ndarray:
    """The frame over an opaque white background, by the "over" formula (independent of PIL)."""
    a = rgba[..., 3:4] / 255.0
    return np.rint(rgba[..., :3] * a + 255.0 * (1 - a)).astype(np.int32)


def _check_is_frame(got: np.ndarray, laid_out, color, width, height):
    """``got`` (H, W, 3) is the map's frame of the whole layout over white."""
    assert got.shape == (height, width, 3)  # opaque RGB, as the CLI always wrote
    fr = FrameRenderer(Dataset.open(laid_out))
    xr, yr = fr.default_range()
    frame = _rgba(fr.render(x_range=xr, y_range=yr, width=width, height=height,
                            color_by=color).png)
    want = _over_white(frame)
    opaque_or_empty = np.isin(frame[..., 3], (0, 255))
    assert (got[opaque_or_empty] == want[opaque_or_empty]).all()
    assert np.abs(got - want).max() <= 1  # rounding of partly transparent pixels only
    assert (frame[..., 3] > 0).mean() > 0.01  # points were drawn
    assert (got[frame[..., 3] == 0] == 255).all()  # white where the map is empty


@pytest.mark.parametrize("color", [None, "label"])
def test_cli_png_is_the_map_frame(laid_out, tmp_path, color):
    png = tmp_path / "view.png"
    args = ["render", laid_out, "--out", png, "--width", 320, "--height", 240]
    p = run_cli(*args, *(["--color-by", color] if color else []), check=True)
    assert f"wrote {png}" in p.stdout and f"colour by {color or 'density'}" in p.stdout
    _check_is_frame(np.asarray(Image.open(png)).astype(np.int32), laid_out, color, 320, 240)


@pytest.mark.parametrize("color", ["confidence", "correct", "knn_preservation", "prediction"])
def test_render_png_is_the_map_frame(laid_out, tmp_path, color):
    r = render(laid_out, out=tmp_path / "v.png", color_by=color, width=200, height=150)
    assert r.color_by == color and r.legend["column"] == color
    _check_is_frame(np.asarray(Image.open(r.path)).astype(np.int32), laid_out, color, 200, 150)


def test_transparent_background_is_the_frame_itself(laid_out, tmp_path):
    out = tmp_path / "t.png"
    res = render(laid_out, out=out, color_by="label", width=200, height=200, background=None)
    assert res.path == out and res.color_by == "label" and res.width == 200
    fr = FrameRenderer(Dataset.open(laid_out))
    frame = fr.render(x_range=res.x_range, y_range=res.y_range, width=200, height=200,
                      color_by="label")
    assert (_rgba(out.read_bytes()) == _rgba(frame.png)).all()
    # the legend is the map's legend
    assert res.legend == fr.legend("label") and res.legend["kind"] == "categorical"
    assert [it["name"] for it in res.legend["items"]] == ["0", "1", "2", "3", "4"]
    # the view is the map's opening view: the whole layout, padded
    assert (res.x_range, res.y_range) == tuple(tuple(map(float, r)) for r in fr.default_range())
    # below the exact budget the map's auto mode aggregates every point too
    auto = render(laid_out, out=tmp_path / "a.png", color_by="label", width=200, height=200,
                  background=None, mode="auto")
    assert (_rgba(auto.path.read_bytes()) == _rgba(frame.png)).all()
    # render_image (the library form) gives the same picture
    img = render_image(Dataset.open(laid_out), res.layout, color_by="label", width=200,
                       height=200, background=None)
    assert (np.asarray(img).astype(np.int32) == _rgba(out.read_bytes())).all()


def test_background_colour_and_layout_choice(laid_out, tmp_path):
    ds = Dataset.open(laid_out)
    pca = ds.manifest["layouts"]
    out = tmp_path / "b.png"
    p = run_cli("render", laid_out, "--out", out, "--background", "#102030", "--width", 64,
                "--height", 64, "--method", "pca", check=True)
    img = np.asarray(Image.open(out))
    corners = img[[0, 0, -1, -1], [0, -1, 0, -1]]
    assert (corners == (16, 32, 48)).all(), corners
    assert list(pca)[0] in p.stdout
    # --layout names the layout drawn
    name = list(pca)[0]
    r = render(laid_out, out=tmp_path / "n.png", layout=name, width=50, height=40)
    assert r.layout == name and Image.open(r.path).size == (50, 40)


@pytest.mark.parametrize("kw, frag", [
    (dict(width=0), "^width"), (dict(height=5000), "^height"), (dict(width=True), "^width"),
    (dict(color_by="zz"), "'zz'"), (dict(background="no-such-colour"), "^background"),
    (dict(layout="nope"), "nope"), (dict(mode="pyramid"), "mode"), (dict(method="tsne"), "tsne"), (dict(space="x"), "'x'"),
])
def test_render_bad_input_writes_nothing(laid_out, tmp_path, kw, frag):
    out = tmp_path / "bad.png"
    with pytest.raises(InputError, match=frag):
        render(laid_out, out=out, **kw)
    assert not out.exists() and not list(tmp_path.iterdir())


def test_render_cli_bad_input(laid_out, tmp_path):
    assert_clean_error(run_cli("render", laid_out, "--out", tmp_path / "v.png", "--color-by",
                               "zz"), "--color-by", "'zz'")
    assert_clean_error(run_cli("render", laid_out, "--out", tmp_path / "v.png", "--width",
                               "99999"), "--width", "1..4096")
    assert_clean_error(run_cli("render", laid_out, "--out", tmp_path / "v.jpg"), ".png")
    assert_clean_error(run_cli("render", laid_out, "--out", tmp_path), ".png")
    assert not list(tmp_path.glob("*.png"))


def test_composite_rejects_bad_colour():
    buf = io.BytesIO()
    Image.new("RGBA", (2, 2), (10, 20, 30, 128)).save(buf, format="PNG")
    with pytest.raises(InputError, match="^background"):
        composite(buf.getvalue(), "not a colour")
    rgb = np.asarray(composite(buf.getvalue(), "black"))
    assert rgb.shape == (2, 2, 3) and np.abs(rgb.astype(int) - [5, 10, 15]).max() <= 1
