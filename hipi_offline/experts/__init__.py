"""Task-conditioned experts that need no training; importing registers them."""

from hipi_offline.experts import (
    desk_play,  # noqa: F401  (the desk's scripted play)
    greedy,  # noqa: F401  (the point mass: straight to the goal)
    mppi,  # noqa: F401  (MPPI for "cheetah" and "quadruped")
    reacher_ik,  # noqa: F401  (the reacher: inverse kinematics and a PD law)
    trot,  # noqa: F401  (the quadruped's default gait)
)
from hipi_offline.experts.base import (
    Expert,
    default_expert,
    expert_names,
    make_expert,
    register_expert,
)

__all__ = ["Expert", "default_expert", "expert_names", "make_expert", "register_expert"]
