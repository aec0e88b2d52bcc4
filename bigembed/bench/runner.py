"""The ``bigembed bench`` runner: every stage at every size, warm, repeated, with peers.

For each size N (ascending) it writes a synthetic dataset, then for each stage times the
library's own stage function (and, with ``compare``, the plain libraries) through
:func:`bigembed.bench.harness.measure`: warm-up runs timed apart (JIT, CUDA context), repeats for
median and spread, peak host (and GPU) memory. The JSON document is rewritten atomically
after every row, so Ctrl-C or a crash keeps everything measured so far.

``budget`` (seconds) skips any run that the scaling fitted so far (time ~ N^e, e >= 1 assumed
when extrapolating) predicts would end past the budget; a peer may use at most half of what
is left. Slow peers first warm up on a small sample, which also gives their first point.
"""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import BackendUnavailable, InputError, check_choice, check_positive_int
from ..progress import progress_bar
from .context import BenchContext, StageSkipped, Trial
from .harness import fit_power_law, measure, results_doc, write_results
from .peers import PEERS
from .stages import STAGES

log = logging.getLogger(__name__)

DEFAULT_SIZES = (10_000, 30_000, 100_000, 300_000, 1_000_000)
DEFAULT_STAGES = tuple(STAGES)
SUITE = "bench"
#: the most of the remaining budget one peer run may be predicted to take
PEER_SHARE = 0.5


@dataclass(frozen=True)
class BenchResult:
    """What :func:`run_bench` wrote: the JSON (and HTML) paths and the document itself."""

    json_path: Path
    html_path: Path | None
    doc: dict
    interrupted: bool
    seconds: float


# -- parsing ---------------------------------------------------------------------------------


def parse_sizes(text) -> list[int]:
    """``"1e4,1e5,3e5"`` -> [10000, 100000, 300000] (sorted, unique)."""
    if isinstance(text, (list, tuple)):
        items = list(text)
    else:
        items = [s for s in str(text).split(",") if s.strip()]
    if not items:
        raise InputError(f"sizes must list at least one size, got {text!r}")
    out = []
    for s in items:
        try:
            v = float(str(s).strip().replace("_", ""))
        except ValueError:
            raise InputError(f"sizes: {s!r} is not a number (expected e.g. 1e4,1e5)") from None
        if v != v or v != int(v) or v < 1:
            raise InputError(f"sizes: {s!r} is not a whole number of rows")
        out.append(int(v))
    return sorted(set(out))


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h)?\s*$", re.I)


def parse_duration(text) -> float | None:
    """``"15m"``, ``"900"``, ``"90s"``, ``"1.5h"`` -> seconds; None/"" -> None."""
    if text is None or text == "":
        return None
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        v = float(text)
    else:
        m = _DURATION.match(str(text))
        if not m:
            raise InputError(f"budget must be a duration like 900, 90s, 15m or 1.5h, "
                             f"got {text!r}")
        v = float(m.group(1)) * {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}[
            (m.group(2) or "s").lower()]
    if v <= 0:
        raise InputError(f"budget must be positive, got {text!r}")
    return v


