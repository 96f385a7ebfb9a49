"""One log line per change of state of a dependency (the database, Redis), not one per failed call.

An outage of minutes at hundreds of requests/s used to log a traceback per retry and per refresh (~36 KB/s).
`Outage` logs when a dependency goes down (with the first error, one line), every `every_s` while it stays
down (with how long and how many failures), and when it is back (with how long it was away).
"""

from __future__ import annotations

import logging
import time

from sqlalchemy.exc import DBAPIError, DisconnectionError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from gateway.errors import ServiceUnavailable

DATABASE_RETRY_AFTER_S = 5


def describe(exc: BaseException) -> str:
    """`Type: first line of the message` (at most 300 characters): enough to tell faults apart."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300] if text else ''}".rstrip(": ")


class Outage:
    def __init__(self, what: str, logger: logging.Logger, *, every_s: float = 30.0) -> None:
        self.what = what
        self.log = logger
        self.every_s = every_s
        self.down_since: float | None = None  # time.monotonic() of the first failure of this outage
        self.down_since_wall: float | None = None
        self.failures = 0
        self.last_error: str | None = None
        self._last_logged = 0.0

    @property
    def up(self) -> bool:
        return self.down_since is None

    def down_for_s(self) -> float:
        return 0.0 if self.down_since is None else time.monotonic() - self.down_since

    def failed(self, exc: BaseException | str, note: str = "") -> None:
        now = time.monotonic()
        self.last_error = exc if isinstance(exc, str) else describe(exc)
        self.failures += 1
        suffix = f"; {note}" if note else ""
        if self.down_since is None:
            self.down_since, self.down_since_wall, self._last_logged = now, time.time(), now
            self.failures = 1
            self.log.error("%s unavailable: %s%s", self.what, self.last_error, suffix)
        elif now - self._last_logged >= self.every_s:
            self._last_logged = now
            self.log.warning(
                "%s still unavailable after %.0f s (%d failures): %s%s",
                self.what,
                now - self.down_since,
                self.failures,
                self.last_error,
                suffix,
            )

    def recovered(self, note: str = "") -> None:
        if self.down_since is None:
            return
        away = time.monotonic() - self.down_since
        self.down_since = self.down_since_wall = None
        self.log.warning("%s back after %.1f s%s", self.what, away, f"; {note}" if note else "")
        self.failures = 0
        self.last_error = None


def database_unavailable(exc: BaseException) -> ServiceUnavailable | None:
    """The 503 an infrastructure fault of the database becomes (None: not one, e.g. a constraint)."""
    infra = isinstance(exc, (OperationalError, InterfaceError, DisconnectionError, PoolTimeout)) or (
        isinstance(exc, DBAPIError) and exc.connection_invalidated
    )
    if not infra:
        return None
    return ServiceUnavailable(
        f"the database is unavailable ({describe(exc)[:200]}); chat and embeddings are still served;"
        f" retry in {DATABASE_RETRY_AFTER_S} s",
        retry_after_s=DATABASE_RETRY_AFTER_S,
        code="database_unavailable",
    )
