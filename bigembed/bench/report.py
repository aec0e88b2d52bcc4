"""Reports of a bench document: a terminal table and a standalone Bokeh HTML page with
log-log plots of time against N per stage and the fitted scaling exponents."""

from __future__ import annotations

import html as _html
from pathlib import Path

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2")


def _fmt_s(v) -> str:
    if v is None:
        return ""
    if v >= 100:
        return f"{v:.0f}"
    if v >= 1:
        return f"{v:.2f}"
    if v >= 1e-3:
        return f"{v * 1e3:.1f}ms"
    return f"{v * 1e6:.0f}us"


def _fmt_quality(q: dict) -> str:
    parts = []
    for key in ("recall", "recall_at_10", "knn_preservation", "nonempty_pixels", "rows", "error"):
        if key in (q or {}) and q[key] is not None:
            v = q[key]
            parts.append(f"{key}={v:.3f}" if isinstance(v, float) else f"{key}={v}")
    return " ".join(parts)


def table_rows(doc: dict, *, reason_width: int | None = 100) -> list[list]:
    rows = []
    for r in doc["results"]["rows"]:
        if r["status"] != "ok":
            reason = r.get("reason") or ""
            if reason_width and len(reason) > reason_width:
                reason = reason[:reason_width - 3] + "..."
            rows.append([r["stage"], r["n"], r["impl"], r["status"], "", "", "", "", "", reason])
            continue
        t = r["timing"]
        per = f"{_fmt_s(r['per_item_s'])}/item" if r.get("items", 1) > 1 else ""
        sp = r.get("speedup")
        spread = f" ±{_fmt_s(t['spread'])}" if t.get("repeats", 0) > 1 else " (1 run)"
        rows.append([r["stage"], r["n"], r["impl"], r.get("backend") or "",
                     f"{_fmt_s(t['median'])}{spread} {per}".strip(),
                     _fmt_s(t.get("warmup_s")), r.get("peak_rss_mb") or "",
                     r.get("peak_rss_delta_mb") if r.get("peak_rss_delta_mb") is not None else "",
                     f"{sp:.2f}x" if sp else "", _fmt_quality(r.get("quality", {}))])
    return rows


HEADERS = ["stage", "N", "impl", "backend", "median ±spread", "first run", "peak MB",
           "+MB", "bigembed speedup", "quality / note"]


def text_report(doc: dict) -> str:
    """The results as an aligned text table, then the fitted scaling exponents."""
    from ..commands._common import table

    res = doc["results"]
    out = [table(table_rows(doc), HEADERS), ""]
    exps = res.get("exponents", {})
    if exps:
        out.append("scaling exponents (time ~ N^e, least squares in log-log):")
        for stage, impls in exps.items():
            parts = [f"{impl} e={v['exponent']:.2f} (R2 {v['r2']:.3f}, {v['points']} sizes)"
                     if v.get("exponent") is not None else f"{impl}: {v.get('note')}"
                     for impl, v in impls.items()]
            out.append(f"  {stage}: " + "; ".join(parts))
    if res.get("setup", {}).get("cuda_context_s") is not None:
        out.append(f"CUDA context: {res['setup']['cuda_context_s']}s (measured apart)")
    m = doc.get("machine", {})
    out.append(f"machine: {m.get('cpu', '?')}, {m.get('cores')} cores, {m.get('memory_gb')} GB"
               + (f", GPU {m['gpu']} {m.get('gpu_memory_gb')} GB" if m.get("gpu") else "")
               + f"; status {res.get('status')}, {res.get('elapsed_s')}s")
    return "\n".join(out)


