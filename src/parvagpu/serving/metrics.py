"""Prometheus metrics of serving and the controller, on their own registry.

Per model: arrival rate (the controller's window), a latency histogram, SLO attainment, request
outcomes (admitted, 503, failed, ok), capacity, planned rate and headroom. Per segment: requests in
flight and the batch sizes run. Per plan: GPUs, proven lower bound, gap, segment changes and
re-plans. `prometheus_client` is imported when a `Metrics` is made, so serving and planning start
without it; the endpoint binds loopback unless told otherwise.
"""

from __future__ import annotations

# Latency buckets (seconds): 1 ms to 10 s, dense where SLOs of the example sit (5-500 ms).
LATENCY_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0,
                   2.0, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
OUTCOMES = ("admitted", "rejected", "failed", "ok")
# The families the ingress feeds (request outcomes, latencies, batches, in flight); the others are
# the controller's. A controller whose ingress runs elsewhere (a Ray actor) serves the ingress's
# families from the ingress and the rest from its own registry.
INGRESS_FAMILIES = frozenset({"parvagpu_requests", "parvagpu_request_latency_seconds", "parvagpu_requests_within_slo",
                              "parvagpu_segment_batch_size", "parvagpu_segment_inflight_now"})


class Metrics:
    """Every gauge, counter and histogram, registered on one `CollectorRegistry`."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = r = CollectorRegistry()
        self.requests = Counter("parvagpu_requests", "Requests by model and outcome (admitted, rejected = 503 "
                                "before admission, failed = admitted but not answered 200 (5xx, or 503 when its "
                                "segment died with no other room), ok)", ["model", "outcome"], registry=r)
        self.latency = Histogram("parvagpu_request_latency_seconds", "Latency of answered requests at the ingress",
                                 ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.within_slo = Counter("parvagpu_requests_within_slo", "Requests answered within their model's SLO",
                                  ["model"], registry=r)
        self.arrival_rate = Gauge("parvagpu_arrival_rate", "Observed arrival rate over the controller's window (req/s)",
                                  ["model"], registry=r)
        self.attainment = Gauge("parvagpu_slo_attainment", "Share of the window's requests answered within the SLO",
                                ["model"], registry=r)
        self.capacity = Gauge("parvagpu_capacity", "Throughput of the model's serving segments (req/s)",
                              ["model"], registry=r)
        self.planned_rate = Gauge("parvagpu_planned_rate", "Rate the running plan was made for (req/s)",
                                  ["model"], registry=r)
        self.headroom = Gauge("parvagpu_headroom", "capacity / observed rate - 1", ["model"], registry=r)
        self.batch = Histogram("parvagpu_segment_batch_size", "Batch sizes run per segment", ["model", "segment"],
                               buckets=BATCH_BUCKETS, registry=r)
        self.plan_gpus = Gauge("parvagpu_plan_gpus", "GPUs the running plan uses", registry=r)
        self.plan_bound = Gauge("parvagpu_plan_lower_bound", "Proven lower bound on GPUs (NaN: unknown)", registry=r)
        self.plan_gap = Gauge("parvagpu_plan_gap", "(GPUs - bound) / GPUs (NaN: unknown)", registry=r)
        self.segment_changes = Counter("parvagpu_segment_changes", "Segments created or removed by transitions",
                                       ["action"], registry=r)
        self.replans = Counter("parvagpu_replans", "Re-plans the controller started", registry=r)

    def request(self, model: str, outcome: str, latency_s: float | None = None, slo_s: float | None = None) -> None:
        """One request's outcome at the ingress; an ok one with its latency."""
        self.requests.labels(model, outcome).inc()
        if latency_s is not None:
            self.latency.labels(model).observe(latency_s)
            if slo_s is not None and latency_s <= slo_s:
                self.within_slo.labels(model).inc()

    def model_state(self, model: str, rate: float, attainment: float | None, capacity: float, planned: float) -> None:
        """What the controller sees and holds for one model."""
        self.arrival_rate.labels(model).set(rate)
        if attainment is not None:
            self.attainment.labels(model).set(attainment)
        self.capacity.labels(model).set(capacity)
        self.planned_rate.labels(model).set(planned)
        self.headroom.labels(model).set(capacity / rate - 1.0 if rate > 0 else float("inf"))

    def plan(self, plan) -> None:
        """The running plan's size and how far from its proven bound."""
        nan = float("nan")
        self.plan_gpus.set(plan.gpus_used)
        self.plan_bound.set(nan if plan.lower_bound is None else plan.lower_bound)
        gap = None if plan.lower_bound is None or not plan.gpus_used else (plan.gpus_used - plan.lower_bound) / plan.gpus_used
        self.plan_gap.set(nan if gap is None else gap)

    def transition(self, created: int, removed: int) -> None:
        self.replans.inc()
        self.segment_changes.labels("create").inc(created)
        self.segment_changes.labels("remove").inc(removed)

    def attach(self, ingress) -> None:
        """Watch an `ingress.Ingress`: every request's outcome, latency and batch through each
        route's observer hook; in-flight counts read from its admission counters at each scrape;
        capacity and planned rate from its spec."""
        for model, route in ingress.models.items():
            m = ingress.spec[model]
            self.watch(model, route)
            self.capacity.labels(model).set(m.get("capacity", sum(x["throughput"] for x in m["segments"])))
            self.planned_rate.labels(model).set(m["rate"])
        self.registry.register(_InflightCollector(ingress))

    def watch(self, model: str, route) -> None:
        """Observe one model route (`ingress.ModelRoute`): a route the live controller adds later
        is watched when it is added. Its SLO is read at each request, so an SLO switched at
        runtime counts from then on."""
        def observe(outcome: str, i: int | None, latency_s: float | None, batch) -> None:
            if outcome in OUTCOMES:
                self.request(model, outcome, latency_s, route.slo_s)
            if outcome == "ok" and i is not None and batch:
                self.batch.labels(model, route.names[i]).observe(batch)  # names change with transitions
        route.observer = observe

    def exposition(self, only=None, skip=()) -> bytes:
        """The text format a Prometheus server scrapes; `only`/`skip`: the metric families (names
        without the _total/_bucket suffixes) to keep or leave out."""
        from prometheus_client import generate_latest

        if only is None and not skip:
            return generate_latest(self.registry)
        return generate_latest(_Families(self.registry, only, skip))

    def serve(self, port: int, host: str = "127.0.0.1"):
        """Expose /metrics on host:port (loopback by default); returns the server, to shut down."""
        from prometheus_client import start_http_server

        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return server


class _Families:
    """A registry's families, some kept (what `generate_latest` needs: `collect`)."""

    def __init__(self, registry, only, skip) -> None:
        self.registry, self.only, self.skip = registry, only, frozenset(skip)

    def collect(self):
        for mf in self.registry.collect():
            if (self.only is None or mf.name in self.only) and mf.name not in self.skip:
                yield mf


class _InflightCollector:
    """parvagpu_segment_inflight_now read from the ingress's admission counters when scraped."""

    def __init__(self, ingress) -> None:
        self.ingress = ingress

    def describe(self):
        return []

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily

        g = GaugeMetricFamily("parvagpu_segment_inflight_now", "Requests in flight per segment at the ingress",
                              labels=["model", "segment"])
        for model, route in self.ingress.models.items():
            for name, n in zip(route.names, route.admission.inflight):
                g.add_metric([model, name], n)
        yield g
