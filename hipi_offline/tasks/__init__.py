"""Task families (reward functions), priors and YAML task specs."""

from hipi_offline.tasks.families import (
    CustomFamily,
    DiscreteFamily,
    GoalFamily,
    LinearFamily,
    RewardFamily,
    TargetFamily,
)
from hipi_offline.tasks.registry import FAMILIES
from hipi_offline.tasks.spec import TaskSpec, builtin_spec_names, load_task_spec, parse_task_spec

__all__ = [
    "FAMILIES",
    "CustomFamily",
    "DiscreteFamily",
    "GoalFamily",
    "LinearFamily",
    "RewardFamily",
    "TargetFamily",
    "TaskSpec",
    "builtin_spec_names",
    "load_task_spec",
    "parse_task_spec",
]
