"""The trajectory store (HDF5 or Zarr) and its label sets.

Each storage format is one backend class, registered by suffix in ``backends.py``.
"""

from hipi_offline.store.backends import backend_names, register_backend
from hipi_offline.store.labels import (
    LabelSet,
    read_label_set,
    remove_label_set,
    write_label_set,
)
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
    "backend_names",
    "create_store",
    "open_store",
    "read_label_set",
    "register_backend",
    "remove_label_set",
    "write_label_set",
]
