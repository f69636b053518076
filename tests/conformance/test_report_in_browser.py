"""report.html opened in a real browser: headless Chromium (from the system packages) renders the page,
and the loss-curve plot is in the DOM it built, with both lines; a screenshot of the page is not blank.

Skipped when no Chromium is installed (Debian: ``apt-get install -y --no-install-recommends chromium``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from conformance.reports import write_reports
from conformance.reports.browser_check import check_report, find_chromium, png_stats, screenshot
from tests.conformance.test_reports import loss_curves, sample_run

CHROMIUM = find_chromium()
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="no Chromium installed (apt-get install -y --no-install-recommends chromium); "
    "the report's browser check needs one",
)


def test_chromium_renders_the_loss_curve(tmp_path: Path):
    report = write_reports(sample_run(), tmp_path / "llama")["html"]
    seen = check_report(report, CHROMIUM, screenshot_to=tmp_path / "report.png")
    (loss,) = seen.loss_curves
    assert loss.title == "Training loss, llama/gqa T=2"
    assert loss.polyline_points == [len(curve) for curve in loss_curves()]
    assert loss.legend == ["neuron T=2", "transformers"]
    assert sorted(" ".join(plot.classes) for plot in seen.plots) == ["plot bar-plot"] * 6 + [
        "plot line-plot loss-curve"
    ]
    assert [plot.bars for plot in seen.plots if "bar-plot" in plot.classes] == [12] * 6
    assert (seen.image.width, seen.image.height) == (1100, 1400)
    assert seen.image.colours > 50 and 0.02 < seen.image.non_background < 0.9
    assert seen.ok


def test_screenshot_measures_what_was_painted(tmp_path: Path):
    """The PNG reader against a page whose pixels are known: a 200x100 block on a white 400x300 page."""
    page = tmp_path / "block.html"
    page.write_text(
        '<!DOCTYPE html><html><body style="margin:0;background:#ffffff">'
        '<div style="width:200px;height:100px;background:#123456"></div></body></html>'
    )
    stats = png_stats(screenshot(CHROMIUM, page, tmp_path / "block.png", size=(400, 300)))
    assert (stats.width, stats.height, stats.colours) == (400, 300, 2)
    assert stats.non_background == pytest.approx(200 * 100 / (400 * 300))
    blank = tmp_path / "blank.html"
    blank.write_text('<!DOCTYPE html><html><body style="background:#ffffff"></body></html>')
    assert png_stats(screenshot(CHROMIUM, blank, tmp_path / "blank.png", size=(400, 300))).colours == 1
