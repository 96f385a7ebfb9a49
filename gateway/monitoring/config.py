"""The `alerts:` section of config/gateway.yaml: webhooks that receive alert events."""

from __future__ import annotations

from pydantic import Field

from gateway.yamlspec import StrictModel


class WebhookConfig(StrictModel):
    url: str
    secret_env: str | None = Field(
        None, description="Env var holding the HMAC secret (never the secret itself)."
    )
    events: list[str] = Field(default_factory=lambda: ["*"], description="Event kinds to send, or * for all.")
    timeout_s: float = Field(5.0, gt=0)
    retries: int = Field(3, ge=0, le=10)


class AlertsConfig(StrictModel):
    webhooks: list[WebhookConfig] = Field(default_factory=list)
