"""The settings forms read into the bodies the owning services' APIs take.

Nothing here judges a value the service judges: a number that is not a whole number is
sent as typed, so the service's 422 names the field (one rule, in one place). What is
checked here is only what cannot reach the service as JSON at all (a YAML document)."""

from __future__ import annotations

import json
import math
from decimal import Decimal, InvalidOperation
from typing import Any

import yaml

from afterglow.events.money import currency_exponent


class FormError(ValueError):
    """The form cannot become a request body: shown like a service's 422."""

    def __init__(self, message: str, field: str):
        super().__init__(message)
        self.message = message
        self.field = field


def number(value: str) -> int | str:
    """A whole number as an int; anything else as typed, for the service to name."""
    value = value.strip()
    return int(value) if value.isdigit() else value


def decimal_number(value: str) -> float | str:
    """A finite number as a float; "nan", "inf" or a word as typed (NaN is not JSON)."""
    try:
        parsed = float(value.strip())
    except ValueError:
        return value.strip()
    return parsed if math.isfinite(parsed) else value.strip()


REFERRAL_FIELDS = ("share_base_url", "return_window_days", "attribution_window_days")


# The referee's reward: inputs named as referrals names them in a 422, so the refusal is
# shown at its input. The kind's choices: the service's default (the reward is cleared),
# a percentage, a fixed amount; each kind sends only its own value fields.
REWARD = "referee_reward"
REWARD_KIND_CHOICES = ("default", "percentage", "fixed_amount")
REWARD_VALUE_FIELDS = {"percentage": ("percent",), "fixed_amount": ("amount", "currency")}
REWARD_FIELDS = tuple(
    f"{REWARD}.{n}" for n in ("kind", "percent", "amount", "currency", "valid_days")
)


def referral_settings(form: dict[str, str]) -> dict[str, Any]:
    """PUT /v1/settings of referrals: an empty field is left out (kept as it is), since
    the service changes only the fields a body names. The reward is sent whole when its
    kind is chosen (referrals sets it as a whole)."""
    body: dict[str, Any] = {}
    for k in REFERRAL_FIELDS:
        value = form.get(k, "").strip()
        if value:
            body[k] = value if k == "share_base_url" else number(value)
    kind = form.get(f"{REWARD}.kind", "").strip()
    if kind == "default":
        body[REWARD] = None
    elif kind:
        body[REWARD] = referee_reward(kind, form)
    return body


def referee_reward(kind: str, form: dict[str, str]) -> dict[str, Any]:
    """The reward of the form. The amount is typed in the currency ("5.00") and sent in
    its minor units (500), which is what referrals and the shop's discount take."""

    def typed(name: str) -> str:
        return form.get(f"{REWARD}.{name}", "").strip()

    reward: dict[str, Any] = {"kind": kind}
    for name in REWARD_VALUE_FIELDS.get(kind, ()):
        if not typed(name):
            continue  # referrals names the missing value
        if name == "percent":
            reward[name] = number(typed(name))
        elif name == "currency":
            reward[name] = typed(name).upper()
        else:
            reward[name] = minor_units(typed("amount"), typed("currency").upper())
    if typed("valid_days"):
        reward["valid_days"] = number(typed("valid_days"))
    return reward


def minor_units(amount: str, currency: str) -> int | str:
    """``"5.00", "EUR"`` -> ``500``. More decimals than the currency has cannot be sent as
    minor units: refused here at the amount (rounding would change the gift). Anything
    that is not a number is sent as typed, for referrals to name."""
    try:
        value = Decimal(amount)
    except InvalidOperation:
        return amount
    if not value.is_finite():
        return amount
    minor = value.scaleb(currency_exponent(currency))
    if minor != minor.to_integral_value():
        raise FormError(
            f"{REWARD}.amount: {currency or 'the currency'} has at most"
            f" {currency_exponent(currency)} decimals",
            f"{REWARD}.amount",
        )
    return int(minor)


def reward_amount_shown(reward: dict[str, Any]) -> str | None:
    """The saved amount as typed in the form: 500 EUR minor units -> "5.00"."""
    if reward.get("amount") is None or not reward.get("currency"):
        return None
    exponent = currency_exponent(reward["currency"])
    return f"{Decimal(reward['amount']).scaleb(-exponent):.{exponent}f}"


