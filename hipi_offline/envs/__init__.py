"""Simulated environments (MuJoCo via dm_control) sharing one interface.

Importing this package registers the built-in environments; their modules import
MuJoCo and dm_control lazily, when an environment is constructed.
"""

from hipi_offline.envs.base import (
    EnvEntry,
    EnvInfo,
    StepResult,
    TaskEnv,
    env_entry,
    env_names,
    env_task_spec,
    make_env,
    register,
    transition_rewards,
)

__all__ = [
    "EnvEntry",
    "EnvInfo",
    "StepResult",
    "TaskEnv",
    "env_entry",
    "env_names",
    "env_task_spec",
    "make_env",
    "register",
    "transition_rewards",
]

import hipi_offline.envs.cheetah  # noqa: E402,F401  (registers "cheetah")
import hipi_offline.envs.desk  # noqa: E402,F401  (registers "desk")
import hipi_offline.envs.quadruped  # noqa: E402,F401  (registers "quadruped")
