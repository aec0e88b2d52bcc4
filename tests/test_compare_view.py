"""The comparison page (``serve --compare A,B`` / ``?cmp=A,B``) in a real headless Chromium
against a real server on 127.0.0.1, plus the pieces under it (overlay, added colourings).

One small dataset for the module: 2,000 rows in 6 classes, three spaces of one network along
a run (``fc@s0`` noisy, ``fc@s1`` with 150 rows moved into the next class, ``fc@s2`` clean),
per-checkpoint predictions, PCA layouts of s1 and s2 aligned to s0's.
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from urllib.parse import parse_qs, quote, urlparse

import numpy as np
import pyarrow as pa
import pytest
from conftest import chromium, chromium_path, start_serve, stop_serve, wait_for

from bigembed.errors import InputError

N = 2000
A, B = "fc@s1", "fc@s2"

# The plot frame of a named map on the page and its ranges, from Bokeh's own views.
FRAME_JS = """(name) => {
  function walk(v) { if (v.model.name == name) return v;
    for (const c of (v.child_views || [])) { const r = walk(c); if (r) return r; } return null; }
  for (const root of Bokeh.index) { const v = walk(root); if (v) {
    const bb = v.frame.bbox; const r = v.canvas_view.el.getBoundingClientRect();
    return {left: r.left + bb.left, top: r.top + bb.top, width: bb.width, height: bb.height,
            x0: v.model.x_range.start, x1: v.model.x_range.end,
            y0: v.model.y_range.start, y1: v.model.y_range.end}; } }
  return null; }"""


@pytest.fixture(scope="module")
def cmp_data(tmp_path_factory):
    from bigembed import DatasetWriter
    from bigembed.reduce import reduce

    path = tmp_path_factory.mktemp("cmpview") / "ds"
    rng = np.random.default_rng(7)
    centres = rng.normal(0, 6, (6, 16))
    labels = rng.integers(0, 6, N)
    clean = centres[labels] + rng.standard_normal((N, 16))
    s0 = 0.4 * clean + 2 * rng.standard_normal((N, 16))
    s1 = clean.copy()
    moved = np.sort(rng.choice(N, 150, replace=False))
    s1[moved] = centres[(labels[moved] + 1) % 6] + rng.standard_normal((150, 16))
    p0 = rng.integers(0, 6, N)
    p1 = labels.copy()
    p1[moved] = (labels[moved] + 1) % 6
    p2 = labels.copy()
    wrong = rng.choice(N, 100, replace=False)
    p2[wrong] = (p2[wrong] + 2) % 6
    with DatasetWriter(path) as dw:
        for name, x in (("fc@s0", s0), (A, s1), (B, 1.5 * clean)):
            with dw.space(name, dim=16, total_rows=N) as sw:
                sw.write(x.astype(np.float32))
        dw.set_meta(pa.table({"label": labels, "key": [f"row-{i}" for i in range(N)],
                              "prediction@s0": p0, "prediction@s1": p1, "prediction@s2": p2,
                              "correct@s0": p0 == labels, "correct@s1": p1 == labels,
                              "correct@s2": p2 == labels}))
    l0 = reduce(path, space="fc@s0", method="pca", quality=False)
    l1 = reduce(path, space=A, method="pca", quality=False, align_to=l0.name)
    l2 = reduce(path, space=B, method="pca", quality=False, align_to=l0.name)
    return path, moved, (l0.name, l1.name, l2.name)


@pytest.fixture(scope="module")
def served(cmp_data):
    path, moved, layouts = cmp_data
    proc, url, _ = start_serve(path, "--compare", f"{A},{B}")
    try:
        yield url, path, moved, layouts
    finally:
        stop_serve(proc)


@pytest.fixture(scope="module")
def browser():
    if chromium_path() is None:
        pytest.skip("needs /usr/bin/chromium")
    with chromium() as b:
        yield b


def model_attr(page, name, attr="text"):
    return page.evaluate("([n, a]) => { const m = Bokeh.documents[0].get_model_by_name(n); "
                         "return m ? m[a] : null }", [name, attr])


def open_page(browser, url):
    page = browser.new_page(viewport={"width": 1300, "height": 1000})
    got = []
    page.on("response", lambda r: got.append(r) if "/compare/" in r.url else None)
    page.goto(url, timeout=60_000)

    def both():
        ok = {q["layout"][0] for r in got if "frame.png" in r.url and r.status == 200
              for q in [parse_qs(urlparse(r.url).query)]}
        return len(ok) >= 2
    wait_for(both, 60, page, "a frame of each map")
    return page, got


def title(page, name):
    return page.evaluate("(n) => Bokeh.documents[0].get_model_by_name(n).title.text", name)


def sel_count(page, side):
    m = re.search(r"<b class='sel-count'>(\d+)</b> of (\d+)", model_attr(page, f"selection_{side}")
                  or "")
    return (int(m.group(1)), int(m.group(2))) if m else None


def frames_of(got, layout, kind="frame.png"):
    return [r for r in got if kind in r.url and r.status == 200
            and parse_qs(urlparse(r.url).query).get("layout") == [layout]]


def get_json(url):
    with urllib.request.urlopen(url, timeout=60) as r:
        return json.loads(r.read())


# -- pieces under the page (no server) ---------------------------------------------------------

def test_overlay_marks_exactly_the_pixels_of_the_points(rng):
    import io

    from PIL import Image

    from bigembed.view.overlay import OVERLAY_ALPHA, OVERLAY_RGB, overlay_mask, overlay_png

    x, y = rng.uniform(0, 10, 500), rng.uniform(0, 10, 500)
    mask, n = overlay_mask(x, y, x_range=(2, 8), y_range=(0, 5), width=60, height=50, spread=0)
    inside = (x >= 2) & (x < 8) & (y >= 0) & (y < 5)
    hist, _, _ = np.histogram2d(y[inside], x[inside], bins=(50, 60), range=((0, 5), (2, 8)))
    assert n == int(inside.sum())
    np.testing.assert_array_equal(mask, hist > 0)
    grown, _ = overlay_mask(x, y, x_range=(2, 8), y_range=(0, 5), width=60, height=50)
    assert (grown >= mask).all() and grown.sum() > mask.sum()
    # the PNG: the colour where marked, transparent elsewhere, row 0 at the bottom
    img = np.asarray(Image.open(io.BytesIO(overlay_png(mask))).convert("RGBA"))[::-1]
    assert img.shape == (50, 60, 4)
    np.testing.assert_array_equal(img[..., 3] > 0, mask)
    assert (img[mask][:, :3] == OVERLAY_RGB).all() and (img[mask][:, 3] == OVERLAY_ALPHA).all()
    with pytest.raises(InputError, match="x_range"):
        overlay_mask(x, y, x_range=(3, 3), y_range=(0, 1), width=4, height=4)


def test_added_column_is_a_per_pixel_mean_colouring(rng):
    from bigembed.view.frames import FrameRenderer

    x, y = rng.uniform(0, 1, 3000), rng.uniform(0, 1, 3000)
    v = rng.uniform(0, 1, 3000)
    r = FrameRenderer.from_arrays(x, y)
    r.add_column("change:overlap[x]", v, span=(0.0, 1.0))
    assert "change:overlap[x]" not in r.columns() and r.has_column("change:overlap[x]")
    agg, mode, _, _ = r.aggregate(x_range=(0, 1), y_range=(0, 1), width=4, height=4,
                                  color_by="change:overlap[x]", mode="exact")
    px, py = np.minimum((x * 4).astype(int), 3), np.minimum((y * 4).astype(int), 3)
    want = np.array([[v[(py == j) & (px == i)].mean() for i in range(4)] for j in range(4)])
    np.testing.assert_allclose(np.asarray(agg), want, rtol=1e-5)
    assert r.legend("change:overlap[x]")["span"] == [0.0, 1.0]
    r.add_column("agr", (v > 0.5).astype(int), categories=("low", "high"))
    assert r.legend("agr")["kind"] == "categorical"
    with pytest.raises(InputError, match="shape"):
        r.add_column("bad", v[:10])
    r.remove_column("agr")
    assert not r.has_column("agr")
    with pytest.raises(InputError, match="agr"):
        r.colouring("agr")


def test_pairs_are_validated_with_the_parameter_named(cmp_data):
    from bigembed.dataset.reader import Dataset
    from bigembed.server.compare_state import Comparisons
    from bigembed.server.state import Explorer

    path, _, (l0, l1, l2) = cmp_data
    comps = Comparisons(Explorer(path))
    p = comps.pair(A, B)
    assert (p.la, p.lb, p.path, p.path_layouts) == (l1, l2, ("fc@s0", A, B), (l0, l1, l2))
    assert p.aligned and comps.pair(A, B, step=0).b == "fc@s0"
    for kw, frag in ((dict(a=A, b="nope"), "no space 'nope'"), (dict(a=A, b=B, k=0), "'k'"),
                     (dict(a=A, b=B, step=3), "'step'"), (dict(a=A, b=B, la=l2), "'la'"),
                     (dict(a=A, b=B, path=[A, A]), "more than once")):
        with pytest.raises(InputError, match=frag):
            comps.pair(**kw)
    # a space whose rows differ from the dataset's (a damaged or foreign manifest entry)
    ds = Dataset.open(path)
    ds.spaces[B].rows = N - 1
    with pytest.raises(InputError, match=f"space '{B}' has {N - 1} rows"):
        Comparisons(Explorer(ds)).pair(A, B)


# -- the page ----------------------------------------------------------------------------------

@pytest.mark.browser
def test_a_selection_in_a_marks_b_and_the_url_reopens_it_for_the_slider(browser, served):
    url, path, _, (l0, l1, l2) = served
    page, got = open_page(browser, url + "/")  # serve --compare A,B: the page compares
    try:
        assert A in title(page, "map_a") and B in title(page, "map_b")
        page.locator(".bk-tool-icon-box-select").first.click()  # map A's toolbar comes first
        f = page.evaluate(FRAME_JS, "map_a")
        cx, cy = f["left"] + f["width"] / 2, f["top"] + f["height"] / 2
        page.mouse.move(cx - 200, cy - 200)
        page.mouse.down()
        page.mouse.move(cx, cy, steps=3)
        page.mouse.move(cx + 60, cy + 50, steps=3)
        page.mouse.up()
        ca = wait_for(lambda: sel_count(page, "a"), 30, page, "map A's statistics")
        cb = wait_for(lambda: sel_count(page, "b"), 30, page, "map B's statistics")
        assert ca == cb and ca[0] > 0 and ca[1] == N
        # the same rows are drawn over map B by the server
        wait_for(lambda: frames_of(got, l2, "overlay.png"), 30, page, "map B's overlay")
        ov = frames_of(got, l2, "overlay.png")[-1]
        assert ov.headers["x-overlay-rows"].split(":")[0] == str(ca[0])
        wait_for(lambda: "box=" in page.url, 20, page, "the selection in the URL")
        q = parse_qs(urlparse(page.url).query)
        assert q["cmp"] == [f"{A},{B}"] and q["sel"] == ["a"] and q["step"] == ["2"]
        sel = get_json(f"{url}/api/select?layout={quote(l1)}&box={quote(q['box'][0])}")
        assert sel["count"] == ca[0]
    finally:
        page.close()
    # the shared URL (B coloured by trajectory depth, pan/zoom linked) reopens both maps
    q.update(cb=["change:depth"], link=["1"])
    shared = url + "/?" + "&".join(f"{k}={quote(v[0])}" for k, v in q.items())
    page, got = open_page(browser, shared)
    try:
        assert wait_for(lambda: sel_count(page, "b"), 30, page, "restored statistics") == ca
        assert A in title(page, "map_a") and B in title(page, "map_b")
        assert "change:depth" in {p["color"][0] for r in frames_of(got, l2)
                                  for p in [parse_qs(urlparse(r.url).query)]}
        assert "trajectory depth" in model_attr(page, "legend_b")
        assert model_attr(page, "link", "active") is True
        wait_for(lambda: model_attr(page, "curves_position", "location") == 2, 30, page,
                 "the agreement curves at the slider's position")
        # the slider to the first space of the path: its frame, the selection still drawn
        page.evaluate("() => { const s = Bokeh.documents[0].get_model_by_name('slider'); "
                      "s.value = 0; s.value_throttled = 0; }")
        wait_for(lambda: frames_of(got, l0), 30, page, "a frame of the slider's space")
        wait_for(lambda: frames_of(got, l0, "overlay.png"), 30, page, "the selection on it")
        wait_for(lambda: model_attr(page, "curves_position", "location") == 0, 20, page,
                 "the curves' position mark")
        assert "fc@s0" in title(page, "map_b")
        wait_for(lambda: "step=0" in page.url and "cmp=fc%40s1%2Cfc%40s0" in page.url, 20,
                 page, "the slider position in the URL")
        # linked pan/zoom (the layouts are aligned): a zoom in A moves B's view too
        f = page.evaluate(FRAME_JS, "map_a")
        page.mouse.move(f["left"] + f["width"] / 2, f["top"] + f["height"] / 2)
        page.mouse.wheel(0, -300)
        fa = wait_for(lambda: (lambda v: v if v["x1"] - v["x0"] < (f["x1"] - f["x0"]) * 0.95
                               else None)(page.evaluate(FRAME_JS, "map_a")), 30, page, "a zoom")
        wait_for(lambda: abs(page.evaluate(FRAME_JS, "map_b")["x0"] - fa["x0"]) < 1e-6, 30,
                 page, "map B following map A")
    finally:
        page.close()


@pytest.mark.browser
def test_tap_lists_gained_and_lost_as_the_api_and_movers_centre_both_maps(browser, served):
    url, path, moved, (l0, l1, l2) = served
    from bigembed.dataset.layouts import load_layout
    from bigembed.dataset.reader import Dataset

    i = int(moved[3])
    lay = load_layout(Dataset.open(path), name=l1)
    x, y, r = float(lay.x[i]), float(lay.y[i]), 0.05
    page, got = open_page(browser, f"{url}/?cmp={quote(A)},{quote(B)}&ax0={x - r}&ax1={x + r}"
                                   f"&ay0={y - r}&ay1={y + r}")
    try:
        f = page.evaluate(FRAME_JS, "map_a")
        page.mouse.click(f["left"] + (x - f["x0"]) / (f["x1"] - f["x0"]) * f["width"],
                         f["top"] + (f["y1"] - y) / (f["y1"] - f["y0"]) * f["height"])
        wait_for(lambda: "gained in B" in (model_attr(page, "tapinfo") or ""), 30, page,
                 "the neighbours in A and B")
        text = model_attr(page, "tapinfo")
        ids = lambda cls: [int(t) for t in re.search(  # noqa: E731
            rf"class='{cls}'[^>]*>[^<]*<span class='ids'>([^<]*)<", text).group(1).split(", ")
            if t.strip().isdigit()]
        api = get_json(f"{url}/api/compare?a={quote(A)}&b={quote(B)}&id={i}&k=15")["point"]
        assert f"<b>id {i}</b>" in text
        assert ids("gained") == api["gained"] and ids("lost") == api["lost"]
        assert api["gained"] and api["lost"]  # a moved row changes neighbourhood
        status = model_attr(page, "nbr_src_b", "data")
        assert [j for j, s in zip(status["id"], status["status"]) if s == "gained"] == api["gained"]
        # a neighbour is clickable: it becomes the tapped point
        j = api["gained"][0]
        page.evaluate("(j) => { const s = Bokeh.documents[0].get_model_by_name('nbr_src_b'); "
                      "s.selected.indices = [s.data.id.indexOf(j)]; }", j)
        wait_for(lambda: f"<b>id {j}</b>" in (model_attr(page, "tapinfo") or ""), 30, page,
                 "the clicked neighbour's lists")
        # movers: only flipped predictions, then a row centres both maps on it
        page.evaluate("() => { Bokeh.documents[0].get_model_by_name('movers_flip').value = "
                      "'flipped'; }")
        want = get_json(f"{url}/api/compare/movers?a={quote(A)}&b={quote(B)}&flip=flipped")
        wait_for(lambda: model_attr(page, "movers_src", "data")["id"][:5] ==
                 [m["id"] for m in want["movers"][:5]], 30, page, "the filtered movers")
        assert set(model_attr(page, "movers_src", "data")["flip"]) == {"yes"}
        m0 = want["movers"][0]["id"]
        page.evaluate("() => { Bokeh.documents[0].get_model_by_name('movers_src').selected"
                      ".indices = [0]; }")
        lb = load_layout(Dataset.open(path), name=l2)
        for side, L in (("a", lay), ("b", lb)):
            wait_for(lambda: abs((lambda v: (v["x0"] + v["x1"]) / 2)(
                page.evaluate(FRAME_JS, f"map_{side}")) - float(L.x[m0])) < 1e-4, 30, page,
                f"map {side} centred on mover {m0}")
    finally:
        page.close()


@pytest.mark.browser
def test_bad_parameters_answer_4xx_with_a_message_in_the_page(browser, served):
    url, _, _, (l0, l1, l2) = served
    page = browser.new_page()
    try:
        for q, frag in ((f"cmp={quote(A)},nope", "no space 'nope'"),
                        (f"cmp={quote(A)}", "two spaces"),
                        (f"cmp={quote(A)},{quote(B)}&step=7", "'step'"),
                        (f"cmp={quote(A)},{quote(B)}&k=x", "'k'")):
            resp = page.goto(f"{url}/?{q}", timeout=30_000)
            assert resp.status == 400, q
            assert frag in page.locator("#error").inner_text()
    finally:
        page.close()
    base = f"{url}/compare/frame.png?a={quote(A)}&b={quote(B)}&layout={quote(l1)}" \
           f"&x0=0&x1=1&y0=0&y1=1&w=10&h=10"
    for bad in (base.replace(f"b={quote(B)}", "b=nope"), base + "&color=change%3Anope",
                base.replace("w=10", "w=0"),
                f"{url}/compare/overlay.png?layout={quote(l2)}&x0=0&x1=1&y0=0&y1=1&w=9&h=9"
                f"&src={quote(l1)}",
                f"{url}/api/compare/movers?a={quote(A)}&b={quote(B)}&flip=maybe"):
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(bad, timeout=30)
        assert 400 <= e.value.code < 500, bad
        assert json.loads(e.value.read())["error"]
    with urllib.request.urlopen(base + "&color=change%3Aflip", timeout=30) as r:
        assert r.status == 200 and r.headers["Content-Type"] == "image/png"


def test_serve_refuses_a_bad_compare_before_listening(cmp_data):
    from conftest import _free_port, assert_clean_error, run_cli

    path, _, _ = cmp_data
    p = run_cli("serve", path, "--compare", f"{A},nope", "--port", _free_port(), timeout=120)
    assert_clean_error(p, "--compare", "nope")
    assert p.returncode == 2
