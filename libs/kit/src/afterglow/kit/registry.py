"""Service discovery through the ``afterglow.services`` entry point group.

Each service's pyproject declares ``[project.entry-points."afterglow.services"]
<name> = "afterglow.<name>.app:SPEC"``; the launcher, the CLI and the deploy check read
them, so adding a service needs no edit anywhere else.
"""

from __future__ import annotations

from importlib.metadata import entry_points

from afterglow.kit.app import ServiceSpec


def discover_services(only: set[str] | None = None) -> dict[str, ServiceSpec]:
    """Every installed service, or only those named (the others are not even imported)."""
    found = {}
    for ep in entry_points(group="afterglow.services"):
        if only and ep.name not in only:
            continue
        spec = ep.load()
        if not isinstance(spec, ServiceSpec):
            raise TypeError(f"entry point {ep.name} does not point at a ServiceSpec")
        found[spec.name] = spec
    return dict(sorted(found.items(), key=lambda kv: kv[1].default_port))
