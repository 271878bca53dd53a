"""Feedback settings (environment variables, prefixed FEEDBACK_)."""

from __future__ import annotations

from afterglow.kit.settings import ServiceSettings


class FeedbackSettings(ServiceSettings):
    # Signs survey and review links (HMAC-SHA256). Required, no default: a public
    # default let anyone forge a review link for any tenant's customer. Rotating it
    # invalidates every link in flight.
    feedback_token_secret: str = ""
    feedback_survey_validity_days: int = 14
    feedback_review_link_validity_days: int = 60
    # The customer may change an answer for this long after their first answer.
    feedback_change_window_hours: int = 24
    # Form bodies larger than this are refused (413): a comment is short.
    feedback_max_form_bytes: int = 20_000

    # Support tickets: the CSAT survey goes this long after a ticket is solved (Zendesk's
    # default), unless the customer was surveyed within the fatigue window (the
    # journey's survey rule too); the worker looks for due surveys this often.
    feedback_csat_delay_hours: float = 24.0
    feedback_survey_fatigue_days: int = 30
    feedback_csat_poll_s: float = 1.0
    feedback_csat_batch: int = 100

    def required_secrets(self) -> dict[str, str | None]:
        return {**super().required_secrets(), "FEEDBACK_TOKEN_SECRET": self.feedback_token_secret}
