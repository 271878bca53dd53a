"""The console's journeys diagram and migration, customer search by email and export,
work queues (held referrals, dead letters) and settings, over HTTP against every
service running on the real stack."""

from __future__ import annotations

import html as htmllib
import re

import pytest

from afterglow.devstack.stack import Stack
from afterglow.events import CloudEvent, KafkaConfig, build_producer, to_record
from afterglow.events import catalog as c
from afterglow.events.testing import TopicTap

from ..console_support import (
    EMAIL_OF_A,
    Tenant,
    csrf_of,
    seed_held_referral,
    signed_in,
)

pytestmark = [pytest.mark.timeout(600), pytest.mark.slow]


class TestFindAndExport:
    async def test_a_typed_email_finds_this_shops_customer_only(
        self, shop: Tenant, other_shop: Tenant
    ):
        # The other shop's customer "a" has the same email: only this shop's is found.
        async with signed_in(shop.urls["console"], shop.keys["reader"]) as c:
            r = await c.get("/customers", params={"q": f"  {EMAIL_OF_A.upper()} "})
        assert r.status_code == 303, r.text
        assert r.headers["location"] == f"/customers/{shop.customer('a')}"

    async def test_an_unknown_email_says_so(self, shop: Tenant):
        async with signed_in(shop.urls["console"], shop.keys["reader"]) as c:
            r = await c.get("/customers", params={"q": "nobody@example.com"})
        assert r.status_code == 404
        assert "No customer of this shop has that email." in r.text
        assert 'value="nobody@example.com"' in r.text  # kept for correcting

    async def test_the_export_is_a_json_download_of_every_service(
        self, shop: Tenant, other_shop: Tenant
    ):
        async with signed_in(shop.urls["console"], shop.keys["reader"]) as c:
            page = await c.get(f"/customers/{shop.customer('a')}")
            assert f'href="/customers/{shop.customer("a")}/export.json"' in page.text
            r = await c.get(f"/customers/{shop.customer('a')}/export.json")
            theirs = await c.get(f"/customers/{other_shop.customer('a')}/export.json")
        assert r.status_code == 200
        assert r.headers["content-disposition"].startswith("attachment;")
        export = r.json()
        assert (export["tenant_id"], export["customer_id"]) == (shop.id, shop.customer("a"))
        assert set(export["services"]) == {"ingest", "journeys", "feedback", "loyalty", "referrals"}
        orders = {o["order_id"] for o in export["services"]["ingest"]["orders"]}
        assert {"o-a1", "o-a2", "o-a3"} <= orders
        assert theirs.status_code == 404
        assert "o-a1" not in theirs.text


BODY = """name: default
trigger:
  events: [order.placed]
goal:
  event: order.placed
  within: P30D
stages:
  - name: onboarding
    actions:
      - type: message
        kind: welcome
        category: transactional
  - name: check_in
    wait: P3D after order.delivered
    actions:
      - type: message
        kind: check_in
"""


class TestJourneyDiagram:
    async def test_the_diagram_shows_the_services_counts_per_stage(self, shop: Tenant, http):
        counts = await http.get(
            f"{shop.urls['journeys']}/v1/journeys/default/step-counts", headers=shop.auth()
        )
        assert counts.status_code == 200, counts.text
        async with signed_in(shop.urls["console"], shop.keys["reader"]) as c:
            page = await c.get("/journeys/default")
        assert page.status_code == 200
        svg = re.search(r'<svg class="chart flow".*?</svg>', page.text, re.S)
        assert svg, "no flow diagram"
        assert '<title id="flow-t">Flow of journey default</title>' in svg.group(0)
        version = int(re.search(r"Journey default, version (\d+)", page.text).group(1))  # type: ignore[union-attr]
        by_version = {v["version"]: v for v in counts.json()["versions"]}
        stages = by_version.get(version, {}).get("stages", {})
        for stage in ("onboarding", "check_in"):
            entered = stages.get(stage, {}).get("entered", 0)
            assert f"{entered} entered" in svg.group(0)

    async def test_two_versions_side_by_side_and_a_migration_tried(self, shop: Tenant):
        async with signed_in(shop.urls["console"], shop.keys["writer"]) as c:
            page = await c.get("/journeys/default")
            token = csrf_of(page.text)
            saved = await c.post("/journeys/default", data={"csrf": token, "definition": BODY})
            assert saved.status_code == 303, saved.text
            new = int(saved.headers["location"].rsplit("=", 1)[1])
            both = await c.get("/journeys/default", params={"version": new, "compare": 1})
            tried = await c.post("/journeys/default/migrate", data={"csrf": token, "dry_run": "1"})
        assert both.status_code == 200
        compare = both.text[both.text.index('id="compare"') :]
        assert compare.count('<svg class="chart flow"') == 2
        assert f"<h3>v{new}" in compare and "<h3>v1" in compare
        assert tried.status_code == 200, tried.text
        assert "would do (nothing moved)" in tried.text

    async def test_a_read_only_key_cannot_migrate(self, shop: Tenant):
        async with signed_in(shop.urls["console"], shop.keys["reader"]) as c:
            page = await c.get("/journeys/default")
            assert "/migrate" not in page.text
            r = await c.post(
                "/journeys/default/migrate", data={"csrf": csrf_of(page.text), "dry_run": "0"}
            )
        assert r.status_code == 403


