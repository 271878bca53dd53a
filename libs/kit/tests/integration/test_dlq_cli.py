"""afterglow dlq list / show / redrive against the real broker (a DLQ of its own)."""

from __future__ import annotations

import asyncio
import json
import uuid

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from afterglow.kit import cli


async def _dead_letter(bootstrap: str, dlq: str, target: str, event_id: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(t, 1, 1) for t in (dlq, target)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        headers = [
            ("ce_id", event_id.encode()),
            ("ce_tenantid", b"t-cli"),
            ("x-error", b"PermanentError: nope"),
            ("x-consumer", b"loyalty.main"),
            ("x-original-topic", target.encode()),
        ]
        await producer.send_and_wait(dlq, b'{"a": 1}', key=b"t-cli:c-1", headers=headers)
    finally:
        await producer.stop()


def test_list_show_and_redrive_a_dead_letter(stack, capsys) -> None:  # type: ignore[no-untyped-def]
    target = f"afterglow.cli-{uuid.uuid4().hex[:6]}"
    dlq, event_id = target + ".dlq", f"e-{uuid.uuid4().hex[:8]}"
    asyncio.run(_dead_letter(stack.kafka_bootstrap_servers, dlq, target, event_id))

    assert cli.main(["dlq", "list", target]) == 0
    listed = capsys.readouterr().out
    assert f"{dlq}: 1 to redrive" in listed and event_id in listed

    assert cli.main(["dlq", "show", dlq, "0"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["error"] == "PermanentError: nope" and shown["body"] == {"a": 1}

    assert cli.main(["dlq", "redrive", dlq, "--dry-run"]) == 0
    assert f"{dlq}: would redrive 1" in capsys.readouterr().out
    assert cli.main(["dlq", "redrive", dlq]) == 0
    assert f"{dlq}: redriven 1" in capsys.readouterr().out
    assert cli.main(["dlq", "list", dlq]) == 0
    assert f"{dlq}: 0 to redrive" in capsys.readouterr().out

    assert cli.main(["dlq", "show", dlq, "5"]) == 1
    assert "no dead letter" in capsys.readouterr().err
