"""A small synthetic "runner" dataset, generated in seconds, for the quick start,
tests and benchmarks (before real environments exist, and without them).

Each episode is commanded a hidden target speed psi ~ U(0, 3) and a planar goal;
the agent's speed relaxes toward psi with noise, its planar position drifts toward
the goal. Stored fields::

    steps/observations  float32 [S, 8]  (x, y, speed, height, 4 noise dims)
    steps/actions       float32 [S, 6]  in [-1, 1]
    steps/infos/speed   float32 [S]
    steps/infos/height  float32 [S]
    episodes/task       float32 [N, 1]  commanded speed (oracle only)
    episodes/goal       float32 [N, 2]  commanded planar goal (oracle only)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hipi_offline.configs import check_choice, check_int, check_seed
from hipi_offline.progress import progress_bar
from hipi_offline.store.backends import COMPRESSIONS
from hipi_offline.store.location import Location, store_location
from hipi_offline.store.store import DEFAULT_CHUNK_ROWS, TrajectoryStore


@dataclass(frozen=True)
class SyntheticConfig:
    """Size and seed of the synthetic dataset."""

    episodes: int = 200
    """Number of episodes."""
    steps: int = 200
    """Steps per episode."""
    seed: int = 0
    """Seed of every random draw."""
    compression: str = "none"
    """Store compression: none, fast or small."""
    chunk_rows: int = DEFAULT_CHUNK_ROWS
    """Storage chunk along the step axis."""
    batch_episodes: int = 500
    """Episodes generated and appended at once (bounds memory)."""

    def __post_init__(self) -> None:
        for name in ("episodes", "steps", "chunk_rows", "batch_episodes"):
            check_int(getattr(self, name), name)
        check_seed(self.seed)
        check_choice(self.compression, "compression", COMPRESSIONS)


def synthetic_episodes(
    count: int, steps: int, rng: np.random.Generator
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Step and episode fields of ``count`` episodes of ``steps`` steps each."""
    target = rng.uniform(0.0, 3.0, size=(count, 1))
    goal = rng.uniform(-1.0, 1.0, size=(count, 2))
    speed = np.empty((count, steps))
    pos = np.empty((count, steps, 2))
    v = rng.uniform(0.0, 0.5, size=count)
    p = rng.normal(0.0, 0.1, size=(count, 2))
    for t in range(steps):
        v = v + 0.1 * (target[:, 0] - v) + 0.05 * rng.standard_normal(count)
        p = p + 0.05 * (goal - p) + 0.01 * rng.standard_normal((count, 2))
        speed[:, t], pos[:, t] = v, p
    height = 0.6 + 0.05 * np.sin(np.linspace(0, 6 * np.pi, steps))[None] * target
    height = height + 0.01 * rng.standard_normal((count, steps))
    actions = np.clip(0.3 * rng.standard_normal((count, steps, 6)), -1.0, 1.0)
    noise = rng.standard_normal((count, steps, 4))
    obs = np.concatenate([pos, speed[..., None], height[..., None], noise], axis=-1)
    step_fields = {
        "observations": obs.reshape(count * steps, 8).astype(np.float32),
        "actions": actions.reshape(count * steps, 6).astype(np.float32),
        "infos/speed": speed.reshape(-1).astype(np.float32),
        "infos/height": height.reshape(-1).astype(np.float32),
    }
    episode_fields = {"task": target.astype(np.float32), "goal": goal.astype(np.float32)}
    return step_fields, episode_fields


STEP_BYTES = (8 + 6 + 1 + 1) * 4  # observations, actions, speed, height (float32)
EPISODE_BYTES = (1 + 2) * 4 + 8  # task, goal (float32) and the episode end (int64)
METADATA_BYTES = 256 * 1024


def _rounded(rows: int, chunk: int) -> int:
    return -(-rows // chunk) * chunk


def synthetic_store_bytes(config: SyntheticConfig) -> int:
    """Bytes the store takes on disk, uncompressed (both backends store whole chunks)."""
    steps = _rounded(config.episodes * config.steps, config.chunk_rows) * STEP_BYTES
    return steps + _rounded(config.episodes, 4096) * EPISODE_BYTES + METADATA_BYTES


def make_synthetic_store(
    path: str | Path, config: SyntheticConfig = SyntheticConfig(), overwrite: bool = False
) -> Location:
    """Write the synthetic dataset to ``path`` (.h5/.hdf5 or .zarr, or a .zarr URL such
    as ``s3://bucket/x.zarr``) and return its location.
    Everything (path, options, writability, free space) is checked before the first
    byte is written; a failure leaves nothing behind."""
    rng = np.random.default_rng(config.seed)
    path = store_location(path)
    with TrajectoryStore.create(
        path,
        env="synthetic-runner",
        metadata={"generator": "hipi_offline.store.synthetic", "seed": config.seed},
        compression=config.compression,
        chunk_rows=config.chunk_rows,
        overwrite=overwrite,
        expected_bytes=synthetic_store_bytes(config),
    ) as store:
        done = 0
        with progress_bar(total=config.episodes, desc="synthetic episodes", unit="ep") as bar:
            while done < config.episodes:
                count = min(config.batch_episodes, config.episodes - done)
                steps, episodes = synthetic_episodes(count, config.steps, rng)
                store.append_episodes(steps, [config.steps] * count, episodes)
                done += count
                bar.update(count)
    return path
