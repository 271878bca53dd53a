"""The shop's two loops with the outside world, as steps of the end-to-end story
(tests/e2e/test_customer_journey.py runs them on its running services): a loyalty
reward spent at checkout, and a detractor's recovery ticket in the helpdesk.

The shop and the helpdesk are local stand-ins for Shopify's Admin GraphQL API and
Zendesk's ticket API (third parties: the only fakes the house allows; they check the
access token, the API token auth and the required fields as the real ones do). The
merchant's ESP is the demo's signed receiver. Days are compressed through the tenant's
journey definition, as in the demo.

* Reward: points granted, redeemed for a $5 reward; the code exists in the shop,
  limited to that customer, when the message carrying it reaches the ESP; an order
  whose ``discount_codes`` holds it marks it used (``GET /v1/platform-actions``).
* Detractor: the survey page answered 3/10 with a comment; the escalation opens a
  ticket in Zendesk carrying the score and the comment; Zendesk's webhook about that
  ticket (the requester by id only, as Zendesk sends it) pauses the journey; the review
  ask, due meanwhile, waits, and leaves only after the ticket's solved webhook.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

from afterglow.devstack.demo import (
    SECONDS_PER_DAY,
    Receiver,
    Scenario,
    b64hmac,
    compress_journey,
    instance,
)

from ..fakes.fake_helpdesk import FakeHelpdesk, running_helpdesk
from ..fakes.shop_fakes import FakeShops, running_shops

INGEST_TESTS = Path(__file__).parents[2] / "services/orders-ingest/tests"
ZENDESK_FIXTURE = INGEST_TESTS / "fixtures/zendesk_ticket_created.json"


async def run_loops(urls: dict[str, list[str]], admin_token: str) -> None:
    """A tenant of its own, its shop and its Zendesk; both loops at once."""
    with Receiver().running() as receiver, running_shops() as shops, running_helpdesk() as zd:
        async with Scenario(urls, admin_token, receiver, say=print, timeout=90) as sc:
            await sc.register_tenant()
            setup = await configure(sc, admin_token, shops, zd)
            await asyncio.gather(
                reward_spent_at_checkout(sc, shops.shop(setup["shop_token"])),
                detractors_ticket_loop(sc, zd, setup["zendesk_secret"]),
            )
        assert not receiver.rejected, f"{receiver.rejected} messages with a bad signature"


async def configure(
    sc: Scenario, admin_token: str, shops: FakeShops, zendesk: FakeHelpdesk
) -> dict[str, str]:
    """The demo tenant's messaging and compressed journey, plus its shop's Admin API
    token and its Zendesk (API token out, a webhook secret in). Returns the Zendesk
    webhook secret and the shop's token."""
    await sc.call(
        "PUT",
        "journeys",
        "/v1/messaging/endpoint",
        json={"url": sc.receiver.url, "secret": sc.receiver.secret},
    )
    await sc.call(
        "PUT",
        "journeys",
        "/v1/messaging/settings",
        json={"quiet_hours_start": "00:00", "quiet_hours_end": "00:00", "frequency_cap": 20},
    )
    default = await sc.call("GET", "journeys", "/v1/journeys/default")
    await sc.call(
        "PUT", "journeys", "/v1/journeys/default", json=compress_journey(default["definition"])
    )
    await sc.call("POST", "journeys", "/v1/journeys/default/activate", json={})

    admin = {"Authorization": f"Bearer {admin_token}"}
    token = f"shpat_{sc.tenant_id}"
    shops.shop(token)  # the fake shop knows its token
    r = await sc.http.put(
        f"{sc.url('ingest')}/admin/tenants/{sc.tenant_id}/connections/shopify",
        headers=admin,
        json={"api_base_url": shops.url, "access_token": token},
    )
    assert r.status_code == 200, r.text
    agent = f"agent@{sc.tenant_id}.example.com"
    zendesk.zendesk_tokens[agent] = f"zd-token-{sc.tenant_id}"
    r = await sc.http.put(
        f"{sc.url('ingest')}/admin/tenants/{sc.tenant_id}/helpdesk",
        headers=admin,
        json={
            "kind": "zendesk",
            "api_base_url": zendesk.url,
            "username": agent,
            "secret": f"zd-token-{sc.tenant_id}",
        },
    )
    assert r.status_code == 200, r.text
    r = await sc.http.post(
        f"{sc.url('ingest')}/admin/tenants/{sc.tenant_id}/secrets/zendesk",
        headers=admin,
        json={},
    )
    assert r.status_code == 201, r.text
    return {"zendesk_secret": str(r.json()["secret"]), "shop_token": token}


