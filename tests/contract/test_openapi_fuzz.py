"""Every service's OpenAPI, checked and fuzzed: what the document says is what the
service answers.

First the documents themselves: every operation shows an example of its request body and
of its success answers, every example matches its schema (an example that rots misleads
every reader and client generator), and every JSON error answer has the shared error
schema.

Then the fuzzing. Schemathesis generates requests from each operation's schema (its
documented examples, boundary and invalid values, then random ones) and sends them
in-process to the service's app, running on the real stack with the API role (routes
and relay; no consumers, which would join the groups other tests use). Each request
carries one of three credentials, chosen per example: a key with the operation's scope,
a key with another scope (403), or none (401); an admin route gets the admin token
instead, and a webhook route a body signed as its platform signs it (with the fuzz
tenant's secret), so that generated bodies reach the parsing and normalising.

Checks, on every answer:
- not_a_server_error: no 5xx;
- status_code_conformance: no status the operation does not document;
- response_schema_conformance: the body matches the documented schema of its status.
- unsupported_method: a method the path does not have is a 405 with its Allow header.

Nothing is excluded: every operation of every document is fuzzed, the HTML pages too.
A page gets, for those examples, a valid signed link of the fuzz tenant (a survey, an
order to review, an unsubscribe link), so that generated forms reach the answering code.
What the fuzzing does not reach: data the fresh tenant does not have (most ids of the
REST routes answer 404).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
import zlib
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import jsonschema
import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.core import NotSet
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import (
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)
from sqlalchemy import Table, select
from sqlalchemy.ext.asyncio import AsyncSession

from afterglow.devstack.stack import Stack
from afterglow.events import CloudEvent, Outbox
from afterglow.events.catalog import SurveyRequested
from afterglow.feedback import service as feedback_service
from afterglow.feedback.app import create_app as feedback_app
from afterglow.feedback.models import Survey
from afterglow.feedback.models import api_keys as feedback_keys
from afterglow.feedback.models import tables as feedback_tables
from afterglow.feedback.settings import FeedbackSettings
from afterglow.ingest.app import create_app as ingest_app
from afterglow.ingest.models import api_keys as ingest_keys
from afterglow.ingest.registry import PLATFORMS
from afterglow.ingest.settings import IngestSettings
from afterglow.journeys.app import create_app as journeys_app
from afterglow.journeys.messaging import policy
from afterglow.journeys.messaging.settings import MessagingSettings
from afterglow.journeys.models import api_keys as journeys_keys
from afterglow.journeys.settings import Settings as JourneysSettings
from afterglow.kit import standard_webhooks
from afterglow.kit.auth import ApiKeyStore
from afterglow.kit.db import create_engine, create_sessionmaker
from afterglow.kit.settings import ServiceSettings
from afterglow.loyalty.app import create_app as loyalty_app
from afterglow.loyalty.models import api_keys as loyalty_keys
from afterglow.loyalty.settings import LoyaltySettings
from afterglow.referrals.app import create_app as referrals_app
from afterglow.referrals.models import api_keys as referrals_keys
from afterglow.referrals.settings import ReferralsSettings

# Generated examples per operation (the fuzzing phase); the documented examples and
# the coverage phase's boundary and invalid values come on top.
MAX_EXAMPLES = 25
ADMIN_TOKEN = "fuzz-admin-token"
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    response_schema_conformance,
    unsupported_method,
]
# Chosen per example from a digest of its data (schemathesis cannot draw extra values
# beside the documented examples, and a replayed failure must get the same caller):
# mostly a key that may call the operation, so that most requests reach the route's
# code rather than stop at the door.
CALLERS = ("entitled", "entitled", "entitled", "other_scope", "anonymous")


def caller_of(case: Any) -> str:
    data = repr((case.path_parameters, case.query, case.headers, case.body))
    return CALLERS[zlib.crc32(data.encode()) % len(CALLERS)]


@dataclass(frozen=True)
class Service:
    name: str
    create_app: Callable[..., FastAPI]
    settings: Callable[..., ServiceSettings]
    api_keys: Table
    extra: dict[str, Any] = field(default_factory=dict)

    def app(self) -> FastAPI:
        # The API role: routes and the outbox relay, no consumers or workers.
        return self.create_app(
            self.settings(service_role="api", log_json=False, log_level="ERROR", **self.extra)
        )

    def document(self) -> dict[str, Any]:
        # Built at collection: quiet, plain logs (create_app configures logging).
        settings = self.settings(log_json=False, log_level="WARNING", **self.extra)
        return self.create_app(settings).openapi()


SERVICES = {
    s.name: s
    for s in (
        Service(
            "ingest", ingest_app, IngestSettings, ingest_keys, {"ingest_admin_token": ADMIN_TOKEN}
        ),
        Service("journeys", journeys_app, JourneysSettings, journeys_keys),
        Service("feedback", feedback_app, FeedbackSettings, feedback_keys),
        Service("loyalty", loyalty_app, LoyaltySettings, loyalty_keys),
        Service("referrals", referrals_app, ReferralsSettings, referrals_keys),
    )
}


def scopes_of(document: dict[str, Any]) -> set[str]:
    return {
        scope
        for ops in document["paths"].values()
        for op in ops.values()
        for requirement in op.get("security", [])
        for scopes in requirement.values()
        for scope in scopes
    }


@dataclass
class Keys:
    """A fresh tenant's keys in one service: one per scope its document names."""

    tenant: str
    by_scope: dict[str, str]
    # A valid signed link per page path, for the examples that may open the page.
    links: dict[str, str] = field(default_factory=dict)

    def open_link(self, case: Any) -> None:
        token = self.links.get(case.operation.path)
        if token is not None:
            case.path_parameters["token"] = token

    def headers(self, case: Any, caller: str) -> dict[str, str]:
        security = case.operation.definition.raw.get("security", [])
        schemes = {name for requirement in security for name in requirement}
        wanted = {s for requirement in security for scopes in requirement.values() for s in scopes}
        if caller == "anonymous" or not schemes:
            return {}  # a public route (health, a signed link): credentials change nothing
        if "adminToken" in schemes:
            token = ADMIN_TOKEN if caller == "entitled" else self.by_scope["unrelated:scope"]
        elif caller == "entitled":
            token = self.by_scope[sorted(wanted)[0]]
        else:
            token = self.by_scope["unrelated:scope"]
        return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
