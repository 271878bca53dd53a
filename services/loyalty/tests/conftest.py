from __future__ import annotations

from .loyalty_support import loyalty  # noqa: F401 - the module-scoped fixture
