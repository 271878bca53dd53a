"""``afterglow dlq``: look at dead letters and put them back (afterglow.events.dlq).

The broker comes from the environment, as for a service (``KAFKA_BOOTSTRAP_SERVERS``,
``KAFKA_SECURITY_PROTOCOL``, ...). A TOPIC is a topic or its DLQ: ``afterglow.orders``
and ``afterglow.orders.dlq`` name the same dead letters.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from afterglow.events import KafkaConfig
from afterglow.events.dlq import DeadLetter, dlq_name, read_dead_letters, redrive
from afterglow.events.topics import TOPICS


def add_dlq_commands(sub: Any) -> None:
    dlq = sub.add_parser("dlq", help="list, show and redrive dead letters")
    verbs = dlq.add_subparsers(dest="dlq_command", required=True)
    ls = verbs.add_parser("list", help="dead letters not redriven yet, per DLQ")
    ls.add_argument("topics", nargs="*", help="topics or DLQs (default: every DLQ)")
    ls.add_argument("--all", action="store_true", help="also those redriven already")
    show = verbs.add_parser("show", help="one dead letter in full")
    show.add_argument("topic")
    show.add_argument("offset", type=int)
    again = verbs.add_parser("redrive", help="publish dead letters back to their topic")
    again.add_argument("topic")
    again.add_argument("--offset", type=int, action="append", help="only this letter (repeatable)")
    again.add_argument("--tenant", help="only this tenant's letters")
    again.add_argument("--dry-run", action="store_true", help="say what would be redriven")


def run_dlq_command(args: argparse.Namespace, kafka: KafkaConfig) -> int:
    try:
        return asyncio.run(_run(args, kafka))
    except LookupError as exc:
        print(str(exc), file=sys.stderr)
        return 2


async def _run(args: argparse.Namespace, kafka: KafkaConfig) -> int:
    if args.dlq_command == "list":
        names = [dlq_name(t) for t in args.topics] or [t.dlq for t in TOPICS]
        for name in names:
            letters = await read_dead_letters(kafka, name, pending_only=not args.all)
            print(f"{name}: {len(letters)} {'retained' if args.all else 'to redrive'}")
            for letter in letters:
                print("  " + json.dumps(letter.summary(), ensure_ascii=False))
        return 0
    name = dlq_name(args.topic)
    if args.dlq_command == "show":
        letters = await read_dead_letters(kafka, name)
        found = [d for d in letters if d.offset == args.offset]
        if not found:
            print(f"no dead letter at {name} offset {args.offset}", file=sys.stderr)
            return 1
        print(json.dumps(_detail(found[0]), indent=2, ensure_ascii=False))
        return 0
    tenant = args.tenant
    report = await redrive(
        kafka,
        name,
        offsets=args.offset,
        where=None if tenant is None else (lambda d: d.header("ce_tenantid") == tenant),
        dry_run=args.dry_run,
    )
    verb = "would redrive" if args.dry_run else "redriven"
    print(f"{name}: {verb} {len(report.redriven)}", end="")
    print(
        f", {len(report.same_event)} more letters of the same events" if report.same_event else ""
    )
    for letter in report.redriven:
        print("  " + json.dumps(letter.summary(), ensure_ascii=False))
    return 0


def _detail(letter: DeadLetter) -> dict[str, Any]:
    try:
        body: Any = json.loads(letter.value)
    except ValueError:
        body = letter.value.decode(errors="replace")
    return {
        **letter.summary(),
        "dlq": letter.dlq_topic,
        "partition": letter.partition,
        "key": None if letter.key is None else letter.key.decode(errors="replace"),
        "headers": {k: v.decode(errors="replace") for k, v in letter.headers},
        "body": body,
    }
