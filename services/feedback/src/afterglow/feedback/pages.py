"""The customer-facing pages: the survey (/s/{token}) and the review form (/r/{token}).

Plain HTML forms, no JavaScript, Jinja2 with autoescaping. The signed token is the
only credential: a bad or unknown one gets 404 (saying nothing about what exists),
an authentic but expired one 410. A GET never stores anything, because mail scanners
and link previewers fetch links; ``?score=N`` (a score clicked in the email) only
pre-selects that score.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qs

from fastapi import Query, Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape

from afterglow.feedback import domain, service
from afterglow.feedback.deps import request_deps
from afterglow.kit import openapi
from afterglow.kit.db import Session
from afterglow.kit.origin import REFERRER_POLICY, cross_site_post
from afterglow.kit.routing import service_router
from afterglow.kit.text import clean_text
from afterglow.kit.types import NoControls

router = service_router(tags=["pages"])

# What the pages answer, for the OpenAPI document (every answer is an HTML page).
_NOT_FOUND = openapi.html(
    404,
    "The link is not authentic, or names nothing (also: a path that matches no route, JSON)",
    "<!doctype html>...<h1>We could not find this page</h1>",
)
_EXPIRED = openapi.html(
    410, "The link has expired", "<!doctype html>...<h1>This link has expired</h1>"
)
_CROSS_SITE = openapi.html(
    403,
    "A post from another site's page (Origin)",
    "<!doctype html>...<h1>Please answer from our page</h1>",
)
_TOO_LONG = openapi.html(
    413, "The form is larger than the bound", "<!doctype html>...<h1>That was a little long</h1>"
)
_SURVEY = openapi.html(
    200, "The survey's question, a score selected", "<!doctype html>...<form method=post>..."
)
_REVIEWS = openapi.html(
    200, "The order's products, each with a review form", "<!doctype html>...<form method=post>..."
)


_env = Environment(
    loader=FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=select_autoescape(default=True, default_for_string=True),
)
_NEUTRAL = service.Branding(service.DEFAULT_NAME, service.DEFAULT_COLOR, False)
_HEADERS = {
    "Cache-Control": "no-store",
    # The token must not leak to linked sites; same-origin rather than no-referrer,
    # under which browsers post our own forms with "Origin: null" (kit.origin).
    "Referrer-Policy": REFERRER_POLICY,
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'",
    "X-Frame-Options": "DENY",
}


def _page(template: str, status: int = 200, **ctx: Any) -> HTMLResponse:
    ctx.setdefault("brand", _NEUTRAL)
    return HTMLResponse(_env.get_template(template).render(**ctx), status, headers=_HEADERS)


def _notice(status: int, heading: str, text: str, brand: Any = _NEUTRAL) -> HTMLResponse:
    return _page("notice.html", status, heading=heading, text=text, brand=brand)


def _not_found() -> HTMLResponse:
    return _notice(
        404,
        "We could not find this page",
        "The link may be incomplete. Please open it again from the message we sent you.",
    )


def _expired() -> HTMLResponse:
    return _notice(
        410, "This link has expired", "Thank you for your interest: this link is no longer open."
    )


def _cross_site(request: Request) -> HTMLResponse | None:
    """A 403 page for a post from another site's page (kit.origin), else None."""
    refused = cross_site_post(request, request_deps(request).settings.public_base_url)
    if refused is None:
        return None
    return _notice(
        403,
        "Please answer from our page",
        "This form was sent from another website. Open the link in the message we sent you "
        "and answer there.",
    )


