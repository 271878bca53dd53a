from afterglow.kit.migrations import run_env
from afterglow.console.models import Base

run_env(Base.metadata)
