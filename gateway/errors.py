"""One error hierarchy for opsgate, split by who is at fault.

    OpsgateError                      500 api_error        (a bug or an unexpected state: ours)
    ├── ConfigError                   a config or artifact file is invalid (file, line, field)
    ├── ClientError                   the caller must change the request
    │   ├── InvalidRequest            400 invalid_request_error
    │   │   ├── InvalidJSON           400 the body is not JSON (or not UTF-8)
    │   │   └── InvalidParameter      400 a parameter of an OpenAI or Anthropic API body is missing, of the
    │   │                                 wrong type or out of range (names it in `param`, as OpenAI does)
    │   ├── InvalidFields             422 a field of an admin or ML body has the wrong type or value
    │   ├── BodyTooLarge              413
    │   ├── AuthenticationFailed      401 no key, or a key we do not know
    │   ├── PermissionDenied          403 the key may not do this (names what is missing)
    │   ├── NotFound                  404 unknown model, artifact, version, alias, promotion
    │   ├── Conflict                  409 the state changed under you (e.g. racing promotions)
    │   └── RateLimited               429 with Retry-After
    ├── StreamCut                     503 the gateway ended a stream itself (shutting down)
    ├── ServerCut                     503 the gateway stopped a plain call it was still working on (shutting
    │                                     down), with Retry-After: another replica answers
    ├── ServiceUnavailable            503 with Retry-After: a service the gateway needs (the database)
    │                                     is away; retry shortly
    └── UpstreamError                 502 a provider failed (after retries and fallbacks)
        ├── UpstreamUnavailable       503 no deployment could be reached
        ├── UpstreamTimeout           504 the provider did not answer in time
        └── EgressDenied              502 a deployment names a host, variable, header or parameter the
                                          operator does not allow (nothing was sent)

Every error carries a message that says what to do; `to_openai()` renders OpenAI's error JSON:
`{"error": {"message", "type", "param", "code"}}`.
"""

from __future__ import annotations

from typing import Any


class OpsgateError(Exception):
    status: int = 500
    type: str = "api_error"
    code: str | None = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.headers = headers or {}

    def to_openai(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class ConfigError(OpsgateError):
    """A file the user wrote is invalid. `path` and `line` say where."""

    code = "invalid_config"

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None) -> None:
        where = path if path else ""
        if path and line:
            where = f"{path}:{line}"
        super().__init__(f"{where}: {message}" if where else message)
        self.path = path
        self.line = line
        self.detail = message


class ClientError(OpsgateError):
    status = 400
    type = "invalid_request_error"
    code: str | None = None


class InvalidRequest(ClientError):
    status = 400


class InvalidJSON(InvalidRequest):
    code = "invalid_json"


class InvalidParameter(InvalidRequest):
    """An invalid parameter of a model API body (chat, completions, responses, embeddings, messages): OpenAI
    answers these 400 `invalid_request_error` with the parameter in `param` and a code saying what is wrong
    (`invalid_type`, `integer_below_min_value`, `missing_required_parameter`, ...)."""

    code = "invalid_value"


class InvalidFields(ClientError):
    status = 422
    code = "invalid_fields"


class BodyTooLarge(ClientError):
    status = 413
    code = "body_too_large"


class RequestTimeout(ClientError):
    """The client did not send its whole body within `server.body_timeout_s` (slow-loris bodies)."""

    status = 408
    code = "body_timeout"


class ClientTooSlow(ClientError):
    """The client did not read the answer: one write waited `server.send_timeout_s`; the answer is cut."""

    status = 408
    code = "client_too_slow"


class AuthenticationFailed(ClientError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class PermissionDenied(ClientError):
    status = 403
    type = "permission_error"
    code = "permission_denied"


class NotFound(ClientError):
    status = 404
    code = "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"


class Conflict(ClientError):
    status = 409
    type = "conflict_error"
    code = "conflict"


class RateLimited(ClientError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after_s: float, code: str | None = None) -> None:
        seconds = max(1, int(retry_after_s + 0.999))
        super().__init__(message, code=code, headers={"Retry-After": str(seconds)})
        self.retry_after_s = retry_after_s


class ServiceUnavailable(OpsgateError):
    """An infrastructure fault (the database unreachable, read-only or locked): never the caller's, never a
    500; the answer says when to try again."""

    status = 503
    type = "server_error"
    code = "service_unavailable"

    def __init__(self, message: str, *, retry_after_s: float, code: str | None = None) -> None:
        seconds = max(1, int(retry_after_s + 0.999))
        super().__init__(message, code=code, headers={"Retry-After": str(seconds)})
        self.retry_after_s = retry_after_s


class StreamCut(OpsgateError):
    """The gateway ended a stream before it finished (its shutdown grace period ran out)."""

    status = 503
    type = "server_error"
    code = "stream_cut_by_server"


class ServerCut(OpsgateError):
    """The gateway stopped a call before answering it: its shutdown grace period ran out while the call
    still waited (e.g. on a slow upstream). Answered, never a connection closed under the caller."""

    status = 503
    type = "server_error"
    code = "cut_by_server"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"Retry-After": "1"})


class UpstreamError(OpsgateError):
    """A provider failed. `retryable` says whether another try (or deployment) may succeed."""

    status = 502
    type = "upstream_error"
    code = "upstream_error"

    def __init__(
        self,
        message: str,
        *,
        retryable: bool = True,
        upstream_status: int | None = None,
        retry_after_s: float | None = None,
        deployment: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message, code=code)
        self.retryable = retryable
        self.upstream_status = upstream_status
        self.retry_after_s = retry_after_s
        self.deployment = deployment


class UpstreamUnavailable(UpstreamError):
    status = 503
    code = "upstream_unavailable"


class UpstreamTimeout(UpstreamError):
    status = 504
    code = "upstream_timeout"


class UpstreamRateLimited(UpstreamError):
    """Every deployment said 429: the caller is told to come back later."""

    status = 429
    type = "rate_limit_error"
    code = "upstream_rate_limited"


class UpstreamRejected(UpstreamError):
    """The provider refused the request itself (4xx other than 429): retrying cannot help."""

    status = 400
    type = "invalid_request_error"
    code = "upstream_rejected"


class EgressDenied(UpstreamError):
    """A deployment names what the operator's egress rules (config/gateway.yaml) do not allow: a host, an
    environment variable, a header or a request parameter. Raised before anything is sent or read; a
    version registered before the rules changed meets it at call time. Other deployments may still serve."""

    code = "egress_denied"
