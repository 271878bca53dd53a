from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # referrals_support is shared by the test dirs

from referrals_support import producer, service  # noqa: F401 - fixtures
