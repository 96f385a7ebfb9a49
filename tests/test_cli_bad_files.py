"""Bad files through the commands that read them (`opsgate serve`, `sync`, `index build`): one
`path:line: field: problem` line each, never a traceback; serve exits 2 as for every other file."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.conftest import GatewayFactory, ProjectFactory
from tests.fakes.gateway import Cli, free_port

BAD_INDEX = "name: bad\nsource: {type: files, paths: ['docs/*.md']}\nchunker: {type: tokens, size: 5}\n"
PROBLEM = "config/indexes/bad.yaml:3: chunker.tokens.size: Input should be greater than or equal to 16"


def test_an_invalid_index_file_is_one_line_in_serve_sync_and_index_build(
    make_project: ProjectFactory, cli_for: Callable[..., Cli]
) -> None:
    cli = cli_for(make_project(files={"config/indexes/bad.yaml": BAD_INDEX, "docs/a.md": "# A\nText.\n"}))
    served = cli("serve", "--host", "127.0.0.1", "--port", str(free_port()), timeout=120)
    assert served.returncode == 2
    assert served.stderr.strip().splitlines() == [f"opsgate: {PROBLEM}"]

    key = cli.first_admin_key()
    synced = cli("sync", key=key)
    assert synced.returncode == 1
    assert [ln for ln in synced.stderr.splitlines() if ln.startswith("error")] == [f"error      {PROBLEM}"]
    assert "registered router:default@1" in synced.stdout  # the valid files still sync

    built = cli("index", "build", "bad", "--quiet", key=key, timeout=600)
    assert built.returncode == 1
    assert built.stderr.strip().splitlines() == [f"opsgate: index bad: {PROBLEM}"]
    for output in (served.stderr, synced.stderr, built.stderr):
        assert "Traceback" not in output


def test_serve_warns_about_a_prompt_naming_a_router_that_does_not_exist(
    make_project: ProjectFactory, start_gateway: GatewayFactory
) -> None:
    lost = "name: lost\nrouter: nope\nmessages:\n  - {role: system, content: Hi.}\n"
    gw = start_gateway(make_project(files={"prompts/lost.yaml": lost}))
    assert (
        "prompts/lost.yaml:2: router: 'nope' is not a router: there is no config/routers/nope.yaml and no"
        " router:nope in the registry; name an existing router or add its file (requests to this prompt will"
        " fail; `opsgate sync` refuses it)"
    ) in gw.output()


PIPELINE = (
    "name: p\nmodel: p\nsource: {file: data/p.csv}\ntarget: y\nsplit: {method: random, test_size: 0.3}\n"
    "features:\n  - {columns: [a], transformer: StandardScaler}\nestimator: {name: LogisticRegression}\n"
)
ALERT_ON = "rules:\n  - name: watch\n    metric: error_rate\n    artifact: {artifact}\n    threshold: 0.1\n"


@pytest.mark.parametrize(
    ("files", "problem"),
    [
        (  # config/alerts.yml beside config/alerts.yaml: one of them would be ignored in silence
            {"config/alerts.yaml": "rules: []\n", "config/alerts.yml": "rules: []\n"},
            "config/alerts.yml:1: config/alerts.yaml and config/alerts.yml both hold the alert rules;"
            " keep config/alerts.yaml",
        ),
        (  # alone, it is never read: the operator would believe the rules in force
            {"config/alerts.yml": ALERT_ON.format(artifact="router:default")},
            "config/alerts.yml:1: this file is never read: the alert rules are read from config/alerts.yaml;"
            " rename it",
        ),
        (
            {"config/pipelines/p.yaml": PIPELINE, "config/pipelines/p.yml": PIPELINE},
            "config/pipelines/p.yml:1: config/pipelines/p.yaml and config/pipelines/p.yml both define 'p';"
            " keep one of them",
        ),
        (
            {"config/pipelines/p.yaml": PIPELINE.replace("target: y\n", "target: y\ntarget: z\n")},
            "config/pipelines/p.yaml:5: target: duplicate key (also on line 4); YAML would keep only the last"
            " one silently: remove one",
        ),
        (
            {"config/alerts.yaml": ALERT_ON.format(artifact="router:default").replace("0.1", "high")},
            "config/alerts.yaml:5: rules.0.threshold: Input should be a valid number, unable to parse string"
            " as a number",
        ),
    ],
    ids=[
        "alerts-yaml-and-yml",
        "alerts-yml-alone",
        "pipeline-yaml-and-yml",
        "pipeline-duplicate-key",
        "alerts-bad-field",
    ],
)
def test_bad_rule_and_pipeline_files_are_one_line_in_serve_and_sync(
    make_project: ProjectFactory, cli_for: Callable[..., Cli], files: dict[str, str], problem: str
) -> None:
    cli = cli_for(make_project(files=files))
    served = cli("serve", "--host", "127.0.0.1", "--port", str(free_port()), timeout=120)
    assert served.returncode == 2, served.stderr[-2000:]
    assert served.stderr.strip().splitlines() == [f"opsgate: {problem}"]
    synced = cli("sync", key=cli.first_admin_key())
    assert synced.returncode == 1
    assert [ln for ln in synced.stderr.splitlines() if ln.startswith("error")] == [f"error      {problem}"]
    assert "Traceback" not in served.stderr + synced.stderr


def test_an_alert_rule_on_an_artifact_that_does_not_exist_is_refused_at_sync_and_warned_at_serve(
    make_project: ProjectFactory, cli_for: Callable[..., Cli], start_gateway: GatewayFactory
) -> None:
    project = make_project(files={"config/alerts.yaml": ALERT_ON.format(artifact="prompt:nope")})
    problem = (
        "config/alerts.yaml:4: rules.0.artifact: 'prompt:nope' is not in the project or the registry: the rule"
        " would never fire; name an existing prompt (kind:name)"
    )
    gw = start_gateway(project)
    assert f"{problem} (`opsgate sync` refuses it)" in gw.output()
    cli = cli_for(project)
    synced = cli("sync", key=cli.first_admin_key())
    assert synced.returncode == 1
    assert [ln for ln in synced.stderr.splitlines() if ln.startswith("error")] == [f"error      {problem}"]
    assert "registered router:default@1" in synced.stdout  # the valid files still sync
    assert "alert:alerts" not in synced.stdout
    # an artifact the project has is fine
    fine = make_project(files={"config/alerts.yaml": ALERT_ON.format(artifact="router:default@1")})
    cli = cli_for(fine)
    synced = cli("sync", key=cli.first_admin_key())
    assert synced.returncode == 0, synced.stderr
