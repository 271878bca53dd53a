"""deploy/ stays renderable, valid and complete: the functions of `make deploy-check`,
run on the committed manifests and on copies broken on purpose."""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

from afterglow.events import ConsumerGroup, on
from afterglow.events import catalog as c
from afterglow.events.topics import TOPICS
from afterglow.kit.registry import discover_services

ROOT = Path(__file__).resolve().parents[2]


def _load(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(f"deploy_{name}", ROOT / "deploy" / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


check = _load("check")
generate = _load("generate")


def crds_or_skip() -> Path:
    """The CRD folder the check validates against. A clone without ../shared (the CRDs
    are not copied into the project) skips the tests that need it, saying why; CI
    (CI=true) has the folder, and there its absence fails."""
    try:
        return check.crds_dir()
    except check.CheckError as exc:
        if os.environ.get("CI", "").strip().lower() in ("true", "1", "yes"):
            raise
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    return {overlay: check.render(overlay) for overlay in check.OVERLAYS}


@pytest.fixture(scope="module")
def schemas() -> dict[Any, Any]:
    return check.load_crd_schemas(crds_or_skip())


def _one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    return next(d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name)


def test_the_committed_manifests_pass_the_whole_check() -> None:
    crds_or_skip()
    report = check.run()
    assert report.problems == []
    assert report.validated["overlays rendered"] == len(check.OVERLAYS)
    assert report.validated["KafkaTopic (CRD schema)"] == 2 * 2 * len(TOPICS)  # dev, prod
    assert report.validated["Dockerfile (hadolint)"] == 1
    assert report.validated["ServiceMonitor (CRD schema)"] == 2 * len(check.expected_services())
    assert report.validated["PrometheusRule (CRD schema)"] == 2
    assert report.validated["PromQL expressions"] > 0


def test_every_catalog_topic_and_its_dlq_has_a_kafka_topic(rendered) -> None:
    for overlay in ("dev", "prod"):
        report = check.Report()
        covered = check.check_topics(rendered[overlay], report, overlay)
        assert report.problems == []
        assert covered == 2 * len(TOPICS)


def test_a_missing_kafka_topic_fails(rendered) -> None:
    docs = [
        d
        for d in rendered["prod"]
        if not (d["kind"] == "KafkaTopic" and d["spec"]["topicName"] == "afterglow.reviews.dlq")
    ]
    report = check.Report()
    check.check_topics(docs, report, "prod")
    assert report.problems == [
        "prod: topic afterglow.reviews.dlq of afterglow.events.topics has no KafkaTopic"
    ]


def test_an_invalid_field_fails_kubernetes_and_crd_schemas(rendered, schemas) -> None:
    docs = copy.deepcopy(rendered["prod"])
    deployment = _one(docs, "Deployment", "loyalty-api")
    deployment["spec"]["template"]["spec"]["containers"][0]["livenessprobe"] = {}  # typo
    topic = _one(docs, "KafkaTopic", "afterglow-orders")
    topic["spec"]["partitions"] = 0
    scaled = _one(docs, "ScaledObject", "loyalty-worker")
    del scaled["spec"]["scaleTargetRef"]
    report = check.Report()
    check.validate_objects([deployment, topic, scaled], schemas, report, "prod")
    text = "\n".join(report.problems)
    assert "Deployment/loyalty-api" in text and "livenessprobe" in text
    assert "KafkaTopic/afterglow-orders: spec.partitions" in text
    assert "ScaledObject/loyalty-worker" in text and "scaleTargetRef" in text


def test_a_deployment_without_probes_fails(rendered) -> None:
    docs = copy.deepcopy(rendered["dev"])
    container = _one(docs, "Deployment", "journeys-worker")["spec"]["template"]["spec"][
        "containers"
    ][0]
    del container["readinessProbe"]
    container["securityContext"]["readOnlyRootFilesystem"] = False
    report = check.Report()
    check.check_pods(docs, report, "dev")
    assert report.problems == [
        "dev Deployment/journeys-worker: journeys: readOnlyRootFilesystem must be true",
        "dev Deployment/journeys-worker: journeys: readinessProbe must GET /readyz",
    ]


def test_a_service_without_its_worker_deployment_fails(rendered) -> None:
    docs = [d for d in rendered["prod"] if d["metadata"]["name"] != "referrals-worker"]
    report = check.Report()
    check.check_services(docs, check.expected_services(), report, "prod")
    assert len(report.problems) == 1
    assert "service referrals" in report.problems[0]
    assert "no Deployment referrals-worker" in report.problems[0]


def test_lag_scalers_authenticate_as_the_service_kafka_user(rendered) -> None:
    docs = rendered["prod"]
    report = check.Report()
    check.check_scaler_auth(docs, report, "prod")
    assert report.problems == []
    auth = _one(docs, "TriggerAuthentication", "loyalty-kafka")["spec"]
    assert auth["secretTargetRef"] == [
        {"parameter": "password", "name": "loyalty", "key": "password"}
    ]
    # Broken on purpose: one trigger loses its authentication, another points at a
    # Secret that no KafkaUser produces.
    broken = copy.deepcopy(docs)
    scaled = _one(broken, "ScaledObject", "loyalty-worker")["spec"]["triggers"]
    del scaled[0]["authenticationRef"]
    _one(broken, "TriggerAuthentication", "feedback-kafka")["spec"]["secretTargetRef"][0][
        "name"
    ] = "somebody-else"
    report = check.Report()
    check.check_scaler_auth(broken, report, "prod")
    feedback_triggers = len(_one(broken, "ScaledObject", "feedback-worker")["spec"]["triggers"])
    assert sorted(report.problems) == sorted(
        [f"prod ScaledObject/loyalty-worker: trigger {scaled[0]['name']}: no SASL authentication"]
        + [
            "prod ScaledObject/feedback-worker: feedback-kafka: Secret somebody-else is not a "
            "KafkaUser's"
        ]
        * feedback_triggers
    )


def test_kafka_users_may_touch_only_their_topics(rendered) -> None:
    user = _one(rendered["prod"], "KafkaUser", "loyalty")
    acls = {
        (a["resource"]["type"], a["resource"]["name"], op)
        for a in user["spec"]["authorization"]["acls"]
        for op in a["operations"]
    }
    assert ("topic", "afterglow.orders", "Read") in acls
    assert ("topic", "afterglow.orders.dlq", "Write") in acls
    assert ("topic", "afterglow.loyalty", "Write") in acls
    assert ("topic", "afterglow.tenants", "Read") in acls
    assert ("topic", "afterglow.orders", "Write") not in acls  # only ingest writes orders
    assert ("group", "loyalty.", "Read") in acls
    assert not any(name == "journeys." for _, name, _ in acls)


def test_edited_generated_yaml_is_reported_stale(tmp_path) -> None:
    shutil.copytree(ROOT / "deploy" / "base", tmp_path / "base")
    assert generate.stale(tmp_path) == []
    path = tmp_path / "base" / "feedback.yaml"
    path.write_text(path.read_text().replace("cpu: 100m", "cpu: 90m"))
    (tmp_path / "base" / "leftover.yaml").write_text("{}\n")
    assert generate.stale(tmp_path) == ["base/feedback.yaml", "base/leftover.yaml"]


def test_a_missing_crd_folder_is_said_clearly(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("AFTERGLOW_CRDS_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(check.CheckError, match=r"AFTERGLOW_CRDS_DIR.*cannot be validated"):
        check.crds_dir()


def test_a_dockerfile_with_lint_findings_fails(tmp_path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN apt-get install -y curl\n")
    report = check.Report()
    check.lint_dockerfile(report, bad)
    assert any("DL3006" in p for p in report.problems)  # untagged base image
    assert any("DL3008" in p for p in report.problems)  # unpinned apt package


def test_crd_checks_skip_without_shared_folder(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("AFTERGLOW_CRDS_DIR", str(tmp_path / "nowhere"))
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match=r"does not exist.*cannot be validated"):
        crds_or_skip()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(check.CheckError, match=r"does not exist"):
        crds_or_skip()


# ------------------------------------------------------------------------- monitoring


def _rule(docs: list[dict[str, Any]], alert: str) -> dict[str, Any]:
    rules = _one(docs, "PrometheusRule", "afterglow")["spec"]["groups"][0]["rules"]
    return next(r for r in rules if r["alert"] == alert)


def test_every_service_is_scraped_with_every_rule_and_panel_checked(rendered) -> None:
    docs = rendered["prod"]
    report = check.Report()
    check.check_monitoring(docs, check.expected_services(), report, "prod")
    sources = check.promql_sources(docs)
    check.check_promql(sources, check.load_exported(), report)
    assert report.problems == []
    assert report.validated["services scraped"] == len(check.expected_services())
    rules = [w for w, _ in sources if " rule " in w]
    panels = [w for w, _ in sources if " panel " in w]
    assert len(rules) == len(
        _one(docs, "PrometheusRule", "afterglow")["spec"]["groups"][0]["rules"]
    )
    # an overview and one dashboard per service, each with panels
    dashboards = {w.split(" ")[0] for w in panels}
    assert dashboards == {"ConfigMap/grafana-dashboard-overview"} | {
        f"ConfigMap/grafana-dashboard-{s}" for s in check.expected_services()
    }
    for rule in _one(docs, "PrometheusRule", "afterglow")["spec"]["groups"][0]["rules"]:
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert "Check first" in rule["annotations"]["runbook"], rule["alert"]


def test_a_rule_with_a_promql_syntax_error_fails(rendered) -> None:
    docs = copy.deepcopy(rendered["prod"])
    _rule(docs, "AfterglowOutboxBehind")["expr"] = (
        "max by (namespace, schema) (afterglow_outbox_oldest_unsent_age_seconds > 60"
    )
    report = check.Report()
    check.check_promql(check.promql_sources(docs), check.load_exported(), report)
    assert len(report.problems) == 1
    assert report.problems[0].startswith(
        "PrometheusRule/afterglow rule AfterglowOutboxBehind: PromQL does not parse ("
    )


def test_a_panel_naming_a_metric_no_service_exports_fails(rendered) -> None:
    docs = copy.deepcopy(rendered["dev"])
    dashboard_map = _one(docs, "ConfigMap", "grafana-dashboard-loyalty")
    key = next(iter(dashboard_map["data"]))
    dashboard = json.loads(dashboard_map["data"][key])
    dashboard["panels"][0]["title"] = "Typo"
    dashboard["panels"][0]["targets"][0]["expr"] = (
        'sum(rate(afterglow_http_requests_total{job="loyalty"}[5m]))'
    )
    dashboard_map["data"][key] = json.dumps(dashboard)
    report = check.Report()
    check.check_promql(check.promql_sources(docs), check.load_exported(), report)
    assert report.problems == [
        f"ConfigMap/grafana-dashboard-loyalty {key} panel 'Typo': metric "
        "afterglow_http_requests_total is exported by no service"
    ]


def test_a_service_panel_naming_another_services_metric_fails(rendered) -> None:
    """Exported somewhere is not enough for a panel of job="loyalty": only what loyalty
    serves draws a line there."""
    docs = copy.deepcopy(rendered["dev"])
    dashboard_map = _one(docs, "ConfigMap", "grafana-dashboard-loyalty")
    key = next(iter(dashboard_map["data"]))
    dashboard = json.loads(dashboard_map["data"][key])
    dashboard["panels"][0]["title"] = "Borrowed"
    dashboard["panels"][0]["targets"][0]["expr"] = (
        'sum(rate(afterglow_journey_timers_fired_total{job="loyalty"}[5m]))'
    )
    dashboard_map["data"][key] = json.dumps(dashboard)
    report = check.Report()
    check.check_promql(check.promql_sources(docs), check.load_exported(), report)
    assert report.problems == [
        f"ConfigMap/grafana-dashboard-loyalty {key} panel 'Borrowed': metric "
        "afterglow_journey_timers_fired_total is not exported by loyalty (only by journeys)"
    ]


def test_selectors_name_their_job() -> None:
    assert check.selectors(
        'sum(rate(a_total{job="loyalty", x="y"}[5m])) / sum(b{job=~"l.*"}) + c{job!="z"}'
    ) == {("a_total", "loyalty"), ("b", None), ("c", None)}


def test_metric_names_are_read_from_the_whole_expression() -> None:
    assert check.metric_names(
        "histogram_quantile(0.99, sum by (le) (rate(a_bucket[5m]))) > 300"
        " and deriv(sum(b)[15m:1m]) > 0 unless time() - c offset 5m"
    ) == {"a_bucket", "b", "c"}
    assert check.metric_names('{__name__="a"}') == {None}


def test_a_service_monitor_that_misses_the_workers_fails(rendered) -> None:
    docs = copy.deepcopy(rendered["prod"])
    metrics = _one(docs, "Service", "loyalty-metrics")
    metrics["spec"]["selector"]["app.kubernetes.io/component"] = "api"
    _one(docs, "ServiceMonitor", "feedback")["spec"]["endpoints"][0]["port"] = "metrics"
    docs = [
        d
        for d in docs
        if not (d["kind"] == "ServiceMonitor" and d["metadata"]["name"] == "referrals")
    ]
    report = check.Report()
    check.check_monitoring(docs, check.expected_services(), report, "prod")
    assert sorted(report.problems) == [
        "prod ServiceMonitor/feedback: port metrics is not a port of Service/feedback-metrics",
        "prod ServiceMonitor/loyalty: Service/loyalty-metrics does not select the pods of "
        "loyalty-worker",
        "prod: service referrals has no ServiceMonitor referrals",
    ]


def test_monitoring_objects_are_validated_against_their_crds(rendered, schemas) -> None:
    docs = copy.deepcopy(rendered["prod"])
    monitor = _one(docs, "ServiceMonitor", "journeys")
    monitor["spec"]["endpoints"] = {"port": "http"}  # a list in the CRD
    rule = _one(docs, "PrometheusRule", "afterglow")
    del rule["spec"]["groups"][0]["name"]
    report = check.Report()
    check.validate_objects([monitor, rule], schemas, report, "prod")
    text = "\n".join(report.problems)
    assert "ServiceMonitor/journeys: spec.endpoints" in text
    assert "PrometheusRule/afterglow: spec.groups.0" in text and "'name'" in text


async def _noop(runtime: Any, session: Any, event: Any) -> None:
    return None


def test_deploy_check_fails_when_a_services_code_and_deploy_disagree(monkeypatch) -> None:
    """The consumer groups and topics of deploy/ come from the services' code: a group
    added in code (here loyalty reading tickets) and not regenerated fails the check,
    with the files to regenerate and the trigger and ACL that are missing."""
    crds_or_skip()
    specs = discover_services()
    loyalty = specs["loyalty"]
    tickets = ConsumerGroup("tickets", on(c.TicketOpened, _noop), context=lambda runtime: runtime)
    specs["loyalty"] = dataclasses.replace(loyalty, consumers=(*loyalty.consumers, tickets))
    monkeypatch.setattr(check.generate, "discover_services", lambda: specs)
    report = check.run()
    stale = "differs from deploy/generate.py: run it and commit"
    for overlay in ("dev", "prod"):
        assert (
            f"{overlay} ScaledObject/loyalty-worker: no lag trigger for group loyalty.tickets on "
            "afterglow.tickets (the code reads it)"
        ) in report.problems
        assert (
            f"{overlay} KafkaUser/loyalty: may not read afterglow.tickets, which its consumers read"
        ) in report.problems
    assert f"deploy/base/loyalty.yaml: {stale}" in report.problems
    assert f"deploy/base/kafka-users.yaml: {stale}" in report.problems
    assert len(report.problems) == 6


def test_the_kafka_side_is_what_the_code_declares(rendered) -> None:
    declared = generate.load_services()
    # journeys' messaging announces an unsubscribe taken through its own link: its
    # KafkaUser may write afterglow.customers (the hand copy had left it out).
    assert "afterglow.customers" in declared["journeys"]["produces"]
    assert set(declared["journeys"]["consumers"]) == {"tenants", "engine", "messaging"}
    assert "afterglow.reviews" in declared["journeys"]["consumers"]["engine"]
    for overlay in ("dev", "prod"):
        report = check.Report()
        check.check_kafka_side(rendered[overlay], declared, report, overlay)
        assert report.problems == []
    # An overlay patching a trigger away is caught on the rendered objects.
    broken = copy.deepcopy(rendered["prod"])
    triggers = _one(broken, "ScaledObject", "referrals-worker")["spec"]["triggers"]
    gone = triggers.pop(0)["metadata"]
    report = check.Report()
    check.check_kafka_side(broken, declared, report, "prod")
    assert report.problems == [
        f"prod ScaledObject/referrals-worker: no lag trigger for group {gone['consumerGroup']} "
        f"on {gone['topic']} (the code reads it)"
    ]


def test_services_yaml_may_not_repeat_the_kafka_side(tmp_path) -> None:
    text = (ROOT / "deploy" / "services.yaml").read_text()
    copy_path = tmp_path / "services.yaml"
    copy_path.write_text(
        text.replace("    dir: loyalty\n", "    dir: loyalty\n    consumers: {ledger: []}\n")
    )
    with pytest.raises(ValueError, match=r"loyalty\.consumers comes from the service's code"):
        generate.load_services(copy_path)


def _tracing_maps(docs: list[dict[str, Any]]) -> tuple[dict[str, Any], set[str]]:
    """The afterglow-tracing ConfigMap's data, and the names of it every Deployment's
    container reads (kustomize gives the map a hash suffix and rewrites the references)."""
    [config] = [
        d
        for d in docs
        if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("afterglow-tracing-")
    ]
    read = set()
    for d in docs:
        if d["kind"] == "Deployment":
            [container] = d["spec"]["template"]["spec"]["containers"]
            refs = [s["configMapRef"]["name"] for s in container["envFrom"] if "configMapRef" in s]
            read.add(next((r for r in refs if r.startswith("afterglow-tracing")), "none"))
    return {"name": config["metadata"]["name"], "data": config.get("data") or {}}, read


def test_tracing_is_off_until_an_overlay_names_the_collector(rendered, tmp_path) -> None:
    for overlay in ("dev", "prod"):
        config, read = _tracing_maps(rendered[overlay])
        assert "OTEL_EXPORTER_OTLP_ENDPOINT" not in config["data"]
        assert read == {config["name"]}, f"{overlay}: a Deployment does not read it"
    # What deploy/README.md tells an operator to write turns it on in every pod.
    prod = os.path.relpath(ROOT / "deploy/overlays/prod", tmp_path)
    (tmp_path / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\n"
        "kind: Kustomization\n"
        f"resources: [{prod}]\n"
        "configMapGenerator:\n"
        "  - name: afterglow-tracing\n"
        "    behavior: merge\n"
        "    literals: [OTEL_EXPORTER_OTLP_ENDPOINT=http://otel-collector.monitoring:4318]\n"
    )
    config, read = _tracing_maps(check.render(tmp_path))
    assert config["data"] == {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://otel-collector.monitoring:4318"
    }
    assert read == {config["name"]}
    # The pods may reach the collector's port.
    allow = _one(rendered["prod"], "NetworkPolicy", "allow-otlp")["spec"]["egress"][0]
    assert {"protocol": "TCP", "port": 4318} in allow["ports"]
