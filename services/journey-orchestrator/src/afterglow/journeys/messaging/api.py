"""Messaging routes (filled in by messaging)."""

from fastapi import APIRouter

router = APIRouter()
