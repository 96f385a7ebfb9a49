"""`traffic:` in config/gateway.yaml: which calls are kept, for how long, and how large they may be."""

from __future__ import annotations

from pydantic import Field

from gateway.yamlspec import StrictModel


class TrafficConfig(StrictModel):
    routers: list[str] = Field(
        default_factory=list,
        description="Routers whose every chat call is stored (as if the caller sent `store: true`).",
    )
    prompts: list[str] = Field(
        default_factory=list, description="Prompts whose every call is stored (replay and eval datasets)."
    )
    retention_days: float = Field(30, gt=0, description="Stored calls older than this are deleted.")
    max_payload_bytes: int = Field(
        2 * 1024 * 1024,
        gt=0,
        description="A call whose request and response together are larger is not stored (the log row says"
        " so in extra.traffic).",
    )
    inline_max_bytes: int = Field(
        16 * 1024,
        ge=0,
        description="Payloads up to this size sit in the index row; larger ones in the payload table.",
    )
    purge_interval_s: float = Field(3600, gt=0, description="How often expired calls are deleted.")
