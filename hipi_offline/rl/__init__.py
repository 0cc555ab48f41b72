"""HIPI-RL: task-conditioned SAC whose minibatches are relabeled (paper Alg. 1-2)."""

from hipi_offline.rl.batch import Batch, EpisodeLookup, EpisodeTable
from hipi_offline.rl.config import RLConfig
from hipi_offline.rl.relabel import (
    STRATEGIES,
    Relabeled,
    Relabeler,
    hipi_log_probs,
    make_relabeler,
)
from hipi_offline.rl.sac import SAC, SACConfig
from hipi_offline.rl.train import RLSummary, train_rl

__all__ = [
    "SAC",
    "STRATEGIES",
    "Batch",
    "EpisodeLookup",
    "EpisodeTable",
    "Relabeled",
    "Relabeler",
    "RLConfig",
    "RLSummary",
    "SACConfig",
    "hipi_log_probs",
    "make_relabeler",
    "train_rl",
]
