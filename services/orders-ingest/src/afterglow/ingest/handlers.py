"""orders-ingest consumes nothing of its own: it is the source of order and ticket
events. (The kit's tenants consumer keeps its api_keys table in step.)"""
