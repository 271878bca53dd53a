"""The generated event docs are current and tell the truth about the wire format."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from afterglow.events import to_record
from afterglow.events.docs import asyncapi, json_schemas, write
from afterglow.events.envelope import CloudEvent
from afterglow.events.samples import sample_events
from afterglow.events.topics import TOPICS

ROOT = Path(__file__).resolve().parents[2]


class TestGeneratedDocs:
    def test_committed_docs_match_the_catalog(self, tmp_path):
        write(tmp_path)
        generated = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.json"))
        committed = sorted(p.relative_to(ROOT / "docs") for p in (ROOT / "docs").rglob("*.json"))
        assert generated == committed, "run `make docs` and commit docs/"
        for rel in generated:
            assert (tmp_path / rel).read_text() == (ROOT / "docs" / rel).read_text(), rel

    @pytest.mark.parametrize("data", sample_events(), ids=lambda d: d.type)
    def test_the_wire_body_validates_against_its_published_schema(self, data):
        schema = json_schemas()[data.type]
        jsonschema.Draft202012Validator.check_schema(schema)
        event = CloudEvent.new(data, tenant_id="acme", subject="c-1", source="contract")
        body = json.loads(to_record(event).value)
        body["type"] = data.type  # the wire carries it in ce_type
        jsonschema.Draft202012Validator(schema).validate(body)

    def test_asyncapi_lists_every_topic_and_every_message_once(self):
        doc = asyncapi()
        assert doc["asyncapi"] == "3.0.0"
        assert set(doc["channels"]) == {t.name for t in TOPICS}
        refs = [
            ref["$ref"].rsplit("/", 1)[1]
            for channel in doc["channels"].values()
            for ref in channel["messages"].values()
        ]
        assert sorted(refs) == sorted(doc["components"]["messages"])
        assert len(refs) == len(sample_events())
