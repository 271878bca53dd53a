"""``make test-kafka``: the broker-facing suite against Apache Kafka (KRaft) itself.

``python -m afterglow.devstack.kafka_suite [pytest args]``

1. fetch the broker and its runtime jars from Maven Central with ``mvn`` (the pom in
   ``tools/kafka/``) into ``.cache/kafka/<version>/lib``, once: a later run finds the
   folder complete (a marker written after mvn succeeded) and skips mvn;
2. format a fresh storage directory and start a single-node KRaft broker on a free
   loopback port;
3. run pytest on every test except ``*/tests/unit/*`` (they never touch a broker) with
   ``KAFKA_BOOTSTRAP_SERVERS`` pointed at it, the idempotent producer on and
   ``AFTERGLOW_BROKER=kafka`` (which un-skips the ``kafka_only`` tests);
4. stop the broker whatever happened (an exception, Ctrl-C, SIGTERM from CI) and exit
   with pytest's code; "no tests collected" (5) counts as a failure.

``KAFKA_VERSION`` picks another 4.x release; ``KAFKA_LIB_DIR`` points at jars you
already have (e.g. the ``libs/`` folder of an unpacked Kafka distribution).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

from afterglow.devstack.brokers import ApacheKafkaBroker
from afterglow.devstack.processes import _die_with_parent, pid_alive
from afterglow.devstack.suite import NOT_BROKER_FACING, phases

DEFAULT_KAFKA_VERSION = "4.4.0"
_COMPLETE = ".complete"
_NO_TESTS = 5


def _repo_root() -> Path:
    """The checkout holding tools/kafka/pom.xml: from the working directory (make runs
    at the root), else from this file (an editable install inside the checkout)."""
    for start in (Path.cwd(), Path(__file__).resolve()):
        for candidate in (start, *start.parents):
            if (candidate / "tools" / "kafka" / "pom.xml").is_file():
                return candidate
    raise FileNotFoundError("tools/kafka/pom.xml not found: run from the Afterglow checkout")


def fetch_jars(root: Path, version: str) -> Path:
    """The broker's classpath folder, filled by mvn on the first run only."""
    lib = root / ".cache" / "kafka" / version / "lib"
    if (lib / _COMPLETE).is_file():
        return lib
    mvn = shutil.which("mvn")
    if mvn is None:
        raise FileNotFoundError("mvn not found: install Maven (and a JDK 17+) for make test-kafka")
    # Copy into a scratch folder and rename it at the end, so an interrupted download
    # never leaves a half-filled lib/ that a later run would take for complete.
    partial = lib.with_name("lib.partial")
    shutil.rmtree(partial, ignore_errors=True)
    t0 = time.monotonic()
    print(f"kafka-suite: fetching Apache Kafka {version} jars with mvn ...", flush=True)
    subprocess.run(  # noqa: S603 - our pom, our arguments
        [
            mvn,
            "-q",
            "-B",
            "-f",
            str(root / "tools" / "kafka" / "pom.xml"),
            f"-Dkafka.version={version}",
            f"-DoutputDirectory={partial}",
            "dependency:copy-dependencies",
        ],
        check=True,
    )
    (partial / _COMPLETE).write_text(version + "\n")
    shutil.rmtree(lib, ignore_errors=True)
    partial.rename(lib)
    print(f"kafka-suite: jars fetched in {time.monotonic() - t0:.1f}s into {lib}", flush=True)
    return lib


