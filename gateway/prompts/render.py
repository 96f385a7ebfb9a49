"""Prompt rendering: sandboxed Jinja2 with strict undefined, variables checked against the JSON Schema.

The rendered prompt messages come first, then the caller's own messages.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jinja2 import StrictUndefined, Template, TemplateError, UndefinedError
from jinja2.exceptions import SecurityError
from jinja2.sandbox import SandboxedEnvironment
from jsonschema import Draft202012Validator

from gateway.errors import InvalidRequest

if TYPE_CHECKING:
    from gateway.prompts.spec import PromptSpec  # the spec checks templates with this module


@functools.cache
def environment() -> SandboxedEnvironment:
    return SandboxedEnvironment(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=False)


@functools.lru_cache(maxsize=4096)
def _compile(source: str) -> Template:
    return environment().from_string(source)


@functools.lru_cache(maxsize=1024)
def _validator(schema_json: str) -> Draft202012Validator:
    import orjson

    return Draft202012Validator(orjson.loads(schema_json))


def check_variables(spec: PromptSpec, variables: dict[str, Any]) -> None:
    """400 naming the first variable that does not fit the prompt's schema."""
    import orjson

    validator = _validator(orjson.dumps(spec.variables, option=orjson.OPT_SORT_KEYS).decode())
    errors = sorted(validator.iter_errors(variables), key=lambda e: list(e.absolute_path))
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


def render_template(source: str, values: dict[str, Any], *, where: str) -> str:
    try:
        return _compile(source).render(**values)
    except UndefinedError as exc:
        raise InvalidRequest(
            f"{where}: the template uses a value that was not given ({exc.message}); pass it in prompt_variables",
            param="prompt_variables",
            code="missing_prompt_variable",
        ) from exc
    except SecurityError as exc:
        raise InvalidRequest(
            f"{where}: the template did something unsafe: {exc}", code="unsafe_template"
        ) from exc
    except TemplateError as exc:
        raise InvalidRequest(f"{where}: the template failed: {exc}", code="template_error") from exc


def render_messages(
    spec: PromptSpec,
    variables: dict[str, Any],
    *,
    templates: dict[str, str] | None = None,
    context: list[dict[str, Any]] | None = None,
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
                "content": render_template(source, values, where=f"prompt {spec.name!r} message {i}"),
            }
        )
    return out


def read_template_files(spec: PromptSpec, prompts_dir: Path) -> dict[str, str]:
    return {f: (prompts_dir / f).read_text(encoding="utf-8") for f in spec.referenced_files()}
