"""The four reports of a run (report.md, report.html, junit.xml, results.json), checked against a
hand-built `RunResults` whose every row, reason and figure is known, and the SVG renderer against
coordinates computed by hand."""

from __future__ import annotations

import json
import math
import re
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import pytest

from conformance.backends.reference.deviations import by_id
from conformance.reports import REPORT_FILES, write_reports
from conformance.reports.markdown import GITHUB_COMMENT_LIMIT, render_markdown
from conformance.reports.results_json import load_results_json, render_results_json
from conformance.reports.svg_plots import linear_axis, log_axis, render_plot
from conformance.results import SCHEMA_VERSION, CheckResult, Plot, RunResults, Series, Status

TENSORS = [
    "model.embed_tokens.weight",
    "model.layers.0.self_attn.q_proj.weight",
    "model.layers.0.self_attn.k_proj.weight",
    "model.layers.0.self_attn.v_proj.weight",
    "model.layers.0.mlp.down_proj.weight",
    "lm_head.weight",
]
FAIL_TRACEBACK = (
    "Traceback (most recent call last):\n"
    '  File "conformance/checks/parity.py", line 470, in _run_job\n'
    "    local = _run_parallel(package, job, batch)\n"
    "AssertionError: rank 3: weight_qkv shard has shape (24, 64), expected (16, 64)\n"
)
FAIL_REASON = (
    "gradient of model.layers.0.self_attn.k_proj.weight off by 0.41 (bound 2.1e-06): kv heads not replicated"
)
WARN_REASON = "saved checkpoint has 2 extra keys <master_weight> & friends (tolerated: see deviation)"
SKIP_REASON = "bf16_smoke needs a device with bf16 matmul; the profile runs on cpu"
UNSUPPORTED_REASON = (
    "the model refuses the flash-attention path: the NKI flash-attention kernel has no sliding window"
)
MODULES = ["model.embed_tokens", "model.layers.0.self_attn", "model.layers.1.self_attn", "model.norm"]


def _errors(scale: float) -> list[float]:
    return [scale * (1 + index) / 7 for index in range(len(TENSORS))]


def _parity(tp_size: int, sequence_parallel: bool, scale: float) -> CheckResult:
    return CheckResult(
        check="parity",
        configuration={"variant": "llama/gqa", "tp_size": tp_size, "sequence_parallel": sequence_parallel},
        status=Status.PASS,
        figures={
            "logits_max_abs_diff": 3.0e-7 * tp_size,
            "loss_abs_diff": 9.5e-7,
            "gradients_compared": len(TENSORS),
            "worst_gradient": TENSORS[1],
        },
        tolerance="logits atol 1e-05; gradients 1e-4 * max |ref| + 1e-7",
        plots=[
            Plot(
                title=f"Gradient error per tensor, T={tp_size}",
                x_label="tensor",
                y_label="max |Δ|",
                series=[
                    Series("max |Δ|", list(range(len(TENSORS))), _errors(scale)),
                    Series("bound", list(range(len(TENSORS))), [2e-6, 3e-5, 3e-5, 3e-5, 4e-5, 1e-4]),
                ],
                log_y=True,
                kind="bar",
                x_labels=list(TENSORS),
            )
        ],
        seconds=2.5 * tp_size,
    )


def loss_curves(steps: int = 30) -> tuple[list[float], list[float]]:
    """Two close, decaying loss curves (the parallel model and transformers trained the same way)."""
    neuron = [6.2 * math.exp(-0.15 * step) + 0.05 for step in range(steps)]
    reference = [value * (1 + 1e-4 * math.sin(step)) for step, value in enumerate(neuron)]
    return neuron, reference


