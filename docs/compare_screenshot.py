"""Take the README's screenshot of the comparison page on the demo's two checkpoints: serve the
demo dataset with ``--compare fc1@epoch1,fc1@final`` (fc1 after the CNN's first epoch and at the
end of training, both laid out in fc1's coordinates) on 127.0.0.1, open it in Debian's headless
Chromium with map B coloured by neighbourhood overlap, tap the point that moved most (its
neighbours in A and B are listed, gained and lost marked) and box-select a group in map A
(drawn over map B by the server), then save a PNG.

    .venv/bin/bigembed demo --no-serve          # builds demo-data/ once (with both checkpoints)
    .venv/bin/python docs/compare_screenshot.py [--data demo-data/dataset] \\
        [--out docs/compare.png]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from screenshot import open_page, serve  # noqa: E402


def main(argv=None):
    from playwright.sync_api import sync_playwright

    from bigembed.compare import compare

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="demo-data/dataset")
    ap.add_argument("--a", default="fc1@epoch1")
    ap.add_argument("--b", default="fc1@final")
    ap.add_argument("--out", default="docs/compare.png")
    a = ap.parse_args(argv)
    tap = compare(a.data, a=a.a, b=a.b, k=15).movers(1)[0]["id"]
    with serve(a.data, "--compare", f"{a.a},{a.b}", timeout=300) as base, \
            sync_playwright() as pw:
        b, page = open_page(pw, f"{base}/?cb=change%3Aoverlap&ca=label&id={tap}",
                            viewport={"width": 1240, "height": 1560}, timeout_ms=120_000)
        page.wait_for_timeout(4000)
        page.locator(".bk-tool-icon-box-select").first.click()
        box = page.evaluate("""() => { function walk(v) { if (v.model.name == 'map_a')
            return v; for (const c of (v.child_views || [])) { const r = walk(c);
            if (r) return r; } return null; }
          for (const root of Bokeh.index) { const v = walk(root); if (v) {
            const bb = v.frame.bbox; const r = v.canvas_view.el.getBoundingClientRect();
            return {left: r.left + bb.left, top: r.top + bb.top, width: bb.width,
                    height: bb.height}; } } }""")
        x, y = box["left"] + box["width"] * 0.2, box["top"] + box["height"] * 0.2
        page.mouse.move(x, y)
        page.mouse.down()
        page.mouse.move(x + box["width"] * 0.25, y + box["height"] * 0.25, steps=4)
        page.mouse.up()
        page.wait_for_timeout(5000)
        page.screenshot(path=a.out, full_page=True)
        b.close()
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
