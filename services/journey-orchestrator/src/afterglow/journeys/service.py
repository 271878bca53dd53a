"""The use cases of the journey routes: a customer's journey, definitions published as
versions, activated and deactivated, dry runs, migration of running instances, and the
counts (funnel, steps).

Everything runs in the caller's transaction (the request's session) and commits
nothing; a migration adds the events it causes to the outbox in that transaction.
Statements live in :mod:`.store` (the engine's), :mod:`.versions_store` and
:mod:`.views_store`; the answers are :mod:`.schemas`' models."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from afterglow.events import Outbox
from afterglow.journeys import engine as d
from afterglow.journeys import schemas as out
from afterglow.journeys import store, versions_store, views_store
from afterglow.journeys.metrics import JourneyMetrics, assemble
from afterglow.journeys.models import CustomerProfile, JourneyDefinition, JourneyInstance
from afterglow.kit.clock import Clock
from afterglow.kit.errors import NotFound, Unprocessable
from afterglow.kit.period import Period


def invalid(exc: d.DefinitionError, prefix: str = "") -> Unprocessable:
    """A definition the engine refuses, as a 422 naming the path of the bad part."""
    field = f"{prefix}{exc.path}" if exc.path else prefix.rstrip(".") or None
    return Unprocessable(f"{field}: {exc.message}" if field else exc.message, field=field)


@dataclass
class JourneyService:
    outbox: Outbox
    clock: Clock

    def now(self) -> datetime:
        now: datetime = self.clock.now()
        return now

    # --- a customer's journey ------------------------------------------------------------

    async def customer_journey(
        self, session: AsyncSession, tenant_id: str, customer_id: str
    ) -> out.CustomerJourneyOut:
        rows = await views_store.customer_rows(session, tenant_id, customer_id)
        if rows.profile is None and not rows.instances:
            raise NotFound(f"customer {customer_id!r} has no journey", field="customer_id")
        instances = [
            _instance_out(i, rows.next_timers.get(i.id), rows.history.get(i.id, []))
            for i in rows.instances
        ]
        return out.CustomerJourneyOut(
            customer_id=customer_id,
            profile=None if rows.profile is None else _profile_out(rows.profile),
            current=next((i for i in instances if i.status in ("running", "paused")), None),
            instances=instances,
        )

    # --- definitions -----------------------------------------------------------------------

    async def journeys(self, session: AsyncSession, tenant_id: str) -> out.JourneysOut:
        await store.ensure_default(session, tenant_id, self.now())
        by_name: dict[str, out.JourneyVersionsOut] = {}
        for r in await versions_store.definitions_of(session, tenant_id):
            j = by_name.setdefault(
                r.name, out.JourneyVersionsOut(name=r.name, active_version=None, versions=[])
            )
            j.versions.append(
                out.VersionOut(version=r.version, active=r.active, created_at=r.created_at)
            )
            if r.active:
                j.active_version = r.version
        return out.JourneysOut(journeys=list(by_name.values()))

    async def definition(
        self, session: AsyncSession, tenant_id: str, name: str, version: int | None
    ) -> out.DefinitionOut:
        await store.ensure_default(session, tenant_id, self.now())
        row = await _definition(session, tenant_id, name, version)
        return out.DefinitionOut(
            name=row.name, version=row.version, active=row.active, definition=row.body
        )

    async def publish(
        self, session: AsyncSession, tenant_id: str, name: str, body: Any
    ) -> out.StoredVersionOut:
        """Validate a definition and store it as the journey's next version, inactive."""
        if isinstance(body, dict):
            body.setdefault("name", name)
        try:
            j = d.parse_journey(body)
            d.check_review_gating(j)
        except d.DefinitionError as exc:
            raise invalid(exc) from exc
        if j.name != name:
            raise Unprocessable(f"name: {j.name!r} does not match the path {name!r}", field="name")
        now = self.now()
        await store.ensure_default(session, tenant_id, now)
        await versions_store.lock_versions(session, tenant_id, name)
        version = (await versions_store.latest_version(session, tenant_id, name) or 0) + 1
        versions_store.add_version(
            session, tenant_id, name, version, j.model_dump(mode="json"), now
        )
        return out.StoredVersionOut(name=name, version=version, active=False)

    async def activate(
        self, session: AsyncSession, tenant_id: str, name: str, version: int | None
    ) -> out.ActivatedOut:
        """Make ``version`` (default: the latest) the one new customers enter."""
        await store.ensure_default(session, tenant_id, self.now())
        if version is None:
            version = await versions_store.latest_version(session, tenant_id, name)
        row = await _definition(session, tenant_id, name, version)
        await versions_store.activate(session, row, self.now())
        return out.ActivatedOut(name=name, version=row.version, active=True)

    async def deactivate(
        self, session: AsyncSession, tenant_id: str, name: str
    ) -> out.DeactivatedOut:
        await _definition(session, tenant_id, name, None)
        await versions_store.deactivate_active(session, tenant_id, name)
        return out.DeactivatedOut(name=name, active=False)

    # --- dry runs and migration ------------------------------------------------------------

    async def simulate(
        self,
        session: AsyncSession,
        tenant_id: str,
        name: str,
        *,
        definition: dict[str, Any] | None,
        version: int | None,
        events: Sequence[d.SimEvent],
        profile: d.Profile | None,
    ) -> out.SimulationOut:
        """Run ``events`` through an inline definition or a stored version: nothing read
        but the definition, nothing written."""
        if definition is not None:
            try:
                j = d.parse_journey({"name": name, **definition})
                d.check_review_gating(j)
            except d.DefinitionError as exc:
                raise invalid(exc, "definition.") from exc
            run_version = version or 0
        else:
            row = await _definition(session, tenant_id, name, version)
            j, run_version = d.parse_journey(row.body), row.version
        try:
            records = d.simulate(j, list(events), version=run_version, profile=profile)
        except OverflowError as exc:
            # A delay that leaves datetime's range (an event late in 2199 and a long wait).
            raise Unprocessable(
                f"events: a step falls beyond year 9999 ({exc})", field="events"
            ) from exc
        transitions = [
            out.SimTransitionOut(
                instance_id=r.instance_id,
                kind=t.kind,
                from_stage=t.from_stage,
                to_stage=t.to_stage,
                cause=t.cause,
                reason=t.reason,
                at=t.at,
            )
            for r in records
            for t in r.transitions
        ]
        actions = [
            # The action's parameters after the fixed keys, as the answer always had them.
            out.SimActionOut.model_validate(
                {
                    "instance_id": r.instance_id,
                    "type": a.type,
                    "step": a.step,
                    "at": r.at,
                    **a.params,
                }
            )
            for r in records
            for a in r.actions
        ]
        return out.SimulationOut(
            journey=name, version=run_version, transitions=transitions, actions=actions
        )

    async def migrate(
        self,
        session: AsyncSession,
        tenant_id: str,
        name: str,
        to_version: int | None,
        dry_run: bool,
    ) -> out.MigrationOut:
        """Instances move only where their position means the same thing in the target:
        an instance waiting for stage S moves to S of the target (its delay recomputed
        from the same anchors); one in the middle of S's actions moves only if S exists
        with the same action at the same place. Otherwise it stays on its version and the
        report says why."""
        now = self.now()
        row = await _definition(session, tenant_id, name, to_version)
        if to_version is None and not row.active:
            raise Unprocessable(
                f"journey {name!r} has no active version; give to_version", field="to_version"
            )
        target = d.parse_journey(row.body)
        instances = await versions_store.instances_to_migrate(session, tenant_id, name, row.version)
        states = [d.InstanceState.model_validate(i.state) for i in instances]
        # The versions they run on: cached, the missing ones in one query.
        loaded = await store.tenant_journeys(session, [tenant_id], [(tenant_id, s) for s in states])
        versions = loaded[tenant_id].journeys
        report: list[out.KeptOut | out.MigratedOut] = []
        moves: list[tuple[JourneyInstance, d.StepResult]] = []
        for inst, state in zip(instances, states, strict=True):
            moved, outcome = d.migrate(versions[(name, state.version)], target, row.version, state)
            if moved is None:
                report.append(
                    out.KeptOut(
                        instance_id=inst.id,
                        customer_id=inst.customer_id,
                        from_version=state.version,
                        result="kept",
                        reason=outcome,
                    )
                )
                continue
            report.append(
                out.MigratedOut(
                    instance_id=inst.id,
                    customer_id=inst.customer_id,
                    from_version=state.version,
                    result="migrated",
                    to_version=row.version,
                    reason=outcome,
                )
            )
            migrated = d.Transition(
                "migrate", state.stage, moved.stage, f"migrate:v{row.version}", outcome, now
            )
            moves.append((inst, d.StepResult(moved, [migrated])))
        if moves and not dry_run:
            await self._write_moves(session, tenant_id, target, moves, now)
        return out.MigrationOut(
            journey=name, to_version=row.version, dry_run=dry_run, instances=report
        )

    async def _write_moves(
        self,
        session: AsyncSession,
        tenant_id: str,
        target: d.Journey,
        moves: list[tuple[JourneyInstance, d.StepResult]],
        now: datetime,
    ) -> None:
        """Every moved instance's row, transition, timers and events: the same writes as
        an event's step, one statement per table for the whole migration."""
        profiles = await versions_store.profile_states(
            session, tenant_id, (inst.customer_id for inst, _ in moves)
        )
        timers = await store.timers_of(session, [(tenant_id, res.state.id) for _, res in moves])
        changes = store.Changes(self.outbox, now, timers)
        for inst, res in moves:
            # A running instance's customer has a profile (its first event made both).
            profile = d.Profile.model_validate(profiles[inst.customer_id])
            changes.step(tenant_id, inst.customer_id, target, res, profile)
        await changes.write(session)

    # --- counts ------------------------------------------------------------------------------

    async def funnel(
        self, session: AsyncSession, tenant_id: str, journey: str, start: datetime, end: datetime
    ) -> out.FunnelOut:
        """Stage entries in [start, end) in the definition's order (the active version's,
        else the latest's; a stage no longer written after those), each with its
        conversion from the stage before; goal conversions and exits."""
        counts = await views_store.funnel_counts(session, tenant_id, journey, start, end)
        row = await versions_store.definition(session, tenant_id, journey, None)
        entered = counts.entered
        order = [s["name"] for s in row.body["stages"]] if row else sorted(k for k in entered if k)
        order += [k for k in entered if k and k not in order]
        stages = []
        prev: int | None = None
        for name in order:
            n = int(entered.get(name, 0))
            stages.append(
                out.FunnelStageOut(
                    stage=name,
                    entered=n,
                    customers=int(counts.customers.get(name, 0)),
                    conversion_from_previous=None if not prev else round(n / prev, 4),
                )
            )
            prev = n
        return out.FunnelOut(
            journey=journey,
            from_=start,
            to=end,
            stages=stages,
            goal_conversions={str(v): n for v, n in counts.goals.items()},
            goal_conversions_total=sum(counts.goals.values()),
            exits=counts.exits,
        )

    async def metrics(
        self, session: AsyncSession, tenant_id: str, period: Period
    ) -> JourneyMetrics:
        """Funnel, goal conversion and goal revenue per journey version, of the
        instances started in the period (definitions in :mod:`.metrics`)."""
        rows = await views_store.metrics_rows(session, tenant_id, period)
        return JourneyMetrics(
            from_=period.first,
            to=period.last,
            versions=assemble(rows.outcomes, rows.funnel, rows.revenue, rows.written),
        )

    async def step_counts(
        self, session: AsyncSession, tenant_id: str, name: str
    ) -> out.StepCountsOut:
        """Per version: instances at each stage now by status, entries per stage, goal
        conversions; instances at no stage (ended where they ended) counted apart, as
        the console's flow diagram draws them."""
        rows = await views_store.step_rows(session, tenant_id, name)
        versions: dict[int, out.VersionCountsOut] = {}

        def of(version: int) -> out.VersionCountsOut:
            return versions.setdefault(
                version,
                out.VersionCountsOut(version=version, stages={}, ended={}, goal_conversions=0),
            )

        def stage(version: int, stage_name: str) -> out.StageCountsOut:
            return of(version).stages.setdefault(stage_name, out.StageCountsOut(now={}, entered=0))

        for version, stage_name, status, n in rows.at_stage:
            if status in ("running", "paused") and stage_name:
                stage(version, stage_name).now[status] = n
            else:
                ended = of(version).ended
                ended[status] = ended.get(status, 0) + n
        for version, stage_name, n in rows.entered:
            if stage_name:
                stage(version, stage_name).entered = n
        for version, n in rows.goals:
            of(version).goal_conversions = n
        return out.StepCountsOut(journey=name, versions=[versions[v] for v in sorted(versions)])


