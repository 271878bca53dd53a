"""Picks the implementation for a job's route."""

from __future__ import annotations

from afterglow.journeys.messaging.channels.base import Channel, Job, Senders
from afterglow.journeys.messaging.channels.smtp import SmtpChannel
from afterglow.journeys.messaging.channels.twilio import TwilioChannel
from afterglow.journeys.messaging.channels.webhook import WebhookChannel


def channel_for(job: Job, senders: Senders) -> Channel:
    provider = job.route.provider
    if provider == "smtp":
        return SmtpChannel(senders)
    if provider == "twilio":
        return TwilioChannel(senders)
    if provider == "webhook":
        return WebhookChannel(senders)
    raise ValueError(f"unknown channel provider {provider!r}")
