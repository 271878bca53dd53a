"""Run services as real processes (uvicorn via ``afterglow serve``), as ``make dev``, the
end-to-end tests and the demo do: one place that knows how to start, wait and stop them."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from afterglow.devstack.processes import free_port, spawn, stop
from afterglow.devstack.stack import Stack
from afterglow.kit.registry import discover_services


@dataclass
class ServiceProcess:
    name: str
    url: str
    log: Path
    proc: subprocess.Popen[bytes]
    argv: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class RunningServices:
    processes: dict[str, list[ServiceProcess]] = field(default_factory=dict)

    def url(self, name: str, instance: int = 0) -> str:
        return self.processes[name][instance].url

    def kill(self, name: str, instance: int) -> None:
        """SIGKILL one instance: no shutdown hook runs, as when a node dies."""
        self.processes[name][instance].proc.kill()
        self.processes[name][instance].proc.wait(10)

    def restart(self, name: str, instance: int, ready_timeout: float = 300) -> None:
        """Start a killed instance again, same port and settings, and wait until ready."""
        p = self.processes[name][instance]
        p.proc = spawn(p.argv, log=p.log, env=p.env)
        if not wait_ready(p.url, timeout=ready_timeout, proc=p.proc):
            raise RuntimeError(f"{name} at {p.url} did not become ready again: {p.log}")

    def add_instance(self, name: str, ready_timeout: float = 300) -> int:
        """One more process of a service, on a free port with the first one's settings
        (joining its consumer groups: a rebalance); returns its instance number."""
        first = self.processes[name][0]
        url = f"http://127.0.0.1:{free_port()}"
        argv = [*first.argv[:-1], url.rsplit(":", 1)[1]]  # same command, its own port
        env = {**first.env, "PUBLIC_BASE_URL": url}
        log = first.log.with_name(f"{name}-{len(self.processes[name])}.log")
        p = ServiceProcess(name, url, log, spawn(argv, log=log, env=env), argv, env)
        self.processes[name].append(p)
        if not wait_ready(p.url, timeout=ready_timeout, proc=p.proc):
            raise RuntimeError(f"{name} at {p.url} did not become ready: {p.log}")
        return len(self.processes[name]) - 1

    def remove_instance(self, name: str, instance: int) -> None:
        """Stop an instance gracefully (it leaves its groups: another rebalance)."""
        p = self.processes[name].pop(instance)
        stop(p.proc, timeout=25)


def wait_ready(url: str, timeout: float = 90, proc: subprocess.Popen[bytes] | None = None) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    return False


class KillableService:
    """One service as ``afterglow serve`` runs it, on a free port, for a test that kills
    it with SIGKILL mid-work (a node dying: no shutdown hook runs) and starts another in
    its place. ``env`` adds to (or overrides) the stack's environment."""

    def __init__(
        self, stack: Stack, name: str, log: Path, env: Mapping[str, str] | None = None
    ) -> None:
        self.name, self.log = name, log
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        argv = [sys.executable, "-m", "afterglow.kit.cli", "serve", name]
        argv += ["--host", "127.0.0.1", "--port", str(self.port)]
        proc_env = {
            **os.environ,
            **stack.env(),
            "LOG_JSON": "false",
            "PUBLIC_BASE_URL": self.url,
            **(env or {}),
        }
        self.proc = spawn(argv, log=log, env=proc_env)

    async def ready(self, timeout: float = 120) -> None:  # noqa: ASYNC109 - a startup bound
        if not await asyncio.to_thread(wait_ready, self.url, timeout, self.proc):
            tail = self.log.read_text()[-3000:] if self.log.exists() else ""
            raise RuntimeError(f"{self.name} did not start on {self.url}:\n{tail}")

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)


@contextlib.contextmanager
def killable_services(
    stack: Stack, log_dir: Path
) -> Iterator[Callable[[str, Mapping[str, str]], KillableService]]:
    """``start(name, env)`` starts a ``KillableService`` (logs in ``log_dir``, numbered in
    start order); whatever still runs at the end is killed, so a failed test leaves no
    service behind to take the next test's work."""
    started: list[KillableService] = []

    def start(name: str, env: Mapping[str, str]) -> KillableService:
        p = KillableService(stack, name, log_dir / f"{name}-{len(started)}.log", env)
        started.append(p)
        return p

    try:
        yield start
    finally:
        for p in started:
            if p.proc.poll() is None:
                p.kill()


@contextlib.contextmanager
def running_services(
    stack: Stack,
    log_dir: Path,
    *,
    names: list[str] | None = None,
    instances: int = 1,
    fixed_ports: bool = False,
    extra_env: Mapping[str, str] | None = None,
    ready_timeout: float = 90,
) -> Iterator[RunningServices]:
    """Start ``instances`` processes of each service and wait until all are ready.

    With ``fixed_ports`` the first instance listens on the service's default port (dev);
    otherwise every instance gets a free port (tests)."""
    specs = discover_services(set(names) if names else None)
    running = RunningServices()
    env = {**os.environ, **stack.env(), "LOG_JSON": "false", **(extra_env or {})}
    # Ports are chosen before any process starts, so that each one can be told where
    # the others listen (SERVICE_URLS: the console calls the services' REST APIs).
    ports = {
        (name, i): spec.default_port if fixed_ports and i == 0 else free_port()
        for name, spec in specs.items()
        for i in range(instances)
    }
    env["SERVICE_URLS"] = ",".join(
        f"{name}=http://127.0.0.1:{port}" for (name, i), port in ports.items() if i == 0
    )
    try:
        for name in specs:
            for i in range(instances):
                port = ports[(name, i)]
                url = f"http://127.0.0.1:{port}"
                log = log_dir / f"{name}-{i}.log"
                argv = [
                    sys.executable,
                    "-m",
                    "afterglow.kit.cli",
                    "serve",
                    name,
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                ]
                proc_env = {**env, "PUBLIC_BASE_URL": url}
                proc = spawn(argv, log=log, env=proc_env)
                running.processes.setdefault(name, []).append(
                    ServiceProcess(name, url, log, proc, argv, proc_env)
                )
        for procs in running.processes.values():
            for p in procs:
                if not wait_ready(p.url, timeout=ready_timeout, proc=p.proc):
                    tail = p.log.read_text()[-3000:] if p.log.exists() else ""
                    raise RuntimeError(f"{p.name} at {p.url} did not become ready:\n{tail}")
        yield running
    finally:
        for procs in running.processes.values():
            for p in procs:
                stop(p.proc, timeout=25)
