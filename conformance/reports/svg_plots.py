"""A small SVG renderer for the report's plots: loss curves (`Plot.kind == "line"`) and per-tensor errors
(`Plot.kind == "bar"`), on a linear or logarithmic y axis.

The output is inline SVG text for `report.html`: no scripts, no external references, every label escaped,
coordinates written to two decimals so the same `Plot` always gives the same bytes. A line plot whose title
or y label mentions a loss is marked ``class="plot line-plot loss-curve"``, which is how a browser test
finds it.

What a reader must be able to see, and how it is drawn:

- the pass/fail line: `Plot.threshold` is a dashed line across the plot area (``class="threshold"``), kept
  inside the axis, and named in the legend (``class="threshold-label"``);
- zero against missing: on a log axis a value of exactly 0 cannot be a bar; it is drawn as a hollow marker
  on the axis floor (``class="zero-marker"``, with its own legend entry), while a missing value (nan, None)
  has nothing. A plot whose values are all zero is drawn, not left empty: its axis comes from the threshold;
- labels that fit: the left margin grows with the tick labels and with the first rotated x labels, the
  bottom margin with the longest x label; x labels drop the prefix all labels share (`model.`) and keep
  the end of a long name, where tensor names differ (`layers.0.self_attn` vs `layers.1.self_attn`); a long
  title wraps onto a second line;
- a legend that never covers data: it sits above the plot area, its items laid out by their own widths.

Points that cannot be drawn (nan, inf, or <= 0 on a log axis for lines) break the line and are counted in
the plot's ``<desc>``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

from conformance.results import Plot

from .figures import as_float, format_number, shorten

WIDTH = 720
PLOT_HEIGHT = 260
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP = 78, 24, 34
TITLE_LINE = 17
LEGEND_ROW = 18
CHAR_WIDTH = {10: 6.0, 11: 6.6, 12: 7.2, 14: 8.6}
"""A generous width per character of the sans-serif font at each size, so estimated labels never clip."""
PALETTE = ("#1f6fb4", "#e4760b", "#2a9d3a", "#c62a2a", "#7b52ab", "#8a5a44", "#d0509a", "#6b6b6b")
"""Series colours in order; after the eighth a series repeats a colour with a dashed stroke."""
THRESHOLD_COLOUR = "#b00020"
MAX_MARKERS = 60
"""Lines with at most this many points also get a dot per point."""
TITLE_CHARS = 80
LABEL_CHARS = 40
ROTATION = 45


def text_width(text: str, size: int) -> float:
    """The estimated width of `text` at font `size` (over-estimated on purpose)."""
    return len(text) * CHAR_WIDTH.get(size, size * 0.6)


@dataclass(frozen=True)
class _Axis:
    """A y (or numeric x) axis: the drawn domain and its tick values."""

    low: float
    high: float
    ticks: tuple[float, ...]
    log: bool

    def fraction(self, value: float) -> float:
        if self.log:
            value, low, high = math.log10(value), math.log10(self.low), math.log10(self.high)
        else:
            low, high = self.low, self.high
        return (value - low) / (high - low)

    def label(self, value: float) -> str:
        if self.log:
            exponent = round(math.log10(value))
            return f"{10.0**exponent:g}" if -3 <= exponent <= 3 else f"1e{exponent}"
        return _tick_label(value)


def _tick_label(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1e5 or abs(value) < 1e-3:
        return f"{value:.0e}".replace("e+0", "e").replace("e-0", "e-").replace("e+", "e")
    return f"{value:.6g}"


def _nice_step(span: float, target: int, integer: bool) -> float:
    raw = span / max(target, 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next((m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw), 10 * magnitude)
    return max(step, 1.0) if integer else step


def linear_axis(values: Sequence[float], target_ticks: int = 5, integer: bool = False) -> _Axis:
    """A linear axis over `values` (finite ones), widened to round tick values."""
    finite = [v for v in values if math.isfinite(v)]
    low, high = (min(finite), max(finite)) if finite else (0.0, 1.0)
    if low == high:
        pad = abs(low) * 0.1 or 1.0
        low, high = low - pad, high + pad
    step = _nice_step(high - low, target_ticks, integer)
    first, last = math.floor(low / step + 1e-9), math.ceil(high / step - 1e-9)
    ticks = tuple(_clean(i * step) for i in range(first, last + 1))
    return _Axis(ticks[0], ticks[-1], ticks, log=False)


def log_axis(values: Sequence[float], max_ticks: int = 8) -> _Axis:
    """A decade axis over the positive finite `values`."""
    positive = [v for v in values if math.isfinite(v) and v > 0]
    if not positive:
        return _Axis(1.0, 10.0, (1.0, 10.0), log=True)
    low, high = math.floor(math.log10(min(positive))), math.ceil(math.log10(max(positive)))
    if low == high:
        high += 1
    every = math.ceil((high - low) / max_ticks)
    high = low + math.ceil((high - low) / every) * every
    ticks = tuple(10.0**exponent for exponent in range(low, high + 1, every))
    return _Axis(10.0**low, 10.0**high, ticks, log=True)


def _clean(value: float) -> float:
    """Remove float noise from a tick (0.30000000000000004 -> 0.3)."""
    return float(f"{value:.12g}")


def _drawable(value: float, axis: _Axis) -> bool:
    return math.isfinite(value) and (value > 0 or not axis.log)


def _f(value: float) -> str:
    text = f"{value:.2f}"
    return "0.00" if text == "-0.00" else text


def plot_classes(plot: Plot) -> str:
    """The SVG's class attribute: ``plot line-plot`` / ``plot bar-plot``, plus ``loss-curve`` for losses."""
    if plot.kind == "bar":
        return "plot bar-plot"
    words = f"{plot.title} {plot.y_label}".lower()
    return "plot line-plot loss-curve" if "loss" in words else "plot line-plot"


