"""The monitoring files in deploy/, checked without Docker: the Prometheus scrape config
(promtool, and a job for every compose service that serves /metrics), the compose ``tools``
profile that runs it with Grafana, and the Grafana dashboard (every query names metrics the
services export, and every gateway and worker metric is on it)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from echotune.gateway.metrics import GatewayMetrics
from echotune.telemetry.metrics import Metrics as TelemetryMetrics
from echotune.worker.metrics import WorkerMetrics
from tests.unit.deploy.test_deploy_files import app_services, package_module, services

ROOT = Path(__file__).resolve().parents[3]
DEPLOY = ROOT / "deploy"
PROMETHEUS_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "echotune.json"
PROVISIONING = DEPLOY / "grafana" / "provisioning"
METRIC = re.compile(r"\b(?:gen_ai|echotune|process)_[a-z0-9_]+\b|\bup\b")
NOT_NAMES = re.compile(r"\{[^}]*\}|\[[^]]*\]|\b(?:by|without)\s*\([^)]*\)")


def sample_names(registry: CollectorRegistry) -> set[str]:
    """Every series name a registry can expose (labelled families without samples too)."""
    names: set[str] = set()
    for family in registry.collect():
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}
        names |= {family.name + s for s in suffixes.get(family.type, [""])}
    return names


@cache
def exported() -> dict[str, set[str]]:
    return {
        "gateway": sample_names(GatewayMetrics().registry),
        "llm-worker": sample_names(WorkerMetrics().registry),
        "telemetry": sample_names(TelemetryMetrics("s", "g", "d").registry),
    }


@cache
def dashboard() -> dict[str, Any]:
    data = json.loads(DASHBOARD.read_text())
    assert isinstance(data, dict)
    return data


def queries() -> list[str]:
    return [t["expr"] for p in dashboard()["panels"] for t in p.get("targets", [])]


def metric_names(expr: str) -> set[str]:
    """The series names a query reads (label matchers, ranges and groupings left out)."""
    return set(METRIC.findall(NOT_NAMES.sub(" ", expr)))


def serves_metrics(service: str) -> bool:
    """Whether the package a compose service runs defines a ``/metrics`` route."""
    module = package_module(services()[service]["build"]["args"]["PACKAGE"])
    source = ROOT.glob(f"*/*/src/{module.replace('.', '/')}/**/*.py")
    return any('"/metrics"' in path.read_text() for path in source)


def port_of(service: str) -> str:
    command = services()[service]["command"]
    return str(command[command.index("--port") + 1])


@cache
def scrape_jobs() -> dict[str, dict[str, Any]]:
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    return {job["job_name"]: job for job in config["scrape_configs"]}


def test_promtool_accepts_the_scrape_config() -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool (Debian package prometheus) is needed: .ci/run installs it"
    check = subprocess.run(
        [promtool, "check", "config", str(PROMETHEUS_CONFIG)], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr


def test_every_service_serving_metrics_is_scraped_on_its_port() -> None:
    scraped = [name for name in sorted(app_services()) if serves_metrics(name)]
    assert {"gateway", "llm-worker", "telemetry"} <= set(scraped)
    for name in scraped:
        job = scrape_jobs()[name]
        target = f"{name}:{port_of(name)}"
        static = [t for c in job.get("static_configs", []) for t in c["targets"]]
        discovered = [f"{n}:{c['port']}" for c in job.get("dns_sd_configs", []) for n in c["names"]]
        assert target in static + discovered, f"{name}: {job}"
    # scaled workers are found by DNS (every replica), never as one fixed target
    assert "dns_sd_configs" in scrape_jobs()["llm-worker"]


def test_tools_profile_runs_prometheus_and_grafana_with_these_files() -> None:
    prometheus, grafana = services()["prometheus"], services()["grafana"]
    assert prometheus["profiles"] == grafana["profiles"] == ["tools"]
    config_flag = next(a for a in prometheus["command"] if a.startswith("--config.file="))
    mounts = {v.split(":")[1]: v.split(":")[0] for v in prometheus["volumes"]}
    assert mounts[config_flag.split("=", 1)[1]] == "./prometheus/prometheus.yml"
    grafana_mounts = {v.split(":")[0]: v.split(":")[1] for v in grafana["volumes"]}
    assert grafana_mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"
    provider = yaml.safe_load((PROVISIONING / "dashboards" / "echotune.yml").read_text())
    path = provider["providers"][0]["options"]["path"]
    assert grafana_mounts["./grafana/dashboards"] == path
    source = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yml").read_text())
    assert source["datasources"][0]["url"] == "http://prometheus:9090"


def test_dashboard_queries_name_only_exported_metrics() -> None:
    known = set().union(*exported().values()) | {"up", "process_cpu_seconds_total"}
    for expr in queries():
        unknown = metric_names(expr) - known
        assert not unknown, f"{expr}: {unknown}"


@pytest.mark.parametrize("service", ["gateway", "llm-worker"])
def test_every_gateway_and_worker_metric_is_on_the_dashboard(service: str) -> None:
    shown = {name for expr in queries() for name in metric_names(expr)}
    families = {re.sub(r"_(total|bucket|sum|count)$", "", n) for n in shown}
    own = {
        re.sub(r"_(total|bucket|sum|count)$", "", n)
        for n in exported()[service]
        if not n.startswith("process_")
    }
    assert own - families == set()


def test_dashboard_is_a_grafana_dashboard_on_a_chosen_prometheus() -> None:
    board = dashboard()
    assert board["uid"] == "echotune-overview"
    (variable,) = board["templating"]["list"]
    assert (variable["name"], variable["type"], variable["query"]) == (
        "datasource",
        "datasource",
        "prometheus",
    )
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}"
        assert panel["targets"], panel["title"]
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"])
