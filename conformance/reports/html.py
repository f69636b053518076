"""`report.html`: one self-contained page per model run.

Inline CSS and inline SVG plots only: no script, no font, image or stylesheet from anywhere else, so the
file can be attached to a CI run and opened offline. The page has the run header (the verdict with every
status count, the host code that ran), a summary table of every row (each linking to its section, with
the deviations it touched linking to their entries), what the profile did not test, the tiny model of
each variant, one section per check with every configuration's figures, reasons, tolerance, cited
deviations, plots and traceback, and the cited deviations in full at the end. All text passes through
`html.escape`.
"""

from __future__ import annotations

from collections.abc import Mapping
from html import escape
from typing import Any

from conformance.results import SCHEMA_VERSION, CheckResult, RunResults, Status

from .figures import (
    DEVIATIONS_DOC,
    cited_deviations,
    deviation,
    deviation_title,
    format_counts,
    format_figures,
    format_value,
    headline,
    key_figures,
    verdict,
)
from .svg_plots import render_plot

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5rem auto; max-width: 1100px; color: #1d1d1d;
       padding: 0 1rem; }
h1 { font-size: 1.5rem; } h2 { margin-top: 2rem; border-bottom: 1px solid #ccc; } h3 { font-size: 1.05rem; }
table { border-collapse: collapse; margin: 0.5rem 0; }
th, td { border: 1px solid #d5d5d5; padding: 0.25rem 0.5rem; text-align: left; vertical-align: top;
         font-size: 0.9rem; }
th { background: #f3f3f3; }
.figures-cell { max-width: 420px; overflow-wrap: anywhere; }
.badge { display: inline-block; padding: 0 0.45rem; border-radius: 0.3rem; font-weight: bold;
         font-size: 0.85rem; color: #fff; }
.badge.PASS { background: #2a8a3a; } .badge.WARN { background: #b7791f; }
.badge.FAIL { background: #c62a2a; } .badge.SKIP { background: #777; }
.badge.UNSUPPORTED { background: #6b4fa0; }
.badge.NO-RESULTS { background: #777; }
article.result { border-left: 4px solid #2a8a3a; padding: 0.1rem 0 0.6rem 0.9rem; margin: 1.2rem 0; }
article.result.WARN { border-color: #b7791f; } article.result.FAIL { border-color: #c62a2a; }
article.result.SKIP { border-color: #777; } article.result.UNSUPPORTED { border-color: #6b4fa0; }
pre { background: #f6f6f6; padding: 0.6rem; overflow-x: auto; font-size: 0.8rem; }
svg.plot { display: block; margin: 0.8rem 0; max-width: 100%; height: auto; }
.muted { color: #666; }
"""


def render_html(run: RunResults) -> str:
    """The whole page."""
    title = f"Conformance: {run.model_type}: {headline(run)}"
    body = [
        f"<h1>{escape(title)}</h1>",
        _header(run),
        _summary(run.results),
        _not_tested(run),
        _models(run),
        *_check_sections(run.results),
        _deviations_section(run.results),
        f'<footer class="muted"><p>nxd-scaffold conformance report; results.json schema '
        f"{escape(SCHEMA_VERSION)}.</p></footer>",
    ]
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en">',
            "<head>",
            '<meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{escape(title)}</title>",
            f"<style>{STYLE}</style>",
            "</head>",
            "<body>",
            *[part for part in body if part],
            "</body>",
            "</html>",
        ]
    )


def _badge(status: str) -> str:
    return f'<span class="badge {escape(status.replace(" ", "-"))}">{escape(status)}</span>'


def _header(run: RunResults) -> str:
    environment = "".join(
        f"<li>{escape(key)}: {escape(str(value))}</li>" for key, value in sorted(run.environment.items())
    )
    rows = [
        (
            "model",
            f"<code>{escape(run.model_type)}</code> <span class='muted'>{escape(run.package_dir)}</span>",
        ),
        ("verdict", _badge(verdict(run))),
        ("profile", escape(run.profile)),
        ("backend", escape(run.backend)),
        ("host", escape(run.environment.get("host", "not recorded"))),
        ("environment", f"<ul>{environment}</ul>" if environment else ""),
        ("results", escape(format_counts(run))),
        ("total time", f"{run.seconds:.1f} s"),
    ]
    cells = "".join(f"<tr><th>{name}</th><td>{value}</td></tr>" for name, value in rows)
    return f'<table class="run-header">{cells}</table>'


def _configuration(result: CheckResult) -> str:
    return result.label[len(result.check) :].strip()


def _summary(results: list[CheckResult]) -> str:
    rows = []
    for number, result in enumerate(results, start=1):
        rows.append(
            f'<tr class="{escape(result.status.value)}"><td><a href="#result-{number}">{number}</a></td>'
            f"<td>{escape(result.check)}</td><td>{escape(_configuration(result))}</td>"
            f"<td>{_badge(result.status.value)}</td>"
            f'<td class="figures-cell">{escape(format_figures(key_figures(result), 300))}</td>'
            f"<td>{_deviation_links(result)}</td><td>{result.seconds:.1f}</td></tr>"
        )
    head = (
        "<tr><th>#</th><th>check</th><th>configuration</th><th>status</th><th>figures</th><th>deviations</th>"
        "<th>s</th></tr>"
    )
    return (
        '<section id="summary"><h2>Summary</h2>'
        f'<table class="summary"><thead>{head}</thead><tbody>{"".join(rows)}</tbody></table></section>'
    )


def _deviation_links(result: CheckResult) -> str:
    return " ".join(
        f'<a class="deviation" href="#deviation-{escape(d)}" title="{escape(deviation_title(d))}">{escape(d)}</a>'
        for d in result.deviations
    )


def _not_tested(run: RunResults) -> str:
    if not run.not_tested:
        return ""
    items = "".join(f"<li>{escape(item)}</li>" for item in run.not_tested)
    return f'<section id="not-tested"><h2>Not tested by this profile</h2><ul>{items}</ul></section>'


def _models(run: RunResults) -> str:
    if not run.models:
        return ""
    rows = []
    for key, model in run.models.items():
        fields = format_value(model.get("non_default_fields", {}), max_items=24, max_chars=600)
        cells = (
            f"<code>{escape(key)}</code>",
            escape(str(model.get("hidden_size"))),
            escape(str(model.get("layers"))),
            escape(f"{model.get('heads')}/{model.get('kv_heads')}"),
            escape(str(model.get("head_dim"))),
            escape(str(model.get("vocab_size"))),
            "yes" if model.get("tied_embeddings") else "no",
            escape(fields),
        )
        rows.append("<tr>" + "".join(f"<td>{value}</td>" for value in cells) + "</tr>")
    head = (
        "<tr><th>variant</th><th>hidden</th><th>layers</th><th>heads/kv</th><th>head_dim</th><th>vocab</th>"
        "<th>tied</th><th>non-default config fields</th></tr>"
    )
    return (
        '<section id="models"><h2>Tiny models</h2>'
        f'<table class="models"><thead>{head}</thead><tbody>{"".join(rows)}</tbody></table></section>'
    )


def _check_sections(results: list[CheckResult]) -> list[str]:
    by_check: dict[str, list[tuple[int, CheckResult]]] = {}
    for number, result in enumerate(results, start=1):
        by_check.setdefault(result.check, []).append((number, result))
    sections = []
    for check, numbered in by_check.items():
        articles = "\n".join(_article(number, result) for number, result in numbered)
        sections.append(
            f'<section class="check" id="check-{escape(check)}"><h2>{escape(check)}</h2>\n{articles}\n</section>'
        )
    return sections


def _article(number: int, result: CheckResult) -> str:
    parts = [
        f'<article class="result {escape(result.status.value)}" id="result-{number}">',
        f"<h3>{number}. {escape(result.label)} {_badge(result.status.value)} "
        f'<span class="muted">{result.seconds:.1f} s</span></h3>',
        _table("configuration", result.configuration),
    ]
    if result.reasons:
        kind = "notes" if result.status is Status.PASS else "reasons"
        items = "".join(f"<li>{escape(reason)}</li>" for reason in result.reasons)
        parts.append(f'<p><b>{kind}</b></p><ul class="reasons">{items}</ul>')
    if result.deviations:
        items = "".join(
            f'<li><a href="#deviation-{escape(d)}"><code>{escape(d)}</code></a> {escape(deviation_title(d))}</li>'
            for d in result.deviations
        )
        parts.append(
            f'<p><b>backend deviations</b> (<a href="#deviations">{escape(DEVIATIONS_DOC)}</a>)</p>'
            f'<ul class="deviations">{items}</ul>'
        )
    if result.tolerance:
        parts.append(f'<p class="tolerance"><b>tolerance</b>: {escape(result.tolerance)}</p>')
    if result.figures:
        parts.append(_table("figures", result.figures))
    for index, plot in enumerate(result.plots, start=1):
        parts.append(render_plot(plot, f"plot-{number}-{index}"))
    if result.traceback:
        parts.append(
            f"<details open><summary>traceback</summary><pre>{escape(result.traceback.rstrip())}</pre></details>"
        )
    parts.append("</article>")
    return "\n".join(parts)


def _table(name: str, values: Mapping[str, Any]) -> str:
    rows = "".join(
        f"<tr><th>{escape(str(key))}</th><td>{escape(format_value(value, max_items=16, max_chars=600))}</td></tr>"
        for key, value in values.items()
    )
    return f'<table class="{escape(name)}"><caption class="muted">{escape(name)}</caption>{rows}</table>'


def _deviations_section(results: list[CheckResult]) -> str:
    ids = cited_deviations(results)
    if not ids:
        return ""
    rows = []
    for deviation_id in ids:
        entry = deviation(deviation_id)
        if entry is None:
            rows.append(
                f'<tr id="deviation-{escape(deviation_id)}"><td><code>{escape(deviation_id)}</code></td>'
                f'<td colspan="5">{escape(deviation_title(deviation_id))}</td></tr>'
            )
            continue
        cells = (entry.component, entry.upstream, entry.reference, entry.trainium_impact, entry.source)
        rows.append(
            f'<tr id="deviation-{escape(entry.id)}"><td><code>{escape(entry.id)}</code></td>'
            + "".join(f"<td>{escape(text)}</td>" for text in cells)
            + "</tr>"
        )
    head = (
        "<tr><th>id</th><th>component</th><th>released Neuron stack</th><th>reference backend</th>"
        "<th>impact on a Trainium run</th><th>source</th></tr>"
    )
    return (
        f'<section id="deviations"><h2>Backend deviations cited</h2><p class="muted">From '
        f"{escape(DEVIATIONS_DOC)}.</p><table><thead>{head}</thead><tbody>{''.join(rows)}</tbody></table></section>"
    )