async def keys(stack: Stack) -> AsyncIterator[dict[str, Keys]]:
    tenant = f"t-fuzz-{uuid.uuid4().hex[:8]}"
    engine = create_engine(stack.database_url, application_name="openapi-fuzz")
    out: dict[str, Keys] = {}
    try:
        async with create_sessionmaker(engine).begin() as session:
            for service in SERVICES.values():
                store = ApiKeyStore(service.api_keys)
                scopes = scopes_of(DOCUMENTS[service.name]) | {"unrelated:scope"}
                out[service.name] = Keys(
                    tenant, {s: await store.create(session, tenant, [s]) for s in sorted(scopes)}
                )
            out["feedback"].links = await feedback_links(session, tenant)
            out["journeys"].links = {
                "/u/{token}": policy.sign_unsubscribe(
                    MessagingSettings().unsubscribe_secret, tenant, "cus-fuzz", "email"
                )
            }
    finally:
        await engine.dispose()
    yield out


async def feedback_links(session: AsyncSession, tenant: str) -> dict[str, str]:
    """A survey and an order of the fuzz tenant, made by the code the consumer runs, and
    the signed links to their pages."""
    settings = FeedbackSettings()
    now = datetime.now(UTC)  # the app runs on the system clock
    request_id = f"req-fuzz-{uuid.uuid4().hex[:8]}"
    event = CloudEvent.new(
        SurveyRequested(request_id=request_id, kind="nps", requested_at=now),  # type: ignore[call-arg]
        tenant_id=tenant,
        subject="cus-fuzz",
        source="tests",
    )
    await feedback_service.handle_survey_requested(
        session, Outbox(feedback_tables), settings, event, now
    )
    survey = (
        await session.execute(
            select(Survey).where(Survey.tenant_id == tenant, Survey.request_id == request_id)
        )
    ).scalar_one()
    await feedback_service.remember_order(
        session,
        tenant,
        "cus-fuzz",
        "ord-fuzz",
        now,
        [{"sku": "TENT-2P", "product_id": None, "title": "Tent"}],
    )
    review, _ = feedback_service.review_token(settings, tenant, "cus-fuzz", "ord-fuzz", now)
    return {
        "/s/{token}": feedback_service.survey_token(settings, survey),
        "/r/{token}": review,
    }


@dataclass
class Running:
    """One service app at a time, its lifespan run by schemathesis's ASGI portal."""

    name: str | None = None
    client: asgi.ASGIClient | None = None

    senders: WebhookSenders | None = None

    def client_for(self, name: str, tenant: str) -> asgi.ASGIClient:
        if self.name != name:
            self.stop()
            client = asgi.ASGIClient(SERVICES[name].app())
            client.__enter__()  # starts the lifespan
            self.name, self.client = name, client
            if name == "ingest":
                self.senders = WebhookSenders.register(client, tenant)
        assert self.client is not None
        return self.client

    def stop(self) -> None:
        if self.client is not None:
            self.client.__exit__(None, None, None)
            asgi.shutdown_lifespans()
        self.name = self.client = None


