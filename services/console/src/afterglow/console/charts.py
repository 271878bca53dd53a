"""Charts drawn on the server as SVG: the pages need no JavaScript to show them.

Small hand-written SVG rather than a plotting library: three chart kinds (bars, a line,
a cohort heat grid) cover the dashboard, and the markup stays small enough to read in a
test. Every chart is ``role="img"`` with a title and a description, and the page puts
the same numbers in a table beside it, which is what a screen reader reads.

Pure: no I/O, every text escaped here (labels come from tenants' data).
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from markupsafe import Markup

WIDTH, HEIGHT = 640, 240
PAD_L, PAD_R, PAD_T, PAD_B = 48, 12, 12, 36
BRAND = "#3b5bdb"
GRID = "#d0d4da"
INK = "#1a1a1a"


def _frame(chart_id: str, title: str, desc: str, body: str, height: int = HEIGHT) -> Markup:
    # Every text inside was escaped by this module (labels come from tenants' data).
    return Markup(  # noqa: S704
        f'<svg class="chart" viewBox="0 0 {WIDTH} {height}" role="img" '
        f'aria-labelledby="{chart_id}-t {chart_id}-d" xmlns="http://www.w3.org/2000/svg">'
        f'<title id="{chart_id}-t">{escape(title)}</title>'
        f'<desc id="{chart_id}-d">{escape(desc)}</desc>{body}</svg>'
    )


def _scale_max(values: Sequence[float]) -> float:
    top = max(values, default=0)
    return top if top > 0 else 1


def _axis(top: float) -> str:
    """Horizontal grid lines at 0, half and the top, labelled."""
    inner_h = HEIGHT - PAD_T - PAD_B
    out = []
    for frac in (0, 0.5, 1):
        y = PAD_T + inner_h * (1 - frac)
        value = top * frac
        label = f"{value:.0f}" if top >= 10 or value == int(value) else f"{value:.1f}"
        out.append(
            f'<line x1="{PAD_L}" x2="{WIDTH - PAD_R}" y1="{y:.1f}" y2="{y:.1f}" '
            f'stroke="{GRID}" stroke-width="1"/>'
            f'<text x="{PAD_L - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="12" '
            f'fill="{INK}">{label}</text>'
        )
    return "".join(out)


def _x_labels(labels: Sequence[str], xs: Sequence[float]) -> str:
    # At most about eight labels fit under 640 px; the table has every one.
    step = max(1, -(-len(labels) // 8))
    return "".join(
        f'<text x="{x:.1f}" y="{HEIGHT - PAD_B + 18}" text-anchor="middle" font-size="12" '
        f'fill="{INK}">{escape(label)}</text>'
        for i, (label, x) in enumerate(zip(labels, xs, strict=True))
        if i % step == 0
    )


def bars(chart_id: str, title: str, points: Sequence[tuple[str, float]], unit: str) -> Markup:
    """A bar per point (label, value)."""
    values = [v for _, v in points]
    top = _scale_max(values)
    inner_w = WIDTH - PAD_L - PAD_R
    inner_h = HEIGHT - PAD_T - PAD_B
    slot = inner_w / max(len(points), 1)
    width = max(slot * 0.7, 1)
    rects = []
    xs = []
    for i, (label, value) in enumerate(points):
        h = inner_h * value / top
        x = PAD_L + slot * i + (slot - width) / 2
        xs.append(x + width / 2)
        rects.append(
            f'<rect class="mark" x="{x:.1f}" y="{PAD_T + inner_h - h:.1f}" width="{width:.1f}" '
            f'height="{h:.1f}" fill="{BRAND}"><title>{escape(label)}: {value:g} {escape(unit)}'
            "</title></rect>"
        )
    desc = (
        f"{len(points)} bars, highest {max(values, default=0):g} {unit}; "
        "the table beside it has every value."
    )
    body = _axis(top) + "".join(rects) + _x_labels([lb for lb, _ in points], xs)
    return _frame(chart_id, title, desc, body)


def line(
    chart_id: str, title: str, points: Sequence[tuple[str, float | None]], unit: str
) -> Markup:
    """A line through the points that have a value (a gap where one is None: a week
    without answers has no NPS, which is not an NPS of 0)."""
    known = [v for _, v in points if v is not None]
    low = min(min(known, default=0), 0)
    top = _scale_max([v - low for v in known])
    inner_w = WIDTH - PAD_L - PAD_R
    inner_h = HEIGHT - PAD_T - PAD_B
    step = inner_w / max(len(points) - 1, 1)
    xs = [PAD_L + step * i for i in range(len(points))]
    segments: list[list[str]] = [[]]
    dots = []
    for x, (label, value) in zip(xs, points, strict=True):
        if value is None:
            segments.append([])
            continue
        y = PAD_T + inner_h * (1 - (value - low) / top)
        segments[-1].append(f"{x:.1f},{y:.1f}")
        dots.append(
            f'<circle class="mark" cx="{x:.1f}" cy="{y:.1f}" r="3.5" fill="{BRAND}">'
            f"<title>{escape(label)}: {value:g} {escape(unit)}</title></circle>"
        )
    paths = "".join(
        f'<polyline points="{" ".join(s)}" fill="none" stroke="{BRAND}" stroke-width="2.5"/>'
        for s in segments
        if len(s) > 1
    )
    desc = f"{len(known)} of {len(points)} points have a value; the table has each one."
    return _frame(
        chart_id,
        title,
        desc,
        _axis(top) + paths + "".join(dots) + _x_labels([lb for lb, _ in points], xs),
    )


def cohort_grid(
    chart_id: str, title: str, rows: Sequence[tuple[str, int, Sequence[int]]]
) -> Markup:
    """A heat grid: one row per cohort (label, size, active per month since), each cell
    shaded by the share of the cohort still buying."""
    months = max((len(active) for _, _, active in rows), default=1)
    cell_w = min(48.0, (WIDTH - 110) / max(months, 1))
    cell_h = 26
    height = 30 + cell_h * max(len(rows), 1)
    out = []
    for k in range(months):
        out.append(
            f'<text x="{110 + cell_w * k + cell_w / 2:.1f}" y="18" text-anchor="middle" '
            f'font-size="12" fill="{INK}">+{k}</text>'
        )
    for r, (label, size, active) in enumerate(rows):
        y = 26 + cell_h * r
        out.append(
            f'<text x="104" y="{y + 17}" text-anchor="end" font-size="12" fill="{INK}">'
            f"{escape(label)} ({size})</text>"
        )
        for k, n in enumerate(active):
            share = n / size if size else 0
            # Light to brand blue; text flips to white where the fill gets dark.
            fill = f"rgba(59,91,219,{0.08 + 0.92 * share:.2f})"
            ink = "#fff" if share > 0.55 else INK
            x = 110 + cell_w * k
            out.append(
                f'<rect class="mark" x="{x:.1f}" y="{y}" width="{cell_w - 2:.1f}" '
                f'height="{cell_h - 2}" '
                f'fill="{fill}"/><text x="{x + cell_w / 2 - 1:.1f}" y="{y + 17}" '
                f'text-anchor="middle" font-size="11" fill="{ink}">{share:.0%}</text>'
            )
    desc = f"{len(rows)} cohorts by month of first order; each cell the share still buying."
    return _frame(chart_id, title, desc, "".join(out), height)


def hbars(chart_id: str, title: str, points: Sequence[tuple[str, float]], unit: str) -> Markup:
    """A horizontal bar per point (label, value), labels on the left: a funnel's stages
    or rejection reasons, whose names are too long to sit under vertical bars at 390 px."""
    top = _scale_max([v for _, v in points])
    row_h, label_w = 28, 150
    height = PAD_T + row_h * max(len(points), 1) + 8
    inner_w = WIDTH - label_w - PAD_R - 60  # room for the value after the bar
    out = []
    for i, (label, value) in enumerate(points):
        y = PAD_T + row_h * i
        w = inner_w * value / top
        short = label if len(label) <= 22 else label[:21] + "…"
        out.append(
            f'<text x="{label_w - 6}" y="{y + 18}" text-anchor="end" font-size="12" '
            f'fill="{INK}">{escape(short)}</text>'
            f'<rect class="mark" x="{label_w}" y="{y + 4}" width="{w:.1f}" height="{row_h - 8}" '
            f'fill="{BRAND}"><title>{escape(label)}: {value:g} {escape(unit)}</title></rect>'
            f'<text x="{label_w + w + 6:.1f}" y="{y + 18}" font-size="12" fill="{INK}">'
            f"{value:g}</text>"
        )
    desc = f"{len(points)} bars; the table beside it has every value."
    return _frame(chart_id, title, desc, "".join(out), height)


# Distinguishable without colour vision (blue, orange, dark grey) and 3:1 against white.
SERIES_COLOURS = ("#3b5bdb", "#c2410c", "#4b5563")


def grouped_bars(
    chart_id: str,
    title: str,
    groups: Sequence[tuple[str, Sequence[float | None]]],
    series: Sequence[str],
    unit: str,
) -> Markup:
    """Per group (label, one value per series) a bar for each series; a None value (a
    cohort too young to have a 12-month figure) draws no bar. A legend names the series."""
    values = [v for _, vs in groups for v in vs if v is not None]
    top = _scale_max(values)
    inner_w = WIDTH - PAD_L - PAD_R
    inner_h = HEIGHT - PAD_T - PAD_B
    slot = inner_w / max(len(groups), 1)
    width = max(slot * 0.8 / max(len(series), 1), 1)
    rects, xs = [], []
    for i, (label, vs) in enumerate(groups):
        left = PAD_L + slot * i + slot * 0.1
        xs.append(left + width * len(series) / 2)
        for k, value in enumerate(vs):
            if value is None:
                continue
            h = inner_h * value / top
            rects.append(
                f'<rect class="mark" x="{left + width * k:.1f}" y="{PAD_T + inner_h - h:.1f}" '
                f'width="{width:.1f}" height="{h:.1f}" fill="{SERIES_COLOURS[k % 3]}">'
                f"<title>{escape(label)}, {escape(series[k])}: {value:g} {escape(unit)}</title>"
                "</rect>"
            )
    legend = "".join(
        f'<rect x="{PAD_L + 110 * k}" y="2" width="10" height="10" '
        f'fill="{SERIES_COLOURS[k % 3]}"/><text x="{PAD_L + 110 * k + 14}" y="11" '
        f'font-size="11" fill="{INK}">{escape(name)}</text>'
        for k, name in enumerate(series)
    )
    desc = (
        f"{len(groups)} groups of {len(series)} bars ({', '.join(series)}); "
        "the table beside it has every value."
    )
    body = _axis(top) + "".join(rects) + _x_labels([g for g, _ in groups], xs) + legend
    return _frame(chart_id, title, desc, body)
