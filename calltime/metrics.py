"""The one metrics helper: Prometheus metrics shared by every service, named `calltime_*`.

Services count through these few instruments (labelled by service, topic, outcome) rather than
declaring their own, so every dashboard reads the same names.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

EVENTS_CONSUMED = Counter("calltime_events_consumed_total", "Events taken off a topic",
                          ["service", "topic"])
EVENTS_PUBLISHED = Counter("calltime_events_published_total", "Events published to a topic",
                           ["service", "topic"])
DEAD_LETTERS = Counter("calltime_dead_letters_total", "Messages parked on a dead-letter topic",
                       ["service", "topic", "reason"])
OUTCOMES = Counter("calltime_outcomes_total", "Domain outcomes (match results, drafts, writes)",
                   ["service", "kind", "outcome"])
HTTP_REJECTIONS = Counter("calltime_http_rejections_total", "Requests refused, by status",
                          ["service", "route", "status"])
STAGE_SECONDS = Histogram("calltime_stage_seconds", "Time spent handling one event or request",
                          ["service", "stage"],
                          buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
OUTBOX_BACKLOG = Gauge("calltime_outbox_backlog", "Rows waiting in an outbox", ["service"])
BILLING_REQUESTS = Counter("calltime_billing_requests_total", "Requests to a billing system",
                           ["system", "status"])


def exposition() -> tuple[bytes, str]:
    return generate_latest(), CONTENT_TYPE_LATEST