def render_plot(plot: Plot, plot_id: str) -> str:
    """`plot` as an inline ``<svg>`` element; `plot_id` must be unique in the page (it names the title)."""
    if plot.kind == "bar":
        return _BarPlot(plot, plot_id).render()
    return _LinePlot(plot, plot_id).render()


def title_lines(title: str, max_chars: int = TITLE_CHARS) -> list[str]:
    """The title on one line, or wrapped at a space onto two (the second shortened if need be)."""
    if len(title) <= max_chars:
        return [title]
    cut = title.rfind(" ", 0, max_chars)
    cut = cut if cut > max_chars // 2 else max_chars
    return [title[:cut].rstrip(), shorten(title[cut:].strip(), max_chars)]


@dataclass(frozen=True)
class _LegendEntry:
    kind: str
    """``series``, ``threshold`` or ``zero``."""
    label: str
    colour: str
    dash: str = ""


class _Canvas:
    """What line and bar plots share: frame, title, legend, axes, the threshold line and the SVG wrapper."""

    bottom_margin = 48.0
    left_needed = 0.0
    """Extra room the subclass needs on the left (rotated x labels), beyond the y tick labels."""

    def __init__(self, plot: Plot, plot_id: str):
        self.plot = plot
        self.plot_id = plot_id
        self.skipped = 0
        self.titles = title_lines(plot.title)
        values = [as_float(v) for series in plot.series for v in series.y]
        if plot.kind == "bar":
            values.append(0.0)  # bars stand on zero; the log axis ignores it
        measured = values[: self._value_count()]
        self.has_zero = plot.log_y and any(value == 0 for value in measured)
        if plot.threshold is not None:
            values.append(plot.threshold)
            if plot.log_y and plot.threshold > 0:
                # A decade of room above the line, and below it when nothing measured lies under it.
                values.append(plot.threshold * 3)
                if not any(math.isfinite(v) and 0 < v < plot.threshold for v in measured):
                    values.append(plot.threshold / 10)
        if plot.log_y and not any(math.isfinite(v) and v > 0 for v in values):
            values += [1e-8, 1.0]  # all zero, no threshold: a default range to draw the zero markers on
        self.y_axis = log_axis(values) if plot.log_y else linear_axis(values)
        tick_width = max((text_width(self.y_axis.label(t), 11) for t in self.y_axis.ticks), default=0.0)
        self.left = max(MARGIN_LEFT, 30 + tick_width + 10, self.left_needed)
        self.right = WIDTH - MARGIN_RIGHT
        self.legend = self._legend_entries()
        self.legend_layout = self._layout_legend()
        legend_rows = max((row for _, _, row in self.legend_layout), default=-1) + 1
        title_room = (len(self.titles) - 1) * TITLE_LINE
        self.top = MARGIN_TOP + title_room + legend_rows * LEGEND_ROW + (6 if legend_rows else 0)

    def _value_count(self) -> int:
        return sum(len(series.y) for series in self.plot.series)

    @property
    def bottom(self) -> float:
        return self.top + PLOT_HEIGHT

    @property
    def height(self) -> float:
        return self.bottom + self.bottom_margin

    def y(self, value: float) -> float:
        return self.bottom - self.y_axis.fraction(value) * (self.bottom - self.top)

    def colour(self, index: int) -> tuple[str, str]:
        dash = ' stroke-dasharray="6 3"' if index >= len(PALETTE) else ""
        return PALETTE[index % len(PALETTE)], dash

    def _legend_entries(self) -> list[_LegendEntry]:
        entries = []
        plot = self.plot
        if len(plot.series) > 1 or plot.threshold is not None or self.has_zero:
            for index, series in enumerate(plot.series):
                colour, dash = self.colour(index)
                entries.append(_LegendEntry("series", shorten(series.name, 40), colour, dash))
        if plot.threshold is not None:
            label = plot.threshold_label or "pass/fail bound"
            entries.append(
                _LegendEntry("threshold", f"{label}: {format_number(plot.threshold)}", THRESHOLD_COLOUR, "")
            )
        if self.has_zero:
            entries.append(_LegendEntry("zero", "exactly 0 (no bar on a log axis)", "#333", ""))
        return entries

    def _layout_legend(self) -> list[tuple[_LegendEntry, float, int]]:
        """Each entry's x and row: left to right by their own widths, a new row when one is full."""
        placed = []
        x, row = self.left, 0
        for entry in self.legend:
            width = 23 + text_width(entry.label, 11) + 16
            if x > self.left and x + width > self.right:
                x, row = self.left, row + 1
            placed.append((entry, x, row))
            x += width
        return placed

    def frame(self) -> list[str]:
        """Title, legend, y grid with tick labels, the axes' lines and labels."""
        plot = self.plot
        parts = []
        for index, line in enumerate(self.titles):
            parts.append(
                f'<text class="plot-title" x="{_f(WIDTH / 2)}" y="{_f(18 + index * TITLE_LINE)}" '
                f'text-anchor="middle" font-size="14" font-weight="bold">{escape(line)}</text>'
            )
        legend_top = MARGIN_TOP + (len(self.titles) - 1) * TITLE_LINE
        for entry, x, row in self.legend_layout:
            y = legend_top + 6 + row * LEGEND_ROW
            if entry.kind == "zero":
                mark = f'<circle cx="{_f(x + 9)}" cy="{_f(y - 4)}" r="3.5" fill="#fff" stroke="{entry.colour}" stroke-width="1.5"/>'
            else:
                dash = ' stroke-dasharray="6 3"' if entry.kind == "threshold" else entry.dash
                mark = (
                    f'<line x1="{_f(x)}" y1="{_f(y - 4)}" x2="{_f(x + 18)}" y2="{_f(y - 4)}" stroke="{entry.colour}" '
                    f'stroke-width="{2 if entry.kind == "threshold" else 3}"{dash}/>'
                )
            text_class = ' class="threshold-label"' if entry.kind == "threshold" else ""
            parts.append(
                f'<g class="legend-item legend-{entry.kind}">{mark}<text{text_class} x="{_f(x + 23)}" '
                f'y="{_f(y)}" font-size="11">{escape(entry.label)}</text></g>'
            )
        parts.append(
            f'<rect class="plot-area" x="{_f(self.left)}" y="{_f(self.top)}" width="{_f(self.right - self.left)}" '
            f'height="{_f(self.bottom - self.top)}" fill="none" stroke="none"/>'
        )
        for tick in self.y_axis.ticks:
            y = self.y(tick)
            parts.append(
                f'<line class="grid" x1="{_f(self.left)}" y1="{_f(y)}" x2="{_f(self.right)}" y2="{_f(y)}" '
                f'stroke="#e3e3e3"/><text class="tick y-tick" x="{_f(self.left - 6)}" y="{_f(y + 4)}" '
                f'text-anchor="end" font-size="11">{escape(self.y_axis.label(tick))}</text>'
            )
        parts.append(
            f'<path class="axes" d="M{_f(self.left)} {_f(self.top)} V{_f(self.bottom)} H{_f(self.right)}" '
            'fill="none" stroke="#333"/>'
        )
        y_middle = (self.top + self.bottom) / 2
        y_label = shorten(plot.y_label + (" (log scale)" if plot.log_y else ""), int(PLOT_HEIGHT / 7.2))
        parts.append(
            f'<text class="axis-label" x="16" y="{_f(y_middle)}" font-size="12" text-anchor="middle" '
            f'transform="rotate(-90 16 {_f(y_middle)})">{escape(y_label)}</text>'
        )
        parts.append(
            f'<text class="axis-label" x="{_f((self.left + self.right) / 2)}" y="{_f(self.height - 8)}" '
            f'font-size="12" text-anchor="middle">{escape(plot.x_label)}</text>'
        )
        return parts

    def threshold_line(self) -> list[str]:
        """The pass/fail line across the plot area, drawn over the data."""
        value = self.plot.threshold
        if value is None or not _drawable(value, self.y_axis):
            return []
        y = self.y(value)
        return [
            f'<line class="threshold" x1="{_f(self.left)}" y1="{_f(y)}" x2="{_f(self.right)}" y2="{_f(y)}" '
            f'stroke="{THRESHOLD_COLOUR}" stroke-width="1.5" stroke-dasharray="6 3">'
            f"<title>{escape(self.plot.threshold_label or 'pass/fail bound')}: {escape(format_number(value))}</title></line>"
        ]

    def wrap(self, body: list[str], kind: str) -> str:
        plot = self.plot
        description = f"{kind} plot of {len(plot.series)} series" + (", log y axis" if plot.log_y else "")
        if plot.threshold is not None:
            description += f"; pass/fail line at {format_number(plot.threshold)}"
        if self.skipped:
            description += f"; {self.skipped} points not drawn (nan, inf or <= 0 on a log axis)"
        if not any(series.y for series in plot.series):
            body = [
                *body,
                f'<text x="{_f((self.left + self.right) / 2)}" y="{_f((self.top + self.bottom) / 2)}" '
                'text-anchor="middle" font-size="13" fill="#888">no data</text>',
            ]
        head = (
            f'<svg class="{plot_classes(plot)}" id="{escape(self.plot_id)}" width="{WIDTH}" '
            f'height="{_f(self.height)}" viewBox="0 0 {WIDTH} {_f(self.height)}" role="img" '
            f'aria-labelledby="{escape(self.plot_id)}-title" font-family="sans-serif">'
        )
        meta = (
            f'<title id="{escape(self.plot_id)}-title">{escape(plot.title)}</title>'
            f"<desc>{escape(description)}</desc>"
        )
        return "\n".join([head + meta, *body, "</svg>"])


