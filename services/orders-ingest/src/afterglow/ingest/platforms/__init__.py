"""One module per platform, each holding that platform's pure pieces: how its payloads
become catalog events, what its webhooks are keyed by, and what reconciliation and the
history import read from its API. Shared normalization (errors, signatures, money,
hashing, the cleaning boundary, the output types) is :mod:`afterglow.ingest.domain`.
The I/O around them stays with the workers (bigcommerce, reconcile, history)."""
