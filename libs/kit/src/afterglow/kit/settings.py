"""Settings every service shares, read from the environment (pydantic-settings).

A service subclasses :class:`ServiceSettings` and adds its own fields, named with the
service as prefix (``FEEDBACK_TOKEN_SECRET``), so one environment can hold them all.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from afterglow.events.kafka import KafkaConfig


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    database_url: str = "postgresql+asyncpg://postgres@localhost:5432/afterglow"
    kafka_bootstrap_servers: str = "localhost:9092"
    # On by default; off only for the embedded Tansu broker, which lacks it.
    kafka_enable_idempotence: bool = True
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: str = "SCRAM-SHA-512"
    kafka_sasl_username: str | None = None
    kafka_sasl_password: str | None = None
    kafka_ssl_cafile: str | None = None
    # all: API and consumers in one process (dev); api or worker: one role (Kubernetes).
    service_role: Literal["all", "api", "worker"] = "all"
    # Create missing topics at start-up (dev, tests); in production Strimzi owns them.
    ensure_topics: bool = True
    kafka_topic_replication_factor: int = 1
    log_level: str = "INFO"
    log_json: bool = True
    db_pool_size: int = 10
    db_max_overflow: int = 10
    # The group commits' writer tasks (redemptions, API-key lookups) have a pool of
    # their own, without the ping on checkout (afterglow.kit.db.writer_engine).
    db_writer_pool_size: int = Field(default=4, ge=1)
    consumer_retry_attempts: int = 5
    consumer_retry_base_delay_s: float = 0.2
    # Records per poll over all partitions. aiokafka fills a poll from one partition's
    # fetched records before the next partition's, so a poll of 500 out of a backlog
    # held one or two partitions: their transactions ran one or two at a time (however
    # many consumer_parallel_partitions allows) and the process waited on PostgreSQL
    # between them. A poll of 4,000 spans most partitions. A transaction holds one
    # partition's share of a poll, at most one fetch of it (max_partition_fetch_bytes;
    # 768 records at most in the journeys bench's polls), unless the poll is coalesced
    # (consumer_coalesce_records). From a backlog, 500 -> 4,000: journeys order.placed
    # 2,784-3,060 -> 3,201-3,660/s (15,000 events, three runs each); loyalty 2,452 and
    # 2,283 -> 2,944 and 2,449/s; feedback 5,759 and 5,536 -> 7,070 and 6,449/s;
    # referrals 3,279 and 2,216 -> 2,304 and 2,342/s (2,000 events: within its noise).
    consumer_max_records: int = Field(default=4_000, ge=1, le=10_000)
    # Partitions of one poll a consumer applies at once (each a transaction on its own
    # pooled connection): keep it well under db_pool_size, which every consumer, worker
    # and request of the process shares.
    consumer_parallel_partitions: int = Field(default=4, ge=1, le=64)
    # A poll of at most this many records over several partitions is applied in one
    # transaction (afterglow.events.consumer): a steady trickle over many partitions
    # otherwise cost a transaction per record or two. 0: a transaction per partition.
    consumer_coalesce_records: int = Field(default=100, ge=0, le=10_000)
    # A member that polls no more for this long leaves its group, and a rebalance waits
    # at most this long for members to rejoin (aiokafka sends it as the rebalance
    # timeout). Bounds how long a member left behind by a stop that timed out holds
    # up every process joining its group.
    kafka_max_poll_interval_ms: int = Field(default=120_000, ge=10_000)
    # A member that sends no heartbeat for this long is dropped from its group; the
    # heartbeat goes every fifth of it. The embedded Tansu broker also holds every
    # join for half of it, waiting for more members, so the local stacks run the
    # minimum Kafka accepts (6 s, afterglow.devstack.stack) to start in 3 s, not 8.
    kafka_session_timeout_ms: int = Field(default=15_000, ge=6_000, le=300_000)
    # How long the broker may hold a consumer's fetch when it has nothing new. Kafka
    # answers as soon as a record arrives; the embedded Tansu broker holds the fetch
    # to its end, so every hop of an event costs ~130 ms at aiokafka's 500 and ~30 ms
    # at 100. Not lowered by default: at 100 the broker's idle CPU tripled (44 to 140
    # ms/s) and a rebalance on Tansu outlasted 20 s in the journeys suite, every run.
    kafka_fetch_max_wait_ms: int = Field(default=500, ge=1, le=10_000)
    relay_poll_interval_s: float = 1.0
    # A consumer that has not polled for this long makes /readyz fail: a stuck
    # consumer is still a live process.
    readiness_max_poll_age_s: float = 60.0
    public_base_url: str = "http://localhost:8000"
    # Let tenant-chosen URLs (messaging endpoints, platform APIs) reach private,
    # loopback and link-local addresses. Off in production (see kit.outbound); on for
    # the dev stack and tests, whose receivers listen on 127.0.0.1.
    outbound_allow_private: bool = False
    # Keys that seal credentials stored in the database (afterglow.kit.secretbox):
    # "<id>:<base64 32-byte key>,..."; the first seals, all open. Required: a service
    # refuses to start without it (see required_secrets).
    secrets_keys: str | None = None

    def required_secrets(self) -> dict[str, str | None]:
        """The secrets this service cannot run without, by environment variable. A
        service with signing secrets adds its own (FEEDBACK_TOKEN_SECRET ...)."""
        return {"SECRETS_KEYS": self.secrets_keys}

    def kafka(self, client_id: str) -> KafkaConfig:
        return KafkaConfig(
            bootstrap_servers=self.kafka_bootstrap_servers,
            enable_idempotence=self.kafka_enable_idempotence,
            client_id=client_id,
            security_protocol=self.kafka_security_protocol,
            sasl_mechanism=self.kafka_sasl_mechanism,
            sasl_username=self.kafka_sasl_username,
            sasl_password=self.kafka_sasl_password,
            ssl_cafile=self.kafka_ssl_cafile,
            max_poll_interval_ms=self.kafka_max_poll_interval_ms,
            session_timeout_ms=self.kafka_session_timeout_ms,
            heartbeat_interval_ms=self.kafka_session_timeout_ms // 5,
            fetch_max_wait_ms=self.kafka_fetch_max_wait_ms,
        )


# Long enough that it was generated, not typed as a placeholder.
MIN_SECRET_LENGTH = 16


class MissingSecrets(RuntimeError):
    """A service was started without a secret it needs."""


def missing_secrets(service: str, secrets: Mapping[str, str | None]) -> MissingSecrets | None:
    """The refusal to start when a secret is missing or too short, naming each one;
    None when all are there.

    There are no default secrets: a default is public (it is in this repository), and
    a survey or review token signed with a public secret can be forged for any tenant's
    customer. ``make dev`` and the test plugin supply dev values explicitly; deploy/
    takes them from Kubernetes Secrets."""
    problems = [
        f"{name} is not set" if not value else f"{name} is shorter than {MIN_SECRET_LENGTH}"
        for name, value in secrets.items()
        if not value or len(value) < MIN_SECRET_LENGTH
    ]
    if not problems:
        return None
    return MissingSecrets(
        f"{service} refuses to start: "
        + "; ".join(problems)
        + ". Set them in the environment (a long random value each; SECRETS_KEYS from "
        "`afterglow secrets-key`). make dev and the tests set dev values themselves."
    )
