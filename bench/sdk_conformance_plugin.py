"""pytest plugin for bench/sdk_conformance.py: the SDK's test clients use opsgate's key.

An SDK's generated tests build their clients in their `tests/conftest.py` from a module-level dummy key
(`api_key = "My API Key"`); opsgate keys are at least 16 characters, so the dummy cannot be imported as
one. Once the conftest is loaded, its `api_key` is set to `OPSGATE_CONFORMANCE_KEY`; nothing else of the
SDK's tests changes.
"""

from __future__ import annotations

import os
import sys

import pytest


@pytest.hookimpl(tryfirst=True)
def pytest_collection_finish(session: pytest.Session) -> None:
    key = os.environ["OPSGATE_CONFORMANCE_KEY"]
    for name, module in list(sys.modules.items()):
        if name.endswith("conftest") and hasattr(module, "api_key"):
            module.api_key = key
