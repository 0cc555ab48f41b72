"""Environments stepped in lockstep, in this process or on worker processes.

:func:`make_pool` gives ``n`` copies of a registered environment behind one interface:
``reset(seeds)`` and ``step(actions)`` take and return one item per environment, in
environment order, so that what a run computes does not depend on which worker answers
first. With ``n > 1`` each copy lives on its own worker process (the ``spawn`` start
method: nothing of the parent's state, threads or open files is inherited), driven over
a pipe. Every read of a pipe waits with a timeout while checking that the worker is
alive, so a crashed worker is one :class:`~hipi_offline.errors.ResourceError` naming it
and a hung one ends the run after :data:`TIMEOUT_S`; :meth:`ProcessPool.close` always
joins every worker (terminating, then killing, one that does not leave) and is called
from the trainer's ``finally`` (Ctrl-C, SIGTERM and errors included; the trainer's
``interrupted`` callback is polled while it waits for a worker). Workers ignore
SIGINT (the parent decides) and leave when the parent's end of their pipe closes, so a
killed parent leaves no worker behind.

As with any ``spawn`` pool, a Python script that calls the trainer with more than one
environment must do so under ``if __name__ == "__main__":`` (each worker imports the
main module); the ``hipi-offline`` command and notebooks need nothing.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
import time
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any, Protocol

import numpy as np

from hipi_offline.envs.base import StepResult, TaskEnv, make_env
from hipi_offline.errors import ResourceError, one_line

TIMEOUT_S = 300.0
"""Seconds a worker may take to reset or step before the run ends with an error (the
environment variable ``HIPI_OFFLINE_WORKER_TIMEOUT`` overrides it)."""
START_TIMEOUT_S = 300.0
"""Seconds a worker may take to start (import, make its environment)."""
TIMEOUT_ENV = "HIPI_OFFLINE_WORKER_TIMEOUT"
POLL_S = 0.5
"""How often a waiting read checks that the worker is still alive."""
CRASH_ENV = "HIPI_OFFLINE_TEST_WORKER"
"""Test hook: ``exit:K:S`` makes worker K exit (code 3) at its step S, ``raise:K:S``
raise an error there, ``hang:K:S`` stop answering there."""
PROCESSES_FROM = 2
"""The smallest pool that runs on worker processes (tests lower or raise it)."""


class EnvPool(Protocol):
    """``size`` environments reset and stepped together, in environment order."""

    size: int

    def reset(self, seeds: Sequence[int]) -> list[np.ndarray]: ...

    def step(self, actions: Sequence[np.ndarray]) -> list[StepResult]: ...

    def close(self) -> None: ...


class LocalPool:
    """The environments in this process, stepped one after the other."""

    def __init__(self, envs: Sequence[TaskEnv], borrowed: int = 0) -> None:
        self.envs = list(envs)
        self.size = len(self.envs)
        self.borrowed = borrowed
        """The first ``borrowed`` environments are the caller's to close."""

    def reset(self, seeds: Sequence[int]) -> list[np.ndarray]:
        return [env.reset(int(seed)) for env, seed in zip(self.envs, seeds, strict=True)]

    def step(self, actions: Sequence[np.ndarray]) -> list[StepResult]:
        return [env.step(a) for env, a in zip(self.envs, actions, strict=True)]

    def close(self) -> None:
        for env in self.envs[self.borrowed :]:
            env.close()
        self.envs = self.envs[: self.borrowed]


def _timeout() -> float:
    """:data:`TIMEOUT_S`, or the positive number of seconds in ``TIMEOUT_ENV``."""
    try:
        value = float(os.environ.get(TIMEOUT_ENV, TIMEOUT_S))
    except ValueError:
        return TIMEOUT_S
    return value if value > 0 else TIMEOUT_S


def _test_fault(index: int) -> tuple[str, int] | None:
    """The fault the test hook asks of worker ``index`` (kind, step), if any."""
    parts = os.environ.get(CRASH_ENV, "").split(":")
    if (
        len(parts) == 3
        and parts[0] in ("exit", "raise", "hang")
        and parts[1].isdigit()
        and parts[2].isdigit()
        and int(parts[1]) == index
    ):
        return parts[0], int(parts[2])
    return None


