"""A journey drawn as a flow diagram, in SVG on the server: its trigger, each stage with
what it waits for and its condition, each split's branches side by side, the goal, and
the live counts per stage (the orchestrator's ``step-counts`` of one version).

Top to bottom, one column: a journey is a sequence of stages, and a column reads the
same at 390 px as at 1280 px (the SVG scales). The diagram is ``role="img"`` with a
title and a description; the page lists the same steps as text beside it, which is what
a screen reader reads.

Pure: no I/O; every text escaped here (stage names, kinds and conditions come from the
tenant's YAML)."""

from __future__ import annotations

from dataclasses import dataclass, field
from html import escape
from typing import Any

from markupsafe import Markup

WIDTH = 640
X0, BOX_W = 20, 600
LINE = 18  # px per text line at font-size 13
GAP = 26  # the arrow between two boxes
CHAR_PX = 7.2  # a character at font-size 13, about: long texts are cut to fit
SPLIT_AFTER = LINE  # below a split, before what follows it in its stage

INK, BRAND, MUTED = "#1a1a1a", "#3b5bdb", "#4a4a4a"
WAIT_FILL, STAGE_FILL, SPLIT_FILL = "#eef1fb", "#ffffff", "#f6f7f9"
GOAL_FILL, GOAL_INK = "#e6f4ea", "#1e5e2f"


def _fit(text: str, width: float) -> str:
    """``text`` cut to what fits in ``width`` px, escaped (it comes from the tenant)."""
    most = max(4, int(width / CHAR_PX))
    cut = text if len(text) <= most else text[: most - 1] + "…"
    return escape(cut)


def _event(name: Any) -> str:
    return str(name).removeprefix("afterglow.").removesuffix(".v1")


def condition_text(when: Any) -> str:
    if not when:
        return ""
    if not isinstance(when, dict):
        return str(when)
    parts = []
    for k, v in when.items():
        if v is None:
            continue
        if isinstance(v, dict) and "amount" in v:
            v = f"{v['amount'] / 100:.2f} {v.get('currency', '')}".strip()
        elif isinstance(v, list):
            v = " or ".join(str(x) for x in v)
        parts.append(f"{k.replace('_', ' ')} {v}")
    return " and ".join(parts)


def wait_text(wait: Any) -> str:
    if not wait:
        return ""
    if not isinstance(wait, dict):
        return str(wait)
    text = str(wait.get("delay", ""))
    if wait.get("after"):
        text += f" after {_event(wait['after'])}"
    if wait.get("at"):
        text += f", at {wait['at']}"
    fallback = wait.get("fallback")
    if fallback:
        text += f", or {wait_text(fallback)}"
    return text


def action_text(action: dict[str, Any]) -> str:
    kind = action.get("type", "")
    detail = {
        "message": action.get("kind"),
        "survey": action.get("kind"),
        "wait_for": f"{_event(action.get('event'))} for {action.get('timeout')}",
        "exit": action.get("reason"),
        "escalate_support": action.get("reason"),
    }.get(kind)
    text = f"{str(kind).replace('_', ' ')} {detail}" if detail else str(kind).replace("_", " ")
    if action.get("when"):
        text += f" (if {condition_text(action['when'])})"
    return text


def counts_text(counts: dict[str, Any] | None) -> str:
    if not counts:
        return "0 here now · 0 entered"
    now = counts.get("now") or {}
    text = f"{now.get('running', 0)} here now"
    if now.get("paused"):
        text += f", {now['paused']} paused"
    return f"{text} · {counts.get('entered', 0)} entered"


@dataclass
class _Canvas:
    parts: list[str] = field(default_factory=list)
    y: float = 16

    def text(
        self,
        x: float,
        y: float,
        s: str,
        *,
        width: float,
        bold: bool = False,
        fill: str = INK,
        anchor: str = "start",
    ) -> None:
        weight = ' font-weight="600"' if bold else ""
        self.parts.append(
            f'<text x="{x:.0f}" y="{y:.0f}" font-size="13" fill="{fill}"{weight} '
            f'text-anchor="{anchor}">{_fit(s, width)}</text>'
        )

    def box(
        self,
        x: float,
        y: float,
        w: float,
        h: float,
        fill: str,
        stroke: str,
        *,
        rx: int = 8,
        dash: bool = False,
    ) -> None:
        d = ' stroke-dasharray="5 4"' if dash else ""
        self.parts.append(
            f'<rect x="{x:.0f}" y="{y:.0f}" width="{w:.0f}" height="{h:.0f}" rx="{rx}" '
            f'fill="{fill}" stroke="{stroke}" stroke-width="1.5"{d}/>'
        )

    def arrow(self, x: float, y1: float, y2: float) -> None:
        self.parts.append(
            f'<line x1="{x:.0f}" y1="{y1:.0f}" x2="{x:.0f}" y2="{y2 - 2:.0f}" stroke="{MUTED}" '
            f'stroke-width="1.5" marker-end="url(#flow-arrow)"/>'
        )

    def down(self) -> None:
        """The arrow from the box just drawn to the next one."""
        self.arrow(WIDTH / 2, self.y, self.y + GAP)
        self.y += GAP


