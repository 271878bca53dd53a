"""The default journey, read from ``default_journey.yaml`` next to this module and
validated (schema and review gating) at import, so a broken default stops the service
at start-up instead of failing the first order."""

from __future__ import annotations

from importlib.resources import files
from typing import Any

import yaml

from afterglow.journeys.engine.definition import parse_journey
from afterglow.journeys.engine.gating import check_review_gating

DEFAULT_JOURNEY_BODY: dict[str, Any] = yaml.safe_load(
    files("afterglow.journeys.engine").joinpath("default_journey.yaml").read_text(encoding="utf-8")
)
DEFAULT_JOURNEY = parse_journey(DEFAULT_JOURNEY_BODY)
check_review_gating(DEFAULT_JOURNEY)
