"""The settings forms that change another service's settings: loyalty's program (rules,
tiers, rewards), referrals' share URL and windows, journeys' channels and templates.

Each is posted through the console over HTTP on the real stack and read back through
the owning service's own API: a saved form changed it, a refused one (the service's
422, shown at the field it names) and a read-only key's post (403) did not."""

from __future__ import annotations

import html as htmllib
import re
from typing import Any

import httpx
import pytest
import yaml

from afterglow.devstack.services import RunningServices

from ..console_support import Tenant, csrf_of, new_tenant, signed_in

pytestmark = [pytest.mark.timeout(600), pytest.mark.slow]


@pytest.fixture(scope="module")
async def shop(http: httpx.AsyncClient, services: RunningServices) -> Tenant:
    # No orders needed: settings are the tenant's own, whatever it sold.
    return await new_tenant(http, services)


async def read(http: httpx.AsyncClient, shop: Tenant, service: str, path: str) -> Any:
    r = await http.get(shop.urls[service] + path, headers=shop.auth())
    assert r.status_code == 200, r.text
    return r.json()


async def post_form(shop: Tenant, key: str, action: str, form: dict[str, str]) -> httpx.Response:
    """The settings page's form posted as a browser would, with the session's token."""
    async with signed_in(shop.urls["console"], shop.keys[key]) as c:
        page = await c.get("/settings")
        assert page.status_code == 200, page.text
        return await c.post(action, data={"csrf": csrf_of(page.text), **form})


def input_tag(html: str, input_id: str) -> str:
    m = re.search(rf'<(?:input|textarea|select)[^>]* id="{re.escape(input_id)}"[^>]*>', html)
    assert m, f"no field {input_id}"
    return m.group(0)


def textarea(html: str, input_id: str) -> str:
    m = re.search(rf'<textarea[^>]* id="{re.escape(input_id)}"[^>]*>(.*?)</textarea>', html, re.S)
    assert m, f"no textarea {input_id}"
    return htmllib.unescape(m.group(1))


class TestLoyaltyProgram:
    async def test_the_program_shown_is_edited_and_loyalty_runs_the_new_one(
        self, shop: Tenant, http: httpx.AsyncClient
    ):
        async with signed_in(shop.urls["console"], shop.keys["writer"]) as c:
            page = await c.get("/settings")
            rules = yaml.safe_load(textarea(page.text, "loyalty-rules"))
            assert rules == await read(http, shop, "loyalty", "/v1/rules")  # what is saved
            rules["points_per_unit"] = 7
            rules["tiers"] = [
                {"name": "member", "threshold": 0, "multiplier": "1"},
                {"name": "gold", "threshold": 50000, "multiplier": "1.5"},
            ]
            r = await c.post(
                "/settings/loyalty", data={"csrf": csrf_of(page.text), "rules": yaml.dump(rules)}
            )
        assert (r.status_code, r.headers["location"]) == (303, "/settings?saved=loyalty")
        now = await read(http, shop, "loyalty", "/v1/rules")
        assert now["points_per_unit"] == 7
        assert [(t["name"], t["threshold"]) for t in now["tiers"]] == [
            ("member", 0),
            ("gold", 50000),
        ]

    async def test_a_bad_tier_is_shown_at_the_rules_with_the_edit_kept(
        self, shop: Tenant, http: httpx.AsyncClient
    ):
        before = await read(http, shop, "loyalty", "/v1/rules")
        rules = {**before, "tiers": [{"name": "member", "threshold": 0, "multiplier": "50"}]}
        typed = yaml.dump(rules)
        r = await post_form(shop, "writer", "/settings/loyalty", {"rules": typed})
        assert r.status_code == 422, r.text
        assert 'id="loyalty-error"' in r.text
        assert "tiers.0.multiplier" in r.text  # the service's field, in its message
        assert 'aria-invalid="true"' in input_tag(r.text, "loyalty-rules")
        assert textarea(r.text, "loyalty-rules") == typed  # kept for correcting
        assert await read(http, shop, "loyalty", "/v1/rules") == before

    @pytest.mark.parametrize(
        ("typed", "message"),
        [
            ("currency: [USD\n", "not valid YAML at line"),
            ("- 1\n- 2\n", "must be a mapping"),
            ("a: &x [1, 2]\nb: [*x, *x]\n", "anchors and aliases"),
        ],
    )
    async def test_what_is_not_a_program_is_refused_by_the_console(
        self, shop: Tenant, http: httpx.AsyncClient, typed: str, message: str
    ):
        before = await read(http, shop, "loyalty", "/v1/rules")
        r = await post_form(shop, "writer", "/settings/loyalty", {"rules": typed})
        assert r.status_code == 422, r.text
        assert message in htmllib.unescape(r.text)
        assert await read(http, shop, "loyalty", "/v1/rules") == before


