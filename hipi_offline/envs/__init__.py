"""Simulated environments (MuJoCo via dm_control) sharing one interface.

Importing this package registers the built-in environments; their modules import
MuJoCo and dm_control lazily, when an environment is constructed.

Adding an environment: one module with one class (the :class:`TaskEnv` interface; on
a dm_control suite physics, a subclass of ``physics.SuiteEnv``) decorated with
``@register(name, task_spec=..., collection="commanded" or "play", task_frame=...)``,
and its import line below. Collection, evaluation, the experiments and the contract
tests (tests/test_envs.py) read the registry; an expert to collect with is registered
in ``hipi_offline.experts``.
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
import hipi_offline.envs.pointmass  # noqa: E402,F401  (registers "pointmass")
import hipi_offline.envs.quadruped  # noqa: E402,F401  (registers "quadruped")
import hipi_offline.envs.reacher  # noqa: E402,F401  (registers "reacher")
