"""What a label set's attributes say about its tasks: ``relabel`` writes the spec's
family name (``family``) and its task names (``task_names``, a JSON list, empty
unless the family is discrete); training, plots and summaries read them back here."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from hipi_offline.errors import InputError

if TYPE_CHECKING:
    from hipi_offline.tasks.spec import TaskSpec

DISCRETE = "discrete"
"""The ``family`` attribute of labels whose candidates are one-hot task rows: the
discrete family's registered name (tests/test_tasks.py keeps the two equal; this module
imports no torch, so ``inspect`` starts fast)."""


def task_attrs(spec: TaskSpec) -> dict[str, str]:
    """The attributes ``family`` and ``task_names`` of a label set relabeled with ``spec``."""
    return {"family": spec.family.name, "task_names": json.dumps(list(spec.task_names or []))}


def labels_are_discrete(attrs: Mapping[str, Any]) -> bool:
    """Whether a label set's candidates are a discrete family's one-hot task rows."""
    return str(attrs.get("family", "")) == DISCRETE


def label_task_names(attrs: Mapping[str, Any]) -> list[str]:
    """The task names a label set stores (``[]`` when it has none); InputError when
    the attribute is not a list of names (a store is untrusted input)."""
    raw = attrs.get("task_names")
    if raw is None or (isinstance(raw, str) and not raw):
        return []
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except (ValueError, RecursionError):
            raise InputError("task_names: the label attribute is not a JSON list") from None
    if isinstance(raw, np.ndarray):
        raw = raw.tolist()
    if not isinstance(raw, (list, tuple)):
        raise InputError(f"task_names: expected a list of names, got {type(raw).__name__}")
    return [str(name) for name in raw]
