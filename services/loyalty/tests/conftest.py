from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # loyalty_support is shared by the test dirs

from loyalty_support import loyalty  # noqa: F401 - the session fixture
