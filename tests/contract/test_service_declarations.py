"""What each service declares about itself on Kafka (its ServiceSpec) is what its code
does: deploy/ builds the consumer groups, lag triggers and ACLs from it, so a class the
code emits but the spec leaves out would be refused by the broker in production (the
relay stalls, the outbox piles up) and never in a test on the embedded broker."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest

from afterglow.events.catalog import ALL_EVENT_MODELS
from afterglow.kit.app import ServiceSpec
from afterglow.kit.registry import discover_services
from afterglow.referrals.deps import ReferralsDeps

SPECS = discover_services()
CATALOG = {cls.__name__: cls for cls in ALL_EVENT_MODELS}


def package_dir(spec: ServiceSpec) -> Path:
    module = importlib.util.find_spec(spec.app_factory.partition(":")[0])
    assert module is not None and module.origin is not None
    return Path(module.origin).parent


def classes_built(folder: Path) -> dict[str, set[str]]:
    """Catalog classes the code calls (``OrderPlaced(...)``, ``c.OrderPlaced(...)``) or
    hands to a builder (``_build(c.OrderPlaced, ...)``), with the files that do."""
    found: dict[str, set[str]] = {}
    for path in folder.rglob("*.py"):
        if "migrations" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            # A class registered for a handler or tested against is read, not built.
            reads = _name(node.func) in ("on", "on_batch", "isinstance", "issubclass")
            for expr in (node.func,) if reads else (node.func, *node.args):
                name = _name(expr)
                if name in CATALOG:
                    found.setdefault(name, set()).add(path.relative_to(folder).as_posix())
    return found


def _name(expr: ast.expr) -> str | None:
    if isinstance(expr, ast.Name):
        return expr.id
    return expr.attr if isinstance(expr, ast.Attribute) else None


@pytest.mark.parametrize("name", sorted(SPECS))
def test_a_service_declares_every_event_its_code_builds(name: str) -> None:
    spec = SPECS[name]
    declared = {cls.__name__ for cls in spec.produces}
    built = classes_built(package_dir(spec))
    # A class a handler only reads is named in isinstance checks and annotations, not
    # called: what is called is what goes into the outbox.
    undeclared = {cls: sorted(files) for cls, files in built.items() if cls not in declared}
    assert undeclared == {}, f"{name} builds events its ServiceSpec.produces leaves out"


@pytest.mark.parametrize("name", sorted(SPECS))
def test_every_consumer_group_reads_catalog_classes_once(name: str) -> None:
    groups = SPECS[name].consumer_groups()
    assert groups[0].name == "tenants"
    assert len({g.name for g in groups}) == len(groups)
    for group in groups:
        assert set(group.events) <= set(ALL_EVENT_MODELS)
        assert set(group.handlers(_Runtime())) == set(group.event_types)


class _Runtime:
    """Enough of afterglow.kit's Runtime for the groups' contexts to be built."""

    api_keys = object()
    deps = ReferralsDeps(referrals=object())  # type: ignore[arg-type]