async def dead_letter(stack: Stack, tenant: str, customer: str) -> str:
    """An order event as journeys' engine dead-letters it (its verdict in x-* headers)."""
    event = CloudEvent.new(
        c.OrderDelivered(order_id="o-dlq", delivered_at="2026-03-01T00:00:00Z", reported_by="api"),
        tenant_id=tenant,
        subject=customer,
        source="tests",
    )
    rec = to_record(event)
    producer = build_producer(
        KafkaConfig(
            stack.kafka_bootstrap_servers, enable_idempotence=stack.kafka_enable_idempotence
        )
    )
    await producer.start()
    try:
        await producer.send_and_wait(
            "afterglow.orders.dlq",
            rec.value,
            key=rec.key,
            headers=[
                *rec.headers,
                ("x-consumer", b"journeys.engine"),
                ("x-original-topic", rec.topic.encode()),
                ("x-error", b"ValueError: console test"),
            ],
        )
    finally:
        await producer.stop()
    return event.id


class TestQueues:
    async def test_a_held_referral_is_seen_read_only_then_approved(self, shop: Tenant, http):
        held = await seed_held_referral(http, shop)
        async with signed_in(shop.urls["console"], shop.keys["reader"]) as c:
            page = await c.get("/queues")
            assert page.status_code == 200
            section = page.text[page.text.index('id="held-referrals"') :]
            assert "velocity review" in section.split("</section>")[0]
            assert f'/queues/referrals/{held}"' not in page.text  # no form for this key
            r = await c.post(
                f"/queues/referrals/{held}",
                data={"csrf": csrf_of(page.text), "decision": "approve"},
            )
            assert r.status_code == 403
        queue = await http.get(f"{shop.urls['referrals']}/v1/referrals", headers=shop.auth())
        assert [x["id"] for x in queue.json()["referrals"]] == [held]
        async with signed_in(shop.urls["console"], shop.keys["writer"]) as c:
            page = await c.get("/queues")
            assert f'action="/queues/referrals/{held}"' in page.text
            r = await c.post(
                f"/queues/referrals/{held}",
                data={"csrf": csrf_of(page.text), "decision": "approve"},
            )
            assert (r.status_code, r.headers["location"]) == (303, "/queues?done=referral-approve")
            again = await c.post(
                f"/queues/referrals/{held}",
                data={"csrf": csrf_of(page.text), "decision": "approve"},
            )
            assert again.status_code == 409  # decided already: said, not done twice
        queue = await http.get(f"{shop.urls['referrals']}/v1/referrals", headers=shop.auth())
        assert queue.json()["referrals"] == []

    async def test_a_dead_letter_is_listed_and_redriven(
        self, shop: Tenant, other_shop: Tenant, stack: Stack
    ):
        mine = await dead_letter(stack, shop.id, shop.customer("a"))
        theirs = await dead_letter(stack, other_shop.id, other_shop.customer("a"))
        async with signed_in(shop.urls["console"], shop.keys["writer"]) as c:
            page = await c.get("/queues")
            assert mine in page.text and theirs not in page.text
            m = re.search(
                rf'{mine}.*?name="dlq" value="([^"]+)">\s*<input type="hidden" name="offset" '
                r'value="(\d+)"',
                page.text,
                re.S,
            )
            assert m, "no redrive form for the letter"
            async with TopicTap(stack.kafka_bootstrap_servers, "afterglow.orders") as tap:
                r = await c.post(
                    "/queues/dlq/journeys",
                    data={"csrf": csrf_of(page.text), "dlq": m.group(1), "offset": m.group(2)},
                )
                assert (r.status_code, r.headers["location"]) == (303, "/queues?done=redriven")
                await tap.wait_for_records(
                    lambda rec: dict(rec.headers).get("ce_id") == mine.encode()
                )

    async def test_a_read_only_key_cannot_redrive(self, shop: Tenant):
        async with signed_in(shop.urls["console"], shop.keys["reader"]) as c:
            page = await c.get("/queues")
            assert 'action="/queues/dlq/' not in page.text
            r = await c.post(
                "/queues/dlq/journeys",
                data={"csrf": csrf_of(page.text), "dlq": "afterglow.orders.dlq", "offset": "0"},
            )
        assert r.status_code == 403


