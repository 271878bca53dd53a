from afterglow.kit.migrations import run_env
from afterglow.referrals.models import Base

run_env(Base.metadata)
