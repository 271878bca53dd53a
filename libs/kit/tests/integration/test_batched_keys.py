"""The routes' API keys are verified in batches (auth.batched_verifier): requests that
arrive together share one lookup, and each still gets its own verdict, read from the
table at that moment (a revoked key is refused at once, nothing is cached)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from typing import Annotated

from fastapi import Depends
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

from afterglow.devstack.pytest_plugin import serve_app
from afterglow.devstack.stack import Stack
from afterglow.events import event_tables
from afterglow.kit.app import ServiceSpec, create_service_app
from afterglow.kit.auth import ApiKeyStore, Principal, api_keys_table, require_scope
from afterglow.kit.db import service_metadata
from afterglow.kit.routing import service_router
from afterglow.kit.settings import ServiceSettings

SCHEMA = "probe_keys"
router = service_router()


@router.get("/v1/whoami")
async def whoami(
    principal: Annotated[Principal, Depends(require_scope("probe:read"))],
) -> dict[str, str]:
    return {"tenant": principal.tenant_id}


class TestBatchedKeyVerification:
    async def test_concurrent_requests_each_get_their_own_verdict(self, stack: Stack) -> None:
        metadata = service_metadata(SCHEMA)
        table = api_keys_table(metadata)
        engine = create_async_engine(stack.database_url)
        store = ApiKeyStore(table)
        tenants = [f"t-{uuid.uuid4().hex[:8]}" for _ in range(3)]
        try:
            async with engine.begin() as conn:
                await conn.execute(text(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}"))
                await conn.run_sync(metadata.create_all)
            async with AsyncSession(engine) as session, session.begin():
                good = [await store.create(session, t, ["probe:read"]) for t in tenants]
                narrow = await store.create(session, tenants[0], ["other:read"])
                revoked = await store.create(session, tenants[1], ["probe:read"])
                await store.revoke(
                    session,
                    tenant_id=tenants[1],
                    key_id=revoked.split("_")[1],
                    revoked_at=datetime.now(UTC),
                )
        finally:
            await engine.dispose()
        app = create_service_app(
            ServiceSpec("probe", SCHEMA, "tests:app", "tests:migrations", 8998),
            ServiceSettings(database_url=stack.database_url, service_role="api", log_json=False),
            tables=event_tables(metadata),
            api_keys_table=table,
            title="probe",
            description="a service with one authenticated route",
            routers=[router],
        )
        keys = [*good, narrow, revoked, f"{good[0]}x", "agk_nosuchkey_secret", "not-a-key"]
        expected = [200, 200, 200, 403, 401, 401, 401, 401]
        async with serve_app(app) as client:  # type: ignore[arg-type]

            async def call(key: str) -> tuple[int, str | None]:
                r = await client.get("/v1/whoami", headers={"Authorization": f"Bearer {key}"})
                return r.status_code, r.json().get("tenant")

            answers = await asyncio.gather(*(call(k) for _ in range(5) for k in keys))
        for n, (status, tenant) in enumerate(answers):
            i = n % len(keys)
            assert status == expected[i], (keys[i], status)
            if status == 200:
                assert tenant == tenants[i]
