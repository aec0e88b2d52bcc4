"""bigembed bench: real stages on tiny synthetic data, JSON/HTML contents, budget, Ctrl-C.

Sizes are tiny (hundreds of rows) so the whole file runs in seconds; slow peers (umap-learn,
openTSNE, pynndescent: minutes of numba JIT) are capped out with --peer-max-n and must then
be reported as skipped with the reason, never silently missing.
"""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import assert_clean_error, run_cli

from bigembed.bench import parse_duration, parse_sizes, predict_seconds, run_bench
from bigembed.bench.harness import fit_power_law, measure
from bigembed.bench.report import text_report
from bigembed.errors import InputError
from bigembed.reduce.quality import sampled_knn_preservation as knn_preservation
from bigembed.search.exact import exact_neighbors
from bigembed.search.exact import overlap as recall

NO_SLOW_PEERS = {"umap-learn": 0, "openTSNE": 0, "pynndescent": 0}


def _rows(doc, **match):
    return [r for r in doc["results"]["rows"] if all(r.get(k) == v for k, v in match.items())]


# -- the numbers the bench reports, against trusted references ---------------------------------


def test_exact_neighbors_match_sklearn_with_duplicates_and_d1(rng):
    from sklearn.neighbors import NearestNeighbors

    for d in (1, 5):
        x = rng.normal(size=(200, d)).astype(np.float32)
        x[10] = x[11]  # an exact duplicate: the query itself may not come first
        q = np.array([0, 10, 11, 199])
        got = exact_neighbors(x, q, 5)
        assert got.shape == (4, 5)
        assert not (got == q[:, None]).any(), "self must be excluded"
        ref = NearestNeighbors(n_neighbors=6).fit(x).kneighbors(x[q], return_distance=False)
        ref = np.array([[i for i in r if i != qq][:5] for r, qq in zip(ref, q)])
        # Ties may order differently; compare by distance sets.
        for a, b, qq in zip(got, ref, q):
            da = np.sort(((x[a] - x[qq]) ** 2).sum(1))
            db = np.sort(((x[b] - x[qq]) ** 2).sum(1))
            np.testing.assert_allclose(da, db, rtol=1e-4, atol=1e-5)
        assert 11 in got[1] and 10 in got[2]


def test_recall_and_knn_preservation(rng):
    truth = np.array([[1, 2, 3], [0, 2, 3]])
    assert recall(truth, truth) == 1.0
    assert recall(np.array([[1, 9, 9], [-1, -1, 3]]), truth) == pytest.approx((1 / 3 + 1 / 3) / 2)
    assert math.isnan(recall(np.zeros((0, 3), int), np.zeros((0, 3), int)))
    # A layout that is the data itself (d = 2) preserves every neighbour; noise does not.
    x = rng.normal(size=(300, 2)).astype(np.float32)
    q = np.arange(0, 300, 7)
    assert knn_preservation(x, x, q, 10) == 1.0
    shuffled = rng.normal(size=(300, 2))
    assert knn_preservation(x, shuffled, q, 10) < 0.3


def test_fit_power_law_and_prediction():
    n = np.array([1e3, 1e4, 1e5])
    fit = fit_power_law(n, 2e-6 * n ** 1.5)
    assert fit["exponent"] == pytest.approx(1.5, abs=1e-3) and fit["r2"] == pytest.approx(1.0)
    assert fit_power_law([1000], [1.0]) is None
    assert fit_power_law([1000, 1000], [1.0, 2.0]) is None
    t, e = predict_seconds([(1000, 1.0), (10000, 100.0)], 100000)
    assert e == 2.0 and t == pytest.approx(10000.0)
    # Sub-linear fits (overhead-bound small sizes) are extrapolated as linear at least.
    t, e = predict_seconds([(1000, 1.0), (10000, 1.1)], 100000)
    assert e == 1.0 and t == pytest.approx(11.0)
    assert predict_seconds([(1000, 2.0)], 4000) == (8.0, 1.0)
    assert predict_seconds([], 10) == (None, None)


def test_measure_deadline_stops_repeats_but_keeps_one():
    calls = []
    t = measure(lambda: calls.append(1), repeat=50, warmup=1, deadline=time.perf_counter() - 1)
    assert len(t.times) == 1 and len(calls) == 2 and t.warmup_s is not None


