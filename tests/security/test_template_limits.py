"""Issue 11, finding 11 (and 12): a prompt template is code a prompt engineer wrote, run on what callers
send. A 10^8-iteration loop stalled every request (`/healthz` included) for seconds, `{{ 9**(9**8) }}`
burned minutes of CPU, and a template dividing by zero answered 500 with no log row.

Secure outcome: rendering runs off the event loop and within `limits.render` (wall time, loop
iterations, size of every value and of the output, integer digits); past a bound the caller gets 400
naming the prompt (`template_too_large` / `template_too_slow`, param `model`), as does a template that
fails (`template_error`); every request writes exactly one log row; the gateway answers meanwhile.
"""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from tests.conftest import GatewayFactory, ProjectFactory
from tests.fakes.gateway import FAST_GATEWAY_YAML, GatewayProcess, assert_error

LOCAL = {"deployments": [{"id": "local", "model": "local/extractive"}]}
NESTED_LOOPS = "{% for i in range(10000) %}{% for j in range(10000) %}{% endfor %}{% endfor %}"
ATTACKS = {
    "big_power": ("{{ 9**(9**8) }}", "template_too_large"),
    "long_loop": (NESTED_LOOPS + "done", "template_too_large"),
    "wide_center": ("{{ 'x'|center(10**9) }}", "template_too_large"),
    "wide_method": ("{{ 'x'.ljust(10**9) }}", "template_too_large"),
    "wide_format": ("{{ '%0999999999d' % 1 }}", "template_too_large"),
    "wide_str_format": ("{{ '{:>999999999}'.format(1) }}", "template_too_large"),
    "repeat": ("{{ 'x' * 10**10 }}", "template_too_large"),
    "doubling": (
        "{% set ns = namespace(s='ab') %}{% for i in range(60) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
        "template_too_large",
    ),
    "block_doubling": (
        "{% set ns = namespace(s='ab') %}{% for i in range(60) %}{% set x %}{{ ns.s }}{{ ns.s }}{% endset %}"
        "{% set ns.s = x %}{% endfor %}",
        "template_too_large",
    ),
    "replace_bomb": ("{{ ('x' * 100000).replace('', 'y' * 1000) }}", "template_too_large"),
    "join_bomb": ("{{ (['y' * 1000000] * 1000) | join }}", "template_too_large"),
    "divide_by_zero": ("{{ 1 / 0 }}", "template_error"),
    "divide_by_variable": ("{{ 100 // n }}", "template_error"),
}


def prompt(name: str, template: str) -> str:
    return (
        f"name: {name}\nrouter: local\nvariables:\n  type: object\n  properties:\n    n: {{type: integer}}\n"
        f"messages:\n  - role: system\n    content: {template!r}\n"
    )


@pytest.fixture(scope="module")
def gw(project_factory: ProjectFactory, gateway_factory: GatewayFactory) -> GatewayProcess:
    files = {f"prompts/{name}.yaml": prompt(name, source) for name, (source, _) in ATTACKS.items()}
    files["prompts/fine.yaml"] = prompt(
        "fine", "{% for i in range(n) %}Item {{ i }} costs {{ i * 2 }} euros. {% endfor %}"
    )
    files["config/gateway.yaml"] = FAST_GATEWAY_YAML
    return gateway_factory(project_factory(routers={"local": LOCAL}, files=files))


def chat(
    http: httpx.Client, gw: GatewayProcess, model: str, n: int = 0, question: str = "hi"
) -> httpx.Response:
    messages = [{"role": "user", "content": question}]
    body = {"model": model, "messages": messages, "prompt_variables": {"n": n}}
    return http.post("/v1/chat/completions", json=body, headers=gw.auth(), timeout=60)


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_template_attacks_get_a_400_naming_the_prompt(gw: GatewayProcess, name: str) -> None:
    started = time.monotonic()
    with gw.http() as http:
        r = chat(http, gw, f"prompt:{name}")
    assert time.monotonic() - started < 5
    assert_error(gw, r, 400, type_="invalid_request_error", code=ATTACKS[name][1], param="model")
    assert f"prompt {name!r}" in r.json()["error"]["message"]


def test_templates_within_limits_render(gw: GatewayProcess) -> None:
    with gw.http() as http:
        r = chat(http, gw, "prompt:fine", n=3, question="How many euros does item 2 cost?")
        assert r.status_code == 200, r.text
        assert "Item 2 costs 4 euros" in r.json()["choices"][0]["message"]["content"]


def test_a_slow_template_does_not_stall_the_gateway(
    make_project: ProjectFactory, start_gateway: GatewayFactory
) -> None:
    """With room for a 10^8 loop (the bounds raised, 3 s of wall time), /healthz still answers at once."""
    config = FAST_GATEWAY_YAML + "limits:\n  render:\n    timeout_s: 3\n    max_loop_iterations: 200000000\n"
    files = {"prompts/slow.yaml": prompt("slow", NESTED_LOOPS), "config/gateway.yaml": config}
    gw = start_gateway(make_project(routers={"local": LOCAL}, files=files))
    answers: list[httpx.Response] = []
    slow = threading.Thread(target=lambda: answers.append(chat(gw.http(), gw, "prompt:slow")))
    started = time.monotonic()
    slow.start()
    time.sleep(0.3)  # the render is under way
    worst = 0.0
    with gw.http() as http:
        while slow.is_alive() and time.monotonic() - started < 2.5:
            t = time.monotonic()
            assert http.get("/healthz").status_code == 200
            worst = max(worst, time.monotonic() - t)
            time.sleep(0.05)
    slow.join(30)
    assert worst < 0.5, f"/healthz took {worst:.2f} s while a template rendered"
    assert_error(gw, answers[0], 400, type_="invalid_request_error", code="template_too_slow", param="model")
    assert 2.5 < time.monotonic() - started < 10
