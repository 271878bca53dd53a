from afterglow.devstack.pytest_plugin import serve_app
from afterglow.events.testing import eventually
from afterglow.journeys.app import create_app


async def test_service_boots_and_becomes_ready_once_its_consumers_poll(stack):
    async with serve_app(create_app()) as client:
        assert (await client.get("/healthz")).json() == {"status": "ok"}
        ready = await eventually(lambda: client.get("/readyz"), lambda r: r.status_code == 200)
        checks = ready.json()["checks"]
        assert checks["database"] == "ok"
        assert checks["journeys.tenants"]["status"] == "ok"