class _Stopped(Exception):
    """Raised from a signal handler so that the finally blocks run."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_stopped(signum: int, _frame: FrameType | None) -> None:
    raise _Stopped(signum)


def run(pytest_args: list[str]) -> int:
    root = _repo_root()
    version = os.environ.get("KAFKA_VERSION", DEFAULT_KAFKA_VERSION)
    lib_env = os.environ.get("KAFKA_LIB_DIR")
    state = root / ".afterglow" / f"kafka-{os.getpid()}"
    broker: ApacheKafkaBroker | None = None
    pytest_proc: subprocess.Popen[bytes] | None = None
    # SIGTERM/SIGHUP (CI cancelling, a closed terminal) take the same path as Ctrl-C.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_stopped)
    try:
        lib = Path(lib_env) if lib_env else fetch_jars(root, version)
        broker = ApacheKafkaBroker(
            lib_dir=lib, data_dir=state / "data", log_file=state / "kafka.log"
        )
        t0 = time.monotonic()
        bootstrap = broker.start()
        print(
            f"kafka-suite: Apache Kafka {version} (KRaft, single node) ready at {bootstrap} "
            f"in {time.monotonic() - t0:.1f}s (storage format {broker.timings['format_s']:.1f}s, "
            f"broker start {broker.timings['start_s']:.1f}s)",
            flush=True,
        )
        env = {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "KAFKA_ENABLE_IDEMPOTENCE": "true",
            "AFTERGLOW_BROKER": "kafka",
        }
        worst = 0
        for phase in phases(pytest_args, root, leave_out=NOT_BROKER_FACING):
            # Unit tests never reach a broker: running them again here would prove nothing.
            args = [sys.executable, "-m", "pytest", "--ignore-glob=*/tests/unit/*", *phase]
            t0 = time.monotonic()
            pytest_proc = subprocess.Popen(  # noqa: S603 - this interpreter's pytest
                args, env=env, cwd=root, preexec_fn=_die_with_parent
            )
            code = pytest_proc.wait()
            print(
                f"kafka-suite: pytest {' '.join(phase)} exited {code} after "
                f"{time.monotonic() - t0:.1f}s",
                flush=True,
            )
            if code == _NO_TESTS:
                print("kafka-suite: no tests collected: that is a failure here", file=sys.stderr)
                code = 1
            worst = worst or code
        return worst
    except (KeyboardInterrupt, _Stopped) as exc:
        signum = exc.signum if isinstance(exc, _Stopped) else signal.SIGINT
        print(f"kafka-suite: {signal.Signals(signum).name}, stopping", file=sys.stderr)
        return 128 + signum
    finally:
        # A second Ctrl-C or SIGTERM must not cut the clean-up short (it is bounded);
        # SIGKILL still ends everything, the children dying with us (PDEATHSIG).
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        if pytest_proc is not None:
            _stop_pytest(pytest_proc)
            _stop_orphaned_postgres(root, pytest_proc.pid)
        if broker is not None:
            broker.stop()
            # Kept for a post-mortem: the state folder itself goes.
            if broker.log_file.exists():
                shutil.copyfile(broker.log_file, root / ".afterglow" / "kafka-last.log")
        shutil.rmtree(state, ignore_errors=True)


def _stop_pytest(proc: subprocess.Popen[bytes]) -> None:
    """SIGINT first: pytest turns it into KeyboardInterrupt and tears its fixtures down
    (PostgreSQL included). An async test may swallow it (a cancelled task), so a pytest
    still running after a short grace is killed and its PostgreSQL stopped for it."""
    for sig, grace in ((None, 2.0), (signal.SIGINT, 10.0), (signal.SIGKILL, 10.0)):
        if proc.poll() is not None:
            return
        if sig is not None:
            proc.send_signal(sig)
        try:
            proc.wait(grace)  # a Ctrl-C on a terminal reached pytest too: let it finish
        except subprocess.TimeoutExpired:
            continue


def _stop_orphaned_postgres(root: Path, pytest_pid: int) -> None:
    """The embedded PostgreSQL of a killed pytest outlives it (pg_ctl daemonises it):
    find it by the data directory the test stack names after pytest's pid, and stop that
    one postmaster by its pid."""
    state = Path(os.environ.get("AFTERGLOW_TEST_STATE", root / ".afterglow" / "test"))
    pgdata = (root / state).resolve() / f"pgdata-{pytest_pid}"
    pidfile = pgdata / "postmaster.pid"
    if not pidfile.is_file():
        return  # pytest stopped it (the normal case)
    try:
        pid = int(pidfile.read_text().split("\n", 1)[0])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except (OSError, ValueError):
        cmdline, pid = "", 0
    if pid and str(pgdata) in cmdline:
        os.kill(pid, signal.SIGINT)  # PostgreSQL's "fast" shutdown
        deadline = time.monotonic() + 10
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
        print(f"kafka-suite: stopped the PostgreSQL pytest left behind (pid {pid})", flush=True)
    shutil.rmtree(pgdata, ignore_errors=True)


def main() -> None:
    sys.exit(run(sys.argv[1:]))


if __name__ == "__main__":
    main()
