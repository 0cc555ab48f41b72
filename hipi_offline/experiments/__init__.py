"""The paper's experiments as resumable library functions (Fig. 7a, Fig. 7b)."""

from hipi_offline.experiments.bias import Fig7bConfig, biased_spec_text, run_fig7b
from hipi_offline.experiments.common import ALL_METHODS, Control, TrainSettings
from hipi_offline.experiments.fig7 import EnvSetup, Fig7aConfig, run_fig7a

__all__ = [
    "ALL_METHODS",
    "Control",
    "EnvSetup",
    "Fig7aConfig",
    "Fig7bConfig",
    "TrainSettings",
    "biased_spec_text",
    "run_fig7a",
    "run_fig7b",
]
