"""The metrics the alerts and dashboards of deploy/ use are the ones the services export.

Every service app is built by its factory (the ``afterglow.services`` entry points) in a
process of its own, its lifespan started on the real stack (consumers, relays, workers
running), and its /metrics scraped over ASGI. The sample names found must cover every
metric a rule or panel names, and must equal deploy/metrics-exported.txt (each name with
the services serving it), the list `make deploy-check` reads offline. After adding or
renaming a metric:

    AFTERGLOW_WRITE_METRICS=1 uv run pytest tests/contract/test_metrics_exported.py
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import sys
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from afterglow.devstack.stack import Stack
from afterglow.kit.registry import discover_services

ROOT = Path(__file__).resolve().parents[2]


def _load_check() -> Any:
    """deploy/check.py (deploy/ is not a package), shared with test_deploy.py if loaded."""
    if "deploy_check" in sys.modules:
        return sys.modules["deploy_check"]
    spec = importlib.util.spec_from_file_location("deploy_check", ROOT / "deploy" / "check.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


check = _load_check()

pytestmark = pytest.mark.timeout(600)


def sample_names(exposition: str) -> set[str]:
    """Every sample name a family can have, also for a labelled family that has no
    child yet (a counter nobody incremented is listed with no samples, but a rule may
    rightly name it). The ``_created`` series prometheus_client adds (as gauges in the
    text format) are left out: a creation time is nothing to alert on."""
    names: set[str] = set()
    for family in text_string_to_metric_families(exposition):
        names.update(s.name for s in family.samples)
        suffixes = {
            "counter": ("_total",),
            "histogram": ("_bucket", "_count", "_sum"),
            "summary": ("", "_count", "_sum"),
            "info": ("_info",),
        }.get(family.type, ("",))
        names.update(family.name + suffix for suffix in suffixes)
    return {n for n in names if not n.endswith("_created")}


SCRAPER = Path(__file__).with_name("scrape_one_service.py")


async def _scrape_alone(name: str) -> str:
    """The service's /metrics, served by a process running only that service."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(SCRAPER),
        name,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(180):
            out, err = await process.communicate()
    except TimeoutError:
        process.kill()
        await process.wait()
        raise AssertionError(f"{name}: no /metrics within 180 s") from None
    assert process.returncode == 0, (name, err.decode()[-2000:])
    return out.decode()


@pytest.fixture(scope="module")
async def scraped(stack: Stack) -> dict[str, set[str]]:
    """Service name -> sample names its /metrics served, each service in a process of
    its own (scrape_one_service.py says why). The processes run side by side: each
    joins only its own service's consumer groups, and most of a start is the wait for
    the group join, which one after another cost ~70 s."""
    names = list(discover_services())
    expositions = await asyncio.gather(*(_scrape_alone(name) for name in names))
    return {name: sample_names(text) for name, text in zip(names, expositions, strict=True)}


def _served(scraped: dict[str, set[str]]) -> dict[str, set[str]]:
    """Our sample name -> the services that served it."""
    served: dict[str, set[str]] = {}
    for service, names in scraped.items():
        for name in names:
            if name.startswith("afterglow_"):
                served.setdefault(name, set()).add(service)
    return served


async def test_every_metric_the_alerts_and_dashboards_use_is_exported(
    scraped: dict[str, set[str]],
) -> None:
    """The check of `make deploy-check`, against what the services serve right now
    rather than the committed list: a panel of job="<svc>" must name a metric of <svc>."""
    for overlay in ("dev", "prod"):
        sources = check.promql_sources(check.render(overlay))
        assert len(sources) > 10  # the rules and dashboards were found at all
        report = check.Report()
        check.check_promql(sources, _served(scraped), report)
        assert report.problems == [], overlay


async def test_the_committed_metric_list_is_what_the_services_export(
    scraped: dict[str, set[str]],
) -> None:
    served = _served(scraped)
    text = "".join(f"{n} {','.join(sorted(served[n]))}\n" for n in sorted(served))
    if os.environ.get("AFTERGLOW_WRITE_METRICS") == "1":
        check.EXPORTED_METRICS.write_text(text)
    committed = check.load_exported()
    differ = {
        n: (sorted(committed.get(n, ())), sorted(served.get(n, ())))
        for n in committed.keys() | served.keys()
        if committed.get(n) != served.get(n)
    }
    assert differ == {}, (
        "deploy/metrics-exported.txt differs from the services' /metrics: rerun with "
        f"AFTERGLOW_WRITE_METRICS=1. Metric: (listed by, served by): {differ}"
    )
    # every service serves the kit's own metrics: the scrape reached each of them
    for name, names in scraped.items():
        assert "afterglow_ready" in names, name
        assert "afterglow_http_request_duration_seconds_bucket" in names, name


def test_sample_names_cover_families_without_samples() -> None:
    exposition = (
        "# HELP afterglow_x_total x\n# TYPE afterglow_x_total counter\n"
        "# HELP afterglow_y_seconds y\n# TYPE afterglow_y_seconds histogram\n"
        "# HELP afterglow_z z\n# TYPE afterglow_z gauge\nafterglow_z 1.0\n"
        "# HELP afterglow_x_created x\n# TYPE afterglow_x_created gauge\nafterglow_x_created 1.0\n"
    )
    assert sample_names(exposition) == {
        "afterglow_x_total",
        "afterglow_y_seconds_bucket",
        "afterglow_y_seconds_count",
        "afterglow_y_seconds_sum",
        "afterglow_z",
    }
