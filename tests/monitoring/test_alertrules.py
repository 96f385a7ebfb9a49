"""Alert rules without a server: the file's typed errors (serve and sync name file, line and field), the
figures per version from a real SQLite request log and online-eval scores, the state machine with its
`for` clock and outbox, and what counts as loosening the governed rules."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from gateway.db.engine import make_engine, migrate
from gateway.db.generation import as_utc, utcnow
from gateway.db.models import AlertNotification, OnlineEvalScore, RequestLog
from gateway.monitoring.alerting import AlertEngine
from gateway.monitoring.alertrules import AlertRule, AlertsSpec, figures
from gateway.registry.rules import loosening
from tests.fakes.gateway import Cli, free_port

NOW = datetime(2026, 12, 5, 12, 0, tzinfo=utcnow().tzinfo)


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    made = make_engine(f"sqlite:///{tmp_path / 'alerts.db'}")
    migrate(made)
    yield made
    made.dispose()


def _rows(engine: Engine, rows: list[dict[str, Any]]) -> None:
    with Session(engine) as s, s.begin():
        for i, r in enumerate(rows):
            s.add(
                RequestLog(
                    id=f"r{i}-{r.get('ts', NOW).timestamp()}",
                    ts=r.get("ts", NOW - timedelta(seconds=10)),
                    route="/v1/chat/completions",
                    artifacts=r.get("artifacts", ["router:default@3#abcdefabcdef"]),
                    status=r.get("status", 200),
                    latency_ms=r.get("latency_ms", 10.0),
                    cost_usd=r.get("cost_usd"),
                    attempts=r.get("attempts", []),
                    decisions=[],
                    extra={},
                )
            )


def test_a_bad_alerts_file_is_one_line_in_serve_and_sync(
    make_project: Callable[..., Path], cli_for: Callable[..., Cli]
) -> None:
    bad = "receivers: {}\nrules:\n  - name: slow\n    metric: latency_ms\n    threshold: 100\n    window: 5 minutes\n"
    cli = cli_for(make_project(files={"config/alerts.yaml": bad}))
    served = cli("serve", "--host", "127.0.0.1", "--port", str(free_port()), timeout=120)
    assert served.returncode == 2, served.stderr
    problem = "config/alerts.yaml:6: rules.0.window: a duration is a number of seconds or a number with s, m, h or d (e.g. 5m)"
    assert served.stderr.strip().splitlines() == [f"opsgate: {problem}"]
    synced = cli("sync", key=cli.first_admin_key())  # the governed file is refused, the others register
    assert synced.returncode == 1
    assert [ln for ln in synced.stderr.splitlines() if ln.startswith("error")] == [f"error      {problem}"]
    assert "alert:alerts" not in synced.stdout and "registered router:default@1" in synced.stdout


def test_typed_rules_refuse_what_cannot_mean_anything() -> None:
    with pytest.raises(ValueError, match="receiver 'pager' is not defined"):
        AlertsSpec.model_validate(
            {"rules": [{"name": "a", "metric": "requests", "threshold": 1, "receivers": ["pager"]}]}
        )
    with pytest.raises(ValueError, match="eval_score needs eval_metric"):
        AlertRule.model_validate({"name": "a", "metric": "eval_score", "threshold": 0.5})
    with pytest.raises(ValueError, match="artifact must be prompt"):
        AlertRule.model_validate(
            {"name": "a", "metric": "eval_score", "eval_metric": "f", "artifact": "router:x", "threshold": 1}
        )
    with pytest.raises(ValueError, match="used twice"):
        AlertsSpec.model_validate({"rules": [{"name": "a", "metric": "requests", "threshold": 1}] * 2})
    rule = AlertRule.model_validate(
        {"name": "a", "metric": "latency_ms", "threshold": 1, "for": "2m", "window": "1h"}
    )
    assert (rule.for_, rule.window) == (120, 3600)


def test_figures_per_version_from_the_request_log(engine: Engine) -> None:
    v3, v4 = (
        ["router:default@3#abcdefabcdef"],
        ["prompt:kbqa@2#0123456789ab", "router:default@4#fedcbafedcba"],
    )
    _rows(
        engine,
        [
            {"artifacts": v3, "status": 502, "latency_ms": 100.0, "cost_usd": 0.5},
            {"artifacts": v3, "status": 200, "latency_ms": 300.0, "cost_usd": 0.25},
            {"artifacts": v3, "status": 429, "latency_ms": 200.0},
            {
                "artifacts": v4,
                "status": 200,
                "latency_ms": 50.0,
                "attempts": [{"deployment": "a"}, {"deployment": "b"}],
            },
            {"artifacts": v3, "status": 500, "ts": NOW - timedelta(hours=2)},  # outside every window below
            {
                "artifacts": ["router:default_other@1#aaaaaaaaaaaa"],
                "status": 500,
            },  # a name sharing the prefix
        ],
    )

    def rule(**fields: Any) -> AlertRule:
        return AlertRule.model_validate({"name": "r", "threshold": 0, "window": "10m", **fields})

    assert figures(engine, rule(metric="error_rate", artifact="router:default"), NOW) == {
        "router:default@3": pytest.approx(1 / 3),
        "router:default@4": 0.0,
    }
    assert figures(engine, rule(metric="error_rate", errors="any", artifact="router:default@3"), NOW) == {
        "router:default@3": pytest.approx(2 / 3)
    }
    assert figures(engine, rule(metric="latency_ms", percentile=50, artifact="router:default@3"), NOW) == {
        "router:default@3": 200.0
    }
    assert (
        figures(engine, rule(metric="cost_usd", artifact="router:default"), NOW)["router:default@3"] == 0.75
    )
    assert figures(engine, rule(metric="fallback_rate", artifact="prompt:kbqa"), NOW) == {
        "prompt:kbqa@2": 1.0
    }
    assert figures(engine, rule(metric="requests"), NOW) == {"*": 5.0}
    # a rate of fewer samples than min_samples has no value (no verdict); counts always have one
    assert figures(engine, rule(metric="error_rate", artifact="prompt:kbqa", min_samples=2), NOW) == {
        "prompt:kbqa@2": None
    }


def test_eval_score_is_the_mean_per_prompt_version(engine: Engine) -> None:
    with Session(engine) as s, s.begin():
        for version, metric, score in [
            (1, "faithful", 0.9),
            (1, "faithful", 0.7),
            (2, "faithful", 0.2),
            (2, "other", 1.0),
        ]:
            s.add(
                OnlineEvalScore(
                    request_id="x",
                    ts=NOW - timedelta(seconds=5),
                    prompt="kbqa",
                    prompt_version=version,
                    prompt_hash="h",
                    versions=[],
                    metric=metric,
                    score=score,
                )
            )
    rule = AlertRule.model_validate(
        {
            "name": "r",
            "metric": "eval_score",
            "eval_metric": "faithful",
            "artifact": "prompt:kbqa",
            "op": "<",
            "threshold": 0.5,
        }
    )
    assert figures(engine, rule, NOW) == {
        "prompt:kbqa@1": pytest.approx(0.8),
        "prompt:kbqa@2": pytest.approx(0.2),
    }
    assert rule.breached(0.2) and not rule.breached(0.8)


def test_pending_waits_out_for_then_fires_once_and_a_removed_rule_resolves(engine: Engine) -> None:
    spec = AlertsSpec.model_validate(
        {
            "receivers": {"a": {"url": "http://127.0.0.1:9/hook"}},
            "rules": [
                {
                    "name": "errs",
                    "metric": "error_rate",
                    "window": "1h",
                    "threshold": 0.5,
                    "for": "1m",
                    "receivers": ["a"],
                }
            ],
        }
    )
    _rows(engine, [{"status": 500, "ts": NOW - timedelta(minutes=5)}])
    alerting = AlertEngine(engine, spec)
    assert alerting.evaluate(NOW) == [
        {"rule": "errs", "subject": "*", "from": "ok", "to": "pending", "value": 1.0}
    ]
    assert alerting.evaluate(NOW + timedelta(seconds=30)) == []  # still pending: 30 s of its minute
    assert alerting.evaluate(NOW + timedelta(seconds=61))[0]["to"] == "firing"
    assert alerting.evaluate(NOW + timedelta(seconds=90)) == []  # firing stays firing: no second notice
    assert alerting.states()["rules"][0]["state"] == "firing"
    alerting.file_rules = AlertsSpec.model_validate(
        {"receivers": spec.model_dump()["receivers"]}
    )  # rule removed
    assert alerting.evaluate(NOW + timedelta(seconds=120)) == [
        {"rule": "errs", "subject": "*", "from": "firing", "to": "removed"}
    ]
    with Session(engine) as s:
        notices = [
            (n.event, n.episode, n.receiver, n.payload.get("reason"))
            for n in s.scalars(select(AlertNotification))
        ]
    assert notices == [("firing", 1, "a", None), ("resolved", 1, "a", "rule removed")]
    # a claimed notice is not claimed again while its attempt's lease runs
    won = alerting.claim_due(alerting.file_rules, NOW + timedelta(seconds=121))
    assert len(won) == 2 and alerting.claim_due(alerting.file_rules, NOW + timedelta(seconds=121)) == []
    # a host the operator did not allow (egress.webhook_hosts) is never contacted: the attempt fails and
    # waits for its backoff
    assert asyncio.run(alerting.deliver_due(alerting.file_rules)) == 0
    with Session(engine) as s:
        rows = list(s.scalars(select(AlertNotification)))
    assert all(
        n.status == "pending" and n.attempts == 2 and "egress.webhook_hosts" in (n.last_error or "")
        for n in rows
    )
    assert all(as_utc(n.next_at) > utcnow() for n in rows)


def test_what_loosens_alert_rules() -> None:
    old = {
        "receivers": {"a": {"url": "https://a.example/hook"}},
        "rules": [
            {
                "name": "r",
                "metric": "error_rate",
                "op": ">",
                "threshold": 0.1,
                "for_": 60,
                "severity": "warning",
                "receivers": ["a"],
            }
        ],
    }

    def changed(**fields: Any) -> dict[str, Any]:
        return {**old, "rules": [{**old["rules"][0], **fields}]}

    assert (
        loosening("alert", old, changed(threshold=0.05, for_=30, severity="critical", description="x")) == []
    )
    assert loosening("alert", old, changed(threshold=0.2)) == ["rule 'r': threshold 0.1 -> 0.2"]
    assert loosening("alert", old, changed(receivers=[])) == ["rule 'r': receivers ['a'] -> []"]
    assert loosening("alert", old, changed(op="<", threshold=0.1)) == ["rule 'r': op '>' -> '<'"]
    assert loosening("alert", old, {**old, "rules": []}) == ["rule 'r' removed"]
    moved = {**old, "receivers": {"a": {"url": "https://elsewhere.example/hook"}}}
    assert loosening("alert", old, moved) == [
        "receiver 'a': url 'https://a.example/hook' -> 'https://elsewhere.example/hook'"
    ]
    assert loosening("alert", old, {**old, "receivers": {}}) == ["receiver 'a' removed"]


def test_the_docs_example_is_a_valid_alerts_file() -> None:
    from gateway.yamlspec import load_spec_text
    from tests.fakes.gateway import REPO

    text = (REPO / "docs" / "alerts.md").read_text(encoding="utf-8")
    example = text.split("```yaml\n", 1)[1].split("```", 1)[0]
    spec = load_spec_text(example, AlertsSpec, "docs/alerts.md")
    assert [r.name for r in spec.rules] == ["kbqa-errors", "default-p95", "kbqa-faithfulness"]
    assert spec.rules[0].for_ == 120 and spec.rules[0].window == 300
    assert spec.rules[0].describe() == "error_rate over 300s > 0.05"


def test_a_rule_added_again_goes_on_counting_its_episodes(engine: Engine) -> None:
    rule = {"name": "errs", "metric": "error_rate", "window": "1h", "threshold": 0.5, "receivers": ["a"]}
    receivers = {"a": {"url": "http://127.0.0.1:9/hook"}}
    with_rule = AlertsSpec.model_validate({"receivers": receivers, "rules": [rule]})
    _rows(engine, [{"status": 500, "ts": NOW - timedelta(minutes=5)}])
    alerting = AlertEngine(engine, with_rule)
    assert alerting.evaluate(NOW)[0]["to"] == "firing"
    alerting.file_rules = AlertsSpec.model_validate({"receivers": receivers})
    assert alerting.evaluate(NOW + timedelta(seconds=1))[0]["to"] == "removed"
    assert alerting.evaluate(NOW + timedelta(seconds=2)) == []  # nothing left to resolve
    alerting.file_rules = with_rule
    assert alerting.evaluate(NOW + timedelta(seconds=3))[0]["to"] == "firing"
    with Session(engine) as s:
        notices = [
            (n.event, n.episode) for n in s.scalars(select(AlertNotification).order_by(AlertNotification.id))
        ]
    assert notices == [("firing", 1), ("resolved", 1), ("firing", 2)]


def test_states_give_each_receivers_newest_notice_of_the_episode_and_the_threshold(engine: Engine) -> None:
    """What /admin/alerts and the dashboard show: per receiver (by name only) the newest notice of the
    subject's episode, after one delivery went through and one was given up."""
    spec = AlertsSpec.model_validate(
        {
            "receivers": {
                "a": {"url": "http://127.0.0.1:9/hook?token=t", "retries": 0},
                "b": {"url": "http://127.0.0.1:9/other", "retries": 0},
            },
            "rules": [{"name": "errs", "metric": "error_rate", "threshold": 0.5, "receivers": ["b", "a"]}],
        }
    )
    _rows(engine, [{"status": 500, "ts": NOW - timedelta(seconds=30)}])
    alerting = AlertEngine(engine, spec)
    assert alerting.evaluate(NOW)[0]["to"] == "firing"
    first, second = alerting.claim_due(spec, NOW)
    alerting.record(spec, first, None, NOW)  # b: sent
    alerting.record(spec, second, "connection refused", NOW)  # a: no retries left
    [rule] = alerting.states()["rules"]
    assert (rule["op"], rule["threshold"], rule["window_s"]) == (">", 0.5, 300.0)
    [subject] = rule["subjects"]
    assert subject["deliveries"] == [
        {"receiver": "a", "event": "firing", "status": "failed", "attempts": 1, "sent_at": None},
        {"receiver": "b", "event": "firing", "status": "sent", "attempts": 1, "sent_at": NOW.isoformat()},
    ]
    assert "token" not in str(rule)
