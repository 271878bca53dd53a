"""``afterglow-stack``: what ``make dev`` runs.

afterglow-stack up        start the stack and every service, print the URLs, and
                          stop everything on Ctrl-C
afterglow-stack env       start the stack only and print its environment
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import time
from pathlib import Path
from types import FrameType

from afterglow.devstack.mailcatcher import MailCatcher
from afterglow.devstack.services import running_services
from afterglow.devstack.stack import ADMIN_TOKEN_FILE, dev_admin_token, running_stack


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
    only = set(args.only) if args.only else None
    with running_stack(state, ephemeral=False, services=only) as stack:
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
        token = dev_admin_token(state, create=True)
        try:
            catcher = MailCatcher(state / "mail")
        except OSError as exc:
            # A second stack on this machine: its catcher already has the ports.
            print(f"mail catcher not started ({exc}); ports 1025/8025 are taken", file=sys.stderr)
            catcher = None
        with (
            catcher.running() if catcher else contextlib.nullcontext(),
            running_services(
                stack,
                state / "logs",
                names=args.only,
                fixed_ports=True,
                extra_env={"INGEST_ADMIN_TOKEN": token or ""},
            ) as svc,
        ):
            for name, procs in svc.processes.items():
                print(f"{name:12} {procs[0].url}/docs   (log: {procs[0].log})")
            if catcher is not None:
                print(
                    f"mail catcher SMTP 127.0.0.1:{catcher.smtp_port}, read at {catcher.url}"
                    f" (files: {catcher.folder})"
                )
            print(f"orders-ingest admin token: in {state / ADMIN_TOKEN_FILE} (make demo reads it)")
            print("Afterglow is running. Ctrl-C stops everything.", flush=True)
            while not stopping:
                for procs in svc.processes.values():
                    for p in procs:
                        if p.proc.poll() is not None:
                            print(
                                f"{p.name} exited with {p.proc.returncode}; see {p.log}",
                                file=sys.stderr,
                            )
                            stopping = True
                time.sleep(0.5)
    print("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
