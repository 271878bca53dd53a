"""The OpenAPI document every service publishes: one error shape, and the errors that
every route can answer documented once, here, instead of in each route.

A client generated from the document (or a fuzzer reading it) must meet no status the
document does not list. FastAPI lists only a route's success and a 422 whose schema
(``{"detail": [...]}``) is not what :mod:`afterglow.kit.errors` renders. So
:func:`install` rewrites each operation's responses from what the route depends on:

- a dependency marked with :func:`answers` contributes its errors (``require_scope``:
  401 and 403 and the bearer security requirement; the database session: 503);
- a path parameter adds 404: a value that matches nothing, or one whose slash makes the
  path match no route, is answered 404 before any code of the route runs;
- a JSON body adds 400 (not JSON, or nested too deep) and 413 (too large), which the
  bounded route of :mod:`afterglow.kit.routing` answers before FastAPI parses it;
- any parameter or body adds 422 (validation), with the shared error schema.

It also puts back what FastAPI's rendering loses: every null of every example.

Route-specific errors (409 insufficient points, 410 expired link) stay next to their
route, written with :func:`error` so that they share the schema and carry an example.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar, get_args

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.encoders import jsonable_encoder
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute, RouteContext, iter_route_contexts
from pydantic import BaseModel, ConfigDict, Field

from afterglow.kit import errors as errs
from afterglow.kit.routing import MAX_JSON_BODY_BYTES

SECURITY_SCHEME = "apiKey"
ERROR_SCHEMA = "ErrorBody"
_REF = f"#/components/schemas/{ERROR_SCHEMA}"


class ErrorDetail(BaseModel):
    field: str
    message: str


class Error(BaseModel):
    # Some errors add context (a 422 lists every invalid field in details).
    model_config = ConfigDict(extra="allow")

    code: str = Field(description="Stable, machine-readable: not_found, validation_error...")
    message: str = Field(description="For a human; may change between versions")
    field: str | None = Field(default=None, description="The input the error is about")
    details: list[ErrorDetail] | None = Field(
        default=None, description="Validation errors: every invalid field (at most 20)"
    )


class ErrorBody(BaseModel):
    """Every error answer: ``{"error": {"code", "message", "field"?}}``."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"error": {"code": "not_found", "message": "no such review", "field": "review_id"}}
            ]
        }
    )
    error: Error


def error(
    status: int,
    description: str,
    code: str,
    message: str,
    field: str | None = None,
    **extra: Any,
) -> dict[int | str, dict[str, Any]]:
    """One documented error answer with its example, for a route's ``responses=``."""
    err: dict[str, Any] = {"code": code, "message": message}
    if field:
        err["field"] = field
    err.update(extra)
    return {
        status: {
            "model": ErrorBody,
            "description": description,
            "content": {"application/json": {"example": {"error": err}}},
        }
    }


def example(
    status: int,
    body: Any,
    description: str | None = None,
    model: type[BaseModel] | None = None,
) -> dict[int | str, dict[str, Any]]:
    """An answer's example. Its schema is ``model`` when given, else the route's response
    model (which FastAPI applies to the route's default status only: a second success
    status, 201 beside 200, must name its model or is documented as any JSON)."""
    media: dict[str, Any] = {"example": body}
    response: dict[str, Any] = {"content": {"application/json": media}}
    if model is not None:
        response["model"] = model
    elif status >= 400:  # not the error schema: the body is the route's own
        media["schema"] = {"type": "object"}
    if description:
        response["description"] = description
    return {status: response}


def errors(*parts: dict[int | str, dict[str, Any]]) -> dict[int | str, dict[str, Any]]:
    """Several :func:`error` answers (and other responses) in one ``responses=`` dict."""
    out: dict[int | str, dict[str, Any]] = {}
    for part in parts:
        out.update(part)
    return out


# --- HTML pages and forms -------------------------------------------------------------


def html(status: int, description: str, example: str) -> dict[int | str, dict[str, Any]]:
    """One documented answer of a customer-facing HTML page."""
    return {
        status: {
            "description": description,
            "content": {"text/html": {"schema": {"type": "string"}, "example": example}},
        }
    }


def form_body(fields: dict[str, dict[str, Any]], example: dict[str, str]) -> dict[str, Any]:
    """``openapi_extra`` for a route that reads an urlencoded form itself."""
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/x-www-form-urlencoded": {
                    "schema": {"type": "object", "properties": fields},
                    "example": example,
                }
            },
        }
    }


# --- what a dependency answers ---------------------------------------------------------