def tier_form(*rows: tuple[str, str, str]) -> dict[str, str]:
    return {
        f"tiers.{i}.{part}": value
        for i, row in enumerate(rows)
        for part, value in zip(("name", "threshold", "multiplier"), row, strict=True)
    }


class TestLoyaltyTiers:
    async def test_a_tier_is_added_in_the_blank_row_and_one_removed(
        self, shop: Tenant, http: httpx.AsyncClient
    ):
        before = await read(http, shop, "loyalty", "/v1/rules")
        async with signed_in(shop.urls["console"], shop.keys["writer"]) as c:
            page = await c.get("/settings")
            # The saved tiers, then a blank row for a new one.
            n = len(before["tiers"])
            assert (
                input_tag(page.text, f"tier-{n - 1}-name").find(
                    f'value="{before["tiers"][-1]["name"]}"'
                )
                > 0
            )
            assert 'value=""' in input_tag(page.text, f"tier-{n}-name")
            form = tier_form(
                ("bronze", "0", "1"),
                ("", "100", "1"),  # name cleared: removed
                ("silver", "20000", "1.25"),
                ("platinum", "90000", "2"),  # typed in the blank row
            )
            r = await c.post("/settings/loyalty/tiers", data={"csrf": csrf_of(page.text), **form})
        assert (r.status_code, r.headers["location"]) == (303, "/settings?saved=tiers")
        now = await read(http, shop, "loyalty", "/v1/rules")
        got = [(t["name"], t["threshold"], float(t["multiplier"])) for t in now["tiers"]]
        assert got == [("bronze", 0, 1.0), ("silver", 20000, 1.25), ("platinum", 90000, 2.0)]
        # The rest of the program is as it was.
        assert {k: v for k, v in now.items() if k != "tiers"} == {
            k: v for k, v in before.items() if k != "tiers"
        }

    async def test_a_bad_multiplier_is_shown_at_its_row_though_a_row_above_was_removed(
        self, shop: Tenant, http: httpx.AsyncClient
    ):
        before = await read(http, shop, "loyalty", "/v1/rules")
        form = tier_form(("bronze", "0", "1"), ("", "", ""), ("gold", "5000", "50"))
        r = await post_form(shop, "writer", "/settings/loyalty/tiers", form)
        assert r.status_code == 422, r.text
        # Loyalty names tiers.1.multiplier: the second tier sent, the form's third row.
        assert 'aria-invalid="true"' in input_tag(r.text, "tier-2-multiplier")
        assert 'aria-invalid="true"' not in input_tag(r.text, "tier-1-multiplier")
        assert 'value="50"' in input_tag(r.text, "tier-2-multiplier")  # kept
        assert 'id="tiers-error"' in r.text
        assert await read(http, shop, "loyalty", "/v1/rules") == before

    async def test_tiers_out_of_order_are_refused_above_the_table(
        self, shop: Tenant, http: httpx.AsyncClient
    ):
        before = await read(http, shop, "loyalty", "/v1/rules")
        form = tier_form(("bronze", "0", "1"), ("gold", "9000", "2"), ("silver", "5000", "1.5"))
        r = await post_form(shop, "writer", "/settings/loyalty/tiers", form)
        assert r.status_code == 422, r.text
        assert "strictly increasing" in r.text
        assert await read(http, shop, "loyalty", "/v1/rules") == before


