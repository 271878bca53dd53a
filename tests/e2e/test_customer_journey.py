"""A shop's whole post-purchase story across every service, each running as its own
uvicorn process on the real PostgreSQL and broker, asserted through public REST APIs.

The scenario (tenant set-up, signed Shopify webhooks, survey pages, the helpdesk's
ticket, the referred friend) is the demo's: ``afterglow.devstack.demo.Scenario``. Days
are compressed through the tenant's journey definition, not through code paths.

Parametrized with one and with two instances of every service: with two, each consumer
group shares the partitions and the dispatcher replicas share the message table, and
every message must still reach the merchant's ESP exactly once.
"""

from __future__ import annotations

import collections
from collections.abc import Iterator
from typing import Any

import pytest

from afterglow.devstack.demo import FAST_ENV, SERVICES, Receiver, Scenario
from afterglow.devstack.services import RunningServices, running_services
from afterglow.devstack.stack import Stack
from afterglow.events.testing import TopicTap
from afterglow.events.topics import TOPICS

ADMIN_TOKEN = "e2e-admin-token"

pytestmark = pytest.mark.timeout(600)


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
        extra_env={**FAST_ENV, "INGEST_ADMIN_TOKEN": ADMIN_TOKEN},
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


async def test_customer_journey_end_to_end(services: RunningServices, stack: Stack) -> None:
    urls = {n: [p.url for p in procs] for n, procs in services.processes.items()}
    dlq_topics = [t.dlq for t in TOPICS]
    with Receiver().running() as receiver:
        async with (
            TopicTap(stack.kafka_bootstrap_servers, *dlq_topics) as dlq,
            Scenario(urls, ADMIN_TOKEN, receiver, say=print, timeout=90) as sc,
        ):
            try:
                await sc.run()
            except AssertionError as exc:
                raise AssertionError(f"{exc}\nservice errors:\n{log_tails(services)}") from exc
            await _assert_final_state(sc, receiver)
            dead = [r for r in await dlq.events(settle=1.0) if r.tenantid == sc.tenant_id]
            assert not dead, f"dead-lettered for this tenant: {[(e.type, e.subject) for e in dead]}"
            raw = [r for r in dlq.records if (r.key or b"").startswith(sc.tenant_id.encode())]
            assert not raw, f"{len(raw)} raw DLQ records for this tenant"
        assert receiver.rejected == 0, "the dispatcher sent messages with a bad signature"


async def _assert_final_state(sc: Scenario, receiver: Receiver) -> None:
    ids = {role: c.id for role, c in sc.customers.items()}

    # --- messages at the ESP: each exactly once, the right ones to the right people ---
    seen = collections.Counter(m.webhook_id for m in receiver.messages)
    assert all(n == 1 for n in seen.values()), f"redelivered: {seen.most_common(3)}"

    def kinds(role: str) -> list[str]:
        return sorted(m.kind for m in receiver.of(ids[role]))

    # Why a message did not arrive, from journeys' message log (status and reason).
    not_sent = {
        role: [
            f"{m['kind']}: {m['status']} ({m.get('reason')})"
            for m in await sc.messages(role)
            if m["status"] != "sent"
        ]
        for role in ("promoter", "passive", "detractor", "refund")
    }

    base = ["check_in", "review_request", "survey_invite", "welcome"]
    for role, extra in (("promoter", ["referral_invite"]), ("passive", ["loyalty_nudge"])):
        got = kinds(role)
        assert got == sorted([*base, *extra]), f"{role} got {got}; not sent: {not_sent[role]}"
    # The detractor is asked for a review too (no review gating), after recovery.
    detractor = [k for k in kinds("detractor") if k != "service_recovery"]
    assert detractor == base, f"detractor got {detractor}; not sent: {not_sent['detractor']}"
    assert not sc.problems, sc.problems
    [review] = receiver.of(ids["detractor"], "review_request")
    assert review.at > sc.timeline["ticket_resolved"], "review ask left before the ticket closed"
    # The refunded customer left the journey at once: welcome only, no survey.
    assert kinds("refund") == ["welcome"], kinds("refund")
    assert "referral_invite" not in kinds("friend")

    # The message log (journeys' REST) agrees: everything delivered was sent once; nothing
    # failed; the refunded customer has no survey queued or suppressed.
    for role in ("promoter", "passive", "detractor", "refund"):
        log = await sc.messages(role)
        assert not [m for m in log if m["status"] == "failed"], (role, log)
        sent = sorted(m["kind"] for m in log if m["status"] == "sent")
        assert sent == kinds(role), (role, sent, kinds(role))
    refund_log = await sc.messages("refund")
    assert not [m for m in refund_log if m["kind"] in ("check_in", "survey_invite")]

    # --- journeys: stages and the cause of every transition ---------------------------
    for role, band in (
        ("promoter", "promoter"),
        ("passive", "passive"),
        ("detractor", "detractor"),
    ):
        j = await sc.journey(role)
        assert j is not None
        inst = j["instances"][0]
        assert inst["status"] == "completed" and inst["band"] == band, (role, inst)
        assert stages(j) == ["onboarding", "check_in", "survey", "advocacy"], (role, stages(j))
        assert all(h["cause"] for h in inst["history"]), (role, inst["history"])
    detractor_journey = await sc.journey("detractor")
    assert detractor_journey is not None
    assert {"pause", "resume"} <= set(history_kinds(detractor_journey))
    refund = await sc.journey("refund")
    assert refund is not None
    inst = refund["instances"][0]
    assert inst["status"] == "exited", inst
    assert "survey" not in stages(refund) and "advocacy" not in stages(refund)
    assert inst["history"][-1]["cause"], inst["history"]

    # --- feedback: NPS from the three answers (10, 8, 3) ------------------------------
    nps = await sc.nps()
    totals = nps.get("total", nps)
    assert totals["promoters"] == 1 and totals["passives"] == 1 and totals["detractors"] == 1, nps
    assert totals["nps"] == 0.0, nps

    # --- referrals: the friend's order converted for the promoter -------------------
    adv = await sc.referrals("promoter")
    assert adv is not None and adv["code"]["code"] == sc.referral_code
    [referral] = adv["referrals"]
    assert referral["state"] == "confirmed", referral
    assert referral["order_id"] == f"shopify:{sc.customers['friend'].order_id}", referral
    metrics = await sc.referral_metrics()
    assert metrics["conversions"] == 1 and metrics["invited"] == 1, metrics

    # --- loyalty: same order, same survey bonus; the promoter also has the referral bonus
    rules = await sc.call("GET", "loyalty", "/v1/rules")
    rules = rules.get("rules", rules)
    referral_bonus = rules["bonuses"]["referral"]

    async def balances() -> dict[str, dict[str, Any]]:
        out = {}
        for role in ("promoter", "passive", "detractor", "refund"):
            acct = await sc.account(role)
            assert acct is not None, f"no loyalty account for {role}"
            out[role] = acct
        return out

    def settled(b: dict[str, dict[str, Any]]) -> bool:
        return (
            all(a["pending"] == 0 for a in b.values())
            and b["promoter"]["available"] - b["passive"]["available"] == referral_bonus
        )

    b = await sc.until("loyalty balances to settle", balances_if(balances, settled), 30)
    assert b["passive"]["available"] == b["detractor"]["available"] > 0, b
    # A full refund claws back the order's points.
    assert b["refund"]["available"] < b["passive"]["available"], b


def balances_if(probe: Any, check: Any) -> Any:
    async def run() -> Any:
        value = await probe()
        return value if check(value) else None

    return run
