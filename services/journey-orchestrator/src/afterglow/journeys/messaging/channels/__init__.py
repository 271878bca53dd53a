"""How a message leaves: one small interface (:class:`Channel`, ``send(job) -> Outcome``)
and one implementation per provider. The dispatcher judges, renders, leases and settles;
a channel only delivers, and says whether a failure is worth another try.

* ``webhook``: the tenant's endpoint, signed per Standard Webhooks (the default).
* ``smtp``: any SMTP relay or the merchant's own server (STARTTLS or implicit TLS, AUTH,
  DKIM), a real MIME message.
* ``twilio``: SMS through Twilio's Messages API.
"""

from __future__ import annotations

from afterglow.journeys.messaging.channels.base import Channel, Job, Outcome, Route, Senders
from afterglow.journeys.messaging.channels.factory import channel_for

__all__ = ["Channel", "Job", "Outcome", "Route", "Senders", "channel_for"]
