"""``python -m afterglow.devstack.suite [pytest args]``: the whole suite, as ``make test``
and ``make test-kafka`` run it.

The end-to-end tests run every service as real processes in the services' own consumer
groups, so they get a pytest process (and an embedded stack) of their own: an in-process
test app still alive in the same session would share those groups with them. Without
path arguments the suite runs without ``tests/e2e``, then
``tests/e2e``, then each ``ISOLATED`` module alone (paths from the repository root);
with paths, one run of just those.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

E2E = "tests/e2e"
NO_TESTS = 5
# Modules that start in-process copies of several services in those services' own
# consumer groups. Next to another live member of the same groups (the suite's shared
# orchestrator app, or the e2e processes of the module before) the embedded broker held
# their group join past the test timeout, so each gets a pytest process of its own.
# And modules that run a service as a process next to whose work the suite's in-process
# app must not be: its messaging dispatcher would take the leased message a killed
# journeys process left behind and hide what the module checks.
ISOLATED = (
    "tests/integration/test_first_order_agreement.py",
    "tests/e2e/test_refunds_and_history.py",
    "services/journey-orchestrator/tests/integration/test_killed_dispatcher.py",
    # A loyalty app beside a referrals app: next to the loyalty suite's own app in the
    # same group, the other member took the referral's event (CI saw a 404 account).
    "tests/integration/test_referral_points.py",
    # Runs every service as processes (the console reads them all), in their groups.
    "services/console/tests",
)


# Modules whose subject is not the broker (a browser on the console, an SMTP server
# taking a killed dispatcher's mail): the Kafka suite leaves them to ``make test`` rather
# than spend minutes running them a second time.
NOT_BROKER_FACING = (
    "services/console/tests",
    "services/journey-orchestrator/tests/integration/test_killed_dispatcher.py",
    # A loyalty app beside a referrals app: next to the loyalty suite's own app in the
    # same group, the other member took the referral's event (CI saw a 404 account).
    "tests/integration/test_referral_points.py",
)


def phases(pytest_args: list[str], root: Path, leave_out: tuple[str, ...] = ()) -> list[list[str]]:
    named_paths = [a for a in pytest_args if not a.startswith("-") and (root / a).exists()]
    if named_paths:
        return [pytest_args]
    apart = [m for m in ISOLATED if (root / m).exists() and m not in leave_out]
    ignored = [f"--ignore={m}" for m in (*apart, *leave_out) if (root / m).exists()]
    return [
        [f"--ignore={E2E}", *ignored, *pytest_args],
        [E2E, *ignored, *pytest_args],
        *([m, *pytest_args] for m in apart),
    ]


def run_phases(
    pytest_args: list[str],
    root: Path,
    env: Mapping[str, str] | None = None,
    extra: list[str] | None = None,
) -> int:
    """Run each phase to the end; return the first failing code (5, none ran, fails)."""
    worst = 0
    for phase in phases(pytest_args, root):
        args = [sys.executable, "-m", "pytest", *(extra or []), *phase]
        t0 = time.monotonic()
        code = subprocess.run(args, cwd=root, env=env, check=False).returncode  # noqa: S603
        print(
            f"suite: pytest {' '.join(phase)} exited {code} after {time.monotonic() - t0:.0f}s",
            flush=True,
        )
        if code == NO_TESTS:
            code = 1
        worst = worst or code
    return worst


if __name__ == "__main__":
    sys.exit(run_phases(sys.argv[1:], Path.cwd()))
