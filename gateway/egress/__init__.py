"""Egress: where the gateway may send requests, and what a router may name. The operator's allow-lists.

What prompt engineers commit (routers, prompts) is inert until approved, and even then it may only name
what the operator allowed in the `egress` section of `config/gateway.yaml`:

    hosts             where a router deployment's `api_base` may point (the API hosts of well-known
                      providers when `provider_hosts` is on; loopback and private hosts only when listed)
    api_key_envs      the environment variables a deployment's `api_key_env` may name (`*_API_KEY`);
                      `OPSGATE_*` (the gateway's own settings, its database URL) never
    deployment_headers  the header names a deployment's `headers` may set
    request_params    provider-specific request parameters allowed beyond OpenAI's (see providers/params)
    webhook_hosts     where alert webhooks may post

The rules are checked twice: when a file is loaded (`opsgate sync`, start-up: a ConfigError naming file,
line and field) and by the adapters before any byte leaves (a version registered before the rules changed
gets `EgressDenied`, naming what to configure; the host is never contacted, the variable never read).

Host entries: `api.openai.com` (its scheme's default port), `localhost:11434`, `127.0.0.1:*` (any port),
`*.openai.azure.com` (`*` stands for exactly one DNS label). Hosts are compared as written: `127.1`,
`2130706433` or `[::ffff:127.0.0.1]` do not match `127.0.0.1:*`.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from types import MappingProxyType
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from pydantic import Field, ValidationError, ValidationInfo, field_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from gateway.egress.params import ParamRules, steers_the_call
from gateway.yamlspec import StrictModel

if TYPE_CHECKING:
    from gateway.providers.deployment import Deployment

# Where each provider's API lives when a deployment gives no api_base (litellm's defaults). None: the
# provider has no fixed address (Azure resources, self-hosted servers): a deployment must set api_base.
PROVIDER_DEFAULT_HOSTS: Mapping[str, str | None] = MappingProxyType(
    {
        "openai": "api.openai.com",
        "anthropic": "api.anthropic.com",
        "azure": None,
        "azure_ai": None,
        "gemini": "generativelanguage.googleapis.com",
        "vertex_ai": "*-aiplatform.googleapis.com",
        "bedrock": "bedrock-runtime.*.amazonaws.com",
        "mistral": "api.mistral.ai",
        "codestral": "codestral.mistral.ai",
        "cohere": "api.cohere.ai",
        "cohere_chat": "api.cohere.ai",
        "groq": "api.groq.com",
        "together_ai": "api.together.xyz",
        "fireworks_ai": "api.fireworks.ai",
        "deepseek": "api.deepseek.com",
        "openrouter": "openrouter.ai",
        "xai": "api.x.ai",
        "perplexity": "api.perplexity.ai",
        "deepinfra": "api.deepinfra.com",
        "cerebras": "api.cerebras.ai",
        "voyage": "api.voyageai.com",
        "nvidia_nim": "integrate.api.nvidia.com",
        "sambanova": "api.sambanova.ai",
        "ai21": "api.ai21.com",
        "ai21_chat": "api.ai21.com",
        "huggingface": "router.huggingface.co",
        "replicate": "api.replicate.com",
        "jina_ai": "api.jina.ai",
        "ollama": "localhost:11434",
        "ollama_chat": "localhost:11434",
    }
)

# The API hosts of the providers above, allowed while `provider_hosts` is on (public hosts only: a
# loopback or private address, such as Ollama's, must be listed by the operator).
PROVIDER_HOSTS: tuple[str, ...] = (
    "api.openai.com", "api.anthropic.com", "*.openai.azure.com", "*.cognitiveservices.azure.com",
    "*.services.ai.azure.com", "*.models.ai.azure.com", "generativelanguage.googleapis.com",
    "aiplatform.googleapis.com", "*-aiplatform.googleapis.com", "bedrock-runtime.*.amazonaws.com",
    "api.mistral.ai", "codestral.mistral.ai", "api.cohere.ai", "api.cohere.com", "api.groq.com",
    "api.together.xyz", "api.together.ai", "api.fireworks.ai", "api.deepseek.com", "openrouter.ai",
    "api.x.ai", "api.perplexity.ai", "api.deepinfra.com", "api.cerebras.ai", "api.voyageai.com",
    "integrate.api.nvidia.com", "api.sambanova.ai", "api.ai21.com", "router.huggingface.co",
    "api.replicate.com", "api.jina.ai",
)  # fmt: skip

# Providers that authenticate with the gateway's cloud identity (AWS or Google credentials litellm finds in
# the environment, a metadata service or a credentials file) rather than an API key: without api_key_env
# their calls carry that identity (a bearer token, a session token), so they go only to the provider's own
# hosts, never to an api_base.
CLOUD_IDENTITY_PROVIDERS = frozenset({"bedrock", "sagemaker", "vertex_ai"})
# The gateway's own settings (database URL, its API key, ...): never a router's to name.
RESERVED_ENV_PREFIX = "OPSGATE_"
# Headers that carry credentials or steer the connection: a deployment may never set them, whatever the
# operator lists (a file must not hold a secret, nor bill someone else's account).
NEVER_HEADERS = frozenset(
    {
        "authorization", "proxy-authorization", "x-api-key", "api-key", "x-goog-api-key", "cookie",
        "host", "content-length", "transfer-encoding", "connection", "content-type",
    }
)  # fmt: skip
DEFAULT_PORTS: Mapping[str, int] = MappingProxyType({"http": 80, "https": 443})
_LABEL = re.compile(r"^[a-z0-9_-]+$")
_LABEL_PATTERN = re.compile(r"^[a-z0-9_*-]+$")
_HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_ENV_PATTERN = re.compile(r"^[A-Za-z0-9_*?]+$")
_PARAM_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
SPEC_CONTEXT_KEY = "opsgate_egress"
_UNKNOWN = object()
_VERDICTS_KEPT = 4096

Loc = tuple[str | int, ...]
Problem = tuple[Loc, str]


# -- hosts --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Target:
    """Where a URL sends a request: the scheme, the host as written (lower case) and the port."""

    scheme: str
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if DEFAULT_PORTS.get(self.scheme) == self.port else f"{host}:{self.port}"


def _normal_host(host: str) -> str:
    """A host as compared: lower case, no trailing dot, IP literals in their canonical form."""
    host = host.lower().removesuffix(".")
    if ":" in host:
        return str(ipaddress.IPv6Address(host))
    if not host or not all(_LABEL.match(label) for label in host.split(".")):
        raise ValueError(
            f"the host {host!r} is not a plain DNS name or IP address (write international names in punycode)"
        )
    return host


def parse_target(url: str) -> Target:
    """The target of an http(s) URL, refusing anything two HTTP clients could read differently."""
    if any(c.isspace() or ord(c) < 32 or c in "\\\x7f" for c in url):
        raise ValueError("the URL holds whitespace, control characters or backslashes")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"not a valid URL: {exc}") from exc
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise ValueError("the URL must start with http:// or https://")
    if "@" in parts.netloc:
        raise ValueError("the URL must not hold user information (user:password@)")
    if not parts.hostname or "%" in parts.netloc:
        raise ValueError("the URL has no plain host name")
    return Target(scheme, _normal_host(parts.hostname), port if port is not None else DEFAULT_PORTS[scheme])


@dataclass(frozen=True, slots=True)
class HostPattern:
    """One allow-list entry: host labels (`*` for one label) and a port (None: the default, -1: any)."""

    text: str
    labels: tuple[str, ...]
    port: int | None

    @classmethod
    def parse(cls, text: str) -> HostPattern:
        entry = text.strip().lower()
        host, port = entry, None
        if entry.startswith("["):
            host, sep, rest = entry[1:].partition("]")
            if not sep or (rest and not rest.startswith(":")):
                raise ValueError(f"{text!r}: write an IPv6 host as [::1] or [::1]:8000")
            port = _pattern_port(rest[1:], text) if rest else None
            return cls(text, (str(ipaddress.IPv6Address(host)),), port)
        if ":" in entry:
            host, _, port_text = entry.rpartition(":")
            port = _pattern_port(port_text, text)
        host = host.removesuffix(".")
        labels = tuple(host.split("."))
        if not host or not all(_LABEL_PATTERN.match(label) for label in labels):
            raise ValueError(
                f"{text!r}: write a host (api.example.com, *.example.com, 10.0.0.5) and an optional :port"
            )
        if labels[-1] == "*" or (len(labels) < 3 and "*" in host):
            raise ValueError(f"{text!r}: a wildcard must leave at least a registered domain (*.example.com)")
        return cls(text, labels, port)

    def matches(self, target: Target) -> bool:
        wanted = DEFAULT_PORTS.get(target.scheme) if self.port is None else self.port
        if wanted not in (-1, target.port):  # -1: any port
            return False
        if ":" in target.host:  # IPv6: exact only
            return self.labels == (target.host,)
        labels = target.host.split(".")
        return len(labels) == len(self.labels) and all(
            fnmatch.fnmatchcase(label, pattern) for label, pattern in zip(labels, self.labels, strict=True)
        )


def _pattern_port(text: str, entry: str) -> int:
    if text == "*":
        return -1
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"{entry!r}: the port must be a number (1-65535) or *")
    return int(text)


# -- the operator's config ---------------------------------------------------------------------------------


class EgressConfig(StrictModel):
    """The `egress` section of config/gateway.yaml."""

    provider_hosts: bool = Field(
        True, description="Allow the API hosts of well-known providers (the list in docs/security.md)."
    )
    hosts: list[str] = Field(
        default_factory=list,
        description="More hosts router deployments may call: host, host:port, host:*, *.domain.",
    )
    api_key_envs: list[str] = Field(
        default_factory=lambda: ["*_API_KEY"],
        description="Environment variables (names or * patterns) a deployment's api_key_env may name.",
    )
    deployment_headers: list[str] = Field(
        default_factory=lambda: ["HTTP-Referer", "X-Title"],
        description="Header names a deployment's headers may set.",
    )
    request_params: list[str] = Field(
        default_factory=list,
        description="Provider-specific request parameters allowed beyond OpenAI's (e.g. top_k, min_p).",
    )
    webhook_hosts: list[str] = Field(
        default_factory=list, description="Hosts alert webhooks may post to (same forms as hosts)."
    )
    webhook_secret_envs: list[str] = Field(
        default_factory=lambda: ["*_HMAC_SECRET", "*_WEBHOOK_SECRET", "*_ALERT_SECRET"],
        description="Environment variables a receiver's secret_env in config/alerts.yaml may name.",
    )

    @field_validator("hosts", "webhook_hosts")
    @classmethod
    def _hosts(cls, value: list[str]) -> list[str]:
        for entry in value:
            HostPattern.parse(entry)
        return value

    @field_validator("api_key_envs", "webhook_secret_envs")
    @classmethod
    def _env_patterns(cls, value: list[str]) -> list[str]:
        for entry in value:
            if not _ENV_PATTERN.match(entry):
                raise ValueError(
                    f"{entry!r}: write an environment variable name, or a pattern like *_API_KEY"
                )
            if entry.upper().startswith(RESERVED_ENV_PREFIX) or entry in ("*", "*_*"):
                raise ValueError(
                    f"{entry!r} would let routers read the gateway's own settings (OPSGATE_*); name the"
                    " provider keys instead, e.g. *_API_KEY"
                )
        return value

    @field_validator("deployment_headers")
    @classmethod
    def _headers(cls, value: list[str]) -> list[str]:
        for entry in value:
            if not _HEADER_NAME.match(entry):
                raise ValueError(f"{entry!r} is not a header name")
            if entry.lower() in NEVER_HEADERS:
                raise ValueError(
                    f"{entry!r} carries credentials or steers the connection: a deployment may never set it"
                )
        return value

    @field_validator("request_params")
    @classmethod
    def _params(cls, value: list[str]) -> list[str]:
        for entry in value:
            if not _PARAM_NAME.match(entry):
                raise ValueError(f"{entry!r}: write a parameter name in lower case (e.g. top_k)")
            if steers_the_call(entry):
                raise ValueError(
                    f"{entry!r} looks like it chooses a host, credential, header, provider, region, callback"
                    " or retry behaviour, which no request may do; only sampling parameters can be allowed"
                )
        return value


# -- the rules, compiled ----------------------------------------------------------------------------------


class Egress:
    """The operator's allow-lists, compiled once. Immutable; shared by adapters, alerts and file checks."""

    def __init__(self, config: EgressConfig | None = None) -> None:
        self.config = config or EgressConfig()
        listed = [*(PROVIDER_HOSTS if self.config.provider_hosts else ()), *self.config.hosts]
        self._hosts = tuple(HostPattern.parse(h) for h in listed)
        self._webhook_hosts = tuple(HostPattern.parse(h) for h in self.config.webhook_hosts)
        self._headers = frozenset(h.lower() for h in self.config.deployment_headers)
        self._verdicts: dict[str, str | object | None] = {}  # url -> problem (None: allowed)
        self._env_verdicts: dict[str, str | None] = {}  # variable name -> problem (None: allowed)
        # deployment (by identity; the object is kept so the id stays its own) -> its problems. Router
        # versions are immutable and few, so each deployment is judged once, not on every request.
        self._deployment_verdicts: dict[tuple[int, str], tuple[Deployment, list[Problem]]] = {}

    @cached_property
    def params(self) -> ParamRules:
        """The request-parameter allow-list with the operator's extra parameters."""
        return ParamRules(self.config.request_params)

    # -- single checks: None when allowed, else what is wrong and what to configure ------------------------

    def url_problem(self, url: str) -> str | None:
        """A router deployment's api_base (or any URL an adapter is about to call). Verdicts are kept:
        this runs on every upstream call, and the URLs come from files, not from callers."""
        verdict = self._verdicts.get(url, _UNKNOWN)
        if verdict is _UNKNOWN:
            verdict = self._url_verdict(url)
            if len(self._verdicts) >= _VERDICTS_KEPT:
                self._verdicts.clear()
            self._verdicts[url] = verdict
        return verdict if isinstance(verdict, str) else None

    def _url_verdict(self, url: str) -> str | None:
        try:
            target = parse_target(url)
        except ValueError as exc:
            return f"{exc}: api_base must be a plain http(s) URL"
        if any(p.matches(target) for p in self._hosts):
            return None
        return (
            f"{target} is not on the operator's egress allow-list; an operator can allow it by adding"
            f" {str(target)!r} to egress.hosts in config/gateway.yaml"
        )

    def default_host_problem(self, provider: str) -> str | None:
        """A deployment without api_base: its provider's default address must be allowed."""
        if provider not in PROVIDER_DEFAULT_HOSTS:
            return (
                f"opsgate does not know where provider {provider!r} is: set api_base to its API's address"
                " (a host on egress.hosts in config/gateway.yaml)"
            )
        default = PROVIDER_DEFAULT_HOSTS[provider]
        if default is None:
            return f"provider {provider!r} has no fixed address: set api_base (e.g. your resource's URL)"
        if "*" in default:
            allowed = self.config.provider_hosts or default in self.config.hosts
        else:
            allowed = self.url_problem(_default_url(default)) is None
        if allowed:
            return None
        return (
            f"provider {provider!r} lives at {default}, which is not on the operator's egress allow-list;"
            f" an operator can allow it by adding {default!r} to egress.hosts in config/gateway.yaml"
        )

    def env_problem(self, name: str) -> str | None:
        try:
            return self._env_verdicts[name]
        except KeyError:
            pass
        problem = self._env_problem(name)
        if len(self._env_verdicts) < _VERDICTS_KEPT:
            self._env_verdicts[name] = problem
        return problem

    def _env_problem(self, name: str) -> str | None:
        return _listed_env_problem(name, self.config.api_key_envs, "a router", "api_key_envs", "key")

    def webhook_secret_problem(self, name: str) -> str | None:
        """A receiver's secret_env in config/alerts.yaml (an author's file): only variables the operator
        allows are read (the operator's own webhooks in config/gateway.yaml are not limited)."""
        return _listed_env_problem(
            name, self.config.webhook_secret_envs, "an alert receiver", "webhook_secret_envs", "secret"
        )

    def header_problem(self, name: str) -> str | None:
        if name.lower() in self._headers and name.lower() not in NEVER_HEADERS:
            return None
        allowed = ", ".join(self.config.deployment_headers) or "none"
        return (
            f"a deployment may not set the header {name!r} (egress.deployment_headers: {allowed}); credentials"
            " come only from api_key_env, and an operator can allow other headers in config/gateway.yaml"
        )

    def webhook_problem(self, url: str) -> str | None:
        try:
            target = parse_target(url)
        except ValueError as exc:
            return f"{exc}: a webhook URL must be a plain http(s) URL"
        if any(p.matches(target) for p in self._webhook_hosts):
            return None
        return (
            f"alerts may not be sent to {target}: add {str(target)!r} to egress.webhook_hosts in"
            " config/gateway.yaml"
        )

    # -- a whole deployment ------------------------------------------------------------------------------

    def deployment_problems(self, deployment: Deployment, kind: str) -> list[Problem]:
        """Everything a network deployment names that the operator has not allowed, with its location."""
        key = (id(deployment), kind)
        known = self._deployment_verdicts.get(key)
        if known is not None and known[0] is deployment:
            return known[1]
        problems = self._deployment_problems(deployment, kind)
        if len(self._deployment_verdicts) >= _VERDICTS_KEPT:
            self._deployment_verdicts.clear()
        self._deployment_verdicts[key] = (deployment, problems)
        return problems

    def _deployment_problems(self, deployment: Deployment, kind: str) -> list[Problem]:
        problems: list[Problem] = []
        if deployment.api_base is not None:
            problem = self.url_problem(deployment.api_base)
            if problem is None and deployment.api_key_env is None:
                problem = _cloud_identity_problem(deployment.provider)
            if problem:
                problems.append((("api_base",), problem))
        else:
            problem = self.default_host_problem(deployment.provider)
            if problem:
                problems.append((("model",), problem))
        if deployment.api_key_env is not None:
            problem = self.env_problem(deployment.api_key_env)
            if problem:
                problems.append((("api_key_env",), problem))
        for name, value in deployment.headers.items():
            problem = self.header_problem(name) or _header_value_problem(value)
            if problem:
                problems.append((("headers", name), problem))
        for found in self.params.problems(deployment.params, "chat" if kind == "chat" else "embedding"):
            problems.append((("params", *found.loc), found.reason))
        return problems


