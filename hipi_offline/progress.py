"""Progress bars that can be switched off from the environment at any time.

tqdm reads ``TQDM_DISABLE`` once, when it is imported; a script that sets the
variable after importing the library (``--no-progress``) would still see bars.
:func:`progress_bar` reads it at every call, so the switch reaches every bar of the
process and of the worker processes it spawns.
"""

from __future__ import annotations

import os
from typing import Any

from tqdm.auto import tqdm

_OFF = {"1", "true", "yes", "on"}


def progress_disabled() -> bool:
    """Whether ``TQDM_DISABLE`` is set to a true value now."""
    return os.environ.get("TQDM_DISABLE", "").strip().lower() in _OFF


def progress_bar(*, enabled: bool = True, **kwargs: Any) -> tqdm:
    """A tqdm bar (keyword arguments as tqdm's), hidden when ``enabled`` is false or
    ``TQDM_DISABLE`` is set."""
    return tqdm(disable=not enabled or progress_disabled(), **kwargs)