def _worker(env_name: str, index: int, conn: Connection) -> None:
    """A worker's loop: make the environment, then answer reset/step until told to
    close or until the parent's end of the pipe closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    fault = _test_fault(index)
    try:
        env = make_env(env_name)
    except Exception as err:  # noqa: BLE001 - reported to the parent as one line
        conn.send(("error", f"{type(err).__name__}: {err}"))
        return
    steps = 0
    try:
        conn.send(("ready", None))
        while True:
            try:
                command, argument = conn.recv()
            except (EOFError, OSError):
                return  # the parent is gone
            if command == "close":
                return
            try:
                if command == "reset":
                    answer: Any = env.reset(int(argument))
                else:
                    if fault is not None and steps == fault[1]:
                        if fault[0] == "exit":
                            os._exit(3)
                        if fault[0] == "hang":
                            signal.pause()
                        raise RuntimeError("test fault")
                    result = env.step(argument)
                    answer = (result.observation, result.fields)
                    steps += 1
            except Exception as err:  # noqa: BLE001 - reported to the parent as one line
                conn.send(("error", f"{type(err).__name__}: {err}"))
                return
            conn.send(("ok", answer))
    finally:
        env.close()


class ProcessPool:
    """One worker process per environment, driven over pipes."""

    def __init__(
        self,
        env_name: str,
        size: int,
        timeout: float | None = None,
        interrupted: Callable[[], bool] | None = None,
    ) -> None:
        self.size = size
        self.timeout = timeout if timeout is not None else _timeout()
        self.interrupted = interrupted
        """Checked while waiting for a worker: True raises KeyboardInterrupt."""
        self.processes: list[BaseProcess] = []
        self.conns: list[Connection] = []
        context = mp.get_context("spawn")
        try:
            for index in range(size):
                parent, child = context.Pipe()
                process = context.Process(
                    target=_worker,
                    args=(env_name, index, child),
                    name=f"hipi-env-{index}",
                    daemon=True,
                )
                # started with SIGINT blocked (the mask is inherited), so that a Ctrl-C
                # before the worker ignores it is not a traceback in the worker
                blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
                try:
                    process.start()
                finally:
                    signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
                child.close()
                self.processes.append(process)
                self.conns.append(parent)
            for index in range(size):
                self._receive(index, "start")
        except BaseException:
            self.close()
            raise

    def _receive(self, index: int, what: str) -> Any:
        """Worker ``index``'s answer, waiting at most ``timeout`` seconds (start:
        :data:`START_TIMEOUT_S`) while it lives."""
        conn, process = self.conns[index], self.processes[index]
        limit = START_TIMEOUT_S if what == "start" else self.timeout
        deadline = time.monotonic() + limit
        while not conn.poll(POLL_S):
            if self.interrupted is not None and self.interrupted():
                raise KeyboardInterrupt
            if not process.is_alive():
                raise ResourceError(
                    f"environment worker {index} died during {what} (exit code {process.exitcode})"
                )
            if time.monotonic() > deadline:
                raise ResourceError(
                    f"environment worker {index} did not answer {what} within {limit:g} s"
                )
        try:
            status, answer = conn.recv()
        except (EOFError, OSError):
            process.join(self.timeout)
            raise ResourceError(
                f"environment worker {index} died during {what} (exit code {process.exitcode})"
            ) from None
        if status == "error":
            raise ResourceError(one_line(f"environment worker {index}: {what}: {answer}"))
        return answer

    def _send_all(self, command: str, arguments: Sequence[Any]) -> None:
        for index, (conn, argument) in enumerate(zip(self.conns, arguments, strict=True)):
            try:
                conn.send((command, argument))
            except (BrokenPipeError, OSError):
                code = self.processes[index].exitcode
                raise ResourceError(
                    f"environment worker {index} died before {command} (exit code {code})"
                ) from None

    def reset(self, seeds: Sequence[int]) -> list[np.ndarray]:
        self._send_all("reset", [int(s) for s in seeds])
        return [self._receive(i, "reset") for i in range(self.size)]

    def step(self, actions: Sequence[np.ndarray]) -> list[StepResult]:
        self._send_all("step", [np.asarray(a) for a in actions])
        answers = [self._receive(i, "step") for i in range(self.size)]
        return [StepResult(observation=obs, fields=fields) for obs, fields in answers]

    def close(self) -> None:
        """Ask every worker to leave, then join it (terminate, then kill, a late one)."""
        for conn in self.conns:
            with contextlib.suppress(BrokenPipeError, OSError):
                conn.send(("close", None))
        for process in self.processes:
            process.join(5.0)
            if process.is_alive():
                process.terminate()
                process.join(5.0)
            if process.is_alive():
                process.kill()
                process.join()
        for conn in self.conns:
            conn.close()
        self.processes, self.conns = [], []


def make_pool(
    env_name: str, size: int, first: TaskEnv, interrupted: Callable[[], bool] | None = None
) -> EnvPool:
    """``size`` copies of ``env_name``: ``first`` itself when ``size`` is 1 (or below
    :data:`PROCESSES_FROM`, with more copies made here), else worker processes (then
    ``first`` is left to the caller; ``interrupted``: see :class:`ProcessPool`)."""
    if size < PROCESSES_FROM:
        envs = [first]
        try:
            envs += [make_env(env_name) for _ in range(size - 1)]
        except BaseException:
            for env in envs[1:]:
                env.close()
            raise
        return LocalPool(envs, borrowed=1)
    return ProcessPool(env_name, size, interrupted=interrupted)
