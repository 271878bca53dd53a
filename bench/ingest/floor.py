"""The floor of the ingest bench: a bare endpoint doing what any webhook receiver must.

Reads the body, checks the Shopify HMAC against one secret (``FLOOR_SECRET``) and
answers 200 with the webhook id. No database, no parsing: what is left of a request
once ingest's own work is removed, under the same uvicorn settings.

    uvicorn floor:create_app --factory --app-dir bench/ingest
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse


def create_app() -> FastAPI:
    secret = os.environ["FLOOR_SECRET"].encode()
    app = FastAPI()

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/webhooks/shopify")
    async def webhook(request: Request) -> JSONResponse:
        body = await request.body()
        digest = base64.b64encode(hmac.new(secret, body, hashlib.sha256).digest()).decode()
        presented = request.headers.get("x-shopify-hmac-sha256", "")
        if not hmac.compare_digest(digest, presented):
            return JSONResponse({"error": {"code": "unauthorized"}}, status_code=401)
        did = request.headers.get("x-shopify-webhook-id", "")
        return JSONResponse({"delivery_id": did, "status": "received", "events": []})

    return app
