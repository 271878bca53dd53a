"""A shop's whole post-purchase story across every service, each running as its own
uvicorn process on the real PostgreSQL and broker, asserted through public REST APIs.

The scenario (tenant set-up, signed Shopify webhooks, survey pages, the helpdesk's
ticket, the referred friend) is the demo's: ``afterglow.devstack.demo.Scenario``. Days
are compressed through the tenant's journey definition, not through code paths.

Parametrized with one and with two instances of every service: with two, each consumer
group shares the partitions and the dispatcher replicas share the message table, and
every message must still reach the merchant's ESP exactly once.

On the same running services, a second tenant's loops with the outside world
(tests/e2e/shop_and_helpdesk_loops.py): a loyalty reward created in a Shopify stand-in
and spent at checkout, and a detractor's ticket through a Zendesk stand-in. Same
processes, so no second start-up of every service.
"""

from __future__ import annotations

import collections
import contextlib
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # the loops' steps, next to this module

from afterglow.devstack.demo import (
    FAST_ENV,
    SERVICES,
    Receiver,
    Scenario,
    email_through_catcher,
)
from afterglow.devstack.mailcatcher import MailCatcher
from afterglow.devstack.processes import free_port
from afterglow.devstack.services import RunningServices, running_services
from afterglow.devstack.stack import Stack
from afterglow.events.testing import TopicTap, eventually
from afterglow.events.topics import TOPICS
from afterglow.kit.export import ExportIncomplete, gather_exports

from .shop_and_helpdesk_loops import run_loops

ADMIN_TOKEN = "e2e-admin-token"

pytestmark = [pytest.mark.timeout(600), pytest.mark.slow]


@pytest.fixture(scope="module", params=[1, 2], ids=["one-instance", "two-instances"])
def services(
    request: pytest.FixtureRequest, stack: Stack, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServices]:
    instances: int = request.param
    logs = tmp_path_factory.mktemp(f"e2e-logs-{instances}")
    with running_services(
        stack,
        logs,
        names=list(SERVICES),
        instances=instances,
        extra_env={
            **FAST_ENV,
            "INGEST_ADMIN_TOKEN": ADMIN_TOKEN,
            # The ticket and discount workers poll as fast as the relay: seconds are days.
            "INGEST_HELPDESK_POLL_S": "0.2",
            "INGEST_DISCOUNT_POLL_S": "0.2",
        },
        # A loaded CI machine can take minutes to import and join every consumer group.
        ready_timeout=300,
    ) as svc:
        yield svc


def log_tails(svc: RunningServices) -> str:
    out = []
    for procs in svc.processes.values():
        for p in procs:
            text = p.log.read_text(errors="replace") if p.log.exists() else ""
            errors = [ln for ln in text.splitlines() if "ERROR" in ln or "Traceback" in ln]
            if errors:
                out.append(f"--- {p.log.name}\n" + "\n".join(errors[-15:]))
    return "\n".join(out)


def history_kinds(journey: dict[str, Any]) -> list[str]:
    return [h["kind"] for h in journey["instances"][0]["history"]]


def stages(journey: dict[str, Any]) -> list[str]:
    return [h["to_stage"] for h in journey["instances"][0]["history"] if h["kind"] == "stage"]


async def test_customer_journey_end_to_end(
    services: RunningServices, stack: Stack, tmp_path_factory: pytest.TempPathFactory
) -> None:
    urls = {n: [p.url for p in procs] for n, procs in services.processes.items()}
    dlq_topics = [t.dlq for t in TOPICS]
    failures: list[str] = []
    mail = MailCatcher(
        tmp_path_factory.mktemp("e2e-mail"), smtp_port=free_port(), http_port=free_port()
    )
    with Receiver().running() as receiver, mail.running():
        async with (
            TopicTap(stack.kafka_bootstrap_servers, *dlq_topics) as dlq,
            Scenario(urls, ADMIN_TOKEN, receiver, say=print, timeout=90) as sc,
        ):
            try:
                await sc.run()
            except AssertionError as exc:
                raise AssertionError(f"{exc}\nservice errors:\n{log_tails(services)}") from exc
            # Every check runs and every failure is reported at once: one run shows
            # every gap between the services, not only the first.
            await _check_final_state(sc, receiver, failures)
            # As the demo ends: the tenant's email channel switched to SMTP, a thank-you
            # arrives at a real SMTP server (the dev mail catcher) as a MIME message.
            await email_through_catcher(sc, mail.smtp_port, mail.url, str(mail.folder))
            # The thank-you is not alone there when another of the tenant's messages
            # falls due after the switch: every email that went over SMTP is checked.
            emails = mail.messages()
            if not emails:
                failures.append("no email reached the mail catcher over SMTP")
            for eml in emails:
                if "multipart/alternative" not in eml.read_text(errors="replace"):
                    failures.append(f"the email {eml.name} has no text and HTML alternatives")
            dead = [e for e in await dlq.events(settle=1.0) if e.tenantid == sc.tenant_id]
            if dead:
                failures.append(
                    f"dead-lettered for this tenant: {[(e.type, e.subject) for e in dead]}"
                )
        if receiver.rejected:
            failures.append(f"{receiver.rejected} messages with a bad signature")
    assert not failures, "\n".join(f"- {f}" for f in failures)


