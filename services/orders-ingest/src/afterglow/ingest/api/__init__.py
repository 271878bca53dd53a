"""orders-ingest's routes, one router module per audience: ``webhooks`` (signed
deliveries from platforms, helpdesks and trackers), ``rest`` (internal REST with API
keys), ``operators`` (stored deliveries) and ``admin`` (the tenant registry, admin
token). ``receiving`` is the webhooks' shared pipeline, ``shared`` what several use."""
