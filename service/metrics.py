"""Prometheus metrics of one app instance.

Each app gets its own `CollectorRegistry` instead of prometheus-client's global one, so two
apps in one process (tests, or an embedding program) never share or clash over counters. The
per-camera drift gauges are read from the drift tracker at scrape time (`CameraDriftCollector`),
so a camera the tracker forgets leaves the metrics with it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from anomaly.drift import DriftState

LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64, 128, 256)


class ServiceMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter(
            "anomaly_http_requests",
            "HTTP requests by route template and status",
            ["method", "route", "status"],
            registry=r,
        )
        self.request_latency = Histogram(
            "anomaly_http_request_duration_seconds",
            "HTTP request handling time",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.frame_latency = Histogram(
            "anomaly_frame_latency_seconds",
            "time from accepting a frame to its result (decode, queue, batch, model)",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.frames_scored = Counter("anomaly_frames_scored", "frames scored by the model", registry=r)
        self.anomalies = Counter("anomaly_anomalies_flagged", "scored frames above the threshold", registry=r)
        self.batch_size = Histogram("anomaly_batch_size", "frames per model pass", buckets=BATCH_BUCKETS, registry=r)
        self.model_seconds = Histogram(
            "anomaly_model_batch_duration_seconds", "time of one model pass", buckets=LATENCY_BUCKETS, registry=r
        )
        self.rejected = Counter("anomaly_frames_rejected", "frames refused, by reason", ["reason"], registry=r)
        self.bad_frames = Counter(
            "anomaly_bad_frames", "uploads that were not a usable image, by code", ["code"], registry=r
        )
        self.slow_down = Counter(
            "anomaly_websocket_slow_down", "times a WebSocket client was told to slow down", registry=r
        )
        self.open_streams = Gauge("anomaly_open_streams", "streams with state held by the service", registry=r)
        self.queued_frames = Gauge("anomaly_queued_frames", "frames accepted and not yet scored", registry=r)
        self.websockets = Gauge("anomaly_websocket_connections", "open WebSocket connections", registry=r)
        self.camera_drift = CameraDriftCollector()
        r.register(self.camera_drift)

    def watch(
        self,
        open_streams: Callable[[], float],
        queued_frames: Callable[[], float],
        cameras: Callable[[], Iterable[DriftState]] | None = None,
    ) -> None:
        """Read the gauges from live state at scrape time rather than tracking every change."""
        self.open_streams.set_function(open_streams)
        self.queued_frames.set_function(queued_frames)
        if cameras is not None:
            self.camera_drift.states = cameras

    def render(self) -> bytes:
        return generate_latest(self.registry)


class CameraDriftCollector(Collector):
    """`anomaly_camera_exceed_fraction{camera}` and `anomaly_camera_drift{camera}` (0/1) of each camera the
    drift tracker watches, read at scrape time (on the event loop, as the tracker is updated)."""

    EXCEED = "anomaly_camera_exceed_fraction"
    DRIFT = "anomaly_camera_drift"

    def __init__(self) -> None:
        self.states: Callable[[], Iterable[DriftState]] = lambda: ()

    def describe(self) -> Iterator[Metric]:
        yield from self._families(())

    def collect(self) -> Iterator[Metric]:
        yield from self._families(self.states())

    def _families(self, states: Iterable[DriftState]) -> Iterator[Metric]:
        exceed = GaugeMetricFamily(
            self.EXCEED,
            "share of the drift window's time scoring above the camera's calibrated reference quantile (p99)",
            labels=["camera"],
        )
        drift = GaugeMetricFamily(self.DRIFT, "1 while the camera's scores are drifted, else 0", labels=["camera"])
        for s in states:
            exceed.add_metric([s.camera], s.exceed_fraction)
            drift.add_metric([s.camera], 1.0 if s.drifting else 0.0)
        yield exceed
        yield drift


class RequestMetricsMiddleware:
    """Counts HTTP requests and their latency by route template (`/v1/streams/{stream_id}/frames`),
    never by raw path, so stream ids do not explode the label set."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(scope["method"], route, str(status)).inc()
            self.metrics.request_latency.labels(route).observe(time.perf_counter() - start)
