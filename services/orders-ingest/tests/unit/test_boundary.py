"""The boundary's promise, as properties: whatever a platform sends, normalization
either refuses it with a NormalizationError (the delivery is quarantined) or emits
events every consumer can take: valid against the catalog, within its bounds, without
a control character, with a subject an envelope can carry."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from afterglow.events import CloudEvent
from afterglow.events import catalog as c
from afterglow.ingest import domain
from afterglow.ingest.platforms import aftership, shopify, woocommerce, zendesk
from afterglow.ingest.platforms import bigcommerce as bc
from afterglow.kit.text import has_control_chars

FIXTURES = Path(__file__).parent.parent / "fixtures"


def load(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / f"{name}.json").read_text())


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in a payload a value can be replaced at."""
    out = [prefix] if prefix else []
    if isinstance(value, dict):
        for k, v in value.items():
            out += paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += paths(v, (*prefix, i))
    return out


def value_at(payload: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        payload = payload[key]
    return payload


def replaced(payload: Any, path: tuple[Any, ...], new: Any) -> Any:
    out = copy.deepcopy(payload)
    node = out
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = new
    return out


CONTROL = "".join(chr(i) for i in [*range(0, 32), *range(127, 160)])
hostile_text = st.one_of(
    st.text(alphabet=st.sampled_from(CONTROL + "aé&;#<>²\u0301 "), max_size=40),
    st.text(max_size=30).map(lambda s: s + "\u0000"),
    st.sampled_from(
        ["", "²", "-100.00", "1e30", "1e309", "NaN", "Infinity", "&ndash;", "&#0;", "x" * 5000]
    ),
    st.integers(min_value=1, max_value=4000).map(lambda n: "é" * n),
)
hostile = st.one_of(
    hostile_text,
    st.sampled_from([0, -1, -100, 2**63, 2**70, 9e99, 1e308, True, False, None]),
    st.integers(),
    st.floats(allow_nan=False),
    st.just([1, 2]),
    st.just({}),
    st.just([]),
    st.just(["X"]),
)

PLATFORM_PAYLOADS = {
    "shopify": ("orders/create", load("shopify_order")),
    "shopify-fulfilled": ("orders/fulfilled", load("shopify_order")),
    "shopify-refund": ("refunds/create", load("shopify_refund")),
    "woocommerce": ("order.created", load("woocommerce_order")),
    "woocommerce-refunded": ("order.updated", load("woocommerce_order") | {"status": "refunded"}),
    "zendesk": ("", load("zendesk_ticket_created")),
    "aftership": ("", load("aftership_tracking_update")),
    "bigcommerce": ("", load("bigcommerce_order")),
}


def normalize(kind: str, topic: str, payload: dict[str, Any]) -> domain.Normalized:
    """What intake.normalize does, minus the database (AfterShip's order lookup)."""
    platform = kind.split("-")[0]
    payload = domain.clean_payload(payload, html_encoded=platform in domain.HTML_ENCODED_PLATFORMS)
    with domain.normalization_errors():
        if platform == "shopify":
            out = shopify.normalize_shopify(topic, payload)
        elif platform == "woocommerce":
            out = woocommerce.normalize_woocommerce(topic, payload)
        elif platform == "zendesk":
            out = zendesk.normalize_zendesk(payload)
        elif platform == "aftership":
            out, _ = aftership.normalize_aftership(payload)
        else:
            out = bc.normalize_bigcommerce_order(payload, payload.get("_products") or [])
    return domain.check_subjects(out)


def strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in strings(v)]
    return []


def assert_consumable(out: domain.Normalized) -> None:
    for item in out.emits:
        body = item.data.model_dump(mode="json")
        # What every consumer does with it: validate against the catalog.
        assert c.parse_data(body) == item.data
        assert not any(has_control_chars(s) for s in strings(body)), body
        if item.subject is not None:
            CloudEvent.new(item.data, tenant_id="acme", subject=item.subject, source="t")


@st.composite
def mutated(draw: st.DrawFn) -> tuple[str, str, dict[str, Any]]:
    kind = draw(st.sampled_from(sorted(PLATFORM_PAYLOADS)))
    topic, payload = PLATFORM_PAYLOADS[kind]
    where = paths(payload)
    for _ in range(draw(st.integers(1, 4))):
        path = draw(st.sampled_from(where))
        try:
            payload = replaced(payload, path, draw(hostile))
        except (KeyError, IndexError, TypeError):
            continue  # an earlier replacement removed that place
    return kind, topic, payload


