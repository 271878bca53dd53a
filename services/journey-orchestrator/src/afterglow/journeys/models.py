"""Tables of the ``journeys`` schema. The journey engine's tables live here; the
messaging subpackage defines its own in ``messaging/models.py`` on the same Base."""

from __future__ import annotations

from afterglow.events import event_tables
from afterglow.kit.auth import api_keys_table
from afterglow.kit.db import declarative_base

SCHEMA = "journeys"
Base = declarative_base(SCHEMA)
tables = event_tables(Base.metadata)
api_keys = api_keys_table(Base.metadata)
