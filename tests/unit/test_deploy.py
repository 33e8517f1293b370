"""The deployment files, checked by reading (no Docker daemon or cluster here):
every service names config that exists in the repo, every metric an alert or a
dashboard panel uses is one the code exports, and promtool accepts the
Prometheus files when it is installed."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY

import streams.telemetry  # (registers every metric)
from rules.config import parse_rules

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]
K8S = ROOT / "deploy" / "k8s"


def exported_metrics() -> set[str]:
    names = set()
    collectors = [*REGISTRY.collect(), *streams.telemetry.API_REGISTRY.collect()]
    for collector in collectors:
        for sample in collector.samples:
            names.add(sample.name)
        names.add(collector.name)
    names.update({f"{n}_bucket" for n in list(names)} | {f"{n}_sum" for n in list(names)})
    names.update({f"{n}_count" for n in list(names)} | {f"{n}_total" for n in list(names)})
    return names


def fundflow_metrics_in(text: str) -> set[str]:
    return set(re.findall(r"\bfundflow_[a-z0-9_]+\b", text))


def test_compose_has_the_whole_production_shape() -> None:
    assert {"kafka", "kafka-init", "redis", "worker-1", "worker-2", "api", "webhook", "prometheus", "grafana"} <= set(
        SERVICES
    )
    kafka = SERVICES["kafka"]["environment"]
    assert kafka["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft, no ZooKeeper
    assert "zookeeper" not in json.dumps(COMPOSE).lower()
    assert "--appendonly" in SERVICES["redis"]["command"] and "yes" in SERVICES["redis"]["command"]
    assert "redis-data:/data" in SERVICES["redis"]["volumes"]
    for name, service in SERVICES.items():
        if name != "kafka-init":
            assert "healthcheck" in service, f"{name} has no health check"
        for dependency in service.get("depends_on", {}):
            assert dependency in SERVICES, f"{name} depends on unknown {dependency}"


def test_every_process_gets_real_servers_and_nothing_embedded() -> None:
    for name in ("worker-1", "worker-2", "api", "webhook"):
        env = SERVICES[name]["environment"]
        assert env["FUNDFLOW_KAFKA_BOOTSTRAP"] == "kafka:9092"
        assert env["FUNDFLOW_REDIS_URL"].startswith("redis://:${REDIS_PASSWORD")
    assert "FUNDFLOW_API_TOKENS" in SERVICES["api"]["environment"]
    assert "FUNDFLOW_WEBHOOK_SECRET" in SERVICES["webhook"]["environment"]
    dockerfile = (ROOT / SERVICES["worker-1"]["build"]["dockerfile"]).read_text()
    assert "calfkit" not in dockerfile and "valkey" not in dockerfile and "[embedded" not in dockerfile


def test_every_mounted_file_is_in_the_repo() -> None:
    mounts = 0
    for name, service in SERVICES.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name} mounts missing {source}"
                mounts += 1
    assert mounts >= 6
    grafana = {v.split(":")[1]: v.split(":")[0] for v in SERVICES["grafana"]["volumes"] if v.startswith("./")}
    provider = yaml.safe_load((ROOT / "deploy/grafana/provisioning/dashboards/fundflow.yml").read_text())
    assert provider["providers"][0]["options"]["path"] in grafana


def test_prometheus_scrapes_the_compose_services_on_their_ports() -> None:
    config = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    targets = {t for job in config["scrape_configs"] for group in job["static_configs"] for t in group["targets"]}
    assert targets == {"worker-1:6066", "worker-2:6066", "webhook:9108", "api:8080"}
    assert "6066" in " ".join(SERVICES["worker-1"]["command"])
    assert "9108" in " ".join(SERVICES["webhook"]["command"])
    api_job = next(job for job in config["scrape_configs"] if job["job_name"] == "fundflow-api")
    assert api_job["authorization"]["credentials_file"] == "/run/secrets/api_token"
    assert "api_token" in SERVICES["prometheus"]["secrets"] and "api_token" in COMPOSE["secrets"]


def test_alert_rules_and_dashboard_use_only_exported_metrics() -> None:
    exported = exported_metrics()
    rules = (ROOT / "deploy/prometheus/alerts.yml").read_text()
    dashboard = json.loads((ROOT / "deploy/grafana/dashboards/fundflow.json").read_text())
    exprs = " ".join(t["expr"] for panel in dashboard["panels"] for t in panel["targets"])
    for source, text in (("alerts.yml", rules), ("dashboard", exprs)):
        used = fundflow_metrics_in(text)
        assert used, source
        assert used <= exported, f"{source} uses metrics the code does not export: {used - exported}"
    alerts = {rule["alert"] for group in yaml.safe_load(rules)["groups"] for rule in group["rules"]}
    assert {"FundFlowWorkerDown", "FundFlowConsumerLagHigh", "FundFlowDeadLetterRate", "FundFlowRedisErrors",
            "FundFlowEndToEndLatencyP99High", "FundFlowPartitionStalled", "FundFlowRulesReloadRejected",
            "FundFlowCaseIntakeGap", "FundFlowChangelogsGrowing", "FundFlowApiNotReady"} <= alerts  # fmt: skip
    titles = " ".join(panel["title"].lower() for panel in dashboard["panels"])
    for topic in ("throughput", "lag", "latency", "dead letters", "alerts by rule", "tier"):
        assert topic in titles, topic


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed (Debian package prometheus)")
def test_promtool_accepts_config_and_rules(tmp_path: Path) -> None:
    token = tmp_path / "api_token"
    token.write_text("t")
    config = (ROOT / "deploy/prometheus/prometheus.yml").read_text().replace("/run/secrets/api_token", str(token))
    (tmp_path / "prometheus.yml").write_text(config)
    shutil.copy(ROOT / "deploy/prometheus/alerts.yml", tmp_path / "alerts.yml")
    for args in (
        ["check", "config", str(tmp_path / "prometheus.yml")],
        ["check", "rules", str(tmp_path / "alerts.yml")],
    ):
        result = subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr


def test_kubernetes_scraping_gives_the_job_names_the_alerts_select() -> None:
    """deploy/prometheus/kubernetes.yml names each pod's job after its app.kubernetes.io/name,
    which must be the job names alerts.yml selects, for every Deployment of deploy/k8s."""
    config = yaml.safe_load((ROOT / "deploy/prometheus/kubernetes.yml").read_text())
    alerts = (ROOT / "deploy/prometheus/alerts.yml").read_text()
    selected = set(re.findall(r'job="([^"]+)"', alerts))
    apps = {d["metadata"]["labels"]["app.kubernetes.io/name"] for d in k8s_documents() if d["kind"] == "Deployment"}
    assert apps == {"fundflow-worker", "fundflow-webhook", "fundflow-api"} and selected and selected <= apps
    pods, api = config["scrape_configs"]
    keep = next(r for r in pods["relabel_configs"] if r.get("action") == "keep" and "app_kubernetes" in str(r))
    assert {app for app in apps if re.fullmatch(keep["regex"], app)} == {"fundflow-worker", "fundflow-webhook"}
    assert {"source_labels": ["__meta_kubernetes_pod_label_app_kubernetes_io_name"], "target_label": "job"} in pods[
        "relabel_configs"
    ]
    assert api["job_name"] == "fundflow-api" and api["authorization"]["type"] == "Bearer"
    for document in k8s_documents():
        if document["kind"] == "Deployment" and document["metadata"]["name"] != "fundflow-api":
            annotations = document["spec"]["template"]["metadata"]["annotations"]
            assert annotations["prometheus.io/scrape"] == "true", document["metadata"]["name"]


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed (make test installs it)")
def test_promtool_accepts_the_kubernetes_scrape_config(tmp_path: Path) -> None:
    """Debian's promtool is built without Kubernetes discovery: it checks the rest of the file
    (relabelling, authorization) with the discovery swapped for a static target."""
    config = yaml.safe_load((ROOT / "deploy/prometheus/kubernetes.yml").read_text())
    token = tmp_path / "token"
    token.write_text("t")
    for job in config["scrape_configs"]:
        del job["kubernetes_sd_configs"]
        job["static_configs"] = [{"targets": ["pod:6066"]}]
        if "authorization" in job:
            job["authorization"]["credentials_file"] = str(token)
    shutil.copy(ROOT / "deploy/prometheus/alerts.yml", tmp_path / "alerts.yml")
    (tmp_path / "kubernetes.yml").write_text(yaml.safe_dump(config))
    result = subprocess.run(["promtool", "check", "config", str(tmp_path / "kubernetes.yml")],
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_links_its_runbook_entry_and_cites_the_slo() -> None:
    """docs/runbook.md has a section per alert (meaning, first look, action, escalation), and
    each alert's runbook_url points at it."""
    runbook = (ROOT / "docs/runbook.md").read_text()
    anchors = {heading.strip().lower() for heading in re.findall(r"^### (.+)$", runbook, re.MULTILINE)}
    rules = yaml.safe_load((ROOT / "deploy/prometheus/alerts.yml").read_text())
    for rule in (r for group in rules["groups"] for r in group["rules"]):
        name = rule["alert"]
        assert rule["annotations"]["runbook_url"] == f"docs/runbook.md#{name.lower()}", name
        assert name.lower() in anchors, f"docs/runbook.md has no section for {name}"
        section = runbook.split(f"### {name}\n", 1)[1].split("\n### ", 1)[0]
        for part in ("**Means**", "**First look**", "**Do**", "**Escalate**"):
            assert part in section, f"{name}: {part} missing from its runbook entry"
    assert "## Service levels" in (ROOT / "docs/operations.md").read_text()


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed (make test installs it)")
def test_promtool_unit_tests_of_every_alert_pass() -> None:
    """deploy/prometheus/alerts.test.yml: every alert's threshold and `for` on synthetic series."""
    tests = yaml.safe_load((ROOT / "deploy/prometheus/alerts.test.yml").read_text())
    rules = yaml.safe_load((ROOT / "deploy/prometheus/alerts.yml").read_text())
    tested = {case["alertname"] for test in tests["tests"] for case in test["alert_rule_test"] if case["exp_alerts"]}
    assert tested == {r["alert"] for group in rules["groups"] for r in group["rules"]}, "an alert without a firing test"
    result = subprocess.run(
        ["promtool", "test", "rules", "alerts.test.yml"],
        cwd=ROOT / "deploy/prometheus",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def k8s_documents() -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    docs = []
    for resource in kustomization["resources"]:
        docs.extend(d for d in yaml.safe_load_all((K8S / resource).read_text()) if d)
    return docs


def test_k8s_manifests_have_probes_resources_config_and_secrets() -> None:
    docs = k8s_documents()
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert {("Deployment", "fundflow-worker"), ("Deployment", "fundflow-api"), ("Service", "fundflow-api"),
            ("Deployment", "fundflow-webhook"), ("ConfigMap", "fundflow-env")} <= kinds  # fmt: skip
    for deployment in (d for d in docs if d["kind"] == "Deployment"):
        spec = deployment["spec"]["template"]["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True
        mounts_needed = {v["name"] for v in spec.get("volumes", [])}
        for container in spec["containers"]:
            assert container["livenessProbe"] and container["readinessProbe"], deployment["metadata"]["name"]
            assert container["resources"]["requests"]["cpu"] and container["resources"]["requests"]["memory"]
            assert container["resources"]["limits"]["memory"]
            refs = {ref.get("configMapRef", ref.get("secretRef"))["name"] for ref in container["envFrom"]}
            assert refs == {"fundflow-env", "fundflow-secrets"}
            assert {m["name"] for m in container.get("volumeMounts", [])} == mounts_needed
        labels = deployment["spec"]["selector"]["matchLabels"]
        assert labels.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    worker = next(d for d in docs if d["metadata"]["name"] == "fundflow-worker" and d["kind"] == "Deployment")
    container = worker["spec"]["template"]["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    partitions = int(next(d for d in docs if d["kind"] == "ConfigMap")["data"]["FUNDFLOW_PARTITIONS"])
    assert worker["spec"]["replicas"] <= partitions  # more workers than partitions would sit idle


def test_k8s_rules_are_the_repo_rules_and_secrets_hold_no_values() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    generator = kustomization["configMapGenerator"][0]
    assert generator["files"] == ["rules.yaml=../rules.yaml"]
    assert generator["options"]["disableNameSuffixHash"] is True  # edited in place -> hot reload
    parse_rules((K8S / "../rules.yaml").read_text())
    example = yaml.safe_load((K8S / "secret.example.yaml").read_text())
    assert "secret.example.yaml" not in kustomization["resources"]
    for value in example["stringData"].values():
        assert "<" in value, "the example Secret must hold placeholders only"


def test_non_api_ports_are_told_where_to_listen() -> None:
    """Issue 20 row 13: the worker's web port and the relay's metrics port bind 127.0.0.1
    by default; the manifests that are scraped from elsewhere set FUNDFLOW_WEB_HOST."""
    for name in ("worker-1", "worker-2", "webhook"):
        assert SERVICES[name]["environment"]["FUNDFLOW_WEB_HOST"] == "0.0.0.0", name
    deployments = {d["metadata"]["name"]: d for d in k8s_documents() if d["kind"] == "Deployment"}
    for name in ("fundflow-worker", "fundflow-webhook"):
        (container,) = deployments[name]["spec"]["template"]["spec"]["containers"]
        env = {e["name"]: e for e in container.get("env", [])}
        assert env["FUNDFLOW_WEB_HOST"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP", name


RESIDENT_PER_CACHED_CUSTOMER = 10 * 1024  # a Berka customer decoded in a worker (docs/scale.md; make bench-scale)
WORKER_BASE = 512 * 2**20  # a worker with nothing cached, rounded up (bench-scale: ~300 MiB)


def _bytes(quantity: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    return int(quantity[:-2]) * units[quantity[-2:]] if quantity[-2:] in units else int(quantity)


def test_the_k8s_worker_has_the_memory_its_cache_takes() -> None:
    """A worker's memory is mostly its cache of decoded states. The manifest once allowed
    1 GiB while the default cache (200,000 states) took 1.5-2.1 GiB at a million customers:
    every worker would have been killed once its cache filled. The limit must hold the
    cache the manifest sets, at the measured size of a Berka customer."""
    worker = next(
        d for d in k8s_documents() if d["kind"] == "Deployment" and d["metadata"]["name"] == "fundflow-worker"
    )
    container = worker["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    cached = int(env["FUNDFLOW_CACHE_CUSTOMERS"])
    limit = _bytes(container["resources"]["limits"]["memory"])
    assert limit >= WORKER_BASE + cached * RESIDENT_PER_CACHED_CUSTOMER
    assert _bytes(container["resources"]["requests"]["memory"]) <= limit
