"""What deploy/generate.py writes for monitoring: ServiceMonitors, the PrometheusRule and
the Grafana dashboards, from the metrics the services export.

Every metric named here must be exported by some service: ``make deploy-check`` parses
each expression (rules and panels) and looks every metric name up in
deploy/metrics-exported.txt, which tests/contract/test_metrics_exported.py keeps equal
to what the running services serve at /metrics.

Series carry the scrape's target labels: ``job`` is the service name (the ServiceMonitor
takes it from app.kubernetes.io/name), plus ``namespace`` and ``pod``.
"""

from __future__ import annotations

import json
from typing import Any

Doc = dict[str, Any]

RATE = "5m"  # rate window of the panels: covers a few 30 s scrapes

# --------------------------------------------------------------------------- alerts


def _alert(name: str, expr: str, for_: str, severity: str, summary: str, runbook: str) -> Doc:
    return {
        "alert": name,
        "expr": expr,
        "for": for_,
        "labels": {"severity": severity},
        "annotations": {"summary": summary, "runbook": runbook},
    }


ALERTS: list[Doc] = [
    _alert(
        "AfterglowConsumerLagGrowing",
        "sum by (namespace, consumer, topic) (afterglow_consumer_lag_records) > 100"
        " and deriv(sum by (namespace, consumer, topic) (afterglow_consumer_lag_records)"
        "[15m:1m]) > 0",
        "15m",
        "warning",
        "{{ $labels.consumer }} falls behind on {{ $labels.topic }}",
        "Events wait longer and longer before they are applied. Check first: the worker's "
        "/readyz (a stalled partition names its cause), afterglow_consumer_stalled_partitions "
        "and transient failures (database or broker trouble), then whether KEDA is already "
        "at maxReplicaCount (raise the topic's partitions to scale further).",
    ),
    _alert(
        "AfterglowDeadLettered",
        'sum by (namespace, consumer, topic) (increase(afterglow_events_consumed_total{outcome="'
        'dead_lettered"}[10m])) > 0',
        "0m",
        "warning",
        "{{ $labels.consumer }} sent records of {{ $labels.topic }} to its .dlq topic",
        "A record could not be applied (malformed, unknown type, or a permanent error after "
        "retries) and was published to <topic>.dlq, so its effect is missing. Check first: "
        "the consumer's log line 'dead-lettered' (error and offset), then the record in the "
        "DLQ; fix and replay it to the source topic.",
    ),
    _alert(
        "AfterglowPodNotReady",
        "min by (namespace, job, pod) (afterglow_ready) == 0",
        "5m",
        "warning",
        "{{ $labels.pod }} of {{ $labels.job }} answers /readyz with 503",
        "The pod gets no traffic and its consumers may be stuck. Check first: GET /readyz on "
        "the pod (each check says database, stalled, blocked or starting with its problems), "
        "then PostgreSQL and Kafka reachability from the namespace.",
    ),
    _alert(
        "AfterglowServiceNotReady",
        "max by (namespace, job) (afterglow_ready) == 0",
        "5m",
        "critical",
        "no pod of {{ $labels.job }} is ready",
        "The whole service is out: webhooks and API calls fail, events wait. Check first: "
        "the database (most checks share it), then /readyz of one pod and its recent logs.",
    ),
    _alert(
        "AfterglowOutboxBehind",
        "max by (namespace, schema) (afterglow_outbox_oldest_unsent_age_seconds) > 60",
        "2m",
        "critical",
        "outbox of {{ $labels.schema }} holds a row older than a minute",
        "Committed events are not reaching Kafka, so other services do not hear of them. "
        "Check first: afterglow_outbox_publish_failures_total and the relay's log "
        "('outbox relay batch failed'), broker reachability and the service's KafkaUser "
        "ACLs (Write on the topic), then afterglow_outbox_backlog_rows for the size.",
    ),
    _alert(
        "AfterglowTimersLate",
        "histogram_quantile(0.99, sum by (namespace, le) "
        "(rate(afterglow_journey_timer_lateness_seconds_bucket[10m]))) > 300",
        "10m",
        "warning",
        "journey timers fire more than five minutes late",
        "Journey steps (waits, reminders) run late. Check first: journeys-worker replicas "
        "and CPU, afterglow_journey_timers_fired_total (is the loop running at all), and "
        "lock contention on journey profiles in PostgreSQL (timers skip held customers).",
    ),
    _alert(
        "AfterglowMessageFailureRate",
        'sum by (namespace, channel, provider) (rate(afterglow_messages_sends_total{result="'
        'failed"}[15m])) / sum by (namespace, channel, provider) '
        "(rate(afterglow_messages_sends_total[15m])) > 0.05",
        "15m",
        "warning",
        "more than 5% of {{ $labels.channel }} sends via {{ $labels.provider }} fail",
        "Customers are not getting messages. Check first: the dispatcher's log for the "
        "provider's answer (credentials, rejected sender, suspended account), then the "
        "tenant's channel settings; result=retry is transient, failed is final.",
    ),
    _alert(
        "AfterglowComplaintRateHigh",
        "max by (namespace, tenant) (afterglow_messaging_complaint_rate) > 0.001",
        "15m",
        "warning",
        "tenant {{ $labels.tenant }}: spam complaints over 0.1% of email (30 days)",
        "Mailbox providers start filtering a sender near 0.3%. Check first: which journeys "
        "and templates the complaints follow (afterglow_messaging_complaints_total), and "
        "whether the tenant mails customers who did not opt in; talk to the tenant.",
    ),
    _alert(
        "AfterglowDeliveriesQuarantined",
        "sum by (namespace, platform) (increase(afterglow_ingest_quarantined_total[15m])) > 0",
        "0m",
        "warning",
        "signed {{ $labels.platform }} deliveries were quarantined",
        "A platform sent signed webhooks that could not be normalised: stored, not applied. "
        "Check first: the quarantined deliveries (status quarantined, with the reason) for "
        "a platform payload change, then fix the normaliser and re-run them.",
    ),
]


