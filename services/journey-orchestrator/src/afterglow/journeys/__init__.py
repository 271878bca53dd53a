"""The journey orchestrator: moves each customer through onboarding, check-in, survey and
advocacy, and delivers every customer message (the ``messaging`` subpackage)."""
