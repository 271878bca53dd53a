from afterglow.kit.migrations import run_env
from afterglow.loyalty.models import Base

run_env(Base.metadata)