class TestSettings:
    async def test_a_read_only_key_sees_settings_and_cannot_change_them(self, shop: Tenant, http):
        async with signed_in(shop.urls["console"], shop.keys["reader"]) as c:
            page = await c.get("/settings")
            assert page.status_code == 200
            for heading in (
                "Messaging: quiet hours and caps",
                "Message templates",
                "Loyalty rules",
            ):
                assert heading in page.text
            assert 'action="/settings/messaging"' not in page.text
            r = await c.post(
                "/settings/messaging",
                data={"csrf": csrf_of(page.text), "quiet_hours_start": "01:00"},
            )
        assert r.status_code == 403
        now = await http.get(f"{shop.urls['journeys']}/v1/messaging/settings", headers=shop.auth())
        assert now.json()["quiet_hours_start"] != "01:00"

    async def test_quiet_hours_are_saved_and_a_bad_one_is_shown_and_not_saved(
        self, shop: Tenant, http
    ):
        form = {
            "quiet_hours_start": "22:00",
            "quiet_hours_end": "07:30",
            "frequency_cap": "2",
            "frequency_window_days": "5",
            "default_channel": "email",
            "default_timezone": "Europe/Paris",
            "shop_name": "Tent & Co",
        }
        async with signed_in(shop.urls["console"], shop.keys["writer"]) as c:
            page = await c.get("/settings")
            token = csrf_of(page.text)
            r = await c.post("/settings/messaging", data={"csrf": token, **form})
            assert (r.status_code, r.headers["location"]) == (303, "/settings?saved=messaging")
            bad = await c.post(
                "/settings/messaging", data={"csrf": token, **form, "quiet_hours_end": "25:00"}
            )
            assert bad.status_code == 422
            assert 'id="messaging-error"' in bad.text and "quiet hours end" in bad.text
        saved = await http.get(
            f"{shop.urls['journeys']}/v1/messaging/settings", headers=shop.auth()
        )
        got = saved.json()
        assert (got["quiet_hours_start"], got["quiet_hours_end"]) == ("22:00", "07:30")
        assert (got["frequency_cap"], got["shop_name"]) == (2, "Tent & Co")

    async def test_a_template_draft_is_previewed(self, shop: Tenant):
        async with signed_in(shop.urls["console"], shop.keys["reader"]) as c:
            page = await c.get("/settings")
            r = await c.post(
                "/settings/templates/preview",
                data={
                    "csrf": csrf_of(page.text),
                    "kind": "welcome",
                    "channel": "email",
                    "subject": "Hi {{ customer.first_name }}",
                    "text": "Thanks, {{ customer.first_name }}!",
                },
            )
        assert r.status_code == 200, r.text
        preview = htmllib.unescape(r.text[r.text.index('id="preview"') :])
        assert "Subject:</strong> Hi Jane" in preview and "Thanks, Jane!" in preview
