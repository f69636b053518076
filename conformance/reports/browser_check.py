"""Open a report.html in headless Chromium and confirm what a reader would see: the loss-curve plot in
the rendered DOM, with its lines, the layout of every plot's text as the browser laid it out (nothing
outside its plot, the pass/fail line and its label there, legend items clear of each other and of the
data), and (optionally) a screenshot that is not blank.

The report itself has no script. To measure the layout, a copy of the page gets one inline script that
reads each plot's bounding boxes (`getBoundingClientRect`, transforms included) into a `<pre>` element;
Chromium's `--dump-dom` serialises the DOM after it ran.

Used by `tests/conformance/test_report_in_browser.py` and `scripts/open_report_in_chromium.py`. Chromium
comes from the system packages (Debian: ``apt-get install chromium``); `find_chromium` says whether one is
installed. Each call gets a fresh temporary profile, so parallel runs do not share a browser.
"""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import tempfile
import zlib
from dataclasses import dataclass, field
from html import unescape
from html.parser import HTMLParser
from pathlib import Path

import numpy as np

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
TIMEOUT = 60.0


def find_chromium() -> str | None:
    """The path of an installed Chromium or Chrome, or None."""
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


def _run_headless(chromium: str, extra: list[str], page: Path, timeout: float) -> str:
    with tempfile.TemporaryDirectory(prefix="report-chromium-") as profile:
        command = [
            chromium,
            "--headless",
            "--no-sandbox",  # containers run as root, where Chromium's sandbox refuses to start
            "--disable-gpu",
            "--no-first-run",
            "--disable-extensions",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            *extra,
            page.resolve().as_uri(),
        ]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{chromium} exited with {done.returncode}: {done.stderr[-2000:]}")
    return done.stdout


def dump_dom(chromium: str, page: Path, timeout: float = TIMEOUT) -> str:
    """The DOM Chromium built from `page`, serialised after load."""
    return _run_headless(chromium, ["--dump-dom"], page, timeout)


def screenshot(
    chromium: str, page: Path, out: Path, size: tuple[int, int] = (1100, 1400), timeout: float = TIMEOUT
) -> Path:
    """A PNG of the top `size` (width, height) of `page`, written to `out`."""
    _run_headless(
        chromium, [f"--window-size={size[0]},{size[1]}", f"--screenshot={out.resolve()}"], page, timeout
    )
    if not out.is_file():
        raise RuntimeError(f"{chromium} wrote no screenshot at {out}")
    return out


@dataclass
class RenderedPlot:
    """An ``<svg class="plot ...">`` as found in the rendered DOM."""

    classes: list[str]
    title: str = ""
    polyline_points: list[int] = field(default_factory=list)
    """How many points each polyline has."""
    bars: int = 0
    legend: list[str] = field(default_factory=list)


class _PlotFinder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.plots: list[RenderedPlot] = []
        self._depth = 0
        self._text_target: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name: value or "" for name, value in attrs}
        if tag == "svg" and "plot" in values.get("class", "").split():
            self.plots.append(RenderedPlot(classes=values["class"].split()))
            self._depth = 1
            return
        if not self._depth:
            return
        self._depth += 1
        plot = self.plots[-1]
        if tag == "polyline":
            plot.polyline_points.append(len(values.get("points", "").split()))
        elif tag == "rect" and "bar" in values.get("class", "").split():
            plot.bars += 1
        elif tag == "title" and self._depth == 2:
            self._text_target = "title"
        elif tag == "text" and self._in_legend:
            self._text_target = "legend"
        elif tag == "g" and "legend-item" in values.get("class", ""):
            self._in_legend = True

    _in_legend = False

    def handle_endtag(self, tag: str) -> None:
        if not self._depth:
            return
        self._depth -= 1
        self._text_target = None
        if tag == "g":
            self._in_legend = False

    def handle_data(self, data: str) -> None:
        if self._text_target == "title":
            self.plots[-1].title += data
        elif self._text_target == "legend":
            self.plots[-1].legend.append(data)


def rendered_plots(dom: str) -> list[RenderedPlot]:
    """Every report plot in a serialised DOM."""
    finder = _PlotFinder()
    finder.feed(dom)
    finder.close()
    return finder.plots


def loss_curves(dom: str) -> list[RenderedPlot]:
    """The plots marked ``loss-curve`` that have at least one line with two or more points."""
    return [
        plot
        for plot in rendered_plots(dom)
        if "loss-curve" in plot.classes and any(count >= 2 for count in plot.polyline_points)
    ]


