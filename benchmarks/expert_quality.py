"""Quality and speed of the MPPI experts against a uniformly random policy.

Cheetah: mean |v - psi| over each episode's second half for psi on a grid over
[0.5, 3] m/s (goal: <= 0.1 m/s). Quadruped: on walking tasks, the velocity along
the commanded direction and the uprightness over the second half (goal: >= 1.5 m/s
at upright >= 0.9); on every task, the mean task reward per step. Prints markdown
tables and the experts' control steps per second (wall clock and per CPU-second).

    python benchmarks/expert_quality.py                # about 10 min on 2 loaded cores
    python benchmarks/expert_quality.py --quick        # shorter episodes, fewer tasks
    python benchmarks/expert_quality.py --env quadruped --expert samples=32   # a cheaper planner
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from hipi_offline.collect.run import expert_options
from hipi_offline.envs import env_task_spec, make_env, transition_rewards
from hipi_offline.experts import make_expert

QUADRUPED_TASKS = {
    "walk forward (+x)": [1.0, 0.0, 0.0, 0.0, 0.0],
    "walk left (+y)": [0.0, 1.0, 0.0, 0.0, 0.0],
    "walk back-right": [-0.6, -0.8, 0.0, 0.0, 0.0],
    "walk +x, upright, cheap": [1.0, 0.0, 0.0, 0.5, 0.5],
    "stand tall": [0.0, 0.0, 1.0, 1.0, 0.0],
    "stay still cheaply": [0.0, 0.0, 0.0, 0.0, 1.0],
}


@dataclass
class Episode:
    fields: dict[str, np.ndarray]
    rewards: np.ndarray
    wall: float
    cpu: float


def run_episode(
    env_name: str,
    task: np.ndarray,
    steps: int,
    seed: int,
    policy: str,
    options: dict[str, Any] | None = None,
) -> Episode:
    """One episode of the expert (``policy="mppi"``) or of uniform random actions."""
    env = make_env(env_name)
    spec = env_task_spec(env)
    obs = env.reset(seed)
    rng = np.random.default_rng(seed)
    expert = make_expert(env_name, **(options or {})) if policy == "mppi" else None
    if expert is not None:
        expert.reset(env, task, seed)
    observations, actions, rows = [], [], []
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        if expert is None:
            action = rng.uniform(env.info.action_low, env.info.action_high).astype(np.float32)
        else:
            action = expert.act(env, obs)
        observations.append(obs)
        actions.append(action)
        result = env.step(action)
        rows.append(result.fields)
        obs = result.observation
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    fields = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
    rewards = transition_rewards(
        spec, np.stack(observations), np.stack(actions), fields, task[None]
    )
    env.close()
    return Episode(fields, rewards[:, 0], wall, cpu)


def cheetah_table(
    targets: list[float], steps: int, seed: int, options: dict[str, Any] | None = None
) -> list[str]:
    lines = [
        "| psi (m/s) | MPPI mean abs(v - psi) | random mean abs(v - psi) | MPPI reward/step "
        "| random reward/step |",
        "|---|---|---|---|---|",
    ]
    expert_errors, speeds = [], []
    for psi in targets:
        task = np.array([psi])
        row = []
        for policy in ("mppi", "random"):
            ep = run_episode("cheetah", task, steps, seed, policy, options)
            err = float(np.abs(ep.fields["infos/speed"][steps // 2 :] - psi).mean())
            row.append((err, float(ep.rewards.mean())))
            if policy == "mppi":
                expert_errors.append(err)
                speeds.append((steps / ep.wall, steps / ep.cpu))
        (e_err, e_rew), (r_err, r_rew) = row
        lines.append(f"| {psi:.2f} | {e_err:.3f} | {r_err:.3f} | {e_rew:.3f} | {r_rew:.3f} |")
    wall, cpu = np.mean(speeds, axis=0)
    lines.append(
        f"\ncheetah: {steps} steps/episode, MPPI worst error {max(expert_errors):.3f} m/s; "
        f"expert speed {wall:.1f} steps/s wall, {cpu:.1f} steps per CPU-second"
    )
    return lines


def quadruped_table(
    tasks: dict[str, list[float]], steps: int, seed: int, options: dict[str, Any] | None = None
) -> list[str]:
    lines = [
        "| task (weights vx, vy, height, upright, -mean a^2) | MPPI speed along dir (m/s) "
        "| MPPI upright | random speed along dir | MPPI reward/step | random reward/step |",
        "|---|---|---|---|---|---|",
    ]
    speeds = []
    for name, weights in tasks.items():
        task = np.array(weights)
        direction = task[:2] / np.linalg.norm(task[:2]) if np.any(task[:2]) else None
        cells = []
        for policy in ("mppi", "random"):
            ep = run_episode("quadruped", task, steps, seed, policy, options)
            half = slice(steps // 2, None)
            vel = np.stack([ep.fields["infos/velocity_x"], ep.fields["infos/velocity_y"]], 1)
            along = float((vel[half] @ direction).mean()) if direction is not None else None
            cells.append((along, float(ep.fields["infos/upright"][half].mean()), ep.rewards.mean()))
            if policy == "mppi":
                speeds.append((steps / ep.wall, steps / ep.cpu))
        (e_along, e_up, e_rew), (r_along, _, r_rew) = cells
        fmt = lambda x: "-" if x is None else f"{x:.2f}"  # noqa: E731
        lines.append(
            f"| {name} {weights} | {fmt(e_along)} | {e_up:.3f} | {fmt(r_along)} "
            f"| {e_rew:.3f} | {r_rew:.3f} |"
        )
    wall, cpu = np.mean(speeds, axis=0)
    lines.append(
        f"\nquadruped: {steps} steps/episode; expert speed {wall:.2f} steps/s wall, "
        f"{cpu:.2f} steps per CPU-second"
    )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short episodes, fewer tasks")
    parser.add_argument("--env", choices=["cheetah", "quadruped", "both"], default="both")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--expert", action="append", default=[], help="MPPI option NAME=VALUE (samples=32)"
    )
    args = parser.parse_args()
    if args.env in ("cheetah", "both"):
        targets = [0.5, 1.5, 3.0] if args.quick else [0.5, 1.0, 1.5, 2.0, 2.5, 3.0]
        options = dict(expert_options("cheetah", tuple(args.expert)))
        steps = 150 if args.quick else 300
        print("\n".join(cheetah_table(targets, steps, args.seed, options)), "\n")
    if args.env in ("quadruped", "both"):
        names = list(QUADRUPED_TASKS)[:: 3 if args.quick else 1]
        tasks = {n: QUADRUPED_TASKS[n] for n in names}
        options = dict(expert_options("quadruped", tuple(args.expert)))
        steps = 100 if args.quick else 150
        print("\n".join(quadruped_table(tasks, steps, args.seed, options)))


if __name__ == "__main__":
    main()
