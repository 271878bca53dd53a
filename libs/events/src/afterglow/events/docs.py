"""Generate docs/ from the catalog: one JSON Schema per event type and an AsyncAPI 3.0
document (``python -m afterglow.events.docs docs``). The catalog is the source of truth;
the generated files are for readers and for other languages' code generators."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from afterglow.events.catalog import ALL_EVENT_MODELS, topic_for
from afterglow.events.topics import TOPICS

CE_HEADERS: dict[str, Any] = {
    "type": "object",
    "required": [
        "ce_specversion",
        "ce_id",
        "ce_source",
        "ce_type",
        "ce_time",
        "ce_subject",
        "ce_tenantid",
    ],
    "properties": {
        "ce_specversion": {"const": "1.0"},
        "ce_id": {"type": "string", "description": "Unique, stable across retries"},
        "ce_source": {"type": "string", "description": "The producing service"},
        "ce_type": {"type": "string"},
        "ce_time": {"type": "string", "format": "date-time"},
        "ce_subject": {"type": "string", "description": "The customer id"},
        "ce_tenantid": {"type": "string"},
        "ce_traceparent": {"type": "string", "description": "W3C trace context"},
    },
}


def _schema_name(event_type: str) -> str:
    return event_type.removeprefix("afterglow.")


def json_schemas() -> dict[str, dict[str, Any]]:
    out = {}
    for model in ALL_EVENT_MODELS:
        event_type = model.model_fields["type"].default
        schema = model.model_json_schema()
        schema["$id"] = f"https://afterglow.dev/schemas/{event_type}.json"
        schema["title"] = event_type
        out[event_type] = schema
    return out


def asyncapi() -> dict[str, Any]:
    channels: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    for topic in TOPICS:
        channels[topic.name] = {
            "address": topic.name,
            "description": f"{topic.description}. Key: {{tenant}}:{{customer}}. "
            f"Partitions: {topic.partitions}. Dead letters: {topic.dlq}.",
            "messages": {},
        }
    for model in ALL_EVENT_MODELS:
        event_type = model.model_fields["type"].default
        name = _schema_name(event_type).replace(".", "_")
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        defs = schema.pop("$defs", {})
        messages[name] = {
            "name": event_type,
            "title": event_type,
            "summary": (model.__doc__ or "").strip().split("\n")[0] or event_type,
            "contentType": "application/json",
            "headers": CE_HEADERS,
            "payload": schema,
        }
        for def_name, def_schema in defs.items():
            messages.setdefault("__defs__", {})[def_name] = def_schema
        channel = topic_for(event_type)
        channels[channel]["messages"][name] = {"$ref": f"#/components/messages/{name}"}
    schemas = messages.pop("__defs__", {})
    for topic in TOPICS:
        operations[f"publish_{topic.name.replace('.', '_')}"] = {
            "action": "send",
            "channel": {"$ref": f"#/channels/{topic.name}"},
        }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "Afterglow events",
            "version": "1.0.0",
            "description": "CloudEvents 1.0 in Kafka binary mode: ce_* headers, JSON body.",
        },
        "defaultContentType": "application/json",
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": schemas},
    }


def write(target: Path) -> list[Path]:
    written = []
    schema_dir = target / "events"
    schema_dir.mkdir(parents=True, exist_ok=True)
    for event_type, schema in json_schemas().items():
        path = schema_dir / f"{event_type}.schema.json"
        path.write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n")
        written.append(path)
    path = target / "asyncapi.json"
    path.write_text(json.dumps(asyncapi(), indent=2) + "\n")
    written.append(path)
    return written


if __name__ == "__main__":
    files = write(Path(sys.argv[1] if len(sys.argv) > 1 else "docs"))
    print(f"wrote {len(files)} files")
