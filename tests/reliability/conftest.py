"""The fault suite's stack: Apache Kafka (KRaft) with its own storage, which survives a
restart, the embedded PostgreSQL, and every service as a process of its own.

The fault suite runs only under ``make test-faults`` (``AFTERGLOW_FAULTS=1``), the soak
only under ``make soak`` (``AFTERGLOW_SOAK=1``).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from afterglow.devstack.brokers import ApacheKafkaBroker
from afterglow.devstack.clockjump import ServiceClock, ensure_libfaketime
from afterglow.devstack.demo import FAST_ENV, SERVICES
from afterglow.devstack.faults import ADMIN_TOKEN
from afterglow.devstack.kafka_suite import DEFAULT_KAFKA_VERSION, _repo_root, fetch_jars
from afterglow.devstack.services import RunningServices, running_services
from afterglow.devstack.stack import Stack, running_stack

HERE = Path(__file__).parent
# Each module runs only when asked for by its make target: they take minutes (the soak an
# hour) and stop the broker and the database on purpose.
GATES = {
    "test_faults.py": ("AFTERGLOW_FAULTS", "make test-faults"),
    "test_soak.py": ("AFTERGLOW_SOAK", "make soak"),
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        path = Path(str(item.fspath))
        if HERE not in path.parents:
            continue
        variable, target = GATES.get(path.name, ("AFTERGLOW_FAULTS", "make test-faults"))
        if os.environ.get(variable) != "1":
            item.add_marker(pytest.mark.skip(reason=f"runs under {target}"))


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApacheKafkaBroker]:
    root = _repo_root()
    lib = os.environ.get("KAFKA_LIB_DIR")
    version = os.environ.get("KAFKA_VERSION", DEFAULT_KAFKA_VERSION)
    state = tmp_path_factory.mktemp("kafka")
    broker = ApacheKafkaBroker(
        lib_dir=Path(lib) if lib else fetch_jars(root, version),
        data_dir=state / "data",
        log_file=state / "kafka.log",
    )
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def stack(kafka_broker: ApacheKafkaBroker) -> Iterator[Stack]:
    # Under the checkout, as the plugin's: the embedded PostgreSQL runs as a user of its
    # own, which cannot enter pytest's owner-only temporary folders.
    state = _repo_root() / ".afterglow" / f"faults-{os.getpid()}"
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": kafka_broker.bootstrap_servers,
        "KAFKA_ENABLE_IDEMPOTENCE": "true",
        "AFTERGLOW_BROKER": "kafka",
    }
    previous = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        with running_stack(state, ephemeral=True) as s:
            os.environ.update(s.env())
            yield s
    finally:
        shutil.rmtree(state, ignore_errors=True)
        for k, v in previous.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="session")
def service_clock(tmp_path_factory: pytest.TempPathFactory) -> ServiceClock:
    """The services' wall clock, which the suite jumps (libfaketime in each process)."""
    return ServiceClock(ensure_libfaketime(), tmp_path_factory.mktemp("clock") / "offset")


@pytest.fixture(scope="session")
def services(
    stack: Stack, service_clock: ServiceClock, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServices]:
    with running_services(
        stack,
        tmp_path_factory.mktemp("service-logs"),
        names=list(SERVICES),
        extra_env={
            **FAST_ENV,
            "INGEST_ADMIN_TOKEN": ADMIN_TOKEN,
            # Readiness must say when a consumer is stuck, within the run.
            "READINESS_MAX_POLL_AGE_S": "20",
            **service_clock.env(),
        },
        ready_timeout=300,
    ) as svc:
        yield svc
