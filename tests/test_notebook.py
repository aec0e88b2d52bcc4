"""The notebook side: ``docs/notebook.ipynb`` run by nbclient in a real kernel, the live
:class:`bigembed.notebook.Map` handle, ``Dataset.from_arrays`` and ``Dataset.to_pandas``.

(The cell in a real JupyterLab with a real browser: tests/test_notebook_lab.py.)
"""

from __future__ import annotations

import base64
import io
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def nb_data(tmp_path_factory):
    """1,500 synthetic rows, two spaces (default and a transformed copy), a PCA layout."""
    import bigembed
    from bigembed.ingest.synth import synth
    from bigembed.reduce.run import reduce

    path = tmp_path_factory.mktemp("nb") / "ds"
    synth(path, n=1500, dim=16, clusters=5, error_rate=0.1, seed=11)
    x = bigembed.Dataset.open(path).space().vectors
    bigembed.Dataset.from_arrays(path, np.tanh(x[:, ::-1] * 0.5), space="other")
    reduce(path, method="pca", space="default", progress=False)
    return path


@pytest.fixture(scope="module")
def shown(nb_data):
    from bigembed.notebook import show

    return show(nb_data, color="label", display=False)


def _wait(pred, timeout=30.0, what="condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def _frame_png(m) -> np.ndarray:
    from PIL import Image

    url = m._s.frame_src.data["url"][0]
    assert url.startswith("data:image/png;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))))


# -- the tour ----------------------------------------------------------------------------------


def test_tour_notebook_runs_in_a_real_kernel(nb_data, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("BIGEMBED_NOTEBOOK_DATA", str(nb_data))
    monkeypatch.setenv("BIGEMBED_NO_PROGRESS", "1")
    nb = nbformat.read(ROOT / "docs" / "notebook.ipynb", as_version=4)
    NotebookClient(nb, kernel_name="python3", timeout=180,
                   resources={"metadata": {"path": str(ROOT / "docs")}}).execute()
    code = [c for c in nb.cells if c.cell_type == "code"]
    outs = [o for c in code for o in c.outputs]
    # the maps are widgets in the cell (BokehJS loaded once, inline)
    widgets = [o for o in outs if "application/vnd.jupyter.widget-view+json"
               in o.get("data", {})]
    assert len(widgets) >= 3, [o.output_type for o in outs]
    assert any("application/vnd.bokehjs_load.v0+json" in o.get("data", {}) for o in outs)
    # ... and, once, before the first map, where the classic notebook's RequireJS finds the
    # widget's JavaScript (tests/test_notebook_lab.py shows the map in the classic notebook)
    req = [i for i, o in enumerate(outs)
           if "nbextensions/jupyter_bokeh/index" in o.get("data", {}).get("application/javascript",
                                                                       "")]
    assert len(req) == 1 and req[0] < outs.index(widgets[0]), req
    text = "".join(o.get("text", "") for o in outs)
    n_sel = int(text.split(" selected")[0].split()[-1])
    assert 0 < n_sel < 1500
    # the bad path is one line naming it, not a traceback
    err = [o for o in outs if o.output_type == "error"]
    assert len(err) == 1 and err[0].ename in ("InputError", "DatasetError")
    assert "no/such/dataset" in err[0].evalue and len(err[0].traceback) == 1


# -- the handle --------------------------------------------------------------------------------


def test_first_frame_travels_with_the_document(shown):
    m = shown
    img = _frame_png(m)
    assert img.shape[:2] == (800, 800) and (img[..., 3] > 0).sum() > 1000
    src = m._s.frame_src.data
    v = m.view
    assert src["x"][0] == pytest.approx(v.x0) and src["w"][0] == pytest.approx(v.x1 - v.x0)
    assert m.layout.startswith("default.pca") and m.color == "label"
    assert repr(m).startswith("<bigembed map of 'ds': 1500 points")


def test_selection_from_python_is_the_explorers_selection(shown, nb_data):
    from bigembed.server.state import Explorer

    m = shown
    v = m.view
    box = ((v.x0, (v.x0 + v.x1) / 2), (v.y0, (v.y0 + v.y1) / 2))
    m.select(box=box)
    ref = Explorer(nb_data).select(layout=m.layout, box=box)
    sel = m.selection
    assert len(sel) == ref.count > 0 and sel.index.name == "id"
    assert np.array_equal(sel.index.to_numpy(), ref.ids)
    assert np.array_equal(m.selected_ids, ref.ids)
    meta = m.dataset.meta.set_index("id")
    pd.testing.assert_frame_equal(sel, meta.loc[ref.ids])
    assert f"<b class='sel-count'>{ref.count}</b>" in m._s.sel_div.text
    assert ".selection" in m._s.sel_div.text  # no /api links: there is no HTTP server here
    # a lasso too
    xs = [v.x0, v.x1, v.x0]
    ys = [v.y0, v.y0, v.y1]
    m.select(polygon=(xs, ys))
    assert 0 < len(m.selection) < 1500
    with pytest.raises(Exception, match="exactly one of box"):
        m.select()


def test_python_changes_redraw_the_frame(shown):
    m = shown
    before = m._s.frames
    v = m.view
    m.set_view(v.x0, (v.x0 + v.x1) / 2, v.y0, (v.y0 + v.y1) / 2)
    assert m._s.plot.x_range.end == pytest.approx((v.x0 + v.x1) / 2)
    _wait(lambda: m._s.frames > before, what="a new frame")
    # later frames travel as PNG bytes (a binary buffer of the patch), not in the document
    src = m._s.png_src.data
    assert src["w"][0] == pytest.approx((v.x1 - v.x0) / 2)
    png = np.asarray(src["png"][0])
    assert png.dtype == np.uint8 and bytes(png[:8]) == b"\x89PNG\r\n\x1a\n"
    assert bytes(png) == m._s.last_frame.png
    from bokeh.document.events import ModelChangedEvent
    from bokeh.protocol import Protocol

    ev = ModelChangedEvent(m._s.doc, m._s.png_src, "data", m._s.png_src.data)
    msg = Protocol().create("PATCH-DOC", [ev])
    assert len(msg.buffers) == 1 and len(msg.buffers[0].to_bytes()) == len(png)
    assert b"data:image" not in msg.content_json.encode()
    n = m._s.frames
    m.color_by("correct")
    assert m._s.color_select.value == "correct" and "error rate" in m._s.legend.text
    _wait(lambda: m._s.frames > n, what="the recoloured frame")
    n = m._s.frames
    m.filter({"label": [1, 2]})
    assert m.where == {"label": ["1", "2"]}
    assert m._s.filters["label"].value == ["1", "2"]  # the cell's filter widget follows
    _wait(lambda: m._s.frames > n, what="the filtered frame")
    m.filter(None)
    assert m.where == {}
    m.set_view(v.x0, v.x1, v.y0, v.y1)
    m.color_by("label")


def _from_page(m, name: str, **values) -> None:
    """A Bokeh UI event of the plot as the page sends it (jupyter_bokeh's ``jsevent`` comm
    message), through the widget's own message handler."""
    entries = [["model", {"id": m._s.plot.id}]] + [[k, float(v)] for k, v in values.items()]
    event = {"type": "event", "name": name, "values": {"type": "map", "entries": entries}}
    m.widget._handle_msg({"content": {"data": {"method": "custom", "content": {
        "event": "jsevent", "kind": "MessageSent", "msg_type": "bokeh_event",
        "msg_data": event}}}, "buffers": []})


def test_a_pan_in_the_page_is_one_message_and_python_follows(shown):
    """The page does not sync its ranges or the frame's blob URL back (jupyter_bokeh sends the
    page's changes one per kernel idle: a pan's range changes came before its RangesUpdate, a
    round trip each); the pan's RangesUpdate alone moves the kernel's view and ranges, without
    a patch back to the page, and a set_view to the old view afterwards still reaches it."""
    m = shown
    s = m._s
    assert not any(x.syncable for x in (s.plot.x_range, s.plot.y_range, s.frame_src,
                                        s.png_src))
    events = []
    s.doc.on_change(events.append)
    try:
        v = m.view
        to = (v.x0 + 1.0, v.x1 + 1.0, v.y0 - 0.5, v.y1 - 0.5)
        n = s.frames
        _from_page(m, "rangesupdate", x0=to[0], x1=to[1], y0=to[2], y1=to[3])
        assert tuple(m.view) == to
        assert (s.plot.x_range.start, s.plot.x_range.end) == to[:2]
        assert (s.plot.y_range.start, s.plot.y_range.end) == to[2:]
        _wait(lambda: s.frames > n, what="the panned frame")
        ranges = [e for e in events if getattr(e, "model", None) in (s.plot.x_range,
                                                                    s.plot.y_range)]
        assert ranges and all(e.setter is m.widget for e in ranges)  # not sent back
        events.clear()
        m.set_view(*v)  # back: the kernel's ranges changed, so the page is told
        sent = [(e.model, e.attr, e.new) for e in events
                if getattr(e, "model", None) is s.plot.x_range and e.setter is None]
        assert (s.plot.x_range, "start", v.x0) in sent and (s.plot.x_range, "end", v.x1) in sent
    finally:
        s.doc.remove_on_change(events.append)
    _wait(lambda: s._frame_done is not None and s._frame_done[2] == tuple(v),
          what="the frame of the view set back")


def test_highlight_and_tap(shown):
    m = shown
    m.highlight([5, 3, 3, 7])
    assert list(m.highlighted) == [3, 5, 7]
    assert list(m._s.hl_src.data["id"]) == [3, 5, 7]
    xy = m._s.ex.renderer(m.layout).xy([3, 5, 7])
    assert np.allclose(m._s.hl_src.data["x"], xy[:, 0])
    m.highlight(pd.DataFrame({"id": [9]}))
    assert list(m.highlighted) == [9]
    m.highlight(None)
    assert len(m._s.hl_src.data["x"]) == 0
    m.tap(42)
    assert m.tapped == 42
    _wait(lambda: m.neighbours is not None, what="the neighbour lookup")
    nb = m.neighbours
    assert len(nb) == 10 and 42 not in nb["id"].tolist()


@pytest.mark.parametrize("call, words", [
    (lambda m: m.color_by("nope"), ["color_by", "'nope'", "label"]),
    (lambda m: m.set_view(1, 0, 0, 1), ["set_view", "x0 < x1"]),
    (lambda m: m.set_view("a", 1, 0, 1), ["set_view", "numbers"]),
    (lambda m: m.highlight([1, 99999]), ["highlight", "0..1499", "99999"]),
    (lambda m: m.highlight([0.5]), ["highlight", "integer"]),
    (lambda m: m.filter({"nope": [1]}), ["filter", "'nope'"]),
    (lambda m: m.filter({"label": [99]}), ["filter", "'99'"]),
    (lambda m: m.tap(-1), ["tap", "0..1499"]),
    (lambda m: m.set_layout("zzz"), ["layout must be one of", "'zzz'"]),
])
def test_bad_calls_say_what_was_wrong_in_one_line(shown, call, words):
    from bigembed.errors import InputError

    with pytest.raises(InputError) as e:
        call(shown)
    for w in words:
        assert w in str(e.value), str(e.value)
    assert e.value._render_traceback_() == [f"InputError: {e.value}"]


def test_show_refuses_bad_input(nb_data, tmp_path):
    from bigembed.errors import BigembedError
    from bigembed.notebook import show

    cases = [((tmp_path / "nope",), {}, "does not exist"),
             ((nb_data,), {"layout": "nope"}, "layout must be one of"),
             ((nb_data,), {"color": "nope"}, "color must be one of"),
             ((nb_data,), {"compare": ("default", "zz")}, "no space 'zz'"),
             ((nb_data,), {"compare": "default"}, "pair of space names"),
             ((42,), {}, "ds_or_path must be")]
    for args, kw, words in cases:
        with pytest.raises(BigembedError, match=words) as e:
            show(*args, display=False, **kw)
        assert len(e.value._render_traceback_()) == 1


def test_compare_lists_gained_and_lost_on_tap(nb_data):
    from bigembed.compare import compare
    from bigembed.notebook import show

    m = show(nb_data, compare=("default", "other"), display=False, layout="default.pca")
    m.tap(7)
    _wait(lambda: m._s.compared is not None, 60, "the comparison")
    ref = compare(nb_data, a="default", b="other", k=15, progress=False).point(7)
    assert m._s.compared["gained"] == ref["gained"] and m._s.compared["lost"] == ref["lost"]
    assert f"{ref['overlap']:.2f}" in m._s.compare_div.text


# -- Dataset.from_arrays / to_pandas ---------------------------------------------------------


def test_from_arrays_writes_a_dataset_like_ingest(tmp_path):
    import bigembed

    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 5)).astype(np.float32)
    meta = pd.DataFrame({"label": rng.integers(0, 3, 300), "key": [f"k{i}" for i in range(300)]})
    ds = bigembed.Dataset.from_arrays(tmp_path / "d", x, meta=meta)
    assert ds.rows == 300 and list(ds.spaces) == ["default"]
    assert np.array_equal(ds.space().vectors, x)
    assert ds.meta["label"].tolist() == meta["label"].tolist()
    assert ds.meta["id"].tolist() == list(range(300))
    assert bigembed.Dataset.open(tmp_path / "d", verify="full").rows == 300
    # a second space; float16 kept
    ds = bigembed.Dataset.from_arrays(tmp_path / "d", x.astype(np.float16), space="half")
    assert ds.manifest["spaces"]["half"]["dtype"] == "float16"
    # refused, naming what was wrong; nothing half-written
    bad = x.copy()
    bad[7, 2] = np.nan
    for args, kw, words in [
        ((tmp_path / "e", bad), {}, "rows [7] hold NaN"),
        ((tmp_path / "e", x[0]), {}, "2-D array"),
        ((tmp_path / "e", x), {"meta": meta.iloc[:5]}, "meta has 5 rows"),
        ((tmp_path / "d", x[:10]), {"space": "z"}, "hold 10 rows but dataset"),
        ((tmp_path / "d", x), {"space": "half"}, "already has a space 'half'"),
        ((tmp_path / "d", x), {"space": "m", "meta": meta}, "keeps its metadata"),
    ]:
        with pytest.raises(bigembed.InputError) as e:
            bigembed.Dataset.from_arrays(*args, **kw)
        assert words in str(e.value), str(e.value)
    assert not (tmp_path / "e").exists()
    assert sorted(bigembed.Dataset.open(tmp_path / "d").spaces) == ["default", "half"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_to_pandas_with_and_without_layout(nb_data):
    import bigembed
    from bigembed.dataset.layouts import load_layout

    ds = bigembed.Dataset.open(nb_data)
    df = ds.to_pandas()
    assert list(df.columns) == list(ds.meta.columns) and df is not ds.meta
    df = ds.to_pandas(space="default")
    lay = load_layout(ds, space="default")
    assert np.array_equal(df["x"].to_numpy(), lay.x) and "knn_preservation" in df.columns
    assert np.array_equal(ds.to_pandas(space=lay.name)["y"].to_numpy(), lay.y)
    with pytest.raises(bigembed.InputError, match="has no layout yet"):
        ds.to_pandas(space="other")
    with pytest.raises(bigembed.InputError, match="no space or layout 'zz'"):
        ds.to_pandas(space="zz")
