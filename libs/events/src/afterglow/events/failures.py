"""Why a record failed, and how long to wait before trying it again.

One question decides what a consumer does with a failure: is it the record's fault or
the world's? :func:`classify` answers it for an exception, and everything that applies
records (today the per-record consumer, tomorrow a batch consumer) asks it:

* ``POISON``: the record itself cannot be applied, and retrying would give the same
  answer: it cannot be parsed, fails its schema, or its handler rejects it
  deterministically (a :class:`PermanentError`, a 4xx-class ``AppError``, a validation
  error, an integrity or data error). It goes to the DLQ at once.
* ``TRANSIENT``: the record is fine but something it needs is briefly away: PostgreSQL
  or the broker unreachable, restarting or shutting down, a connection reset, a
  timeout, a serialization failure or a deadlock. It is retried for as long as that
  lasts, never dead-lettered: dead-lettering it was how a 15 s database restart lost
  events for good (each was dead-lettered after 5 attempts in about 3 s).
* ``UNKNOWN``: anything else (a bug in a handler, a library error we have not seen).
  We cannot tell a bug that a deploy will fix from one that never will, so the old
  rule stays for these alone: a bounded number of attempts, then the DLQ, from which
  ``afterglow dlq redrive`` puts them back once the bug is fixed. A partition is never
  blocked for ever by a record nobody understands.

The verdict is read from the exception and the chain of causes behind it
(``__cause__``, ``__context__``, SQLAlchemy's ``orig``), outermost first: the first link
with an opinion decides, so a handler that raises ``PermanentError`` from a connection
error has said what it means. PostgreSQL errors are judged by their SQLSTATE, which
survives every wrapper.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Iterator
from dataclasses import dataclass

import asyncpg
from aiokafka.errors import KafkaError
from pydantic import ValidationError
from sqlalchemy import exc as sa_exc

from afterglow.events.envelope import MalformedEvent


class PermanentError(Exception):
    """A handler's verdict that retrying cannot help: the event goes to the DLQ now."""


class TransientError(Exception):
    """A handler's verdict that something it needs is briefly away: retry, never DLQ."""


class Verdict(enum.Enum):
    TRANSIENT = "transient"
    POISON = "poison"
    UNKNOWN = "unknown"


# SQLSTATEs that say "the database, not the statement": the whole class 08
# (connection exception), 53 (insufficient resources: too many connections, disk
# full), 57P0x (admin/crash shutdown, cannot connect now) and 58 (system/IO error),
# plus the two a retry is the documented answer to.
_TRANSIENT_SQLSTATE_CLASSES = ("08", "53", "58")
_TRANSIENT_SQLSTATES = frozenset(
    {
        "40001",  # serialization_failure
        "40P01",  # deadlock_detected
        "55P03",  # lock_not_available (lock_timeout)
        "57014",  # query_canceled (statement_timeout)
        "57P01",  # admin_shutdown
        "57P02",  # crash_shutdown
        "57P03",  # cannot_connect_now (starting up, shutting down, recovering)
        "57P05",  # idle_session_timeout
    }
)
# Deterministic for the same record: it will fail the same way every time.
_POISON_SQLSTATE_CLASSES = ("22", "23")  # data exception, integrity constraint violation

# 4xx statuses that are about timing, not about the request.
_RETRYABLE_4XX = frozenset({408, 425, 429})


def classify(exc: BaseException) -> Verdict:
    """Transient, poison or unknown: see the module docstring for the rules."""
    for link in _chain(exc):
        verdict = _classify_one(link)
        if verdict is not Verdict.UNKNOWN:
            return verdict
    return Verdict.UNKNOWN


def _chain(exc: BaseException, limit: int = 8) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen and len(seen) < limit:
        seen.add(id(current))
        yield current
        orig = getattr(current, "orig", None)  # SQLAlchemy's wrapped DBAPI error
        if isinstance(orig, BaseException) and id(orig) not in seen:
            current = orig
        else:
            current = current.__cause__ or current.__context__


def _classify_one(exc: BaseException) -> Verdict:
    # Explicit verdicts first: the handler knows best.
    if isinstance(exc, TransientError):
        return Verdict.TRANSIENT
    if isinstance(exc, (PermanentError, MalformedEvent, ValidationError)):
        return Verdict.POISON
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        return Verdict.TRANSIENT
    sqlstate = _sqlstate(exc)
    if sqlstate:
        if sqlstate in _TRANSIENT_SQLSTATES or sqlstate.startswith(_TRANSIENT_SQLSTATE_CLASSES):
            return Verdict.TRANSIENT
        if sqlstate.startswith(_POISON_SQLSTATE_CLASSES):
            return Verdict.POISON
    if isinstance(exc, (sa_exc.IntegrityError, sa_exc.DataError)):
        return Verdict.POISON  # no SQLSTATE to say otherwise (checked above)
    if isinstance(
        exc,
        (
            # Pool checkout timed out, connection invalidated, server unreachable.
            sa_exc.TimeoutError,
            sa_exc.DisconnectionError,
            sa_exc.OperationalError,
            sa_exc.InterfaceError,
            asyncpg.PostgresConnectionError,
            asyncpg.exceptions.ConnectionDoesNotExistError,
            asyncpg.exceptions.CannotConnectNowError,
            # ConnectionRefused/Reset, BrokenPipe, TimeoutError, and the
            # FileNotFoundError of a Unix socket whose server is gone: the
            # environment, never the record.
            OSError,
        ),
    ):
        return Verdict.TRANSIENT
    if isinstance(exc, KafkaError) and exc.retriable:
        return Verdict.TRANSIENT
    status = getattr(exc, "status_code", None)  # afterglow.kit.errors.AppError and kin
    if isinstance(status, int) and 400 <= status < 500:
        return Verdict.TRANSIENT if status in _RETRYABLE_4XX else Verdict.POISON
    return Verdict.UNKNOWN


def _sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE of a driver error, or of the driver error SQLAlchemy wraps (an
    ``IntegrityError`` may carry a serialization failure's 40001)."""
    for candidate in (exc, getattr(exc, "orig", None)):
        state = getattr(candidate, "sqlstate", None) or getattr(candidate, "pgcode", None)
        if isinstance(state, str) and len(state) == 5:
            return state
    return None


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how fast a failing record is tried again.

    ``attempts`` bounds the tries of an UNKNOWN failure before the DLQ; TRANSIENT
    failures ignore it and back off up to ``max_delay_s`` for as long as they last.
    """

    attempts: int = 5
    base_delay_s: float = 0.2
    max_delay_s: float = 5.0
    # A transient outage backs off further than a bug does, but not much: each retry
    # is one connection attempt per stalled partition, and with a 30 s cap the fault
    # suite saw partitions idle up to half a minute after PostgreSQL was back.
    max_transient_delay_s: float = 10.0

    def delay(self, attempt: int, *, transient: bool = False) -> float:
        """Capped exponential backoff with jitter (replicas do not retry in step)."""
        cap = self.max_transient_delay_s if transient else self.max_delay_s
        exponent = min(max(attempt - 1, 0), 32)  # no overflow after days of outage
        capped = min(cap, self.base_delay_s * 2**exponent)
        return capped * (0.5 + random.random() / 2)

    def gives_up(self, verdict: Verdict, attempt: int) -> bool:
        """Whether a record that failed ``attempt`` times with ``verdict`` goes to the DLQ."""
        if verdict is Verdict.POISON:
            return True
        if verdict is Verdict.TRANSIENT:
            return False
        return attempt >= self.attempts
