"""Quality and speed of the experts against a uniformly random policy.

Cheetah (MPPI): mean |v - psi| over each episode's second half for psi on a grid over
[0.5, 3] m/s (goal: <= 0.1 m/s). Quadruped (the trot gait and MPPI side by side, on
the same tasks and initial states): 8 pure directions (goal: velocity along the
commanded direction >= 1.5 m/s at upright >= 0.95 over the second half), named tasks
and tasks drawn from the prior; for each, the velocity along the command, the
uprightness and the mean task reward per step. Prints markdown tables and the
experts' control steps per second (wall clock and per CPU-second).

    python benchmarks/expert_quality.py                      # both envs, both quadruped experts
    python benchmarks/expert_quality.py --env quadruped --experts trot    # about 1 min
    python benchmarks/expert_quality.py --quick              # shorter episodes, fewer tasks
    python benchmarks/expert_quality.py --gait-table         # re-measure the trot's gait table
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass

import numpy as np

from hipi_offline.collect.run import expert_choice
from hipi_offline.envs import env_task_spec, make_env, transition_rewards
from hipi_offline.envs.base import velocity_along_command
from hipi_offline.experts import make_expert

NAMED_TASKS = {
    "walk +x, upright, cheap": [1.0, 0.0, 0.0, 0.5, 0.5],
    "stand tall": [0.0, 0.0, 1.0, 1.0, 0.0],
    "stay still cheaply": [0.0, 0.0, 0.0, 0.0, 1.0],
}


def quadruped_tasks(prior_tasks: int, seed: int) -> dict[str, list[float]]:
    """8 pure directions, the named tasks and ``prior_tasks`` draws from the prior."""
    tasks = {}
    for k in range(8):
        angle = 2 * math.pi * k / 8
        tasks[f"walk {45 * k} deg"] = [
            round(math.cos(angle), 6),
            round(math.sin(angle), 6),
            0,
            0,
            0,
        ]
    tasks.update(NAMED_TASKS)
    env = make_env("quadruped")
    draws = env_task_spec(env).prior.sample(prior_tasks, np.random.default_rng(seed))
    env.close()
    for i, task in enumerate(draws):
        tasks[f"prior #{i}"] = [round(float(x), 3) for x in task]
    return tasks


@dataclass
class Episode:
    fields: dict[str, np.ndarray]
    rewards: np.ndarray
    along: float | None
    wall: float
    cpu: float


def run_episode(
    env_name: str, task: np.ndarray, steps: int, seed: int, expert: tuple[str, ...] | None
) -> Episode:
    """One episode of an expert (``--expert`` items; None: uniform random actions)."""
    env = make_env(env_name)
    spec = env_task_spec(env)
    obs = env.reset(seed)
    rng = np.random.default_rng(seed)
    actor = None
    if expert is not None:
        name, options = expert_choice(env_name, expert)
        actor = make_expert(env_name, name, **dict(options))
        actor.reset(env, task, seed)
    observations, actions, rows = [], [], []
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        if actor is None:
            action = rng.uniform(env.info.action_low, env.info.action_high).astype(np.float32)
        else:
            action = actor.act(env, obs)
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
    half = {k: v[steps // 2 :] for k, v in fields.items()}
    along = velocity_along_command(env, half, task)
    env.close()
    return Episode(fields, rewards[:, 0], None if along is None else float(along.mean()), wall, cpu)


def cheetah_table(
    targets: list[float], steps: int, seed: int, expert: tuple[str, ...]
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
        for policy in (expert, None):
            ep = run_episode("cheetah", task, steps, seed, policy)
            err = float(np.abs(ep.fields["infos/speed"][steps // 2 :] - psi).mean())
            row.append((err, float(ep.rewards.mean())))
            if policy is not None:
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
    tasks: dict[str, list[float]], steps: int, seed: int, experts: list[tuple[str, ...]]
) -> list[str]:
    """One row per task: per expert (then random actions) the velocity along the
    command and the upright over the second half, and the reward per step."""
    names = [" ".join(e) for e in experts] + ["random"]
    header = "| task (vx, vy, height, upright, -mean a^2) | " + " | ".join(
        f"{n}: along (m/s) | {n}: upright | {n}: reward/step" for n in names
    )
    lines = [header + " |", "|---" * (1 + 3 * len(names)) + "|"]
    speeds: dict[str, list[tuple[float, float]]] = {n: [] for n in names}
    pure: dict[str, list[tuple[float, float]]] = {n: [] for n in names}
    for i, (label, weights) in enumerate(tasks.items()):
        task = np.array(weights, np.float64)
        cells = []
        for name, expert in zip(names, [*experts, None], strict=True):
            ep = run_episode("quadruped", task, steps, seed + i, expert)
            upright = float(ep.fields["infos/upright"][steps // 2 :].mean())
            along = "-" if ep.along is None else f"{ep.along:.2f}"
            cells.append(f"{along} | {upright:.3f} | {ep.rewards.mean():.3f}")
            speeds[name].append((steps / ep.wall, steps / ep.cpu))
            if label.startswith("walk ") and label.endswith(" deg") and ep.along is not None:
                pure[name].append((ep.along, upright))
        lines.append(f"| {label} {weights} | " + " | ".join(cells) + " |")
    lines.append("")
    for name in names:
        wall, cpu = np.mean(speeds[name], axis=0)
        along, upright = np.min(pure[name], axis=0) if pure[name] else (math.nan, math.nan)
        lines.append(
            f"quadruped {name}: {steps} steps/episode; pure directions: slowest {along:.2f} m/s "
            f"along the command, lowest upright {upright:.3f}; {wall:.1f} steps/s wall, "
            f"{cpu:.1f} steps per CPU-second"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short episodes, fewer tasks")
    parser.add_argument("--env", choices=["cheetah", "quadruped", "both"], default="both")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--experts", default="trot,mppi", help="quadruped experts to compare (names, comma)"
    )
    parser.add_argument(
        "--expert", action="append", default=[], help="option NAME=VALUE for every expert"
    )
    parser.add_argument("--prior-tasks", type=int, default=8, help="quadruped tasks from the prior")
    parser.add_argument(
        "--gait-table", action="store_true", help="print the trot's gait table and stop"
    )
    args = parser.parse_args()
    if args.gait_table:
        from hipi_offline.experts.trot import measure_gait_table

        for key, value in measure_gait_table().items():
            print(f"    {key}: {value},")
        return
    if args.env in ("cheetah", "both"):
        targets = [0.5, 1.5, 3.0] if args.quick else [0.5, 1.0, 1.5, 2.0, 2.5, 3.0]
        steps = 150 if args.quick else 300
        print("\n".join(cheetah_table(targets, steps, args.seed, tuple(args.expert))), "\n")
    if args.env in ("quadruped", "both"):
        tasks = quadruped_tasks(2 if args.quick else args.prior_tasks, args.seed)
        if args.quick:
            tasks = dict(list(tasks.items())[::3])
        experts = [(name, *args.expert) for name in args.experts.split(",") if name]
        steps = 100 if args.quick else 150
        print("\n".join(quadruped_table(tasks, steps, args.seed, experts)))


if __name__ == "__main__":
    main()
