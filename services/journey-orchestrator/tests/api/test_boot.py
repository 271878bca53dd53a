from ..conftest import Orchestrator


async def test_service_is_live_and_ready_once_its_consumers_poll(orch: Orchestrator) -> None:
    # The package's app fixture waited for /readyz 200 before handing the app over.
    assert (await orch.client.get("/healthz")).json() == {"status": "ok"}
    ready = await orch.client.get("/readyz")
    assert ready.status_code == 200
    checks = ready.json()["checks"]
    assert checks["database"] == "ok"
    for group in ("journeys.tenants", "journeys.engine", "journeys.messaging"):
        assert checks[group]["status"] == "ok", checks
        assert checks[group]["last_poll_age_s"] is not None