def _header_value_problem(value: str) -> str | None:
    """A header value is one line of visible text: CR, LF or another control character could add headers."""
    if any((ord(c) < 32 and c != "\t") or ord(c) == 127 for c in value):
        return "the header's value holds a line break or another control character; write it on one line"
    return None


def _listed_env_problem(name: str, patterns: Sequence[str], who: str, field: str, what: str) -> str | None:
    listed = any(fnmatch.fnmatchcase(name, p) for p in patterns)
    if listed and _ENV_NAME.match(name) and not name.upper().startswith(RESERVED_ENV_PREFIX):
        return None
    allowed = ", ".join(patterns) or "none"
    return (
        f"the environment variable {name} is not one {who} may name (egress.{field}: {allowed};"
        f" never {RESERVED_ENV_PREFIX}*); keep the {what} in a variable that matches, or an operator adds"
        f" the name to egress.{field} in config/gateway.yaml"
    )


def _cloud_identity_problem(provider: str) -> str | None:
    if provider not in CLOUD_IDENTITY_PROVIDERS:
        return None
    return (
        f"without api_key_env, provider {provider!r} signs its calls with the gateway's cloud identity (its"
        " AWS or Google credentials), which goes only to the provider's own hosts: remove api_base, or name"
        " the key in api_key_env"
    )


def _default_url(host: str) -> str:
    return f"http://{host}" if host.startswith("localhost:") else f"https://{host}"


# -- file checks (sync and start-up) ------------------------------------------------------------------------


def spec_context(egress: Egress) -> dict[str, Any]:
    """The pydantic validation context under which artifact files are checked against the operator's rules."""
    return {SPEC_CONTEXT_KEY: egress}


def egress_in(info: ValidationInfo) -> Egress | None:
    """The rules a file is being checked against; None when a stored version is loaded (its calls are
    checked by the adapters instead)."""
    context = info.context
    if isinstance(context, Mapping):
        egress = context.get(SPEC_CONTEXT_KEY)
        if isinstance(egress, Egress):
            return egress
    return None


def raise_problems(title: str, problems: Sequence[Problem]) -> None:
    """Report problems as one pydantic error with each problem at its own location (file, line, field)."""
    if not problems:
        return
    errors = [
        InitErrorDetails(
            type=PydanticCustomError("egress", "{reason}", {"reason": message}), loc=loc, input=None
        )
        for loc, message in problems
    ]
    raise ValidationError.from_exception_data(title, errors)
