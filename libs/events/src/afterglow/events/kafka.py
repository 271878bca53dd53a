"""Explicit Kafka client settings.

aiokafka's defaults are unsafe for us (acks=1, auto-commit on, no idempotence): every
client Afterglow builds comes from here, so the safe settings are written once.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.helpers import create_ssl_context


@dataclass(frozen=True)
class KafkaConfig:
    bootstrap_servers: str
    # The embedded Tansu broker has no idempotent producer: off only there.
    enable_idempotence: bool = True
    client_id: str = "afterglow"
    request_timeout_ms: int = 15000
    send_timeout_s: float = 15.0
    session_timeout_ms: int = 15000
    heartbeat_interval_ms: int = 3000
    max_poll_interval_ms: int = 120000
    max_poll_records: int = 500
    # See afterglow.kit.settings (KAFKA_FETCH_MAX_WAIT_MS): what an idle fetch may wait.
    fetch_max_wait_ms: int = 500
    # PLAINTEXT locally; SASL_SSL with SCRAM-SHA-512 against Strimzi KafkaUsers.
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = None
    ssl_cafile: str | None = None

    def connection_options(self) -> dict[str, Any]:
        """Options every client (producer, consumer, admin) needs to reach the cluster."""
        options: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers,
            "security_protocol": self.security_protocol,
        }
        if self.security_protocol in ("SSL", "SASL_SSL"):
            options["ssl_context"] = create_ssl_context(cafile=self.ssl_cafile)
        if self.security_protocol.startswith("SASL"):
            options.update(
                sasl_mechanism=self.sasl_mechanism or "SCRAM-SHA-512",
                sasl_plain_username=self.sasl_username,
                sasl_plain_password=self.sasl_password,
            )
        return options


_M = 0x5BD1E995  # murmur2's mixing constant
_WORDS = struct.Struct("<I")


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 of a key (what ``aiokafka.partitioner.murmur2`` returns, the
    same number for every input), written for CPython: the key read four bytes at a
    time by ``struct`` and one mask per product, where aiokafka's masks every byte and
    every step: 2.3 against 4.1 us for a 19-byte ``tenant:customer`` key. The relay
    hashes every new key it sends."""
    length = len(data)
    h = 0x9747B28C ^ length
    end = length & ~3
    for (k,) in _WORDS.iter_unpack(data[:end]):
        k = (k * _M) & 0xFFFFFFFF
        k = ((k ^ (k >> 24)) * _M) & 0xFFFFFFFF
        h = ((h * _M) & 0xFFFFFFFF) ^ k
    extra = length & 3
    if extra:
        if extra == 3:
            h ^= data[end + 2] << 16
        if extra >= 2:
            h ^= data[end + 1] << 8
        h = ((h ^ data[end]) * _M) & 0xFFFFFFFF
    h = ((h ^ (h >> 13)) * _M) & 0xFFFFFFFF
    return h ^ (h >> 15)


class KeyPartitioner:
    """aiokafka's default partitioner (its murmur2 of the key, modulo the partitions; a
    random available partition for no key), each key's hash remembered: a record lands
    on the partition every other producer of the topic chooses for its key. The hash is
    pure Python (:func:`murmur2`), and the outbox relay sends each customer's events (a
    journey step emits two or three) with the same key."""

    MAX_KEYS = 100_000  # then forgotten at once: a bound, not a cache policy

    def __init__(self) -> None:
        self._hashes: dict[bytes, int] = {}

    def __call__(
        self, key: bytes | None, all_partitions: Sequence[int], available: Sequence[int]
    ) -> int:
        if key is None:
            return random.choice(available or all_partitions)
        h = self._hashes.get(key)
        if h is None:
            if len(self._hashes) >= self.MAX_KEYS:
                self._hashes.clear()
            h = self._hashes[key] = murmur2(key) & 0x7FFFFFFF
        return all_partitions[h % len(all_partitions)]


def build_producer(config: KafkaConfig) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        **config.connection_options(),
        client_id=config.client_id,
        acks="all",
        enable_idempotence=config.enable_idempotence,
        request_timeout_ms=config.request_timeout_ms,
        linger_ms=5,
        partitioner=KeyPartitioner(),
    )


def build_consumer(config: KafkaConfig, *topics: str, group_id: str) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        *topics,
        **config.connection_options(),
        client_id=config.client_id,
        group_id=group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        session_timeout_ms=config.session_timeout_ms,
        heartbeat_interval_ms=config.heartbeat_interval_ms,
        max_poll_interval_ms=config.max_poll_interval_ms,
        max_poll_records=config.max_poll_records,
        fetch_max_wait_ms=config.fetch_max_wait_ms,
        request_timeout_ms=config.request_timeout_ms,
    )
