"""`make uv` on a machine whose python3 is the distribution's: pip refuses a plain
--user install there (PEP 668), and the target must still end with a uv. A stand-in
python3 records what it was asked and answers as such a distribution's does."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

FAKE_PYTHON = """#!/bin/sh
echo "$*" >> "$HOME/calls"
case "$*" in
  *--break-system-packages*)
    if [ -n "$REFUSE_BREAK" ]; then exit 1; fi
    mkdir -p "$HOME/.local/bin" && printf '#!/bin/sh\\n' > "$HOME/.local/bin/uv"
    chmod +x "$HOME/.local/bin/uv"; exit 0 ;;
  "-m pip install --user"*)
    echo "error: externally-managed-environment" >&2; exit 1 ;;
  "-m venv "*)
    mkdir -p "$3/bin"; printf '#!/bin/sh\\necho "$*" >> "$HOME/calls"\\n' > "$3/bin/pip"
    printf '#!/bin/sh\\n' > "$3/bin/uv"; chmod +x "$3/bin/pip" "$3/bin/uv"; exit 0 ;;
esac
exit 2
"""


def run_make_uv(tmp_path: Path, **env: str) -> tuple[Path, list[str]]:
    home = tmp_path / "home"
    fake_bin = tmp_path / "bin"
    home.mkdir()
    fake_bin.mkdir()
    python = fake_bin / "python3"
    python.write_text(FAKE_PYTHON)
    python.chmod(0o755)
    make = shutil.which("make")
    assert make is not None
    result = subprocess.run(
        [make, "-s", "-C", str(ROOT), "uv", f"HOME={home}", f"UV={home}/.local/bin/uv"],
        env={"PATH": f"{fake_bin}:/usr/bin:/bin", "HOME": str(home), **env},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return home, (home / "calls").read_text().splitlines()


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
class TestMakeUv:
    def test_falls_back_to_break_system_packages_where_pip_refuses(self, tmp_path):
        home, calls = run_make_uv(tmp_path)
        assert os.access(home / ".local/bin/uv", os.X_OK)
        assert calls == [
            "-m pip install --user --quiet uv",
            "-m pip install --user --quiet --break-system-packages uv",
        ]

    def test_falls_back_to_a_private_venv_when_that_fails_too(self, tmp_path):
        home, calls = run_make_uv(tmp_path, REFUSE_BREAK="1")
        assert (home / ".local/bin/uv").resolve() == home / ".local/share/afterglow-uv/bin/uv"
        assert calls[-1] == "install --quiet uv"
