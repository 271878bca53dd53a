"""The metrics the alerts and dashboards of deploy/ use are the ones the services export.

Every service app is built by its factory (the ``afterglow.services`` entry points), its
lifespan started on the real stack (consumers, relays, workers running), and its
/metrics scraped over ASGI. The sample names found must cover every metric a rule or
panel names, and must equal deploy/metrics-exported.txt, the list `make deploy-check`
reads offline. After adding or renaming a metric:

    AFTERGLOW_WRITE_METRICS=1 uv run pytest tests/contract/test_metrics_exported.py
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from afterglow.devstack.pytest_plugin import serve_app
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


def _factory(spec: Any) -> Any:
    module, _, function = spec.app_factory.partition(":")
    return getattr(importlib.import_module(module), function)


@pytest.fixture(scope="module")
async def scraped(stack: Stack) -> dict[str, set[str]]:
    """Service name -> sample names its /metrics served, one service running at a time
    (each app consumes in its service's groups and stops before the next starts)."""
    out: dict[str, set[str]] = {}
    for name, spec in discover_services().items():
        app = _factory(spec)()
        async with serve_app(app) as client:
            await client.get("/readyz")  # its verdict is a metric (afterglow_ready)
            response = await client.get("/metrics")
            assert response.status_code == 200, (name, response.text[:200])
            out[name] = sample_names(response.text)
    return out


def _used_by_deploy() -> dict[str, set[str]]:
    """Metric name -> where a rule or panel of the rendered overlays uses it."""
    used: dict[str, set[str]] = {}
    for overlay in ("dev", "prod"):
        for where, expr in check.promql_sources(check.render(overlay)):
            for metric in check.metric_names(expr):
                used.setdefault(str(metric), set()).add(where)
    return used


async def test_every_metric_the_alerts_and_dashboards_use_is_exported(
    scraped: dict[str, set[str]],
) -> None:
    exported = set().union(*scraped.values())
    used = _used_by_deploy()
    assert len(used) > 10  # the rules and dashboards were found at all
    missing = {name: sorted(where)[:3] for name, where in used.items() if name not in exported}
    assert missing == {}, f"used by deploy/ but exported by no service: {missing}"


async def test_the_committed_metric_list_is_what_the_services_export(
    scraped: dict[str, set[str]],
) -> None:
    exported = sorted(n for n in set().union(*scraped.values()) if n.startswith("afterglow_"))
    text = "".join(f"{n}\n" for n in exported)
    if os.environ.get("AFTERGLOW_WRITE_METRICS") == "1":
        check.EXPORTED_METRICS.write_text(text)
    committed = check.load_exported()
    assert committed == set(exported), (
        "deploy/metrics-exported.txt differs from the services' /metrics: rerun with "
        f"AFTERGLOW_WRITE_METRICS=1. Only listed: {sorted(committed - set(exported))}; "
        f"only served: {sorted(set(exported) - committed)}"
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
