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
import math
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Awaitable, Callable, NamedTuple
from urllib.parse import urlsplit

from parvagpu.core.errors import ParvaError
from parvagpu.serving.oip import (
    DTYPES, HEADER_LENGTH, OipError, TensorSpec, datatype_of, decode_response, encode_request,
)
from parvagpu.serving.stats import ModelStats, summarize
from parvagpu.core.extras import install_hint

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
    total = sum(t.rate for t in targets)
    if total * duration_s > 2 * max_requests + 1000:
        # Arrivals are cumulated gaps, so a shorter window gives the same first events: generate only
        # about twice the requests that will be kept, not rate x duration of them.
        duration_s = (2 * max_requests + 1000) / total
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
    _check_load(targets, duration_s, timeout_s, max_requests)
    events = schedule(targets, duration_s, seed, max_requests)
    run = await _send_all(events, send, timeout_s)
    sent: dict[str, int] = {t.model: 0 for t in targets}
    for _, model in events:
        sent[model] += 1
    tallies = _tally(targets, run.records)
    stats = tuple(
        summarize(t.model, t.rate, t.slo_ms, tallies[t.model].lat, sent[t.model], rejected=tallies[t.model].rejected,
                  failed=tallies[t.model].failed, timeouts=tallies[t.model].timeouts, duration_s=duration_s)
        for t in targets
    )
    slowest = sorted((r for r in run.records if r.outcome == OK), key=lambda r: -r.latency_s)[:10]
    return LoadResult(
        slowest=[{"model": r.model, "sent_at_s": round(r.offset_s, 3), "latency_ms": round(1000 * r.latency_s, 1)}
                 for r in slowest],
        stats=stats, duration_s=duration_s, wall_s=run.wall_s, seed=seed, rate_scale=rate_scale,
        max_lag_ms=1000.0 * run.lag_s, latencies_ms={m: t.lat for m, t in tallies.items()},
        server={m: t.server for m, t in tallies.items()},
        overhead_ms={m: t.overhead_summary() for m, t in tallies.items() if t.overhead}, target=target_name,
    )


def _check_load(targets: list[Target], duration_s: float, timeout_s: float, max_requests: int) -> None:
    if not 0 < duration_s <= MAX_DURATION_S:
        raise ParvaError(f"duration must be in (0, {MAX_DURATION_S:g}] s, got {duration_s}")
    if not 0 < max_requests <= MAX_REQUESTS:
        raise ParvaError(f"max requests must be in 1..{MAX_REQUESTS}, got {max_requests}")
    if not 0 < timeout_s <= MAX_DURATION_S:
        raise ParvaError(f"timeout must be in (0, {MAX_DURATION_S:g}] s, got {timeout_s}")
    if not all(0 < t.rate < math.inf for t in targets):
        raise ParvaError("every rate must be positive and finite")
    if not targets:
        raise ParvaError("nothing to load: no model with a positive rate")


class _Record(NamedTuple):
    """One request as it ended."""

    model: str
    outcome: str
    latency_s: float  # from its scheduled send time
    server: dict  # the server's own timings
    offset_s: float  # scheduled send time from the start


@dataclass(frozen=True)
class _Sent:
    records: list[_Record]
    lag_s: float  # how far the sender fell behind its schedule at worst
    wall_s: float  # from the start until the last reply


async def _send_all(events: list[tuple[float, str]], send: Sender, timeout_s: float) -> _Sent:
    """Send each event at its time (open loop) and wait for every reply."""
    records: list[_Record] = []
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
        records.append(_Record(model, outcome, loop.time() - at, server, at - start))

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
    return _Sent(records, lag, loop.time() - start)


@dataclass
class _Tally:
    """One model's outcomes: counts, ok latencies (ms), the server's timings and the overhead."""

    lat: list[float] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=lambda: {OK: 0, REJECTED: 0, FAILED: 0, TIMEOUT: 0})
    server: dict[str, list[float]] = field(default_factory=dict)
    overhead: list[float] = field(default_factory=list)  # latency - queue - compute, ms

    rejected = property(lambda self: self.counts[REJECTED])
    failed = property(lambda self: self.counts[FAILED])
    timeouts = property(lambda self: self.counts[TIMEOUT])

    def add(self, r: _Record) -> None:
        self.counts[r.outcome if r.outcome in self.counts else FAILED] += 1
        if r.outcome != OK:
            return
        self.lat.append(1000.0 * r.latency_s)
        for k, v in r.server.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                self.server.setdefault(k, []).append(float(v))
        if "compute_ms" in r.server and "queue_ms" in r.server:
            self.overhead.append(1000.0 * r.latency_s - r.server["queue_ms"] - r.server["compute_ms"])

    def overhead_summary(self) -> dict[str, float]:
        o = summarize("", 0, 1, self.overhead, len(self.overhead))
        return {"p50": o.p50_ms, "p99": o.p99_ms, "mean": o.mean_ms}


