from __future__ import annotations

from .console_support import services  # noqa: F401 - the session fixture
