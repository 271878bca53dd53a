"""The Apache Kafka broker the suites start is formatted with a cluster id its storage
tool accepts: one starting with '-' is read as an option, and the format fails."""

import base64
import uuid

from afterglow.devstack import brokers


def test_a_cluster_id_never_starts_with_a_dash(monkeypatch):
    # 0xF8 as the first byte encodes to '-' in URL-safe base64: the first draw is
    # refused, the second kept.
    dash = uuid.UUID(bytes=b"\xf8" + bytes(15))
    plain = uuid.UUID(bytes=b"\x10" + bytes(15))
    draws = iter([dash, plain])
    monkeypatch.setattr(brokers.uuid, "uuid4", lambda: next(draws))
    assert base64.urlsafe_b64encode(dash.bytes).decode()[0] == "-"

    cid = brokers._kafka_cluster_id()

    assert cid == base64.urlsafe_b64encode(plain.bytes).decode().rstrip("=")
    assert len(cid) == 22
