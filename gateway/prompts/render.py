"""Prompt rendering: sandboxed Jinja2 with strict undefined, variables checked against the JSON Schema.

The rendered prompt messages come first, then the caller's own messages.

A template is written by a prompt engineer and fed by callers, so one rendering is bounded
(`limits.render`, docs/security.md "Limits"): wall time, loop iterations, the size of every string,
list or integer it builds, and of its output; it runs off the event loop (`render_messages_async`).
The environment is Jinja's immutable sandbox (no `list.append`, no dunders) with every arithmetic
operator, call, filter, concatenation and loop passing through a budget that raises once a bound is
crossed, before the big value is built where it can be known in advance (`9**(9**8)`, `"x" * 10**9`,
`"x"|center(10**9)`, `"%0999999999d" % 1`) and right after it otherwise.
"""

from __future__ import annotations

import asyncio
import functools
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jinja2 import StrictUndefined, Template, TemplateError, UndefinedError, nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import Namespace
from jsonschema import Draft202012Validator

from gateway.egress.schemas import Unresolvable
from gateway.egress.schemas import validator as schema_validator
from gateway.errors import InvalidRequest
from gateway.limits import RenderLimits

if TYPE_CHECKING:
    from gateway.prompts.spec import PromptSpec  # the spec checks templates with this module

LOOP_GUARD = "opsgate_loop_guard"
# callables whose integer arguments are widths or counts of what they build
WIDTH_METHODS = frozenset({"center", "ljust", "rjust", "zfill", "expandtabs"})
WIDTH_FILTERS = frozenset({"center", "indent", "wordwrap", "truncate", "batch", "slice"})
FORMAT_FILTERS = frozenset({"format"})
_BIG_NUMBER = re.compile(r"\d{7,}")


class RenderLimitExceeded(Exception):
    """A template went past a bound of `limits.render` (turned into a 400 naming the prompt)."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


class Budget:
    """What one rendering may still spend; checked by every guarded operation of the template."""

    __slots__ = ("deadline", "limits", "loops", "max_bits")

    def __init__(self, limits: RenderLimits) -> None:
        self.limits = limits
        self.deadline = time.monotonic() + limits.timeout_s
        self.loops = 0
        self.max_bits = int(limits.max_int_digits * 3.33) + 1

    def tick(self) -> None:
        if time.monotonic() > self.deadline:
            raise RenderLimitExceeded(
                f"the template ran longer than {self.limits.timeout_s} s (limits.render.timeout_s)",
                "template_too_slow",
            )

    def loop(self) -> None:
        self.loops += 1
        if self.loops > self.limits.max_loop_iterations:
            raise RenderLimitExceeded(
                f"the template's loops ran more than {self.limits.max_loop_iterations} iterations"
                " (limits.render.max_loop_iterations)",
                "template_too_large",
            )
        self.tick()

    def too_large(self, what: str) -> RenderLimitExceeded:
        return RenderLimitExceeded(f"the template built {what}", "template_too_large")

    def size(self, n: int) -> None:
        if n > self.limits.max_output_chars:
            raise self.too_large(
                f"a value of {n} characters or items; at most {self.limits.max_output_chars}"
                " (limits.render.max_output_chars)"
            )

    def bits(self, n: int) -> None:
        if n > self.max_bits:
            raise self.too_large(
                f"an integer of more than {self.limits.max_int_digits} digits (limits.render.max_int_digits)"
            )

    def checked(self, value: Any) -> Any:
        """`value`, once it is known to be within bounds."""
        if isinstance(value, str | list | tuple | dict | set | bytes):
            self.size(len(value))
        elif isinstance(value, int) and not isinstance(value, bool):
            self.bits(value.bit_length())
        return value

    def width(self, args: Iterable[Any]) -> None:
        for arg in args:
            if isinstance(arg, int) and not isinstance(arg, bool) and abs(arg) > self.limits.max_output_chars:
                self.size(abs(arg))

    def format_spec(self, text: Any) -> None:
        """A %-format or str.format string asks for no width or precision over the output limit."""
        if isinstance(text, str):
            for digits in _BIG_NUMBER.findall(text):
                self.size(int(digits))


_state = threading.local()


def _budget() -> Budget:
    budget: Budget | None = getattr(_state, "budget", None)
    if budget is None:  # rendering outside `render_template` (e.g. a spec check): default limits
        budget = Budget(RenderLimits())
    return budget


class LimitedCodeGenerator(CodeGenerator):
    """`a ~ b` joins through the environment's guarded join instead of a bare `str.join`."""

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        self.write("environment.limited_join((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


class LimitedEnvironment(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"+", "-", "*", "/", "//", "%", "**"})
    code_generator_class = LimitedCodeGenerator

    def __init__(self, **options: Any) -> None:
        super().__init__(finalize=_finalize, **options)
        self.globals.pop("lipsum", None)  # a text generator with a count argument: nothing a prompt needs
        self.filters = {name: _guarded_filter(name, f) for name, f in self.filters.items()}
        self.filters[LOOP_GUARD] = _loop_guard

    def limited_join(self, parts: Iterable[Any]) -> str:
        budget = _budget()
        budget.tick()
        texts = [str(p) for p in parts]
        budget.size(sum(map(len, texts)))
        return "".join(texts)

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        budget = _budget()
        budget.tick()
        if operator == "**" and _is_int(left) and _is_int(right) and right > 0 and abs(left) > 1:
            budget.bits(right * left.bit_length() - right)
        elif operator == "*":
            if _is_int(left) and _is_int(right):
                budget.bits(left.bit_length() + right.bit_length() - 1)
            elif _is_int(right) and hasattr(left, "__len__"):
                budget.size(len(left) * right)
            elif _is_int(left) and hasattr(right, "__len__"):
                budget.size(len(right) * left)
        elif operator == "%" and isinstance(left, str):
            budget.format_spec(left)
            budget.width(right if isinstance(right, tuple) else (right,))
        return budget.checked(super().call_binop(context, operator, left, right))

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        budget = _budget()
        budget.tick()
        target = getattr(__obj, "__wrapped__", __obj)  # the sandbox wraps str.format at attribute access
        name = getattr(target, "__name__", "")
        owner = getattr(target, "__self__", None)
        if isinstance(owner, str):
            if name in WIDTH_METHODS:
                budget.width([*args, *kwargs.values()])
            elif name in ("format", "format_map"):
                budget.format_spec(owner)
                budget.width([*args, *kwargs.values()])
            elif name == "replace" and len(args) >= 2:
                _check_replace(budget, owner, args[0], args[1])
            elif name == "join" and args:
                _check_join(budget, owner, args[0])
        return budget.checked(super().call(__context, __obj, *args, **kwargs))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_replace(budget: Budget, text: str, old: Any, new: Any) -> None:
    if isinstance(old, str) and isinstance(new, str) and len(new) > len(old):
        count = len(text) + 1 if not old else text.count(old)
        budget.size(len(text) + count * (len(new) - len(old)))


