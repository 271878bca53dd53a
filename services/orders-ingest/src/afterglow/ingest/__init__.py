"""afterglow.ingest: signed webhooks and REST calls become canonical catalog events."""