class TestReferralSettings:
    async def test_the_share_url_and_windows_are_saved(self, shop: Tenant, http: httpx.AsyncClient):
        form = {
            "share_base_url": "https://tents.example.com/",
            "return_window_days": "14",
            "attribution_window_days": "60",
        }
        r = await post_form(shop, "writer", "/settings/referrals", form)
        assert (r.status_code, r.headers["location"]) == (303, "/settings?saved=referrals")
        now = await read(http, shop, "referrals", "/v1/settings")
        assert (now["share_base_url"], now["return_window_days"]) == (form["share_base_url"], 14)
        assert now["attribution_window_days"] == 60
        assert now["sources"]["attribution_window_days"] == "tenant"

    @pytest.mark.parametrize("bad", ["400", "two weeks"])
    async def test_a_bad_window_is_shown_at_its_field_and_not_saved(
        self, shop: Tenant, http: httpx.AsyncClient, bad: str
    ):
        before = await read(http, shop, "referrals", "/v1/settings")
        form = {"share_base_url": "https://other.example.com/", "return_window_days": bad}
        r = await post_form(shop, "writer", "/settings/referrals", form)
        assert r.status_code == 422, r.text
        field = input_tag(r.text, "referrals-return_window_days")
        assert 'aria-invalid="true"' in field and f'value="{bad}"' in field
        # The message sits right after the field it is about.
        after = r.text[r.text.index('id="referrals-return_window_days"') :]
        assert after.index('id="referrals-error"') < after.index("</div>")
        assert await read(http, shop, "referrals", "/v1/settings") == before

    async def test_the_referee_reward_is_saved_in_minor_units(
        self, shop: Tenant, http: httpx.AsyncClient
    ):
        form = {
            "referee_reward.kind": "fixed_amount",
            "referee_reward.percent": "10",  # the other kind's value: not sent
            "referee_reward.amount": "5.50",
            "referee_reward.currency": "eur",
            "referee_reward.valid_days": "45",
        }
        r = await post_form(shop, "writer", "/settings/referrals", form)
        assert (r.status_code, r.headers["location"]) == (303, "/settings?saved=referrals")
        now = await read(http, shop, "referrals", "/v1/settings")
        assert now["referee_reward"] == {
            "kind": "fixed_amount",
            "percent": None,
            "amount": 550,
            "currency": "EUR",
            "valid_days": 45,
            "label": "5.50 EUR off",
        }
        assert now["sources"]["referee_reward"] == "tenant"
        async with signed_in(shop.urls["console"], shop.keys["writer"]) as c:
            page = (await c.get("/settings")).text
        # The form shows the saved reward as typed: in the currency, not in cents.
        assert 'value="5.50"' in input_tag(page, "referrals-referee_reward.amount")

        r = await post_form(
            shop, "writer", "/settings/referrals", {"referee_reward.kind": "default"}
        )
        assert r.status_code == 303, r.text
        now = await read(http, shop, "referrals", "/v1/settings")
        assert (now["referee_reward"]["label"], now["sources"]["referee_reward"]) == (
            "10% off",
            "default",
        )

    @pytest.mark.parametrize(
        ("form", "field"),
        [
            # referrals' own 422, shown at the field it names
            ({"referee_reward.kind": "percentage", "referee_reward.percent": "150"}, "percent"),
            (
                {
                    "referee_reward.kind": "fixed_amount",
                    "referee_reward.amount": "5",
                    "referee_reward.currency": "ABC",
                },
                "currency",
            ),
            # the console's own: cents of a cent cannot become minor units
            (
                {
                    "referee_reward.kind": "fixed_amount",
                    "referee_reward.amount": "5.001",
                    "referee_reward.currency": "EUR",
                },
                "amount",
            ),
        ],
    )
    async def test_a_bad_reward_is_shown_at_its_field_and_not_saved(
        self, shop: Tenant, http: httpx.AsyncClient, form: dict[str, str], field: str
    ):
        before = await read(http, shop, "referrals", "/v1/settings")
        r = await post_form(
            shop, "writer", "/settings/referrals", {"return_window_days": "9", **form}
        )
        assert r.status_code == 422, r.text
        input_id = f"referrals-referee_reward.{field}"
        typed = htmllib.escape(form[f"referee_reward.{field}"])
        tag = input_tag(r.text, input_id)
        assert 'aria-invalid="true"' in tag and f'value="{typed}"' in tag
        after = r.text[r.text.index(f'id="{input_id}"') :]
        assert after.index('id="referrals-error"') < after.index("</div>")
        assert await read(http, shop, "referrals", "/v1/settings") == before


class TestChannels:
    async def test_sms_is_given_a_rate_and_journeys_keeps_it(
        self, shop: Tenant, http: httpx.AsyncClient
    ):
        r = await post_form(
            shop, "writer", "/settings/channels/sms", {"provider": "webhook", "rate_per_s": "2.5"}
        )
        assert (r.status_code, r.headers["location"]) == (303, "/settings?saved=channel-sms")
        channels = await read(http, shop, "journeys", "/v1/messaging/channels")
        sms = next(c for c in channels["channels"] if c["channel"] == "sms")
        assert (sms["provider"], sms["rate_per_s"]) == ("webhook", 2.5)

    async def test_a_bad_smtp_sender_is_shown_at_its_field_and_not_saved(
        self, shop: Tenant, http: httpx.AsyncClient
    ):
        before = await read(http, shop, "journeys", "/v1/messaging/channels")
        form = {
            "provider": "smtp",
            "host": "smtp.example.com",
            "port": "587",
            "security": "starttls",
            "from_email": "not an address",
        }
        r = await post_form(shop, "writer", "/settings/channels/email", form)
        assert r.status_code == 422, r.text
        field = input_tag(r.text, "channel-email-from_email")
        assert 'aria-invalid="true"' in field and 'value="not an address"' in field
        assert 'id="channel-email-error">from_email: ' in r.text  # the form's own name
        assert await read(http, shop, "journeys", "/v1/messaging/channels") == before

    async def test_an_unknown_channel_is_not_found(self, shop: Tenant):
        r = await post_form(shop, "writer", "/settings/channels/pigeon", {"provider": "webhook"})
        assert r.status_code == 404