def sample_run() -> RunResults:
    """A realistic llama run: parity at T=1,2,4 with SP off/on, overfit, a FAIL, a WARN, a SKIP and an
    UNSUPPORTED row; the first parity row has a forward-error plot whose errors are all exactly zero."""
    results = [_parity(t, sp, 1e-7 * t) for t in (1, 2, 4) for sp in (False, True) if not (t == 1 and sp)]
    results[0].plots.append(
        Plot(
            title="forward error per module (in execution order), llama/gqa T=1 SP=off fuse_qkv=off",
            x_label="module",
            y_label="max |d output| / bound",
            series=[Series("max |parallel - transformers| / bound", [0.0, 1.0, 2.0, 3.0], [0.0] * 4)],
            log_y=True,
            kind="bar",
            x_labels=list(MODULES),
            threshold=1.0,
            threshold_label="bound (above fails)",
        )
    )
    results[2].deviations = ["NXD-11", "NXD-12"]
    failing = _parity(4, False, 0.06)
    failing.configuration = {"variant": "llama/mqa", "tp_size": 4, "sequence_parallel": False}
    failing.status = Status.FAIL
    failing.reasons = [FAIL_REASON, "logits max |Δ| 0.83 over atol 1e-05"]
    failing.deviations = ["NXD-10"]
    failing.traceback = FAIL_TRACEBACK
    results.append(failing)
    neuron, reference = loss_curves()
    steps = list(range(len(neuron)))
    results.append(
        CheckResult(
            check="overfit",
            configuration={"variant": "llama/gqa", "tp_size": 2},
            status=Status.PASS,
            figures={"final_loss": neuron[-1], "threshold": 0.5, "max_step_rel_diff": 1e-4, "losses": neuron},
            tolerance="per-step |Δ loss| <= 1e-3 relative",
            key_figures=["final_loss", "threshold", "max_step_rel_diff"],
            plots=[
                Plot(
                    title="Training loss, llama/gqa T=2",
                    x_label="step",
                    y_label="loss",
                    series=[Series("neuron T=2", steps, neuron), Series("transformers", steps, reference)],
                    log_y=True,
                )
            ],
            seconds=12.25,
        )
    )
    results.append(
        CheckResult(
            check="round_trip",
            configuration={"variant": "llama/gqa", "tp_size": 2},
            status=Status.WARN,
            figures={"keys": 29, "bit_identical": True, "extra_keys": ["a.master_weight", "b.master_weight"]},
            reasons=[WARN_REASON],
            deviations=["NXD-04"],
            seconds=1.5,
        )
    )
    results.append(
        CheckResult(
            check="bf16_smoke",
            configuration={"variant": "llama/gqa", "tp_size": 2},
            status=Status.SKIP,
            reasons=[SKIP_REASON],
        )
    )
    results.append(
        CheckResult(
            check="parity",
            configuration={"variant": "llama/gqa", "tp_size": 2, "attn_implementation": "flash_attention_2"},
            status=Status.UNSUPPORTED,
            figures={"outcome": "rejected"},
            reasons=[UNSUPPORTED_REASON],
            deviations=["NXD-18"],
            seconds=0.5,
        )
    )
    return RunResults(
        model_type="llama",
        package_dir="/tmp/generated/llama",
        profile="quick",
        backend="reference",
        environment={
            "torch": "2.13.0",
            "python": "3.11.9",
            "transformers": "4.57.6",
            "machine": "x86_64",
            "host": "nxd-scaffold reference host",
        },
        results=results,
        seconds=sum(result.seconds for result in results),
        models={
            "llama/gqa": {
                "hidden_size": 64,
                "layers": 2,
                "heads": 8,
                "kv_heads": 2,
                "head_dim": 8,
                "vocab_size": 256,
                "tied_embeddings": False,
                "non_default_fields": {"rms_norm_eps": 1e-5, "rope_theta": 5000.0},
            }
        },
        not_tested=["TP sizes 8: no check runs at them", "TrainingNeuronConfig gradient_checkpointing=True"],
    )


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_reports(sample_run(), tmp_path_factory.mktemp("reports") / "llama")


# --- the folder -------------------------------------------------------------------------------------


def test_writes_the_four_files_and_the_same_bytes_every_time(written: dict[str, Path], tmp_path: Path):
    assert {kind: path.name for kind, path in written.items()} == REPORT_FILES
    again = write_reports(sample_run(), tmp_path / "again")
    for kind, path in written.items():
        assert again[kind].read_bytes() == path.read_bytes(), kind


# --- junit.xml --------------------------------------------------------------------------------------


