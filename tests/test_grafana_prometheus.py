"""The Grafana board and the Prometheus rules in docs/: promtool accepts them, the alerts fire on synthetic
series, and every metric and label they name is served by /metrics and answered by a real Prometheus."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families
from redis import Redis

from service import create_app
from service.core.config import Settings
from service.core.connection import connect
from service.dev.embedded_redis import free_port
from service.schedules import operations as schedules
from tests.api import Api
from tests.conftest import AUTH, TASK_MODULES, TOKEN
from tests.helpers import http_ok, wait_until
from tests.processes import ROOT, Processes
from tests.promql import names
from tests.worker_fixtures import enqueue, start_worker

PROMETHEUS_DOCS = ROOT / "docs" / "prometheus"
RULES = PROMETHEUS_DOCS / "alerts.yml"
BOARD = ROOT / "docs" / "grafana" / "queue-service.json"
PROMTOOL = shutil.which("promtool")
PROMETHEUS = shutil.which("prometheus")

# `make test` installs Debian's prometheus package as root; CI fails rather than skips.
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None and not os.environ.get("CI"),
    reason="promtool is not installed (make test installs Debian's prometheus package as root)",
)
needs_prometheus = pytest.mark.skipif(
    PROMETHEUS is None and not os.environ.get("CI"),
    reason="prometheus is not installed (make test installs Debian's prometheus package as root)",
)

# The series Prometheus writes for each target itself, and the labels it adds to every series it scrapes.
SCRAPE_SERIES = {"up"}
TARGET_LABELS = {"job", "instance"}
# The board's variables as Grafana expands them (job and all lanes selected).
GRAFANA_VARIABLES = {"job": "queue-service", "lane": "high|default|low", "__rate_interval": "1m"}
WORKER_TASKS = {"TASK_MODULES": ",".join((*TASK_MODULES, "tests.worker_tasks"))}


def rule_list() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def board() -> dict[str, Any]:
    return json.loads(BOARD.read_text())


def board_expressions() -> list[str]:
    """Every PromQL expression of the board, its variables expanded; `label_values(s, l)` read as `count by (l) (s)`."""
    dashboard = board()
    found = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    for variable in dashboard["templating"]["list"]:
        match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", variable["query"]["query"])
        assert match, variable["query"]
        found.append(f"count by ({match[2]}) ({match[1]})")
    return [re.sub(r"\$(\w+)", lambda m: GRAFANA_VARIABLES[m[1]], expr) for expr in found]


def promtool(*args: str, cwd: Path = PROMETHEUS_DOCS) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL, "promtool is not installed"
    return subprocess.run([PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=60)


def test_promql_reader_finds_metric_and_label_names() -> None:
    expr = (
        'sum by (task, le) (rate(job_duration_seconds_bucket{queue=~"a|b", job="x"}[5m])) / on (queue) group_left '
        "max without (instance) (queue_depth offset 1h) > 0.75 and histogram_quantile(0.5, lag_bucket) or up"
    )
    assert names(expr) == (
        {"job_duration_seconds_bucket", "queue_depth", "lag_bucket", "up"},
        {"task", "le", "queue", "job", "instance"},
    )
    with pytest.raises(ValueError, match="cannot read"):
        names("rate(x[5m]) # comment")


@needs_promtool
def test_alert_rules_pass_promtool_check() -> None:
    checked = promtool("check", "rules", "alerts.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(rule_list())} rules found" in checked.stdout


@needs_promtool
def test_alerts_fire_on_synthetic_series() -> None:
    tested = promtool("test", "rules", "alerts_test.yml")
    assert tested.returncode == 0, tested.stdout + tested.stderr
    covered = {test["alertname"] for case in yaml.safe_load((PROMETHEUS_DOCS / "alerts_test.yml").read_text())["tests"]
               for test in case["alert_rule_test"] if test["exp_alerts"]}  # fmt: skip
    assert covered == {rule["alert"] for rule in rule_list()}  # each rule is shown firing at least once


@needs_promtool
def test_board_expressions_are_valid_promql(tmp_path: Path) -> None:
    recording = [{"record": f"board:expr_{i}", "expr": expr} for i, expr in enumerate(board_expressions())]
    (tmp_path / "board.yml").write_text(yaml.safe_dump({"groups": [{"name": "board", "rules": recording}]}))
    checked = promtool("check", "rules", "board.yml", cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr


@needs_promtool
def test_example_scrape_config_passes_promtool_check(tmp_path: Path) -> None:
    for name in ("scrape.yml", "alerts.yml"):
        shutil.copy(PROMETHEUS_DOCS / name, tmp_path / name)
    job = yaml.safe_load((PROMETHEUS_DOCS / "scrape.yml").read_text())["scrape_configs"][0]
    (tmp_path / job["authorization"]["credentials_file"]).write_text(TOKEN)
    checked = promtool("check", "config", "scrape.yml", cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert job["job_name"] == "queue-service" and job["authorization"]["type"] == "Bearer"


def test_every_alert_has_a_severity_a_summary_and_a_one_line_runbook() -> None:
    for rule in rule_list():
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        notes = rule["annotations"]
        assert notes["summary"] and notes["description"] and notes["runbook"], rule["alert"]
        assert "\n" not in notes["runbook"], rule["alert"]
        assert 'job="queue-service"' in rule["expr"], rule["alert"]


def test_board_asks_for_its_prometheus_on_import() -> None:
    dashboard = board()
    assert [(i["name"], i["type"], i["pluginId"]) for i in dashboard["__inputs"]] == [
        ("DS_PROMETHEUS", "datasource", "prometheus")
    ]
    sources = [panel["datasource"] for panel in dashboard["panels"]]
    sources += [target["datasource"] for panel in dashboard["panels"] for target in panel["targets"]]
    sources += [variable["datasource"] for variable in dashboard["templating"]["list"]]
    assert all(source == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"} for source in sources)
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    variables = {variable["name"] for variable in dashboard["templating"]["list"]} | {"__rate_interval"}
    used = set(re.findall(r"\$(\w+)", json.dumps([panel["targets"] for panel in dashboard["panels"]])))
    assert used <= variables and set(GRAFANA_VARIABLES) == variables


def test_metrics_answers_503_while_redis_is_down() -> None:
    # Prometheus records up == 0 for a 503, which is what QueueServiceUnavailable alerts on.
    settings = Settings(redis_url=f"redis://127.0.0.1:{free_port()}/0", api_tokens=(TOKEN,), task_modules=TASK_MODULES)
    down = create_app(settings, connection=connect(settings.redis_url, role="web")).test_client()
    response = down.get("/metrics", headers=AUTH)
    assert response.status_code == 503
    assert response.get_json()["error"]["code"] == "redis_unavailable"


def run_jobs_and_a_schedule(client: FlaskClient, connection: Redis, processes: Processes) -> None:
    """Make the series the rules and the board chart exist: a finish, a retry, a redelivery, a failure, runs."""
    api = Api(client)
    start_worker(processes, "--fork", "--crash-retries", "1", env=WORKER_TASKS)
    schedules.upsert(connection, "every-second", {"task": "diag.echo", "interval": 1, "overlap": "allow"})
    processes.scheduler()
    finished = api.enqueue(task="diag.echo", args=["board"])
    retried = api.enqueue(task="testing.flaky", args=["board", 1], retry={"max": 1, "backoff": [0]})
    poison = enqueue(connection, "workertest.suicide")  # kills its work horse: redelivered once, then failed

    def done() -> bool:
        return (
            api.job(finished["id"])["status"] == "finished"
            and api.job(retried["id"])["status"] == "finished"
            and poison.get_status(refresh=True) == "failed"
            and schedules.get(connection, "every-second")["counters"]["runs"] >= 1
        )

    wait_until(done, timeout=60, what="the jobs' outcomes and a schedule run")


def test_every_metric_and_label_the_rules_and_board_name_is_served(
    client: FlaskClient, connection: Redis, processes: Processes
) -> None:
    run_jobs_and_a_schedule(client, connection, processes)
    response = client.get("/metrics", headers=AUTH)
    assert response.status_code == 200
    # Sample names as exposed: counters end in _total, histograms in _bucket, _sum and _count.
    families = text_string_to_metric_families(response.get_data(as_text=True))
    served = {sample.name: set(sample.labels) for family in families for sample in family.samples}
    served_labels = set().union(*served.values()) | TARGET_LABELS
    for expr in [rule["expr"] for rule in rule_list()] + board_expressions():
        metrics, labels = names(expr)
        assert metrics, expr
        assert metrics - served.keys() - SCRAPE_SERIES == set(), expr
        assert labels - served_labels == set(), expr


def prometheus_api(port: int, path: str, **params: str) -> Any:
    url = f"http://127.0.0.1:{port}/api/v1/{path}?{urllib.parse.urlencode(params)}"
    with urllib.request.urlopen(url, timeout=5) as response:
        body = json.loads(response.read())
    assert body["status"] == "success", body
    return body["data"]


def start_prometheus(processes: Processes, tmp_path: Path, target: str) -> int:
    """Start Prometheus with docs/prometheus/scrape.yml aimed at `target` (HTTP, every second); return its port."""
    assert PROMETHEUS, "prometheus is not installed"
    config = yaml.safe_load((PROMETHEUS_DOCS / "scrape.yml").read_text())
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["rule_files"] = [str(RULES)]
    job = config["scrape_configs"][0]
    job.update(scheme="http", scrape_timeout="1s", static_configs=[{"targets": [target]}])
    job["authorization"]["credentials_file"] = str(tmp_path / "token")
    (tmp_path / "token").write_text(TOKEN)
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    processes.start(
        "prometheus", PROMETHEUS, f"--config.file={tmp_path / 'prometheus.yml'}",
        f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}",
    )  # fmt: skip
    wait_until(lambda: http_ok(f"http://127.0.0.1:{port}/-/ready"), timeout=30, what="prometheus")
    return port


@needs_prometheus
def test_prometheus_with_the_example_config_answers_every_board_query(
    client: FlaskClient, connection: Redis, processes: Processes, tmp_path: Path
) -> None:
    run_jobs_and_a_schedule(client, connection, processes)
    web = free_port()
    processes.web(web)
    port = start_prometheus(processes, tmp_path, f"127.0.0.1:{web}")

    def query(expr: str) -> list[Any]:
        return list(prometheus_api(port, "query", query=expr)["result"])

    def evaluated_rules() -> list[dict[str, Any]]:
        found = [rule for group in prometheus_api(port, "rules")["groups"] for rule in group["rules"]]
        return found if found and all(rule["health"] != "unknown" for rule in found) else []

    scrapes = 'sum_over_time(up{job="queue-service"}[1m]) >= 3'
    wait_until(lambda: query(scrapes), timeout=30, what="three successful scrapes with the bearer token")
    assert [expr for expr in board_expressions() if not query(expr)] == []
    rules = wait_until(evaluated_rules, timeout=30, what="the alert rules to be evaluated")
    assert {rule["name"]: rule["health"] for rule in rules} == {rule["alert"]: "ok" for rule in rule_list()}