_ANSWERS = "__afterglow_openapi_answers__"
_SECURITY = "__afterglow_openapi_security__"
F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Security:
    """A credential an operation wants: the scheme's name and definition, and scopes."""

    name: str
    scheme: dict[str, Any]
    scopes: tuple[str, ...] = ()


def bearer(name: str, description: str, *scopes: str) -> Security:
    return Security(name, {"type": "http", "scheme": "bearer", "description": description}, scopes)


def api_key(scope: str) -> Security:
    return bearer(
        SECURITY_SCHEME,
        "An API key `agk_<id>_<secret>` issued by the tenant registry (orders-ingest), "
        "with scopes; the tenant comes from the key.",
        scope,
    )


def answers(
    responses: dict[int | str, dict[str, Any]], *, security: Security | None = None
) -> Callable[[F], F]:
    """Mark a dependency with the errors it raises (and the credential it wants), so that
    every route depending on it documents them."""

    def mark(dependency: F) -> F:
        setattr(dependency, _ANSWERS, responses)
        if security is not None:
            setattr(dependency, _SECURITY, security)
        return dependency

    return mark


UNAUTHORIZED = error(
    401,
    "No API key, or one that is unknown, revoked or expired",
    "unauthorized",
    "a bearer API key is required",
)
UNAUTHORIZED[401]["headers"] = {
    "WWW-Authenticate": {"description": "Bearer", "schema": {"type": "string"}}
}


def forbidden(scope: str) -> dict[int | str, dict[str, Any]]:
    return error(
        403,
        f"The API key lacks the scope {scope}",
        "forbidden",
        f"the API key lacks the scope {scope!r}",
    )


UNAVAILABLE = error(
    503,
    "The database cannot be reached; retry after the Retry-After seconds",
    "unavailable",
    "the service cannot reach its database; retry shortly",
)
UNAVAILABLE[503]["headers"] = {
    "Retry-After": {"description": "Seconds to wait before retrying", "schema": {"type": "string"}}
}

_NOT_FOUND = error(
    404,
    "Nothing matches the path (an unknown id, or a value whose `/` makes the path match no route)",
    "not_found",
    "Not Found",
)
_MALFORMED = error(
    400,
    "The body is not JSON, or nests deeper than the bound (code too_deep)",
    "malformed_json",
    "the body is not valid JSON: Expecting value: line 1 column 1 (char 0)",
)
_TOO_LARGE = error(
    413,
    "The body is larger than the bound",
    "payload_too_large",
    f"the body is larger than {MAX_JSON_BODY_BYTES} bytes",
)
_INVALID = error(
    422,
    "A parameter or the body is invalid; field names the first, details all",
    "validation_error",
    "limit: Input should be less than or equal to 200",
    field="limit",
    details=[{"field": "limit", "message": "Input should be less than or equal to 200"}],
)


def _dependencies(dependant: Dependant) -> Iterable[Any]:
    for sub in dependant.dependencies:
        if sub.call is not None:
            yield sub.call
        yield from _dependencies(sub)


def standard_responses(
    route: APIRoute | RouteContext,
) -> tuple[dict[int | str, dict[str, Any]], list[Security]]:
    """The errors this route answers whatever its code does, and its security."""
    found: dict[int | str, dict[str, Any]] = {}
    security: list[Security] = []
    for call in _dependencies(route.dependant):
        found.update(getattr(call, _ANSWERS, {}))
        if hasattr(call, _SECURITY):
            security.append(getattr(call, _SECURITY))
    d = route.dependant
    if d.path_params:
        found.update(_NOT_FOUND)
    if d.body_params:  # parsed by kit.routing's bounded JSON route
        found.update({**_MALFORMED, **_TOO_LARGE})
    if d.path_params or d.query_params or d.header_params or d.cookie_params or d.body_params:
        found.update(_INVALID)
    return found, security