def test_junit_has_one_suite_and_one_case_per_result(written: dict[str, Path]):
    run = sample_run()
    root = ET.parse(written["junit"]).getroot()
    assert root.tag == "testsuites"
    (suite,) = root.findall("testsuite")
    assert suite.get("name") == "conformance.llama"
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped")) == ("10", "1", "2")
    cases = suite.findall("testcase")
    assert [case.get("name") for case in cases] == [result.label for result in run.results]
    assert [float(case.get("time")) for case in cases] == [result.seconds for result in run.results]
    properties = {p.get("name"): p.get("value") for p in suite.find("properties")}
    assert properties["profile"] == "quick" and properties["environment.torch"] == "2.13.0"
    assert properties["verdict"] == "FAIL" and properties["count.WARN"] == "1"
    assert properties["count.UNSUPPORTED"] == "1"


def test_junit_failure_skip_and_warn(written: dict[str, Path]):
    cases = {case.get("name"): case for case in ET.parse(written["junit"]).getroot().iter("testcase")}
    failing = cases["parity llama/mqa T=4 SP=off"]
    (failure,) = failing.findall("failure")
    assert failure.get("message") == FAIL_REASON
    assert FAIL_REASON in failure.text and "logits max |Δ| 0.83" in failure.text
    assert "AssertionError: rank 3: weight_qkv shard" in failure.text and "NXD-10" in failure.text
    (skipped,) = cases["bf16_smoke llama/gqa T=2"].findall("skipped")
    assert skipped.get("message") == f"SKIP: {SKIP_REASON}" and skipped.get("type") == "SKIP"
    warned = cases["round_trip llama/gqa T=2"]
    assert not warned.findall("failure") and not warned.findall("skipped")
    out = warned.find("system-out").text
    assert out.startswith(f"WARN: {WARN_REASON}") and "NXD-04" in out
    assert _case_properties(warned) == {"conformance.status": "WARN", "conformance.deviations": "NXD-04"}
    (unsupported,) = cases["parity llama/gqa T=2 attn=flash_attention_2"].findall("skipped")
    assert unsupported.get("type") == "UNSUPPORTED"
    assert unsupported.get("message") == f"UNSUPPORTED: {UNSUPPORTED_REASON}"
    passing = [
        case
        for case in cases.values()
        if case.get("name").startswith("parity llama/gqa T=") and "attn" not in case.get("name")
    ]
    assert len(passing) == 5 and all(not list(case.iter("failure")) for case in passing)


def _case_properties(case: ET.Element) -> dict[str, str]:
    return {prop.get("name"): prop.get("value") for prop in case.find("properties")}


def test_junit_drops_characters_xml_cannot_hold(tmp_path: Path):
    run = sample_run()
    run.failed[0].traceback = "bad byte \x00 and \x1b[31mcolour\x1b[0m\n"
    path = write_reports(run, tmp_path)["junit"]
    failure = ET.parse(path).getroot().find("testsuite/testcase/failure")
    assert "bad byte ? and ?[31mcolour" in failure.text


# --- results.json -----------------------------------------------------------------------------------


def _strict_json(text: str):
    def refuse(constant: str):
        raise ValueError(f"non-standard JSON constant {constant}")

    return json.loads(text, parse_constant=refuse)


def test_results_json_round_trips(written: dict[str, Path]):
    text = written["json"].read_text(encoding="utf-8")
    data = _strict_json(text)
    assert data["schema_version"] == SCHEMA_VERSION
    assert data["counts"] == {"PASS": 6, "WARN": 1, "UNSUPPORTED": 1, "FAIL": 1, "SKIP": 1}
    assert data["models"]["llama/gqa"]["non_default_fields"] == {"rms_norm_eps": 1e-5, "rope_theta": 5000.0}
    assert data["not_tested"] == sample_run().not_tested
    assert [row["label"] for row in data["results"]] == [r.label for r in sample_run().results]
    assert load_results_json(text) == sample_run()
    assert render_results_json(load_results_json(text)) == text


