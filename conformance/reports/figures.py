"""How reports write figures, verdicts and deviation citations as short text (shared by every format).

Pure functions: the same `CheckResult` always gives the same strings, so the reports are byte-identical
for the same `RunResults`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from conformance.backends.reference.deviations import DEVIATIONS, Deviation
from conformance.results import CheckResult, RunResults, Status

DEVIATIONS_DOC = "docs/backend-deviations.md"
"""Where the deviation table lives in the repository; reports cite its ids."""

NOT_PASSING = (Status.FAIL, Status.WARN, Status.UNSUPPORTED, Status.SKIP)
"""Statuses whose reasons every report spells out, in this order of importance."""

VERDICT_ORDER = (Status.FAIL, Status.WARN, Status.PASS, Status.UNSUPPORTED, Status.SKIP)
"""The run's verdict is the first of these any row has: one FAIL fails the run; a WARN is the verdict of a
run that passes here but not necessarily on Trainium; a run of only UNSUPPORTED or SKIP rows says so."""

_BY_ID: dict[str, Deviation] = {deviation.id: deviation for deviation in DEVIATIONS}


def as_float(value: Any) -> float:
    """A plotted number: floats, ints and the strings results.json uses for non-finite values."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def format_number(value: float) -> str:
    """Four significant digits; ``nan``/``inf`` spelled out."""
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.4g}"


def format_value(value: Any, max_items: int = 6, max_chars: int = 120) -> str:
    """One figure as short text: numbers to 4 digits, long lists and strings cut with a count."""
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return format_number(value)
    if isinstance(value, Mapping):
        items = [f"{key}: {format_value(item, max_items, max_chars)}" for key, item in value.items()]
        return _cut_items(items, max_items, "{", "}")
    if isinstance(value, (list, tuple)):
        return _cut_items([format_value(item, max_items, max_chars) for item in value], max_items, "[", "]")
    return shorten(str(value), max_chars)


def _cut_items(items: list[str], max_items: int, opening: str, closing: str) -> str:
    shown = ", ".join(items[:max_items])
    if len(items) > max_items:
        shown += f", … ({len(items)} in all)"
    return f"{opening}{shown}{closing}"


def shorten(text: str, max_chars: int) -> str:
    """`text` on one line, cut to `max_chars` with an ellipsis."""
    flat = " ".join(text.split())
    return flat if len(flat) <= max_chars else flat[: max_chars - 1] + "…"


def format_figures(figures: Mapping[str, Any], max_chars: int = 240) -> str:
    """Every figure of a row as ``name=value; ...``, cut to `max_chars`."""
    text = "; ".join(f"{name}={format_value(value)}" for name, value in figures.items())
    return shorten(text, max_chars)


def key_figures(result: CheckResult) -> dict[str, Any]:
    """The headline figures of `result` its check names (`CheckResult.key_figures`); all figures otherwise."""
    if not result.key_figures:
        return dict(result.figures)
    return {name: result.figures[name] for name in result.key_figures if name in result.figures}


def format_configuration(configuration: Mapping[str, Any]) -> str:
    """``variant=llama/gqa, tp_size=2, ...`` in the check's own order."""
    return ", ".join(f"{key}={format_value(value)}" for key, value in configuration.items())


def format_environment(environment: Mapping[str, str]) -> str:
    """``python 3.11.9, torch 2.13.0, ...`` sorted by name."""
    return ", ".join(f"{key} {value}" for key, value in sorted(environment.items()))


def format_counts(run: RunResults) -> str:
    """``12 PASS, 1 WARN, 1 FAIL, 1 SKIP`` (every status, zeros included)."""
    return ", ".join(f"{count} {status}" for status, count in run.counts().items())


def verdict(run: RunResults) -> str:
    """The run as one word (`VERDICT_ORDER`): FAIL, WARN, PASS, UNSUPPORTED, SKIP, or NO RESULTS."""
    statuses = {result.status for result in run.results}
    for status in VERDICT_ORDER:
        if status in statuses:
            return status.value
    return "NO RESULTS"


def headline(run: RunResults) -> str:
    """``WARN (9 PASS, 2 WARN, 1 UNSUPPORTED)``: the verdict and every status a row has, so that a PASS
    headline never hides WARN, UNSUPPORTED or SKIP rows."""
    counts = ", ".join(f"{count} {status}" for status, count in run.counts().items() if count)
    return f"{verdict(run)} ({counts})" if counts else verdict(run)


def deviation_title(deviation_id: str) -> str:
    """``layers: ColumnParallelLinear's asynchronous ...`` (the first sentence of the upstream behaviour)."""
    deviation = _BY_ID.get(deviation_id)
    if deviation is None:
        return f"not in {DEVIATIONS_DOC}"
    first_sentence = deviation.upstream.split(". ")[0].rstrip(".")
    return f"{deviation.component}: {shorten(first_sentence, 140)}"


def deviation(deviation_id: str) -> Deviation | None:
    """The table entry of one id, or None for an id the table does not know."""
    return _BY_ID.get(deviation_id)


def cited_deviations(results: Iterable[CheckResult]) -> list[str]:
    """Every deviation id the results cite, in the table's order (unknown ids last, sorted)."""
    cited = {deviation_id for result in results for deviation_id in result.deviations}
    known = [d.id for d in DEVIATIONS if d.id in cited]
    return known + sorted(cited - set(known))


def not_passing(results: Iterable[CheckResult]) -> list[tuple[int, CheckResult]]:
    """(row number, result) of every FAIL, then WARN, UNSUPPORTED, SKIP, each in run order; rows count
    from 1."""
    numbered = list(enumerate(results, start=1))
    return [(number, r) for status in NOT_PASSING for number, r in numbered if r.status is status]
