"""Structured JSON logs carrying the trace and event ids of the work in progress."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

from afterglow.events.context import current_event_id, current_traceparent

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self._service = service

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "service": self._service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if (event_id := current_event_id.get()) is not None:
            out["event_id"] = event_id
        if (ids := _trace_ids(current_traceparent.get())) is not None:
            # The span of the work in progress when tracing is on; off, the span of the
            # cause (the request or event this work continues), whose trace it shares.
            out["trace_id"], out["span_id"] = ids
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def _trace_ids(traceparent: str | None) -> tuple[str, str] | None:
    """(trace id, span id) of a W3C traceparent ``00-<trace>-<span>-<flags>``."""
    if traceparent and traceparent.count("-") == 3:
        _, trace, span, _ = traceparent.split("-")
        return trace, span
    return None


def configure_logging(service: str, level: str = "INFO", json_logs: bool = True) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if json_logs:
        handler.setFormatter(JsonFormatter(service))
    else:
        handler.setFormatter(
            logging.Formatter(f"%(asctime)s {service} %(levelname)s %(name)s: %(message)s")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiokafka logs every rebalance and connection retry at INFO/ERROR; keep warnings.
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