class _LinePlot(_Canvas):
    def __init__(self, plot: Plot, plot_id: str):
        super().__init__(plot, plot_id)
        xs = [as_float(v) for series in plot.series for v in series.x]
        integer = all(x.is_integer() for x in xs if math.isfinite(x))
        self.x_axis = linear_axis(xs, target_ticks=8, integer=integer)

    def x(self, value: float) -> float:
        return self.left + self.x_axis.fraction(value) * (self.right - self.left)

    def render(self) -> str:
        body = self.frame()
        for tick in self.x_axis.ticks:
            x = self.x(tick)
            body.append(
                f'<line x1="{_f(x)}" y1="{_f(self.bottom)}" x2="{_f(x)}" y2="{_f(self.bottom + 4)}" stroke="#333"/>'
                f'<text class="tick x-tick" x="{_f(x)}" y="{_f(self.bottom + 17)}" text-anchor="middle" '
                f'font-size="11">{escape(self.x_axis.label(tick))}</text>'
            )
        for index, series in enumerate(self.plot.series):
            body.append(self._series(index, series.name, series.x, series.y))
        body += self.threshold_line()
        return self.wrap(body, "line")

    def _series(self, index: int, name: str, xs: Sequence[float], ys: Sequence[float]) -> str:
        colour, dash = self.colour(index)
        segments: list[list[tuple[float, float]]] = [[]]
        for x_value, y_value in zip(xs, ys):
            x, y = as_float(x_value), as_float(y_value)
            if math.isfinite(x) and _drawable(y, self.y_axis):
                segments[-1].append((self.x(x), self.y(y)))
            else:
                self.skipped += 1
                if segments[-1]:
                    segments.append([])
        parts = [f'<g class="series" data-series="{escape(name)}">']
        for segment in filter(None, segments):
            points = " ".join(f"{_f(x)},{_f(y)}" for x, y in segment)
            parts.append(
                f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="2"{dash}>'
                f"<title>{escape(name)}</title></polyline>"
            )
        if len(ys) <= MAX_MARKERS:
            parts += [
                f'<circle cx="{_f(x)}" cy="{_f(y)}" r="2.5" fill="{colour}"/>'
                for segment in segments
                for x, y in segment
            ]
        parts.append("</g>")
        return "".join(parts)


