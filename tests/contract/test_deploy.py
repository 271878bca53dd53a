"""deploy/ stays renderable, valid and complete: the functions of `make deploy-check`,
run on the committed manifests and on copies broken on purpose."""

from __future__ import annotations

import copy
import importlib.util
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

from afterglow.events.topics import TOPICS

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