class TestTemplates:
    async def test_a_previewed_draft_is_saved(self, shop: Tenant, http: httpx.AsyncClient):
        draft = {
            "kind": "welcome",
            "channel": "email",
            "subject": "Welcome, {{ customer.first_name }}",
            "text": "Glad you came, {{ customer.first_name }}.",
        }
        async with signed_in(shop.urls["console"], shop.keys["writer"]) as c:
            page = await c.get("/settings")
            token = csrf_of(page.text)
            assert 'formaction="/settings/templates/save"' not in page.text  # nothing previewed
            shown = await c.post("/settings/templates/preview", data={"csrf": token, **draft})
            assert shown.status_code == 200, shown.text
            assert 'formaction="/settings/templates/save"' in shown.text
            r = await c.post("/settings/templates/save", data={"csrf": token, **draft})
        assert (r.status_code, r.headers["location"]) == (303, "/settings?saved=templates")
        templates = (await read(http, shop, "journeys", "/v1/messaging/templates"))["templates"]
        saved = next(t for t in templates if (t["kind"], t["channel"]) == ("welcome", "email"))
        assert (saved["source"], saved["subject"], saved["text"]) == (
            "tenant",
            draft["subject"],
            draft["text"],
        )

    async def test_a_draft_that_does_not_render_is_shown_at_its_part_and_not_saved(
        self, shop: Tenant, http: httpx.AsyncClient
    ):
        draft = {
            "kind": "check_in",
            "channel": "email",
            "subject": "How is it going?",
            "text": "Hi {{ customer.first_name ",
        }
        r = await post_form(shop, "writer", "/settings/templates/save", draft)
        assert r.status_code == 422, r.text
        assert 'aria-invalid="true"' in input_tag(r.text, "tpl-text")
        assert textarea(r.text, "tpl-text") == draft["text"]  # kept for correcting
        templates = (await read(http, shop, "journeys", "/v1/messaging/templates"))["templates"]
        check_in = next(t for t in templates if (t["kind"], t["channel"]) == ("check_in", "email"))
        assert check_in["source"] == "default"


class TestReadOnlyKey:
    FORMS = {
        "/settings/loyalty": {"rules": "points_per_unit: 9\n"},
        "/settings/loyalty/tiers": tier_form(("solo", "0", "1")),
        "/settings/referrals": {"return_window_days": "3"},
        "/settings/channels/email": {"provider": "webhook", "rate_per_s": "9"},
        "/settings/templates/save": {"kind": "welcome", "channel": "sms", "text": "Hi"},
    }

    async def test_no_form_is_offered_and_every_post_is_refused_unchanged(
        self, shop: Tenant, http: httpx.AsyncClient
    ):
        sources = {
            ("loyalty", "/v1/rules"),
            ("referrals", "/v1/settings"),
            ("journeys", "/v1/messaging/channels"),
            ("journeys", "/v1/messaging/templates"),
        }
        before = {s: await read(http, shop, *s) for s in sources}
        async with signed_in(shop.urls["console"], shop.keys["reader"]) as c:
            page = await c.get("/settings")
            assert page.status_code == 200
            for action in self.FORMS:
                assert f'action="{action}"' not in page.text
            assert "/settings/templates/save" not in page.text
            token = csrf_of(page.text)
            shown = await c.post(
                "/settings/templates/preview",
                data={"csrf": token, "kind": "welcome", "channel": "sms", "text": "Hi"},
            )
            assert shown.status_code == 200
            assert "/settings/templates/save" not in shown.text  # previewing, never saving
            for action, form in self.FORMS.items():
                r = await c.post(action, data={"csrf": token, **form})
                assert r.status_code == 403, (action, r.text)
        assert {s: await read(http, shop, *s) for s in sources} == before
