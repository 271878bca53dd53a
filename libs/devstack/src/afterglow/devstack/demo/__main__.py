"""``python -m afterglow.devstack.demo`` (``make demo``): the story against ``make
dev``'s services when they are up, else against a stack and services it starts itself."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from afterglow.devstack.demo.config import (
    CONSOLE_PORT,
    DEMO_ADMIN_TOKEN,
    DEV_PORTS,
    FAST_ENV,
    SERVICES,
)
from afterglow.devstack.demo.esp import Received, Receiver
from afterglow.devstack.demo.story import (
    Scenario,
    ScenarioError,
    email_through_catcher,
    print_summary,
    printer,
)


def _dev_services_up() -> dict[str, list[str]] | None:
    urls = {}
    for name, port in DEV_PORTS.items():
        url = f"http://127.0.0.1:{port}"
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code != 200:
                return None
        except httpx.HTTPError:
            return None
        urls[name] = [url]
    return urls


def show_message(m: Received) -> None:
    to = m.body.get("to") or {}
    printer(
        f"ESP got  [{m.body.get('channel')}] {m.kind} to {to.get('email') or to.get('phone')}:"
        f" {m.body.get('subject') or ''}"
    )
    for line in m.text.strip().splitlines()[:3]:
        print(f"            | {line}", flush=True)


def _catcher() -> contextlib.AbstractContextManager[tuple[int, str, str]]:
    """``make dev``'s mail catcher when it runs, else one of our own for this run."""
    from afterglow.devstack.mailcatcher import HTTP_PORT, SMTP_PORT, MailCatcher

    web = f"http://127.0.0.1:{HTTP_PORT}/"
    try:
        if httpx.get(web + "messages.json", timeout=1).status_code == 200:
            where = f"at {web} (make dev's mail catcher; .eml files in .afterglow/dev/mail)"
            return contextlib.nullcontext((SMTP_PORT, web, where))
    except httpx.HTTPError:
        pass

    @contextlib.contextmanager
    def own() -> Iterator[tuple[int, str, str]]:
        from afterglow.devstack.processes import free_port

        folder = Path(".afterglow/demo/mail")
        catcher = MailCatcher(folder, smtp_port=free_port(), http_port=free_port())
        with catcher.running():
            # This catcher's page goes with the demo; its files stay.
            yield catcher.smtp_port, catcher.url, f"as .eml files in {folder}/ (`make dev`"
            " keeps a catcher running with a page at http://127.0.0.1:8025/)"

    return own()


async def _demo(urls: dict[str, list[str]], admin_token: str) -> bool:
    t0 = time.monotonic()
    with Receiver(on_message=show_message).running() as receiver, _catcher() as (smtp, web, where):
        printer(f"ESP receiver listening on {receiver.url}; mail catcher at {web}")
        async with Scenario(urls, admin_token, receiver, say=printer, timeout=90) as sc:
            ok = True
            try:
                await sc.run()
                await email_through_catcher(sc, smtp, web, where)
            except ScenarioError as exc:
                ok = False
                printer(f"STOPPED: {exc}")
            print_summary(await sc.summary(), time.monotonic() - t0)
            show_console(urls, sc.key)
            return ok and not sc.problems


def show_console(urls: dict[str, list[str]], key: str) -> None:
    """Where to see it all as a shop owner would: the console, and a key to sign in
    with (the demo tenant's, which has every scope)."""
    console = (urls.get("console") or [f"http://127.0.0.1:{CONSOLE_PORT}"])[0]
    try:
        up = httpx.get(f"{console}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        up = False
    if not up:
        print(f"\nconsole: not running at {console} (`make dev` starts it)")
        return
    print(f"\nconsole: {console}/dashboard  (sign in with the API key {key})")


def main() -> int:
    t0 = time.monotonic()
    urls = _dev_services_up()
    if urls is not None:
        from afterglow.devstack.stack import dev_admin_token

        token = dev_admin_token(Path(".afterglow/dev"), create=False)
        if not token:
            print(
                "Services from `make dev` are up but their admin token is not in"
                " .afterglow/dev: set INGEST_ADMIN_TOKEN to it, or stop them and let the"
                " demo start its own.",
                file=sys.stderr,
            )
            return 2
        printer("using the services of `make dev` on ports 8001-8005")
        ok = asyncio.run(_demo(urls, token))
    else:
        from afterglow.devstack.services import running_services
        from afterglow.devstack.stack import running_stack

        state = Path(".afterglow/demo")
        printer("no `make dev` found: starting PostgreSQL, the broker and every service")
        with (
            running_stack(state, ephemeral=True) as stack,
            running_services(
                stack,
                state / "logs",
                # the console too, so the demo ends by showing where to look
                names=[*SERVICES, "console"],
                extra_env={**FAST_ENV, "INGEST_ADMIN_TOKEN": DEMO_ADMIN_TOKEN},
                ready_timeout=300,
            ) as svc,
        ):
            printer(f"stack and services ready in {time.monotonic() - t0:.0f} s")
            urls = {n: [p.url for p in procs] for n, procs in svc.processes.items()}
            ok = asyncio.run(_demo(urls, DEMO_ADMIN_TOKEN))
            print(
                "(these services stop with the demo: run `make dev`, then `make demo`, to browse)"
            )
    printer(f"demo {'done' if ok else 'FAILED'} in {time.monotonic() - t0:.0f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
