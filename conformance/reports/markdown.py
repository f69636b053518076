"""`report.md`: the run as Markdown short enough for a pull-request comment.

GitHub refuses comments over 65,536 characters, so the text is assembled to a budget: the header (verdict
with every status count, host, environment), the table of every row (with the deviations it touched),
what the profile did not test, the tiny models and the cited deviations always come first; the details of
each FAIL, WARN, UNSUPPORTED and SKIP (reasons, tolerance, deviations, the tail of the traceback) follow
while they fit, FAILs first, then in a short form without traceback, and whatever is left over is counted
in a closing note that points to report.html and results.json. Should even the table not fit, its figure
cells shrink and, last, PASS rows are left out (and counted).
"""

from __future__ import annotations

from conformance.results import CheckResult, RunResults, Status

from .figures import (
    DEVIATIONS_DOC,
    cited_deviations,
    deviation_title,
    format_counts,
    format_environment,
    format_figures,
    format_value,
    headline,
    key_figures,
    not_passing,
    shorten,
)

GITHUB_COMMENT_LIMIT = 65_536
TRACEBACK_LINES = 40
TRACEBACK_CHARS = 4_000
_FIGURE_WIDTHS = (240, 120, 60, 0)


def render_markdown(run: RunResults, max_chars: int = GITHUB_COMMENT_LIMIT) -> str:
    """The whole report, at most `max_chars` characters."""
    header = _header(run)
    closing = _not_tested_section(run) + _models_section(run) + _deviations_section(run)
    short_details = sum(len(_detail(n, r, full=False)) for n, r in not_passing(run.results))
    fixed = len(header) + len(closing) + min(short_details + 200, max_chars // 3) + 300
    for width in _FIGURE_WIDTHS:
        table = _table(run.results, width)
        if fixed + len(table) <= max_chars:
            break
    else:
        table = _table_within(run.results, max_chars - fixed)
    room = max_chars - len(header) - len(table) - len(closing) - 300
    details, left_out = _details_within(run.results, room)
    parts = [header, table, details, closing]
    if left_out:
        parts.append(
            f"_{left_out} more FAIL/WARN/UNSUPPORTED/SKIP details left out to fit a pull-request comment; "
            "report.html and results.json have all of them._\n"
        )
    text = "\n".join(part for part in parts if part)
    return text if len(text) <= max_chars else text[: max_chars - 2] + "…\n"


def cell(text: str) -> str:
    """Text for a table cell or a bullet: one line, pipes and angle brackets escaped."""
    return escape_markdown(" ".join(text.split())).replace("|", "\\|")


def escape_markdown(text: str) -> str:
    """Keep GitHub from reading ``<...>`` in a reason as HTML."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _header(run: RunResults) -> str:
    lines = [
        f"## Conformance: {cell(run.model_type)}: {headline(run)}",
        "",
        "| | |",
        "|---|---|",
        f"| model | `{cell(run.model_type)}` ({cell(run.package_dir)}) |",
        f"| profile | {cell(run.profile)} |",
        f"| backend | {cell(run.backend)} |",
        f"| host | {cell(run.environment.get('host', 'not recorded'))} |",
        f"| environment | {cell(format_environment(run.environment))} |",
        f"| results | {format_counts(run)} |",
        f"| total time | {run.seconds:.1f} s |",
        "",
    ]
    return "\n".join(lines)


def _configuration(result: CheckResult) -> str:
    return result.label[len(result.check) :].strip()


def _status(result: CheckResult) -> str:
    return f"**{result.status}**" if result.status is not Status.PASS else str(result.status)


def _row(number: int, result: CheckResult, figure_width: int) -> str:
    figures = cell(format_figures(key_figures(result), figure_width)) if figure_width else ""
    return (
        f"| {number} | {cell(result.check)} | {cell(_configuration(result))} | {_status(result)} | "
        f"{figures} | {_deviation_ids(result)} | {result.seconds:.1f} |"
    )


def _deviation_ids(result: CheckResult) -> str:
    return " ".join(f"`{cell(d)}`" for d in result.deviations)


TABLE_HEAD = [
    "| # | check | configuration | status | figures | deviations | s |",
    "|---|---|---|---|---|---|---|",
]


def _table(results: list[CheckResult], figure_width: int) -> str:
    lines = list(TABLE_HEAD)
    lines += [_row(number, result, figure_width) for number, result in enumerate(results, start=1)]
    return "\n".join(lines) + "\n"


def _table_within(results: list[CheckResult], room: int) -> str:
    """The table without figures, leaving out PASS rows from the end until it fits `room`."""
    head = list(TABLE_HEAD)
    rows = [(result.status, _row(number, result, 0)) for number, result in enumerate(results, start=1)]
    size = sum(len(line) + 1 for line in head) + sum(len(line) + 1 for _, line in rows)
    kept = [True] * len(rows)
    omitted = 0
    note_room = 120
    for index in reversed(range(len(rows))):
        if size + note_room <= room:
            break
        if rows[index][0] is Status.PASS:
            kept[index] = False
            size -= len(rows[index][1]) + 1
            omitted += 1
    lines = head + [line for keep, (_, line) in zip(kept, rows) if keep]
    note = f"\n_{omitted} PASS rows left out to fit; results.json has every row._\n" if omitted else ""
    return "\n".join(lines) + "\n" + note


def _details_within(results: list[CheckResult], room: int) -> tuple[str, int]:
    """Details of the not-passing rows that fit in `room` characters, and how many were left out."""
    blocks: list[str] = []
    used = 0
    pending = not_passing(results)
    for position, (number, result) in enumerate(pending):
        for block in (_detail(number, result, full=True), _detail(number, result, full=False)):
            if used + len(block) <= room:
                blocks.append(block)
                used += len(block)
                break
        else:
            return _joined_details(blocks), len(pending) - position
    return _joined_details(blocks), 0


def _joined_details(blocks: list[str]) -> str:
    return "### Not passing\n\n" + "\n".join(blocks) if blocks else ""


def _detail(number: int, result: CheckResult, full: bool) -> str:
    lines = [f"#### {number}. {cell(result.label)}: {result.status}", ""]
    reasons = result.reasons or ["(no reason recorded)"]
    lines += [f"- {cell(reason if full else shorten(reason, 300))}" for reason in reasons]
    if result.deviations:
        cited = "; ".join(f"`{cell(d)}` {cell(deviation_title(d))}" for d in result.deviations)
        lines.append(f"- backend deviations ({DEVIATIONS_DOC}): {cited}")
    if full and result.tolerance:
        lines.append(f"- tolerance: {cell(result.tolerance)}")
    if full and result.figures:
        lines.append(f"- figures: {cell(format_figures(result.figures, 600))}")
    if full and result.traceback:
        lines += ["", "<details><summary>traceback (last lines)</summary>", "", *_fenced(result.traceback)]
        lines += ["", "</details>"]
    return "\n".join(lines) + "\n"


def _fenced(text: str) -> list[str]:
    tail = text.rstrip("\n").splitlines()[-TRACEBACK_LINES:]
    body = "\n".join(tail)[-TRACEBACK_CHARS:]
    fence = "```"
    while fence in body:
        fence += "`"
    return [fence + "text", body, fence]


def _not_tested_section(run: RunResults) -> str:
    if not run.not_tested:
        return ""
    lines = ["### Not tested by this profile", ""]
    lines += [f"- {cell(item)}" for item in run.not_tested]
    return "\n".join(lines) + "\n\n"


def _models_section(run: RunResults) -> str:
    if not run.models:
        return ""
    lines = [
        "### Tiny models",
        "",
        "| variant | hidden | layers | heads/kv | head_dim | vocab | tied | non-default fields |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key, model in run.models.items():
        fields = format_value(model.get("non_default_fields", {}), max_items=12, max_chars=400)
        lines.append(
            f"| `{cell(key)}` | {model.get('hidden_size')} | {model.get('layers')} | "
            f"{model.get('heads')}/{model.get('kv_heads')} | {model.get('head_dim')} | {model.get('vocab_size')} | "
            f"{'yes' if model.get('tied_embeddings') else 'no'} | {cell(fields)} |"
        )
    return "\n".join(lines) + "\n\n"


def _deviations_section(run: RunResults) -> str:
    ids = cited_deviations(run.results)
    if not ids:
        return ""
    lines = [f"### Backend deviations cited ({DEVIATIONS_DOC})", "", "| id | deviation |", "|---|---|"]
    lines += [f"| `{cell(d)}` | {cell(deviation_title(d))} |" for d in ids]
    return "\n".join(lines) + "\n"
