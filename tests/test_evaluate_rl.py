"""hipi-offline evaluate on train-rl runs: the SAC actor as a policy (its mean and its
seeded draws), the run's environment, episode length and task spec as defaults, side by
side with a BC run cloned from the RL run's replay store, and hostile run folders
refused with one line.

Tolerances: the evaluator batches episodes in groups and the reference runs the actor
on whole episodes, so float32 actions agree to rounding (rtol 1e-5), not bit for bit;
returns are float64 sums of the family's reward and agree with a numpy float64
recomputation from the saved rollouts to rtol 1e-12.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from cli.main import exit_code
from hipi_offline.bc import BCConfig, train_bc
from hipi_offline.bc.policy import LOG_STD_MAX, LOG_STD_MIN, load_policy
from hipi_offline.envs import make_env
from hipi_offline.evaluate import EvalConfig, evaluate
from hipi_offline.evaluate.tasks import EpisodePlan
from hipi_offline.relabel import RelabelConfig, relabel
from hipi_offline.rl import checkpoint as ckpt
from hipi_offline.rl.config import RLConfig
from hipi_offline.rl.policy import RLPolicy
from hipi_offline.rl.sac import SAC, SACConfig
from hipi_offline.rl.train import train_rl
from hipi_offline.store import open_store

pytestmark = pytest.mark.usefixtures("one_torch_thread")
HIDDEN = (16, 16)
EPISODE_STEPS = 20
BC_TRAIN = dict(hidden=(32, 32), batch_size=64, warmup_steps=5, log_every=10, steps=30)
BC_TRAIN.update(device="cpu", threads=1, progress=False, checkpoint_every=1000)
QUICK = EvalConfig(episodes=4, steps=12, progress=False)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny train-rl run on the point mass (two checkpoints) and a BC run trained on
    its replay store relabeled with the run's spec."""
    root = tmp_path_factory.mktemp("rl")
    rl = root / "rl"
    config = RLConfig(
        out=rl,
        steps=100,
        episode_steps=EPISODE_STEPS,
        start_steps=40,
        batch_size=16,
        hidden=HIDDEN,
        threads=1,
        checkpoint_every=60,
        progress=False,
    )
    train_rl("pointmass", config)
    relabel(rl / "replay.h5", RelabelConfig(tasks="pointmass-goal", device="cpu"))
    bc = root / "bc"
    train_bc(rl / "replay.h5", BCConfig(out=bc, labels="hipi", **BC_TRAIN))
    return rl, bc


def restored_sac(checkpoint: Path) -> SAC:
    """The run's SAC restored by train-rl's own checkpoint code (an independent path)."""
    env = make_env("pointmass")
    info = env.info
    sac = SAC(2, 2, 2, info.action_low, info.action_high, SACConfig(hidden=HIDDEN))
    ckpt.restore(checkpoint, sac, torch.Generator())
    return sac


def actor_reference(
    checkpoint: Path, obs: np.ndarray, task: np.ndarray, noise: np.ndarray | None = None
) -> np.ndarray:
    """The actor's action in float64 numpy from the checkpoint's ``sac.actor.*``
    tensors: center + half * tanh(mu) (or tanh(mu + std * noise)) in pointmass's box."""
    tensors = load_file(checkpoint)

    def get(name: str) -> np.ndarray:
        return tensors[f"sac.actor.{name}"].double().numpy()

    x = np.concatenate(
        [
            (obs - get("obs_mean")) / get("obs_std"),
            (task - get("task_mean")) / get("task_std"),
        ],
        axis=1,
    )
    for layer in range(len(HIDDEN)):
        x = np.maximum(x @ get(f"trunk.{2 * layer}.weight").T + get(f"trunk.{2 * layer}.bias"), 0)
    out = x @ get("out.weight").T + get("out.bias")
    mu, raw = out[:, :2], out[:, 2:]
    log_std = LOG_STD_MIN + 0.5 * (LOG_STD_MAX - LOG_STD_MIN) * (np.tanh(raw) + 1.0)
    u = mu if noise is None else mu + np.exp(log_std) * noise
    info = make_env("pointmass").info
    low, high = info.action_low.astype(np.float64), info.action_high.astype(np.float64)
    return 0.5 * (high + low) + 0.5 * (high - low) * np.tanh(u)


