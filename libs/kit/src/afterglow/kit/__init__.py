"""afterglow.kit: the plumbing every Afterglow service shares (settings, database, auth,
errors, health, metrics, logs and the app factory), so that no service copies it."""
