"""The run report's pieces: charts as inline SVG, tables, image thumbnails, and the one-file HTML page.

Charts are drawn with matplotlib (already a dependency) and written as SVG text into the page: no script,
no network, no extra package, and a chart stays sharp when zoomed or printed. An interactive library
(Plotly) would add 3 to 5 MB of JavaScript to every report. Images are JPEG thumbnails inlined as
``data:`` URLs, so a report is one file that opens anywhere offline. :mod:`ddetr.tasks.report` gathers
the numbers and calls these functions.
"""

from __future__ import annotations

import base64
import html
import io
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from ddetr.viz.draw import class_color

__all__ = [
    "Section",
    "bar_chart",
    "confusion_chart",
    "heading_id",
    "history_chart",
    "image_tag",
    "line_chart",
    "render_page",
    "side_by_side",
    "table",
]

MAX_LEGEND = 20  # lines named in a legend; more classes are drawn but not named
_ANNOTATED_CELLS = 400  # a confusion matrix up to 20 x 20 shows its counts in the cells


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_svg import FigureCanvasSVG
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=72)
    FigureCanvasSVG(fig)
    return fig


def _svg(fig: Any) -> str:
    """The figure as an ``<svg>`` element (the XML prologue dropped), scaling to its container's width."""
    import matplotlib

    buffer = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none"}):  # text as <text>: small and selectable
        fig.tight_layout()
        fig.savefig(buffer, format="svg")
    text = buffer.getvalue()
    text = text[text.index("<svg") :]
    return re.sub(r'<svg([^>]*?) width="[^"]*" height="[^"]*"', r'<svg\1 class="svg"', text, count=1)


def line_chart(
    series: Mapping[str, tuple[Sequence[float], Sequence[float | None]]],
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    log_y: bool = False,
    markers: bool = False,
    size: tuple[float, float] = (7.0, 3.6),
    unit_square: bool = False,
) -> str:
    """One axes with a line per series (name -> (xs, ys); None values are gaps); SVG text.

    ``unit_square`` fixes both axes to [0, 1] (precision-recall curves).
    """
    fig = _figure(*size)
    ax = fig.subplots()
    drawn = 0
    for k, (name, (xs, ys)) in enumerate(series.items()):
        values = [math.nan if y is None else float(y) for y in ys]
        if not any(v == v for v in values):
            continue
        ax.plot(
            list(xs),
            values,
            marker="o" if markers else None,
            markersize=4,
            linewidth=1.4,
            label=name if k < MAX_LEGEND else None,
        )
        drawn += 1
    if log_y and drawn:
        ax.set_yscale("log")
    if unit_square:
        ax.set_xlim(0.0, 1.0)
        ax.set_ylim(0.0, 1.02)
    if drawn == 0:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    elif len(series) > 1:
        ax.legend(fontsize=8, loc="best")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    return _svg(fig)


