"""Each docs/api-*.md page's example, run as written against a real gateway on the repo's defaults, prints
the output the page shows."""

from __future__ import annotations

import contextlib
import io
import re

import pytest

from tests.fakes.gateway import REPO, GatewayProcess

PAGES = ["api-responses.md", "api-messages.md", "api-completions.md", "api-stored-completions.md"]


@pytest.mark.parametrize("page", PAGES)
def test_the_page_example_prints_what_the_page_shows(spine_gateway: GatewayProcess, page: str) -> None:
    text = (REPO / "docs" / page).read_text(encoding="utf-8")
    example = text.split("## Example", 1)[1]
    code, printed = re.findall(r"```(?:python)?\n(.*?)```", example, flags=re.S)[:2]
    code = code.replace('"http://127.0.0.1:8080/v1"', repr(spine_gateway.base_url))
    code = code.replace('"http://127.0.0.1:8080"', repr(spine_gateway.root_url))
    code = code.replace('Path(".opsgate/admin.key")', f"Path({str(spine_gateway.data_dir / 'admin.key')!r})")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, page, "exec"), {})
    assert out.getvalue().strip() == printed.strip(), out.getvalue()