def _stage_figure(stage: str, rows: list[dict], exps: dict):
    from bokeh.models import ColumnDataSource, HoverTool, Whisker
    from bokeh.plotting import figure

    e = exps.get("bigembed", {}).get("exponent")
    title = f"{stage}: bigembed time ~ N^{e:.2f}" if e is not None else stage
    p = figure(title=title, x_axis_type="log", y_axis_type="log", width=460, height=340,
               x_axis_label="N (rows)", y_axis_label="median seconds per call",
               tools="pan,wheel_zoom,box_zoom,reset,save")
    impls = list(dict.fromkeys(r["impl"] for r in rows))
    impls.sort(key=lambda i: i != "bigembed")
    for color, impl in zip(PALETTE * 3, impls):
        rs = sorted((r for r in rows if r["impl"] == impl), key=lambda r: r["n"])
        if not rs:
            continue
        med = [r["timing"]["median"] for r in rs]
        lo = [min(r["timing"]["times"]) for r in rs]
        hi = [max(r["timing"]["times"]) for r in rs]
        src = ColumnDataSource({
            "n": [r["n"] for r in rs], "median": med, "lo": lo, "hi": hi,
            "peak": [r.get("peak_rss_mb") for r in rs],
            "quality": [_fmt_quality(r.get("quality", {})) for r in rs],
            "backend": [r.get("backend") or "" for r in rs]})
        e = exps.get(impl, {}).get("exponent")
        label = f"{impl} (e={e:.2f})" if e is not None else impl
        p.line("n", "median", source=src, color=color, line_width=2, legend_label=label)
        p.scatter("n", "median", source=src, color=color, size=7, legend_label=label)
        p.add_layout(Whisker(source=src, base="n", lower="lo", upper="hi", line_color=color))
    p.add_tools(HoverTool(tooltips=[("N", "@n"), ("median s", "@median{0.0000}"),
                                    ("min..max", "@lo{0.0000} .. @hi{0.0000}"),
                                    ("peak MB", "@peak"), ("quality", "@quality"),
                                    ("backend", "@backend")]))
    p.legend.location = "top_left"
    p.legend.label_text_font_size = "9pt"
    p.legend.background_fill_alpha = 0.6
    return p


def _html_table(doc) -> str:
    esc = _html.escape
    head = "".join(f"<th>{esc(h)}</th>" for h in HEADERS)
    body = "".join("<tr>" + "".join(f"<td>{esc(str(v))}</td>" for v in r) + "</tr>"
                   for r in table_rows(doc, reason_width=None))
    return f"<table class='bench'><tr>{head}</tr>{body}</table>"


def _facts(doc) -> str:
    esc = _html.escape
    m, v, p, res = doc.get("machine", {}), doc.get("versions", {}), doc.get("params", {}), \
        doc["results"]
    items = [f"<b>{esc(str(k))}</b>: {esc(str(x))}" for k, x in m.items()]
    exps = []
    for stage, impls in res.get("exponents", {}).items():
        parts = [f"{esc(impl)} <b>N^{e['exponent']:.2f}</b> <small>(R&sup2; {e['r2']:.3f}, "
                 f"{e['points']} sizes)</small>"
                 for impl, e in impls.items() if e.get("exponent") is not None]
        if parts:
            exps.append(f"<b>{esc(stage)}</b>: " + " &middot; ".join(parts))
    setup = res.get("setup", {})
    cuda = (f"<p>CUDA context (measured apart): {setup['cuda_context_s']}s</p>"
            if setup.get("cuda_context_s") is not None else "")
    return (f"<h1>bigembed bench</h1><p>{esc(doc.get('created', ''))} &mdash; status "
            f"<b>{esc(str(res.get('status')))}</b>, {res.get('elapsed_s')}s</p>"
            f"<p>{' &middot; '.join(items)}</p>"
            f"<p><b>versions</b>: {esc(', '.join(f'{a} {b}' for a, b in v.items()))}</p>"
            f"<p><b>params</b>: {esc(', '.join(f'{a}={b}' for a, b in p.items()))}</p>"
            f"{cuda}<h2>Scaling exponents (time ~ N<sup>e</sup>)</h2>"
            f"<p>{'<br>'.join(exps) or 'needs two sizes per stage'}</p>"
            f"<p>Whiskers: min..max of the timed repeats. The first (warm-up) run is timed "
            f"apart and listed in the table; speedup = peer median / bigembed median.</p>")


def write_html(doc: dict, path, *, resources: str = "inline") -> Path:
    """A standalone HTML report (Bokeh; JS inlined unless ``resources="cdn"``)."""
    from bokeh.embed import file_html
    from bokeh.layouts import column, gridplot
    from bokeh.models import Div
    from bokeh.resources import CDN, INLINE

    from ..dataset._atomic import write_bytes

    res = doc["results"]
    ok = [r for r in res["rows"] if r["status"] == "ok"]
    stages = list(dict.fromkeys(r["stage"] for r in res["rows"]))
    figs = [_stage_figure(s, [r for r in ok if r["stage"] == s], res["exponents"].get(s, {}))
            for s in stages if any(r["stage"] == s for r in ok)]
    style = ("<style>table.bench{border-collapse:collapse;font:12px monospace}"
             "table.bench td,table.bench th{border:1px solid #ccc;padding:2px 6px}</style>")
    parts = [Div(text=style + _facts(doc), width=1000)]
    if figs:
        parts.append(gridplot(figs, ncols=min(3, len(figs))))
    parts.append(Div(text=_html_table(doc), width=1400))
    html = file_html(column(*parts), INLINE if resources == "inline" else CDN,
                     title="bigembed bench")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes(path, html.encode("utf-8"))
    return path