def bar_chart(
    values: Mapping[str, float | None],
    *,
    title: str,
    xlabel: str,
    horizontal: bool = True,
    sort: bool = True,
    groups: Mapping[str, Mapping[str, float | None]] | None = None,
    limit: float | None = None,
) -> str:
    """Bars of name -> value (sorted, largest on top, when ``sort``), or grouped bars (group -> name -> value).

    ``limit`` fixes the value axis to [0, limit] (1 for AP).
    """
    if groups is None:
        groups = {"": values}
    names = list(values) if values else list(next(iter(groups.values())))
    if sort:
        names.sort(key=lambda n: -(values.get(n) or 0.0))
    height = max(2.4, 0.32 * len(names) * max(1, len(groups)) + 1.2) if horizontal else 3.6
    fig = _figure(7.0, min(height, 24.0))
    ax = fig.subplots()
    width = 0.8 / max(1, len(groups))
    for g, (group, row) in enumerate(groups.items()):
        offsets = [i + (g - (len(groups) - 1) / 2) * width for i in range(len(names))]
        heights = [row.get(n) or 0.0 for n in names]
        if horizontal:
            bars = ax.barh(offsets, heights, height=width, label=group or None)
        else:
            bars = ax.bar(offsets, heights, width=width, label=group or None)
        ax.bar_label(bars, labels=[f"{h:.3f}" for h in heights], fontsize=7, padding=2)
    if horizontal:
        ax.set_yticks(range(len(names)), names, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel(xlabel)
    else:
        ax.set_xticks(range(len(names)), names, fontsize=8, rotation=30 if len(names) > 6 else 0)
        ax.set_ylabel(xlabel)
    if limit is not None:
        (ax.set_xlim if horizontal else ax.set_ylim)(0.0, limit * 1.08)  # room for the value labels
    if len(groups) > 1:
        ax.legend(fontsize=8)
    ax.set_title(title)
    return _svg(fig)


def confusion_chart(matrix: Any, names: Sequence[str], *, title: str) -> str:
    """A heat map of counts (rows ground truth, columns predictions; the last of each is the background)."""
    import numpy as np

    counts = np.asarray(matrix, dtype=float)
    labels = [*names, "background"]
    side = min(14.0, 3.0 + 0.45 * len(labels))
    fig = _figure(side + 1.5, side)
    ax = fig.subplots()
    # each row as a share of its ground truth (the background row of its own total), counts in the cells
    totals = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
    image = ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the row")
    if counts.size <= _ANNOTATED_CELLS:
        for i in range(counts.shape[0]):
            for j in range(counts.shape[1]):
                if counts[i, j]:
                    colour = "white" if shares[i, j] > 0.5 else "black"
                    ax.text(j, i, f"{int(counts[i, j])}", ha="center", va="center", fontsize=8, color=colour)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("ground truth")
    ax.set_title(title)
    return _svg(fig)


def history_chart(
    points: Sequence[tuple[int, float, str]], *, metric: str, maximize: bool, title: str
) -> str:
    """Each trial's metric (trial number, value, state) and the best so far among the complete ones."""
    fig = _figure(7.0, 3.6)
    ax = fig.subplots()
    for state, marker in (("COMPLETE", "o"), ("PRUNED", "x")):
        shown = [(n, v) for n, v, s in points if s == state]
        if shown:
            ax.scatter([n for n, _ in shown], [v for _, v in shown], marker=marker, label=state.lower())
    best: float | None = None
    steps_x, steps_y = [], []
    for n, v, s in sorted(points):
        if s == "COMPLETE" and (best is None or (v > best if maximize else v < best)):
            best = v
        if best is not None:
            steps_x.append(n)
            steps_y.append(best)
    if steps_x:
        ax.step(steps_x, steps_y, where="post", color="tab:red", label="best so far")
    if points:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no finished trial", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("trial")
    ax.set_ylabel(metric)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    return _svg(fig)


def side_by_side(
    image: Image.Image,
    ground_truth: Sequence[tuple[str, int, Sequence[float]]],
    predictions: Sequence[tuple[str, int, Sequence[float], float]],
    *,
    max_side: int = 320,
    quality: int = 70,
) -> bytes:
    """A JPEG of the image twice, ground truth left and predictions (with scores) right, each at most ``max_side`` px.

    Args:
        image: the picture.
        ground_truth: (name, category id, (x, y, w, h) pixels) per object.
        predictions: (name, category id, (x, y, w, h), score) per kept detection.
        max_side: the longer side of each half, in pixels.
        quality: JPEG quality.

    Returns:
        The JPEG file's bytes (a few tens of kB).
    """
    scale = min(1.0, max_side / max(image.size))
    small = image.convert("RGB").resize(
        (max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.BILINEAR
    )

    def boxes(items: Sequence[Any]) -> list[list[float]]:
        return [[b[0] * scale, b[1] * scale, (b[0] + b[2]) * scale, (b[1] + b[3]) * scale] for b in items]

    left = _draw(small, [(g[0], g[1], boxes([g[2]])[0]) for g in ground_truth])
    right = _draw(small, [(f"{p[0]} {p[3]:.2f}", p[1], boxes([p[2]])[0]) for p in predictions])
    gap = 6
    out = Image.new("RGB", (small.width * 2 + gap, small.height), (255, 255, 255))
    out.paste(left, (0, 0))
    out.paste(right, (small.width + gap, 0))
    buffer = io.BytesIO()
    out.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def _draw(image: Image.Image, items: Sequence[tuple[str, int, Sequence[float]]]) -> Image.Image:
    """A copy of ``image`` with each (caption, category id, (x1, y1, x2, y2)) box outlined and captioned."""
    from PIL import ImageDraw, ImageFont

    out = image.copy()
    draw = ImageDraw.Draw(out)
    font = ImageFont.load_default()
    for caption, label, (x1, y1, x2, y2) in items:
        color = class_color(label)
        draw.rectangle([x1, y1, x2, y2], outline=color, width=2)
        left, top, right, bottom = draw.textbbox((0, 0), caption, font=font)
        ty = max(0.0, y1 - (bottom - top) - 2)
        draw.rectangle([x1, ty, x1 + (right - left) + 3, ty + (bottom - top) + 2], fill=color)
        draw.text((x1 + 1, ty), caption, fill=(0, 0, 0), font=font)
    return out


def image_tag(jpeg: bytes, alt: str) -> str:
    """An ``<img>`` holding the JPEG inline (a data: URL)."""
    data = base64.b64encode(jpeg).decode("ascii")
    return f'<img src="data:image/jpeg;base64,{data}" alt="{html.escape(alt)}">'


def _cell(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return "n/a" if value != value else f"{value:.4f}"
    return html.escape(str(value))


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], *, marked: int | None = None) -> str:
    """An HTML table (floats with 4 decimals, None as a dash); row ``marked`` is highlighted."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = []
    for i, row in enumerate(rows):
        attr = ' class="marked"' if i == marked else ""
        cells = "".join(
            f'<td class="n">{_cell(v)}</td>' if isinstance(v, (int, float)) else f"<td>{_cell(v)}</td>"
            for v in row
        )
        body.append(f"<tr{attr}>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def heading_id(title: str) -> str:
    """The anchor of a section: its title in lower case, letters and digits joined by dashes."""
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")


@dataclass
class Section:
    """One part of the page: a title and its HTML blocks (tables, ``chart()`` figures, paragraphs)."""

    title: str
    blocks: list[str] = field(default_factory=list)
    key: str = ""

    def add(self, block: str) -> Section:
        """Append a block of HTML; returns the section."""
        self.blocks.append(block)
        return self

    def chart(self, name: str, svg: str) -> Section:
        """Append a chart, marked ``figure.chart[data-chart=name]`` (the browser test finds each one)."""
        return self.add(f'<figure class="chart" data-chart="{html.escape(name)}">{svg}</figure>')

    def text(self, words: str) -> Section:
        """Append a paragraph of plain text."""
        return self.add(f"<p>{html.escape(words)}</p>")


_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1d2430;background:#f6f7f9}
header{background:#1d2430;color:#fff;padding:14px 24px}header h1{margin:0;font-size:20px}
header p{margin:4px 0 0;color:#c5cbd6;font-size:13px}nav{padding:8px 24px;background:#e8ebf0;font-size:14px}
nav a{margin-right:14px;color:#1d4ed8;text-decoration:none}main{padding:8px 24px 40px;max-width:1200px}
section{background:#fff;border:1px solid #dde1e7;border-radius:6px;padding:8px 18px 16px;margin:16px 0}
h2{font-size:17px;border-bottom:1px solid #e5e7eb;padding-bottom:6px}
table{border-collapse:collapse;font-size:13px;margin:8px 0}th,td{border:1px solid #dde1e7;padding:3px 8px;
text-align:left}th{background:#f0f2f5}td.n{text-align:right;font-variant-numeric:tabular-nums}tr.marked{background:#fff4c2;
font-weight:600}figure.chart{display:inline-block;vertical-align:top;width:calc(50% - 16px);min-width:440px;margin:6px}
svg.svg{width:100%;height:auto}.examples{display:grid;grid-template-columns:repeat(auto-fill,minmax(420px,1fr));
gap:12px}.examples figure{margin:0}.examples img{width:100%;border:1px solid #dde1e7}figcaption{font-size:12px;
color:#4b5563}pre{background:#f0f2f5;padding:10px;overflow:auto;font-size:12px;max-height:480px}
.note{color:#4b5563;font-size:13px}
"""


def render_page(title: str, subtitle: str, sections: Sequence[Section]) -> str:
    """The whole report: one HTML document with its style inline and no script or external resource."""
    nav = "".join(f'<a href="#{s.key or heading_id(s.title)}">{html.escape(s.title)}</a>' for s in sections)
    parts = []
    for s in sections:
        key = s.key or heading_id(s.title)
        parts.append(f'<section id="{key}"><h2>{html.escape(s.title)}</h2>{"".join(s.blocks)}</section>')
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>"
        f"<header><h1>{html.escape(title)}</h1><p>{html.escape(subtitle)}</p></header>"
        f"<nav>{nav}</nav><main>{''.join(parts)}</main></body></html>\n"
    )