def _tally(targets: list[Target], records: list[_Record]) -> dict[str, _Tally]:
    out = {t.model: _Tally() for t in targets}
    for r in records:
        out[r.model].add(r)
    return out


class HttpSender:
    """Requests over one pooled aiohttp session (keep-alive): real OIP requests
    (`POST {base}/v2/models/<model>/infer`, binary tensors, every answer's outputs checked against
    the model's metadata) or, `synthetic`, timing-only ones (`POST {base}/v1/models/<model>/infer`)."""

    def __init__(self, base_url: str, connections: int = 256, synthetic: bool = False,
                 data_dir: Path | None = None) -> None:
        self.base = check_loopback(base_url)
        self.connections = connections
        self.synthetic = synthetic
        self.data_dir = data_dir
        self.payloads: dict[str, Payload] = {}
        self._session = None

    async def __aenter__(self) -> "HttpSender":
        try:
            import aiohttp
        except ImportError:
            raise ParvaError(f"the HTTP load generator needs aiohttp: {install_hint('serve')}") from None
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.connections),
            timeout=aiohttp.ClientTimeout(total=None),
        )
        return self

    async def __aexit__(self, *exc) -> None:
        if self._session is not None:
            await self._session.close()

    async def __call__(self, model: str, rid: int) -> Reply:
        if self.synthetic:
            return await self._synthetic(model, rid)
        p = self.payloads[model]
        # Never follow a redirect: it could lead off loopback, where load must not go.
        async with self._session.post(f"{self.base}/v2/models/{model}/infer", data=p.body, headers=p.headers,
                                      allow_redirects=False) as resp:
            body = await resp.read()
            if resp.status != 200:
                return Reply(REJECTED if resp.status == 503 else FAILED)
            return p.check(body, resp.headers.get(HEADER_LENGTH))

    async def _synthetic(self, model: str, rid: int) -> Reply:
        async with self._session.post(f"{self.base}/v1/models/{model}/infer", json={"id": rid},
                                      allow_redirects=False) as resp:
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
        async with self._session.get(f"{self.base}/v1/models", allow_redirects=False) as resp:
            if 300 <= resp.status < 400:
                raise ParvaError(f"{self.base}/v1/models answered a redirect (HTTP {resp.status}); load does not follow redirects")
            if resp.status != 200:
                raise ParvaError(f"{self.base}/v1/models answered HTTP {resp.status}")
            data = await resp.json()
        try:
            return [Target(str(m["model"]), float(m["rate"]), float(m["latency_ms"])) for m in data["models"]]
        except (KeyError, TypeError, ValueError):
            raise ParvaError(f"{self.base}/v1/models: unexpected answer") from None

    async def prepare(self, models: list[str]) -> None:
        """Each model's request payload, from its metadata (GET /v2/models/<model>)."""
        if self.synthetic:
            return
        for model in models:
            async with self._session.get(f"{self.base}/v2/models/{model}", allow_redirects=False) as resp:
                if resp.status != 200:
                    raise ParvaError(f"{self.base}/v2/models/{model} answered HTTP {resp.status}: {await resp.text()}")
                meta = await resp.json()
            self.payloads[model] = Payload.build(model, meta, self.data_dir)


@dataclass(frozen=True)
class Payload:
    """One model's request, encoded once (binary tensors), and what its answers must hold."""

    body: bytes
    headers: dict
    items: int
    outputs: dict  # output name -> (datatype, per-item shape with -1)

    @classmethod
    def build(cls, model: str, meta: dict, data_dir: Path | None) -> "Payload":
        try:
            inputs = {t["name"]: _input_tensor(model, t, data_dir) for t in meta["inputs"]}
            outputs = {t["name"]: (t["datatype"], tuple(t["shape"][1:])) for t in meta["outputs"]}
        except (KeyError, TypeError, IndexError):
            raise ParvaError(f"{model}: unexpected model metadata") from None
        items = {a.shape[0] for a in inputs.values()}
        if len(items) != 1:
            raise ParvaError(f"{model}: the inputs hold different numbers of items: {sorted(items)}")
        body, n = encode_request(inputs, binary=True)
        headers = {"content-type": "application/octet-stream"}
        if n is not None:
            headers[HEADER_LENGTH] = str(n)
        return cls(body, headers, items.pop(), outputs)

    def check(self, body: bytes, header_length: str | None) -> Reply:
        """OK with the server's timings if the answer holds exactly the declared outputs, each of
        its datatype and shape for this request's items; FAILED otherwise."""
        try:
            outs = decode_response(body, header_length)
            doc = json.loads(body[:int(header_length)] if header_length else body)
        except (OipError, ValueError, TypeError):
            return Reply(FAILED)
        if set(outs) != set(self.outputs):
            return Reply(FAILED)
        for name, arr in outs.items():
            datatype, shape = self.outputs[name]
            if datatype_of(arr) != datatype or not TensorSpec(name, datatype, shape).fits(arr.shape) \
                    or arr.shape[0] != self.items:
                return Reply(FAILED)
        params = doc.get("parameters") if isinstance(doc, dict) else None
        return Reply(OK, params if isinstance(params, dict) else {})


