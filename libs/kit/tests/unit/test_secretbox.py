"""Credentials sealed at rest (afterglow.kit.secretbox)."""

from __future__ import annotations

import base64

import pytest

from afterglow.kit.cli import main as cli
from afterglow.kit.secretbox import PREFIX, SecretBox, SecretBoxError, new_key

OLD, NEW = new_key("old"), new_key("new")


def test_round_trip_is_sealed_and_randomized() -> None:
    box = SecretBox.from_setting(NEW)
    a, b = box.seal("whsec_abc", "t.c"), box.seal("whsec_abc", "t.c")
    assert a.startswith(f"{PREFIX}:new:") and "whsec_abc" not in a
    assert a != b  # a fresh nonce each time: equal secrets do not look equal
    assert box.open(a, "t.c") == box.open(b, "t.c") == "whsec_abc"


def test_a_value_moved_to_another_column_or_altered_does_not_open() -> None:
    box = SecretBox.from_setting(NEW)
    sealed = box.seal("shpat_123", "ingest.platform_connections.access_token")
    with pytest.raises(SecretBoxError, match="altered or moved"):
        box.open(sealed, "journeys.messaging_settings.endpoint_secret")
    head, tail = sealed.rsplit(":", 1)
    flipped = tail[:-2] + ("A" if tail[-2] != "A" else "B") + tail[-1]
    with pytest.raises(SecretBoxError, match="altered or moved"):
        box.open(f"{head}:{flipped}", "ingest.platform_connections.access_token")


def test_rotation_seals_with_the_first_key_and_opens_with_any() -> None:
    before = SecretBox.from_setting(OLD).seal("s", "c")
    rotated = SecretBox.from_setting(f"{NEW},{OLD}")
    assert rotated.open(before, "c") == "s"
    assert rotated.seal("s", "c").startswith(f"{PREFIX}:new:")
    with pytest.raises(SecretBoxError, match="no longer holds"):
        SecretBox.from_setting(NEW).open(before, "c")


def test_values_from_before_sealing_are_read_as_they_are() -> None:
    assert SecretBox.from_setting(NEW).open("whsec_legacy", "c") == "whsec_legacy"


@pytest.mark.parametrize(
    ("setting", "problem"),
    [
        ("", "holds no key"),
        ("nokey", "not <id>:<base64 key>"),
        ("k1:not base64!", "not base64"),
        ("k1:" + base64.b64encode(b"short").decode(), "must be 32 bytes"),
        (f"{NEW},{NEW}", "twice"),
    ],
)
def test_bad_settings_are_named(setting: str, problem: str) -> None:
    with pytest.raises(SecretBoxError, match=problem):
        SecretBox.from_setting(setting)


def test_cli_prints_a_usable_key(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["secrets-key", "--id", "k2026"]) == 0
    entry = capsys.readouterr().out.strip()
    box = SecretBox.from_setting(entry)
    assert box.current == "k2026" and box.open(box.seal("x", "c"), "c") == "x"
