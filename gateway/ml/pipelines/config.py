"""`ml: {pipelines: ...}` in config/gateway.yaml: what a pipeline may reach is the operator's decision.

    ml:
      pipelines:
        databases: {warehouse: WAREHOUSE_URL, gateway: gateway}   # name -> env var with the URL, or 'gateway'
        dask_scheduler: tcp://dask-scheduler.internal:8786         # the cluster `engine: {backend: dask}` uses
        dask_workers: 2                                            # without a scheduler: a local cluster

A pipeline file names a database and a backend; the URL, the credentials and the scheduler's address are
here, and the scheduler's host must be on egress.hosts like any other host the gateway calls.
"""

from __future__ import annotations

import re

from pydantic import Field, field_validator

from gateway.yamlspec import StrictModel

ENV = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class PipelinesConfig(StrictModel):
    databases: dict[str, str] = Field(
        default_factory=dict,
        description="name -> the environment variable holding its SQLAlchemy URL, or 'gateway' for the"
        " gateway's own database. A pipeline's `source.database` names one of these.",
    )
    dask_scheduler: str | None = Field(
        None,
        description="tcp://host:port of the Dask scheduler pipelines with `engine: {backend: dask}` use;"
        " its host must be on egress.hosts. Unset: a local cluster of `dask_workers` processes.",
    )
    dask_workers: int = Field(2, ge=1, le=256, description="Worker processes of the local cluster.")
    timeout_s: float = Field(3600, gt=0, description="A triggered run's lease: another may start after this.")

    @field_validator("databases")
    @classmethod
    def _databases(cls, value: dict[str, str]) -> dict[str, str]:
        for name, target in value.items():
            if target != "gateway" and not ENV.match(target):
                raise ValueError(
                    f"{name}: give the name of an environment variable holding the URL (never the URL"
                    " itself: it carries credentials), or 'gateway'"
                )
            if target.startswith("OPSGATE_"):
                raise ValueError(f"{name}: OPSGATE_* variables are the gateway's own")
        return value

    @field_validator("dask_scheduler")
    @classmethod
    def _scheduler(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^(tcp|tls)://[^/\s]+:\d+$", value):
            raise ValueError("write tcp://host:port (or tls://host:port)")
        return value
