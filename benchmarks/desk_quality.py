"""Quality of the desk's scripted play expert.

For each of the nine tasks: the success rate when the expert is commanded that task
from random starts where it is not already achieved (success = the episode's return
under the spec's reward is >= 1, i.e. the task was achieved: its success predicate
switched from false to true; goal >= 0.9), and the median steps to that achievement.
Then the speed of the play script (env + expert steps per second), and the play
windows the collector cuts (``play_unit``: windows ending at sub-task completions):
the share whose returns name only their own task (the others also hold an earlier
completion, a tie for relabeling). Prints markdown.

    python benchmarks/desk_quality.py --trials 50

Result (2-core CPU, 50 trials, 100 steps, 2025-11-27):

| task | success | median steps to goal |
|---|---:|---:|
| open_drawer | 1.00 | 46 |
| close_drawer | 1.00 | 49 |
| door_left | 1.00 | 50 |
| door_right | 1.00 | 53 |
| light_on | 1.00 | 36 |
| light_off | 1.00 | 37 |
| block_left | 1.00 | 40 |
| block_right | 1.00 | 44 |
| block_forward | 1.00 | 34 |

Play: 2,446 steps/s, 81 sub-tasks in 5000 steps (61.7 steps each). Windows of 50
steps: 76.8 stream steps per window, 0.91 name only their own task; windows of 100
steps: 135.7 and 0.10 (longer than most sub-tasks, so most also hold the previous
completion: relabeling ties those two tasks).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from hipi_offline.collect.episodes import play_unit
from hipi_offline.envs import env_task_spec, make_env, transition_rewards
from hipi_offline.experts.desk_play import TASKS, DeskPlay, play_stream


def commanded_success(
    env, expert: DeskPlay, task: int, trials: int, steps: int
) -> tuple[float, float]:
    """(success rate, median steps to the first achievement) over ``trials`` feasible
    starts; success: the task was achieved (return >= 1)."""
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
        if hits.sum() >= 1:
            wins += 1
            firsts.append(int(np.argmax(hits > 0)) + 1)
    return wins / trials, float(np.median(firsts)) if firsts else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=50, help="starts per task")
    parser.add_argument("--steps", type=int, default=None, help="episode length (default_steps)")
    parser.add_argument("--play-steps", type=int, default=5000, help="steps of the speed run")
    parser.add_argument("--streams", type=int, default=20, help="play streams of 10 windows")
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
    print(f"| mean steps per sub-task | {args.play_steps / switches:.1f} |\n")

    spec = env_task_spec(env)
    print("| play windows (steps) | windows | stream steps per window | own task only |")
    print("|---:|---:|---:|---:|")
    for length in (50, 100):
        episodes = [
            e for unit in range(args.streams) for e in play_unit("desk", length, 0, unit, 10)
        ]
        own = 0
        for e in episodes:
            returns = transition_rewards(
                spec, e.observations, e.actions, e.fields, np.eye(len(TASKS))
            ).sum(axis=0)
            task = int(e.episode_fields["task"])
            own += returns[task] >= 1 and returns.sum() == returns[task]
        ends = [int(e.episode_fields["stream_offset"]) + length for e in episodes[9::10]]
        per_window = np.mean(ends) / 10
        print(f"| {length} | {len(episodes)} | {per_window:.1f} | {own / len(episodes):.2f} |")
    env.close()


if __name__ == "__main__":
    main()
