"""Parsing a received body: the JSON object every normalizer reads, cleaned. Below the
receivers (api.webhooks, api.operators' replay) and the processing worker, which parse
the same bytes the same way."""

from __future__ import annotations

from typing import Any

from afterglow.ingest import domain
from afterglow.kit.errors import BadRequest
from afterglow.kit.jsonbody import JsonBodyError, loads_bounded


def parse_json(body: bytes) -> dict[str, Any]:
    """A JSON object in UTF-8, within the depth bound: 10,000 nested objects raised
    RecursionError (a 500). Anything else is a 400, before anything is stored."""
    try:
        payload = loads_bounded(body.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise BadRequest("the body is not UTF-8", code="malformed_json") from exc
    except JsonBodyError as exc:
        raise BadRequest(str(exc), code=exc.code) from exc
    if not isinstance(payload, dict):
        raise BadRequest("the body must be a JSON object", code="malformed_json")
    return payload


def parse_payload(body: bytes, platform: str) -> dict[str, Any]:
    """The payload every normalizer reads: parsed, then cleaned in one pass (no NUL or
    control character, NFC, HTML entities decoded where the platform encodes them)."""
    payload: dict[str, Any] = domain.clean_payload(
        parse_json(body), html_encoded=platform in domain.HTML_ENCODED_PLATFORMS
    )
    return payload
