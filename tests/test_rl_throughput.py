"""benchmarks/rl_throughput.py: its bare SAC loop is a correct SAC (three updates equal
``hipi_offline.rl.sac.SAC``'s on the same batches, weights and noise; its critic target
equals a float64 numpy recomputation), its ring buffer keeps the newest transitions,
and tiny runs go end to end (the SB3 row skipped with one line when SB3 is missing).

Float64 networks are compared with rtol 1e-12 (the same math, possibly another order of
floating-point operations); the numpy target uses log(1 - tanh(u)^2) directly where
torch uses the stable softplus form, hence rtol 1e-10 there. No timed assertions."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from hipi_offline.bc.policy import LOG_STD_MAX, LOG_STD_MIN
from hipi_offline.rl.batch import Batch
from hipi_offline.rl.sac import SAC, SACConfig

REPO = Path(__file__).resolve().parents[1]
F64 = torch.float64
LOW, HIGH = np.array([-0.1, -0.2]), np.array([0.1, 0.3])

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _bench() -> Any:
    path = REPO / "benchmarks" / "rl_throughput.py"
    spec = importlib.util.spec_from_file_location("rl_throughput", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


bench = _bench()


def _copy_network(net: torch.nn.Module, mlp: torch.nn.Sequential) -> None:
    """BCNetwork (trunk + out) weights into the bare loop's Sequential."""
    with torch.no_grad():
        layers = [*net.trunk, net.out]
        for mine, theirs in zip(mlp, layers, strict=True):
            for p, q in zip(mine.parameters(), theirs.parameters(), strict=True):
                p.copy_(q)


def _pair(hidden: tuple[int, ...] = (32, 32)) -> tuple[SAC, Any]:
    """A float64 SAC and a bare learner with its weights, temperature and noise stream."""
    setting = bench.Setting(hidden=hidden, seed=3, init_alpha=0.7, lr=1e-3, tau=0.05)
    sac = SAC(
        2,
        2,
        2,
        LOW,
        HIGH,
        SACConfig(
            hidden=hidden,
            actor_lr=1e-3,
            critic_lr=1e-3,
            alpha_lr=1e-3,
            init_alpha=0.7,
            tau=0.05,
        ),
        seed=3,
        dtype=F64,
    )
    bare = bench.BareSAC(2, 2, 2, LOW, HIGH, setting, dtype=F64)
    _copy_network(sac.actor, bare.actor)
    for k in range(2):
        _copy_network(sac.critics[k], bare.critics[k])
        _copy_network(sac.targets[k], bare.targets[k])
    with torch.no_grad():
        bare.log_alpha.copy_(sac.log_alpha)
    bare.generator.set_state(sac.generator.get_state())
    return sac, bare


def _batch(size: int, seed: int) -> Batch:
    g = torch.Generator().manual_seed(seed)
    low, high = torch.tensor(LOW), torch.tensor(HIGH)
    return Batch(
        obs=torch.rand(size, 2, generator=g, dtype=F64) * 2 - 1,
        actions=low + (high - low) * torch.rand(size, 2, generator=g, dtype=F64),
        rewards=-torch.rand(size, generator=g, dtype=F64),
        next_obs=torch.rand(size, 2, generator=g, dtype=F64) * 2 - 1,
        discounts=(torch.rand(size, generator=g) > 0.3).to(F64),
        tasks=torch.rand(size, 2, generator=g, dtype=F64) * 2 - 1,
        fields={},
    )


def test_bare_updates_equal_the_sac_updates() -> None:
    sac, bare = _pair()
    for step in range(3):
        batch = _batch(24, step)
        want = sac.update(batch)
        got = bare.update(
            batch.obs, batch.actions, batch.rewards, batch.next_obs, batch.discounts, batch.tasks
        )
        for key in ("critic_loss", "actor_loss", "alpha_loss"):
            torch.testing.assert_close(got[key], want[key], rtol=1e-12, atol=1e-12)
    # every weight after three Adam steps and Polyak steps, and the temperature
    pairs = [(sac.actor, bare.actor)]
    pairs += [(sac.critics[k], bare.critics[k]) for k in range(2)]
    pairs += [(sac.targets[k], bare.targets[k]) for k in range(2)]
    for net, mlp in pairs:
        theirs = [*net.trunk.parameters(), *net.out.parameters()]
        for p, q in zip(mlp.parameters(), theirs, strict=True):
            torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(bare.log_alpha, sac.log_alpha, rtol=1e-12, atol=1e-12)
    assert float(sac.log_alpha.detach()) != math.log(0.7)  # the temperature did move


def _forward(mlp: torch.nn.Sequential, x: np.ndarray) -> np.ndarray:
    linears = [m for m in mlp if isinstance(m, torch.nn.Linear)]
    for n, layer in enumerate(linears):
        x = x @ layer.weight.detach().numpy().T + layer.bias.detach().numpy()
        if n < len(linears) - 1:
            x = np.maximum(x, 0.0)
    return x


