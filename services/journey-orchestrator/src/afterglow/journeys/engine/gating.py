"""Review gating (DOMAIN.md, "Law"): a definition that asks for reviews depending on how
the customer feels is refused."""

from __future__ import annotations

from typing import Any

from afterglow.journeys.engine.definition import (
    Condition,
    DefinitionError,
    ExitAction,
    Journey,
    MessageAction,
    RequestReviewAction,
    SplitAction,
)

REVIEW_MESSAGE_KINDS = frozenset({"review_request", "review_reminder"})
ALL_BANDS = frozenset({"promoter", "passive", "detractor", "none"})


def _on_sentiment(cond: Condition | None) -> bool:
    return cond is not None and cond.nps_band is not None and set(cond.nps_band) < ALL_BANDS


def _asks_for_review(action: Any) -> bool:
    return isinstance(action, RequestReviewAction) or (
        isinstance(action, MessageAction) and action.kind in REVIEW_MESSAGE_KINDS
    )


def check_review_gating(journey: Journey) -> None:
    """Refuse a definition that asks for reviews depending on how the customer feels.

    Asking only happy customers ("review gating") breaks the FTC's reviews rule and
    Google's and the review platforms' policies. Caught: a review ask under an NPS-band
    condition (its own, its stage's, a split branch's, or the ``otherwise`` of a split on
    bands), and an exit on an NPS band placed before a review ask, which drops unhappy
    customers before they are asked. Waiting on a band (service recovery first) is fine.
    Raises :class:`DefinitionError` pointing at the culprit."""
    gated_exits: list[str] = []

    def walk(actions: list[Any], path: str, gated: bool) -> None:
        for i, action in enumerate(actions):
            here = f"{path}[{i}]"
            on_band = gated or _on_sentiment(action.when)
            if _asks_for_review(action):
                if on_band:
                    _gating(f"{here}", "asks for a review only for some NPS bands")
                if gated_exits:
                    _gating(
                        gated_exits[0],
                        f"exits customers by NPS band before the review ask at {here}",
                    )
            elif isinstance(action, ExitAction) and on_band:
                gated_exits.append(here)
            elif isinstance(action, SplitAction):
                banded = any(_on_sentiment(b.when) for b in action.branches)
                for j, branch in enumerate(action.branches):
                    walk(
                        branch.actions,
                        f"{here}.branches[{j}].actions",
                        on_band or _on_sentiment(branch.when),
                    )
                walk(action.otherwise, f"{here}.otherwise", on_band or banded)

    for n, stage in enumerate(journey.stages):
        walk(stage.actions, f"stages[{n}].actions", _on_sentiment(stage.when))


def _gating(path: str, what: str) -> None:
    message = (
        f"{what}: that is review gating, which the FTC reviews rule and the review "
        "platforms forbid; ask every customer (a band may still delay the ask)"
    )
    raise DefinitionError(path, message, [{"field": path, "message": message}])