@pytest.mark.parametrize("text,expected", [("1e4,1e3", [1000, 10000]), ("300", [300]),
                                           ("1_000,1000", [1000]), ([5, 2], [2, 5])])
def test_parse_sizes(text, expected):
    assert parse_sizes(text) == expected


@pytest.mark.parametrize("text", ["", "abc", "1e4,x", "0", "2.5", "-3", "nan"])
def test_parse_sizes_rejects(text):
    with pytest.raises(InputError, match="^sizes"):
        parse_sizes(text)


def test_parse_duration():
    assert parse_duration("15m") == 900 and parse_duration("90s") == 90
    assert parse_duration("1.5h") == 5400 and parse_duration("40") == 40
    assert parse_duration(None) is None
    for bad in ("5x", "-1", "0", "m"):
        with pytest.raises(InputError, match="^budget"):
            parse_duration(bad)


# -- a real run ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """Every stage and every fast peer at two tiny sizes (one run shared by the tests)."""
    out = tmp_path_factory.mktemp("bench")
    seen = []
    r = run_bench(sizes=[300, 900], dim=8, compare=True, device="cpu", out=out, name="tiny",
                  repeat=2, warmup=1, k=5, peer_max_n=NO_SLOW_PEERS, quality_sample=200,
                  html_resources="cdn", on_row=seen.append)
    return r, seen


def test_run_writes_real_figures(tiny_run):
    r, seen = tiny_run
    doc = json.loads(r.json_path.read_text())
    assert doc["suite"] == "bench" and doc["results"]["status"] == "complete"
    assert not r.interrupted
    assert doc["machine"]["cores"] >= 1 and doc["machine"]["cpu"]
    for lib in ("numpy", "faiss-cpu", "datashader", "bokeh"):
        assert lib in doc["versions"]
    assert doc["params"]["sizes"] == [300, 900] and doc["params"]["device_used"] == "cpu"
    assert len(seen) == len(doc["results"]["rows"])  # every row reported as it came
    for stage in ("ingest", "knn-graph", "reduce", "render", "lookup"):
        for n in (300, 900):
            (row,) = _rows(doc, stage=stage, n=n, impl="bigembed")
            assert row["status"] == "ok", row
            t = row["timing"]
            assert t["repeats"] == 2 and len(t["times"]) == 2
            assert all(x > 0 for x in t["times"])
            # warm-up (JIT, imports) timed apart at the first size only
            assert (t["warmup_s"] > 0) if n == 300 else t["warmup_s"] is None
            assert t["median"] == pytest.approx(float(np.median(t["times"])))
            assert row["peak_rss_mb"] > 0 and row["rss_before_mb"] > 0
            assert row["compare"], f"{stage}: a peer should have run beside bigembed"
    # Quality is measured, not assumed: exact kNN graph and lookup agree with exact search.
    for n in (300, 900):
        assert _rows(doc, stage="knn-graph", n=n, impl="bigembed")[0]["quality"]["recall"] == 1.0
        assert _rows(doc, stage="lookup", n=n, impl="bigembed")[0]["quality"][
            "recall_at_10"] == 1.0
        ing = _rows(doc, stage="ingest", n=n, impl="bigembed")[0]["quality"]
        assert ing["rows"] == n and ing["rows_match"]


def test_peers_side_by_side(tiny_run):
    r, _ = tiny_run
    doc = r.doc
    ours = _rows(doc, stage="knn-graph", n=900, impl="bigembed")[0]
    flat = _rows(doc, stage="knn-graph", n=900, impl="faiss.IndexFlatL2")[0]
    assert flat["status"] == "ok" and flat["quality"]["recall"] == 1.0
    assert flat["speedup"] == pytest.approx(flat["timing"]["median"] / ours["timing"]["median"],
                                            rel=1e-3)
    assert ours["compare"]["faiss.IndexFlatL2"]["speedup"] == flat["speedup"]
    # Our PCA and scikit-learn's PCA give the same layout quality (same projection).
    red = _rows(doc, stage="reduce", n=900, impl="bigembed")[0]["quality"]["knn_preservation"]
    skl = _rows(doc, stage="reduce", n=900, impl="sklearn.PCA")[0]["quality"]["knn_preservation"]
    assert 0.0 <= red <= 1.0 and red == pytest.approx(skl, abs=0.05)
    # Same picture from our renderer and plain Datashader.
    a = _rows(doc, stage="render", n=900, impl="bigembed")[0]["quality"]["nonempty_pixels"]
    b = _rows(doc, stage="render", n=900, impl="datashader")[0]["quality"]["nonempty_pixels"]
    assert a > 0 and abs(a - b) <= 0.05 * b
    # Slow peers capped out are reported, with the reason, not left out.
    for peer in ("umap-learn", "openTSNE", "pynndescent"):
        rows = _rows(doc, impl=peer)
        assert rows and all(x["status"] == "skipped" and "--peer-max-n" in x["reason"]
                            for x in rows)