async def zendesk_webhook(sc: Scenario, secret: str, kind: str, detail: dict[str, Any]) -> None:
    """As Zendesk posts a ticket event: signed over timestamp + body, the requester by
    id only."""
    base = json.loads(ZENDESK_FIXTURE.read_text())
    payload = base | {
        "id": str(uuid.uuid4()),
        "type": f"zen:event-type:{kind}",
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "detail": base["detail"] | detail,
        "event": {"current": detail["status"]} if "status" in detail else {},
    }
    body = json.dumps(payload).encode()
    ts = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    r = await sc.http.post(
        f"{sc.url('ingest')}/webhooks/zendesk/{sc.tenant_id}",
        content=body,
        headers={
            "Content-Type": "application/json",
            "x-zendesk-webhook-id": "01GZE2E",
            "x-zendesk-webhook-invocation-id": str(uuid.uuid4().int % 10**9),
            "x-zendesk-webhook-signature-timestamp": ts,
            "x-zendesk-webhook-signature": b64hmac(secret, ts.encode() + body),
        },
    )
    assert r.status_code == 200, r.text


async def reward_spent_at_checkout(sc: Scenario, shop: Any) -> None:
    member = sc.customers["passive"]
    await sc.place_order("passive")
    await sc.call(
        "POST",
        "loyalty",
        f"/v1/accounts/{member.id}/adjustments",
        json={"points": 600, "reason": "e2e: enough for the $5 reward"},
    )
    redemption = await sc.call(
        "POST",
        "loyalty",
        f"/v1/accounts/{member.id}/redemptions",
        json={"reward_id": "five-off"},
        headers={"Idempotency-Key": f"e2e-{member.id}"},
    )
    code = redemption["code"]

    # The code reaches the member's inbox only once it exists in the shop: one
    # discount, limited to them, usable once.
    message = await sc.message("passive", "reward_code")
    assert code in message.text or message.body.get("variables", {}).get("reward_code") == code
    assert list(shop.discounts) == [code.upper()], shop.discounts
    made = shop.discounts[code.upper()]["input"]
    assert made["context"] == {"customers": {"add": [f"gid://shopify/Customer/{member.id}"]}}
    assert (made["usageLimit"], made["appliesOncePerCustomer"]) == (1, True)

    # The member spends it at checkout: Shopify's order webhook names the code.
    # (Order ids of the scenario's customers are consecutive; +5 is nobody's.)
    second_order = member.order_id + 5
    sc.customers["spend"] = replace(member, role="spend", order_id=second_order)
    await sc.place_order("spend", ref=code.lower())

    async def used() -> dict[str, Any] | None:
        actions = await sc.call("GET", "ingest", "/v1/platform-actions")
        items = actions["items"] if isinstance(actions, dict) else actions
        found = [a for a in items if a["code"] == code]
        return found[0] if found and found[0]["status"] == "used" else None

    action = await sc.until("the reward code to be marked used", used)
    assert action["used_order_id"] == f"shopify:{second_order}"
    assert action["reference"] == redemption["redemption_id"]


async def detractors_ticket_loop(sc: Scenario, zd: FakeHelpdesk, secret: str) -> None:
    await sc.place_order("detractor")
    await sc.fulfil_and_deliver("detractor")
    delivered = time.monotonic()
    await sc.answer_survey("detractor")  # 3/10, "Cleo says 3"

    # The escalation opens a ticket in Zendesk with the score and the comment.
    async def ticket() -> dict[str, Any] | None:
        mine = [t for t in zd.tickets if (t.get("external_id") or "").startswith("afterglow-")]
        return mine[0] if mine else None

    t = await sc.until("the detractor's ticket in Zendesk", ticket)
    assert "3/10" in t["description"] and "Cleo says 3" in t["description"], t
    assert set(t["tags"]) >= {"afterglow", "afterglow_escalation"}

    # Zendesk's webhook about that ticket comes back: the journey pauses.
    detail = {"id": str(t["id"]), "external_id": t["external_id"], "tags": t["tags"]}
    await zendesk_webhook(sc, secret, "ticket.created", detail)

    async def status(want: str) -> bool:
        return instance(await sc.journey("detractor")).get("status") == want

    await sc.until("the detractor's journey to pause on the ticket", lambda: status("paused"))
    # Hold the ticket open past the moment the review ask would be due (14 days after
    # delivery); the journey waits for the solve, not for the clock.
    due = delivered + 14 * SECONDS_PER_DAY + 1.0
    await asyncio.sleep(max(0.0, due - time.monotonic()))
    detractor = sc.customers["detractor"].id
    assert not sc.receiver.of(detractor, "review_request"), "review ask while the ticket is open"
    assert await status("paused")

    solved_at = time.monotonic()
    await zendesk_webhook(sc, secret, "ticket.status_changed", detail | {"status": "SOLVED"})
    ask = await sc.message("detractor", "review_request")
    assert ask.at > solved_at
    journey = instance(await sc.journey("detractor"))
    kinds = [h["kind"] for h in journey["history"]]
    assert {"pause", "resume"} <= set(kinds), kinds
