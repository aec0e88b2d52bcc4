"""Box and lasso selections live in the page URL: a shared link restores the same group.

Unit tests of the encoding, then the real server on 127.0.0.1 driven by headless Chromium:
select, read the URL, open it in a new page, see the same count and working export links;
bad selection values in the URL are ignored (the page loads, nothing answers 5xx).
"""

from __future__ import annotations

import json
import urllib.request
from urllib.parse import parse_qs, urlparse

import numpy as np
import pytest
from conftest import wait_for
from test_browser import FRAME_JS, browser, model_text, open_map  # noqa: F401

from bigembed.errors import InputError
from bigembed.server.api import parse_geometry_text
from bigembed.server.app import URL_POLY_MAX, selection_outline, selection_query


def test_selection_query_round_trips_through_the_parser():
    q = selection_query({"type": "rect", "x0": 2.5, "x1": -1.25, "y0": 0.1, "y1": -3.0})
    assert q == {"box": "-1.25,2.5,-3,0.1"}  # sorted, as /api/select wants
    assert parse_geometry_text(q["box"], None) == {"box": ((-1.25, 2.5), (-3.0, 0.1))}
    tri = {"type": "poly", "x": [0.0, 1.0, 0.0], "y": [0.0, 0.0, 1.0]}
    q = selection_query(tri)
    geom = parse_geometry_text(None, q["poly"])
    assert geom == {"polygon": ([0.0, 1.0, 0.0], [0.0, 0.0, 1.0])}
    assert selection_outline(geom) == ([0.0, 1.0, 0.0], [0.0, 0.0, 1.0])
    # a long lasso is thinned evenly to at most URL_POLY_MAX vertices, keeping both ends
    t = np.linspace(0, 2 * np.pi, 5000, endpoint=False)
    q = selection_query({"type": "poly", "x": np.cos(t).tolist(), "y": np.sin(t).tolist()})
    px, py = parse_geometry_text(None, q["poly"])["polygon"]
    assert 3 <= len(px) <= URL_POLY_MAX and px[0] == 1.0
    assert np.allclose(np.hypot(px, py), 1.0)
    assert len(q["poly"]) < 6000
    # 9 significant digits: float32 coordinates survive exactly
    v = np.float32(0.123456789)
    q = selection_query({"type": "rect", "x0": float(v), "x1": 1, "y0": 0, "y1": 1})
    assert np.float32(parse_geometry_text(q["box"], None)["box"][0][0]) == v


@pytest.mark.parametrize("geometry", [
    None, {}, {"type": "point", "x": 1, "y": 2}, {"type": "rect", "x0": float("nan"), "x1": 1,
                                                 "y0": 0, "y1": 1},
    {"type": "rect", "x0": 0, "x1": 1}, {"type": "poly", "x": [0, 1], "y": [0, 1]},
    {"type": "poly", "x": [0, 1, 2], "y": [0, 1]}, {"type": "poly", "x": [0, "a", 1], "y": [0, 1, 2]},
    {"type": "poly", "x": [0, float("inf"), 1], "y": [0, 1, 2]},
])
def test_selection_query_rejects_unusable_geometry(geometry):
    assert selection_query(geometry) is None


@pytest.mark.parametrize("box, poly", [
    (None, None), ("0,1,0,1", "0,0,1,0,0,1"), ("1,0,0,1", None), ("0,1,0", None),
    ("0,1,nan,1", None), ("a,b,c,d", None), (None, "0,0,1,1"), (None, "0,0,1,1,2"),
    ("0," * 10001 + "1", None),
])
def test_parse_geometry_text_bad_input(box, poly):
    with pytest.raises(InputError):
        parse_geometry_text(box, poly)


def _get(url):
    with urllib.request.urlopen(url, timeout=60) as r:
        return r.status, r.read()


def _sel_count(page):
    """(count, total) as the group statistics panel shows them."""
    import re

    text = model_text(page, "selection")
    m = re.search(r"<b class='sel-count'>(\d+)</b> of (\d+) selected", text)
    return (int(m.group(1)), int(m.group(2))) if m else None


def _export_links(page):
    import html
    import re

    text = model_text(page, "selection")
    return {fmt: html.unescape(h) for h, fmt in re.findall(r"href='([^']*format=(csv|parquet))'",
                                                           text)}


