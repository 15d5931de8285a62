"""Open-loop load generator: Poisson arrivals at each model's planned rate, every request counted.

Open loop: a request is sent at its scheduled time whether or not earlier ones have answered, as real
clients do; a closed loop (send, wait, send) slows down with the server and hides queueing. Latency
is measured from the *scheduled* send time, so a generator that falls behind cannot hide delay
(no coordinated omission); how far it fell behind is reported as `max_lag_ms`.

Bounded: a fixed duration, a cap on the number of requests, a per-request timeout; it stops by
itself. Targets only loopback addresses (127.0.0.0/8, ::1, localhost).

Every request ends as exactly one of ok (200), rejected (503 backpressure), failed (another status
or a transport error) or timeout; `lost` = sent minus those must be 0.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
from dataclasses import dataclass, field
from typing import Awaitable, Callable
from urllib.parse import urlsplit

from parvagpu.core.errors import ParvaError
from parvagpu.serving.stats import ModelStats, summarize

OK, REJECTED, FAILED, TIMEOUT = "ok", "rejected", "failed", "timeout"
MAX_REQUESTS = 200_000
MAX_DURATION_S = 3600.0


@dataclass(frozen=True)
class Target:
    model: str
    rate: float  # req/s to offer
    slo_ms: float


@dataclass(frozen=True)
class Reply:
    """What a sender returns: the outcome and, when the server says, its own timings."""

    outcome: str
    server: dict = field(default_factory=dict)  # e.g. compute_ms, queue_ms, batch


Sender = Callable[[str, int], Awaitable[Reply]]


def check_loopback(url: str) -> str:
    """The base URL, if it names a loopback host over http; a ParvaError otherwise."""
    parts = urlsplit(url)
    if parts.scheme not in ("http",):
        raise ParvaError(f"{url}: only http:// URLs on this machine's loopback are allowed")
    host = parts.hostname or ""
    ok = host == "localhost"
    if not ok:
        try:
            ok = ipaddress.ip_address(host).is_loopback
        except ValueError:
            ok = False
    if not ok:
        raise ParvaError(f"{url}: load is only sent to loopback (127.0.0.0/8, ::1, localhost), not {host!r}")
    return f"{parts.scheme}://{parts.netloc}"


@dataclass
class LoadResult:
    stats: tuple[ModelStats, ...]
    duration_s: float  # scheduled traffic window
    wall_s: float  # until the last reply
    seed: int
    rate_scale: float
    max_lag_ms: float
    latencies_ms: dict[str, list[float]]
    server: dict[str, dict[str, list[float]]]  # model -> timing name -> values (ok requests)
    overhead_ms: dict[str, dict[str, float]]  # model -> p50/p99 of latency - queue - compute
    target: str = ""
    slowest: list = field(default_factory=list)  # the 10 slowest ok requests: when sent, how long

    @property
    def lost(self) -> int:
        return sum(s.lost for s in self.stats)

    def to_dict(self, latencies: bool = False) -> dict:
        """The JSON result; with `latencies`, every ok request's latency per model too (for plots)."""
        extra = {"latencies_ms": self.latencies_ms} if latencies else {}
        return extra | {
            "kind": "load",
            "target": self.target,
            "duration_s": self.duration_s,
            "wall_s": self.wall_s,
            "seed": self.seed,
            "rate_scale": self.rate_scale,
            "max_lag_ms": self.max_lag_ms,
            "lost": self.lost,
            "models": [s.to_dict() for s in self.stats],
            "overhead_ms": self.overhead_ms,
            "slowest": self.slowest,
            "server": {
                model: {k: _p50_p99(v) for k, v in timings.items()} for model, timings in self.server.items()
            },
        }


def _p50_p99(values: list[float]) -> dict:
    from parvagpu.serving.stats import percentile

    xs = sorted(values)
    return {"p50": percentile(xs, 50), "p99": percentile(xs, 99), "mean": sum(xs) / len(xs) if xs else None}


