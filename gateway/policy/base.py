"""The shapes a check works with: the text it may read or rewrite, who is calling, and what it found.

A check never raises and never touches the request log itself: it returns a `Finding` (or `Charge`s
for counted limits), and the pipeline records the decision, counts it and raises the finding's error.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, Literal, Protocol, TypeVar

from pydantic import Field

from gateway.errors import OpsgateError
from gateway.tokens_cost import Prices
from gateway.yamlspec import StrictModel

Stage = Literal["input", "query", "context", "output"]
Verdict = Literal["allowed", "blocked", "redacted", "flagged", "error"]
STAGES: tuple[Stage, ...] = ("input", "context", "output")


class CheckConfig(StrictModel):
    """Base of every check's config block; each check narrows `type` to a Literal (the discriminator)."""

    type: str
    id: str | None = Field(
        None,
        pattern=r"^[a-zA-Z0-9_-]{1,64}$",
        description="Tells two checks of one type in a rule apart (counters are named by rule and id).",
    )

    @property
    def label(self) -> str:
        return self.id or self.type


@dataclass(slots=True)
class Slot:
    """One piece of text of a request or answer, read and rewritten in place as `container[key]`."""

    where: str  # "messages[1]", "input[0]", "context[doc-3]", "choices[0]"
    role: str  # system, user, assistant, tool, variable, context, input, output
    container: Any  # the dict or list that holds the text
    key: Any
    upstream: bool = True  # False: a read-only view (e.g. prompt variables, already rendered upstream)

    @property
    def text(self) -> str:
        value = self.container[self.key]
        return value if isinstance(value, str) else ""

    def replace(self, text: str) -> None:
        self.container[self.key] = text


LARGE_TEXT = 64 * 1024  # characters: tiktoken takes ~5 ms on this much, up to ~1 s per MB on one word


@dataclass(slots=True)
class Payload:
    """What a request sends (or an answer returns), whatever its endpoint: chat, embeddings, ML records."""

    kind: str  # chat | embedding | ml | output
    slots: list[Slot]
    model: str = ""  # the litellm-style model string that picks the tokenizer
    prices: Prices | None = None  # the dearest deployment's prices: estimates never undercount
    body: dict[str, Any] | None = None  # the upstream body, for max_tokens and response_format
    token_counter: Callable[[], int] | None = None
    _tokens: int | None = None

    def input_tokens(self) -> int:
        if self._tokens is None:
            self._tokens = self.token_counter() if self.token_counter is not None else 0
        return self._tokens

    def changed(self) -> None:
        """A check rewrote some text: counts made before are stale."""
        self._tokens = None

    def uncounted_and_large(self) -> bool:
        """Whether counting the input tokens now would take long enough to hold the event loop."""
        return (
            self._tokens is None
            and self.token_counter is not None
            and sum(len(slot.text) for slot in self.slots) > LARGE_TEXT
        )

    def max_output_tokens(self) -> int | None:
        if self.body is None:
            return None
        for name in ("max_completion_tokens", "max_tokens"):
            value = self.body.get(name)
            if isinstance(value, int) and not isinstance(value, bool):
                return value
        return None


class Lineage(Protocol):
    """A version in a request's lineage (gateway.shapes.ArtifactRef)."""

    kind: str
    name: str


class PolicyCall(Protocol):
    """What the pipeline reads and writes on a request (gateway.flow.call.Call implements it)."""

    principal: Any
    artifacts: Any  # a sequence of Lineage
    decisions: list[dict[str, Any]]
    extra: dict[str, Any]
    policy: Any  # the pipeline's own state between its hooks
    tokens_in: int | None
    tokens_out: int | None
    cost: float | None


@dataclass(frozen=True, slots=True)
class Subject:
    """Who calls what: the facts rules match on."""

    key_id: str
    principal: str
    roles: frozenset[str]
    targets: tuple[tuple[str, str], ...]  # (kind, name): router, prompt, index, model
    route: str

    def names(self, kind: str) -> list[str]:
        return [name for k, name in self.targets if k == kind]

    @classmethod
    def of(cls, principal: Any, targets: tuple[tuple[str, str], ...], route: str) -> Subject:
        """`principal` is a gateway.keys.Principal, or None before authentication."""
        if principal is None:
            return cls("", "", frozenset(), targets, route)
        return cls(principal.key_id, principal.principal, principal.roles, targets, route)