@pytest.mark.parametrize("mode", ["box", "lasso"])
@pytest.mark.browser
def test_selection_in_url_restores_in_new_page(browser, explorer_served, mode):  # noqa: F811
    url, _, _ = explorer_served
    page, frames = open_map(browser, url + "/?color=label")
    try:
        tool = ".bk-tool-icon-box-select" if mode == "box" else ".bk-tool-icon-lasso-select"
        page.locator(tool).first.click()
        f = page.evaluate(FRAME_JS)
        cx, cy = f["left"] + f["width"] / 2, f["top"] + f["height"] / 2
        page.mouse.move(cx - 160, cy - 140)
        page.mouse.down()
        if mode == "box":
            page.mouse.move(cx, cy, steps=4)
            page.mouse.move(cx + 150, cy + 170, steps=4)
        else:  # a lasso through many vertices
            for a in np.linspace(0, 2 * np.pi, 60):
                page.mouse.move(cx + 170 * np.cos(a + 3.9), cy + 150 * np.sin(a + 3.9))
        page.mouse.up()
        first = wait_for(lambda: _sel_count(page), 60, page, "selection statistics")
        key = "box" if mode == "box" else "poly"
        wait_for(lambda: f"{key}=" in page.url, 20, page, "the selection in the page URL")
        shared = page.url
        state = parse_qs(urlparse(shared).query)
        assert state["color"] == ["label"] and len(state[key]) == 1
        assert first[0] > 0 and first[1] == 3000
        # the API counts the URL's selection the same
        st, body = _get(f"{url}/api/select?{key}={urllib.parse.quote(state[key][0])}")
        assert st == 200 and json.loads(body)["count"] == first[0]
    finally:
        page.close()
    page2, _ = open_map(browser, shared)
    try:
        again = wait_for(lambda: _sel_count(page2), 60, page2, "restored selection statistics")
        assert again == first
        # the outline of the selection is drawn on the map
        outline = page2.evaluate("() => Bokeh.documents[0].get_model_by_name('selection_outline')"
                                 ".data_source.data.x.length")
        assert outline >= 3
        # the export links of the restored selection work
        links = _export_links(page2)
        assert set(links) == {"csv", "parquet"}
        st, body = _get(url + links["csv"])
        lines = body.decode().strip().splitlines()
        assert st == 200 and lines[0].startswith("id,") and len(lines) == first[0] + 1
        st, body = _get(url + links["parquet"])
        import io

        import pandas as pd

        assert st == 200 and len(pd.read_parquet(io.BytesIO(body))) == first[0]
        # the URL keeps the selection after the restore
        wait_for(lambda: f"{key}=" in page2.url, 20, page2, "the selection kept in the URL")
    finally:
        page2.close()


@pytest.mark.browser
def test_poly_url_matches_api(browser, explorer_served):  # noqa: F811
    url, _, path = explorer_served
    from bigembed.dataset.layouts import load_layout
    from bigembed.dataset.reader import Dataset

    lay = load_layout(Dataset.open(path))
    x0, x1 = (float(v) for v in np.percentile(lay.x, [20, 80]))
    y0, y1 = (float(v) for v in np.percentile(lay.y, [20, 80]))
    poly = f"{x0},{y0},{x1},{y0},{x0},{y1}"
    _, body = _get(f"{url}/api/select?poly={poly}")
    want = json.loads(body)["count"]
    assert want > 0
    page, _ = open_map(browser, f"{url}/?poly={poly}&id=5")
    try:
        got = wait_for(lambda: _sel_count(page), 60, page, "restored lasso statistics")
        assert got == (want, 3000)
        wait_for(lambda: "also 2-D" in model_text(page, "tapinfo"), 60, page, "the tap restored")
    finally:
        page.close()


@pytest.mark.browser
@pytest.mark.parametrize("query", [
    "box=1,2,3", "box=nan,1,0,1", "poly=0,0,1,1,x,y", "box=0,1,0,1&poly=0,0,1,0,0,1",
    "box=" + "1," * 12000 + "1", "box=%ff%fe,1,2,3",
])
def test_bad_selection_in_url_is_ignored(browser, explorer_served, query):  # noqa: F811
    url, _, _ = explorer_served
    statuses = []
    page = browser.new_page(viewport={"width": 1250, "height": 950})
    page.on("response", lambda r: statuses.append(r.status))
    try:
        resp = page.goto(f"{url}/?{query}", timeout=60_000)
        assert resp.status == 200
        wait_for(lambda: page.evaluate("() => typeof Bokeh !== 'undefined' && "
                                       "Bokeh.documents.length > 0 && Bokeh.documents[0]"
                                       ".get_model_by_name('selection') !== null"), 60, page,
                 "the page's document")
        # the view state the page keeps in its URL holds no selection
        state = parse_qs(wait_for(lambda: model_text(page, "state"), 20, page, "view state"))
        assert "x0" in state and "box" not in state and "poly" not in state
        assert "selected" not in model_text(page, "selection")
        assert not [s for s in statuses if s >= 500], statuses
    finally:
        page.close()
