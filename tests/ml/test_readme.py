"""The README's classic-model example, run as written against a gateway on the repo's own config/: the
demo `breast_cancer` model (config/models/, written by `python -m gateway.ml.demo`) is registered on
first start and answers what the README prints."""

from __future__ import annotations

import contextlib
import io
import re
import shutil

from tests.conftest import GatewayFactory, ProjectFactory
from tests.fakes.gateway import REPO, commit_project


def test_readme_classic_model_example(
    project_factory: ProjectFactory, gateway_factory: GatewayFactory
) -> None:
    section = (REPO / "README.md").read_text(encoding="utf-8").split("\n## Classic models\n", 1)[1]
    code, printed = re.findall(r"```(?:python)?\n(.*?)```", section, flags=re.S)[:2]
    project = project_factory()
    shutil.copytree(REPO / "config" / "models", project / "config" / "models")
    commit_project(project, "the demo model")  # a first start registers committed files
    with gateway_factory(project) as gw:
        code = code.replace("http://127.0.0.1:8080", gw.root_url)
        code = code.replace('Path(".opsgate/admin.key")', f"Path({str(gw.data_dir / 'admin.key')!r})")
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(code, "README.md", "exec"), {})
        assert out.getvalue().strip() == printed.strip()
        with gw.http(headers=gw.auth()) as http:
            bad = http.post("/v1/ml/breast_cancer/predict", json={"records": [{"mean_radius": -1}]})
    assert bad.status_code == 422
    assert "row 0" in bad.json()["error"]["message"] and "mean_radius" in bad.json()["error"]["message"]