@dataclass(slots=True)
class Finding:
    """What a check concluded. `error` is raised for a block on input (the pipeline raises it)."""

    verdict: Verdict
    matched: str = ""
    error: OpsgateError | None = None
    count: int = 0


@dataclass(slots=True)
class Charge:
    """One counter a request draws on: a rate bucket (`rate`) or a spend ledger (`budget`).

    Rate: `limit` units per `window_s`, burst up to `limit`; `amount` units now. Budget: `limit` and
    `amount` in nano-USD against a ledger that resets at `period_end` (epoch seconds).
    """

    counter: str
    kind: Literal["rate", "budget"]
    limit: int
    amount: int
    window_s: float = 60.0
    period_end: float = 0.0
    soft: bool = False  # flag mode: counted, never refused
    what: str = ""  # for messages: "requests per minute per key"
    owner: int = 0  # index of the check that made it (set by the pipeline)


@dataclass(slots=True)
class Refusal:
    charge: Charge
    retry_after_s: float


@dataclass(slots=True)
class Grant:
    """The store's answer: the first hard refusal (if any) and the soft charges that went over."""

    refusal: Refusal | None = None
    over: list[Charge] = field(default_factory=list)
    error: str | None = None  # the store failed (e.g. Redis down)


C = TypeVar("C", bound=CheckConfig)


class PolicyCheck(Generic[C]):
    """Base of every check. Override only the stages the check takes part in.

    `phase` orders checks within a request: access (0), content (10-30) before token caps and counted
    limits (50+), so text is redacted before it is counted and nothing is charged for a request refused
    by a content check. Declared properties tell the pipeline how to treat a check (no check is special-
    cased by its type):

        stage              "authorise": runs on who calls what alone, before any work (access rules);
                           "admit": runs on the request as it will go upstream
        screens_query      also runs on the caller's text before it becomes a retrieval query
        tracks_spend       the request's cost is counted in the key's and principal's ledgers
        needs_full_answer  on a streamed answer, runs once on the whole text at the end
        counts_tokens      reads the request's input token count (counted off the event loop first
                           when the text is large: tiktoken takes seconds on 4 MB)
    """

    type: ClassVar[str]
    config_model: ClassVar[builtins.type[CheckConfig]]
    phase: ClassVar[int] = 20
    stage: ClassVar[Literal["authorise", "admit"]] = "admit"
    screens_query: ClassVar[bool] = False  # also run on the retrieval query (an embedder may be remote)
    tracks_spend: ClassVar[bool] = False
    needs_full_answer: ClassVar[bool] = False
    counts_tokens: ClassVar[bool] = False

    def __init__(self, config: C, rule: str) -> None:
        self.config = config
        self.rule = rule

    @property
    def name(self) -> str:
        return self.config.label

    def check_input(self, subject: Subject, payload: Payload) -> Finding | None:
        return None

    def admission_charges(self, subject: Subject) -> list[Charge]:
        """Counted limits that need no token count (requests per minute): taken before any work when
        the request will do some (retrieval), else with the other charges."""
        return []

    def charges(self, subject: Subject, payload: Payload) -> list[Charge]:
        """Counted limits that need the request's tokens or cost."""
        return []

    def refused(self, refusal: Refusal) -> OpsgateError:
        raise NotImplementedError(f"{type(self).__name__} made a charge but cannot explain its refusal")

    def check_context(self, subject: Subject, slot: Slot) -> Finding | None:
        return None

    def check_output(self, subject: Subject, payload: Payload, request: Payload | None) -> Finding | None:
        return None

    def scanner(self, subject: Subject) -> Scanner | None:
        """For streamed answers: what to look for in the text, and what to do on a hit."""
        return None

    def actual(self, charge: Charge, usage: Usage) -> int | None:
        """The true amount of a charge once the call is over (None: the estimate stands)."""
        return None


@dataclass(frozen=True, slots=True)
class Usage:
    """What a finished call really used (zeros when it never reached an upstream)."""

    tokens_in: int
    tokens_out: int
    cost_usd: float


@dataclass(frozen=True, slots=True)
class Hit:
    start: int
    end: int
    kind: str


class Scanner:
    """Finds spans in text for streamed output. `action`: redact (replace), block (stop) or flag."""

    action: Literal["redact", "block", "flag"]
    holdback: int = 64  # the longest hit that may contain whitespace; runs without it are held whole

    def find(self, text: str) -> list[Hit]:
        raise NotImplementedError

    def replacement(self, hit: Hit) -> str:
        return ""
