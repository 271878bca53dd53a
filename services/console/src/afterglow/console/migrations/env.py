from afterglow.console.models import Base
from afterglow.kit.migrations import run_env

run_env(Base.metadata)
