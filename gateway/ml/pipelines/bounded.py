"""`ml.pipelines.timeout_s`: a pipeline run that takes too long is stopped, registers nothing, and says so.

Every stage boundary checks the run's deadline; training, the stage that can take hours, runs in a child
process that is killed when the deadline passes (a thread cannot be stopped, and a search holds the
process for as long as it likes). The child comes from a fork server that has imported scikit-learn once,
so a run pays ~10 ms to start it after the first (which pays the import). The trained estimator comes
back pickled from a process this run started on its own code: no file anyone else wrote is unpickled.
"""

from __future__ import annotations

import multiprocessing
import pickle
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from gateway.errors import OpsgateError

PRELOAD = ["gateway.ml.pipelines.train"]


class RunTimedOut(OpsgateError):
    """The run passed `ml.pipelines.timeout_s`: stopped, nothing registered."""

    def __init__(self, timeout_s: float, stage: str) -> None:
        super().__init__(
            f"stopped: the run took longer than ml.pipelines.timeout_s ({timeout_s:g} s), during {stage};"
            " nothing registered (raise the limit in config/gateway.yaml, or make the search smaller)",
            code="pipeline_timeout",
        )
        self.stage = stage


class Deadline:
    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.at = time.monotonic() + timeout_s

    def left(self, stage: str) -> float:
        """Seconds left; RunTimedOut when none are."""
        remaining = self.at - time.monotonic()
        if remaining <= 0:
            raise RunTimedOut(self.timeout_s, stage)
        return remaining


def _child(conn: Connection, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    try:
        payload: tuple[bool, Any] = (True, fn(*args, **kwargs))
    except BaseException as exc:  # noqa: BLE001 - carried to the parent, which raises it
        payload = (False, exc)
    try:
        conn.send(payload)
    except (pickle.PicklingError, TypeError, AttributeError) as exc:  # an exception that cannot travel
        conn.send((False, RuntimeError(f"{type(payload[1]).__name__}: {payload[1]} ({exc})")))
    finally:
        conn.close()


def call_within(deadline: Deadline, stage: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """`fn(*args, **kwargs)` in a child process, killed if it outlives the deadline (RunTimedOut)."""
    remaining = deadline.left(stage)
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    receiver, sender = ctx.Pipe(duplex=False)
    process = ctx.Process(target=_child, args=(sender, fn, args, kwargs), name=f"opsgate-pipeline-{stage}")
    process.start()
    sender.close()
    try:
        if not receiver.poll(remaining):
            raise RunTimedOut(deadline.timeout_s, stage)
        try:
            ok, value = receiver.recv()
        except EOFError as exc:
            process.join(5)
            raise RuntimeError(
                f"the {stage} process ended without an answer (exit code {process.exitcode})"
            ) from exc
    finally:
        receiver.close()
        if process.is_alive():
            process.kill()
        process.join(5)
    if not ok:
        raise value
    return value