class TestEveryEmittedEventIsConsumable:
    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(mutated())
    def test_normalized_or_refused_never_anything_else(self, case):
        kind, topic, payload = case
        try:
            out = normalize(kind, topic, payload)
        except domain.NormalizationError:
            return  # quarantined by the receiver, with the reason
        assert_consumable(out)

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.data())
    def test_control_characters_never_cost_an_order(self, data):
        """NUL and other controls anywhere in a name, email, SKU or title: the same
        events as without them (a NUL used to be acknowledged, then dead-lettered)."""
        kind = data.draw(st.sampled_from(sorted(PLATFORM_PAYLOADS)))
        topic, payload = PLATFORM_PAYLOADS[kind]
        expected = normalize(kind, topic, payload)
        texts = [p for p in paths(payload) if isinstance(value_at(payload, p), str)]
        dirty = payload
        for path in data.draw(st.lists(st.sampled_from(texts), min_size=1, max_size=6)):
            text = value_at(dirty, path)
            at = data.draw(st.integers(0, len(text)))
            noise = data.draw(st.text(alphabet=st.sampled_from(CONTROL), min_size=1, max_size=3))
            dirty = replaced(dirty, path, text[:at] + noise + text[at:])
        assert normalize(kind, topic, dirty) == expected

    @pytest.mark.parametrize("kind", sorted(PLATFORM_PAYLOADS))
    def test_the_fixtures_themselves_are_consumable(self, kind):
        topic, payload = PLATFORM_PAYLOADS[kind]
        out = normalize(kind, topic, payload)
        assert out.emits or kind == "aftership"
        assert_consumable(out)


class TestCleaning:
    def test_nul_and_controls_removed_text_nfc(self):
        cleaned = domain.clean_payload({"a": ["Jo\u0000hn\x1b", {"b": "Cafe\u0301"}], "n": 3})
        assert cleaned == {"a": ["John", {"b": "Café"}], "n": 3}

    def test_html_entities_decoded_only_where_encoded(self):
        raw = {"name": "Ship Your Idea &ndash; Color: Black", "t": "Fish &amp; Chips"}
        assert domain.clean_payload(raw, html_encoded=True) == {
            "name": "Ship Your Idea \u2013 Color: Black",
            "t": "Fish & Chips",
        }
        assert domain.clean_payload(raw) == raw

    def test_fit_cuts_free_text_and_drops_contact_data(self):
        info = domain.fit(c.CustomerInfo, first_name="A" * 300, email="a@" + "b" * 400)
        assert info.first_name == "A" * 100 and info.email is None

    def test_fit_drops_an_optional_value_of_the_wrong_shape(self):
        kept = shopify.normalize_shopify("orders/create", load("shopify_order"))
        order = load("shopify_order")
        order["shipping_address"]["country_code"] = "USA"
        out = shopify.normalize_shopify("orders/create", order)
        assert out.emits[0].data.shipping_country is None
        assert kept.emits[0].data.shipping_country == "US"

    @pytest.mark.parametrize(("value", "expected"), [(2, 2), ("3", 3), (0, None), ("0", None)])
    def test_quantity(self, value, expected):
        assert domain.quantity(value, "q") == expected

    @pytest.mark.parametrize("value", [-1, "-2", 1.5, "abc", 2**70, [1], True, "1e309"])
    def test_quantity_refused(self, value):
        with pytest.raises(domain.NormalizationError):
            domain.quantity(value, "q")

    @pytest.mark.parametrize("amount", ["1e30", "1e309", 2**70, "-100.00", "-0.01", [1], True])
    def test_amounts_out_of_bounds_refused(self, amount):
        with pytest.raises(domain.NormalizationError) as err:
            domain.to_minor(amount, "USD", "total_price")
        assert err.value.field == "total_price"

    @pytest.mark.parametrize(
        "header", ["²", "9" * 5000, "1700000000\u00a0", "\uff11\uff17\uff10\uff10"]
    )
    def test_timestamps_are_ascii_digits_within_a_bound(self, header):
        assert not domain.timestamp_fresh(header, domain.datetime.now(domain.UTC), 300)
