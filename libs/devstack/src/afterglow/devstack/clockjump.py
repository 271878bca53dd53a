"""A jump of the services' wall clock, injected per process, not for the machine.

The services run with libfaketime preloaded (``LD_PRELOAD``); its offset is read from a
file this module writes (``FAKETIME_TIMESTAMP_FILE``), so a test moves every service's
wall clock at once, and the processes it starts later (a restart after kill -9, one
more instance) start on the moved clock, as a node whose clock was stepped would.

* Only the wall clock moves (``time.time()``, ``datetime.now()``): the monotonic clock
  does not (``FAKETIME_DONT_FAKE_MONOTONIC``), as when NTP steps a clock. Faking it too
  would expire every asyncio timeout and every pool's idle timer at once, a failure no
  real clock step causes.
* A process reads the file at most once a second (``FAKETIME_CACHE_DURATION``): reading
  it at every clock call (``FAKETIME_NO_CACHE``) costs a file read per log line.
* PostgreSQL, the broker and the test process keep the machine's clock: moving the
  machine's clock under a shared CI runner is not ours to do.

Chosen over an offset inside ``afterglow.kit.clock``: libfaketime moves every clock read
the services make (the kit's clock, ``datetime.now`` in handlers, the libraries'
``time.time()``), where a kit-level offset would move only the reads we thought of.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time
from email.utils import parsedate_to_datetime
from pathlib import Path

import httpx

# Debian's package (faketime, which depends on libfaketime) puts it here.
_LIBRARY_GLOBS = ("/usr/lib/*/faketime/libfaketime.so.1", "/usr/lib/faketime/libfaketime.so.1")


def find_libfaketime() -> Path | None:
    for pattern in _LIBRARY_GLOBS:
        found = sorted(Path("/").glob(pattern.lstrip("/")))
        if found:
            return found[0]
    return None


def ensure_libfaketime() -> Path:
    """The library's path, installed with apt-get when missing (as .ci/run installs
    chromium); a clear error where that is not possible."""
    lib = find_libfaketime()
    if lib is not None:
        return lib
    apt = shutil.which("apt-get")
    if apt is None:
        raise RuntimeError("libfaketime not found and no apt-get: install it (package faketime)")
    sudo = [] if os.getuid() == 0 else ["sudo", "-n"]
    for args in (["update", "-qq"], ["install", "-y", "-qq", "faketime"]):
        subprocess.run([*sudo, apt, *args], check=True, stdout=subprocess.DEVNULL)  # noqa: S603
    lib = find_libfaketime()
    if lib is None:
        raise RuntimeError("apt-get installed faketime but libfaketime.so.1 is not where expected")
    return lib


class ServiceClock:
    """The offset of the services' wall clock, in a file they read."""

    def __init__(self, lib: Path, offset_file: Path) -> None:
        self.lib = lib
        self.file = offset_file
        self.offset_s = 0
        self._write()

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """The environment that starts a process on this clock."""
        preload = (base or {}).get("LD_PRELOAD") or os.environ.get("LD_PRELOAD", "")
        return {
            "LD_PRELOAD": " ".join(p for p in (str(self.lib), preload) if p),
            "FAKETIME_TIMESTAMP_FILE": str(self.file),
            "FAKETIME_CACHE_DURATION": "1",
            "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        }

    def jump(self, seconds: int) -> None:
        """Move the services' wall clock forward by ``seconds`` (backward if negative)."""
        self.offset_s += seconds
        self._write()

    def _write(self) -> None:
        # Renamed into place: a process reading the file mid-write would see no offset.
        partial = self.file.with_name(self.file.name + ".partial")
        partial.write_text(f"{self.offset_s:+d}\n")
        partial.replace(self.file)

    async def until_seen(
        self, http: httpx.AsyncClient, urls: list[str], timeout_s: float = 30
    ) -> None:
        """Wait (boundedly) until each service's clock shows the offset: the Date header
        of its answers (uvicorn stamps it from the process's wall clock)."""
        deadline = time.monotonic() + timeout_s
        pending = list(urls)
        while pending:
            still = []
            for url in pending:
                try:
                    r = await http.get(f"{url}/healthz", timeout=3)
                    shown = parsedate_to_datetime(r.headers["date"]).timestamp()
                except (httpx.HTTPError, KeyError, ValueError):
                    still.append(url)
                    continue
                # Within a minute of the expected instant: uvicorn's Date has 1 s steps
                # and the process reads the offset at most once a second.
                if abs(shown - (time.time() + self.offset_s)) > 60:
                    still.append(url)
            pending = still
            if pending and time.monotonic() > deadline:
                raise TimeoutError(f"the clock offset {self.offset_s:+d}s not seen at {pending}")
            if pending:
                await asyncio.sleep(0.5)
