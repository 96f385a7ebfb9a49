"""Follow one streaming RAG request through the code and count where it goes.

    .venv/bin/python bench/request_path_map.py [--project DIR]

Runs the gateway in process on a copy of this repository's project (the demo `docs_qa` prompt over the
`docs` index, the embedded local provider), warms it up with one request, then traces one streaming
`docs_qa` request made with an application key (`sys.setprofile` in every thread). It prints:

- files: the distinct gateway/ source files the request executed code in;
- hops: calls from one gateway/ file into another, every time (per-chunk calls of a stream count once
  per chunk), and distinct (how many different cross-file call sites a reader follows);
- entries into each of the busiest files from other files (distinct caller -> callee functions);
- the policy pipeline's entry points: functions of gateway/policy/pipeline.py called from other files,
  and from how many files.

Point PYTHONPATH at another checkout to measure it the same way (the script uses only create_app,
Settings and KeyService).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from types import FrameType
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def project_copy(root: Path) -> Path:
    project = root / "project"
    for part in ("config", "prompts", "docs"):
        shutil.copytree(REPO / part, project / part, ignore=shutil.ignore_patterns("models"))
    # the first start registers committed files only: make the copy a repository of its own
    git = ["git", "-C", str(project), "-c", "user.name=bench", "-c", "user.email=bench@localhost"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "bench project"], check=True)
    return project


async def run(project: Path, data: Path) -> dict[str, Any]:
    import httpx2

    import gateway
    from gateway.app import create_app
    from gateway.keys import KeyService
    from gateway.settings import Settings

    package = Path(gateway.__file__).resolve().parent
    settings = Settings(project_dir=project, data_dir=data)
    app = create_app(settings)
    body = {
        "model": "docs_qa",
        "stream": True,
        "messages": [{"role": "user", "content": "What is an alias?"}],
    }
    async with app.router.lifespan_context(app):
        _, key = KeyService(app.state.parts.engine).create(name="bench-app", roles=["app"], actor="bench")
        await asyncio.sleep(1.0)  # the catalog picks the key up
        transport = httpx2.ASGITransport(app=app)
        async with httpx2.AsyncClient(transport=transport, base_url="http://gw") as client:
            headers = {"Authorization": f"Bearer {key}"}

            async def ask() -> None:
                async with client.stream("POST", "/v1/chat/completions", json=body, headers=headers) as r:
                    assert r.status_code == 200, await r.aread()
                    async for _ in r.aiter_bytes():
                        pass

            await ask()  # warm: tokenizers, index, query model
            await asyncio.sleep(0.5)
            calls: list[tuple[str, str, str, str]] = []  # caller file and function, callee file and function

            def profile(frame: FrameType, event: str, arg: Any) -> None:
                if event != "call":
                    return
                callee = frame.f_code.co_filename
                if not callee.startswith(str(package)):
                    return
                back = frame.f_back
                caller = back.f_code.co_filename if back is not None else ""
                caller_fn = back.f_code.co_name if back is not None else ""
                calls.append((caller, caller_fn, callee, frame.f_code.co_name))

            threading.setprofile(profile)
            sys.setprofile(profile)
            try:
                await ask()
            finally:
                sys.setprofile(None)
                threading.setprofile(None)  # type: ignore[arg-type]
    return summarise(calls, package)


def summarise(calls: list[tuple[str, str, str, str]], package: Path) -> dict[str, Any]:
    def rel(path: str) -> str:
        return str(Path(path).resolve().relative_to(package.parent)) if path.startswith(str(package)) else ""

    files = sorted({rel(callee) for _, _, callee, _ in calls})
    sites: set[tuple[str, str, str, str]] = set()
    entries: collections.defaultdict[str, set[tuple[str, str, str]]] = collections.defaultdict(set)
    pipeline: set[str] = set()
    pipeline_callers: set[str] = set()
    hops = 0
    for caller, caller_fn, callee, func in calls:
        src, dst = rel(caller), rel(callee)
        if src == dst:
            continue
        hops += 1
        sites.add((src, caller_fn, dst, func))
        entries[dst].add((src, caller_fn, func))
        if dst == "gateway/policy/pipeline.py" and src and func != "<lambda>":
            pipeline.add(func)
            pipeline_callers.add(src)
    busiest = sorted(((len(v), k) for k, v in entries.items()), reverse=True)[:8]
    return {
        "files": files,
        "hops": hops,
        "distinct_hops": len(sites),
        "entries": [(k, n) for n, k in busiest],
        "pipeline": sorted(pipeline),
        "pipeline_callers": sorted(pipeline_callers),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.parse_args()
    from gateway.offline import apply_offline_env

    apply_offline_env()
    with tempfile.TemporaryDirectory(prefix="opsgate-map-") as tmp:
        root = Path(tmp)
        found = asyncio.run(run(project_copy(root), root / "data"))
    print(f"files executed: {len(found['files'])}")
    for name in found["files"]:
        print(f"  {name}")
    print(f"hops between files: {found['hops']} ({found['distinct_hops']} distinct call sites)")
    print("entries from other files (distinct caller -> callee functions, busiest files):")
    for name, count in found["entries"]:
        print(f"  {count:5d}  {name}")
    pipeline, callers = found["pipeline"], found["pipeline_callers"]
    print(f"policy pipeline entry points: {len(pipeline)} from {len(callers)} file(s): {', '.join(pipeline)}")
    print(f"  called from: {', '.join(callers)}")


if __name__ == "__main__":
    main()