MEASURE_SCRIPT = """
<script>
(function () {
  const found = [];
  for (const svg of document.querySelectorAll("svg.plot")) {
    const box = svg.getBoundingClientRect();
    const rel = (r) => ({x: r.left - box.left, y: r.top - box.top, w: r.width, h: r.height});
    const area = svg.querySelector(".plot-area");
    found.push({
      id: svg.id,
      classes: svg.getAttribute("class"),
      width: box.width,
      height: box.height,
      area: area ? rel(area.getBoundingClientRect()) : null,
      texts: Array.from(svg.querySelectorAll("text")).map((t) => Object.assign(
        {cls: t.getAttribute("class") || "", text: t.textContent}, rel(t.getBoundingClientRect()))),
      legend: Array.from(svg.querySelectorAll(".legend-item")).map((g) => Object.assign(
        {text: g.textContent}, rel(g.getBoundingClientRect()))),
      thresholds: Array.from(svg.querySelectorAll("line.threshold")).map((l) => rel(l.getBoundingClientRect())),
      zero_markers: svg.querySelectorAll(".zero-marker").length,
      bars: svg.querySelectorAll("rect.bar").length,
    });
  }
  const out = document.createElement("pre");
  out.id = "layout-measurements";
  out.textContent = JSON.stringify(found);
  document.body.appendChild(out);
})();
</script>
"""


@dataclass(frozen=True)
class Box:
    """A rectangle in CSS pixels, relative to its plot's top-left corner."""

    x: float
    y: float
    w: float
    h: float

    def inside(self, width: float, height: float, slack: float = 0.5) -> bool:
        return (
            -slack <= self.x
            and -slack <= self.y
            and self.x + self.w <= width + slack
            and self.y + self.h <= height + slack
        )

    def overlaps(self, other: Box) -> bool:
        return not (
            self.x + self.w <= other.x
            or other.x + other.w <= self.x
            or self.y + self.h <= other.y
            or other.y + other.h <= self.y
        )


@dataclass
class PlotLayout:
    """One plot as Chromium laid it out."""

    id: str
    classes: list[str]
    width: float
    height: float
    area: Box | None
    texts: list[tuple[str, str, Box]]
    """(class, text, box) of every `<text>`."""
    legend: list[tuple[str, Box]]
    thresholds: list[Box]
    zero_markers: int
    bars: int

    def clipped(self) -> list[str]:
        """The texts that reach outside the plot's own box."""
        return [text for _, text, box in self.texts if not box.inside(self.width, self.height)]

    def texts_of(self, class_name: str) -> list[tuple[str, Box]]:
        return [(text, box) for classes, text, box in self.texts if class_name in classes.split()]


def measure_plots(report: Path, chromium: str | None = None, timeout: float = TIMEOUT) -> list[PlotLayout]:
    """Every plot of `report` as Chromium lays it out (a measuring copy of the page is rendered)."""
    chromium = chromium or find_chromium()
    if chromium is None:
        raise FileNotFoundError(f"no Chromium found (looked for {', '.join(CHROMIUM_NAMES)})")
    with tempfile.TemporaryDirectory(prefix="report-layout-") as folder:
        page = Path(folder) / "measured.html"
        page.write_text(
            report.read_text(encoding="utf-8").replace("</body>", MEASURE_SCRIPT + "</body>"),
            encoding="utf-8",
        )
        dom = dump_dom(chromium, page, timeout)
    start = dom.index('id="layout-measurements">') + len('id="layout-measurements">')
    raw = json.loads(unescape(dom[start : dom.index("</pre>", start)]))
    return [
        PlotLayout(
            id=item["id"],
            classes=item["classes"].split(),
            width=item["width"],
            height=item["height"],
            area=_box(item["area"]) if item["area"] else None,
            texts=[(text["cls"], text["text"], _box(text)) for text in item["texts"]],
            legend=[(entry["text"], _box(entry)) for entry in item["legend"]],
            thresholds=[_box(line) for line in item["thresholds"]],
            zero_markers=item["zero_markers"],
            bars=item["bars"],
        )
        for item in raw
    ]


def _box(data: dict) -> Box:
    return Box(float(data["x"]), float(data["y"]), float(data["w"]), float(data["h"]))


@dataclass(frozen=True)
class ImageStats:
    width: int
    height: int
    colours: int
    """Distinct RGB colours."""
    non_background: float
    """Share of pixels that differ from the most common colour (the page background)."""


