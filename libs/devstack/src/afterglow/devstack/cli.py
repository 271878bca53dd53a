"""``afterglow-stack``: what ``make dev`` runs.

afterglow-stack up        start the stack and every service, print the URLs, and
                          stop everything on Ctrl-C
afterglow-stack env       start the stack only and print its environment
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path
from types import FrameType

import httpx

from afterglow.devstack.processes import spawn, stop
from afterglow.devstack.stack import running_stack
from afterglow.kit.registry import discover_services


def _wait_ready(url: str, timeout: float = 60) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="afterglow-stack")
    parser.add_argument("command", choices=["up", "env"], nargs="?", default="up")
    parser.add_argument("--state-dir", default=".afterglow/dev")
    parser.add_argument("--only", nargs="*", help="services to start (default: all)")
    args = parser.parse_args(argv)

    stopping = False

    def on_signal(signum: int, _: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    state = Path(args.state_dir)
    with running_stack(state, ephemeral=False) as stack:
        print(f"PostgreSQL: {stack.database_url}")
        print(
            f"Kafka:      {stack.kafka_bootstrap_servers}"
            f" ({'embedded Tansu' if stack.embedded_broker else 'external'})"
        )
        if args.command == "env":
            for k, v in stack.env().items():
                print(f"export {k}='{v}'")
            while not stopping:
                time.sleep(0.5)
            return 0
        services = discover_services()
        chosen = args.only or list(services)
        procs = {}
        env = {**os.environ, **stack.env(), "LOG_JSON": "false"}
        for name in chosen:
            spec = services[name]
            procs[name] = spawn(
                [
                    sys.executable,
                    "-m",
                    "afterglow.kit.cli",
                    "serve",
                    name,
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(spec.default_port),
                ],
                log=state / "logs" / f"{name}.log",
                env={**env, "PUBLIC_BASE_URL": f"http://127.0.0.1:{spec.default_port}"},
            )
        for name in chosen:
            url = f"http://127.0.0.1:{services[name].default_port}"
            ok = _wait_ready(url)
            status = "ready" if ok else f"NOT READY, see {state / 'logs' / name}.log"
            print(f"{name:22} {url}/docs  {status}")
        print("Afterglow is running. Logs in", state / "logs", "- Ctrl-C stops everything.")
        try:
            while not stopping:
                for name, proc in procs.items():
                    if proc.poll() is not None:
                        print(f"{name} exited with {proc.returncode}; see its log", file=sys.stderr)
                        stopping = True
                time.sleep(0.5)
        finally:
            for proc in procs.values():
                stop(proc, timeout=25)
    print("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
