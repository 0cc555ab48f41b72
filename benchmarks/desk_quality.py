"""Quality of the desk's scripted play expert.

For each of the nine tasks: the success rate when the expert is commanded that task
from random starts where it is not already achieved (success = the spec's predicate
holds at the episode's last step; goal >= 0.9), and the median steps to first success.
Then the speed of the play script (env + expert steps per second). Prints markdown.

    python benchmarks/desk_quality.py --trials 50
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from hipi_offline.envs import env_task_spec, make_env, transition_rewards
from hipi_offline.experts.desk_play import TASKS, DeskPlay, play_stream


def commanded_success(
    env, expert: DeskPlay, task: int, trials: int, steps: int
) -> tuple[float, float]:
    """(success rate, median steps to first success) over ``trials`` feasible starts."""
    spec = env_task_spec(env)
    wins, firsts, seed = 0, [], 0
    one_hot = np.eye(len(TASKS))[task]
    for _ in range(trials):
        while True:
            seed += 1
            env.reset(seed)
            if not expert.satisfied(env)[task]:
                break
        expert.reset(env, one_hot, seed)
        fields: dict[str, list[np.ndarray]] = {}
        for _ in range(steps):
            for name, value in env.step(expert.act(env, None)).fields.items():
                fields.setdefault(name, []).append(np.asarray(value))
        stacked = {k: np.stack(v) for k, v in fields.items()}
        hits = transition_rewards(
            spec, np.zeros((steps, 1)), np.zeros((steps, 3)), stacked, one_hot[None]
        )[:, 0]
        if hits[-1] > 0:
            wins += 1
            firsts.append(int(np.argmax(hits > 0)) + 1)
    return wins / trials, float(np.median(firsts)) if firsts else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=50, help="starts per task")
    parser.add_argument("--steps", type=int, default=None, help="episode length (default_steps)")
    parser.add_argument("--play-steps", type=int, default=5000, help="steps of the speed run")
    args = parser.parse_args()

    env = make_env("desk")
    expert = DeskPlay()
    steps = args.steps or env.info.default_steps
    print(f"## desk scripted expert ({args.trials} feasible starts per task, {steps} steps)\n")
    print("| task | success | median steps to goal |")
    print("|---|---:|---:|")
    rates = []
    for k, name in enumerate(TASKS):
        rate, median = commanded_success(env, expert, k, args.trials, steps)
        rates.append(rate)
        print(f"| {name} | {rate:.2f} | {median:.0f} |")
    print(f"| **min** | **{min(rates):.2f}** | |\n")

    start = time.perf_counter()
    _, _, _, subtask = play_stream(env, expert, args.play_steps, seed=0)
    seconds = time.perf_counter() - start
    switches = int(np.count_nonzero(np.diff(subtask))) + 1
    print("| play stream | value |")
    print("|---|---:|")
    print(f"| steps/s (env + expert) | {args.play_steps / seconds:,.0f} |")
    print(f"| sub-tasks in {args.play_steps} steps | {switches} |")
    print(f"| mean steps per sub-task | {args.play_steps / switches:.1f} |")
    env.close()


if __name__ == "__main__":
    main()