def png_stats(path: Path) -> ImageStats:
    """Decode an 8-bit RGB/RGBA, non-interlaced PNG (what Chromium writes) and measure it."""
    data = path.read_bytes()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError(f"{path} is not a PNG")
    position, compressed, header = 8, bytearray(), None
    while position < len(data):
        (length,) = struct.unpack(">I", data[position : position + 4])
        kind, body = data[position + 4 : position + 8], data[position + 8 : position + 8 + length]
        position += 12 + length
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            compressed += body
    if header is None:
        raise ValueError(f"{path} has no IHDR chunk")
    width, height, depth, colour_type, _, _, interlace = header
    if depth != 8 or colour_type not in (2, 6) or interlace:
        raise ValueError(f"{path}: only 8-bit RGB/RGBA non-interlaced PNGs are read (got {header})")
    channels = 3 if colour_type == 2 else 4
    pixels = _unfilter(zlib.decompress(bytes(compressed)), width, height, channels)
    rgb = pixels[:, :, :3].reshape(-1, 3).astype(np.uint32)
    packed = (rgb[:, 0] << 16) | (rgb[:, 1] << 8) | rgb[:, 2]
    values, counts = np.unique(packed, return_counts=True)
    return ImageStats(width, height, int(values.size), float(1 - counts.max() / packed.size))


def _unfilter(raw: bytes, width: int, height: int, channels: int) -> np.ndarray:
    stride = width * channels
    rows = np.frombuffer(raw, dtype=np.uint8).reshape(height, stride + 1)
    out = np.zeros((height, stride), dtype=np.uint8)
    previous = np.zeros(stride, dtype=np.int32)
    for index in range(height):
        kind, line = rows[index, 0], rows[index, 1:].astype(np.int32)
        if kind == 0:
            current = line
        elif kind == 1:  # Sub: running sum per channel
            current = np.cumsum(line.reshape(width, channels), axis=0).reshape(-1) % 256
        elif kind == 2:  # Up
            current = (line + previous) % 256
        elif kind in (3, 4):  # Average, Paeth: each byte needs the one just decoded on its left
            current = _sequential(line.tolist(), previous.tolist(), channels, kind)
        else:
            raise ValueError(f"unknown PNG filter type {kind} in row {index}")
        out[index] = current
        previous = np.asarray(current, dtype=np.int32)
    return out.reshape(height, width, channels)


def _sequential(line: list[int], above: list[int], channels: int, kind: int) -> np.ndarray:
    current = [0] * len(line)
    for i, value in enumerate(line):
        left = current[i - channels] if i >= channels else 0
        up = above[i]
        if kind == 3:
            current[i] = (value + (left + up) // 2) % 256
            continue
        upper_left = above[i - channels] if i >= channels else 0
        estimate = left + up - upper_left
        distance_left, distance_up = abs(estimate - left), abs(estimate - up)
        distance_corner = abs(estimate - upper_left)
        if distance_left <= distance_up and distance_left <= distance_corner:
            predictor = left
        elif distance_up <= distance_corner:
            predictor = up
        else:
            predictor = upper_left
        current[i] = (value + predictor) % 256
    return np.asarray(current, dtype=np.int32)


@dataclass
class BrowserCheck:
    """What Chromium showed of one report."""

    chromium: str
    plots: list[RenderedPlot]
    loss_curves: list[RenderedPlot]
    screenshot: Path | None = None
    image: ImageStats | None = None

    @property
    def ok(self) -> bool:
        painted = self.image is None or (self.image.colours > 2 and self.image.non_background > 0.01)
        return bool(self.loss_curves) and painted


def check_report(
    report: Path,
    chromium: str | None = None,
    screenshot_to: Path | None = None,
    size: tuple[int, int] = (1100, 1400),
    timeout: float = TIMEOUT,
) -> BrowserCheck:
    """Render `report` in headless Chromium; find its loss curves, and screenshot it if asked."""
    chromium = chromium or find_chromium()
    if chromium is None:
        raise FileNotFoundError(f"no Chromium found (looked for {', '.join(CHROMIUM_NAMES)})")
    dom = dump_dom(chromium, report, timeout)
    result = BrowserCheck(chromium, rendered_plots(dom), loss_curves(dom))
    if screenshot_to is not None:
        result.screenshot = screenshot(chromium, report, screenshot_to, size, timeout)
        result.image = png_stats(result.screenshot)
    return result
