"""afterglow customer-export: all or nothing, and the key never on the command line.

The happy path, every service answering, runs in the end-to-end test."""

from __future__ import annotations

import socket

import pytest

from afterglow.kit import cli
from afterglow.kit.registry import discover_services


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_key_comes_from_the_environment(monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delenv("AFTERGLOW_API_KEY", raising=False)

    assert cli.main(["customer-export", "1001"]) == 2
    assert "AFTERGLOW_API_KEY" in capsys.readouterr().err


def test_an_unknown_service_url_is_refused(monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("AFTERGLOW_API_KEY", "agk_x_y")

    assert cli.main(["customer-export", "1001", "--url", "billing=http://x"]) == 2
    assert "NAME one of" in capsys.readouterr().err


def test_a_service_that_does_not_answer_fails_the_whole_export(  # type: ignore[no-untyped-def]
    monkeypatch, capsys, tmp_path
) -> None:
    monkeypatch.setenv("AFTERGLOW_API_KEY", "agk_x_y")
    names = list(discover_services())
    if not names:
        pytest.fail("no service is installed in the workspace")
    urls = [arg for n in names for arg in ("--url", f"{n}=http://127.0.0.1:{closed_port()}")]
    out = tmp_path / "export.json"

    code = cli.main(["customer-export", "1001", *urls, "--out", str(out)])

    err = capsys.readouterr().err
    assert code == 1
    assert "export incomplete" in err and all(f"{n} (" in err for n in names)
    assert not out.exists()
