"""The README's first example, run as written against a real gateway on its embedded defaults.

(The RAG section's example is run by tests/retrieval/test_readme.py.)"""

from __future__ import annotations

import contextlib
import io
import re

from tests.fakes.gateway import REPO, GatewayProcess


def test_readme_first_example_prints_what_the_readme_says(spine_gateway: GatewayProcess) -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    first_screen = readme.split("\n## ", 1)[0]
    assert "make serve" in first_screen and "make test" in first_screen
    code, printed = re.findall(r"```(?:python)?\n(.*?)```", first_screen, flags=re.S)[1:3]
    code = code.replace('"http://127.0.0.1:8080/v1"', repr(spine_gateway.base_url))
    code = code.replace('Path(".opsgate/admin.key")', f"Path({str(spine_gateway.data_dir / 'admin.key')!r})")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), {})
    assert out.getvalue().strip() == printed.strip()
