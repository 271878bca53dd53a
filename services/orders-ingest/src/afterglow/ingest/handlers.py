"""orders-ingest is the source of order and ticket events. It consumes one thing of
its own: reward-code requests for the shops whose credentials it holds
(afterglow.ingest.discounts.handlers). (The kit's tenants consumer keeps its api_keys
table in step.)"""
