"""Prometheus metrics, one registry per container (tests and demo build several in one process)."""

from prometheus_client import CollectorRegistry, Counter, Histogram


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.callbacks = Counter("wecom_callbacks_total", "Callbacks by result", ["result"], registry=self.registry)
        self.callback_seconds = Histogram("wecom_callback_seconds", "Time to acknowledge a callback",
                                          registry=self.registry,
                                          buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1))
        self.wecom_calls = Counter("wecom_api_calls_total", "WeCom API calls by endpoint and errcode",
                                   ["endpoint", "errcode"], registry=self.registry)
        self.outbox = Counter("wecom_outbox_settled_total", "Outbox rows settled", ["kind", "status"],
                              registry=self.registry)

    def on_wecom_call(self, endpoint: str, errcode: int, _seconds: float) -> None:
        self.wecom_calls.labels(endpoint, str(errcode)).inc()
