"""report.html opened in a real browser: headless Chromium (from the system packages) renders the page;
the loss-curve plot is in the DOM it built, with both lines; a screenshot of the page is not blank; and
every plot as Chromium laid it out has its pass/fail line with its label, no text outside the plot
(tick labels, rotated tensor names, titles, legend), legend items clear of each other and of the data,
and x labels a reader can tell apart (layer 0 from layer 1). The layout is read from the browser's own
bounding boxes, not from the coordinates the renderer meant to write.

Skipped when no Chromium is installed (Debian: ``apt-get install -y --no-install-recommends chromium``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from conformance.reports import write_reports
from conformance.reports.browser_check import (
    PlotLayout,
    check_report,
    find_chromium,
    measure_plots,
    png_stats,
    screenshot,
)
from conformance.results import CheckResult, Plot, Series, Status
from tests.conformance.test_reports import MODULES, loss_curves, sample_run

CHROMIUM = find_chromium()
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="no Chromium installed (apt-get install -y --no-install-recommends chromium); "
    "the report's browser check needs one",
)

# Every gradient of a 2-layer generated llama, as the parity check names them: long, and alike but for
# their layer index.
LLAMA_GRADIENTS = ["lm_head.weight", "model.embed_tokens.weight", "model.norm.weight"] + [
    f"model.layers.{i}.{name}.weight"
    for i in range(2)
    for name in (
        "input_layernorm",
        "mlp.down_proj",
        "mlp.gate_proj",
        "mlp.up_proj",
        "post_attention_layernorm",
        "self_attn.k_proj",
        "self_attn.o_proj",
        "self_attn.q_proj",
        "self_attn.v_proj",
    )
]


def _run_with_real_names():
    """The sample run plus a parity row whose gradient plot carries the real tensor names."""
    run = sample_run()
    ratios = [0.0 if "norm" in name else 0.01 * (1 + index) for index, name in enumerate(LLAMA_GRADIENTS)]
    run.results.append(
        CheckResult(
            check="parity",
            configuration={
                "variant": "llama/mqa",
                "tp_size": 2,
                "sequence_parallel": True,
                "fuse_qkv": False,
            },
            status=Status.PASS,
            plots=[
                Plot(
                    title="gradient error relative to its bound, llama/mqa T=2 SP=on fuse_qkv=off",
                    x_label="tensor (transformers name)",
                    y_label="max |d grad| / bound",
                    series=[Series("gradient error / bound", list(range(len(ratios))), ratios)],
                    log_y=True,
                    kind="bar",
                    x_labels=LLAMA_GRADIENTS,
                    threshold=1.0,
                    threshold_label="bound (above fails)",
                )
            ],
        )
    )
    return run


@pytest.fixture(scope="module")
def layouts(tmp_path_factory: pytest.TempPathFactory) -> list[PlotLayout]:
    report = write_reports(_run_with_real_names(), tmp_path_factory.mktemp("browser") / "llama")["html"]
    return measure_plots(report, CHROMIUM)


def test_chromium_renders_the_loss_curve(tmp_path: Path):
    report = write_reports(sample_run(), tmp_path / "llama")["html"]
    seen = check_report(report, CHROMIUM, screenshot_to=tmp_path / "report.png")
    (loss,) = seen.loss_curves
    assert loss.title == "Training loss, llama/gqa T=2"
    assert loss.polyline_points == [len(curve) for curve in loss_curves()]
    assert loss.legend == ["neuron T=2", "transformers"]
    assert sorted(" ".join(plot.classes) for plot in seen.plots) == ["plot bar-plot"] * 7 + [
        "plot line-plot loss-curve"
    ]
    assert sorted(plot.bars for plot in seen.plots if "bar-plot" in plot.classes) == [0] + [12] * 6
    assert (seen.image.width, seen.image.height) == (1100, 1400)
    assert seen.image.colours > 50 and 0.02 < seen.image.non_background < 0.9
    assert seen.ok


def test_no_text_of_any_plot_is_clipped(layouts: list[PlotLayout]):
    assert len(layouts) == 9
    for layout in layouts:
        assert layout.clipped() == [], layout.id
        assert all(box.w > 0 and box.h > 0 for _, _, box in layout.texts), layout.id


def test_every_error_plot_shows_its_pass_fail_line_with_its_label(layouts: list[PlotLayout]):
    with_threshold = [layout for layout in layouts if layout.thresholds]
    assert {layout.id for layout in with_threshold} == {"plot-1-2", "plot-11-1"}
    for layout in with_threshold:
        (line,) = layout.thresholds
        area = layout.area
        assert area is not None and area.y <= line.y <= area.y + area.h  # inside the axis
        assert line.x == pytest.approx(area.x, abs=1) and line.w == pytest.approx(area.w, abs=1)
        (label,) = layout.texts_of("threshold-label")
        assert label[0] == "bound (above fails): 1"


def test_legends_neither_overlap_each_other_nor_the_data(layouts: list[PlotLayout]):
    for layout in layouts:
        boxes = [box for _, box in layout.legend]
        for index, box in enumerate(boxes):
            assert layout.area is not None and not box.overlaps(layout.area), (
                layout.id,
                layout.legend[index],
            )
            assert not any(box.overlaps(other) for other in boxes[index + 1 :]), (layout.id, layout.legend)


def test_zero_errors_are_visible_and_layer_names_can_be_told_apart(layouts: list[PlotLayout]):
    zeros = next(layout for layout in layouts if layout.id == "plot-1-2")
    assert zeros.zero_markers == 4 and zeros.bars == 0
    assert [text for text, _ in zeros.texts_of("x-tick")] == [name.removeprefix("model.") for name in MODULES]
    real = next(layout for layout in layouts if layout.id == "plot-11-1")
    shown = [text for text, _ in real.texts_of("x-tick")]
    assert len(shown) == len(set(shown)) == len(LLAMA_GRADIENTS)
    assert (
        "model.layers.0.self_attn.q_proj.weight" in shown
        and "model.layers.1.self_attn.q_proj.weight" in shown
    )
    assert real.zero_markers == 5  # the five norms: exact zeros


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
