"""Small helpers shared by the subcommands: output formatting."""

from __future__ import annotations

import json
import sys


#: set by ``bigembed -q``: informational result lines are not printed (errors still are)
QUIET = False


def say(*parts, **kw) -> None:
    """Print an informational result line ("wrote ...", "N items in ..."), unless ``-q``.
    What a command was asked to show (a table, JSON) is printed with ``print``."""
    if not QUIET:
        print(*parts, **kw)


def human_rate(nbytes: float, seconds: float) -> str:
    """Bytes per second in a unit that shows a figure: "850 MB/s", "1.42 GB/s"."""
    if seconds <= 0:
        return "instant"
    rate = nbytes / seconds
    for unit, scale in (("GB/s", 1e9), ("MB/s", 1e6), ("KB/s", 1e3)):
        if rate >= scale:
            v = rate / scale
            return f"{v:.2f} {unit}" if v < 10 else f"{v:.0f} {unit}"
    return f"{rate:.0f} B/s"


def terminal_width(default: int = 100) -> int:
    import shutil

    return max(40, shutil.get_terminal_size((default, 24)).columns)


def emit_json(obj) -> None:
    json.dump(obj, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def table(rows, headers, *, width: int | None = None) -> str:
    """A plain aligned text table; with ``width``, each line fits in that many characters:
    the widest columns are cut (ending in "…") and line breaks in cells become spaces."""
    rows = [[("" if v is None else str(v)) for v in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(headers)]
    if width is not None:
        rows = [[" ".join(v.split()) if ("\n" in v or "\r" in v or "\t" in v) else v
                 for v in r] for r in rows]
        widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
                  for i, h in enumerate(headers)]
        widths = _fit(widths, [len(h) for h in headers], width - 2 * (len(headers) - 1))
        rows = [[v if len(v) <= w else v[:max(0, w - 1)] + "…" for v, w in zip(r, widths)]
                for r in rows]
        headers = [h[:w] for h, w in zip(headers, widths)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths))
    out = [line, "  ".join("-" * w for w in widths)]
    for r in rows:
        out.append("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip())
    return "\n".join(out)


def _fit(widths: list, floors: list, total: int) -> list:
    """Column widths summing to at most ``total``: the widest shrink first, none below its
    header (nor 8 characters, where the header is longer)."""
    widths = list(widths)
    floors = [min(max(f, 3), 8) for f in floors]
    while sum(widths) > total:
        i = max(range(len(widths)), key=lambda j: widths[j] - floors[j])
        if widths[i] <= floors[i]:
            break
        widths[i] -= max(1, min(widths[i] - floors[i], sum(widths) - total))
    return widths
