"""Collected locomotion data is task-identifiable: relabeling a small dataset with its
own task spec recovers the hidden commanded tasks (what HIPI-BC needs)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from hipi_offline.collect import CollectConfig, collect
from hipi_offline.relabel import RelabelConfig, relabel
from hipi_offline.store import open_store
from hipi_offline.tasks import load_task_spec


def _ranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(len(values))
    return ranks


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(_ranks(a), _ranks(b))[0, 1])


@pytest.mark.slow
def test_cheetah_posterior_mean_tracks_the_commanded_speed(tmp_path: Path) -> None:
    store = tmp_path / "cheetah.h5"
    collect("cheetah", store, CollectConfig(episodes=8, steps=100, seed=1, workers=2))
    relabel(store, RelabelConfig(tasks="cheetah-velocity", top_k="all", device="cpu"))
    with open_store(store) as opened:
        labels = opened.read_labels("hipi")
        commanded = opened.read_episode_field("task")[:, 0]
    posterior_mean = (labels.topk_probabilities() * labels.candidates[labels.topk_index, 0]).sum(1)
    assert spearman(posterior_mean, commanded) >= 0.9
    assert np.abs(posterior_mean - commanded).mean() < 0.5


@pytest.mark.slow
def test_quadruped_commanded_weights_rank_in_the_top_decile(tmp_path: Path) -> None:
    """Candidates: 90 prior draws plus the commanded weight vectors of the episodes;
    each episode's own commanded vector should be among its 10 % most probable."""
    store = tmp_path / "quadruped.h5"
    episodes = 6
    collect("quadruped", store, CollectConfig(episodes=episodes, steps=100, seed=2, workers=2))
    with open_store(store) as opened:
        commanded = opened.read_episode_field("task").astype(np.float64)
    rng = np.random.default_rng(0)
    low, high = np.array([-1, -1, 0, 0, 0.0]), np.array([1, 1, 1, 1, 1.0])
    draws = rng.uniform(low, high, size=(90, 5))
    spec = yaml.safe_load(load_task_spec("quadruped-linear").source)
    spec["candidates"] = np.concatenate([commanded, draws]).round(6).clip(low, high).tolist()
    spec_path = tmp_path / "quadruped-explicit.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    relabel(store, RelabelConfig(tasks=str(spec_path), top_k="all", device="cpu"))
    with open_store(store) as opened:
        labels = opened.read_labels("hipi")
    k = labels.num_candidates
    rank = np.array([int(np.flatnonzero(labels.topk_index[i] == i)[0]) for i in range(episodes)])
    # the criterion: "top decile for most episodes". By chance (no information
    # in the data) 4 of 6 in the top decile has probability 0.0013. An earlier "at
    # least 5 of 6" held at collection seed 2 only; seeds 3 and 4 gave 4 of 6
    assert np.mean(rank < k // 10) > 0.5, f"ranks of the commanded tasks among {k}: {rank}"
