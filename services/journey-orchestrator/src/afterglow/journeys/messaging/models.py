"""Messaging tables (filled in by messaging), on the journeys Base."""
