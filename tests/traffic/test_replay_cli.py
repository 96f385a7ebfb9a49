"""`opsgate logs replay` and `opsgate eval dataset from-logs` on a real gateway's stored traffic."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest

from tests.conftest import GatewayFactory, ProjectFactory
from tests.fakes.gateway import FAST_GATEWAY_YAML, GatewayProcess, commit_project, deployment
from tests.fakes.upstream import FakeUpstream

GREET = """\
name: greet
router: echo
messages:
  - role: system
    content: "You greet {{ name }} warmly."
"""


@pytest.fixture(scope="module")
def gw(
    project_factory: ProjectFactory, gateway_factory: GatewayFactory, fake_upstream: FakeUpstream
) -> Iterator[GatewayProcess]:
    routers: dict[str, Any] = {"echo": {"deployments": [deployment("up", fake_upstream.url("ok"))]}}
    files = {
        "config/gateway.yaml": FAST_GATEWAY_YAML + "traffic:\n  prompts: [greet]\n",
        "prompts/greet.yaml": GREET,
    }
    with gateway_factory(project_factory(routers=routers, files=files)) as gateway:
        yield gateway


def greet(gw: GatewayProcess, name: str, question: str) -> str:
    raw = gw.client().chat.completions.with_raw_response.create(
        model="greet",
        messages=[{"role": "user", "content": question}],
        extra_body={"prompt_variables": {"name": name}},
    )
    raw.parse()
    request_id = raw.headers["x-opsgate-request-id"]
    gw.log_row(request_id)
    return request_id


def test_replay_shows_versions_request_and_what_moved_on(gw: GatewayProcess) -> None:
    request_id = greet(gw, "Ada", "hello, write to ada@example.org")
    report = orjson.loads(gw.cli("logs", "replay", request_id, "--json").stdout)
    assert [v.split("#")[0] for v in report["versions"]] == ["prompt:greet@1", "router:echo@1"]
    assert report["target"] == "prompt:greet@1" and report["deployment"] == "up"
    sent = report["upstream_request"]["messages"]
    assert sent[0] == {"role": "system", "content": "You greet Ada warmly."}
    assert "ada@example.org" not in orjson.dumps(report).decode()  # stored redacted
    assert report["moved_on"] == []
    project = gw.project_dir
    (project / "prompts" / "greet.yaml").write_text(GREET.replace("warmly", "briefly"), encoding="utf-8")
    commit_project(project, "greet briefly")
    gw.cli("sync", key=gw.admin_key)
    report = orjson.loads(gw.cli("logs", "replay", request_id, "--json").stdout)
    assert "prompt:greet@1: newest version is now @2" in report["moved_on"]
    replayed = orjson.loads(
        gw.cli(
            "logs", "replay", request_id, "--send", "--to", "prompt:greet@2", "--url", gw.root_url, "--json",
            key=gw.admin_key,
        ).stdout
    )  # fmt: skip
    assert replayed["replay"]["versions"].startswith("prompt:greet@2#")
    assert replayed["replay"]["answer"] == "echo: hello, write to [REDACTED:EMAIL]"
    assert (
        replayed["answer"] == replayed["replay"]["answer"] and replayed["diff"] == []
    )  # echo ignores system


def test_replay_of_an_unstored_call_says_why(gw: GatewayProcess) -> None:
    raw = gw.client().chat.completions.with_raw_response.create(
        model="echo", messages=[{"role": "user", "content": "not stored"}]
    )
    request_id = raw.headers["x-opsgate-request-id"]
    gw.log_row(request_id)
    done = gw.cli("logs", "replay", request_id, check=False)
    assert done.returncode != 0 and "was not stored" in done.stderr


def test_dataset_from_logs(gw: GatewayProcess, tmp_path: Path) -> None:
    ids = [greet(gw, f"user{i}", f"question {i} from bob@example.com") for i in range(4)]
    out = tmp_path / "greet.jsonl"
    done = gw.cli(
        "eval",
        "dataset",
        "from-logs",
        "--prompt",
        "greet",
        "--since",
        "1h",
        "--sample",
        "3",
        "--out",
        str(out),
    )
    assert "wrote 3 cases" in done.stdout
    lines = [orjson.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 3 and len({line["id"] for line in lines}) == 3
    assert len(set(ids) & {line["id"] for line in lines}) >= 2  # 4 of the module's 5 greet calls are these
    for line in lines:
        assert line["question"].endswith("[REDACTED:EMAIL]")
        assert line["answer"] == "echo: " + line["question"]
        assert line["variables"]["name"].startswith(("user", "Ada"))
        assert line["metadata"]["versions"][0].startswith("prompt:greet@")
    assert "bob@example.com" not in out.read_text()
    again = tmp_path / "again.jsonl"
    gw.cli(
        "eval",
        "dataset",
        "from-logs",
        "--prompt",
        "greet",
        "--since",
        "1h",
        "--sample",
        "3",
        "--out",
        str(again),
    )
    assert again.read_text() == out.read_text()  # a seeded sample: the same cases


def test_an_app_key_cannot_read_the_dataset_calls_through_the_api(gw: GatewayProcess) -> None:
    from tests.policy.conftest import make_key

    request_id = greet(gw, "Eve", "mine")
    stored_id = "chatcmpl-" + request_id.removeprefix("req_")
    with pytest.raises(openai.NotFoundError):
        gw.client(api_key=make_key(gw, "app:other")).chat.completions.retrieve(stored_id)
    assert gw.client().chat.completions.retrieve(stored_id).id == stored_id