# Topics a platform sends, drawn per example like the caller: known ones reach the
# normalisers, an unknown one is archived.
TOPICS = {
    "shopify": (
        "orders/create",
        "orders/updated",
        "orders/fulfilled",
        "orders/cancelled",
        "refunds/create",
        "customers/redact",
        "app/uninstalled",
    ),
    "woocommerce": ("order.created", "order.updated", "order.deleted", "product.updated"),
}


@dataclass
class WebhookSenders:
    """Signs a generated body as each platform does, for the fuzz tenant, so that an
    entitled example of a webhook route gets past the signature into the parsing and
    normalising a platform's body goes through (an unsigned one stops at 401)."""

    tenant: str
    secrets: dict[str, str]

    @classmethod
    def register(cls, client: asgi.ASGIClient, tenant: str) -> WebhookSenders:
        r = client.post(
            "/admin/tenants",
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
            json={
                "tenant_id": tenant,
                "name": "Fuzz",
                "shopify_shop_domain": f"{tenant}.myshopify.com",
                "woocommerce_store_url": f"https://{tenant}.example.com/",
                "platforms": sorted(PLATFORMS),
            },
        )
        assert r.status_code == 201, r.text
        return cls(tenant, r.json()["secrets"])

    def receives(self, case: Any) -> bool:
        return bool(case.operation.path.startswith("/webhooks/"))

    def send(self, case: Any, client: asgi.ASGIClient) -> Any:
        platform = case.operation.path.split("/")[2]
        if "tenant_id" in case.path_parameters:
            case.path_parameters["tenant_id"] = self.tenant
        body = raw_body(case.body)
        digest = zlib.crc32(body)
        secret = self.secrets[platform]
        headers = {"Content-Type": "application/json"}
        if platform == "shopify":
            headers |= {
                "X-Shopify-Topic": TOPICS["shopify"][digest % len(TOPICS["shopify"])],
                "X-Shopify-Shop-Domain": f"{self.tenant}.myshopify.com",
                "X-Shopify-Webhook-Id": f"fuzz-{digest}",
                "X-Shopify-Hmac-Sha256": b64hmac(secret, body),
            }
        elif platform == "woocommerce":
            headers |= {
                "X-WC-Webhook-Topic": TOPICS["woocommerce"][digest % len(TOPICS["woocommerce"])],
                "X-WC-Webhook-Source": f"https://{self.tenant}.example.com/",
                "X-WC-Webhook-Delivery-ID": str(digest),
                "X-WC-Webhook-Signature": b64hmac(secret, body),
            }
        elif platform == "standard":
            headers |= standard_webhooks.signed_headers(
                secret, f"msg_{digest}", int(time.time()), body
            )
        elif platform == "zendesk":
            stamp = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
            headers |= {
                "x-zendesk-webhook-signature-timestamp": stamp,
                "x-zendesk-webhook-signature": b64hmac(secret, stamp.encode() + body),
            }
        elif platform == "aftership":
            headers["aftership-hmac-sha256"] = b64hmac(secret, body)
        elif platform == "bigcommerce":
            headers["X-Afterglow-Webhook-Token"] = secret
        url = case.formatted_path
        response = client.request(
            case.method, f"http://testserver{url}", data=body, headers=headers
        )
        return response


def raw_body(body: Any) -> bytes:
    """The bytes to sign and send: as generated when raw, else its JSON."""
    if isinstance(body, NotSet):
        return b""
    if isinstance(body, bytes):
        return body
    if isinstance(body, str):
        return body.encode()
    return json.dumps(body).encode()


def b64hmac(secret: str, message: bytes) -> str:
    return base64.b64encode(hmac.new(secret.encode(), message, hashlib.sha256).digest()).decode()


@pytest.fixture(scope="module")
def running(stack: Stack) -> Iterator[Running]:
    r = Running()
    yield r
    r.stop()


DOCUMENTS = {name: s.document() for name, s in SERVICES.items()}


# --- the documents ---------------------------------------------------------------------


def operations() -> Iterator[tuple[str, str, str, dict[str, Any]]]:
    for name, doc in DOCUMENTS.items():
        for path, ops in doc["paths"].items():
            for method, op in ops.items():
                yield name, method.upper(), path, op


def resolve(doc: dict[str, Any], schema: dict[str, Any]) -> list[dict[str, Any]]:
    """The schema and those it names (a $ref, each branch of anyOf/oneOf)."""
    out = []
    stack = [schema]
    while stack:
        s = stack.pop()
        if "$ref" in s:
            stack.append(doc["components"]["schemas"][s["$ref"].rsplit("/", 1)[1]])
            continue
        out.append(s)
        stack.extend(s.get("anyOf", []) + s.get("oneOf", []))
    return out


def has_example(doc: dict[str, Any], media: dict[str, Any]) -> bool:
    if "example" in media or "examples" in media:
        return True
    return any("examples" in s or "example" in s for s in resolve(doc, media.get("schema", {})))


