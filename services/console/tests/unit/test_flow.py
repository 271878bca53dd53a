"""The journey flow diagram: what it draws, the counts on each stage, escaping."""

from __future__ import annotations

import itertools
import re
import xml.etree.ElementTree as ET

from afterglow.console.flow import diagram

# The default journey as the orchestrator's API returns a definition (waits parsed).
DEFAULT_JOURNEY_BODY = {
    "name": "default",
    "trigger": {"events": ["order.placed"], "filter": None},
    "goal": {"event": "order.placed", "within": "P30D"},
    "stages": [
        {
            "name": "onboarding",
            "wait": None,
            "actions": [
                {
                    "type": "split",
                    "when": None,
                    "branches": [
                        {
                            "when": {"first_order": True, "tier": None},
                            "actions": [{"type": "message", "kind": "welcome"}],
                        }
                    ],
                    "otherwise": [{"type": "message", "kind": "thank_you"}],
                }
            ],
        },
        {
            "name": "check_in",
            "wait": {
                "delay": "P3D",
                "after": "order.delivered",
                "fallback": {"delay": "P5D", "after": "order.fulfilled"},
                "at": None,
            },
            "actions": [{"type": "message", "kind": "check_in"}],
        },
        {
            "name": "survey",
            "wait": {"delay": "P7D", "after": None, "fallback": None, "at": None},
            "when": {"consent": True},
            "actions": [{"type": "survey", "kind": "nps", "stop_after": "P7D"}],
        },
    ],
}

SVG = "{http://www.w3.org/2000/svg}"


def texts(svg: str) -> list[str]:
    root = ET.fromstring(svg)  # noqa: S314 - our own markup; well-formed, or this raises
    return [t.text or "" for t in root.iter(f"{SVG}text")]


def test_the_default_journey_is_drawn_with_its_waits_split_goal_and_counts():
    counts = {
        "version": 1,
        "stages": {
            "onboarding": {"now": {"running": 2}, "entered": 7},
            "check_in": {"now": {"running": 4, "paused": 1}, "entered": 5},
        },
        "goal_conversions": 3,
    }
    svg = str(diagram(DEFAULT_JOURNEY_BODY, counts))
    drawn = texts(svg)
    assert drawn[0] == "Starts on order.placed"
    assert "onboarding" in drawn and "check_in" in drawn
    assert "2 here now · 7 entered" in drawn
    assert "4 here now, 1 paused · 5 entered" in drawn
    assert "waits P3D after order.delivered, or P5D after order.fulfilled" in drawn
    # The split's branches side by side: the condition, then what each does.
    assert "if first order True" in drawn and "otherwise" in drawn
    assert "message welcome" in drawn and "message thank_you" in drawn
    assert drawn[-1] == "Goal: order.placed within P30D · 3 converted"
    # A stage that nobody reached yet says so rather than leaving a blank.
    last = DEFAULT_JOURNEY_BODY["stages"][-1]["name"]
    assert last not in counts["stages"] and drawn.count("0 here now · 0 entered") >= 1
    assert 'role="img"' in svg and '<title id="flow-t">Flow of journey default</title>' in svg


def test_stages_are_drawn_top_to_bottom_without_overlapping():
    svg = str(diagram(DEFAULT_JOURNEY_BODY, None))
    root = ET.fromstring(svg)  # noqa: S314 - our own markup
    stage_boxes = [
        (float(r.get("y", 0)), float(r.get("height", 0)))
        for r in root.iter(f"{SVG}rect")
        if r.get("width") == "600"
    ]
    assert len(stage_boxes) == len(DEFAULT_JOURNEY_BODY["stages"])
    for (y1, h1), (y2, _) in itertools.pairwise(stage_boxes):
        assert y2 >= y1 + h1, "a stage box overlaps the next"
    height = float(re.search(r'viewBox="0 0 640 (\d+)"', svg).group(1))  # type: ignore[union-attr]
    assert stage_boxes[-1][0] + stage_boxes[-1][1] < height


def test_tenant_text_is_escaped_and_long_text_cut_to_fit():
    journey = {
        "name": "vip",
        "trigger": {"events": ["order.placed"], "filter": {"tier": ["<b>gold</b>"]}},
        "stages": [{"name": "hello", "actions": [{"type": "message", "kind": "x" * 300}]}],
    }
    svg = str(diagram(journey, None))
    assert "<b>" not in svg and "&lt;b&gt;gold&lt;/b&gt;" in svg
    drawn = texts(svg)
    assert max(len(t) for t in drawn) < 100 and any(t.endswith("…") for t in drawn)
