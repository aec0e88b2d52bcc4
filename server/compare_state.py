"""What the comparison page of one served dataset shares: pairs of spaces and their layouts,
colourings by change, selections as row ids, overlays, movers.

Every session of a comparison asks the same questions of the same data; the answers are
computed once per process (comparisons and trajectories are also stored artifacts, see
:mod:`bigembed.compare`) and registered as colourings on the shared renderers
(:meth:`~bigembed.view.frames.FrameRenderer.add_column`), so the frames of a change colouring
are aggregated per pixel like any numeric column.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from ..errors import InputError

log = logging.getLogger(__name__)

#: colourings by change: key -> what the legend calls it
CHANGES = {
    "overlap": "neighbourhood overlap A~B",
    "agreement": "label agreement of neighbours (A / B)",
    "flip": "prediction flip A→B (share)",
    "displacement": "layout displacement A→B",
    "depth": "trajectory depth (space index)",
    "traj": "label agreement of neighbours, this space",
}
CHANGE_PREFIX = "change:"
DEFAULT_K = 15
#: selections kept as row ids (per source layout and geometry), most recent first
SELECTION_CACHE = 8
MOVERS_TOP = 100
#: change colourings kept registered on the renderers (each holds N float64), oldest dropped
MAX_CHANGE_COLOURINGS = 12
CORRECT_FILTERS = ("any", "right in A", "wrong in A", "right in B", "wrong in B")
FLIP_FILTERS = ("any", "flipped", "not flipped")


@dataclass(frozen=True)
class Pair:
    """Spaces ``a`` and ``b`` shown side by side in layouts ``la`` and ``lb``; ``path``: the
    ordered spaces of the slider, ``path_layouts`` one layout each (aligned where possible);
    ``aligned``: whether ``la`` and ``lb`` share coordinates (pan/zoom can be linked)."""

    a: str
    b: str
    k: int
    la: str
    lb: str
    path: tuple
    path_layouts: tuple
    aligned: bool

    def with_b(self, b: str, lb: str, aligned: bool) -> "Pair":
        return Pair(self.a, b, self.k, self.la, lb, self.path, self.path_layouts, aligned)


def parse_spaces(text, name: str) -> list[str]:
    """``"a,b"`` -> ["a", "b"] (names may hold anything but a comma)."""
    if not isinstance(text, str) or not text.strip():
        raise InputError(f"parameter {name!r} must name spaces separated by commas, got {text!r}")
    return [t.strip() for t in text.split(",")]


class Comparisons:
    """The comparison side of an :class:`~bigembed.server.state.Explorer` (one per server)."""

    def __init__(self, explorer):
        self.ex = explorer
        self.ds = explorer.ds
        self._lock = threading.Lock()
        self._traj: dict = {}
        self._selections: OrderedDict = OrderedDict()
        self._registered: OrderedDict = OrderedDict()

    # -- spaces and layouts ----------------------------------------------------------------
    def _layout_records(self) -> dict:
        return self.ds.manifest.get("layouts", {})

    def spaces_with_layouts(self) -> list[str]:
        """Spaces that have a stored layout, in the dataset's order (the default slider path)."""
        recs = self._layout_records()
        have = {rec.get("space") for n, rec in recs.items() if n in self.ex.layouts}
        return [s for s in self.ds.spaces if s in have]

    def _layouts_of(self, space: str) -> list[str]:
        return [n for n in self.ex.layouts if self._layout_records()[n].get("space") == space]

    def _aligned_to(self, name: str) -> str | None:
        return ((self._layout_records().get(name) or {}).get("aligned") or {}).get("to")

    def aligned(self, la: str, lb: str) -> bool:
        """Whether layouts ``la`` and ``lb`` share coordinates: the same, one aligned to the
        other, or both aligned to the same reference (Procrustes, ``reduce --align-to``)."""
        if la == lb:
            return True
        ta, tb = self._aligned_to(la), self._aligned_to(lb)
        return ta == lb or tb == la or (ta is not None and ta == tb)

    def layout_for(self, space: str, prefer=()) -> str:
        """A layout of ``space``: one aligned with a layout in ``prefer`` when there is one,
        else one that a layout of another space is aligned to, else the newest."""
        names = self._layouts_of(space)
        if not names:
            raise InputError(f"space {space!r} has no layout; make one with `bigembed reduce "
                             f"{self.ds.path} --space {space}` (add --align-to LAYOUT to line it "
                             f"up with another)")
        for p in prefer:
            for n in names:
                if self.aligned(n, p):
                    return n
        targets = {self._aligned_to(n) for n in self.ex.layouts}
        for n in names:
            if n in targets:
                return n
        return names[0]

    def check_space(self, name: str, what: str) -> str:
        if name not in self.ds.spaces:
            raise InputError(f"{what}: dataset {self.ds.path.name!r} has no space {name!r}; it "
                             f"has {list(self.ds.spaces)}")
        sp = self.ds.spaces[name]
        if sp.rows != self.ds.rows:
            raise InputError(f"{what}: space {name!r} has {sp.rows} rows but the dataset has "
                             f"{self.ds.rows}; spaces compared row by row must hold the same rows")
        return name

    def pair(self, a: str, b: str, *, k: int = DEFAULT_K, path=None, la=None, lb=None,
             step=None) -> Pair:
        """Validate a comparison (raises :class:`InputError` naming the parameter) and pick
        its layouts. ``step``: a slider position; B becomes ``path[step]``."""
        a = self.check_space(a, "cmp")
        b = self.check_space(b, "cmp")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or \
                not 1 <= k <= min(200, self.ds.rows - 1):
            raise InputError(f"parameter 'k' must be an integer in 1..{min(200, self.ds.rows - 1)},"
                             f" got {k!r}")
        if path is None:
            path = self.spaces_with_layouts()
        path = [self.check_space(s, "path") for s in path]
        if len(set(path)) != len(path):
            raise InputError(f"parameter 'path' names a space more than once: {path}")
        if step is not None:
            if not path or isinstance(step, bool) or not isinstance(step, (int, np.integer)) \
                    or not 0 <= step < len(path):
                raise InputError(f"parameter 'step' must be an integer in 0..{len(path) - 1}, "
                                 f"got {step!r}")
            b = path[int(step)]
        for name, lay in (("la", la), ("lb", lb)):
            if lay is not None and lay not in self.ex.layouts:
                raise InputError(f"parameter {name!r} must be one of {self.ex.layouts}, got {lay!r}")
        la = la or self.layout_for(a, [self.layout_for(b)] if self._layouts_of(b) else [])
        if self._layout_records()[la].get("space") != a:
            raise InputError(f"parameter 'la': layout {la!r} is not a layout of space {a!r}")
        if lb is None or (step is not None and self._layout_records()[lb].get("space") != b):
            lb = self.layout_for(b, [la])
        if self._layout_records()[lb].get("space") != b:
            raise InputError(f"parameter 'lb': layout {lb!r} is not a layout of space {b!r}")
        chosen: list[str] = []
        for s in path:
            if s == a:
                chosen.append(la)
            elif s == b:
                chosen.append(lb)
            else:
                chosen.append(self.layout_for(s, [la, *chosen]))
        return Pair(a, b, int(k), la, lb, tuple(path), tuple(chosen), self.aligned(la, lb))

    def space_of(self, layout: str) -> str:
        return self._layout_records()[layout].get("space")

    # -- results ---------------------------------------------------------------------------
    def result(self, pair: Pair):
        return self.ex.compare(a=pair.a, b=pair.b, k=pair.k)

    def trajectory(self, pair: Pair):
        """:func:`bigembed.compare.trajectory` over the slider's path (None when it has fewer
        than two spaces or the metadata no labels)."""
        if len(pair.path) < 2 or "label" not in self.ds.meta.columns:
            return None
        key = (pair.path, pair.k)
        with self._lock:
            hit = self._traj.get(key)
        if hit is None:
            from ..compare import trajectory

            hit = trajectory(self.ds.path, spaces=list(pair.path), k=pair.k, progress=False)
            with self._lock:
                self._traj[key] = hit
        return hit

    def _column_for(self, space: str, base: str) -> str | None:
        from ..compare.run import _column_for

        return _column_for(self.ds.meta, space, base)

    def has_flips(self, pair: Pair) -> bool:
        pa_, pb_ = self._column_for(pair.a, "prediction"), self._column_for(pair.b, "prediction")
        return pa_ is not None and pb_ is not None and pa_ != pb_

    def flips(self, pair: Pair) -> np.ndarray | None:
        """Bool (N,): the prediction in B differs from the one in A (None without both)."""
        if not self.has_flips(pair):
            return None
        meta = self.ds.meta
        a = meta[self._column_for(pair.a, "prediction")].astype(str).to_numpy()
        b = meta[self._column_for(pair.b, "prediction")].astype(str).to_numpy()
        return a != b

    def changes(self, pair: Pair, layout: str) -> list[tuple[str, str]]:
        """The colourings by change a map of ``layout`` offers: (value, title) pairs."""
        out = [("overlap", CHANGES["overlap"])]
        meta = self.ds.meta.columns
        if "label" in meta:
            out.append(("agreement", CHANGES["agreement"]))
        if self.has_flips(pair):
            out.append(("flip", CHANGES["flip"]))
        if pair.aligned and pair.la != pair.lb:
            out.append(("displacement", CHANGES["displacement"]))
        if len(pair.path) >= 2 and "label" in meta:
            out.append(("depth", CHANGES["depth"]))
            if self.space_of(layout) in pair.path:
                out.append(("traj", CHANGES["traj"]))
        return [(CHANGE_PREFIX + k, t) for k, t in out]

    def colour(self, pair: Pair, layout: str, color: str) -> str:
        """The renderer column to draw ``color`` with on ``layout``: a change colouring
        (``change:overlap`` ...) is computed once and registered on the layout's renderer;
        any other name is returned as it is."""
        if not color.startswith(CHANGE_PREFIX):
            return color
        kind = color[len(CHANGE_PREFIX):]
        allowed = [v for v, _ in self.changes(pair, layout)]
        if color not in allowed:
            raise InputError(f"parameter 'color' must be one of {allowed} (or a column), got "
                             f"{color!r}")
        space = self.space_of(layout)
        if kind in ("overlap", "agreement", "flip"):
            name = f"{color}[{pair.a}~{pair.b} k{pair.k}]"
        elif kind == "displacement":
            name = f"{color}[{pair.la}~{pair.lb}]"
        elif kind == "depth":
            name = f"{color}[{','.join(pair.path)} k{pair.k}]"
        else:
            name = f"{color}[{','.join(pair.path)} k{pair.k} @{space}]"
        r = self.ex.renderer(layout)
        with self._lock:
            if (layout, name) in self._registered:
                self._registered.move_to_end((layout, name))
                return name
        kw = self._values(pair, kind, space)
        r.add_column(name, kw.pop("values"), **kw)
        with self._lock:
            self._registered[(layout, name)] = True
            while len(self._registered) > MAX_CHANGE_COLOURINGS:
                (old_layout, old_name), _ = self._registered.popitem(last=False)
                self.ex.renderer(old_layout).remove_column(old_name)
        return name

    def _values(self, pair: Pair, kind: str, space: str) -> dict:
        if kind == "overlap":
            return {"values": self.result(pair).overlap, "span": (0.0, 1.0)}
        if kind == "agreement":
            from ..compare import AGREEMENT

            agr = self.result(pair).agreement
            if agr is None:
                raise InputError("colour 'agreement' needs a label column in the metadata")
            codes = np.where(agr < 0, len(AGREEMENT), agr).astype(np.int64)
            return {"values": codes, "categories": (*AGREEMENT, "no label")}
        if kind == "flip":
            return {"values": self.flips(pair).astype(np.float32), "span": (0.0, 1.0)}
        if kind == "displacement":
            ra, rb = self.ex.renderer(pair.la), self.ex.renderer(pair.lb)
            ids = np.arange(self.ds.rows)
            d = np.linalg.norm(rb.xy(ids).astype(np.float64) - ra.xy(ids), axis=1)
            return {"values": d, "span": (0.0, float(np.quantile(d, 0.99)) or 1.0)}
        t = self.trajectory(pair)
        if kind == "depth":
            return {"values": t.depth.astype(np.float32), "span": (-1.0, len(pair.path) - 1.0)}
        return {"values": t.agreement[:, list(pair.path).index(space)], "span": (0.0, 1.0)}

    def legend(self, pair: Pair, layout: str, color: str) -> dict:
        """The legend of ``color`` on ``layout`` (computes the colouring if needed)."""
        r = self.ex.renderer(layout)
        name = self.colour(pair, layout, color)
        leg = r.legend(None if name == "density" else name)
        if color.startswith(CHANGE_PREFIX):
            leg = dict(leg, column=CHANGES[color[len(CHANGE_PREFIX):]])
        return leg

    # -- selections ------------------------------------------------------------------------
    def selection_ids(self, layout: str, geom: dict, key: str) -> np.ndarray:
        """Sorted ids (int64) inside ``geom`` (``box`` / ``polygon`` keywords) on ``layout``;
        the last few are kept by (layout, ``key``), ``key`` the geometry's URL text."""
        ck = (layout, key)
        with self._lock:
            hit = self._selections.get(ck)
            if hit is not None:
                self._selections.move_to_end(ck)
                return hit
        st = self.ex.select(layout=layout, **geom)
        with self._lock:
            self._selections[ck] = st.ids
            while len(self._selections) > SELECTION_CACHE:
                self._selections.popitem(last=False)
        return st.ids

    def overlay_png(self, layout: str, ids: np.ndarray, *, x_range, y_range, width, height):
        """PNG of the rows ``ids`` drawn over ``layout``'s view; returns (png, points in view)."""
        from ..view.overlay import overlay_mask, overlay_png

        xy = self.ex.renderer(layout).xy(ids)
        mask, n = overlay_mask(xy[:, 0], xy[:, 1], x_range=x_range, y_range=y_range,
                               width=width, height=height)
        return overlay_png(mask), n

    def group(self, pair: Pair, ids: np.ndarray, space: str) -> dict:
        """Statistics of the rows ``ids`` in ``space``: count, label mix, error rate there,
        mean overlap A~B."""
        meta = self.ds.meta
        out = {"count": int(len(ids)), "total": self.ds.rows, "space": space}
        if "label" in meta.columns and len(ids):
            vc = meta["label"].iloc[ids].astype(str).value_counts()
            out["label_mix"] = {str(k): int(v) for k, v in vc.head(6).items()}
        col = self._column_for(space, "correct")
        if col is not None and len(ids):
            out["error_rate"] = float(1 - meta[col].to_numpy().astype(bool)[ids].mean())
        if len(ids):
            out["mean_overlap"] = float(self.result(pair).overlap[ids].mean())
        return out

    # -- movers ----------------------------------------------------------------------------
    def movers(self, pair: Pair, *, label=None, correct="any", flip="any",
               top: int = MOVERS_TOP) -> list[dict]:
        """The ``top`` points with the least neighbourhood overlap, ties by id, among those
        with ``label`` (None: any), ``correct`` (one of :data:`CORRECT_FILTERS`) and ``flip``
        (one of :data:`FLIP_FILTERS`)."""
        if correct not in CORRECT_FILTERS:
            raise InputError(f"correct must be one of {CORRECT_FILTERS}, got {correct!r}")
        if flip not in FLIP_FILTERS:
            raise InputError(f"flip must be one of {FLIP_FILTERS}, got {flip!r}")
        res = self.result(pair)
        meta = self.ds.meta
        keep = np.ones(self.ds.rows, bool)
        if label is not None:
            if "label" not in meta.columns:
                raise InputError("label filter: the metadata has no label column")
            keep &= meta["label"].astype(str).to_numpy() == str(label)
        if correct != "any":
            side = pair.a if correct.endswith("A") else pair.b
            col = self._column_for(side, "correct")
            if col is None:
                raise InputError(f"correct filter: space {side!r} has no correct column")
            c = meta[col].to_numpy().astype(bool)
            keep &= c if correct.startswith("right") else ~c
        fl = self.flips(pair)
        if flip != "any":
            if fl is None:
                raise InputError("flip filter: spaces A and B do not both carry predictions")
            keep &= fl if flip == "flipped" else ~fl
        cand = np.flatnonzero(keep)
        order = cand[np.lexsort((cand, res.overlap[cand]))][:top]
        pa_, pb_ = self._column_for(pair.a, "prediction"), self._column_for(pair.b, "prediction")
        ca_, cb_ = self._column_for(pair.a, "correct"), self._column_for(pair.b, "correct")
        rows = []
        for i in order.tolist():
            m = {"id": int(i), "overlap": round(float(res.overlap[i]), 3)}
            if "label" in meta.columns:
                m["label"] = str(meta["label"].iat[i])
            if pa_:
                m["prediction_a"] = str(meta[pa_].iat[i])
            if pb_:
                m["prediction_b"] = str(meta[pb_].iat[i])
            if ca_:
                m["correct_a"] = str(bool(meta[ca_].iat[i]))
            if cb_:
                m["correct_b"] = str(bool(meta[cb_].iat[i]))
            m["flip"] = "" if fl is None else ("yes" if fl[i] else "")
            rows.append(m)
        return rows

    def warm(self, pair: Pair, *, width: int, height: int) -> None:
        """Compute what the first visitor of ``pair`` would wait for: the comparison, the
        trajectory and both renderers."""
        self.result(pair)
        self.trajectory(pair)
        for lay in dict.fromkeys((pair.la, pair.lb, *pair.path_layouts)):
            self.ex.renderer(lay).warm_up(width, height)