def test_every_operation_shows_its_request_and_answers() -> None:
    missing = []
    for name, method, path, op in operations():
        doc = DOCUMENTS[name]
        body = op.get("requestBody")
        if body and not any(has_example(doc, m) for m in body["content"].values()):
            missing.append(f"{name} {method} {path}: request body")
        for status, response in op["responses"].items():
            # A redirect has no body to show (its Location header is documented), nor
            # has a 204.
            content = response.get("content")
            if (
                status.startswith("2")
                and status != "204"
                and not (content and any(has_example(doc, m) for m in content.values()))
            ):
                missing.append(f"{name} {method} {path}: {status}")
    assert not missing, "\n".join(missing)


def examples_of(media: dict[str, Any]) -> list[Any]:
    if "example" in media:
        return [media["example"]]
    return [e.get("value") for e in media.get("examples", {}).values()]


def test_every_example_matches_its_schema() -> None:
    wrong = []
    for name, method, path, op in operations():
        doc = DOCUMENTS[name]
        places = [("request", op.get("requestBody", {}).get("content", {}))]
        places += [(status, r.get("content", {})) for status, r in op["responses"].items()]
        for where, content in places:
            media = content.get("application/json")
            if not media or "schema" not in media:
                continue
            # The document's components ride along so that its $refs resolve.
            schema = {**media["schema"], "components": doc["components"]}
            validator = jsonschema.Draft202012Validator(schema)
            for example in examples_of(media):
                for error in validator.iter_errors(example):
                    wrong.append(f"{name} {method} {path} {where}: {error.message[:200]}")
    for name, doc in DOCUMENTS.items():
        for model, schema in doc["components"]["schemas"].items():
            validator = jsonschema.Draft202012Validator({**schema, "components": doc["components"]})
            for example in schema.get("examples", []):
                for error in validator.iter_errors(example):
                    wrong.append(f"{name} schema {model}: {error.message[:200]}")
    assert not wrong, "\n".join(wrong)


def is_untyped(doc: dict[str, Any], schema: dict[str, Any]) -> bool:
    """A schema that says nothing of its fields: none at all (a route answering a bare
    JSONResponse), or any object (``-> dict[str, Any]``), or a list of those."""
    if "$ref" in schema:
        return is_untyped(doc, doc["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]])
    if "anyOf" in schema or "oneOf" in schema:
        return any(is_untyped(doc, s) for s in schema.get("anyOf", []) + schema.get("oneOf", []))
    if schema.get("type") == "array":
        return is_untyped(doc, schema.get("items", {}))
    if schema.get("type") == "object" or not schema:
        return "properties" not in schema and schema.get("additionalProperties") in (
            None,
            True,
            {},
        )
    return False


@pytest.mark.parametrize("name", sorted(DOCUMENTS))
def test_every_json_answer_has_a_response_model(name: str) -> None:
    """Every JSON answer of every operation is described field by field: a client
    generated from the document gets a type, not a dict of anything."""
    doc = DOCUMENTS[name]
    untyped = []
    for service, method, path, op in operations():
        if service != name:
            continue
        for status, response in op["responses"].items():
            media = response.get("content", {}).get("application/json")
            if media is not None and is_untyped(doc, media.get("schema", {})):
                untyped.append(f"{name} {method} {path} {status}")
    assert not untyped, "\n".join(untyped)


ERROR_REF = "#/components/schemas/ErrorBody"


def test_every_json_error_has_the_shared_schema() -> None:
    other = []
    for name, method, path, op in operations():
        if path == "/readyz":  # its 503 is the readiness report, checks and all
            continue
        for status, response in op["responses"].items():
            media = response.get("content", {}).get("application/json")
            schema = (media or {}).get("schema", {})
            if status[0] in "45" and media is not None and schema.get("$ref") != ERROR_REF:
                other.append(f"{name} {method} {path} {status}")
    assert not other, "\n".join(other)


# --- the fuzzing ------------------------------------------------------------------------


def fuzz(name: str) -> Callable[..., None]:
    schema = schemathesis.openapi.from_dict(DOCUMENTS[name])

    @schema.parametrize()
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    def test(case: Any, keys: dict[str, Keys], running: Running) -> None:
        client = running.client_for(name, keys[name].tenant)
        caller = caller_of(case)
        if running.senders is not None and running.senders.receives(case) and caller == "entitled":
            response = running.senders.send(case, client)
        else:
            if caller == "entitled":
                keys[name].open_link(case)
            headers = keys[name].headers(case, caller)
            response = case.call(session=client, base_url="http://testserver", headers=headers)
        case.validate_response(response, checks=CHECKS)

    return test


test_ingest = fuzz("ingest")
test_journeys = fuzz("journeys")
test_feedback = fuzz("feedback")
test_loyalty = fuzz("loyalty")
test_referrals = fuzz("referrals")
