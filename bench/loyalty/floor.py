"""The floor of the redemption bench: a bare endpoint at loyalty's redemption path.

It parses what the real route parses (the JSON body into the same kind of pydantic
model, the Idempotency-Key header) and answers 201 with a body of the same size, with
no authentication lookup and no database: what FastAPI and uvicorn cost on this
machine under the same wrk load. Run by bench/loyalty/run.py under the uvicorn settings
``afterglow serve`` uses.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import FastAPI, Header
from pydantic import BaseModel, ConfigDict, StringConstraints

_ANSWER: dict[str, Any] = {
    "redemption_id": "0190a0b1c2d3e4f5a6b7c8d9e0f1a2b3",
    "reward": {
        "id": "five-off",
        "name": "$5 off",
        "kind": "fixed_discount",
        "points_price": 500,
        "amount_minor": 500,
        "percent": None,
    },
    "points": 500,
    "code": "AG-7QK2M9XW4P3R",
    "balance": {"available": 120, "pending": 0},
    "redeemed_at": "2026-03-10T11:05:00+00:00",
}


class RedemptionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reward_id: Annotated[str, StringConstraints(min_length=1, max_length=50)]


def create_app() -> FastAPI:
    app = FastAPI()

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/accounts/{customer}/redemptions", status_code=201)
    async def redeem(
        customer: str,
        body: RedemptionIn,
        idempotency_key: Annotated[str, Header(alias="Idempotency-Key", max_length=200)],
    ) -> dict[str, Any]:
        return {**_ANSWER, "reward": {**_ANSWER["reward"], "id": body.reward_id}}

    return app
