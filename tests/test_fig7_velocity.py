"""Fig. 7a reports the velocity along the command beside the return, over seeds."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from hipi_offline.experiments.common import aggregate, seed_velocities
from hipi_offline.experiments.report import fig7a_table


def _eval(path: Path, mean_return: float, velocity: float | None, stderr: float = 0.1) -> Path:
    entry = None if velocity is None else {"mean": velocity, "stderr": stderr, "episodes": 4}
    path.write_text(
        json.dumps({"mean_return": mean_return, "stderr": 1.0, "velocity_along_command": entry})
    )
    return path


def test_velocity_over_seeds_against_a_float64_reference(tmp_path: Path) -> None:
    speeds = [1.25, 1.75, 0.5]
    paths = [_eval(tmp_path / f"s{i}.json", 10.0 + i, v) for i, v in enumerate(speeds)]
    result = aggregate(paths)
    reference = np.array(speeds, np.float64)
    assert math.isclose(result["velocity_along_command"]["mean"], reference.mean())
    assert math.isclose(
        result["velocity_along_command"]["stderr"], reference.std(ddof=1) / math.sqrt(3)
    )
    assert result["mean"] == 11.0  # the return is unchanged
    one = seed_velocities(paths[:1])
    assert one == {"mean": 1.25, "stderr": 0.1, "per_seed": [1.25]}  # episode stderr
    no_direction = [_eval(tmp_path / "d.json", 1.0, None)]
    assert seed_velocities(no_direction) is None
    assert "velocity_along_command" not in aggregate(no_direction)
    table = fig7a_table(
        {"fig7a": {"quadruped": {"hipi": result}, "desk": {"hipi": aggregate(no_direction)}}}
    )
    assert table[3].startswith("| quadruped (velocity along command, m/s) | 1.167 ± ")
    assert len(table) == 5  # header, rule, quadruped return and velocity, desk
