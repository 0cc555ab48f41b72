"""Contract tests of the task families, over every family in the registry, and of
what a :class:`TaskSpec` answers (discrete or not, task names, the family under a
bias, a direction, the return's step weights).

A new family registered in ``FAMILIES`` fails ``test_every_registered_family_has_a_case``
until it gets a case here: a minimal spec and a plain-numpy reference reward.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import reference as ref
import torch
import yaml

from hipi_offline.envs.base import env_entry, env_names
from hipi_offline.errors import InputError
from hipi_offline.store.backends import ArrayInfo
from hipi_offline.store.label_attrs import label_task_names, labels_are_discrete, task_attrs
from hipi_offline.tasks import load_task_spec, parse_task_spec
from hipi_offline.tasks.families import BiasedFamily
from hipi_offline.tasks.registry import FAMILIES
from hipi_offline.tasks.spec import COMMON_KEYS, TaskSpec

SPEED, OBS, ACT = "steps/infos/speed", "steps/observations", "steps/actions"
STORE_FIELDS = {
    SPEED: ArrayInfo((0,), np.dtype("float32"), 1),
    OBS: ArrayInfo((0, 3), np.dtype("float32"), 1),
    ACT: ArrayInfo((0, 2), np.dtype("float32"), 1),
}
CUSTOM_MODULE = "hipi_offline_test_tasks_rewards"
CUSTOM_SOURCE = """
import torch

def speed_band(fields, actions, tasks):
    v = fields["steps/infos/speed"][:, None]
    return -torch.clamp((v - tasks[:, 0]).abs() - tasks[:, 1], min=0.0)
"""


def speed_band_reference(ep: dict[str, np.ndarray], psi: np.ndarray) -> np.ndarray:
    return -np.maximum(np.abs(ep[SPEED] - psi[0]) - psi[1], 0.0)


@dataclass(frozen=True)
class Case:
    """A family's minimal spec (without ``family``) and its numpy reference reward."""

    body: dict[str, Any]
    reference: Any


CASES = {
    "linear": Case(
        {"features": [SPEED, OBS], "prior": {"uniform": {"low": [-1.0] * 4, "high": [1.0] * 4}}},
        ref.linear_reward([SPEED, OBS]),
    ),
    "target": Case(
        {
            "feature": OBS,
            "dims": [0, 2],
            "ctrl_cost": 0.1,
            "prior": {"uniform": {"low": [-1.0, -1.0], "high": [1.0, 1.0]}},
        },
        ref.target_reward(OBS, [0, 2], 0.1),
    ),
    "goal": Case(
        {
            "field": OBS,
            "dims": [0, 1],
            "margin": "sampled",
            "prior": {"uniform": {"low": [-1.0, -1.0, 0.1], "high": [1.0, 1.0, 1.0]}},
        },
        ref.goal_reward(OBS, [0, 1], "sampled"),
    ),
    "discrete": Case(
        {
            "tasks": {
                "slow": {"field": SPEED, "below": 0.0},
                "level": {"field": OBS, "column": 2, "above": -0.5, "below": 0.5, "reward": 0.5},
            }
        },
        ref.discrete_reward([ref.Pred(SPEED, below=0.0), ref.Pred(OBS, 2, -0.5, 0.5, 0.5)]),
    ),
    "custom": Case(
        {
            "function": f"{CUSTOM_MODULE}:speed_band",
            "fields": [SPEED],
            "prior": {"uniform": {"low": [-1.0, 0.1], "high": [1.0, 1.0]}},
        },
        speed_band_reference,
    ),
}
REGISTERED = FAMILIES.names()


@pytest.fixture(autouse=True)
def custom_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The custom case's reward module, importable for every test."""
    (tmp_path / f"{CUSTOM_MODULE}.py").write_text(CUSTOM_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, CUSTOM_MODULE, raising=False)
    yield
    sys.modules.pop(CUSTOM_MODULE, None)


def spec_of(family: str, **extra: Any) -> TaskSpec:
    body = {"family": family, **CASES[family].body, **extra}
    return parse_task_spec(yaml.safe_dump(body, sort_keys=False), origin=f"<{family}>")


def random_fields(rows: int, seed: int) -> dict[str, torch.Tensor]:
    rng = np.random.default_rng(seed)
    return {
        SPEED: torch.from_numpy(rng.normal(size=rows)),
        OBS: torch.from_numpy(rng.normal(size=(rows, 3))),
        ACT: torch.from_numpy(rng.uniform(-1, 1, size=(rows, 2))),
    }


def reference_rewards(family: str, fields: dict[str, torch.Tensor], tasks: np.ndarray):
    """[C, K] from the numpy reference, one task at a time."""
    ep = {name: value.numpy() for name, value in fields.items()}
    reward = CASES[family].reference
    return np.stack([reward(ep, psi) for psi in tasks.astype(np.float64)], axis=1)


