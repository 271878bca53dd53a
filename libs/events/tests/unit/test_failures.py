"""classify: the record's fault (poison) or the world's (transient), and the backoff."""

from __future__ import annotations

import errno

import asyncpg
import pytest
from aiokafka.errors import KafkaConnectionError, RecordTooLargeError, RequestTimedOutError
from pydantic import BaseModel, ValidationError
from sqlalchemy import exc as sa_exc

from afterglow.events import (
    MalformedEvent,
    PermanentError,
    RetryPolicy,
    TransientError,
    UnknownEventType,
    Verdict,
    classify,
)


def wrapped(sa_class: type[sa_exc.DBAPIError], orig: Exception, **kw: bool) -> Exception:
    """What SQLAlchemy raises from asyncpg: the driver error as ``orig`` and as cause."""
    err = sa_class("INSERT INTO x", {}, orig, **kw)
    err.__cause__ = orig
    return err


class _AppError(Exception):
    """Shaped like afterglow.kit.errors.AppError (which this library cannot import)."""

    def __init__(self, status_code: int) -> None:
        super().__init__(f"status {status_code}")
        self.status_code = status_code


def _validation_error() -> ValidationError:
    class Model(BaseModel):
        n: int

    try:
        Model.model_validate({"n": "not a number"})
    except ValidationError as exc:
        return exc
    raise AssertionError("unreachable")


TRANSIENT = {
    "connection refused": ConnectionRefusedError(errno.ECONNREFUSED, "refused"),
    "connection reset": ConnectionResetError(errno.ECONNRESET, "reset"),
    "unix socket gone (embedded PostgreSQL stopped)": FileNotFoundError(
        errno.ENOENT, "No such file or directory"
    ),
    "timeout": TimeoutError(),
    "pool checkout timeout": sa_exc.TimeoutError("QueuePool limit reached"),
    "operational error": wrapped(sa_exc.OperationalError, ConnectionRefusedError()),
    "interface error, connection closed": wrapped(
        sa_exc.InterfaceError, asyncpg.exceptions.ConnectionDoesNotExistError("closed")
    ),
    "invalidated connection": wrapped(
        sa_exc.DBAPIError, RuntimeError("socket gone"), connection_invalidated=True
    ),
    "serialization failure 40001": wrapped(
        sa_exc.OperationalError, asyncpg.exceptions.SerializationError("could not serialize")
    ),
    "serialization failure raised as IntegrityError": wrapped(
        sa_exc.IntegrityError, asyncpg.exceptions.SerializationError("could not serialize")
    ),
    "deadlock 40P01": wrapped(
        sa_exc.OperationalError, asyncpg.exceptions.DeadlockDetectedError("deadlock")
    ),
    "cannot connect now 57P03": asyncpg.exceptions.CannotConnectNowError("starting up"),
    "admin shutdown 57P01": wrapped(
        sa_exc.OperationalError, asyncpg.exceptions.AdminShutdownError("terminating")
    ),
    "too many connections 53300": asyncpg.exceptions.TooManyConnectionsError("too many"),
    "broker unreachable": KafkaConnectionError("no broker"),
    "broker timed out": RequestTimedOutError(),
    "explicit TransientError": TransientError("the ESP is down"),
    "429 from an API": _AppError(429),
}

POISON = {
    "malformed envelope": MalformedEvent("not JSON"),
    "unknown event type": UnknownEventType("afterglow.nope.v9"),
    "validation error": _validation_error(),
    "explicit PermanentError": PermanentError("cannot apply"),
    "4xx AppError": _AppError(422),
    "unique violation": wrapped(
        sa_exc.IntegrityError, asyncpg.exceptions.UniqueViolationError("duplicate key")
    ),
    "integrity error without SQLSTATE": wrapped(sa_exc.IntegrityError, RuntimeError("fk")),
    "numeric out of range 22003": wrapped(
        sa_exc.DBAPIError, asyncpg.exceptions.NumericValueOutOfRangeError("out of range")
    ),
    "PermanentError raised from a connection error": PermanentError("gave up"),
}
POISON["PermanentError raised from a connection error"].__cause__ = ConnectionResetError()

UNKNOWN = {
    "a bug": RuntimeError("boom"),
    "a KeyError": KeyError("missing"),
    "a non-retriable broker error": RecordTooLargeError(),
    "a 5xx AppError": _AppError(500),
}


class TestClassify:
    @pytest.mark.parametrize("exc", TRANSIENT.values(), ids=TRANSIENT.keys())
    def test_outages_are_transient(self, exc: Exception) -> None:
        assert classify(exc) is Verdict.TRANSIENT

    @pytest.mark.parametrize("exc", POISON.values(), ids=POISON.keys())
    def test_deterministic_rejections_are_poison(self, exc: Exception) -> None:
        assert classify(exc) is Verdict.POISON

    @pytest.mark.parametrize("exc", UNKNOWN.values(), ids=UNKNOWN.keys())
    def test_anything_else_is_unknown(self, exc: Exception) -> None:
        assert classify(exc) is Verdict.UNKNOWN

    def test_a_bug_caused_by_an_outage_is_transient(self) -> None:
        try:
            try:
                raise ConnectionRefusedError(errno.ECONNREFUSED, "refused")
            except ConnectionRefusedError:
                raise RuntimeError("handler could not load the profile") from None
        except RuntimeError as exc:
            # `from None` hides the cause from tracebacks, not from __context__.
            assert classify(exc) is Verdict.TRANSIENT

    def test_a_self_referencing_chain_ends(self) -> None:
        exc = RuntimeError("loop")
        exc.__context__ = exc
        assert classify(exc) is Verdict.UNKNOWN


class TestRetryPolicy:
    def test_transient_never_gives_up_poison_at_once_unknown_after_the_attempts(self) -> None:
        policy = RetryPolicy(attempts=3)
        assert not policy.gives_up(Verdict.TRANSIENT, 10_000)
        assert policy.gives_up(Verdict.POISON, 1)
        assert [policy.gives_up(Verdict.UNKNOWN, n) for n in (1, 2, 3)] == [False, False, True]

    def test_backoff_grows_is_capped_and_jittered(self) -> None:
        policy = RetryPolicy(base_delay_s=0.1, max_delay_s=1.0, max_transient_delay_s=8.0)
        for attempt, full in ((1, 0.1), (2, 0.2), (3, 0.4), (5, 1.0), (50, 1.0)):
            delays = {policy.delay(attempt) for _ in range(50)}
            assert all(full / 2 <= d <= full for d in delays)
            assert len(delays) > 1  # jitter: replicas do not retry in step
        assert all(4.0 <= policy.delay(10_000, transient=True) <= 8.0 for _ in range(50))