def prometheus_rule(labels: dict[str, str]) -> Doc:
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "afterglow", "labels": labels},
        "spec": {"groups": [{"name": "afterglow", "rules": ALERTS}]},
    }


# ----------------------------------------------------------------------- dashboards


def _panel(title: str, exprs: list[tuple[str, str]], unit: str = "short") -> Doc:
    return {
        "type": "timeseries",
        "title": title,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "targets": [
            {"expr": expr, "legendFormat": legend, "refId": chr(ord("A") + i)}
            for i, (expr, legend) in enumerate(exprs)
        ],
    }


def _dashboard(uid: str, title: str, panels: list[Doc]) -> Doc:
    for i, panel in enumerate(panels):  # two panels a row, 12 of 24 columns each
        panel["id"] = i + 1
        panel["gridPos"] = {"h": 8, "w": 12, "x": 12 * (i % 2), "y": 8 * (i // 2)}
    return {
        "uid": uid,
        "title": title,
        "tags": ["afterglow"],
        "timezone": "utc",
        "schemaVersion": 39,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "templating": {
            "list": [
                {"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Data"}
            ]
        },
        "panels": panels,
    }


def _common_panels(job: str) -> list[Doc]:
    sel = f'job="{job}"'
    return [
        _panel(
            "HTTP requests by route and status",
            [
                (
                    f"sum by (route, status) (rate(afterglow_http_request_duration_seconds_count"
                    f"{{{sel}}}[{RATE}]))",
                    "{{route}} {{status}}",
                )
            ],
            "reqps",
        ),
        _panel(
            "HTTP latency p95 by route",
            [
                (
                    "histogram_quantile(0.95, sum by (le, route) "
                    f"(rate(afterglow_http_request_duration_seconds_bucket{{{sel}}}[{RATE}])))",
                    "{{route}}",
                )
            ],
            "s",
        ),
        _panel(
            "Pods ready / not ready",
            [
                (f"sum(afterglow_ready{{{sel}}})", "ready"),
                (f"count(afterglow_ready{{{sel}}} == 0)", "not ready"),
            ],
        ),
        _panel(
            "Events consumed by outcome",
            [
                (
                    f"sum by (consumer, outcome) (rate(afterglow_events_consumed_total{{{sel}}}"
                    f"[{RATE}]))",
                    "{{consumer}} {{outcome}}",
                )
            ],
            "ops",
        ),
        _panel(
            "Batch apply latency p95 by consumer",
            [
                (
                    "histogram_quantile(0.95, sum by (le, consumer) "
                    f"(rate(afterglow_consumer_batch_apply_seconds_bucket{{{sel}}}[{RATE}])))",
                    "{{consumer}}",
                )
            ],
            "s",
        ),
        _panel(
            "Consumer lag (records)",
            [
                (
                    f"sum by (consumer, topic) (afterglow_consumer_lag_records{{{sel}}})",
                    "{{consumer}} {{topic}}",
                )
            ],
        ),
        _panel(
            "Consumer trouble",
            [
                (
                    f"sum by (consumer) (afterglow_consumer_stalled_partitions{{{sel}}})",
                    "{{consumer}} stalled partitions",
                ),
                (
                    "sum by (consumer) (rate(afterglow_consumer_transient_failures_total"
                    f"{{{sel}}}[{RATE}]))",
                    "{{consumer}} transient failures/s",
                ),
                (
                    "sum by (consumer) (increase(afterglow_consumer_offset_resets_total"
                    f"{{{sel}}}[1h]))",
                    "{{consumer}} offset resets (1h)",
                ),
            ],
        ),
        _panel(
            "Seconds since last poll / commit",
            [
                (
                    f"time() - max by (consumer) (afterglow_consumer_last_poll_timestamp{{{sel}}})",
                    "{{consumer}} poll",
                ),
                (
                    "time() - max by (consumer) "
                    f"(afterglow_consumer_last_commit_timestamp{{{sel}}})",
                    "{{consumer}} commit",
                ),
            ],
            "s",
        ),
        _panel(
            "Outbox",
            [
                (f"max by (schema) (afterglow_outbox_backlog_rows{{{sel}}})", "backlog rows"),
                (
                    f"max by (schema) (afterglow_outbox_oldest_unsent_age_seconds{{{sel}}})",
                    "oldest unsent (s)",
                ),
                (
                    f"sum by (schema) (rate(afterglow_outbox_published_total{{{sel}}}[{RATE}]))",
                    "published/s",
                ),
                (
                    "sum by (schema) (rate(afterglow_outbox_publish_failures_total"
                    f"{{{sel}}}[{RATE}]))",
                    "failed batches/s",
                ),
            ],
        ),
    ]


def _ingest_panels(sel: str) -> list[Doc]:
    return [
        _panel(
            "Webhook deliveries by platform and status",
            [
                (
                    "sum by (platform, status) (rate(afterglow_ingest_webhook_deliveries_total"
                    f"{{{sel}}}[{RATE}]))",
                    "{{platform}} {{status}}",
                )
            ],
            "reqps",
        ),
        _panel(
            "Quarantined deliveries by platform",
            [
                (
                    "sum by (platform) (increase(afterglow_ingest_quarantined_total"
                    f"{{{sel}}}[15m]))",
                    "{{platform}}",
                )
            ],
        ),
    ]


def _journeys_panels(sel: str) -> list[Doc]:
    return [
        _panel(
            "Timers fired",
            [(f"sum(rate(afterglow_journey_timers_fired_total{{{sel}}}[{RATE}]))", "fired/s")],
            "ops",
        ),
        _panel(
            "Timer lateness p50 / p99",
            [
                (
                    f"histogram_quantile({q}, sum by (le) "
                    f"(rate(afterglow_journey_timer_lateness_seconds_bucket{{{sel}}}[{RATE}])))",
                    f"p{int(q * 100)}",
                )
                for q in (0.5, 0.99)
            ],
            "s",
        ),
        _panel(
            "Message sends by channel and result",
            [
                (
                    "sum by (channel, provider, result) (rate(afterglow_messages_sends_total"
                    f"{{{sel}}}[{RATE}]))",
                    "{{channel}} {{provider}} {{result}}",
                )
            ],
            "ops",
        ),
        _panel(
            "Complaint rate (30 days) by tenant, top 10",
            [
                (
                    f"topk(10, max by (tenant) (afterglow_messaging_complaint_rate{{{sel}}}))",
                    "{{tenant}}",
                )
            ],
            "percentunit",
        ),
        _panel(
            "Complaints and hard bounces",
            [
                (
                    f"sum(increase(afterglow_messaging_complaints_total{{{sel}}}[1h]))",
                    "complaints (1h)",
                ),
                (
                    f"sum(increase(afterglow_messaging_hard_bounces_total{{{sel}}}[1h]))",
                    "hard bounces (1h)",
                ),
            ],
        ),
    ]


def _loyalty_panels(sel: str) -> list[Doc]:
    return [
        _panel(
            "Redemptions by reward kind (1h)",
            [
                (
                    f"sum by (kind) (increase(afterglow_loyalty_redemptions_total{{{sel}}}[1h]))",
                    "{{kind}}",
                )
            ],
        ),
        _panel(
            "Points redeemed by reward kind (1h)",
            [
                (
                    "sum by (kind) (increase(afterglow_loyalty_redeemed_points_total"
                    f"{{{sel}}}[1h]))",
                    "{{kind}}",
                )
            ],
        ),
    ]


# Panels only one service has, by the service's name in services.yaml.
EXTRA_PANELS = {
    "ingest": _ingest_panels,
    "journeys": _journeys_panels,
    "loyalty": _loyalty_panels,
}


def service_dashboard(name: str) -> Doc:
    panels = _common_panels(name)
    extra = EXTRA_PANELS.get(name)
    if extra:
        panels += extra(f'job="{name}"')
    return _dashboard(f"afterglow-{name}", f"Afterglow / {name}", panels)


def overview_dashboard() -> Doc:
    return _dashboard(
        "afterglow-overview",
        "Afterglow / overview",
        [
            _panel(
                "Pods not ready by service",
                [("sum by (job) (1 - afterglow_ready)", "{{job}}")],
            ),
            _panel(
                "HTTP 5xx ratio by service",
                [
                    (
                        "sum by (job) (rate(afterglow_http_request_duration_seconds_count"
                        f'{{status=~"5.."}}[{RATE}])) / sum by (job) '
                        f"(rate(afterglow_http_request_duration_seconds_count[{RATE}]))",
                        "{{job}}",
                    )
                ],
                "percentunit",
            ),
            _panel(
                "Consumer lag by service",
                [("sum by (job) (afterglow_consumer_lag_records)", "{{job}}")],
            ),
            _panel(
                "Dead-lettered records by consumer and topic (1h)",
                [
                    (
                        "sum by (consumer, topic) (increase(afterglow_events_consumed_total"
                        '{outcome="dead_lettered"}[1h]))',
                        "{{consumer}} {{topic}}",
                    )
                ],
            ),
            _panel(
                "Oldest unsent outbox row by schema",
                [
                    (
                        "max by (schema) (afterglow_outbox_oldest_unsent_age_seconds)",
                        "{{schema}}",
                    )
                ],
                "s",
            ),
            _panel(
                "Journey timer lateness p99",
                [
                    (
                        "histogram_quantile(0.99, sum by (le) "
                        f"(rate(afterglow_journey_timer_lateness_seconds_bucket[{RATE}])))",
                        "p99",
                    )
                ],
                "s",
            ),
            _panel(
                "Message send failure ratio by channel",
                [
                    (
                        'sum by (channel) (rate(afterglow_messages_sends_total{result="failed"}'
                        f"[{RATE}])) / sum by (channel) "
                        f"(rate(afterglow_messages_sends_total[{RATE}]))",
                        "{{channel}}",
                    )
                ],
                "percentunit",
            ),
            _panel(
                "Webhook deliveries by status",
                [
                    (
                        "sum by (status) (rate(afterglow_ingest_webhook_deliveries_total"
                        f"[{RATE}]))",
                        "{{status}}",
                    )
                ],
                "reqps",
            ),
            _panel(
                "Worst tenant complaint rate / quarantined deliveries (1h)",
                [
                    ("max(afterglow_messaging_complaint_rate)", "complaint rate"),
                    ("sum(increase(afterglow_ingest_quarantined_total[1h]))", "quarantined"),
                ],
            ),
        ],
    )


def dashboard_configmap(key: str, dashboard: Doc, labels: dict[str, str]) -> Doc:
    """One ConfigMap per dashboard, found by the Grafana sidecar by its label."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": f"grafana-dashboard-{key}",
            "labels": {**labels, "grafana_dashboard": "1"},
            # the sidecar files it in this Grafana folder
            "annotations": {"grafana_folder": "Afterglow"},
        },
        "data": {f"afterglow-{key}.json": json.dumps(dashboard, indent=1, sort_keys=True)},
    }


# ----------------------------------------------------------------------- scraping


def metrics_service(name: str, labels: dict[str, str], pods: dict[str, str], port: int) -> Doc:
    """A headless Service over both roles of a service, for scraping only: the Service
    the ingress uses selects the api pods, but the consumers, timers and relays run in
    the workers. Unready pods stay listed, so the readiness alert still sees them."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": f"{name}-metrics", "labels": labels},
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": pods,
            "ports": [{"name": "http", "port": port, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def service_monitor(name: str, labels: dict[str, str]) -> Doc:
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            # job="<service>" on every series: the dashboards and alerts filter by it
            "jobLabel": "app.kubernetes.io/name",
            "selector": {"matchLabels": labels},
            "endpoints": [
                {"port": "http", "path": "/metrics", "interval": "30s", "scrapeTimeout": "10s"}
            ],
        },
    }