# ------------------------------------------------------------------ the registry
def test_every_registered_family_has_a_case() -> None:
    assert set(REGISTERED) == set(CASES)
    assert REGISTERED[:5] == ("linear", "target", "goal", "discrete", "custom")


def test_registering_a_name_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="already registered"):
        FAMILIES.add("linear", keys={"features"})(lambda body: body)


def test_unknown_family_lists_the_registered_names() -> None:
    with pytest.raises(InputError) as err:
        parse_task_spec("family: nope\nprior: {uniform: {low: [0.0], high: [1.0]}}\n", "s.yaml")
    assert str(err.value) == f"s.yaml: family: unknown family 'nope' (use {', '.join(REGISTERED)})"


@pytest.mark.parametrize("family", REGISTERED)
def test_family_parses_its_minimal_spec(family: str) -> None:
    spec = spec_of(family)
    assert spec.family.name == family
    assert spec.base_family is spec.family
    assert FAMILIES[family].parse(spec_body(family)) == spec.family


def spec_body(family: str) -> dict[str, Any]:
    return {"family": family, **CASES[family].body}


@pytest.mark.parametrize("family", REGISTERED)
def test_family_rejects_an_unknown_key_and_lists_its_keys(family: str) -> None:
    entry = FAMILIES[family]
    with pytest.raises(InputError) as err:
        spec_of(family, bogus=1)
    allowed = ", ".join(sorted(COMMON_KEYS | entry.keys | entry.optional))
    assert str(err.value) == (
        f"<{family}>: unknown key 'bogus' for family {family} (allowed: {allowed})"
    )


@pytest.mark.parametrize("family", REGISTERED)
def test_family_names_each_missing_key(family: str) -> None:
    for key in sorted(FAMILIES[family].keys):
        body = {k: v for k, v in spec_body(family).items() if k != key}
        with pytest.raises(InputError) as err:
            parse_task_spec(yaml.safe_dump(body, sort_keys=False), origin="m.yaml")
        assert str(err.value) == f"m.yaml: missing key {key!r} for family {family}"


