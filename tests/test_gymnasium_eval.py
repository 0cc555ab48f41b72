"""Imported data evaluated in the dataset's own Gymnasium environment (issue 15 item 6).

End to end: a Minari dataset written with Minari's own ``DataCollector`` on
Pendulum-v1 (a scripted controller holding different goal angles), ``import minari``,
``relabel`` with a goal spec over observation dimensions, ``train-bc`` HIPI and
task-agnostic, then ``evaluate --env dataset`` and ``--env gymnasium:Pendulum-v1``.
Returns are compared in float64 with the family's reward and with a numpy reference
(rtol 1e-12: the same float64 sums, possibly reduced in another order).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cli.main import app
from hipi_offline.bc import BCConfig, train_bc
from hipi_offline.envs import env_entry, make_env, transition_rewards
from hipi_offline.envs.gymnasium_env import GymnasiumEnv, check_gymnasium_id
from hipi_offline.errors import InputError
from hipi_offline.evaluate import EvalConfig, evaluate
from hipi_offline.store import create_store, open_store
from hipi_offline.tasks import load_task_spec

gym = pytest.importorskip("gymnasium")
minari = pytest.importorskip("minari")

STEPS = 40
"""Steps per dataset episode (the collector's time limit)."""
GOAL_SPEC = """\
family: goal
field: steps/observations
dims: [0, 1]
prior: {uniform: {low: [-1.0, -0.35], high: [-0.93, 0.35]}}
candidates: 64
"""
TRAIN = dict(hidden=(32, 32), batch_size=64, warmup_steps=5, log_every=50, steps=300)
TRAIN.update(device="cpu", threads=1, progress=False, checkpoint_every=1000)
TRAIN_ARGS = ["--hidden", "32,32", "--batch-size", "64", "--warmup-steps", "5", "--steps", "300"]
TRAIN_ARGS += ["--device", "cpu", "--threads", "1", "--no-progress", "--checkpoint-every", "1000"]


def write_minari_dataset(root: Path, episodes: int = 40) -> Path:
    """A Minari dataset of Pendulum-v1 episodes, each holding a different angle near
    the bottom (a PD controller with gravity compensation), written by DataCollector."""
    from minari import DataCollector

    env = DataCollector(gym.make("Pendulum-v1", max_episode_steps=STEPS))
    rng = np.random.default_rng(0)
    for episode in range(episodes):
        target = np.pi + rng.uniform(-0.35, 0.35)
        obs, _ = env.reset(seed=episode)
        done = False
        while not done:
            angle = np.arctan2(obs[1], obs[0])
            error = (target - angle + np.pi) % (2 * np.pi) - np.pi
            torque = np.clip(8 * error - 2 * obs[2] + 5 * np.sin(angle), -2, 2)
            obs, _, terminated, truncated, _ = env.step(np.array([torque], np.float32))
            done = terminated or truncated
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # no author, code link, description
        env.create_dataset(dataset_id="test/pendulum-goals-v0", algorithm_name="scripted-pd")
    env.close()
    return root / "test" / "pendulum-goals-v0"


@pytest.fixture(scope="module")
def pendulum(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("gymnasium-eval")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MINARI_DATASETS_PATH", str(tmp / "minari"))
        dataset = write_minari_dataset(tmp / "minari")
    store, spec = tmp / "pendulum.h5", tmp / "goal.yaml"
    spec.write_text(GOAL_SPEC)
    hipi, agnostic = tmp / "hipi", tmp / "agnostic"
    for args in (
        ["import", "minari", dataset, store],
        ["relabel", store, "--tasks", spec, "--device", "cpu", "--no-progress"],
        ["train-bc", store, "--out", hipi, "--labels", "hipi", *TRAIN_ARGS],
        ["train-bc", store, "--out", agnostic, "--task-agnostic", *TRAIN_ARGS],
    ):
        result = cli(*args)
        assert result.exit_code == 0, (args, result.output)
    return {"tmp": tmp, "store": Path(store), "spec": spec, "hipi": hipi, "agnostic": agnostic}


def cli(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


def one_error_line(result) -> str:
    """The single ``error:`` line of a failed command (exit code 2)."""
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


@pytest.mark.slow
def test_minari_import_relabel_train_evaluate_in_dataset_env(pendulum: dict[str, Path]) -> None:
    tmp = pendulum["tmp"]
    with open_store(pendulum["store"]) as store:
        assert store.attrs["env"] == "Pendulum-v1"
        assert json.loads(store.attrs["env_spec"])["max_episode_steps"] == STEPS
        assert store.attrs["gymnasium_env"] == "Pendulum-v1"
        assert store.attrs["gymnasium_max_episode_steps"] == STEPS
    runs = [pendulum["hipi"], pendulum["agnostic"]]
    out = tmp / "dataset.json"
    rollouts = tmp / "rollouts"
    common = ["--episodes", 6, "--no-progress"]  # --env dataset: the dataset's 40 steps
    result = cli(
        "evaluate", *runs, "--env", "dataset", "--json", out, "--save-rollouts", rollouts, *common
    )
    assert result.exit_code == 0, result.output
    assert "gymnasium:Pendulum-v1: 6 episodes x 40 steps" in result.output
    assert "task-agnostic" in result.output and "hipi" in result.output
    report = json.loads(out.read_text())
    assert report["env"] == "gymnasium:Pendulum-v1"
    hipi, agnostic = report["runs"]
    assert (hipi["method"], agnostic["method"]) == ("hipi", "task-agnostic")
    # the same episodes for both: tasks and initial states
    for a, b in zip(hipi["per_episode"], agnostic["per_episode"], strict=True):
        assert a["task"] == b["task"] and a["env_seed"] == b["env_seed"]
        assert a["steps"] == b["steps"] == STEPS
    returns = np.array([[e["return"] for e in r["per_episode"]] for r in report["runs"]])
    assert np.isfinite(returns).all() and (returns <= 0).all()  # -distance per step
    assert "vs_first" in agnostic

    # each saved episode's return is the family's reward summed (float64), and equals
    # -sum_t ||obs_t[:2] - goal|| computed here with numpy
    spec = load_task_spec(pendulum["spec"])
    for path, entry in zip(sorted(rollouts.iterdir()), report["runs"], strict=True):
        with open_store(path) as saved:
            assert saved.num_episodes == 6 and saved.attrs["env"] == "gymnasium:Pendulum-v1"
            assert saved.lengths.tolist() == [STEPS] * 6
            tasks = saved.read_episode_field("task")
            episodes = [saved.episode(e) for e in range(6)]
        for e, steps in enumerate(episodes):
            obs, actions = steps["steps/observations"], steps["steps/actions"]
            fields = {k[len("steps/") :]: v for k, v in steps.items()}
            assert fields["rewards"].dtype == np.float64  # Pendulum's own reward, kept
            family = transition_rewards(spec, obs, actions, fields, tasks[e : e + 1])
            goal = tasks[e].astype(np.float64)
            reference = -np.sqrt(((obs[:, :2].astype(np.float64) - goal) ** 2).sum(1)).sum()
            reported = entry["per_episode"][e]["return"]
            assert entry["per_episode"][e]["task"] == tasks[e].tolist()
            np.testing.assert_allclose(family.sum(), reported, rtol=1e-12)
            np.testing.assert_allclose(reference, reported, rtol=1e-12)

    # --env gymnasium:ID meets the same episodes and gives the same returns
    named = tmp / "named.json"
    result = cli(
        "evaluate",
        *runs,
        "--env",
        "gymnasium:Pendulum-v1",
        "--steps",
        STEPS,
        "--json",
        named,
        *common,
    )
    assert result.exit_code == 0, result.output
    again = json.loads(named.read_text())
    for a, b in zip(report["runs"], again["runs"], strict=True):
        for x, y in zip(a["per_episode"], b["per_episode"], strict=True):
            assert x["task"] == y["task"] and x["env_seed"] == y["env_seed"]
            np.testing.assert_allclose(x["return"], y["return"], rtol=1e-12)


@pytest.mark.slow
def test_episodes_end_at_the_environments_time_limit(pendulum: dict[str, Path]) -> None:
    """Asking for more steps than Pendulum-v1's registered limit (200): every episode
    ends at the truncation and is scored over its 200 steps only."""
    tmp = pendulum["tmp"]
    config = EvalConfig(
        env="dataset", steps=230, episodes=2, progress=False, save_rollouts=tmp / "long"
    )
    evaluation = evaluate([pendulum["hipi"]], config)
    (result,) = evaluation.results
    assert [o.steps for o in result.outcomes] == [200, 200]
    with open_store(next((tmp / "long").iterdir())) as saved:
        assert saved.ends.tolist() == [200, 400]
        truncated = saved.read_steps("steps/truncations")
    assert truncated.sum() == 2 and truncated[199] and truncated[399]


def test_gymnasium_adapter_reports_minari_fields() -> None:
    env = make_env("gymnasium:MountainCarContinuous-v0")
    info = env.info
    assert (info.name, info.observation_dim, info.action_dim) == (
        "gymnasium:MountainCarContinuous-v0",
        2,
        1,
    )
    assert info.task_spec == "" and info.default_steps == 999
    first = env.reset(5)
    assert np.array_equal(first, env.reset(5))  # deterministic by seed
    obs, steps = first, 0
    while not env.episode_over:  # swing with the velocity: reaches the flag
        step = env.step(np.array([1.0 if obs[1] >= 0 else -1.0], np.float32))
        obs, steps = step.observation, steps + 1
        assert set(step.fields) == {"rewards", "terminations", "truncations"}
        assert step.fields["rewards"].dtype == np.float64
    assert bool(step.fields["terminations"]) and steps < 999 and obs[0] >= 0.45
    with pytest.raises(RuntimeError, match="reset first"):
        env.step(np.zeros(1, np.float32))
    env.close()


def test_gymnasium_ids_checked() -> None:
    with pytest.raises(InputError, match="ENV: unknown Gymnasium environment 'NoSuchEnv-v0'"):
        env_entry("gymnasium:NoSuchEnv-v0")
    with pytest.raises(InputError, match="not a Gymnasium environment id"):
        env_entry("gymnasium:")
    with pytest.raises(InputError, match="not a Gymnasium environment id"):
        check_gymnasium_id("bad id!", "--env dataset", trusted=False)
    with pytest.raises(InputError, match="x" * 10):
        check_gymnasium_id("x" * 201, "ENV", trusted=True)
    # an id that names a module to import: refused when it comes from a store
    with pytest.raises(InputError, match="never imported"):
        check_gymnasium_id("os:Pendulum-v1", "--env dataset", trusted=False)
    assert check_gymnasium_id("Pendulum-v1", "ENV", trusted=False) == "Pendulum-v1"
    with pytest.raises(InputError, match="Discrete action space"):
        GymnasiumEnv("CartPole-v1")


def tiny_run(tmp: Path, name: str, env: str, obs_dim: int = 3, **metadata: str) -> Path:
    """A task-agnostic run trained a few steps on random data recorded as ``env``."""
    rng = np.random.default_rng(0)
    path = tmp / f"{name}.h5"
    with create_store(path, env=env, metadata=metadata) as store:
        store.append_episodes(
            {
                "observations": rng.normal(size=(40, obs_dim)).astype(np.float32),
                "actions": rng.uniform(-2, 2, size=(40, 1)).astype(np.float32),
            },
            [20, 20],
        )
    out = tmp / name
    train_bc(path, BCConfig(out=out, task_agnostic=True, **{**TRAIN, "steps": 5}))
    return out


def test_bad_environments_are_one_error_line(tmp_path: Path) -> None:
    spec = tmp_path / "goal.yaml"
    spec.write_text(GOAL_SPEC)
    common = ["--steps", 3, "--episodes", 1, "--no-progress", "--task-spec", spec]
    run = tiny_run(tmp_path, "pendulum", "Pendulum-v1")
    line = one_error_line(cli("evaluate", run, "--env", "gymnasium:NoSuchEnv-v0", *common))
    assert "unknown Gymnasium environment 'NoSuchEnv-v0'" in line
    # observation shapes that do not match the run
    line = one_error_line(
        cli("evaluate", run, "--env", "gymnasium:MountainCarContinuous-v0", *common)
    )
    assert "policy observations have shape (3,)" in line and "gives 2" in line
    # a dataset without a recorded environment
    unknown = tiny_run(tmp_path, "unknown", "")
    line = one_error_line(cli("evaluate", unknown, "--env", "dataset", *common))
    assert "does not record its dataset's environment" in line
    # a Minari import without env_spec: its env is the dataset id, gymnasium_env is ""
    no_spec = tiny_run(tmp_path, "no-spec", "test/pendulum-v0", gymnasium_env="")
    line = one_error_line(cli("evaluate", no_spec, "--env", "dataset", *common))
    assert "does not record its dataset's environment (a Minari dataset's env_spec)" in line
    # a store whose environment is not a Gymnasium id, or names a module to import
    for env, reason in (
        ("d4rl/hopper-expert-v2", "unknown Gymnasium"),
        ("os:Pendulum-v1", "never imported"),
    ):
        crafted = tiny_run(tmp_path, env.replace("/", "-").replace(":", "-"), env)
        line = one_error_line(cli("evaluate", crafted, "--env", "dataset", *common))
        assert "--env dataset" in line and reason in line
    # ... also without --env, when the store names a Gymnasium environment
    crafted = tiny_run(tmp_path, "prefixed", "gymnasium:os:Pendulum-v1")
    line = one_error_line(cli("evaluate", crafted, *common))
    assert "--env: " in line and "store records environment" in line and "never imported" in line
    # no task spec anywhere: a task-agnostic run in a Gymnasium environment
    line = one_error_line(cli("evaluate", run, "--env", "dataset", "--steps", 3, "--no-progress"))
    assert "pass --task-spec" in line


def test_task_spec_reading_a_field_the_env_lacks(tmp_path: Path) -> None:
    spec = tmp_path / "speed.yaml"
    spec.write_text(
        "family: target\nfeature: steps/infos/speed\nprior: {uniform: {low: [0], high: [1]}}\n"
        "candidates: 4\n"
    )
    run = tiny_run(tmp_path, "pendulum", "Pendulum-v1")
    args = ["--env", "dataset", "--task-spec", spec, "--steps", 3, "--episodes", 1, "--no-progress"]
    line = one_error_line(cli("evaluate", run, *args))
    assert "steps/infos/speed is not reported by gymnasium:Pendulum-v1" in line
    # a goal over a dimension the observation does not have
    spec.write_text(GOAL_SPEC.replace("dims: [0, 1]", "dims: [0, 3]"))
    line = one_error_line(cli("evaluate", run, *args))
    assert "index 3 out of range" in line


def test_custom_spec_from_a_run_is_not_loaded() -> None:
    from hipi_offline.bc.description import LabelsInfo
    from hipi_offline.evaluate.tasks import evaluation_spec

    text = "family: custom\nfunction: os:getcwd\nfields: [steps/observations]\n"
    text += "prior: {uniform: {low: [0], high: [1]}}\ncandidates: 2\n"
    labels = [("run-a", LabelsInfo(name="hipi", spec=text, spec_origin="mine.yaml"))]
    with pytest.raises(InputError, match="run-a: labels' task spec.*never loaded from a run"):
        evaluation_spec(None, "", labels)
    other = LabelsInfo(name="hipi", spec=GOAL_SPEC, spec_origin="goal.yaml")
    with pytest.raises(InputError, match="different task specs"):
        evaluation_spec(None, "", [*labels, ("run-b", other)])
    assert evaluation_spec(None, "", [("run-b", other), ("run-c", None)]).family.name == "goal"


def test_import_records_only_plain_gymnasium_ids(tmp_path: Path) -> None:
    from hipi_offline.io.minari_import import _gymnasium_env

    def spec(**values: object) -> dict[str, str]:
        return {"env_spec": json.dumps(values)}

    found = _gymnasium_env(spec(id="Pendulum-v1", max_episode_steps=40), tmp_path)
    assert found == {"gymnasium_env": "Pendulum-v1", "gymnasium_max_episode_steps": 40}
    assert _gymnasium_env(spec(id="ns/Name-v2"), tmp_path) == {"gymnasium_env": "ns/Name-v2"}
    for bad in ("os:Pendulum-v1", "a b", "", "x" * 201, 7):
        assert _gymnasium_env(spec(id=bad, max_episode_steps=4), tmp_path) == {"gymnasium_env": ""}
    assert _gymnasium_env({}, tmp_path) == {"gymnasium_env": ""}
    assert _gymnasium_env({"env_spec": "not json"}, tmp_path) == {"gymnasium_env": ""}
    found = _gymnasium_env(spec(id="Pendulum-v1", max_episode_steps=True), tmp_path)
    assert found == {"gymnasium_env": "Pendulum-v1"}
