"""benchmarks/bench_notebook_browser.py: the page's timestamps become per-view medians and ratios.

The benchmark itself (a bigembed serve, a JupyterLab, headless Chromium) is run by hand; here
only its bookkeeping, on timestamps as the page reports them (milliseconds of
``performance.now()``).
"""

from __future__ import annotations

import pytest

from benchmarks.bench_notebook_browser import _away, _sample, _summary


def test_sample_is_seconds_from_the_request():
    r = {"t0": 1000.0, "painted": 1250.0, "bytes": 1200.0, "event_sent": 1003.0,
         "loaded": None, "fetched": 1, "readback": True}
    s = _sample(r)
    assert s["total"] == pytest.approx(0.25)
    assert s["bytes"] == pytest.approx(0.2)
    assert s["after_bytes"] == pytest.approx(0.05)
    assert s["event_sent"] == pytest.approx(0.003)
    assert "loaded" not in s and s["fetched"] == 1 and s["readback"] is True


def test_summary_medians_per_view_and_overall_skip_what_was_not_recorded():
    got = {"full": [{"total": 0.1, "bytes": 0.08}, {"total": 0.3}, {"total": 0.2, "bytes": 0.1}],
           "zoom2": [{"total": 0.5, "bytes": 0.4}]}
    s = _summary(got)
    assert s["per_view"]["full"]["total"] == pytest.approx(0.2)
    assert s["per_view"]["full"]["bytes"] == pytest.approx(0.09)
    assert s["per_view"]["zoom2"]["patch"] is None
    assert s["overall"]["total"] == pytest.approx(0.25)
    assert s["n"] == 4


def test_away_is_a_different_wider_view():
    v = (0.0, 1.0, 2.0, 3.0)
    a = _away(v)
    assert a != v and a[0] < v[0] < v[1] < a[1] and a[2] < v[2] < v[3] < a[3]


def test_steps_are_medians_of_per_frame_differences():
    from benchmarks.bench_notebook_browser import _steps

    every = [{"event_sent": 0.4, "kernel_sent": 0.5, "bytes": 0.55, "total": 0.6},
             {"event_sent": 0.2, "kernel_sent": 0.4, "bytes": 0.5, "total": 0.6},
             {"event_sent": 0.1, "total": 0.3}]  # no frame message seen: only what is known
    s = _steps("notebook", every)
    assert s["request_to_event_sent"] == pytest.approx(0.2)
    assert s["kernel"] == pytest.approx(0.15)
    assert s["kernel_to_page"] == pytest.approx(0.075)
    assert s["page_patch_load_decode_paint"] == pytest.approx(0.075)


def test_nudged_views_are_new_urls_less_than_a_pixel_apart():
    from benchmarks.bench_notebook_browser import _nudged

    v = (-3.25, 4.5, -1.0, 2.0)
    a, b = _nudged(v, 1), _nudged(v, 2)
    assert len({repr(v), repr(a), repr(b)}) == 3
    for w in (a, b):  # 800 px across: a pixel is 1/800 of the width
        assert max(abs(p - q) for p, q in zip(w, v)) < (v[1] - v[0]) / 800 / 1000
