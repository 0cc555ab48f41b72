"""Task-conditioned behavior cloning on relabeled data (paper Alg. 3 / Sec. 5.2)."""

from hipi_offline.bc.config import BCConfig, parse_hidden
from hipi_offline.bc.data import BatchSampler, TaskSampler, WorkingSet, load_working_set
from hipi_offline.bc.description import RunDescription
from hipi_offline.bc.loop import TrainSummary, lr_at
from hipi_offline.bc.policy import BCNetwork, Policy, load_policy
from hipi_offline.bc.train import train_bc

__all__ = [
    "BCConfig",
    "BCNetwork",
    "BatchSampler",
    "Policy",
    "RunDescription",
    "TaskSampler",
    "TrainSummary",
    "WorkingSet",
    "load_policy",
    "load_working_set",
    "lr_at",
    "parse_hidden",
    "train_bc",
]