def install(app: FastAPI) -> None:
    """Publish ``app``'s OpenAPI with the standard errors and the shared error schema."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = document(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def document(app: FastAPI) -> dict[str, Any]:
    doc = get_openapi(
        title=app.title,
        version=app.version,
        openapi_version=app.openapi_version,
        description=app.description,
        routes=app.routes,
        tags=app.openapi_tags,
    )
    components = doc.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for name, schema in _error_schemas().items():
        schemas.setdefault(name, schema)
    schemes: dict[str, Any] = {}
    models: set[type[BaseModel]] = set()
    for route in iter_route_contexts(app.routes):
        if not isinstance(route.original_route, APIRoute) or not route.include_in_schema:
            continue
        standard, security = standard_responses(route)
        models.update(_models_of(route))
        for method in route.methods or ():
            op = doc["paths"][route.path_format][method.lower()]
            _restore_examples(op, route)
            responses = op.setdefault("responses", {})
            for status, response in standard.items():
                key = str(status)
                mine = responses.get(key)
                if mine is None or _is_fastapi_validation(mine):
                    responses[key] = _rendered(response)
                else:  # the route's own words win; the standard fills what they lack
                    responses[key] = _merge(mine, _rendered(response))
            if security:
                op["security"] = [{s.name: list(s.scopes)} for s in security]
                schemes.update({s.name: s.scheme for s in security})
            for key, response in responses.items():
                if key.isdigit() and key[0] in "45":
                    _ensure_error_body(int(key), response)
            op["responses"] = dict(sorted(responses.items()))
    if schemes:
        components.setdefault("securitySchemes", {}).update(schemes)
    _restore_model_examples(schemas, models)
    for unused in ("HTTPValidationError", "ValidationError"):
        if f"#/components/schemas/{unused}" not in str(doc["paths"]):
            schemas.pop(unused, None)
    return doc


# FastAPI drops every null from the document (exclude_none), examples included: an
# example whose field is null lost that field and no longer matched its own schema (a
# required, nullable field). The examples are put back from where they were written.


def _restore_examples(op: dict[str, Any], route: Any) -> None:
    for status, response in (route.responses or {}).items():
        for media, body in response.get("content", {}).items():
            if "example" in body:
                target = op["responses"][str(status)]["content"][media]
                target["example"] = jsonable_encoder(body["example"])
    extra = (route.openapi_extra or {}).get("requestBody", {}).get("content", {})
    for media, body in extra.items():
        if "example" in body:
            op["requestBody"]["content"][media]["example"] = jsonable_encoder(body["example"])


def _models_of(route: Any) -> set[type[BaseModel]]:
    roots: list[Any] = [route.response_model]
    roots += [r.get("model") for r in (route.responses or {}).values()]
    roots += [p.field_info.annotation for p in route.dependant.body_params]
    found: set[type[BaseModel]] = set()
    while roots:
        t = roots.pop()
        if isinstance(t, type) and issubclass(t, BaseModel):
            if t not in found:
                found.add(t)
                roots += [f.annotation for f in t.model_fields.values()]
        else:
            roots += list(get_args(t))
    return found


def _restore_model_examples(schemas: dict[str, Any], models: set[type[BaseModel]]) -> None:
    by_title: dict[str, list[dict[str, Any]]] = {}
    for name, schema in schemas.items():
        by_title.setdefault(schema.get("title", name), []).append(schema)
    for model in models:
        extra = model.model_config.get("json_schema_extra")
        if isinstance(extra, dict) and "examples" in extra:
            for schema in by_title.get(model.__name__, []):
                schema["examples"] = jsonable_encoder(extra["examples"])


def _error_schemas() -> dict[str, Any]:
    schema = ErrorBody.model_json_schema(ref_template="#/components/schemas/{model}")
    defs = schema.pop("$defs", {})
    return {ERROR_SCHEMA: schema, **defs}


def _rendered(response: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in response.items() if k != "model"}
    out["content"] = {
        media: {"schema": {"$ref": _REF}, **body} for media, body in response["content"].items()
    }
    return out


def _is_fastapi_validation(response: dict[str, Any]) -> bool:
    schema = response.get("content", {}).get("application/json", {}).get("schema", {})
    return bool(schema.get("$ref", "").endswith("/HTTPValidationError"))


def _merge(mine: dict[str, Any], standard: dict[str, Any]) -> dict[str, Any]:
    merged = {**standard, **{k: v for k, v in mine.items() if k != "content"}}
    # Media types add up: an HTML page's 404 and the router's JSON 404 are both answers.
    merged["content"] = {**standard.get("content", {}), **mine.get("content", {})}
    return merged


def _ensure_error_body(status: int, response: dict[str, Any]) -> None:
    """An error documented by its description alone gets the error schema and an
    example built from the code :mod:`afterglow.kit.errors` gives its status."""
    content = response.setdefault("content", {})
    if not content:
        content["application/json"] = {}
    body = content.get("application/json")
    if body is None:  # an HTML page (feedback's survey page) documents its own
        return
    body.setdefault("schema", {"$ref": _REF})
    if "example" not in body and "examples" not in body:
        code = _CODES.get(status, "http_error")
        body["example"] = {"error": {"code": code, "message": response.get("description", code)}}


_CODES = {
    cls.status_code: cls.code
    for cls in (
        errs.BadRequest,
        errs.Unauthorized,
        errs.Forbidden,
        errs.NotFound,
        errs.Conflict,
        errs.Gone,
        errs.PayloadTooLarge,
        errs.Unprocessable,
    )
}