def test_results_json_writes_non_finite_floats_as_strings():
    run = sample_run()
    run.results[0].figures["logits_max_abs_diff"] = math.nan
    run.results[0].plots[0].series[0].y[0] = math.inf
    data = _strict_json(render_results_json(run))
    assert data["results"][0]["figures"]["logits_max_abs_diff"] == "NaN"
    assert data["results"][0]["plots"][0]["series"][0]["y"][0] == "Infinity"


# --- report.md --------------------------------------------------------------------------------------


def test_markdown_has_the_header_every_row_and_every_reason(written: dict[str, Path]):
    text = written["markdown"].read_text(encoding="utf-8")
    run = sample_run()
    assert len(text) <= GITHUB_COMMENT_LIMIT
    assert text.startswith("## Conformance: llama: FAIL (6 PASS, 1 WARN, 1 UNSUPPORTED, 1 FAIL, 1 SKIP)\n")
    for expected in (
        "quick",
        "reference",
        "torch 2.13.0",
        "| host | nxd-scaffold reference host |",
        "56.8 s",
    ):
        assert expected in text
    rows = [line for line in text.splitlines() if re.match(r"\| \d+ \|", line)]
    assert len(rows) == len(run.results)
    for number, (row, result) in enumerate(zip(rows, run.results), start=1):
        cells = [cell.strip() for cell in row.strip("|").split(" | ")]
        assert cells[:4] == [str(number), result.check, result.label.split(" ", 1)[1], _md_status(result)]
        assert cells[5] == " ".join(f"`{d}`" for d in result.deviations)  # the deviations each row touched
    assert "logits_max_abs_diff=1.2e-06" in rows[3]
    assert FAIL_REASON in text and SKIP_REASON in text and UNSUPPORTED_REASON in text
    assert "### Not tested by this profile\n\n- TP sizes 8: no check runs at them\n" in text
    assert "| `llama/gqa` | 64 | 2 | 8/2 | 8 | 256 | no | {rms_norm_eps: 1e-05, rope_theta: 5000} |" in text
    assert "&lt;master_weight&gt; &amp; friends" in text  # a reason GitHub would otherwise read as HTML
    for deviation_id in ("NXD-10", "NXD-04"):
        assert f"`{deviation_id}` {by_id(deviation_id).component}:" in text
    assert "AssertionError: rank 3: weight_qkv shard" in text
    assert text.index("llama/mqa T=4 SP=off: FAIL") < text.index("round_trip llama/gqa T=2: WARN")


def _md_status(result: CheckResult) -> str:
    return str(result.status) if result.status is Status.PASS else f"**{result.status}**"


def _long_failure(number: int) -> CheckResult:
    return CheckResult(
        check="parity",
        configuration={"variant": f"llama/variant-{number}", "tp_size": 4},
        status=Status.FAIL,
        figures={"losses": [0.1 * step for step in range(200)], "tensors": TENSORS * 20},
        reasons=[f"reason {number}: " + "tensor off by 1.0 " * 40],
        deviations=["NXD-07"],
        traceback="".join(f'  File "frame_{depth}.py", line {depth}\n' for depth in range(300)),
    )


def test_markdown_fits_a_comment_when_details_do_not():
    run = sample_run()
    run.results += [_long_failure(number) for number in range(120)]
    text = render_markdown(run)
    assert len(text) <= GITHUB_COMMENT_LIMIT
    for number, result in enumerate(run.results, start=1):
        assert f"| {number} | {result.check} | {result.label.split(' ', 1)[1]} |" in text
    assert "more FAIL/WARN/UNSUPPORTED/SKIP details left out" in text
    assert "#### 6. parity llama/mqa T=4 SP=off: FAIL" in text  # FAILs come first in the details


def test_markdown_leaves_out_pass_rows_only_when_the_table_cannot_fit():
    run = sample_run()
    passing = run.results[0]
    run.results = [passing] * 2500 + run.results
    text = render_markdown(run)
    assert len(text) <= GITHUB_COMMENT_LIMIT
    assert re.search(r"_\d+ PASS rows left out to fit", text)
    for label in ("llama/mqa T=4 SP=off", "round_trip", "bf16_smoke"):
        assert f"| {label}" in text or f"| {label.split()[0]} |" in text
    assert FAIL_REASON in text


