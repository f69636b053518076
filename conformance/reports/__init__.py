"""Conformance reports (DESIGN §6): one folder per model run, written from its `RunResults`.

- `report.md`: fits a pull-request comment (`markdown`),
- `report.html`: self-contained page with loss-curve and error plots as inline SVG (`html`, `svg_plots`),
- `junit.xml`: one testsuite per model run, one testcase per result (`junit`),
- `results.json`: `RunResults.to_dict()` with its schema version (`results_json`).

The same `RunResults` always gives byte-identical files: nothing is stamped that the results do not hold.
"""

from __future__ import annotations

from pathlib import Path

from conformance.results import RunResults

from .html import render_html
from .junit import render_junit
from .markdown import render_markdown
from .results_json import render_results_json

REPORT_FILES = {
    "markdown": "report.md",
    "html": "report.html",
    "junit": "junit.xml",
    "json": "results.json",
}
"""Kind of report -> its file name in the model's folder."""


def render_reports(run: RunResults) -> dict[str, str]:
    """Every report's text, by kind (the keys of `REPORT_FILES`)."""
    return {
        "markdown": render_markdown(run),
        "html": render_html(run),
        "junit": render_junit(run),
        "json": render_results_json(run),
    }


def write_reports(run: RunResults, out_dir: Path) -> dict[str, Path]:
    """Write the four reports into `out_dir` (the model's folder, created if missing); kind -> path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    for kind, text in render_reports(run).items():
        path = out_dir / REPORT_FILES[kind]
        path.write_bytes(text.encode("utf-8"))
        written[kind] = path
    return written
