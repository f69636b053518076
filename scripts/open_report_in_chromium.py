"""Open a conformance report.html in headless Chromium and check that its loss plot is drawn.

Usage:
    .venv/bin/python scripts/open_report_in_chromium.py REPORT_HTML [--screenshot PNG] [--size 1100x1400]

Chromium renders the page (``--headless --dump-dom``); the script lists every plot found in the rendered
DOM and checks that at least one loss-curve plot (``<svg class="plot line-plot loss-curve">``) has lines,
and, from the layout Chromium produced, that no plot text lies outside its plot and which plots carry a
pass/fail line. With ``--screenshot`` it also saves a PNG of the top of the page and checks that it is not
blank.

Chromium comes from the system packages: ``apt-get install -y --no-install-recommends chromium`` on Debian
(about 30 s). Exit status: 0 the loss plot is there, 1 it is not (or the screenshot is blank), 2 no Chromium
or the browser failed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from conformance.reports.browser_check import check_report, find_chromium, measure_plots


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("report", type=Path, help="a report.html written by the conformance run")
    parser.add_argument("--screenshot", type=Path, help="also save a PNG of the page here and check it")
    parser.add_argument("--size", default="1100x1400", help="screenshot window, WIDTHxHEIGHT")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds Chromium may take per call")
    args = parser.parse_args(argv)
    if not args.report.is_file():
        print(f"no such report: {args.report}", file=sys.stderr)
        return 2
    chromium = find_chromium()
    if chromium is None:
        print("no Chromium found; install it with: apt-get install -y --no-install-recommends chromium")
        return 2
    try:
        width, height = (int(part) for part in args.size.lower().split("x"))
        seen = check_report(args.report, chromium, args.screenshot, (width, height), args.timeout)
        layouts = {layout.id: layout for layout in measure_plots(args.report, chromium, args.timeout)}
    except (RuntimeError, OSError, ValueError) as error:
        print(f"Chromium could not render {args.report}: {error}", file=sys.stderr)
        return 2
    print(f"{chromium} rendered {args.report}: {len(seen.plots)} plots")
    for plot in seen.plots:
        if plot.polyline_points:
            drawn = "lines of " + ", ".join(str(count) for count in plot.polyline_points) + " points"
        else:
            drawn = f"{plot.bars} bars"
        print(f"  [{' '.join(plot.classes)}] {plot.title!r}: {drawn}")
    clipped = {plot_id: layout.clipped() for plot_id, layout in layouts.items() if layout.clipped()}
    with_line = sum(bool(layout.thresholds) for layout in layouts.values())
    print(
        f"layout: {with_line} of {len(layouts)} plots carry a pass/fail line; clipped text: {clipped or 'none'}"
    )
    if seen.image is not None:
        print(
            f"screenshot {seen.screenshot}: {seen.image.width}x{seen.image.height}, {seen.image.colours} colours, "
            f"{seen.image.non_background:.1%} of pixels not background"
        )
    print(
        "loss plot: " + ("found" if seen.loss_curves else "MISSING") + ("" if seen.ok else " (check failed)")
    )
    return 0 if seen.ok and not clipped else 1


if __name__ == "__main__":
    sys.exit(main())