def loyalty_rules(text: str) -> dict[str, Any]:
    """The program (rules, tiers, rewards) as edited in YAML, as a JSON object.

    Aliases are refused: a few lines of nested aliases expand to gigabytes once written
    out as JSON (the "billion laughs"), and a program never needs them. YAML's dates
    and other non-JSON scalars become strings, so the service names a wrong type
    instead of the console failing to send it."""
    try:
        if any(isinstance(e, yaml.AliasEvent) for e in yaml.parse(text, Loader=yaml.SafeLoader)):
            raise FormError("anchors and aliases (*name) are not accepted", "rules")
        value = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise FormError(f"not valid YAML{where}", "rules") from exc
    if not isinstance(value, dict):
        raise FormError("the rules must be a mapping of settings (currency: USD, ...)", "rules")
    loaded: dict[str, Any] = json.loads(json.dumps(value, default=str))
    return loaded


TIER_PARTS = ("name", "threshold", "multiplier")


def tiers(form: dict[str, str]) -> tuple[list[dict[str, Any]], list[int]]:
    """The tier rows of the form (fields ``tiers.{row}.{part}``, rows in order) as the
    program's tiers, and for each tier the form row it came from. A row with no name is
    left out (how a tier is removed, and the blank row for a new one stays unused), so
    the service's "tiers.2.threshold" may be the form's row 3: see ``tier_field``."""
    out: list[dict[str, Any]] = []
    rows: list[int] = []
    row = 0
    while f"tiers.{row}.name" in form:
        name = form[f"tiers.{row}.name"].strip()
        if name:
            tier: dict[str, Any] = {"name": name}
            tier["threshold"] = number(form.get(f"tiers.{row}.threshold", ""))
            multiplier = form.get(f"tiers.{row}.multiplier", "").strip()
            if multiplier:
                tier["multiplier"] = multiplier  # a decimal: sent as text, never a float
            out.append(tier)
            rows.append(row)
        row += 1
    return out, rows


def tier_rows(saved: list[dict[str, Any]], typed: dict[str, str] | None) -> list[dict[str, str]]:
    """The rows the tiers form shows: as typed after a refusal (for correcting), else
    the saved tiers and one blank row for a new tier."""
    if typed is not None:
        count = sum(1 for k in typed if k.startswith("tiers.") and k.endswith(".name"))
        return [{p: typed.get(f"tiers.{i}.{p}", "") for p in TIER_PARTS} for i in range(count)]
    rows = [{p: str(t.get(p, "")) for p in TIER_PARTS} for t in saved]
    return [*rows, dict.fromkeys(TIER_PARTS, "")]


def tier_field(field: str | None, rows: list[int]) -> str | None:
    """The service's field of a tier ("tiers.2.threshold") as the form's input name."""
    parts = (field or "").split(".")
    if len(parts) == 3 and parts[0] == "tiers" and parts[1].isdigit() and int(parts[1]) < len(rows):
        return f"tiers.{rows[int(parts[1])]}.{parts[2]}"
    return field


# Per channel kind: the providers it may use and each provider's form fields (secrets
# last: an empty secret keeps the saved one, which the service does for the same
# provider).
CHANNEL_FIELDS: dict[str, dict[str, tuple[str, ...]]] = {
    "email": {
        "webhook": (),
        "smtp": (
            "host",
            "port",
            "security",
            "from_email",
            "from_name",
            "reply_to",
            "username",
            "password",
        ),
    },
    "sms": {
        "webhook": (),
        "twilio": ("account_sid", "from_number", "messaging_service_sid", "auth_token"),
    },
}

SECRET_FIELDS = ("password", "auth_token")  # never shown; empty keeps the saved one
# Every field of a channel's form, whatever the provider: a 422 naming another (such as
# dkim.private_key) is shown at the top of the form instead.
CHANNEL_FORM_FIELDS = {
    kind: ("provider", "rate_per_s", *(n for names in by.values() for n in names))
    for kind, by in CHANNEL_FIELDS.items()
}


def channel(kind: str, form: dict[str, str]) -> dict[str, Any]:
    """PUT /v1/messaging/channels/{kind}: the chosen provider's fields that are filled."""
    provider = form.get("provider", "").strip()
    fields = CHANNEL_FIELDS[kind].get(provider, ())
    body: dict[str, Any] = {"provider": provider}
    for k in fields:
        value = form.get(k, "").strip()
        if value:
            body[k] = number(value) if k == "port" else value
    rate = form.get("rate_per_s", "").strip()
    body["rate_per_s"] = decimal_number(rate) if rate else None
    return body


def template_draft(form: dict[str, str]) -> dict[str, str | None]:
    """A template as typed: an empty part is absent (None), not an empty string."""
    return {k: form.get(k) or None for k in ("subject", "text", "html")}
