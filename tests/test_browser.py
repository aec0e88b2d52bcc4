"""The map in a real headless Chromium (Debian's), driven with Playwright.

The page loads and shows a server-rendered frame; a wheel zoom brings a new frame for the
narrower range and records the view in the URL; hovering a point shows its metadata; tapping
a point lists its true neighbours; a box selection shows group statistics.
"""

from __future__ import annotations

from urllib.parse import parse_qs, urlparse

import pytest
from conftest import chromium, wait_for

pytestmark = pytest.mark.browser  # skipped by conftest where Chromium is absent

# The plot frame's place on the page and its current ranges, from Bokeh's own views.
FRAME_JS = """() => {
  function walk(v) { if (v.model.name == 'map') return v;
    for (const c of (v.child_views || [])) { const r = walk(c); if (r) return r; } return null; }
  for (const root of Bokeh.index) { const v = walk(root); if (v) {
    const bb = v.frame.bbox; const r = v.canvas_view.el.getBoundingClientRect();
    return {left: r.left + bb.left, top: r.top + bb.top, width: bb.width, height: bb.height,
            x0: v.model.x_range.start, x1: v.model.x_range.end,
            y0: v.model.y_range.start, y1: v.model.y_range.end}; } }
  return null; }"""


def model_text(page, name):
    """Text of a named Bokeh model as the browser holds it (Divs render in shadow DOM)."""
    return page.evaluate("(n) => { const m = Bokeh.documents[0].get_model_by_name(n); "
                         "return m ? m.text : null }", name) or ""


@pytest.fixture(scope="module")
def browser():
    with chromium() as b:
        yield b


def open_map(browser, url):
    page = browser.new_page(viewport={"width": 1250, "height": 950})
    frames = []
    page.on("response", lambda r: frames.append(r) if "/frame.png" in r.url else None)
    page.goto(url, timeout=60_000)
    wait_for(lambda: frames and frames[-1].status == 200, 60, page, "the first frame")
    wait_for(lambda: page.evaluate("() => typeof Bokeh !== 'undefined' && Bokeh.index && "
                                   "[...Bokeh.index].length > 0"), 30, page, "Bokeh views")
    return page, frames


def to_screen(f, x, y):
    return (f["left"] + (x - f["x0"]) / (f["x1"] - f["x0"]) * f["width"],
            f["top"] + (f["y1"] - y) / (f["y1"] - f["y0"]) * f["height"])


def test_page_loads_zoom_brings_new_frame(browser, explorer_served):
    url, _, _ = explorer_served
    page, frames = open_map(browser, url + "/?color=label")
    try:
        assert frames[0].headers["content-type"] == "image/png"
        q0 = parse_qs(urlparse(frames[-1].url).query)
        assert q0["color"] == ["label"] and q0["w"] == ["800"]
        f = page.evaluate(FRAME_JS)
        n = len(frames)
        page.mouse.move(f["left"] + f["width"] / 2, f["top"] + f["height"] / 2)
        page.mouse.wheel(0, -400)
        wait_for(lambda: len(frames) > n and frames[-1].status == 200, 30, page, "a new frame")
        q1 = parse_qs(urlparse(frames[-1].url).query)
        w0 = float(q0["x1"][0]) - float(q0["x0"][0])
        w1 = float(q1["x1"][0]) - float(q1["x0"][0])
        assert w1 < w0 * 0.95, (w0, w1)
        # the view state is in the page URL
        wait_for(lambda: "x0=" in page.url, 20, page, "view state in the URL")
        st = parse_qs(urlparse(page.url).query)
        assert st["color"] == ["label"]
        assert float(st["x1"][0]) - float(st["x0"][0]) == pytest.approx(w1, rel=1e-3)
    finally:
        page.close()


def test_hover_and_tap_list_neighbours(browser, explorer_served):
    url, _, path = explorer_served
    from bigembed.dataset.layouts import load_layout
    from bigembed.dataset.reader import Dataset

    lay = load_layout(Dataset.open(path))
    i = 42
    x, y = float(lay.x[i]), float(lay.y[i])
    # a view centred on the point, zoomed in so it is the only one under the cursor
    r = 0.05
    page, frames = open_map(browser, f"{url}/?x0={x - r}&x1={x + r}&y0={y - r}&y1={y + r}")
    try:
        f = page.evaluate(FRAME_JS)
        sx, sy = to_screen(f, x, y)
        page.mouse.move(sx, sy)
        wait_for(lambda: f"synth-{i}" in model_text(page, "hover"), 30, page, "hover metadata")
        assert page.get_by_text(f"synth-{i}").count() >= 1  # and it is on screen
        page.mouse.click(sx, sy)
        wait_for(lambda: "also 2-D" in model_text(page, "tapinfo"), 60, page,
                 "the neighbour list")
        html = model_text(page, "tapinfo")
        assert f"<b>id {i}</b>" in html
        assert "also 2-D neighbours" in html
        # the neighbour table holds k=10 rows
        rows = wait_for(lambda: page.locator(".slick-row").count() >= 10 and
                        page.locator(".slick-row").count(), 20, page, "table rows")
        assert rows >= 10
        wait_for(lambda: "id=42" in page.url, 20, page, "the tapped id in the URL")
    finally:
        page.close()


def test_box_selection_shows_statistics(browser, explorer_served):
    url, _, _ = explorer_served
    page, frames = open_map(browser, url + "/")
    try:
        # the box-select tool, then a drag across the middle of the map
        page.locator(".bk-tool-icon-box-select").first.click()
        f = page.evaluate(FRAME_JS)
        cx, cy = f["left"] + f["width"] / 2, f["top"] + f["height"] / 2
        page.mouse.move(cx - 150, cy - 150)
        page.mouse.down()
        page.mouse.move(cx, cy, steps=5)
        page.mouse.move(cx + 150, cy + 150, steps=5)
        page.mouse.up()
        wait_for(lambda: "selected" in model_text(page, "selection"), 30, page,
                 "selection statistics")
        text = model_text(page, "selection")
        assert "error rate" in text and "export ids" in text and "format=csv" in text
    finally:
        page.close()


def test_filter_from_url_reaches_frames_and_widgets(browser, explorer_served):
    url, _, _ = explorer_served
    page, frames = open_map(browser, url + "/?where=label:1%7C2;correct:False&color=label")
    try:
        q = parse_qs(urlparse(frames[-1].url).query)
        assert q["where"] == ["label:1|2;correct:False"]
        got = page.evaluate("() => Bokeh.documents[0].get_model_by_name('filter_label').value")
        assert sorted(got) == ["1", "2"]
        wait_for(lambda: "where=" in page.url, 20, page, "the filter in the page URL")
    finally:
        page.close()
