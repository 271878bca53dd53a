"""Afterglow loyalty: points ledger, tiers and rewards."""
