from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # console_support is shared by the test dirs

from console_support import services  # noqa: F401 - the session fixture