# --- report.html ------------------------------------------------------------------------------------

VOID = {"meta", "br", "hr", "img", "input", "link", "col", "area", "base", "wbr", "source"}


class _Tree(HTMLParser):
    """Checks that every non-void element closes in order and collects elements and text."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.open: list[str] = []
        self.elements: list[tuple[str, dict[str, str], tuple[str, ...]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.elements.append((tag, {k: v or "" for k, v in attrs}, tuple(self.open)))
        if tag not in VOID:
            self.open.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.elements.append((tag, {k: v or "" for k, v in attrs}, tuple(self.open)))

    def handle_endtag(self, tag):
        assert self.open and self.open[-1] == tag, f"</{tag}> closes {self.open[-1:]}"
        self.open.pop()

    def handle_data(self, data):
        self.text.append(data)


def parse_html(text: str) -> _Tree:
    tree = _Tree()
    tree.feed(text)
    tree.close()
    assert tree.open == [], f"unclosed elements {tree.open}"
    return tree


def test_html_is_well_formed_and_self_contained(written: dict[str, Path]):
    text = written["html"].read_text(encoding="utf-8")
    tree = parse_html(text)
    tags = {tag for tag, _, _ in tree.elements}
    assert not tags & {"script", "link", "img", "iframe", "object", "embed"}
    assert "http://" not in text and "https://" not in text
    for _, attrs, _ in tree.elements:
        for name in ("href", "src"):
            assert attrs.get(name, "#").startswith("#"), attrs
    assert "@import" not in text and "url(" not in text


def test_html_has_the_summary_and_a_section_per_result(written: dict[str, Path]):
    tree = parse_html(written["html"].read_text(encoding="utf-8"))
    run = sample_run()
    text = "".join(tree.text)
    summary_rows = [attrs for tag, attrs, parents in tree.elements if tag == "tr" and "tbody" in parents]
    assert [row["class"] for row in summary_rows[: len(run.results)]] == [r.status.value for r in run.results]
    articles = [attrs for tag, attrs, _ in tree.elements if tag == "article"]
    assert [a["id"] for a in articles] == [f"result-{n}" for n in (1, 2, 3, 4, 5, 6, 10, 7, 8, 9)]
    assert [a["id"] for tag, a, _ in tree.elements if tag == "section" and "check" in a.get("class", "")] == [
        "check-parity",
        "check-overfit",
        "check-round_trip",
        "check-bf16_smoke",
    ]
    for expected in (
        FAIL_REASON,
        WARN_REASON,
        SKIP_REASON,
        UNSUPPORTED_REASON,
        "AssertionError: rank 3",
        "Conformance: llama: FAIL (6 PASS, 1 WARN, 1 UNSUPPORTED, 1 FAIL, 1 SKIP)",
        "Not tested by this profile",
        "TrainingNeuronConfig gradient_checkpointing=True",
        "{rms_norm_eps: 1e-05, rope_theta: 5000}",
        "nxd-scaffold reference host",
    ):
        assert expected in text
    links = [
        attrs["href"]
        for tag, attrs, _ in tree.elements
        if tag == "a" and "deviation" in attrs.get("class", "")
    ]
    assert links == [
        "#deviation-NXD-11",
        "#deviation-NXD-12",
        "#deviation-NXD-10",
        "#deviation-NXD-04",
        "#deviation-NXD-18",
    ]
    targets = {attrs.get("id") for _, attrs, _ in tree.elements}
    assert all(link[1:] in targets for link in links)
    assert by_id("NXD-10").trainium_impact in text and by_id("NXD-04").reference in text
    assert "torch: 2.13.0" in text and "quick" in text


def _svgs(tree: _Tree, class_name: str) -> list[tuple[int, dict[str, str]]]:
    return [
        (index, attrs)
        for index, (tag, attrs, _) in enumerate(tree.elements)
        if tag == "svg" and class_name in attrs.get("class", "").split()
    ]


def _inside(tree: _Tree, start: int, tag_name: str) -> list[dict[str, str]]:
    """Elements named `tag_name` inside the svg that starts at element `start`."""
    depth = len(tree.elements[start][2])
    found = []
    for tag, attrs, parents in tree.elements[start + 1 :]:
        if len(parents) <= depth:
            break
        if tag == tag_name:
            found.append(attrs)
    return found


def test_html_draws_the_loss_curves_and_the_error_bars(written: dict[str, Path]):
    text = written["html"].read_text(encoding="utf-8")
    tree = parse_html(text)
    (loss,) = _svgs(tree, "loss-curve")
    lines = _inside(tree, loss[0], "polyline")
    assert len(lines) == 2
    for line in lines:
        assert len(line["points"].split()) == 30
    assert '<title id="plot-7-1-title">Training loss, llama/gqa T=2</title>' in text
    bars = _svgs(tree, "bar-plot")
    assert len(bars) == 7
    assert len([r for r in _inside(tree, bars[0][0], "rect") if r.get("class") == "bar"]) == 2 * len(TENSORS)


# --- the SVG renderer -------------------------------------------------------------------------------


def test_linear_axis_picks_round_ticks():
    assert linear_axis([0.0, 1.0]).ticks == (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
    assert linear_axis([3.0, 29.0], target_ticks=8, integer=True).ticks == tuple(
        float(t) for t in range(0, 35, 5)
    )
    assert linear_axis([0.0, 3.0], target_ticks=8, integer=True).ticks == (0.0, 1.0, 2.0, 3.0)


def test_log_axis_covers_whole_decades():
    axis = log_axis([3e-7, 2e-3, 0.0, -1.0, math.nan])
    assert axis.ticks == pytest.approx((1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2))
    assert [axis.label(tick) for tick in axis.ticks] == ["1e-7", "1e-6", "1e-5", "1e-4", "0.001", "0.01"]
    assert axis.fraction(1e-4) == pytest.approx(0.6)
    wide = log_axis([1e-12, 1e6])  # 18 decades: a tick every third decade
    assert wide.ticks == pytest.approx(tuple(10.0**e for e in range(-12, 7, 3)))


def test_line_points_land_where_the_axes_say():
    plot = Plot("loss", "step", "loss", [Series("a", [0, 10], [0.0, 1.0])])
    svg = render_plot(plot, "p")
    # x 0..10 spans pixels 78..696, y 0..1 spans 294..34 (one series: no legend row)
    assert '<polyline points="78.00,294.00 696.00,34.00"' in svg
    assert svg.startswith('<svg class="plot line-plot loss-curve" id="p"')


def test_lines_break_at_points_they_cannot_draw():
    plot = Plot("loss", "step", "loss", [Series("a", [0, 1, 2, 3], [1.0, math.nan, 0.5, 0.0])], log_y=True)
    svg = render_plot(plot, "p")
    assert svg.count("<polyline") == 2
    assert "2 points not drawn" in svg


def test_bars_on_a_log_axis_rise_from_its_bottom():
    plot = Plot(
        "err",
        "tensor",
        "max |Δ|",
        [Series("e", [0, 1], [1e-6, 1e-4])],
        log_y=True,
        kind="bar",
        x_labels=["a", "b"],
    )
    svg = render_plot(plot, "p")
    heights = [float(h) for h in re.findall(r'<rect class="bar" [^>]*height="([\d.]+)"', svg)]
    # axis 1e-6..1e-4 is 260 px: the first bar sits on the bottom, the second fills the axis
    assert heights == [0.0, 260.0]
    assert 'class="plot bar-plot"' in svg


def test_text_is_escaped_in_plots():
    plot = Plot("<b>x</b> & y", "step", "loss", [Series("</svg><script>", [0, 1], [1.0, 2.0])])
    svg = render_plot(plot, "p")
    assert (
        "<script>" not in svg
        and "&lt;/svg&gt;&lt;script&gt;" in svg
        and "&lt;b&gt;x&lt;/b&gt; &amp; y" in svg
    )


def test_an_empty_run_and_an_empty_plot_still_render(tmp_path: Path):
    run = RunResults("qwen3", "/tmp/qwen3", "quick", "reference", {})
    written = write_reports(run, tmp_path)
    assert "## Conformance: qwen3: NO RESULTS" in written["markdown"].read_text(encoding="utf-8")
    assert ET.parse(written["junit"]).getroot().find("testsuite").get("tests") == "0"
    assert load_results_json(written["json"].read_text(encoding="utf-8")) == run
    parse_html(written["html"].read_text(encoding="utf-8"))
    svg = render_plot(Plot("loss", "step", "loss", [Series("a", [], [])], log_y=True), "p")
    assert "no data" in svg and "<polyline" not in svg


def test_summary_rows_show_each_check_s_key_figures_and_details_show_them_all(tmp_path: Path):
    run = sample_run()
    overfit = next(result for result in run.results if result.check == "overfit")
    overfit.status = Status.FAIL
    written = write_reports(run, tmp_path)
    table_row = next(
        line
        for line in written["markdown"].read_text().splitlines()
        if line.startswith("| ") and "overfit" in line
    )
    assert "final_loss=" in table_row and "threshold=" in table_row
    assert "losses=" not in table_row  # the per-step curve belongs to the details and the plot
    assert "losses=[" in written["markdown"].read_text()  # ... and the details of the FAIL show it


def test_a_threshold_is_a_line_in_the_plot_and_an_entry_in_the_legend():
    plot = Plot(
        "err", "tensor", "ratio", [Series("e", [0, 1], [1e-3, 2.0])], log_y=True, kind="bar",
        x_labels=["a", "b"], threshold=1.0, threshold_label="bound (above fails)",
    )  # fmt: skip
    svg = render_plot(plot, "p")
    (line,) = re.findall(
        r'<line class="threshold" x1="([\d.]+)" y1="([\d.]+)" x2="([\d.]+)" y2="([\d.]+)"', svg
    )
    x1, y1, x2, y2 = map(float, line)
    area = re.search(r'<rect class="plot-area" x="([\d.]+)" y="([\d.]+)" width="([\d.]+)"', svg)
    left, top, width = map(float, area.groups())
    assert (x1, x2) == (left, left + width)  # across the plot
    assert y1 == y2 and top < y1 < top + 260  # inside the axis
    # axis 1e-3 .. 1e1 (a decade of room above the line): 1 sits three quarters up
    assert y1 == pytest.approx(top + 260 * 0.25)
    assert '<text class="threshold-label"' in svg and "bound (above fails): 1</text>" in svg
    assert "pass/fail line at 1" in svg


def test_zero_errors_are_marked_and_missing_ones_are_not():
    plot = Plot(
        "err", "module", "ratio", [Series("e", [0, 1, 2], [0.0, math.nan, 0.5])], log_y=True, kind="bar",
        x_labels=["zero", "missing", "half"], threshold=1.0,
    )  # fmt: skip
    svg = render_plot(plot, "p")
    assert svg.count('class="zero-marker"') == 1 and "zero e: 0</title>" in svg
    assert svg.count('<rect class="bar"') == 1 and "missing e" not in svg
    assert "exactly 0 (no bar on a log axis)" in svg


def test_an_all_zero_error_plot_is_drawn():
    plot = Plot(
        "err", "module", "ratio", [Series("e", [0, 1], [0.0, 0.0])], log_y=True, kind="bar",
        x_labels=["a", "b"], threshold=1.0,
    )  # fmt: skip
    svg = render_plot(plot, "p")
    assert svg.count('class="zero-marker"') == 2 and "no data" not in svg
    assert '<line class="threshold"' in svg and svg.count('class="tick y-tick"') >= 2


def test_x_labels_drop_the_shared_prefix_and_keep_layer_indices():
    plot = Plot(
        "err", "module", "ratio", [Series("e", list(range(4)), [1e-3] * 4)], log_y=True, kind="bar",
        x_labels=list(MODULES),
    )  # fmt: skip
    svg = render_plot(plot, "p")
    shown = re.findall(r'class="tick x-tick"[^>]*>([^<]+)</text>', svg)
    assert shown == ["embed_tokens", "layers.0.self_attn", "layers.1.self_attn", "norm"]
    assert all(f"<title>{name}</title>" in svg for name in MODULES)  # the full name on hover
