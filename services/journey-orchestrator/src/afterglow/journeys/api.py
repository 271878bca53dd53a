"""Journey routes (filled in by the journey engine)."""

from fastapi import APIRouter

router = APIRouter()