def _input_tensor(model: str, t: dict, data_dir: Path | None):
    """The input tensor `t` of a request to `model`: DIR/<model>/<input>.npy if given (items
    first), else one item generated from the metadata (-1 as 8): normal floats, integers 0-999,
    random booleans."""
    import numpy as np

    if data_dir is not None:
        path = data_dir / model / f"{t['name']}.npy"
        try:
            arr = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise ParvaError(f"{path}: cannot read: {exc}") from None
        if datatype_of(arr) != t["datatype"] or not TensorSpec(t["name"], t["datatype"], tuple(t["shape"][1:])).fits(arr.shape):
            raise ParvaError(f"{path}: {datatype_of(arr)} {list(arr.shape)} does not fit {t['datatype']} {t['shape']}")
        return arr
    shape = (1, *(8 if d == -1 else d for d in t["shape"][1:]))
    rng = np.random.default_rng(0)
    dt = DTYPES.get(t["datatype"])
    if dt is None or dt.kind == "O":
        raise ParvaError(f"{model}: cannot generate a {t['datatype']} input {t['name']!r}; give --data DIR")
    if dt.kind == "f":
        return rng.standard_normal(shape).astype(dt)
    if dt.kind == "b":
        return rng.integers(0, 2, shape).astype(bool)
    return rng.integers(0, 1000, shape).astype(dt)


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
    synthetic: bool = False,
    data_dir: Path | None = None,
) -> LoadResult:
    """Run a load against a served plan over HTTP; `targets` None = ask the server (rates scaled).
    Real OIP requests unless `synthetic` (see `HttpSender`)."""

    async def main() -> LoadResult:
        async with HttpSender(url, synthetic=synthetic, data_dir=data_dir) as sender:
            served = await sender.models()  # also checks the server is there before any load
            tg = targets
            if tg is None:
                tg = [Target(t.model, t.rate * rate_scale, t.slo_ms) for t in served]
            else:
                missing = sorted({t.model for t in tg} - {t.model for t in served})
                if missing:
                    raise ParvaError(f"{sender.base} does not serve: {', '.join(missing)}")
            await sender.prepare([t.model for t in tg])
            return await run_load(tg, sender, duration_s, seed, timeout_s, max_requests, rate_scale, sender.base)

    try:
        return asyncio.run(main())
    except OSError as exc:
        raise ParvaError(f"{url}: cannot connect: {exc.strerror or exc}") from None


@dataclass
class StepLoad:
    """A rate step on one model: the load before and after, and every reply's (seconds from the
    start, outcome) to see when 503s happened."""

    base: LoadResult
    extra: LoadResult
    replies: list[tuple[float, str]]

    @property
    def lost(self) -> int:
        return self.base.lost + self.extra.lost


def step_load(url: str, target: Target, factor: float, step_at_s: float, duration_s: float, seed: int = 0,
              timeout_s: float = 10.0, synthetic: bool = True) -> StepLoad:
    """Open-loop load on one model at `target.rate`, raised to `factor` x that rate at `step_at_s`
    (a second stream of (factor - 1) x the rate joins), until `duration_s`."""
    if not factor > 1 or not 0 < step_at_s < duration_s:
        raise ParvaError("a step needs factor > 1 and 0 < step time < duration")

    async def main() -> StepLoad:
        replies: list[tuple[float, str]] = []
        loop = asyncio.get_running_loop()
        async with HttpSender(url, synthetic=synthetic) as sender:
            await sender.prepare([target.model])
            t0 = loop.time()

            async def send(model: str, rid: int) -> Reply:
                r = await sender(model, rid)
                replies.append((loop.time() - t0, r.outcome))
                return r

            async def later() -> LoadResult:
                await asyncio.sleep(step_at_s)
                more = Target(target.model, target.rate * (factor - 1), target.slo_ms)
                return await run_load([more], send, duration_s - step_at_s, seed + 1, timeout_s)

            base, extra = await asyncio.gather(run_load([target], send, duration_s, seed, timeout_s), later())
        return StepLoad(base, extra, sorted(replies))

    try:
        return asyncio.run(main())
    except OSError as exc:
        raise ParvaError(f"{url}: cannot connect: {exc.strerror or exc}") from None