async def _form(request: Request, limit: int) -> dict[str, str] | None:
    """A form-encoded body as a dict (first value of each field); None when too big.
    Parsed here rather than with python-multipart: only urlencoded forms are expected.
    Control characters are removed (tab and newline kept): PostgreSQL refuses NUL, and
    a customer's answer is not lost over a stray byte."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            return None
    parsed = parse_qs(body.decode("utf-8", errors="replace"), keep_blank_values=True)
    return {k: clean_text(v[0], multiline=True) for k, v in parsed.items()}


# --- survey ---------------------------------------------------------------------------


def _survey_page(
    survey: Any, brand: service.Branding, action: str, status: int = 200, **extra: Any
) -> HTMLResponse:
    scale = domain.SCALES[survey.kind]
    return _page(
        "survey.html",
        status,
        brand=brand,
        action=action,
        question=scale.question.format(tenant=brand.name),
        scores=list(range(scale.low, scale.high + 1)),
        low_label=scale.low_label,
        high_label=scale.high_label,
        **extra,
    )


@router.get(
    "/s/{token}",
    response_class=HTMLResponse,
    summary="The survey page (a GET stores nothing: scanners follow links)",
    responses=openapi.errors(
        _SURVEY,
        _NOT_FOUND,
        _EXPIRED,
        openapi.html(
            422, "A score not of the scale: the page, nothing selected", "<!doctype html>..."
        ),
    ),
)
async def survey_form(
    request: Request,
    token: str,
    session: Session,
    # Declared (not only read) so that it is documented and validated like every query
    # value: a control character is a 422 before the token is even looked at.
    score: Annotated[
        str | None,
        Query(
            description="A score clicked in the email: pre-selected, not stored",
            examples=["9"],
        ),
        NoControls,
    ] = None,
) -> HTMLResponse:
    deps = request_deps(request)
    settings = deps.settings
    try:
        survey = await service.load_survey(session, settings, token, deps.clock.now(), lock=False)
    except domain.ExpiredToken:
        return _expired()
    except domain.BadToken:
        return _not_found()
    brand = await service.branding(session, survey.tenant_id)
    current = await service.current_answer(session, survey)
    selected: int | None = current.score if current else None
    status, error = 200, None
    if score is not None:
        clicked = _score_on_scale(score, domain.SCALES[survey.kind])
        if clicked is None:
            # Not a score our links carry: say so (422), and still let them answer.
            status, error = 422, "Please choose a score below."
        else:
            selected = clicked
    return _survey_page(
        survey,
        brand,
        request.url.path,
        status=status,
        error=error,
        selected=selected,
        comment=current.comment if current else None,
    )


def _score_on_scale(raw: str, scale: Any) -> int | None:
    """``raw`` as a score of the scale, or None. ASCII digits only: str.isdigit() also
    accepts "²", which int() refuses (that was a 500); two at most, as no scale goes
    past 10 and int() refuses a 5,000-digit number too."""
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 2):
        return None
    score = int(raw)
    return score if scale.low <= score <= scale.high else None


@router.post(
    "/s/{token}",
    response_class=HTMLResponse,
    summary="Answer the survey (the answer may be changed for a day)",
    responses=openapi.errors(
        openapi.html(200, "Thanks (a promoter also gets the referral link)", "<!doctype html>..."),
        _CROSS_SITE,
        _NOT_FOUND,
        openapi.html(
            409,
            "Answered more than a day ago",
            "<!doctype html>...<h1>You have already answered</h1>",
        ),
        _EXPIRED,
        _TOO_LONG,
        openapi.html(422, "No score, or one off the scale: the form again", "<!doctype html>..."),
    ),
    openapi_extra=openapi.form_body(
        {"score": {"type": "string"}, "comment": {"type": "string"}},
        {"score": "9", "comment": "Fast delivery"},
    ),
)
async def survey_answer(request: Request, token: str, session: Session) -> HTMLResponse:
    if (refused := _cross_site(request)) is not None:
        return refused
    deps = request_deps(request)
    settings = deps.settings
    now = deps.clock.now()
    try:
        survey = await service.load_survey(session, settings, token, now, lock=True)
    except domain.ExpiredToken:
        return _expired()
    except domain.BadToken:
        return _not_found()
    brand = await service.branding(session, survey.tenant_id)
    form = await _form(request, settings.feedback_max_form_bytes)
    if form is None:
        return _notice(413, "That was a little long", "Please shorten your comment.", brand)
    raw = form.get("score", "")
    comment = (form.get("comment") or "").strip()[:5000] or None
    try:
        score = int(raw)
        outcome = await service.answer_survey(
            session, deps.outbox, settings, survey, score, comment, now
        )
    except (ValueError, domain.InvalidScore):
        return _survey_page(
            survey,
            brand,
            request.url.path,
            status=422,
            error="Please choose a score before sending.",
            comment=comment,
        )
    except domain.AnswerLocked:
        return _notice(
            409,
            "You have already answered",
            "Thank you! Your answer was recorded more than a day ago and can no longer be changed.",
            brand,
        )
    referral = None
    if outcome.band == "promoter":
        referral = await service.referral_link(session, survey.tenant_id, survey.customer_id)
    return _page(
        "thanks.html",
        brand=brand,
        action=request.url.path,
        can_change=True,
        referral_url=referral,
    )


# --- reviews --------------------------------------------------------------------------


def _product_key(item: Any) -> str:
    return item.sku or item.product_id or f"line-{item.line_no}"


async def _linked_order(
    request: Request, session: Any, token: str
) -> tuple[list[str], list[Any]] | HTMLResponse:
    deps = request_deps(request)
    settings = deps.settings
    try:
        parts, _ = domain.verify(settings.feedback_token_secret, "r", token, deps.clock.now())
    except domain.ExpiredToken:
        return _expired()
    except domain.BadToken:
        return _not_found()
    if len(parts) != 3:
        return _not_found()
    tenant, customer, order = parts
    items = await service.order_items(session, tenant, customer, order)
    if not items:
        return _not_found()
    return parts, items


async def _render_reviews(
    session: Any,
    request: Request,
    parts: list[str],
    items: list[Any],
    status: int = 200,
    notice: str | None = None,
    errors: dict[str, str] | None = None,
) -> HTMLResponse:
    tenant, _, order = parts
    done = await service.reviewed_keys(session, tenant, order)
    products = [
        {
            "index": i,
            "key": _product_key(it),
            "title": it.title or it.sku or "Your product",
            "done": f"page:{order}:{_product_key(it)}" in done,
            "error": (errors or {}).get(_product_key(it)),
        }
        for i, it in enumerate(items)
    ]
    brand = await service.branding(session, tenant)
    return _page(
        "review.html",
        status,
        brand=brand,
        action=request.url.path,
        products=products,
        notice=notice,
    )


@router.get(
    "/r/{token}",
    response_class=HTMLResponse,
    summary="The review page of an order",
    responses=openapi.errors(_REVIEWS, _NOT_FOUND, _EXPIRED),
)
async def review_form(request: Request, token: str, session: Session) -> HTMLResponse:
    ctx = await _linked_order(request, session, token)
    if isinstance(ctx, HTMLResponse):
        return ctx
    return await _render_reviews(session, request, *ctx)


@router.post(
    "/r/{token}",
    response_class=HTMLResponse,
    summary="Review one product of the order",
    responses=openapi.errors(
        _REVIEWS,
        _CROSS_SITE,
        _NOT_FOUND,
        _EXPIRED,
        _TOO_LONG,
        openapi.html(
            422, "No product of the order, or no 1-5 rating: the form again", "<!doctype html>..."
        ),
    ),
    openapi_extra=openapi.form_body(
        {
            "product": {"type": "string", "description": "SKU or product id of an order line"},
            "rating": {"type": "string", "description": "1 to 5"},
            "title": {"type": "string"},
            "body": {"type": "string"},
        },
        {"product": "TENT-2P", "rating": "5", "title": "Dry all night", "body": "Easy to pitch."},
    ),
)
async def review_submit(request: Request, token: str, session: Session) -> HTMLResponse:
    if (refused := _cross_site(request)) is not None:
        return refused
    ctx = await _linked_order(request, session, token)
    if isinstance(ctx, HTMLResponse):
        return ctx
    parts, items = ctx
    deps = request_deps(request)
    settings = deps.settings
    form = await _form(request, settings.feedback_max_form_bytes)
    if form is None:
        return _notice(413, "That was a little long", "Please shorten your review.")
    key = form.get("product", "")
    item = next((it for it in items if _product_key(it) == key), None)
    if item is None:
        return await _render_reviews(
            session, request, parts, items, 422, notice="Please pick a product from your order."
        )
    try:
        rating = int(form.get("rating", ""))
        if not 1 <= rating <= 5:
            raise ValueError
    except ValueError:
        return await _render_reviews(
            session, request, parts, items, 422, errors={key: "Please choose 1 to 5 stars."}
        )
    tenant, customer, order = parts
    await service.submit_review(
        session,
        deps.outbox,
        tenant,
        service.NewReview(
            customer_id=customer,
            rating=rating,
            title=(form.get("title") or "").strip()[:200] or None,
            body=(form.get("body") or "").strip()[:5000] or None,
            sku=item.sku,
            product_id=item.product_id,
            order_id=order,
            source="page",
            dedupe_key=f"page:{order}:{key}",
        ),
        deps.clock.now(),
    )
    return await _render_reviews(
        session, request, parts, items, notice="Thank you for your review!"
    )
