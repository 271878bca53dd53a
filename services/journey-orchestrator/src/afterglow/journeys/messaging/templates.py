"""Message templates: sandboxed Jinja2 with strict undefined variables, a default for
every message kind and channel, validation by rendering against sample data at save time.

The sandbox matters: templates are written by tenants and rendered in our process, so
they may not reach attributes like ``__class__`` or call unsafe methods. Strict
undefined matters too: a typo in a variable name must be an error at save time, not an
empty greeting in ten thousand emails.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from jinja2 import StrictUndefined, TemplateError, TemplateSyntaxError, UndefinedError
from jinja2 import Template as JinjaTemplate
from jinja2.exceptions import SecurityError
from jinja2.sandbox import SandboxedEnvironment

from afterglow.events.catalog import MESSAGE_VARIABLES, MessageKind

MAX_TEMPLATE_CHARS = 100_000

# What one multiplication or power in a template may produce. The sandbox bounds
# range() but not these: "{{ 'x' * 999999999 }}" built a gigabyte while the template was
# validated, and "{{ 9 ** 9 ** 9 }}" computes for minutes.
MAX_PRODUCT_LEN = MAX_TEMPLATE_CHARS
MAX_EXPONENT = 1000
MAX_POWER_BITS = 100_000


class _BoundedSandbox(SandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "**" and _too_big_power(left, right):
            raise SecurityError(f"a power beyond {MAX_POWER_BITS} bits")
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                if (
                    isinstance(seq, str | list | tuple)
                    and isinstance(times, int)
                    and len(seq) * times > MAX_PRODUCT_LEN
                ):
                    raise SecurityError(f"a repetition longer than {MAX_PRODUCT_LEN}")
        return super().call_binop(context, operator, left, right)


def _too_big_power(base: Any, exponent: Any) -> bool:
    if not isinstance(exponent, int | float) or isinstance(exponent, bool):
        return False
    if abs(exponent) > MAX_EXPONENT:
        return True
    return isinstance(base, int) and base.bit_length() * max(exponent, 0) > MAX_POWER_BITS


_TEXT_ENV = _BoundedSandbox(undefined=StrictUndefined, autoescape=False)
_HTML_ENV = _BoundedSandbox(undefined=StrictUndefined, autoescape=True)


@dataclass(frozen=True)
class Template:
    channel: str  # email | sms
    text: str
    subject: str | None = None
    html: str | None = None


@dataclass(frozen=True)
class Rendered:
    text: str
    subject: str | None = None
    html: str | None = None


class TemplateRenderError(Exception):
    """A template that does not render; ``part`` names subject, html or text."""

    def __init__(self, part: str, message: str, line: int | None = None) -> None:
        where = f" (line {line})" if line else ""
        super().__init__(f"{part}{where}: {message}")
        self.part = part
        self.line = line
        self.message = message


# kind -> (subject, sentence, (call-to-action label, variable holding its URL) or None)
_COPY: dict[str, tuple[str, str, tuple[str, str] | None]] = {
    "welcome": (
        "Welcome to {{ shop_name }}",
        "Thanks for your first order with us. We're glad you're here.",
        None,
    ),
    "thank_you": (
        "Thanks for ordering again",
        "Thanks for coming back to {{ shop_name }}. Your order is on its way.",
        None,
    ),
    "check_in": (
        "How is your order?",
        "Your order should have arrived by now. Is everything as expected? Just reply if not.",
        None,
    ),
    "survey_invite": (
        "A quick question from {{ shop_name }}",
        "How likely are you to recommend us to a friend? It takes ten seconds.",
        ("Answer the survey", "survey_url"),
    ),
    "survey_reminder": (
        "Still a moment for our question?",
        "We'd still love to hear how we did.",
        ("Answer the survey", "survey_url"),
    ),
    "review_request": (
        "How do you like it?",
        "Would you review what you bought? Every honest review helps other shoppers.",
        ("Write a review", "review_url"),
    ),
    "review_reminder": (
        "A reminder: your review",
        "There is still time to review your purchase.",
        ("Write a review", "review_url"),
    ),
    "referral_invite": (
        "Give your friends a treat",
        "Share your link: your friends get a reward on their first order, and so do you."
        " Your code: {{ referral_code }}.",
        ("Share your link", "referral_url"),
    ),
    "referee_reward": (
        "A welcome gift from a friend",
        "A friend of yours shops at {{ shop_name }} and sent you a reward."
        " Your code: {{ reward_code }}.",
        None,
    ),
    # The journey asks for the nudge but loyalty owns the balance: it is optional.
    "loyalty_nudge": (
        "Your points are waiting",
        "{% if points_balance is defined %}You have {{ points_balance }} points{% else %}"
        "You have points{% endif %} to spend at {{ shop_name }}.",
        None,
    ),
    "tier_up": (
        "You reached {{ tier }}",
        "Congratulations, you are now {{ tier }}. Enjoy the perks.",
        None,
    ),
    "reward_code": ("Your reward code", "Here is your reward code: {{ reward_code }}.", None),
    "points_expiring": (
        "Your points expire soon",
        "{{ points_expiring }} of your points expire on {{ expires_on }}. Use them before then.",
        None,
    ),
    "service_recovery": (
        "We're sorry",
        "We're sorry your experience was not what it should have been."
        " Our team will be in touch to put it right.",
        None,
    ),
}

DEFAULT_KINDS: tuple[str, ...] = tuple(_COPY)

SAMPLE_VARIABLES: dict[str, Any] = {
    "shop_name": "Acme Goods",
    "order_id": "1001",
    "order_number": "#1001",
    "survey_url": "https://example.com/s/sample",
    "review_url": "https://example.com/reviews/sample",
    "referral_url": "https://example.com/r/JANE10",
    "referral_code": "JANE10",
    "reward_code": "THANKS-5OFF",
    "reward_description": "5 off your next order",
    "points_balance": 1250,
    "points": 100,
    "points_expiring": 300,
    "expires_on": "2026-12-31",
    "tier": "Gold",
    "previous_tier": "Silver",
    "discount_code": "WELCOME10",
}

SAMPLE_CUSTOMER: dict[str, Any] = {
    "first_name": "Jane",
    "email": "jane@example.com",
    "phone": "+15555550100",
    "orders_count": 3,
    "total_spent": "129.90 EUR",
}

# ``order`` as the dispatcher gives it when a message is about a known order.
SAMPLE_ORDER: dict[str, Any] = {
    "id": "shopify:1001",
    "number": "#1001",
    "total": "59.90 EUR",
    "total_minor": 5990,
    "currency": "EUR",
    "placed_at": "2026-03-02T10:00:00+00:00",
    # "lines", not "items": Jinja would find the dict's items() method first
    "lines": [{"title": "Ceramic mug", "quantity": 2, "sku": "MUG"}],
}


def default_template(kind: str, channel: str) -> Template | None:
    copy = _COPY.get(kind)
    if copy is None:
        return None
    subject, sentence, cta = copy
    if channel == "sms":
        link = f" {{{{ {cta[1]} }}}}" if cta else ""
        return Template(
            channel="sms", text=f"{{{{ shop_name }}}}: Hi {{{{ first_name }}}}, {sentence}{link}"
        )
    text = f"Hi {{{{ first_name }}}},\n\n{sentence}\n"
    html = f"<p>Hi {{{{ first_name }}}},</p>\n<p>{sentence}</p>\n"
    if cta:
        label, var = cta
        text += f"\n{label}: {{{{ {var} }}}}\n"
        html += f'<p><a href="{{{{ {var} }}}}">{label}</a></p>\n'
    text += "\n{{ shop_name }}\n"
    html += "<p>{{ shop_name }}</p>\n"
    return Template(channel="email", subject=subject, html=html, text=text)


def context(
    customer: dict[str, Any],
    variables: dict[str, Any],
    *,
    shop_name: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """What a template sees: the request's variables, the customer (with their order
    count and total spent), ``order`` (None when the message is about no known order),
    a friendly ``first_name`` (never empty) and ``shop_name`` (the tenant's, unless the
    request gives one)."""
    ctx: dict[str, Any] = {"shop_name": shop_name or "our shop", "order": None}
    ctx.update(variables)
    ctx["customer"] = customer
    ctx["first_name"] = customer.get("first_name") or "there"
    ctx.update(extra)
    return ctx


@functools.lru_cache(maxsize=512)
def _compiled(env: SandboxedEnvironment, source: str) -> JinjaTemplate:
    """A template's source compiled once per process: compiling (parse, then Python
    code generation) was a quarter of the dispatcher's claim, repeated for every
    message of the same template. A compiled template renders any context."""
    return env.from_string(source)


def _render(env: SandboxedEnvironment, part: str, source: str, ctx: dict[str, Any]) -> str:
    if len(source) > MAX_TEMPLATE_CHARS:
        raise TemplateRenderError(part, f"longer than {MAX_TEMPLATE_CHARS} characters")
    try:
        return _compiled(env, source).render(ctx)
    except TemplateSyntaxError as exc:
        raise TemplateRenderError(part, f"syntax error: {exc.message}", exc.lineno) from exc
    except UndefinedError as exc:
        raise TemplateRenderError(part, f"undefined variable: {exc.message}") from exc
    except TemplateError as exc:  # SecurityError and friends
        raise TemplateRenderError(part, f"{type(exc).__name__}: {exc}") from exc
    except Exception as exc:  # a template can divide by zero too
        raise TemplateRenderError(part, f"{type(exc).__name__}: {exc}") from exc


def render(template: Template, ctx: dict[str, Any]) -> Rendered:
    if template.channel == "email":
        if template.subject is None:
            raise TemplateRenderError("subject", "an email template needs a subject")
        subject = " ".join(_render(_TEXT_ENV, "subject", template.subject, ctx).split())
        html = _render(_HTML_ENV, "html", template.html, ctx) if template.html else None
        return Rendered(
            text=_render(_TEXT_ENV, "text", template.text, ctx), subject=subject, html=html
        )
    return Rendered(text=_render(_TEXT_ENV, "text", template.text, ctx))


def guaranteed_variables(name: str) -> frozenset[str]:
    """The request variables every message rendered with template ``name`` carries: the
    catalog's contract for that kind (MessageRequested refuses a request without them);
    nothing for a template of another name, which any kind may use."""
    return MESSAGE_VARIABLES.get(name, frozenset())


def validate(template: Template, name: str) -> Rendered:
    """Render as a send would, with only what is sure to be there: a template that needs
    more fails now, when it is saved, instead of failing its messages later. Raises
    :class:`TemplateRenderError`."""
    guaranteed = guaranteed_variables(name)
    variables = {k: SAMPLE_VARIABLES[k] for k in guaranteed}
    rendered = None
    # Once about an order and once about none: ``order`` is None for a message that
    # concerns no known order, and a template must say what to show then.
    for order in (SAMPLE_ORDER, None):
        ctx = context(
            SAMPLE_CUSTOMER,
            variables,
            unsubscribe_url="https://example.com/u/sample",
            kind=name,
            order_id=order["id"] if order else None,
            order=order,
        )
        try:
            out = render(template, ctx)
        except TemplateRenderError as exc:
            if not exc.message.startswith("undefined variable"):
                raise
            if order is None:
                hint = "a message about no known order has order = None: guard with {% if order %}"
            else:
                sure = ", ".join(sorted({*guaranteed, *ctx}))
                hint = (
                    f"a {name} message always has: {sure}; for a variable only some requests "
                    "carry, write {{ name | default('') }} or {% if name is defined %}"
                )
            raise TemplateRenderError(exc.part, f"{exc.message}. {hint}", exc.line) from exc
        rendered = rendered or out
    assert rendered is not None
    return rendered


def all_kinds() -> tuple[str, ...]:
    kinds: tuple[str, ...] = MessageKind.__args__  # type: ignore[attr-defined]
    return kinds
