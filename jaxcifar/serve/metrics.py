"""The server's Prometheus metrics. deploy/prometheus/alerts.yml alerts on them, and
tests/test_serve.py checks that every metric an alert names is exported."""

from __future__ import annotations

import jax
import numpy as np
import prometheus_client as prom

from jaxcifar.serve.batching import batch_buckets
from jaxcifar.serve.model import ServedModel

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
CONFIDENCE_BUCKETS = tuple(np.round(np.arange(0.1, 1.0, 0.1), 1)) + (0.95, 0.99, 1.0)
# jax.monitoring's event for each XLA compilation (jax/_src/dispatch.py BACKEND_COMPILE_EVENT).
COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


class Metrics:
    def __init__(self, model: ServedModel, max_batch: int):
        self.registry = prom.CollectorRegistry()
        r = self.registry
        self.requests = prom.Counter("jaxcifar_requests", "HTTP requests by route, method and status code",
                                     ("route", "method", "status"), registry=r)
        self.latency = prom.Histogram("jaxcifar_request_duration_seconds", "HTTP request latency by route",
                                      ("route",), buckets=LATENCY_BUCKETS, registry=r)
        self.in_flight = prom.Gauge("jaxcifar_requests_in_flight", "HTTP requests being handled", registry=r)
        self.batch_size = prom.Histogram("jaxcifar_batch_size", "Images per batch of grouped requests",
                                         buckets=batch_histogram_buckets(max_batch), registry=r)
        self.confidence = prom.Histogram("jaxcifar_prediction_confidence", "Top-1 probability of each image",
                                         buckets=CONFIDENCE_BUCKETS, registry=r)
        self.predicted = prom.Counter("jaxcifar_predicted_class", "Images by predicted (top-1) class",
                                      ("class_name",), registry=r)
        self.compilations = prom.Counter("jaxcifar_xla_compilations",
                                         "XLA compilations in this process (warm-up included); "
                                         "a rise after warm-up means a request waited for one", registry=r)
        self.ready = prom.Gauge("jaxcifar_model_ready", "1 once the model is loaded and warmed up", registry=r)
        prom.Info("jaxcifar_model", "The served model", registry=r).info(
            {"name": model.name, "step": model.version, "platform": model.platform, "tta": str(model.tta),
             "accuracy": "" if model.accuracy is None else f"{model.accuracy:.4f}",
             "device": model.device})
        for name in model.class_names:  # present from the start, so rate() sees the first prediction
            self.predicted.labels(name)
        jax.monitoring.register_event_duration_secs_listener(self._on_event)

    def _on_event(self, event: str, duration: float, **_) -> None:
        if event == COMPILE_EVENT:
            self.compilations.inc()

    def observe_predictions(self, probabilities: np.ndarray, class_names: tuple[str, ...]) -> None:
        for p in probabilities:
            top = int(p.argmax())
            self.confidence.observe(float(p[top]))
            self.predicted.labels(class_names[top]).inc()

    def exposition(self) -> bytes:
        return prom.generate_latest(self.registry)


def batch_histogram_buckets(max_batch: int) -> tuple[float, ...]:
    """1, 2, 4, ... up to max_batch: the compiled batch sizes."""
    return tuple(float(b) for b in batch_buckets(max_batch))