def test_stages_missing_api_are_skipped_with_reason(tiny_run):
    import importlib.util

    doc = tiny_run[0].doc
    for stage, module in (("index", "bigembed.search"), ("extract", "bigembed.extract")):
        rows = _rows(doc, stage=stage, impl="bigembed")
        assert len(rows) == 2
        if importlib.util.find_spec(module) is None:
            assert all(x["status"] == "skipped" and module in x["reason"] for x in rows)
        else:
            assert all(x["status"] in ("ok", "error") for x in rows)


def test_exponents_report_and_html(tiny_run):
    r, _ = tiny_run
    exps = r.doc["results"]["exponents"]
    for stage in ("ingest", "knn-graph", "reduce", "render", "lookup"):
        e = exps[stage]["bigembed"]
        assert e["sizes"] == [300, 900] and math.isfinite(e["exponent"])
    txt = text_report(r.doc)
    assert "knn-graph" in txt and "scaling exponents" in txt and "faiss.IndexFlatL2" in txt
    html = r.html_path.read_text()
    assert r.html_path.name == "tiny.html"
    assert "bigembed bench" in html and "Bokeh" in html
    for stage in ("knn-graph", "render", "lookup"):
        assert stage in html
    e = exps["knn-graph"]["bigembed"]["exponent"]
    assert f"N^{e:.2f}" in html  # the fitted exponent is quoted in the report


# -- budget and interruption -----------------------------------------------------------------


def test_budget_skips_sizes_the_fit_says_would_overrun(tmp_path):
    t0 = time.perf_counter()
    r = run_bench(sizes=[200, 2_000_000], dim=4, stages=["knn-graph"], device="cpu",
                  budget="3s", out=tmp_path, repeat=1, k=5, html=False, quality_sample=50)
    assert time.perf_counter() - t0 < 60
    doc = json.loads(r.json_path.read_text())
    assert _rows(doc, n=200)[0]["status"] == "ok"
    (big,) = _rows(doc, n=2_000_000)
    assert big["status"] == "skipped" and "budget" in big["reason"] and "predicted" in big[
        "reason"]
    assert r.html_path is None and not (tmp_path / "bench.html").exists()


def test_interrupt_keeps_results_so_far(tmp_path):
    def stop_after_first(row):
        if row["status"] == "ok":
            raise KeyboardInterrupt

    r = run_bench(sizes=[200, 400], dim=4, stages=["lookup", "knn-graph"], device="cpu",
                  out=tmp_path, repeat=1, k=5, quality_sample=50, html_resources="cdn",
                  on_row=stop_after_first)
    assert r.interrupted
    doc = json.loads(r.json_path.read_text())
    assert doc["results"]["status"] == "interrupted"
    assert [x["stage"] for x in doc["results"]["rows"]] == ["knn-graph"]  # registry order
    assert r.html_path.exists()