def parse_stages(stages) -> list[str]:
    if stages is None:
        return list(DEFAULT_STAGES)
    if isinstance(stages, str):
        stages = [s.strip() for s in stages.split(",") if s.strip()]
    if not stages:
        raise InputError("stages must name at least one stage")
    for s in stages:
        check_choice("stages", s, STAGES)
    return [s for s in STAGES if s in stages]


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when torch sees a GPU, else ``cpu``; ``cuda`` without one errs."""
    check_choice("device", device, {"auto", "cpu", "cuda"})
    if device == "cpu":
        return "cpu"
    from ..registry import cuda_check

    why = cuda_check()
    if device == "cuda" and why:
        raise BackendUnavailable(f"device='cuda' cannot run: {why}. Install a CUDA build of "
                                 f"torch on a machine with an NVIDIA GPU, or use --device cpu")
    if why:
        log.info("bench: --device auto picked cpu (%s)", why)
    return "cpu" if why else "cuda"


# -- prediction ------------------------------------------------------------------------------


def predict_seconds(points, n: int) -> tuple[float | None, float | None]:
    """Predicted seconds of one call at size ``n`` from measured ``(size, seconds)`` points,
    and the exponent used: the fitted one (at least 1, at most 3; small sizes are
    overhead-bound and under-predict), or 1 with a single point. (None, None) with none."""
    pts = [(a, b) for a, b in points if b and b > 0]
    if not pts:
        return None, None
    fit = fit_power_law([a for a, _ in pts], [b for _, b in pts])
    e = min(3.0, max(1.0, fit["exponent"])) if fit else 1.0
    n0, t0 = max(pts)
    return t0 * (n / n0) ** e, e


# -- the run ---------------------------------------------------------------------------------


def _rss_mb() -> float | None:
    try:
        import psutil

        return round(psutil.Process().memory_info().rss / 2**20, 1)
    except ImportError:
        return None


def _sync(device: str):
    if device != "cuda":
        return None
    import torch

    return torch.cuda.synchronize


def _cuda_context_seconds() -> float:
    import torch

    t0 = time.perf_counter()
    torch.cuda.init()
    torch.zeros(1, device="cuda")
    torch.cuda.synchronize()
    return round(time.perf_counter() - t0, 4)


class _Run:
    """State of one bench run: the rows so far and the fitted histories."""

    def __init__(self, *, json_path, params, deadline, repeat, warmup, sync, on_row):
        self.json_path = json_path
        self.params = params
        self.deadline = deadline
        self.repeat = repeat
        self.warmup = warmup
        self.sync = sync
        self.on_row = on_row
        self.rows: list[dict] = []
        self.history: dict[tuple, list] = {}
        self.warm_points: dict[tuple, list] = {}
        self.setup: dict = {"synth": []}
        self.status = "running"
        self.t0 = time.perf_counter()

    # rows
    def add(self, row: dict) -> dict:
        self.rows.append(row)
        if row["status"] == "ok":
            self.history.setdefault((row["stage"], row["impl"]), []).append(
                (row["n"], row["timing"]["median"]))
        if self.on_row:
            self.on_row(row)
        self.write()
        return row

    def skip(self, stage, impl, n, reason, *, status="skipped", what=""):
        log.info("bench: %s %s N=%d %s: %s", stage, impl, n, status, reason)
        return self.add({"stage": stage, "impl": impl, "n": n, "dim": self.params["dim"],
                         "status": status, "reason": reason, "what": what})

    def doc(self) -> dict:
        rows = summarize(self.rows)
        results = {"status": self.status, "elapsed_s": round(time.perf_counter() - self.t0, 2),
                   "rows": rows, "exponents": exponents(rows), "setup": self.setup}
        return results_doc(SUITE, results, params=self.params)

    def write(self) -> dict:
        d = self.doc()
        write_results(self.json_path, d)
        return d

    def order(self, stage_names, n: int) -> list[str]:
        """Stages cheapest first (by bigembed's predicted time at ``n``; unmeasured ones in
        registry order, first), so under a budget one slow stage at a size cannot starve
        the cheap ones: the slow ones come last and are the ones skipped."""
        def cost(i_s):
            i, s = i_s
            pred, _ = predict_seconds(self.history.get((s, "bigembed"), []), n)
            return (pred is not None, pred or 0.0, i)
        return [s for _, s in sorted(enumerate(stage_names), key=cost)]

    # timing one trial
    def over_budget(self, key, n, calls) -> str | None:
        if self.deadline is None:
            return None
        points = self.history.get(key) or self.warm_points.get(key, [])
        pred, e = predict_seconds(points, n)
        if pred is None:
            return None
        left = self.deadline - time.perf_counter()
        # Peers may take at most PEER_SHARE of what is left, so one slow peer cannot eat the
        # budget that bigembed's own stages need at the larger sizes.
        share = 1.0 if key[1] in ("bigembed", "synth") else PEER_SHARE
        if pred * calls > left * share:
            peer = "" if share == 1.0 else f", a peer may use {share:.0%}"
            return (f"budget: predicted {pred * calls:.1f}s > {max(left, 0):.0f}s left{peer} "
                    f"({calls} run(s), time ~ N^{e:.2f} fitted on {len(points)} size(s))")
        return None

    def affordable_repeats(self, key, n, repeat: int, warmups: int) -> int:
        """Fewer repeats (at least one) for a call predicted to take more than a tenth of
        what is left: a spread of one slow stage is worth less than the other stages at
        the largest size."""
        if self.deadline is None or repeat <= 1:
            return repeat
        pred, _ = predict_seconds(self.history.get(key) or self.warm_points.get(key, []), n)
        if not pred:
            return repeat
        left = self.deadline - time.perf_counter()
        fits = int(0.1 * left / pred) - warmups
        return max(1, min(repeat, fits))

    def run_trial(self, stage: str, trial: Trial, ctx: BenchContext) -> dict:
        n = ctx.n
        if trial.max_n is not None and n > trial.max_n:
            return self.skip(stage, trial.name, n, f"peer cap: {trial.name} runs up to N="
                             f"{trial.max_n} (raise it: --peer-max-n {trial.name}=N)",
                             what=trial.what)
        key = (stage, trial.name)
        out = {}

        def fn():
            out["value"] = trial.run()

        before = _rss_mb()
        try:
            warm_s = None
            if trial.warm is not None and self.warmup and key not in self.warm_points:
                # One-off costs (JIT) paid once per run on a small sample, timed apart; a
                # second, warm call on the sample gives the budget a first point to scale.
                times = []
                for _ in range(2):
                    t0 = time.perf_counter()
                    trial.warm()
                    if self.sync:
                        self.sync()
                    times.append(time.perf_counter() - t0)
                warm_s = times[0]
                self.warm_points[key] = [(trial.warm_n or n, times[1])]
            # One-off costs (JIT, first imports) are paid at the first size a trial runs;
            # at larger sizes a warm-up call would only repeat the measurement.
            full_warmups = 0 if (trial.warm is not None or key in self.history) \
                else self.warmup
            repeat = min(self.repeat, trial.max_repeat or self.repeat)
            repeat = self.affordable_repeats(key, n, repeat, full_warmups)
            # The whole trial (warm-ups and every repeat) must fit, not only its first call:
            # a default run overran its budget by 8 minutes when only the first was counted.
            why = self.over_budget(key, n, full_warmups + repeat)
            if why:
                return self.skip(stage, trial.name, n, why, what=trial.what)
            timing = measure(fn, repeat=repeat, warmup=full_warmups, setup=trial.setup,
                             sync=self.sync, deadline=self.deadline)
            if warm_s is not None:
                timing.warmup_s = warm_s
                timing.extra.update(warmup_rows=trial.warm_n,
                                    warm_sample_s=self.warm_points[key][0][1])
        except StageSkipped as e:
            return self.skip(stage, trial.name, n, str(e), what=trial.what)
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as e:  # a stage failing must not lose the run; report it
            log.debug("bench: %s %s failed", stage, trial.name, exc_info=True)
            return self.skip(stage, trial.name, n, f"{type(e).__name__}: {e}", status="error",
                             what=trial.what)
        quality = {}
        if trial.quality is not None:
            try:
                quality = trial.quality(out.get("value"))
            except (KeyboardInterrupt, SystemExit):
                raise
            except Exception as e:
                quality = {"error": f"{type(e).__name__}: {e}"}
        tj = timing.to_json()
        row = {"stage": stage, "impl": trial.name, "n": n, "dim": ctx.dim, "status": "ok",
               "what": trial.what, "backend": trial.backend, "device": ctx.device,
               "timing": tj, "per_item_s": tj["median"] / max(1, trial.items),
               "items": trial.items, "rss_before_mb": before, "peak_rss_mb": timing.peak_rss_mb,
               "peak_rss_delta_mb": (round(timing.peak_rss_mb - before, 1)
                                     if before is not None and timing.peak_rss_mb else None),
               "peak_gpu_mb": timing.peak_gpu_mb, "quality": quality}
        log.info("bench: %s %s N=%d median %.4gs", stage, trial.name, n, tj["median"])
        return self.add(row)


def summarize(rows: list[dict]) -> list[dict]:
    """Rows with the side-by-side comparison filled in: on each peer row ``speedup`` =
    peer median / bigembed median (> 1: bigembed faster), and on bigembed's row a
    ``compare`` map of every peer's speedup and quality at the same stage and size."""
    ours = {(r["stage"], r["n"]): r for r in rows
            if r["impl"] == "bigembed" and r["status"] == "ok"}
    out = []
    for r in rows:
        r = dict(r)
        if r["impl"] == "bigembed" and r["status"] == "ok":
            r["compare"] = {}
        out.append(r)
    by_key = {(r["stage"], r["n"]): r for r in out
              if r["impl"] == "bigembed" and r["status"] == "ok"}
    for r in out:
        if r["impl"] == "bigembed" or r["status"] != "ok":
            continue
        mine = ours.get((r["stage"], r["n"]))
        if mine is None:
            continue
        sp = r["timing"]["median"] / mine["timing"]["median"] if mine["timing"]["median"] else None
        r["speedup"] = round(sp, 4) if sp is not None else None
        by_key[(r["stage"], r["n"])]["compare"][r["impl"]] = {
            "speedup": r["speedup"], "peer_median_s": r["timing"]["median"],
            "peer_quality": r.get("quality", {})}
    return out


