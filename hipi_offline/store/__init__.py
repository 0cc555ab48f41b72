"""The trajectory store (HDF5 or Zarr) and its label sets."""

from hipi_offline.store.labels import LabelSet, read_label_set, write_label_set
from hipi_offline.store.store import (
    FORMAT_VERSION,
    StepChunk,
    TrajectoryStore,
    create_store,
    open_store,
)

__all__ = [
    "FORMAT_VERSION",
    "LabelSet",
    "StepChunk",
    "TrajectoryStore",
    "create_store",
    "open_store",
    "read_label_set",
    "write_label_set",
]
