"""Run an official SDK's own generated API tests against a real opsgate (docs/api-conformance.md).

The SDKs' repositories test every operation of their API reference against a mock server whose base URL
they read from `TEST_API_BASE_URL` (openai-python, anthropic-sdk-python: `tests/api_resources/`). Pointed
at opsgate instead, they check the request shapes opsgate accepts and the answers it gives, with the
SDK's strict response validation. This script:

1. starts the fake OpenAI-compatible upstream (tests/fakes/upstream.py, `ok` mode: it echoes) and a real
   `opsgate serve` with one router per model name the tests use (chat routers, and an embedding router
   for `text-embedding-3-small`);
2. runs pytest on the SDK checkout's test files (its own Python files, read and run in place: nothing of
   them is copied here), with `TEST_API_BASE_URL` on the gateway and the gateway's admin key put in
   place of the tests' dummy key (the plugin below; their key is shorter than opsgate's 16 characters);
3. prints, per test file, passed / total, and writes the failures (test id and first error line) to
   `--failures`.

    # a checkout of the SDK at the pinned version (pyproject.toml: openai==3.3.0)
    git clone <openai-python> /tmp/oai && git -C /tmp/oai checkout v3.3.0
    .venv/bin/python bench/sdk_conformance.py --sdk openai --checkout /tmp/oai
    .venv/bin/python bench/sdk_conformance.py --sdk anthropic --checkout /tmp/anthropic

The SDK's tests run on the project's Python (it has the pinned clients, pytest, pytest-asyncio); the
anthropic SDK's conftest also imports test-only packages, installed apart and named with --extra-path:

    .venv/bin/pip install --no-deps --target /tmp/sdkdeps inline-snapshot executing asttokens \
        http-snapshot dirty-equals
    .venv/bin/python bench/sdk_conformance.py --sdk anthropic --checkout /tmp/anthropic \
        --extra-path /tmp/sdkdeps
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway.offline import apply_offline_env

apply_offline_env()

from tests.fakes.gateway import FAST_GATEWAY_YAML, GatewayProcess, build_project, deployment  # noqa: E402
from tests.fakes.upstream import FakeUpstream  # noqa: E402

BENCH = Path(__file__).resolve().parent

SUITES: dict[str, dict[str, Any]] = {
    "openai": {
        "files": [
            "tests/api_resources/chat/test_completions.py",
            "tests/api_resources/chat/completions/test_messages.py",
            "tests/api_resources/test_completions.py",
            "tests/api_resources/test_responses.py",
            "tests/api_resources/responses/test_input_items.py",
            "tests/api_resources/test_embeddings.py",
            "tests/api_resources/test_models.py",
            "tests/api_resources/test_conversations.py",
            "tests/api_resources/conversations/test_items.py",
        ],
        "chat": [
            "gpt-4o",
            "gpt-4o-mini",
            "gpt-5.1",
            "gpt-5.4",
            "gpt-5.6-sol",
            "model",
            "gpt-3.5-turbo-instruct",
        ],
        "embedding": ["text-embedding-3-small"],
        "base": "/v1",
    },
    "anthropic": {
        "files": ["tests/api_resources/test_messages.py"],
        "chat": [],  # filled from the test files' model names
        "embedding": [],
        "base": "",
    },
}
GATEWAY_YAML = FAST_GATEWAY_YAML


def model_names(checkout: Path, files: list[str]) -> list[str]:
    """Model names the test files send (`model="..."`), so each gets a router."""
    import re

    names: set[str] = set()
    for rel in files:
        path = checkout / rel
        for file in [path] if path.is_file() else sorted(path.rglob("test_*.py")):
            names.update(re.findall(r'model="([A-Za-z0-9][A-Za-z0-9._-]*)"', file.read_text()))
    return sorted(names)


def run(sdk: str, checkout: Path, python: str, failures_file: Path, keep: str | None, extra_path: str) -> int:
    suite = SUITES[sdk]
    files = [f for f in suite["files"] if (checkout / f).exists()]
    chat = sorted(set(suite["chat"]) | set(model_names(checkout, files)) - set(suite["embedding"]))
    upstream = FakeUpstream().start()
    routers: dict[str, Any] = {name: {"deployments": [deployment("up", upstream.url("ok"))]} for name in chat}
    routers |= {
        name: {"kind": "embedding", "deployments": [deployment("up", upstream.url("ok"))]}
        for name in suite["embedding"]
    }
    root = Path(tempfile.mkdtemp(prefix=f"opsgate-{sdk}-conformance-"))
    project = build_project(root / "project", routers, {"config/gateway.yaml": GATEWAY_YAML})
    junit = root / "junit.xml"
    with GatewayProcess(project, data_dir=root / "data").start() as gw:
        env = dict(os.environ)
        env.update(
            TEST_API_BASE_URL=gw.root_url + suite["base"],
            OPSGATE_CONFORMANCE_KEY=gw.admin_key,
            # the plugin (and the SDK's test-only packages): the SDK's own `tests` package must win
            PYTHONPATH=os.pathsep.join(p for p in (str(BENCH), extra_path) if p),
            NO_PROXY="*",
        )
        for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "all_proxy"):
            env.pop(name, None)
        command = [python, "-m", "pytest", "-q", "-o", "addopts=", "-p", "no:cacheprovider"]
        command += ["-p", "sdk_conformance_plugin", "-k", keep or "", f"--junitxml={junit}", *files]
        subprocess.run(command, cwd=checkout, env=env, check=False, capture_output=True)
    upstream.stop()
    return report(junit, failures_file)


def report(junit: Path, failures_file: Path) -> int:
    per_file: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    failed: list[str] = []
    for case in ET.parse(junit).getroot().iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        parts = str(case.get("classname")).split(".")
        counts = per_file[".".join(parts[:-1] if parts[-1].startswith("Test") else parts)]
        problem = case.find("failure")
        if problem is None:
            problem = case.find("error")
        if case.find("skipped") is not None:
            continue
        counts[1] += 1
        if problem is None:
            counts[0] += 1
        else:
            first = (problem.get("message") or "").splitlines()[0][:300] if problem.get("message") else "?"
            failed.append(f"{name}\t{first}")
    failures_file.write_text("\n".join(failed) + "\n", encoding="utf-8")
    passed = sum(c[0] for c in per_file.values())
    total = sum(c[1] for c in per_file.values())
    for module, (ok, count) in sorted(per_file.items()):
        print(f"{module:<58} {ok:4d} / {count:4d}")
    print(f"{'total':<58} {passed:4d} / {total:4d}")
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sdk", choices=sorted(SUITES), default="openai")
    parser.add_argument("--checkout", type=Path, required=True, help="the SDK repository at the pinned tag")
    parser.add_argument("--python", default=sys.executable, help="the Python that runs the SDK's tests")
    parser.add_argument("--failures", type=Path, default=Path("/tmp/sdk-conformance-failures.txt"))
    parser.add_argument("-k", dest="keep", default=None, help="pytest -k expression (a subset)")
    parser.add_argument(
        "--extra-path", default="", help="a folder with the SDK's test-only packages (pip install --target)"
    )
    args = parser.parse_args()
    sys.exit(run(args.sdk, args.checkout.resolve(), args.python, args.failures, args.keep, args.extra_path))


if __name__ == "__main__":
    main()