def exponents(rows: list[dict]) -> dict:
    """Fitted scaling exponent of median time vs N per stage and implementation."""
    pts: dict = {}
    for r in rows:
        if r["status"] == "ok":
            pts.setdefault(r["stage"], {}).setdefault(r["impl"], []).append(
                (r["n"], r["timing"]["median"]))
    out = {}
    for stage, impls in pts.items():
        for impl, p in impls.items():
            fit = fit_power_law([a for a, _ in p], [b for _, b in p])
            out.setdefault(stage, {})[impl] = dict(fit, sizes=sorted(a for a, _ in p)) \
                if fit else {"exponent": None, "sizes": sorted(a for a, _ in p),
                             "note": "needs two sizes"}
    return out


def run_bench(*, sizes=DEFAULT_SIZES, dim: int = 128, stages=None, compare: bool = False,
              device: str = "auto", budget=None, out="bench-results", name: str = "bench",
              repeat: int = 3, warmup: int = 1, k: int = 15, seed: int = 0,
              reduce_method: str = "pca", peer_max_n: dict | None = None,
              quality_sample: int = 1000, html: bool = True, html_resources: str = "inline",
              work=None, progress: bool | None = None, on_row=None) -> BenchResult:
    """Run the scalability benchmark; write ``<out>/<name>.json`` (and ``.html``).

    ``sizes``: row counts (or a "1e4,1e5" string); ``budget``: seconds or "15m";
    ``on_row(row)`` is called with every row as it is measured. A KeyboardInterrupt ends the
    run early with status "interrupted" and everything measured so far written.
    """
    sizes = parse_sizes(sizes)
    dim = check_positive_int("dim", dim)
    repeat = check_positive_int("repeat", repeat)
    warmup = check_positive_int("warmup", warmup, minimum=0)
    k = check_positive_int("-k", k)
    quality_sample = check_positive_int("quality_sample", quality_sample)
    if sizes[0] < k + 2:
        raise InputError(f"sizes: every size must be at least k + 2 = {k + 2} rows "
                         f"(the kNN stages need k neighbours besides the point), got {sizes[0]}")
    stage_names = parse_stages(stages)
    budget_s = parse_duration(budget)
    check_choice("html_resources", html_resources, {"inline", "cdn"})
    if not re.fullmatch(r"[A-Za-z0-9._-]+", str(name)):
        raise InputError(f"name must be letters, digits, '.', '_' or '-', got {name!r}")
    peer_max_n = dict(peer_max_n or {})
    dev = resolve_device(device)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"out: {out} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    json_path, html_path = out / f"{name}.json", out / f"{name}.html"
    params = {"sizes": sizes, "dim": dim, "stages": stage_names, "compare": compare,
              "device": device, "device_used": dev, "budget_s": budget_s, "repeat": repeat,
              "warmup": warmup, "k": k, "seed": seed, "reduce_method": reduce_method,
              "peer_max_n": peer_max_n, "quality_sample": quality_sample}
    t_start = time.perf_counter()
    run = _Run(json_path=json_path, params=params, repeat=repeat, warmup=warmup,
               deadline=t_start + budget_s if budget_s else None, sync=_sync(dev), on_row=on_row)
    workdir = Path(tempfile.mkdtemp(prefix="bigembed-bench-", dir=work))
    interrupted = False
    bar = progress_bar(total=len(sizes) * len(stage_names), desc="bench", unit="stage",
                       enabled=progress)
    try:
        if dev == "cuda":
            run.setup["cuda_context_s"] = _cuda_context_seconds()
        run.write()
        for n in sizes:
            _run_size(run, n, stage_names=stage_names, compare=compare, dev=dev,
                      seed=seed, k=k, reduce_method=reduce_method, peer_max_n=peer_max_n,
                      quality_sample=quality_sample, workdir=workdir, bar=bar)
        run.status = "complete"
    except KeyboardInterrupt:
        interrupted = True
        run.status = "interrupted"
        log.warning("bench: interrupted; keeping the results measured so far")
    finally:
        bar.close()
        doc = run.write()
        shutil.rmtree(workdir, ignore_errors=True)
    html_out = None
    if html:
        from .report import write_html

        html_out = write_html(doc, html_path, resources=html_resources)
    return BenchResult(json_path, html_out, doc, interrupted, time.perf_counter() - t_start)


