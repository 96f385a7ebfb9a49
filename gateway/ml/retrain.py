"""Retraining commands: the operator's, run in the background; what they print goes to the server log only.

A model spec names a command (`retrain: {command: cancer_retrain}`); its argv comes only from
`ml.retrain_commands` in config/gateway.yaml, so nothing a prompt engineer commits can run. A trigger
starts a run and returns its id at once. The run gets the evidence as JSON on stdin and OPSGATE_MODEL,
OPSGATE_MODEL_VERSION, OPSGATE_MODEL_REF in its environment, in the project directory. Its output (which
may hold anything, secrets of the environment included) is logged server-side, its last 2,000 characters,
and never returned to an HTTP caller: callers see the run's id, status and exit code, stored as
`retrain_run` reports so that every replica can answer `GET /admin/ml/{name}/retrain/{run_id}`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from gateway.db.generation import utcnow
from gateway.ml.model import ServedModel
from gateway.ml.tables import MLReport

log = logging.getLogger("opsgate.ml.retrain")
RUN_KIND = "retrain_run"
OUTPUT_LOG_CHARS = 2000
READ_CHUNK = 65536


class RetrainRunner:
    def __init__(
        self,
        engine: Engine,
        project_dir: Path,
        commands: Mapping[str, list[str]],
        *,
        timeout_s: float = 600.0,
    ) -> None:
        self.engine = engine
        self.project_dir = project_dir
        self.commands = dict(commands)
        self.timeout_s = timeout_s
        self._tasks: set[asyncio.Task[None]] = set()
        self._running: dict[str, dict[str, Any]] = {}  # run id -> state, until its final report is stored
        for name, argv in self.commands.items():
            for path in project_files(project_dir, argv):
                log.warning(
                    "retrain command %r runs %s, a file in the project: whoever can commit there changes"
                    " what runs in the gateway; keep retraining scripts outside the project",
                    name,
                    path,
                )

    def start(self, served: ServedModel, name: str, evidence: dict[str, Any]) -> dict[str, Any]:
        """Start the named command for this version; returns what the caller may see (never output)."""
        argv = self.commands.get(name)
        if argv is None:
            known = ", ".join(sorted(self.commands)) or "none configured"
            log.warning("%s names retrain command %r, which ml.retrain_commands lacks", served.ref, name)
            return {
                "name": name,
                "status": "refused",
                "error": f"retrain.command {name!r} is not one of the operator's commands (ml.retrain_commands"
                f" in config/gateway.yaml: {known}); ask an operator to add it",
            }
        run_id = "run_" + secrets.token_hex(8)
        self._running[run_id] = {
            "model": served.name,
            "version": served.version,
            "run_id": run_id,
            "command": name,
            "status": "running",
        }
        task = asyncio.create_task(self._run(run_id, name, argv, served, evidence), name=f"opsgate-{run_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return {"name": name, "run_id": run_id, "status": "running"}

    async def _run(
        self, run_id: str, name: str, argv: list[str], served: ServedModel, evidence: dict[str, Any]
    ) -> None:
        state: dict[str, Any] = {"run_id": run_id, "command": name, "status": "running"}
        try:
            await asyncio.to_thread(self._store, served, state)
            started = time.monotonic()
            status, code = await self._execute(run_id, name, argv, served, evidence)
            elapsed = round(time.monotonic() - started, 3)
            final = {**state, "status": status, "exit_code": code, "duration_s": elapsed}
            await asyncio.to_thread(self._store, served, final)
        except Exception:  # a background task: nobody awaits it, so say it here (e.g. the database is down)
            log.exception(
                "retrain run %s (%s for %s): its status could not be stored", run_id, name, served.ref
            )
        finally:  # stored (or cancelled with the gateway): the database answers from now on
            self._running.pop(run_id, None)

    async def _execute(
        self, run_id: str, name: str, argv: list[str], served: ServedModel, evidence: dict[str, Any]
    ) -> tuple[str, int | None]:
        env = {
            **os.environ,
            "OPSGATE_MODEL": served.name,
            "OPSGATE_MODEL_VERSION": str(served.version),
            "OPSGATE_MODEL_REF": served.ref,
        }
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                cwd=self.project_dir,
                env=env,
            )
        except OSError as exc:
            log.warning("retrain run %s (%s for %s) could not start: %s", run_id, name, served.ref, exc)
            return "failed", None
        payload = orjson.dumps(evidence, option=orjson.OPT_SERIALIZE_NUMPY)
        try:
            tail = await asyncio.wait_for(_feed_and_tail(proc, payload), timeout=self.timeout_s)
            code = await proc.wait()
        except TimeoutError:
            _kill(proc)
            await proc.wait()
            log.warning(
                "retrain run %s (%s for %s) killed after %.0f s", run_id, name, served.ref, self.timeout_s
            )
            return "timed_out", proc.returncode
        except asyncio.CancelledError:  # the gateway is stopping
            _kill(proc)
            await proc.wait()
            raise
        text = tail.decode(errors="replace")[-OUTPUT_LOG_CHARS:]
        log.info(
            "retrain run %s (%s for %s) exited %s; its output (last %d characters):\n%s",
            run_id, name, served.ref, code, OUTPUT_LOG_CHARS, text,
        )  # fmt: skip
        return ("succeeded" if code == 0 else "failed"), code

    def _store(self, served: ServedModel, result: dict[str, Any]) -> None:
        with Session(self.engine) as session:
            session.add(
                MLReport(
                    ts=utcnow(),
                    name=served.name,
                    version=served.version,
                    kind=RUN_KIND,
                    breached=False,
                    result=result,
                )
            )
            session.commit()

    def status(self, name: str, run_id: str) -> dict[str, Any] | None:
        """The newest state of a run (blocking: a database read unless this replica runs it now), or None
        if there is no such run."""
        running = self._running.get(run_id)
        if running is not None and running["model"] == name:
            return dict(running)
        q = (
            select(MLReport)
            .where(MLReport.name == name, MLReport.kind == RUN_KIND)
            .order_by(MLReport.id.desc())
            .limit(1000)
        )
        with Session(self.engine) as session:
            for report in session.scalars(q):
                if report.result.get("run_id") == run_id:
                    return {
                        "model": name,
                        "version": report.version,
                        **report.result,
                        "updated_at": report.ts,
                    }
        return None

    async def drain(self) -> None:
        """Wait for the runs started so far (the CLI, which exits afterwards)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