def test_bare_critic_target_equals_a_float64_recomputation() -> None:
    _, bare = _pair((16, 8))
    batch = _batch(10, 7)
    state = bare.generator.get_state()
    target = bare.td_target(batch.rewards, batch.next_obs, batch.discounts, batch.tasks)
    noise = torch.randn(10, 2, generator=torch.Generator().set_state(state), dtype=F64).numpy()
    s2, psi = batch.next_obs.numpy(), batch.tasks.numpy()
    out = _forward(bare.actor, np.concatenate([s2, psi], axis=1))
    mu, raw = out[:, :2], out[:, 2:]
    log_std = LOG_STD_MIN + 0.5 * (LOG_STD_MAX - LOG_STD_MIN) * (np.tanh(raw) + 1.0)
    u = mu + np.exp(log_std) * noise
    center, half = (HIGH + LOW) / 2, (HIGH - LOW) / 2
    action = center + half * np.tanh(u)
    log_pi = (
        -0.5 * noise**2 - log_std - 0.5 * np.log(2 * np.pi) - np.log(1.0 - np.tanh(u) ** 2)
    ).sum(axis=1) - np.log(half).sum()
    x = np.concatenate([s2, (action - center) / half, psi], axis=1)
    q = np.minimum(*(_forward(t, x)[:, 0] for t in bare.targets))
    alpha = math.exp(float(bare.log_alpha.detach()))
    want = batch.rewards.numpy() + 0.99 * batch.discounts.numpy() * (q - alpha * log_pi)
    np.testing.assert_allclose(target.numpy(), want, rtol=1e-10, atol=1e-12)


def test_ring_keeps_the_newest_transitions_and_samples_stored_rows() -> None:
    ring = bench.Ring(5, 2, 2, 2)
    for i in range(8):
        v = float(i)
        ring.add([v, v], [v, -v], v, [v + 1, v], 1.0, [v, 2 * v])
    assert ring.size == 5
    assert sorted(ring.arrays[2].tolist()) == [3.0, 4.0, 5.0, 6.0, 7.0]
    obs, act, rew, nxt, disc, task = ring.sample(64, torch.Generator().manual_seed(0))
    assert set(rew.tolist()) <= {3.0, 4.0, 5.0, 6.0, 7.0}
    torch.testing.assert_close(obs[:, 0], rew, rtol=0, atol=0)
    torch.testing.assert_close(act[:, 1], -rew, rtol=0, atol=0)
    torch.testing.assert_close(nxt[:, 0], rew + 1, rtol=0, atol=0)
    torch.testing.assert_close(task[:, 1], 2 * rew, rtol=0, atol=0)
    assert bool((disc == 1).all())


def test_goal_reward_is_minus_the_distance() -> None:
    position = np.array([0.3, -0.4])
    goal = np.array([-0.1, 0.2], np.float32)
    want = -np.linalg.norm(position - goal.astype(np.float64))
    assert bench.goal_reward(position, goal) == pytest.approx(want, rel=1e-15)


@pytest.mark.slow
def test_tiny_run_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "r.json"
    md = tmp_path / "r.md"
    argv = ["--steps", "100", "--start-steps", "50", "--batch-size", "16", "--hidden", "16"]
    assert bench.main([*argv, "--json", str(out), "--markdown", str(md)]) == 0
    result = json.loads(out.read_text())
    methods = result["methods"]
    sb3 = bench.sb3_version() is not None
    want = {"bare", "train-rl none", "train-rl hipi"} | ({"sb3"} if sb3 else set())
    assert set(methods) == want
    for name in ("bare", "train-rl none", "train-rl hipi"):
        # one update per env step from step 50 (batch 16 stored) to step 100
        assert (methods[name]["env_steps"], methods[name]["updates"]) == (100, 51)
    if sb3:
        assert (methods["sb3"]["env_steps"], methods["sb3"]["updates"]) == (100, 50)
    else:
        assert any(n.startswith("sb3 skipped") for n in result["notes"])
    for m in methods.values():
        assert m["env_steps_per_s"] == pytest.approx(m["env_steps"] / m["seconds"], rel=1e-12)
        assert m["updates_per_s"] == pytest.approx(m["updates"] / m["update_seconds"], rel=1e-12)
        assert m["env_seconds"] + m["update_seconds"] <= m["seconds"] * (1 + 1e-9)
    ratio = {r["ratio"]: r for r in result["ratios"]}
    none, bare = methods["train-rl none"], methods["bare"]
    assert ratio["train-rl none / bare"]["updates_per_s"] == pytest.approx(
        none["updates_per_s"] / bare["updates_per_s"], rel=1e-12
    )
    assert "| train-rl hipi |" in md.read_text()
    assert torch.get_num_threads() == 1  # the fixture's count, restored after the run


def test_missing_sb3_is_one_line_and_no_row(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bench, "sb3_version", lambda: None)
    out = tmp_path / "r.json"
    argv = ["--steps", "60", "--start-steps", "50", "--batch-size", "8", "--hidden", "8"]
    assert bench.main([*argv, "--methods", "bare,sb3", "--json", str(out)]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "sb3 skipped" in ln]
    assert lines[0].startswith("sb3 skipped: stable-baselines3 is not installed")
    assert set(json.loads(out.read_text())["methods"]) == {"bare"}


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["--steps", "0"], "--steps"),
        (["--repeats", "0"], "--repeats"),
        (["--relabel-fraction", "1.5"], "--relabel-fraction"),
        (["--methods", "bare,ppo"], "--methods"),
    ],
)
def test_bad_options_are_one_error_line(
    args: list[str], flag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert bench.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {flag}:")
