"""The plots checks attach to their results: an error per tensor or module against its bound (bars on a
log axis, the pass/fail line at 1), and loss curves with the threshold they must reach.

Values are plotted as measured: a zero error stays zero (the renderer marks it, so that zero and missing
differ), and figures keep the same values.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from conformance.results import Plot, Series


def ratio_bars(title: str, x_label: str, y_label: str, name: str, ratios: Mapping[str, float]) -> Plot:
    """One bar per entry of `ratios` (error / bound), in its order; the pass/fail line at 1."""
    names = list(ratios)
    return Plot(
        title=title,
        x_label=x_label,
        y_label=y_label,
        series=[Series(name=name, x=[float(i) for i in range(len(names))], y=[ratios[n] for n in names])],
        log_y=True,
        kind="bar",
        x_labels=names,
        threshold=1.0,
        threshold_label="bound (above fails)",
    )


def loss_curves(
    title: str,
    curves: Sequence[tuple[str, Sequence[float]]],
    threshold: float | None = None,
    threshold_label: str = "",
) -> Plot:
    """Loss per step of each named curve, with the line a passing run must end below."""
    series = [
        Series(name, [float(i) for i in range(len(values))], list(values))
        for name, values in curves
        if values
    ]
    return Plot(
        title=title,
        x_label="step",
        y_label="loss",
        series=series,
        threshold=threshold,
        threshold_label=threshold_label,
    )
