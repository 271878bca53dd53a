"""orders-ingest is the source of order and ticket events. It consumes two things for
the outside systems whose credentials it holds: reward-code requests for the shops
(afterglow.ingest.discounts.handlers) and ``support.escalation_requested``, to open a
ticket in the tenant's helpdesk (afterglow.ingest.escalations). (The kit's tenants
consumer keeps its api_keys table in step.)"""
