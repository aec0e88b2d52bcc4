"""Error distributions of a group against the rest: :func:`group_stats`.

What the whole dataset contributes (class codes, histogram bins, the dataset's confusion
matrix) is prepared once per process per metadata version (:class:`Prepared`), so a group's
statistics cost a few gathers and ``bincount`` calls over the group's rows: a 1M-row group is
answered in tens of milliseconds.
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass, field

import numpy as np

from ..dataset.reader import open_cached
from ..errors import check_positive_int
from .groups import as_ids

log = logging.getLogger(__name__)

#: histogram bins of confidence and loss
BINS = 30
#: loss histograms end at this quantile of the dataset's losses (one huge loss would otherwise
#: squeeze every other bar into the first bin); larger losses count in the last bin
LOSS_QUANTILE = 0.995
#: label values listed in a label mix
MIX_TOP = 20


@dataclass(frozen=True)
class Histogram:
    """Counts of a column over shared bins: ``edges`` (bins + 1,), ``group`` and ``rest``
    (bins,) int64. Values past the last edge count in the last bin; NaN is left out."""

    column: str
    edges: np.ndarray
    group: np.ndarray
    rest: np.ndarray

    def to_json(self) -> dict:
        return {"column": self.column, "edges": [float(e) for e in self.edges],
                "group": self.group.tolist(), "rest": self.rest.tolist()}


@dataclass(frozen=True)
class GroupSummary:
    """A group of rows (``ids``, sorted) against the whole dataset: its size, label mix
    (label -> count), error rate and mean confidence, each beside the whole dataset's (None
    where the metadata lacks the column). The server's selection summary, and the first fields
    of :class:`GroupStats`."""

    count: int
    total: int
    ids: np.ndarray
    label_mix: dict
    error_rate: float | None
    error_rate_all: float | None
    mean_confidence: float | None
    mean_confidence_all: float | None

    def to_json(self, *, with_ids: bool = False) -> dict:
        d = {"count": self.count, "total": self.total, "label_mix": self.label_mix,
             "error_rate": self.error_rate, "error_rate_all": self.error_rate_all,
             "mean_confidence": self.mean_confidence,
             "mean_confidence_all": self.mean_confidence_all}
        d.update(self._more_json())
        if with_ids:
            d["ids"] = self.ids.tolist()
        return d

    def _more_json(self) -> dict:
        """A subclass's further fields, in the JSON after the summary's and before ``ids``."""
        return {}


@dataclass(frozen=True)
class GroupStats(GroupSummary):
    """Statistics of a group of rows (``ids``, sorted) against the whole dataset: the fields
    of :class:`GroupSummary`, then the mean loss, confusion matrices, histograms and worst
    members.

    ``classes``: the class names of the confusion matrices (sorted union of labels and
    predictions, as scikit-learn's ``confusion_matrix`` orders them); ``confusion`` and
    ``confusion_all``: arrays of shape (C, C), rows the true label, columns the prediction
    (None without both columns); ``histograms``: ``{"confidence": Histogram, "loss": ...}``
    for the columns the metadata has; ``worst``: up to ``worst`` member ids, highest loss first
    (lowest confidence first without a loss column, else id order).
    """

    mean_loss: float | None
    mean_loss_all: float | None
    classes: tuple = ()
    confusion: np.ndarray | None = None
    confusion_all: np.ndarray | None = None
    histograms: dict = field(default_factory=dict)
    worst: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    worst_by: str | None = None

    def _more_json(self) -> dict:
        return {"mean_loss": self.mean_loss, "mean_loss_all": self.mean_loss_all,
                "classes": list(self.classes),
                "confusion": None if self.confusion is None else self.confusion.tolist(),
                "confusion_all": None if self.confusion_all is None else
                self.confusion_all.tolist(),
                "histograms": {k: h.to_json() for k, h in self.histograms.items()},
                "worst": self.worst.tolist(), "worst_by": self.worst_by}


def _num(v) -> float | None:
    v = float(v)
    return v if math.isfinite(v) else None


class Prepared:
    """What a group's statistics need from the whole dataset, computed once.

    ``label_codes``/``pred_codes``: int64 (N,) codes into ``classes`` (-1 where missing);
    ``bins``: per histogram column, int16 (N,) bin of each row (-1 for NaN) and its edges.
    """

    def __init__(self, meta):
        import pandas as pd

        n = len(meta)
        self.n = n
        self.label = meta["label"] if "label" in meta.columns else None
        self.classes: tuple = ()
        self.label_codes = self.pred_codes = None
        self.confusion_all = None
        if "label" in meta.columns and "prediction" in meta.columns:
            lab, pred = meta["label"], meta["prediction"]
            both = pd.concat([lab, pred], ignore_index=True)
            ok = both.notna().to_numpy()
            vals = both[ok]
            try:
                uniq = np.unique(vals.to_numpy())
            except TypeError:  # mixed types: order as text
                vals = vals.astype(str)
                uniq = np.unique(vals.to_numpy())
            codes = np.full(2 * n, -1, np.int64)
            codes[ok] = np.searchsorted(uniq, vals.to_numpy())
            self.label_codes, self.pred_codes = codes[:n], codes[n:]
            self.classes = tuple(str(u) for u in uniq.tolist())
            self.confusion_all = self._confusion(np.arange(n))
        self.correct = (meta["correct"].to_numpy().astype(np.float64)
                        if "correct" in meta.columns else None)
        if self.correct is None and self.label_codes is not None:
            both_ok = (self.label_codes >= 0) & (self.pred_codes >= 0)
            self.correct = np.where(both_ok, self.label_codes == self.pred_codes, np.nan)
        self.values: dict = {}
        self.bins: dict = {}
        for col in ("confidence", "loss"):
            if col not in meta.columns or meta[col].dtype.kind not in "fiu":
                continue
            v = meta[col].to_numpy().astype(np.float64)
            self.values[col] = v
            fin = v[np.isfinite(v)]
            if not len(fin):
                continue
            lo = float(fin.min())
            hi = float(np.quantile(fin, LOSS_QUANTILE)) if col == "loss" else float(fin.max())
            if col == "confidence" and lo >= 0 and hi <= 1:
                lo, hi = 0.0, 1.0
            if not hi > lo:
                hi = lo + 1.0
            edges = np.linspace(lo, hi, BINS + 1)
            b = np.full(n, -1, np.int16)
            okv = np.isfinite(v)
            b[okv] = np.clip(((v[okv] - lo) / (hi - lo) * BINS).astype(np.int64), 0, BINS - 1)
            self.bins[col] = (b, edges, np.bincount(b[okv], minlength=BINS).astype(np.int64))
        self.means = {c: _num(np.nanmean(v)) if np.isfinite(v).any() else None
                      for c, v in self.values.items()}
        self.err_all = (_num(1 - np.nanmean(self.correct))
                        if self.correct is not None and np.isfinite(self.correct).any() else None)

    def _confusion(self, ids: np.ndarray) -> np.ndarray:
        c = len(self.classes)
        lab, pred = self.label_codes[ids], self.pred_codes[ids]
        ok = (lab >= 0) & (pred >= 0)
        flat = lab[ok] * c + pred[ok]
        return np.bincount(flat, minlength=c * c).reshape(c, c).astype(np.int64)


_PREPARED: dict = {}
_LOCK = threading.Lock()


def prepared(ds) -> Prepared:
    """The :class:`Prepared` of ``ds``'s metadata, once per process per metadata version."""
    rec = ds.manifest.get("meta") or {}
    key = (str(ds.path.resolve()), rec.get("xxh3_64"), ds.rows)
    with _LOCK:
        hit = _PREPARED.get(key)
    if hit is None:
        hit = Prepared(ds.meta)
        with _LOCK:
            if len(_PREPARED) > 8:
                _PREPARED.clear()
            _PREPARED[key] = hit
    return hit


def group_stats(ds, ids, *, worst: int = 48) -> GroupStats:
    """Error distributions of the group ``ids`` (row ids or a boolean mask of shape (N,))
    against the rest of dataset ``ds`` (a path or :class:`~bigembed.dataset.Dataset`).

    Returns a :class:`GroupStats`: count, label mix, error rate, mean confidence and loss
    (group and all), the confusion matrix of the group beside the dataset's, confidence and
    loss histograms (group vs rest, shared bins) and up to ``worst`` members worst-first.
    """
    ds = open_cached(ds)
    worst = check_positive_int("worst", worst, minimum=0)
    ids = as_ids(ids, ds.rows)
    p = prepared(ds)
    mix = {}
    if p.label is not None:
        # counted on the raw values (text conversion of a million labels costs more)
        vc = p.label.iloc[ids].value_counts()
        mix = {str(k): int(v) for k, v in vc.head(MIX_TOP).items()}
    err = None
    if p.correct is not None:
        c = p.correct[ids]
        err = _num(1 - np.nanmean(c)) if np.isfinite(c).any() else None
    means = {}
    for col, v in p.values.items():
        g = v[ids]
        means[col] = _num(np.nanmean(g)) if np.isfinite(g).any() else None
    hists = {}
    for col, (b, edges, all_counts) in p.bins.items():
        gb = b[ids]
        g = np.bincount(gb[gb >= 0], minlength=BINS).astype(np.int64)
        hists[col] = Histogram(col, edges, g, all_counts - g)
    conf = p._confusion(ids) if p.label_codes is not None else None
    order_by = "loss" if "loss" in p.values else ("confidence" if "confidence" in p.values
                                                  else None)
    if order_by is None or worst == 0:
        w = ids[:worst]
    else:
        v = p.values[order_by][ids]
        key = np.where(np.isfinite(v), -v if order_by == "loss" else v, np.inf)
        m = min(worst, len(ids))
        part = np.argpartition(key, m - 1)[:m] if m < len(ids) else np.arange(len(ids))
        w = ids[part[np.lexsort((ids[part], key[part]))]]
    return GroupStats(
        count=int(len(ids)), total=ds.rows, ids=ids, label_mix=mix, error_rate=err,
        error_rate_all=p.err_all, mean_confidence=means.get("confidence"),
        mean_confidence_all=p.means.get("confidence"), mean_loss=means.get("loss"),
        mean_loss_all=p.means.get("loss"), classes=p.classes, confusion=conf,
        confusion_all=p.confusion_all, histograms=hists, worst=w.astype(np.int64),
        worst_by=order_by)

