"""kit.openapi: the errors every route shares are documented from what it depends on."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, FastAPI
from pydantic import BaseModel, ConfigDict

from afterglow.kit import openapi
from afterglow.kit.auth import Principal, require_scope
from afterglow.kit.db import Session
from afterglow.kit.routing import service_router


class ThingIn(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"name": "tent", "note": None}]})
    name: str
    note: str | None


def document() -> dict[str, Any]:
    router = service_router()

    @router.put(
        "/v1/things/{thing_id}",
        responses=openapi.error(409, "Taken", "conflict", "the name is taken", field="name"),
    )
    async def put_thing(
        thing_id: str,
        body: ThingIn,
        principal: Annotated[Principal, Depends(require_scope("things:write"))],
    ) -> dict[str, str]:
        return {}

    @router.get("/v1/count")
    async def count(session: Session) -> dict[str, int]:
        return {}

    @router.get("/v1/plain", responses=openapi.example(200, {"status": None}))
    async def plain() -> dict[str, str]:
        return {}

    app = FastAPI()
    app.include_router(router)
    openapi.install(app)
    return app.openapi()


class TestStandardResponses:
    def test_a_scoped_route_with_a_path_id_and_a_body_lists_every_shared_error(self) -> None:
        op = document()["paths"]["/v1/things/{thing_id}"]["put"]
        assert set(op["responses"]) == {
            "200",
            "400",
            "401",
            "403",
            "404",
            "409",
            "413",
            "422",
            "503",
        }
        assert op["security"] == [{"apiKey": ["things:write"]}]
        for status in ("400", "401", "403", "404", "409", "413", "422", "503"):
            media = op["responses"][status]["content"]["application/json"]
            assert media["schema"] == {"$ref": "#/components/schemas/ErrorBody"}, status
            assert media["example"]["error"]["code"], status
        assert op["responses"]["409"]["content"]["application/json"]["example"] == {
            "error": {"code": "conflict", "message": "the name is taken", "field": "name"}
        }

    def test_a_route_lists_only_what_it_can_answer(self) -> None:
        doc = document()
        assert set(doc["paths"]["/v1/count"]["get"]["responses"]) == {"200", "503"}
        assert set(doc["paths"]["/v1/plain"]["get"]["responses"]) == {"200"}
        assert "security" not in doc["paths"]["/v1/count"]["get"]

    def test_the_shared_schemas_replace_fastapis_validation_error(self) -> None:
        doc = document()
        schemas = doc["components"]["schemas"]
        assert "ErrorBody" in schemas
        assert "HTTPValidationError" not in schemas
        assert doc["components"]["securitySchemes"]["apiKey"]["scheme"] == "bearer"

    def test_examples_keep_their_nulls(self) -> None:
        doc = document()
        assert doc["components"]["schemas"]["ThingIn"]["examples"] == [
            {"name": "tent", "note": None}
        ]
        media = doc["paths"]["/v1/plain"]["get"]["responses"]["200"]["content"]
        assert media["application/json"]["example"] == {"status": None}