def schedule(targets: list[Target], duration_s: float, seed: int, max_requests: int) -> list[tuple[float, str]]:
    """(send time, model) for every request, in time order; one seeded stream per model (in the
    given order), cut at `max_requests` by dropping the latest."""
    import numpy as np

    from parvagpu.serving.simulator import poisson_arrivals

    streams = np.random.SeedSequence(seed).spawn(len(targets))
    events: list[tuple[float, str]] = []
    for t, ss in zip(targets, streams):
        for x in poisson_arrivals(np.random.default_rng(ss), t.rate, duration_s).tolist():
            events.append((x, t.model))
    events.sort()
    return events[:max_requests]


async def run_load(
    targets: list[Target],
    send: Sender,
    duration_s: float,
    seed: int = 0,
    timeout_s: float = 10.0,
    max_requests: int = MAX_REQUESTS,
    rate_scale: float = 1.0,
    target_name: str = "",
) -> LoadResult:
    """Send the schedule open-loop through `send(model, request_id)`, wait for every reply (each
    bounded by `timeout_s`) and summarise per model."""
    if not 0 < duration_s <= MAX_DURATION_S:
        raise ParvaError(f"duration must be in (0, {MAX_DURATION_S:g}] s, got {duration_s}")
    if not 0 < max_requests <= MAX_REQUESTS:
        raise ParvaError(f"max requests must be in 1..{MAX_REQUESTS}, got {max_requests}")
    if not timeout_s > 0:
        raise ParvaError(f"timeout must be positive, got {timeout_s}")
    if not targets:
        raise ParvaError("nothing to load: no model with a positive rate")
    events = schedule(targets, duration_s, seed, max_requests)
    records: list[tuple[str, str, float, dict, float]] = []  # model, outcome, latency s, server timings, offset s
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.05
    lag = 0.0

    async def one(rid: int, model: str, at: float) -> None:
        try:
            reply = await asyncio.wait_for(send(model, rid), timeout_s)
            outcome, server = reply.outcome, reply.server
        except asyncio.TimeoutError:
            outcome, server = TIMEOUT, {}
        except Exception:  # a sender bug or transport error is a failed request, never a lost one
            outcome, server = FAILED, {}
        records.append((model, outcome, loop.time() - at, server, at - start))

    tasks = []
    for rid, (offset, model) in enumerate(events):
        at = start + offset
        delay = at - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        else:
            lag = max(lag, -delay)
        tasks.append(asyncio.ensure_future(one(rid, model, at)))
    if tasks:
        await asyncio.gather(*tasks)
    wall = loop.time() - start

    sent: dict[str, int] = {t.model: 0 for t in targets}
    for _, model in events:
        sent[model] += 1
    by_model: dict[str, dict] = {
        t.model: {"lat": [], OK: 0, REJECTED: 0, FAILED: 0, TIMEOUT: 0, "server": {}, "overhead": []}
        for t in targets
    }
    for model, outcome, latency, server, _ in records:
        m = by_model[model]
        m[outcome if outcome in (OK, REJECTED, FAILED, TIMEOUT) else FAILED] += 1
        if outcome == OK:
            m["lat"].append(1000.0 * latency)
            for k, v in server.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    m["server"].setdefault(k, []).append(float(v))
            if "compute_ms" in server and "queue_ms" in server:
                m["overhead"].append(1000.0 * latency - server["queue_ms"] - server["compute_ms"])
    stats, overhead = [], {}
    for t in targets:
        m = by_model[t.model]
        stats.append(
            summarize(t.model, t.rate, t.slo_ms, m["lat"], sent[t.model], rejected=m[REJECTED],
                      failed=m[FAILED], timeouts=m[TIMEOUT], duration_s=duration_s)
        )
        if m["overhead"]:
            o = summarize(t.model, 0, 1, m["overhead"], len(m["overhead"]))
            overhead[t.model] = {"p50": o.p50_ms, "p99": o.p99_ms, "mean": o.mean_ms}
    slowest = sorted((r for r in records if r[1] == OK), key=lambda r: -r[2])[:10]
    return LoadResult(
        slowest=[{"model": r[0], "sent_at_s": round(r[4], 3), "latency_ms": round(1000 * r[2], 1)} for r in slowest],
        stats=tuple(stats), duration_s=duration_s, wall_s=wall, seed=seed, rate_scale=rate_scale,
        max_lag_ms=1000.0 * lag, latencies_ms={t.model: by_model[t.model]["lat"] for t in targets},
        server={t.model: by_model[t.model]["server"] for t in targets}, overhead_ms=overhead,
        target=target_name,
    )