def _pill(c: _Canvas, label: str, fill: str, stroke: str, *, dash: bool = False) -> None:
    c.box(X0 + 60, c.y, BOX_W - 120, LINE + 12, fill, stroke, rx=15, dash=dash)
    c.text(WIDTH / 2, c.y + LINE + 1, label, width=BOX_W - 140, anchor="middle")
    c.y += LINE + 12


def _split(c: _Canvas, action: dict[str, Any], top: float) -> float:
    """A split's branches side by side inside its stage; the height it took."""
    columns = [
        (f"if {condition_text(b.get('when'))}", b.get("actions") or [])
        for b in action.get("branches") or []
    ]
    columns.append(("otherwise", action.get("otherwise") or []))
    gap = 8
    inner = BOX_W - 24
    col_w = (inner - gap * (len(columns) - 1)) / len(columns)
    rows = max(len(acts) for _, acts in columns) or 1
    height = LINE * (rows + 2) + 8
    c.text(X0 + 12, top + LINE - 4, "split", width=inner, fill=MUTED)
    for i, (label, acts) in enumerate(columns):
        x = X0 + 12 + i * (col_w + gap)
        c.box(x, top + LINE, col_w, height - LINE, SPLIT_FILL, MUTED, rx=6)
        c.text(x + 8, top + 2 * LINE, label, width=col_w - 16, bold=True)
        for j, a in enumerate(acts or [{"type": "nothing"}]):
            c.text(x + 8, top + (3 + j) * LINE, action_text(a), width=col_w - 16)
    # Room for the next action's line below the branch boxes (its ascent touched them).
    return height + SPLIT_AFTER


def _stage_height(stage: dict[str, Any]) -> float:
    h = 2 * LINE + 2  # name, counts
    for a in stage.get("actions") or []:
        if a.get("type") == "split":
            rows = (
                max(
                    [len(b.get("actions") or []) for b in a.get("branches") or []]
                    + [len(a.get("otherwise") or [])]
                )
                or 1
            )
            h += LINE * (rows + 2) + 8 + SPLIT_AFTER
        else:
            h += LINE
    return h + 6


def diagram(definition: dict[str, Any], counts: dict[str, Any] | None) -> Markup:
    """The journey's flow with ``counts`` (one version of ``step-counts``; None when
    the key cannot read them or the version never ran)."""
    stages_counts = (counts or {}).get("stages") or {}
    c = _Canvas()
    trigger = definition.get("trigger") or {}
    starts = " or ".join(_event(e) for e in trigger.get("events") or ["order.placed"])
    if trigger.get("filter"):
        starts += f", if {condition_text(trigger['filter'])}"
    _pill(c, f"Starts on {starts}", WAIT_FILL, BRAND)
    for stage in definition.get("stages") or []:
        c.down()
        if stage.get("wait"):
            _pill(c, f"waits {wait_text(stage['wait'])}", WAIT_FILL, BRAND, dash=True)
            c.down()
        if stage.get("when"):
            _pill(c, f"only if {condition_text(stage['when'])}", SPLIT_FILL, MUTED, dash=True)
            c.down()
        top = c.y
        c.box(X0, top, BOX_W, _stage_height(stage), STAGE_FILL, BRAND)
        name = str(stage.get("name", ""))
        c.text(X0 + 12, top + LINE + 2, name, width=BOX_W / 2, bold=True)
        c.text(
            X0 + BOX_W - 12,
            top + LINE + 2,
            counts_text(stages_counts.get(name)),
            width=BOX_W / 2 - 24,
            fill=MUTED,
            anchor="end",
        )
        y = top + 2 * LINE + 8
        for a in stage.get("actions") or []:
            if a.get("type") == "split":
                y += _split(c, a, y - 4)
            else:
                c.text(X0 + 24, y, f"• {action_text(a)}", width=BOX_W - 48)
                y += LINE
        c.y = top + _stage_height(stage)
    goal = definition.get("goal")
    if goal:
        c.down()
        converted = (counts or {}).get("goal_conversions", 0)
        _pill(
            c,
            f"Goal: {_event(goal.get('event'))} within {goal.get('within')} · "
            f"{converted} converted",
            GOAL_FILL,
            GOAL_INK,
        )
    height = c.y + 16
    name = str(definition.get("name", ""))
    n = len(definition.get("stages") or [])
    desc = f"{n} stages from the trigger down to " + ("the goal" if goal else "the last stage")
    # Every text inside was escaped by this module (it comes from the tenant's YAML).
    return Markup(  # noqa: S704
        f'<svg class="chart flow" viewBox="0 0 {WIDTH} {height:.0f}" role="img" '
        'font-family="system-ui, sans-serif" '
        f'aria-labelledby="flow-t flow-d" xmlns="http://www.w3.org/2000/svg">'
        f'<title id="flow-t">Flow of journey {escape(name)}</title>'
        f'<desc id="flow-d">{escape(desc)}; the list beside it has every step.</desc>'
        f'<defs><marker id="flow-arrow" viewBox="0 0 10 10" refX="9" refY="5" '
        f'markerWidth="7" markerHeight="7" orient="auto-start-reverse">'
        f'<path d="M0,0 L10,5 L0,10 z" fill="{MUTED}"/></marker></defs>'
        + "".join(c.parts)
        + "</svg>"
    )