async def test_a_reward_spent_at_checkout_and_a_detractors_ticket_loop(
    services: RunningServices,
) -> None:
    urls = {n: [p.url for p in procs] for n, procs in services.processes.items()}
    try:
        await run_loops(urls, ADMIN_TOKEN)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nservice errors:\n{log_tails(services)}") from exc


async def _check_final_state(sc: Scenario, receiver: Receiver, failures: list[str]) -> None:
    def check(ok: Any, message: str) -> None:
        if not ok:
            failures.append(message)

    ids = {role: c.id for role, c in sc.customers.items()}
    check(not sc.problems, f"scenario problems: {sc.problems}")

    # --- messages at the ESP: each exactly once, the right ones to the right people ---
    seen = collections.Counter(m.webhook_id for m in receiver.messages)
    check(all(n == 1 for n in seen.values()), f"redelivered: {seen.most_common(3)}")
    per_kind = collections.Counter((m.customer, m.kind) for m in receiver.messages)
    check(all(n == 1 for n in per_kind.values()), f"a kind twice: {per_kind.most_common(3)}")

    def kinds(role: str) -> list[str]:
        return sorted(m.kind for m in receiver.of(ids[role]))

    base = ["check_in", "review_reminder", "review_request", "survey_invite", "welcome"]
    expected = {
        "promoter": sorted([*base, "referral_invite"]),
        "passive": sorted([*base, "loyalty_nudge"]),
        "detractor": base,
    }

    # A journey that completed has asked for its last messages; they still travel through
    # feedback (the review link) and the dispatcher. Wait for them, boundedly, then judge.
    async def all_arrived() -> bool:
        return all(set(want) <= set(kinds(role)) for role, want in expected.items())

    with contextlib.suppress(AssertionError):  # judged below, with every detail
        await eventually(all_arrived, timeout=60, interval=0.5)

    # Why a message did not arrive, from journeys' message log (status and reason).
    logs = {
        role: await sc.messages(role) for role in ("promoter", "passive", "detractor", "refund")
    }
    not_sent = {
        role: [
            f"{m['kind']}: {m['status']} ({m.get('reason')})" for m in log if m["status"] != "sent"
        ]
        for role, log in logs.items()
    }

    for role in ("promoter", "passive"):
        got, want = kinds(role), expected[role]
        check(got == want, f"{role} got {got}, wants {want}; not sent: {not_sent[role]}")
    # The detractor is asked for a review too (no review gating), after recovery.
    detractor = [k for k in kinds("detractor") if k != "service_recovery"]
    check(
        detractor == base,
        f"detractor got {detractor}, wants {base}; not sent: {not_sent['detractor']}",
    )
    reviews = receiver.of(ids["detractor"], "review_request")
    check(
        all(r.at > sc.timeline["ticket_resolved"] for r in reviews),
        "the detractor's review ask left before the ticket was resolved",
    )
    # The refunded customer left the journey at once: welcome only, no survey; then the
    # shop's win-back email, whose link she used to unsubscribe.
    check(
        kinds("refund") == ["loyalty_nudge", "welcome"], f"refunded customer got {kinds('refund')}"
    )
    check("referral_invite" not in kinds("friend"), f"friend got {kinds('friend')}")
    # journeys' message log agrees with the ESP: what arrived is `sent`.
    for role, log in logs.items():
        sent = sorted(m["kind"] for m in log if m["status"] == "sent")
        check(sent == kinds(role), f"{role}: log says sent {sent}, ESP got {kinds(role)}")
    # ... and the shop's second win-back email, after she unsubscribed, was held back.
    eve = sorted((m["kind"], m["status"], m.get("reason")) for m in logs["refund"])
    check(
        eve
        == [
            ("loyalty_nudge", "sent", None),
            ("loyalty_nudge", "suppressed", "unsubscribed"),
            ("welcome", "sent", None),
        ],
        f"refunded customer's log: {eve}",
    )

    # --- journeys: stages and the cause of every transition ---------------------------
    for role in ("promoter", "passive", "detractor"):
        j = await sc.journey(role)
        if j is None:
            failures.append(f"{role} has no journey")
            continue
        inst = j["instances"][0]
        check(
            inst["status"] == "completed" and inst["band"] == role,
            f"{role}: {inst['status']} band {inst['band']}",
        )
        check(
            stages(j) == ["onboarding", "check_in", "survey", "advocacy"],
            f"{role} stages {stages(j)}",
        )
        check(all(h["cause"] for h in inst["history"]), f"{role}: transition without cause")
    dj = await sc.journey("detractor")
    check(
        dj is not None and {"pause", "resume"} <= set(history_kinds(dj)),
        "the detractor's journey did not pause on the ticket and resume on its resolution",
    )
    rj = await sc.journey("refund")
    if rj is None:
        failures.append("refunded customer has no journey")
    else:
        inst = rj["instances"][0]
        check(inst["status"] == "exited", f"refunded customer's journey is {inst['status']}")
        check(
            "check_in" not in stages(rj) and "survey" not in stages(rj),
            f"refunded customer's stages {stages(rj)}",
        )
        check(inst["history"][-1]["cause"], "the exit has no cause")
        check(inst["exit_reason"], "the exit has no reason")

    # --- feedback: NPS from the three answers (10, 8, 3) ------------------------------
    total = (await sc.nps())["total"]
    check(
        (total["promoters"], total["passives"], total["detractors"], total["nps"])
        == (1, 1, 1, 0.0),
        f"NPS totals {total}",
    )

    # --- referrals: the friend's order converted for the promoter -------------------
    adv = await sc.referrals("promoter")
    friend_order = f"shopify:{sc.customers['friend'].order_id}"
    check(
        adv is not None
        and adv["code"]["code"] == sc.referral_code
        and [(r["state"], r["order_id"]) for r in adv["referrals"]]
        == [("confirmed", friend_order)],
        f"promoter's referrals: {adv}",
    )
    metrics = await sc.referral_metrics()
    check(
        metrics["conversions"] == 1 and metrics["invited"] == 1,
        f"referral metrics {metrics}",
    )

    # --- loyalty: same order and survey bonus; the promoter also has the referral bonus
    rules = await sc.call("GET", "loyalty", "/v1/rules")
    referral_bonus = rules["bonuses"]["referral"]

    async def balances() -> dict[str, dict[str, Any]] | None:
        out = {}
        for role in ("promoter", "passive", "detractor", "refund"):
            acct = await sc.account(role)
            if acct is None:
                return None
            out[role] = acct
        settled = all(a["pending"] == 0 for a in out.values()) and (
            out["promoter"]["available"] - out["passive"]["available"] == referral_bonus
        )
        return out if settled else None

    try:
        b = await sc.until("loyalty balances to settle", balances, 30)
    except AssertionError as exc:
        failures.append(f"{exc}")
    else:
        check(
            b["passive"]["available"] == b["detractor"]["available"] > 0,
            f"passive and detractor earn alike: {b}",
        )
        # A full refund claws back the order's points (and its first-order bonus).
        check(b["refund"]["available"] == 0, f"refunded customer's points: {b['refund']}")

    # Last: by now every service has settled what it holds about the promoter.
    await _check_promoter_export(sc, ids, check)