def _check_join(budget: Budget, separator: str, items: Any) -> None:
    if isinstance(items, list | tuple):
        budget.size(len(separator) * len(items) + sum(len(x) if isinstance(x, str) else 20 for x in items))


def _guarded_filter(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(func)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        budget = _budget()
        budget.tick()
        values = [a for a in args if not isinstance(a, Namespace)]
        if name in WIDTH_FILTERS:
            budget.width([*values[1:], *kwargs.values()])
        elif name in FORMAT_FILTERS:
            for value in values:
                budget.format_spec(value)
            budget.width([*values[1:], *kwargs.values()])
        elif name == "replace" and len(values) >= 3 and isinstance(values[-3], str):
            _check_replace(budget, values[-3], values[-2], values[-1])
        elif name == "join" and values:
            items = values[-2] if len(values) >= 2 and isinstance(values[-1], str) else values[-1]
            separator = values[-1] if len(values) >= 2 and isinstance(values[-1], str) else ""
            _check_join(budget, separator, list(items) if isinstance(items, list | tuple) else items)
        return budget.checked(func(*args, **kwargs))

    return guarded


def _loop_guard(iterable: Any) -> Iterator[Any]:
    budget = _budget()
    for item in iterable:
        budget.loop()
        yield item


def _finalize(value: Any) -> Any:
    """Every `{{ expression }}` output is a value within bounds."""
    budget = _budget()
    budget.tick()
    if isinstance(value, str):
        budget.size(len(value))
    return value


@functools.cache
def environment() -> LimitedEnvironment:
    return LimitedEnvironment(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=False)


@functools.lru_cache(maxsize=4096)
def _compile(source: str) -> Template:
    env = environment()
    tree = env.parse(source)
    for loop in tree.find_all(nodes.For):  # every loop counts its iterations against the budget
        loop.iter = nodes.Filter(loop.iter, LOOP_GUARD, [], [], None, None, lineno=loop.lineno)
    return env.from_string(tree)


@functools.lru_cache(maxsize=1024)
def _validator(schema_json: str) -> Draft202012Validator:
    import orjson

    return schema_validator(orjson.loads(schema_json))


def check_variables(spec: PromptSpec, variables: dict[str, Any]) -> None:
    """400 naming the first variable that does not fit the prompt's schema."""
    import orjson

    validator = _validator(orjson.dumps(spec.variables, option=orjson.OPT_SORT_KEYS).decode())
    try:
        errors = sorted(validator.iter_errors(variables), key=lambda e: list(e.absolute_path))
    except Unresolvable as exc:  # a version synced before `$ref`s leaving the schema were refused
        raise InvalidRequest(
            f"prompt {spec.name!r}: its variables schema refers outside itself ({exc}); opsgate never"
            " fetches a schema: sync a version that keeps its definitions under $defs",
            param="model",
            code="invalid_prompt",
        ) from None
    if not errors:
        return
    err = errors[0]
    path = ".".join(str(p) for p in err.absolute_path)
    if err.validator == "required" and isinstance(err.instance, dict):
        missing = [r for r in err.validator_value if r not in err.instance]
        path = ".".join(filter(None, [path, missing[0] if missing else ""]))
        message = f"prompt variable {path!r} is required by prompt {spec.name!r}"
    elif err.validator == "additionalProperties":
        message = f"prompt {spec.name!r}: {err.message}"
    else:
        message = f"prompt variable {path!r}: {err.message}"
    raise InvalidRequest(
        message,
        param=f"prompt_variables.{path}" if path else "prompt_variables",
        code="invalid_prompt_variables",
    )


def render_template(
    source: str, values: dict[str, Any], *, where: str, limits: RenderLimits | None = None
) -> str:
    """The template rendered within `limits` (default: the documented defaults); a 400 naming `where`
    for any failure of the template, never a 500."""
    budget = Budget(limits or RenderLimits())
    previous = getattr(_state, "budget", None)
    _state.budget = budget
    try:
        out: list[str] = []
        size = 0
        for piece in _compile(source).generate(**values):
            size += len(piece)
            budget.size(size)
            out.append(piece)
        return "".join(out)
    except UndefinedError as exc:
        raise InvalidRequest(
            f"{where}: the template uses a value that was not given ({exc.message}); pass it in prompt_variables",
            param="prompt_variables",
            code="missing_prompt_variable",
        ) from exc
    except RenderLimitExceeded as exc:
        raise InvalidRequest(f"{where}: {exc}", param="model", code=exc.code) from exc
    except SecurityError as exc:
        raise InvalidRequest(
            f"{where}: the template did something unsafe: {exc}", param="model", code="unsafe_template"
        ) from exc
    except TemplateError as exc:
        raise InvalidRequest(
            f"{where}: the template failed: {exc}", param="model", code="template_error"
        ) from exc
    except (
        ArithmeticError,
        ValueError,
        TypeError,
        LookupError,
        AttributeError,
        RecursionError,
        MemoryError,
    ) as exc:
        # a template computing on the values it was given (1/0, int("x"), a missing key): the prompt's
        # fault or the variables', not the gateway's
        raise InvalidRequest(
            f"{where}: the template failed: {type(exc).__name__}: {str(exc)[:200]}",
            param="model",
            code="template_error",
        ) from exc
    finally:
        _state.budget = previous


def render_messages(
    spec: PromptSpec,
    variables: dict[str, Any],
    *,
    templates: dict[str, str] | None = None,
    context: list[dict[str, Any]] | None = None,
    limits: RenderLimits | None = None,
) -> list[dict[str, Any]]:
    """The prompt's messages rendered with the variables (and retrieved `context`, for RAG prompts).

    `templates` holds the text of file templates by their path (stored with the version).
    """
    check_variables(spec, variables)
    values = {**variables, "context": context or []}
    out: list[dict[str, Any]] = []
    for i, message in enumerate(spec.messages):
        source = message.content if message.content is not None else (templates or {}).get(message.file or "")
        if source is None:
            raise InvalidRequest(
                f"prompt {spec.name!r}: template file {message.file!r} is missing from the version"
            )
        out.append(
            {
                "role": message.role,
                "content": render_template(
                    source, values, where=f"prompt {spec.name!r} message {i}", limits=limits
                ),
            }
        )
    return out


async def render_messages_async(
    spec: PromptSpec,
    variables: dict[str, Any],
    *,
    templates: dict[str, str] | None = None,
    context: list[dict[str, Any]] | None = None,
    limits: RenderLimits | None = None,
) -> list[dict[str, Any]]:
    """`render_messages` in a worker thread: a slow template (bounded by `limits.timeout_s`) holds no
    other request, and the event loop keeps answering (/healthz included) while it runs."""
    return await asyncio.to_thread(
        render_messages, spec, variables, templates=templates, context=context, limits=limits
    )


def read_template_files(spec: PromptSpec, prompts_dir: Path) -> dict[str, str]:
    return {f: (prompts_dir / f).read_text(encoding="utf-8") for f in spec.referenced_files()}