def rollouts(path: Path) -> list[dict[str, np.ndarray]]:
    """Each saved episode's observations, actions, positions and task."""
    with open_store(path) as store:
        ends = store.ends
        tasks = store.read_episode_field("task")
        arrays = {
            name: store.read_steps(f"steps/{name}")
            for name in ("observations", "actions", "infos/position")
        }
    starts = np.concatenate([[0], ends[:-1]])
    return [
        {**{k: v[a:b] for k, v in arrays.items()}, "task": tasks[e]}
        for e, (a, b) in enumerate(zip(starts, ends, strict=True))
    ]


def run_cli(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str, str]:
    code = exit_code(["evaluate", "--no-progress", *(str(a) for a in args)])
    out, err = capsys.readouterr()
    return code, out, err


def test_rl_and_bc_side_by_side_through_the_cli(
    runs, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rl, bc = runs
    out, roll = tmp_path / "eval.json", tmp_path / "roll"
    code, text, err = run_cli(
        capsys, rl, bc, "--episodes", 5, "--json", out, "--save-rollouts", roll
    )
    assert code == 0, err
    doc = json.loads(out.read_text())
    # the environment, the episode length and the spec are the RL run's
    assert (doc["env"], doc["steps"], doc["task_spec"]) == (
        "pointmass",
        EPISODE_STEPS,
        "pointmass-goal",
    )
    assert [r["method"] for r in doc["runs"]] == ["rl-hipi", "hipi"]
    assert "rl-hipi" in text and "vs_first" in doc["runs"][1]
    latest_step, latest = ckpt.list_checkpoints(rl)[-1]
    assert doc["runs"][0]["checkpoint_step"] == latest_step
    first, second = (r["per_episode"] for r in doc["runs"])
    # the same episodes: tasks and initial states
    assert [(e["task"], e["env_seed"]) for e in first] == [
        (e["task"], e["env_seed"]) for e in second
    ]
    sac = restored_sac(latest)
    bc_policy = load_policy(bc, device="cpu")
    for index, (entry, policy) in enumerate(zip(doc["runs"], (sac, bc_policy), strict=True)):
        episodes = rollouts(roll / f"{index}-{entry['method']}.h5")
        assert len(episodes) == 5
        for row, episode in zip(entry["per_episode"], episodes, strict=True):
            obs = torch.from_numpy(episode["observations"])
            task = np.asarray(episode["task"], np.float32)
            assert row["task"] == pytest.approx(task.tolist())
            tasks = torch.from_numpy(np.repeat(task[None], len(obs), axis=0))
            if isinstance(policy, SAC):
                actions = policy.act(obs, tasks, deterministic=True).numpy()
                reference = actor_reference(latest, obs.double().numpy(), tasks.double().numpy())
                np.testing.assert_allclose(episode["actions"], reference, rtol=1e-5, atol=1e-7)
            else:
                actions = policy.act(obs.numpy(), tasks.numpy())
            np.testing.assert_allclose(episode["actions"], actions, rtol=1e-5, atol=1e-7)
            goal = episode["task"].astype(np.float64)
            position = episode["infos/position"].astype(np.float64)
            reference = -np.linalg.norm(position - goal, axis=1).sum()
            np.testing.assert_allclose(row["return"], reference, rtol=1e-12)
            assert len(position) == EPISODE_STEPS


def test_checkpoint_files_folders_and_sampled_actions(runs, tmp_path: Path) -> None:
    rl, _ = runs
    (old_step, old), (new_step, new) = ckpt.list_checkpoints(rl)
    by_run = evaluate([rl], QUICK).results[0]
    for given in (new, rl / "checkpoints"):
        same = evaluate([given], QUICK).results[0]
        assert same.step == new_step and same.method == "rl-hipi"
        np.testing.assert_array_equal(same.returns, by_run.returns)
    older = evaluate([old], QUICK).results[0]
    assert older.step == old_step < new_step
    policy = load_policy(rl, device="cpu")
    assert isinstance(policy, RLPolicy) and policy.env == "pointmass"
    assert policy.trained_spec == "pointmass-goal" and policy.step == new_step
    saved = load_policy(policy.save(tmp_path / "actor.safetensors"), device="cpu")
    assert not isinstance(saved, RLPolicy) and saved.run.labels.name == "rl-hipi"
    exported = evaluate([tmp_path / "actor.safetensors"], QUICK).results[0]
    np.testing.assert_array_equal(exported.returns, by_run.returns)

    config = replace(QUICK, sample=True, save_rollouts=tmp_path / "roll")
    sampled = evaluate([rl], config).results[0]
    again = evaluate([rl], replace(config, save_rollouts=None)).results[0]
    np.testing.assert_array_equal(sampled.returns, again.returns)  # seeded
    assert not np.array_equal(sampled.returns, by_run.returns)
    sac = restored_sac(new)
    episodes = rollouts(tmp_path / "roll" / "0-rl-hipi.h5")
    for outcome, episode in zip(sampled.outcomes, episodes, strict=True):
        rng = EpisodePlan(outcome.index, outcome.task, QUICK.seed).noise_rng()
        noise = np.stack([rng.standard_normal(2) for _ in range(len(episode["actions"]))])
        obs = torch.from_numpy(episode["observations"])
        tasks = torch.from_numpy(np.repeat(outcome.task[None], len(obs), axis=0))
        expected, _ = sac.sample(obs, tasks, noise=torch.from_numpy(noise).float())
        reference = actor_reference(new, obs.double().numpy(), tasks.double().numpy(), noise)
        np.testing.assert_allclose(episode["actions"], reference, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(
            episode["actions"], expected.detach().numpy(), rtol=1e-5, atol=1e-7
        )


def test_a_checkpoint_written_after_an_evaluation_is_the_one_evaluated_next(
    runs, tmp_path: Path
) -> None:
    """A run that goes on training between two evaluations in one process: the second
    evaluates the new checkpoint (the rollouts' policy cache follows checkpoints/)."""
    rl, _ = runs
    run = copy_run(rl, tmp_path / "run")
    before = evaluate([run], QUICK).results[0]
    step, latest = ckpt.list_checkpoints(run)[-1]
    tensors = load_file(latest)
    tensors["sac.actor.out.bias"] = tensors["sac.actor.out.bias"] + 0.5
    newer = ckpt.checkpoint_path(run, step + 100)
    save_file(tensors, newer)
    after = evaluate([run], QUICK).results[0]
    alone = evaluate([newer], QUICK).results[0]
    assert after.step == alone.step == step + 100
    np.testing.assert_array_equal(after.returns, alone.returns)
    assert not np.array_equal(after.returns, before.returns)


def edit_config(run: Path, **changes: object) -> None:
    path = run / "config.json"
    data = json.loads(path.read_text())
    data["config"].update(changes)
    path.write_text(json.dumps(data))


def copy_run(rl: Path, dest: Path) -> Path:
    shutil.copytree(rl, dest, symlinks=True, ignore=shutil.ignore_patterns("replay.h5*"))
    return dest


def test_the_runs_spec_is_the_default_and_a_file_spec_is_not_read(
    runs, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rl, bc = runs
    sparse = copy_run(rl, tmp_path / "sparse")
    edit_config(sparse, tasks="pointmass-goal-sparse")
    evaluation = evaluate([sparse, bc], QUICK)
    assert evaluation.header["task_spec"] == "pointmass-goal-sparse"
    for result in evaluation.results:
        assert set(result.returns) <= {float(-s) for s in range(QUICK.steps + 1)}
    dense = evaluate([rl], QUICK).results[0]
    assert not np.array_equal(evaluation.results[0].returns, dense.returns)
    forced = evaluate([sparse], replace(QUICK, task_spec="pointmass-goal")).results[0]
    np.testing.assert_array_equal(forced.returns, dense.returns)
    # two RL runs of different specs: the spec must be given
    code, _, err = run_cli(capsys, rl, sparse, "--episodes", 1)
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: --task-spec:"), err
    # a spec file named by config.json is never opened on the run's word
    secret = tmp_path / "secret.yaml"
    secret.write_text("family: goal\n")
    named = copy_run(rl, tmp_path / "named")
    edit_config(named, tasks=str(secret))
    code, _, err = run_cli(capsys, named, "--episodes", 1)
    assert code == 2 and err.count("\n") == 1 and "--task-spec" in err and "secret.yaml" in err
    code, _, err = run_cli(
        capsys, named, "--episodes", 1, "--steps", 3, "--task-spec", "pointmass-goal"
    )
    assert code == 0, err


def _rewrite_checkpoint(run: Path, change) -> None:
    path = ckpt.list_checkpoints(run)[-1][1]
    tensors = load_file(path)
    change(tensors)
    save_file(tensors, path)


def _hostile(case: str, run: Path, outside: Path) -> None:
    """Damage a copied run folder as ``case`` says."""
    config = run / "config.json"
    latest = ckpt.list_checkpoints(run)[-1][1]
    if case == "not-json":
        config.write_text("{")
    elif case == "not-object":
        config.write_text("[]")
    elif case == "env-number":
        config.write_text(json.dumps({**json.loads(config.read_text()), "env": 7}))
    elif case == "env-unknown":
        config.write_text(json.dumps({**json.loads(config.read_text()), "env": "nowhere"}))
    elif case == "env-gymnasium":
        config.write_text(json.dumps({**json.loads(config.read_text()), "env": "gymnasium:X-v0"}))
    elif case == "config-missing":
        config.write_text(json.dumps({"env": "pointmass"}))
    elif case == "hidden-text":
        edit_config(run, hidden="wide")
    elif case == "hidden-huge":
        edit_config(run, hidden=[2**45, 16])
    elif case == "hidden-other":
        edit_config(run, hidden=[64, 64])
    elif case == "relabel-unknown":
        edit_config(run, relabel="magic")
    elif case == "steps-inf":
        config.write_text(config.read_text().replace('"batch_size": 16', '"batch_size": 1e400'))
    elif case == "unknown-key":
        edit_config(run, bogus=1)
    elif case == "config-huge":
        config.write_text(" " * (2 << 20) + "{}")
    elif case == "config-link":
        shutil.copy(config, outside / "config.json")
        config.unlink()
        config.symlink_to(outside / "config.json")
    elif case == "checkpoints-link":
        shutil.move(run / "checkpoints", outside / "checkpoints")
        (run / "checkpoints").symlink_to(outside / "checkpoints")
    elif case == "checkpoint-link":
        shutil.move(latest, outside / latest.name)
        latest.symlink_to(outside / latest.name)
    elif case == "no-checkpoint":
        for _, path in ckpt.list_checkpoints(run):
            path.unlink()
    elif case == "truncated":
        latest.write_bytes(latest.read_bytes()[:100])
    elif case == "shape":
        _rewrite_checkpoint(
            run, lambda t: t.update({"sac.actor.trunk.0.weight": torch.zeros(16, 5)})
        )
    elif case == "dtype":
        _rewrite_checkpoint(
            run, lambda t: t.update({"sac.actor.out.bias": torch.zeros(4, dtype=torch.int32)})
        )
    elif case == "missing":
        _rewrite_checkpoint(run, lambda t: t.pop("sac.actor.out.bias"))
    elif case == "vector":
        _rewrite_checkpoint(run, lambda t: t.update({"sac.actor.obs_mean": torch.zeros(2, 1)}))
    elif case == "extra":
        _rewrite_checkpoint(run, lambda t: t.update({"sac.actor.spare": torch.zeros(3)}))
    else:
        raise AssertionError(case)


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("not-json", "config.json: not JSON"),
        ("not-object", "config.json: expected a JSON object"),
        ("env-number", "config.json: field env must name"),
        ("env-unknown", "config.json: field env: unknown environment 'nowhere'"),
        ("env-gymnasium", "config.json: field env must name"),
        ("config-missing", "config.json: field config must be an object"),
        ("hidden-text", "config.json: field config.hidden: expected 1 to"),
        ("hidden-huge", "config.json: run description field network.hidden"),
        ("hidden-other", "the checkpoint holds"),
        ("relabel-unknown", "config.json: field config.relabel: expected one of"),
        ("steps-inf", "config.json: field config.batch_size: must be a positive integer"),
        ("unknown-key", "config.json: config: unknown key bogus"),
        ("config-huge", "config.json: larger than"),
        ("config-link", "config.json: is a symbolic link"),
        ("checkpoints-link", "checkpoints: is a symbolic link"),
        ("checkpoint-link", ".safetensors: is a symbolic link"),
        ("no-checkpoint", "no checkpoints"),
        ("truncated", ".safetensors: not a readable train-rl checkpoint"),
        ("shape", "checkpoint tensor sac.actor.trunk.0.weight is torch.float32 [16, 5]"),
        ("dtype", "checkpoint tensor sac.actor.out.bias is torch.int32"),
        ("missing", "checkpoint lacks tensor sac.actor.out.bias"),
        ("vector", "checkpoint tensor sac.actor.obs_mean must be a non-empty vector"),
        ("extra", "unexpected tensor sac.actor.spare"),
    ],
)
def test_hostile_run_folders_are_one_line_exit_2(
    runs, tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str, message: str
) -> None:
    rl, bc = runs
    run = copy_run(rl, tmp_path / "run")
    outside = tmp_path / "outside"
    outside.mkdir()
    _hostile(case, run, outside)
    before = sorted((p, p.stat().st_mtime_ns) for p in tmp_path.rglob("*") if not p.is_symlink())
    out = tmp_path / "eval.json"
    code, text, err = run_cli(capsys, bc, run, "--episodes", 1, "--steps", 2, "--json", out)
    assert code == 2, err
    assert text == "" and err.count("\n") == 1 and err.startswith("error: "), err
    assert message in err, err
    assert not out.exists()
    after = sorted((p, p.stat().st_mtime_ns) for p in tmp_path.rglob("*") if not p.is_symlink())
    assert after == before


def test_lone_checkpoints_huge_episodes_and_other_environments_are_refused(
    runs, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rl, _ = runs
    lone = tmp_path / "lone.safetensors"
    shutil.copy(ckpt.list_checkpoints(rl)[-1][1], lone)
    code, _, err = run_cli(capsys, lone, "--episodes", 1)
    assert code == 2 and err.count("\n") == 1, err
    assert f"error: {lone}: a train-rl checkpoint outside its run folder" in err
    huge = copy_run(rl, tmp_path / "huge")
    edit_config(huge, episode_steps=2**62)
    code, _, err = run_cli(capsys, huge, "--episodes", 1)
    assert code == 2 and err.count("\n") == 1, err
    assert "config.json: field config.episode_steps: 4611686018427387904 is more" in err
    code, _, err = run_cli(capsys, huge, "--episodes", 1, "--steps", 2)
    assert code == 0, err  # the user's --steps needs nothing from the run
    code, _, err = run_cli(capsys, rl, "--env", "cheetah", "--episodes", 1)
    assert code == 2 and err.count("\n") == 1, err
    assert "policy observations have shape (2,), cheetah gives 17" in err


@pytest.mark.slow
def test_worker_processes_load_the_rl_run_too(runs) -> None:
    rl, bc = runs
    one = evaluate([rl, bc], replace(QUICK, group_size=2))
    two = evaluate([rl, bc], replace(QUICK, group_size=2, workers=2))
    for a, b in zip(one.results, two.results, strict=True):
        assert a.method == b.method
        np.testing.assert_array_equal(a.returns, b.returns)