class HttpSender:
    """POST {base}/v1/models/<model>/infer over one pooled aiohttp session (keep-alive)."""

    def __init__(self, base_url: str, connections: int = 256) -> None:
        self.base = check_loopback(base_url)
        self.connections = connections
        self._session = None

    async def __aenter__(self) -> "HttpSender":
        try:
            import aiohttp
        except ImportError:
            raise ParvaError("the HTTP load generator needs aiohttp: pip install 'parvagpu[serve]'") from None
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.connections),
            timeout=aiohttp.ClientTimeout(total=None),
        )
        return self

    async def __aexit__(self, *exc) -> None:
        if self._session is not None:
            await self._session.close()

    async def __call__(self, model: str, rid: int) -> Reply:
        async with self._session.post(f"{self.base}/v1/models/{model}/infer", json={"id": rid}) as resp:
            body = await resp.read()
            if resp.status == 200:
                try:
                    data = json.loads(body)
                except ValueError:
                    return Reply(FAILED)
                timing = data.get("timing", {}) if isinstance(data, dict) else {}
                return Reply(OK, timing if isinstance(timing, dict) else {})
            return Reply(REJECTED if resp.status == 503 else FAILED)

    async def models(self) -> list[Target]:
        """The served models and their planned rates and SLOs (GET /v1/models)."""
        async with self._session.get(f"{self.base}/v1/models") as resp:
            if resp.status != 200:
                raise ParvaError(f"{self.base}/v1/models answered HTTP {resp.status}")
            data = await resp.json()
        try:
            return [Target(str(m["model"]), float(m["rate"]), float(m["latency_ms"])) for m in data["models"]]
        except (KeyError, TypeError, ValueError):
            raise ParvaError(f"{self.base}/v1/models: unexpected answer") from None


def targets_from_plan(plan, rate_scale: float = 1.0, models: list[str] | None = None) -> list[Target]:
    if not rate_scale > 0:
        raise ParvaError(f"rate scale must be positive, got {rate_scale}")
    out = [Target(s.model, s.rate * rate_scale, s.latency_ms) for s in plan.services]
    if models:
        unknown = set(models) - {t.model for t in out}
        if unknown:
            raise ParvaError(f"models not in the plan: {', '.join(sorted(unknown))}")
        out = [t for t in out if t.model in models]
    return sorted(out, key=lambda t: t.model)


def load_http(
    url: str,
    targets: list[Target] | None,
    duration_s: float,
    seed: int = 0,
    rate_scale: float = 1.0,
    timeout_s: float = 10.0,
    max_requests: int = MAX_REQUESTS,
) -> LoadResult:
    """Run a load against a served plan over HTTP; `targets` None = ask the server (rates scaled)."""

    async def main() -> LoadResult:
        async with HttpSender(url) as sender:
            served = await sender.models()  # also checks the server is there before any load
            tg = targets
            if tg is None:
                tg = [Target(t.model, t.rate * rate_scale, t.slo_ms) for t in served]
            else:
                missing = sorted({t.model for t in tg} - {t.model for t in served})
                if missing:
                    raise ParvaError(f"{sender.base} does not serve: {', '.join(missing)}")
            return await run_load(tg, sender, duration_s, seed, timeout_s, max_requests, rate_scale, sender.base)

    try:
        return asyncio.run(main())
    except OSError as exc:
        raise ParvaError(f"{url}: cannot connect: {exc.strerror or exc}") from None