def test_cli_ctrl_c_keeps_json(tmp_path):
    out = tmp_path / "out"
    # far more sizes than fit in the test: the run is still going when Ctrl-C comes
    sizes = ",".join(str(300 + 50 * i) for i in range(400))
    p = subprocess.Popen([sys.executable, "-m", "bigembed", "--no-progress", "bench",
                          "--sizes", sizes, "--dim", "4", "--stages", "lookup", "-k", "5",
                          "--repeat", "2", "--device", "cpu", "--out", str(out),
                          "--html-resources", "cdn"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         # A shell running us in the background ignores SIGINT, and Python then
                         # installs no Ctrl-C handler: give the child the default, as a terminal.
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    path = out / "bench.json"
    deadline = time.time() + 120
    try:
        while time.time() < deadline:
            if path.exists() and json.loads(path.read_text())["results"]["rows"]:
                break
            if p.poll() is not None:
                break
            time.sleep(0.2)
        p.send_signal(signal.SIGINT)
        stdout, stderr = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 130, stderr
    assert "Traceback" not in stderr and "interrupted" in stderr
    doc = json.loads(path.read_text())
    assert doc["results"]["status"] == "interrupted"
    rows = doc["results"]["rows"]
    assert rows and len(rows) < 400 and all(x["status"] == "ok" for x in rows)
    assert "lookup" in stdout and (out / "bench.html").exists()


# -- the command line ------------------------------------------------------------------------


def test_cli_run_prints_table_and_writes_files(tmp_path):
    p = run_cli("--no-progress", "bench", "--sizes", "200,400", "--dim", "3", "--stages",
                "knn-graph,lookup", "--repeat", "2", "-k", "5", "--device", "cpu", "--out",
                tmp_path, "--name", "cli", "--html-resources", "cdn", "--compare",
                "--peer-max-n", "pynndescent=0", check=True)
    assert "knn-graph" in p.stdout and "scaling exponents" in p.stdout
    assert "faiss.IndexFlatL2" in p.stdout
    doc = json.loads((tmp_path / "cli.json").read_text())
    assert {r["stage"] for r in doc["results"]["rows"]} == {"knn-graph", "lookup"}
    assert (tmp_path / "cli.html").stat().st_size > 1000
    pj = run_cli("--no-progress", "bench", "--sizes", "100", "--dim", "2", "--stages",
                 "lookup", "--repeat", "1", "-k", "3", "--device", "cpu", "--out", tmp_path,
                 "--no-html", "--json", check=True)
    assert json.loads(pj.stdout)["results"]["rows"][0]["status"] == "ok"


@pytest.mark.parametrize("args,fragments", [
    (["--sizes", "abc"], ["--sizes", "'abc'"]),
    (["--sizes", "10"], ["--sizes", "k + 2"]),
    (["--stages", "knn-graph,nope"], ["--stages", "'nope'"]),
    (["--budget", "5 parsecs"], ["--budget", "5 parsecs"]),
    (["--dim", "0"], ["--dim", ">= 1"]),
    (["--repeat", "0"], ["--repeat"]),
    (["--peer-max-n", "umap"], ["--peer-max-n", "PEER=N"]),
    (["--name", "a/b"], ["--name"]),
])
def test_cli_bad_input(tmp_path, args, fragments):
    p = run_cli("bench", "--out", tmp_path / "o", *args)
    assert_clean_error(p, *fragments)
    assert p.returncode == 2
    assert not (tmp_path / "o" / "bench.json").exists()


def test_cli_out_is_a_file(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    assert_clean_error(run_cli("bench", "--sizes", "100", "--out", f), "--out", str(f))


def test_cli_cuda_without_gpu(tmp_path):
    from bigembed.registry import cuda_check

    if cuda_check() is None:
        pytest.skip("a CUDA device is present")
    p = run_cli("bench", "--sizes", "100", "--device", "cuda", "--out", tmp_path)
    assert_clean_error(p, "--device cuda", "--device cpu")


@pytest.mark.gpu
def test_cuda_run_measures_context_and_gpu_memory(tmp_path):
    r = run_bench(sizes=[500, 1000], dim=8, stages=["knn-graph", "lookup"], device="cuda",
                  out=tmp_path, repeat=2, k=5, html=False)
    assert r.doc["results"]["setup"]["cuda_context_s"] > 0
    assert all(x["device"] == "cuda" for x in r.doc["results"]["rows"] if x["status"] == "ok")


def test_budgeted_order_runs_cheap_stages_first(tmp_path):
    from bigembed.bench.runner import _Run

    run = _Run(json_path=tmp_path / "x.json", params={"dim": 2}, deadline=None, repeat=1,
               warmup=0, sync=None, on_row=None)
    run.history = {("knn-graph", "bigembed"): [(100, 5.0)], ("render", "bigembed"): [(100, 0.1)],
                   ("knn-graph", "faiss.IndexFlatL2"): [(100, 0.001)]}
    # Unmeasured stages keep registry order and come first; measured ones cheapest first.
    assert run.order(["ingest", "knn-graph", "render", "lookup"], 1000) == [
        "ingest", "lookup", "render", "knn-graph"]
