from afterglow.journeys.messaging import models as _messaging_models  # noqa: F401 - registers tables
from afterglow.journeys.models import Base
from afterglow.kit.migrations import run_env

run_env(Base.metadata)