def tick_labels(labels: Sequence[str], max_chars: int = LABEL_CHARS) -> list[str]:
    """The x labels as drawn: the dotted prefix every label shares dropped (`model.`; an index keeps its
    name: `layers.0`), then long names kept by their end, where tensor names differ."""
    parts = [label.split(".") for label in labels]
    shared = 0
    if len(parts) > 1:
        for column in zip(*(names[:-1] for names in parts)):
            if len(set(column)) != 1:
                if shared and all(name.isdigit() for name in column):
                    shared -= 1  # keep the name an index belongs to: "layers.0", not "0"
                break
            shared += 1
    return [shorten_left(".".join(names[shared:]), max_chars) for names in parts]


class _BarPlot(_Canvas):
    def __init__(self, plot: Plot, plot_id: str):
        self.labels = list(plot.x_labels) or [
            str(i) for i in range(max((len(s.y) for s in plot.series), default=0))
        ]
        self.shown = tick_labels(self.labels)
        widths = [text_width(label, 10) for label in self.shown]
        self.rotated = len(self.labels) > 6 or max(widths, default=0) > 72
        reach = math.cos(math.radians(ROTATION))
        if self.rotated:
            self.bottom_margin = 44 + max(widths, default=0) * math.sin(math.radians(ROTATION))
            # The first labels reach left of their bar: leave them room inside the canvas.
            self.left_needed = self._left_for_rotated(widths, reach)
        super().__init__(plot, plot_id)

    def _left_for_rotated(self, widths: list[float], reach: float) -> float:
        left = float(MARGIN_LEFT)
        for _ in range(4):
            band = (WIDTH - MARGIN_RIGHT - left) / max(len(widths), 1)
            need = max(w * reach + 6 - band * (i + 0.5) for i, w in enumerate(widths))
            left = max(left, need)
        return left

    def render(self) -> str:
        body = self.frame()
        band = (self.right - self.left) / max(len(self.labels), 1)
        bar_width = band * 0.8 / max(len(self.plot.series), 1)
        base = self.y(self.y_axis.low if self.y_axis.log else 0.0)
        for position, (label, shown) in enumerate(zip(self.labels, self.shown)):
            centre = self.left + band * (position + 0.5)
            if self.rotated:
                y = self.bottom + 12
                text = (
                    f'<text class="tick x-tick" x="{_f(centre)}" y="{_f(y)}" text-anchor="end" font-size="10" '
                    f'transform="rotate(-{ROTATION} {_f(centre)} {_f(y)})">{escape(shown)}</text>'
                )
            else:
                text = (
                    f'<text class="tick x-tick" x="{_f(centre)}" y="{_f(self.bottom + 16)}" '
                    f'text-anchor="middle" font-size="10">{escape(shown)}</text>'
                )
            body.append(f"<g><title>{escape(label)}</title>{text}</g>")
        for index, series in enumerate(self.plot.series):
            colour, _ = self.colour(index)
            parts = [f'<g class="series" data-series="{escape(series.name)}">']
            for position, raw in enumerate(series.y[: len(self.labels)]):
                value = as_float(raw)
                x = self.left + band * position + band * 0.1 + bar_width * index
                tooltip = (
                    f"{escape(self.labels[position])} {escape(series.name)}: {escape(format_number(value))}"
                )
                if value == 0 and self.y_axis.log:
                    parts.append(
                        f'<circle class="zero-marker" cx="{_f(x + bar_width / 2)}" cy="{_f(base - 4)}" r="3.5" '
                        f'fill="#fff" stroke="{colour}" stroke-width="1.5"><title>{tooltip}</title></circle>'
                    )
                    continue
                if not _drawable(value, self.y_axis):
                    self.skipped += 1
                    continue
                top = self.y(value)
                y, height = min(top, base), abs(base - top)
                parts.append(
                    f'<rect class="bar" x="{_f(x)}" y="{_f(y)}" width="{_f(bar_width)}" height="{_f(height)}" '
                    f'fill="{colour}"><title>{tooltip}</title></rect>'
                )
            parts.append("</g>")
            body.append("".join(parts))
        body += self.threshold_line()
        return self.wrap(body, "bar")


def shorten_left(text: str, max_chars: int) -> str:
    """Keep the end of a long name (``…layers.0.mlp.up_proj.weight``), where tensor names differ."""
    return text if len(text) <= max_chars else "…" + text[-(max_chars - 1) :]
