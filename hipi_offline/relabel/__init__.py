"""The HIPI relabeling engine: returns matrix, inverse-RL posterior, label sets."""

from hipi_offline.relabel.posterior import Posterior, inverse_rl_posterior, log_partition
from hipi_offline.relabel.returns import accumulate_returns, make_accumulator, returns_tiles
from hipi_offline.relabel.run import METHODS, RelabelConfig, RelabelSummary, relabel

__all__ = [
    "METHODS",
    "Posterior",
    "RelabelConfig",
    "RelabelSummary",
    "accumulate_returns",
    "inverse_rl_posterior",
    "log_partition",
    "make_accumulator",
    "relabel",
    "returns_tiles",
]