async def _check_promoter_export(
    sc: Scenario, ids: dict[str, str], check: Callable[[Any, str], None]
) -> None:
    """The promoter's data access request: every service answers with its share."""
    urls = {name: sc.url(name) for name in sc.urls}
    try:
        export = await gather_exports(sc.http, urls, sc.key, ids["promoter"])
    except ExportIncomplete as exc:
        check(False, f"customer export: {exc}")
        return
    s = export["services"]
    check(set(s) == set(SERVICES), f"export from {sorted(s)}")
    order = f"shopify:{sc.customers['promoter'].order_id}"
    check(
        [o["order_id"] for o in s["ingest"]["orders"]] == [order]
        and {d["topic"] for d in s["ingest"]["deliveries"]} >= {"orders/create"},
        f"ingest export: {s['ingest']['orders']}, {len(s['ingest']['deliveries'])} deliveries",
    )
    check(
        len(s["journeys"]["journey_instances"]) == 1
        and "referral_invite" in {m["kind"] for m in s["journeys"]["messages"]},
        "journeys export lacks the promoter's journey or messages",
    )
    check(
        [(r["kind"], r["score"]) for r in s["feedback"]["responses"]] == [("nps", 10)],
        f"feedback export responses: {s['feedback']['responses']}",
    )
    check(
        [a["customer_id"] for a in s["loyalty"]["accounts"]] == [ids["promoter"]]
        and len(s["loyalty"]["entries"]) >= 2,
        f"loyalty export: {s['loyalty']['accounts']}",
    )
    referrals = s["referrals"]["referrals"]
    check(
        [c["code"] for c in s["referrals"]["codes"]] == [sc.referral_code]
        and len(referrals) == 1
        and "referee_customer_id" not in referrals[0],
        f"referrals export: {s['referrals']}",
    )
