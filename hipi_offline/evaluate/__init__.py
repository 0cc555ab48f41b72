"""Evaluation of trained policies in their simulator (``hipi-offline evaluate``)."""

from hipi_offline.evaluate.report import RunResult, mean_interval
from hipi_offline.evaluate.rollout import (
    EpisodeOutcome,
    episode_return,
    mean_velocity_along_command,
)
from hipi_offline.evaluate.run import EvalConfig, Evaluation, evaluate
from hipi_offline.evaluate.tasks import EpisodePlan, plan_episodes, read_task_file
from hipi_offline.evaluate.video import frame_strip, write_video

__all__ = [
    "EpisodeOutcome",
    "EpisodePlan",
    "EvalConfig",
    "Evaluation",
    "RunResult",
    "episode_return",
    "evaluate",
    "frame_strip",
    "mean_interval",
    "mean_velocity_along_command",
    "plan_episodes",
    "read_task_file",
    "write_video",
]