async def _feed_and_tail(proc: asyncio.subprocess.Process, payload: bytes) -> bytes:
    """Write the evidence while reading the output (either may fill a pipe), keeping only the output's
    tail: a chatty command costs no memory."""
    assert proc.stdin is not None and proc.stdout is not None
    stdin, stdout = proc.stdin, proc.stdout

    async def feed() -> None:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # a command that ignores stdin
            stdin.write(payload)
            await stdin.drain()
            stdin.close()

    async def tail() -> bytes:
        kept = b""
        while chunk := await stdout.read(READ_CHUNK):
            kept = (kept + chunk)[-OUTPUT_LOG_CHARS * 4 :]  # up to 4 bytes per character
        return kept

    return (await asyncio.gather(feed(), tail()))[1]


def project_files(project_dir: Path | None, argv: list[str]) -> list[str]:
    """The arguments of a command that name a file inside the project (prompt engineers commit there)."""
    if project_dir is None:
        return []
    root = project_dir.resolve()
    found = []
    for arg in argv:
        try:
            path = (root / arg).resolve()
            inside = path.is_relative_to(root) and path.is_file()
        except (OSError, ValueError):  # not a path at all (code, a NUL, too long)
            continue
        if inside:
            found.append(arg)
    return found


def _kill(proc: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
