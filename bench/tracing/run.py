"""What the SQLAlchemy and httpx instrumentations cost per statement and per call.

Off (no OTEL_EXPORTER_OTLP_ENDPOINT, the default) the engine and client pass through
``instrument_engine`` / ``instrument_http`` untouched: the figure must equal its floor
(the same engine or client never passed through them), ratio ~1.00. On (an in-memory
exporter, as cheap as an exporter gets) each statement and call inside an apply span is
a span of its own: the figure against the floor of the same apply span without them.
Each measure is the event loop thread's CPU time (what an instrumentation adds is
Python work there; the database's and the local server's time is the same on both
sides, and wall time on a shared machine is mostly the neighbours'), the best of
``--runs`` interleaved rounds.
"""

from __future__ import annotations

import argparse
import http.server
import os
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from tempfile import TemporaryDirectory

import httpx
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from afterglow.devstack import served_loop
from afterglow.devstack.postgres import EmbeddedPostgres
from afterglow.events import tracing
from afterglow.kit.db import create_engine
from afterglow.kit.tracing import instrument_engine, instrument_http

CAUSE = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


class NoContent(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the call, not the connection, is measured

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(204)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def statements(engine: AsyncEngine, n: int) -> Callable[[], Awaitable[float]]:
    async def run() -> float:
        async with engine.connect() as c:
            await c.execute(text("SELECT 1"))
            t0 = time.thread_time()
            for _ in range(n):
                with tracing.continued("apply", CAUSE):
                    await c.execute(text("SELECT 1"))
            return (time.thread_time() - t0) / n * 1e6

    return run


def calls(client: httpx.AsyncClient, url: str, n: int) -> Callable[[], Awaitable[float]]:
    async def run() -> float:
        await client.post(url, content=b"{}")
        t0 = time.thread_time()
        for _ in range(n):
            with tracing.continued("send", CAUSE):
                await client.post(url, content=b"{}")
        return (time.thread_time() - t0) / n * 1e6

    return run


async def best(rounds: dict[str, Callable[[], Awaitable[float]]], runs: int) -> dict[str, float]:
    out = {name: float("inf") for name in rounds}
    for _ in range(runs):
        for name, measure in rounds.items():
            out[name] = min(out[name], await measure())
    return out


def report(what: str, figure: float, floor: float) -> None:
    print(f"  {what:52s} {figure:7.1f} us CPU  floor {floor:7.1f} us  ratio {figure / floor:5.2f}")


async def main(database_url: str, url: str, n: int, runs: int) -> None:
    def engine() -> AsyncEngine:
        return create_engine(database_url, application_name="bench-tracing", pool_size=1)

    plain, passed = engine(), engine()
    instrument_engine(passed)  # tracing off: nothing happens
    async with (
        httpx.AsyncClient() as plain_http,
        instrument_http(httpx.AsyncClient()) as passed_http,
    ):
        off = await best(
            {
                "db floor": statements(plain, n),
                "db": statements(passed, n),
                "http floor": calls(plain_http, url, n // 4),
                "http": calls(passed_http, url, n // 4),
            },
            runs,
        )
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(InMemorySpanExporter()))
    tracing.enable(provider)
    traced = engine()
    instrument_engine(traced)
    async with (
        httpx.AsyncClient() as bare_http,
        instrument_http(httpx.AsyncClient()) as traced_http,
    ):
        on = await best(
            {
                "db floor": statements(plain, n),
                "db": statements(traced, n),
                "http floor": calls(bare_http, url, n // 4),
                "http": calls(traced_http, url, n // 4),
            },
            runs,
        )
    tracing.disable()
    for e in (plain, passed, traced):
        await e.dispose()
    print("tracing off (per event: the apply span is off too)")
    report("SELECT 1, engine passed through instrument_engine", off["db"], off["db floor"])
    report("POST to a local 204, client through instrument_http", off["http"], off["http floor"])
    print("tracing on, in-memory exporter (floor: the apply span alone)")
    report("SELECT 1 with its statement span", on["db"], on["db floor"])
    report("POST with its client span and traceparent header", on["http"], on["http floor"])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--statements", type=int, default=2000, help="per round (calls: a quarter)")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NoContent)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/"
    with TemporaryDirectory() as tmp:
        postgres = None
        database_url = os.environ.get("DATABASE_URL")
        if not database_url:
            postgres = EmbeddedPostgres(Path(tmp) / "pgdata", ephemeral=True)
            database_url = postgres.start()
        try:
            served_loop.run(main(database_url, url, args.statements, args.runs))
        finally:
            if postgres is not None:
                postgres.stop()
            server.shutdown()