@pytest.mark.parametrize("family", REGISTERED)
def test_family_reward_matches_the_numpy_reference(family: str) -> None:
    spec = spec_of(family)
    dim = spec.task_dim(STORE_FIELDS)
    tasks, _ = spec.draw_candidates(seed=3)
    assert tasks.shape[1] == dim
    fields = random_fields(37, seed=5)
    rewards = spec.family.reward(fields, torch.from_numpy(tasks.astype(np.float64)))
    assert tuple(rewards.shape) == (37, len(tasks))
    assert rewards.dtype == torch.float64
    expected = reference_rewards(family, fields, tasks)
    np.testing.assert_allclose(rewards.numpy(), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("family", REGISTERED)
def test_bias_keeps_the_family_and_adds_its_value_in_the_box(family: str) -> None:
    plain = spec_of(family)
    dim = plain.prior.dim
    low = [0.0] * dim
    biased = spec_of(family, bias={"value": 0.25, "low": low})
    assert isinstance(biased.family, BiasedFamily)
    assert biased.family.name == plain.family.name == family
    assert biased.family.fields == plain.family.fields
    assert biased.family.columns(STORE_FIELDS) == plain.family.columns(STORE_FIELDS)
    assert biased.base_family == plain.family
    assert (biased.is_discrete, biased.task_names) == (plain.is_discrete, plain.task_names)
    assert biased.direction == plain.direction
    tasks = torch.from_numpy(plain.draw_candidates(seed=1)[0].astype(np.float64))
    fields = random_fields(11, seed=2)
    shift = 0.25 * (tasks >= 0).all(dim=1).to(torch.float64)
    expected = plain.family.reward(fields, tasks) + shift[None, :]
    torch.testing.assert_close(biased.family.reward(fields, tasks), expected, rtol=0, atol=0)


# ------------------------------------------------------------------ what a spec answers
def test_discrete_spec_answers_with_its_task_names() -> None:
    desk = load_task_spec("desk-discrete")
    assert desk.is_discrete and desk.task_names is not None and len(desk.task_names) == 9
    assert desk.base_family.name == "discrete" and desk.direction is None
    discrete = spec_of("discrete")
    assert discrete.is_discrete and discrete.task_names == ("slow", "level")


@pytest.mark.parametrize(
    "name", ["cheetah-velocity", "quadruped-linear", "synthetic-goal", "synthetic-linear"]
)
def test_task_vector_specs_have_no_task_names(name: str) -> None:
    spec = load_task_spec(name)
    assert not spec.is_discrete and spec.task_names is None


def test_direction_is_the_velocity_weights_of_a_linear_task() -> None:
    assert load_task_spec("quadruped-linear").direction == (0, 1)
    for name in ("cheetah-velocity", "synthetic-linear", "synthetic-goal", "desk-discrete"):
        assert load_task_spec(name).direction is None, name
    swapped = parse_task_spec(
        "family: linear\nfeatures: [steps/infos/height, steps/infos/velocity_y, "
        "steps/infos/velocity_x]\nprior: {uniform: {low: [0, 0, 0], high: [1, 1, 1]}}\n"
    )
    assert swapped.direction == (2, 1)
    only_x = parse_task_spec(
        "family: linear\nfeatures: [steps/infos/velocity_x]\n"
        "prior: {uniform: {low: [0], high: [1]}}\n"
    )
    assert only_x.direction is None


@pytest.mark.parametrize("env", env_names())
def test_direction_agrees_with_the_environment_task_frame(env: str) -> None:
    """An environment's task frame and its task spec name the same direction entries."""
    entry = env_entry(env)
    frame = entry.task_frame
    expected = None if frame is None else tuple(frame.direction)
    assert load_task_spec(entry.task_spec).direction == expected


# ------------------------------------------------------------------ discounting, at: final
@pytest.mark.parametrize("at", ["all", "final"])
@pytest.mark.parametrize("gamma", [1.0, 0.9, 0.5])
def test_discounted_return_equals_a_numpy_loop(gamma: float, at: str) -> None:
    spec = spec_of("target", gamma=gamma, at=at)
    assert spec.weights_every_step == (gamma == 1.0 and at == "all")
    rng = np.random.default_rng(4)
    for length in (1, 2, 7, 300):
        rewards = rng.normal(size=length)
        expected = 0.0
        for t in range(length):
            if at == "all" or t == length - 1:
                expected += gamma**t * rewards[t]
        assert spec.discounted_return(rewards) == pytest.approx(expected, rel=1e-12, abs=1e-12)
        weights = ref.step_weights(length, gamma, at)
        assert spec.discounted_return(rewards) == pytest.approx(
            float(np.sum(weights * rewards)), rel=1e-12, abs=1e-12
        )


@pytest.mark.parametrize("at", ["all", "final"])
@pytest.mark.parametrize("gamma", [1.0, 0.97])
def test_step_weights_of_a_chunk_of_several_episodes(gamma: float, at: str) -> None:
    """rewarded_steps and discounts over rows that cross episodes give the reference's
    weights, and plain sums give exactly the rewards' sum."""
    spec = spec_of("target", gamma=gamma, at=at)
    lengths = [1, 4, 1, 9, 3]
    offset = torch.cat([torch.arange(n) for n in lengths])
    length = torch.cat([torch.full((n,), n) for n in lengths])
    weights = torch.ones(len(offset), dtype=torch.float64)
    keep = spec.rewarded_steps(offset, length)
    if keep is not None:
        weights = weights * keep
    discounts = spec.discounts(offset)
    assert (discounts is None) == (gamma == 1.0)
    if discounts is not None:
        assert discounts.dtype == torch.float64
        weights = weights * discounts
    expected = np.concatenate([ref.step_weights(n, gamma, at) for n in lengths])
    np.testing.assert_allclose(weights.numpy(), expected, rtol=1e-15, atol=0)
    if spec.weights_every_step:
        assert keep is None and discounts is None


def test_plain_sum_and_final_step_are_exact() -> None:
    rewards = np.random.default_rng(0).normal(size=1001)
    assert spec_of("target").discounted_return(rewards) == float(rewards.sum())
    assert spec_of("target", at="final").discounted_return(rewards) == float(rewards[-1])


# ------------------------------------------------------------------ label attributes
def test_label_attrs_round_trip_the_spec() -> None:
    desk = load_task_spec("desk-discrete")
    attrs = task_attrs(desk)
    assert labels_are_discrete(attrs)
    assert tuple(label_task_names(attrs)) == desk.task_names
    cheetah = task_attrs(load_task_spec("cheetah-velocity"))
    assert not labels_are_discrete(cheetah) and label_task_names(cheetah) == []
    assert cheetah == {"family": "target", "task_names": "[]"}


@pytest.mark.parametrize(
    ("attrs", "names"),
    [
        ({}, []),
        ({"task_names": ""}, []),
        ({"task_names": json.dumps(["a", "b"])}, ["a", "b"]),
        ({"task_names": np.array(["a", "b"])}, ["a", "b"]),
    ],
)
def test_label_task_names_reads_the_attribute(attrs: dict[str, Any], names: list[str]) -> None:
    assert label_task_names(attrs) == names
    assert not labels_are_discrete(attrs)


@pytest.mark.parametrize("raw", ["[not json", "{}", "3", "[" * 100_000])
def test_label_task_names_refuses_a_damaged_attribute(raw: str) -> None:
    with pytest.raises(InputError, match="^task_names: "):
        label_task_names({"task_names": raw})
