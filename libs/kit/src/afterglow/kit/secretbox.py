"""Secrets at rest: columns that hold credentials are sealed with AES-GCM.

Webhook signing secrets, platform API tokens and messaging endpoint secrets must be
kept in usable form (HMAC and API calls need them, so hashing is no option). Sealing
them means a database dump, a backup or a read-only SQL injection does not hand out
every tenant's credentials: the keys live in the environment (``SECRETS_KEYS``, from a
Kubernetes Secret), never in the database.

``SECRETS_KEYS`` is ``<id>:<base64 32-byte key>[,<id>:<key>...]``. The first key seals;
every key opens, so rotation is: put a new key first, keep the old ones until every
value has been written again. ``afterglow secrets-key`` prints a fresh key.

A sealed value reads ``agsb1:<key id>:<base64url(nonce | ciphertext | tag)>``. The
column's name is the associated data: a value copied into another column does not
open. A value without the prefix was written before sealing existed and is read as is;
it is sealed the next time it is written.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Mapping
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import Text
from sqlalchemy.types import TypeDecorator

PREFIX = "agsb1"
NONCE_BYTES = 12


class SecretBoxError(RuntimeError):
    """Sealing is not configured, a key is missing, or a sealed value was altered."""


def new_key(key_id: str) -> str:
    """A fresh ``<id>:<base64 key>`` entry for SECRETS_KEYS."""
    return f"{key_id}:{base64.b64encode(AESGCM.generate_key(bit_length=256)).decode()}"


class SecretBox:
    def __init__(self, keys: Mapping[str, bytes], current: str) -> None:
        if current not in keys:
            raise SecretBoxError(f"the sealing key {current!r} is not among the keys")
        self._aead = {kid: AESGCM(key) for kid, key in keys.items()}
        self.current = current

    @classmethod
    def from_setting(cls, value: str) -> SecretBox:
        keys: dict[str, bytes] = {}
        for i, entry in enumerate(part.strip() for part in value.split(",") if part.strip()):
            kid, sep, encoded = entry.partition(":")
            if not sep or not kid or ":" in encoded:
                raise SecretBoxError(f"SECRETS_KEYS entry {i + 1} is not <id>:<base64 key>")
            try:
                key = base64.b64decode(encoded, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise SecretBoxError(f"SECRETS_KEYS key {kid!r} is not base64") from exc
            if len(key) != 32:
                raise SecretBoxError(f"SECRETS_KEYS key {kid!r} must be 32 bytes (AES-256)")
            if kid in keys:
                raise SecretBoxError(f"SECRETS_KEYS names key {kid!r} twice")
            keys[kid] = key
        if not keys:
            raise SecretBoxError("SECRETS_KEYS holds no key")
        return cls(keys, next(iter(keys)))

    def seal(self, plaintext: str, context: str) -> str:
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._aead[self.current].encrypt(nonce, plaintext.encode(), context.encode())
        blob = base64.urlsafe_b64encode(nonce + sealed).decode().rstrip("=")
        return f"{PREFIX}:{self.current}:{blob}"

    def open(self, value: str, context: str) -> str:
        if not value.startswith(PREFIX + ":"):
            return value  # written before sealing existed
        _, kid, blob = value.split(":", 2)
        aead = self._aead.get(kid)
        if aead is None:
            raise SecretBoxError(f"sealed with key {kid!r}, which SECRETS_KEYS no longer holds")
        try:
            raw = base64.urlsafe_b64decode(blob + "=" * (-len(blob) % 4))
            return aead.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], context.encode()).decode()
        except (InvalidTag, binascii.Error, ValueError) as exc:
            raise SecretBoxError(f"a sealed {context} does not open: altered or moved") from exc


_box: SecretBox | None = None


def configure(keys_setting: str | None) -> None:
    """Install the process's box from SECRETS_KEYS (None leaves sealing unavailable)."""
    global _box
    _box = SecretBox.from_setting(keys_setting) if keys_setting else None


def box() -> SecretBox:
    if _box is None:
        raise SecretBoxError(
            "SECRETS_KEYS is not set: this service stores credentials sealed and needs a key "
            "(generate one with `afterglow secrets-key`)"
        )
    return _box


class SealedText(TypeDecorator[str]):
    """A Text column whose values are sealed on the way in and opened on the way out.

    The process-wide box is used (set by the app's start-up from its settings): column
    types are built at import time, long before settings exist."""

    impl = Text
    cache_ok = True

    def __init__(self, context: str, **kw: Any) -> None:
        super().__init__(**kw)
        self.context = context

    def process_bind_param(self, value: str | None, dialect: Any) -> str | None:
        return None if value is None else box().seal(value, self.context)

    def process_result_value(self, value: str | None, dialect: Any) -> str | None:
        return None if value is None else box().open(value, self.context)
