"""Task-conditioned experts that need no training; importing registers them."""

from hipi_offline.experts import (
    mppi,  # noqa: F401  (MPPI for "cheetah" and "quadruped")
    trot,  # noqa: F401  (the quadruped's default gait)
)
from hipi_offline.experts.base import (
    Expert,
    default_expert,
    expert_names,
    make_expert,
    register_expert,
)

try:  # the desk environment's scripted expert, when present
    from hipi_offline.experts import desk_play  # noqa: F401
except ModuleNotFoundError as err:
    if err.name != "hipi_offline.experts.desk_play":
        raise

__all__ = ["Expert", "default_expert", "expert_names", "make_expert", "register_expert"]