def _run_size(run: _Run, n: int, *, stage_names, compare, dev, seed, k, reduce_method,
              peer_max_n, quality_sample, workdir: Path, bar) -> None:
    from ..ingest.synth import synth

    dim = run.params["dim"]
    why = run.over_budget(("setup", "synth"), n, 1)
    if why:
        for s in stage_names:
            run.skip(s, "bigembed", n, f"synthetic data: {why}")
            bar.update(1)
        return
    sizedir = workdir / f"n{n}"
    sizedir.mkdir()
    t0 = time.perf_counter()
    synth(sizedir / "ds", n=n, dim=dim, clusters=20, seed=seed, progress=False)
    secs = round(time.perf_counter() - t0, 3)
    run.setup["synth"].append({"n": n, "dim": dim, "seconds": secs})
    run.history.setdefault(("setup", "synth"), []).append((n, secs))
    ctx = BenchContext(n=n, dim=dim, dataset=sizedir / "ds", work=sizedir, device=dev,
                       seed=seed, k=k, compare=compare, reduce_method=reduce_method,
                       quality_sample=quality_sample, peer_max_n=peer_max_n)
    try:
        for s in run.order(stage_names, n):
            factories = [("bigembed", STAGES[s])]
            if compare:
                factories += [(f.peer_name, f) for f in PEERS.get(s, [])]
            for label, make in factories:
                if run.deadline is not None and time.perf_counter() >= run.deadline:
                    # Preparing a trial (its data, a base layout) is untimed work: none of
                    # it starts once the budget is spent.
                    run.skip(s, label, n, "budget: spent before this stage")
                    continue
                try:
                    trial = make(ctx)
                except StageSkipped as e:
                    run.skip(s, label, n, str(e))
                    continue
                except (KeyboardInterrupt, SystemExit):
                    raise
                except Exception as e:
                    log.debug("bench: preparing %s %s failed", s, label, exc_info=True)
                    run.skip(s, label, n, f"{type(e).__name__}: {e}", status="error")
                    continue
                run.run_trial(s, trial, ctx)
            bar.update(1)
    finally:
        shutil.rmtree(sizedir, ignore_errors=True)