async def _definition(
    session: AsyncSession, tenant_id: str, name: str, version: int | None
) -> JourneyDefinition:
    row = await versions_store.definition(session, tenant_id, name, version)
    if row is None:
        raise NotFound(
            f"journey {name!r}" + (f" v{version}" if version else "") + " not found", field="name"
        )
    return row


def _instance_out(inst: JourneyInstance, timer: Any, history: list[Any]) -> out.InstanceOut:
    return out.InstanceOut(
        id=inst.id,
        journey=inst.journey,
        version=inst.version,
        stage=inst.stage,
        status=inst.status,
        order_id=inst.order_id,
        started_at=inst.started_at,
        anchors=inst.anchors,
        band=inst.state.get("band"),
        exit_reason=inst.state.get("exit_reason"),
        next_timer=None
        if timer is None
        else out.TimerOut(id=timer.id, due_at=timer.due_at, kind=timer.kind),
        history=[
            out.TransitionOut(
                kind=h.kind,
                from_stage=h.from_stage,
                to_stage=h.to_stage,
                cause=h.cause,
                reason=h.reason,
                at=h.at,
            )
            for h in history
        ],
    )


def _profile_out(prof: CustomerProfile) -> out.ProfileOut:
    projected = d.Profile.model_validate(prof.state or {})
    spent = projected.spent or (
        {projected.currency: projected.total_spent} if projected.currency else {}
    )
    return out.ProfileOut(
        orders_count=prof.orders_count,
        total_spent=out.Amount(amount=prof.total_spent, currency=prof.currency),
        # Every currency apart, never summed across currencies.
        spent_by_currency=[
            out.CurrencyAmount(currency=cur, amount=amount) for cur, amount in sorted(spent.items())
        ],
        first_order_at=prof.first_order_at,
        last_order_at=prof.last_order_at,
        open_tickets=prof.open_tickets,
        consent=prof.consent,
        timezone=prof.timezone,
        tier=prof.tier,
        last_surveyed_at=prof.last_surveyed_at,
        last_nps=prof.last_nps,
        last_band=prof.last_band,
    )
