"""The group panel and its endpoints on a real server (127.0.0.1) and in headless Chromium:
``/api/select?stats=1``, ``/api/contrast``, ``/api/clusters``; a box selection shows the
confusion heatmap and the contrast chart; a click on a cluster row moves the view."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import numpy as np
import pytest


@pytest.fixture(scope="module")
def served(explorer_served):
    """The shared served dataset (3,000 synthetic points, PCA layout; conftest). It has no
    clusters until the page's "find clusters" button makes them (the browser test)."""
    from bigembed.dataset.layouts import find_layouts
    from bigembed.dataset.reader import Dataset

    url, _, path = explorer_served
    return url, path, find_layouts(Dataset.open(path))[0]


def get(url):
    try:
        with urllib.request.urlopen(url, timeout=60) as r:
            return r.status, r.headers.get("Content-Type"), r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type"), e.read()


def _box(path, layout):
    from bigembed.dataset.layouts import load_layout
    from bigembed.dataset.reader import Dataset

    lay = load_layout(Dataset.open(path), name=layout)
    x0, x1 = np.quantile(lay.x, [0.2, 0.7])
    y0, y1 = np.quantile(lay.y, [0.2, 0.7])
    inside = np.flatnonzero((lay.x >= x0) & (lay.x <= x1) & (lay.y >= y0) & (lay.y <= y1))
    return f"{x0:.9g},{x1:.9g},{y0:.9g},{y1:.9g}", inside


def test_select_stats_and_contrast_endpoints(served):
    import bigembed

    url, path, layout = served
    box, inside = _box(path, layout)
    st, ctype, body = get(f"{url}/api/select?box={box}&stats=1")
    assert st == 200 and ctype.startswith("application/json")
    out = json.loads(body)
    ref = bigembed.group_stats(path, np.asarray(out["ids"]))
    assert out["stats"]["confusion"] == ref.confusion.tolist()
    assert out["stats"]["count"] == out["count"] > 0
    assert set(out["stats"]["histograms"]) == {"confidence", "loss"}
    st, _, body = get(f"{url}/api/clusters")  # none yet: a clear 400
    assert st == 400 and "bigembed cluster" in json.loads(body)["error"]
    st, ctype, body = get(f"{url}/api/contrast?box={box}&top=5")
    assert st == 200
    got = json.loads(body)
    df = bigembed.contrast(path, np.asarray(out["ids"]), top=5)
    assert [r["dim"] for r in got["rows"]] == df["dim"].tolist()
    np.testing.assert_allclose([r["effect"] for r in got["rows"]], df["effect"], rtol=1e-9)
    st, ctype, body = get(f"{url}/api/contrast?box={box}&format=csv&top=3")
    assert st == 200 and ctype.startswith("text/csv")
    assert body.decode().splitlines()[0] == "dim,effect,mean_in,mean_out"
    # bad input: clear 400s
    for q, frag in (("box=100,101,100,101", "empty"), ("", "exactly one of"),
                    ("box=0,1,0,1&cluster=0", "exactly one of"), (f"box={box}&space=nope",
                                                                   "space"),
                    (f"box={box}&top=0", "top")):
        st, _, body = get(f"{url}/api/contrast?{q}")
        assert st == 400 and frag in json.loads(body)["error"], (q, body)


# -- the page in headless Chromium --------------------------------------------------------------

@pytest.mark.browser
def test_page_box_selection_heatmap_contrast_and_cluster_row(served):
    from conftest import chromium, wait_for
    from test_browser import FRAME_JS, model_text, open_map

    url, path, layout = served
    with chromium() as b:
        page, frames = open_map(b, url + "/")
        page.set_viewport_size({"width": 1700, "height": 1000})
        # the whole dataset's confusion matrix and the cluster names are there at once
        # (the charts arrive once the browser has shown the page)
        cells_js = ("() => { const m = Bokeh.documents[0].get_model_by_name('confusion_all');"
                    " return m ? m.renderers[0].data_source.data.count.length : 0 }")
        n_cells = wait_for(lambda: page.evaluate(cells_js), 30, page, "the heatmaps")
        assert n_cells == 36  # 6 classes
        # a box selection: the group's heatmap, histograms and contrast chart
        page.locator(".bk-tool-icon-box-select").first.click()
        f = page.evaluate(FRAME_JS)
        cx, cy = f["left"] + f["width"] / 2, f["top"] + f["height"] / 2
        page.mouse.move(cx - 200, cy - 200)
        page.mouse.down()
        page.mouse.move(cx, cy, steps=5)
        page.mouse.move(cx + 200, cy + 200, steps=5)
        page.mouse.up()
        wait_for(lambda: "group: selection" in model_text(page, "group_title"), 60, page,
                 "the group title")
        wait_for(lambda: "contrast-done" in model_text(page, "contrast_info"), 60, page,
                 "the contrast chart")
        bars = page.evaluate("() => Bokeh.documents[0].get_model_by_name('contrast')"
                             ".renderers[0].data_source.data.dim.length")
        assert bars == 16  # top 20 of a 16-dimensional space
        total = page.evaluate("() => Bokeh.documents[0].get_model_by_name('confusion_group')"
                              ".renderers[0].data_source.data.count.reduce((a, b) => a + b)")
        count = int(model_text(page, "group_title").split("group-count'>")[1].split("<")[0])
        assert total == count > 0
        assert "format=csv" in model_text(page, "contrast_info")
        assert "class='member'" in model_text(page, "members")
        # no clusters yet: the button finds them; names appear on the map
        page.get_by_role("button", name="find clusters").click()
        wait_for(lambda: "clusters</b>" in model_text(page, "clusters_info"), 60, page,
                 "the clusters table")
        names = page.evaluate("() => Bokeh.documents[0].get_model_by_name('map').renderers"
                              ".find(r => r.name == 'cluster_names').data_source.data.text")
        assert len(names) >= 1 and all("%" in n for n in names)  # label names
        opts = page.evaluate("() => Bokeh.documents[0].get_model_by_name('color').options")
        assert "cluster" in opts
        # a click on a cluster row moves the view to the cluster
        before = page.evaluate(FRAME_JS)
        page.locator(".slick-row").filter(has_text="%").first.click()
        wait_for(lambda: page.evaluate(FRAME_JS)["x0"] != before["x0"], 30, page,
                 "the view to move")
        wait_for(lambda: "group: cluster" in model_text(page, "group_title"), 30, page,
                 "the cluster as the group")
        page.close()


def test_clusters_endpoint_after_the_page_made_them(served):
    """After the browser test's button: /api/clusters and a cluster's contrast."""
    import bigembed

    url, path, layout = served
    st, _, body = get(f"{url}/api/clusters")
    if st == 400:
        pytest.skip("the browser test (which makes the clusters) did not run")
    out = json.loads(body)
    ref = bigembed.cluster(path, layout=layout)  # the stored result, read back
    assert ref.cached and out["n_clusters"] == ref.n_clusters >= 1
    assert [c["name"] for c in out["clusters"]] == ref.table["name"].tolist()
    st, ctype, body = get(f"{url}/api/contrast?cluster=0&top=3")
    assert st == 200
    df = bigembed.contrast(path, np.flatnonzero(ref.labels == 0), top=3)
    assert [r["dim"] for r in json.loads(body)["rows"]] == df["dim"].tolist()
    st, _, body = get(f"{url}/api/contrast?cluster={ref.n_clusters}")
    assert st == 400 and "cluster" in json.loads(body)["error"]
