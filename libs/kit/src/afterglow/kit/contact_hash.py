"""How an email or a phone number becomes the hash that stands for it.

Ingest links a customer to the sha256 of their normalized email (``CustomerInfo``'s
``email_hash``, ``customer_links``); the console hashes a typed email the same way to
look a customer up without sending the address itself. One definition for both: two
copies that drifted apart (one lowercasing, one not) would find nobody. Pure."""

from __future__ import annotations

import hashlib
import re


def normalize_email(email: str | None) -> str | None:
    if not email or "@" not in email:
        return None
    return email.strip().lower()


def normalize_phone(phone: str | None) -> str | None:
    """E.164-ish: keep a leading + and the digits (no country guessing)."""
    if not phone:
        return None
    digits = re.sub(r"\D", "", phone)
    if len(digits) < 6:
        return None
    return ("+" if phone.strip().startswith("+") else "") + digits


def sha256_hex(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def email_hash(email: str | None) -> str | None:
    n = normalize_email(email)
    return sha256_hex(n) if n else None


def phone_hash(phone: str | None) -> str | None:
    n = normalize_phone(phone)
    return sha256_hex(n) if n else None
