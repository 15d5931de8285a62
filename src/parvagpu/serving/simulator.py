"""Discrete-event simulation of a served plan: predicted latency percentiles and SLO attainment.

Model (the serving policy of `policy.py`, the routing of `router.py`):

- Each model's requests arrive as a Poisson process at its planned rate (times `rate_scale`), from a
  seeded numpy `Generator` (one independent stream per model, in sorted model order).
- The ingress sends each request to the next pick of the smooth weighted round-robin router, exactly
  as the serving ingress does; when that segment is full it spills over to the best-credited segment
  of the model with room, and only when none has room is the request rejected (the ingress's
  `router.pick` with the same eligibility). Without a spill, segments share nothing, so each is
  first simulated on its own on the router's fixed sequence (cost linear in the requests); a model
  whose segments rejected anything that way, and that has more than one segment, is simulated again
  with its segments together, arrival by arrival, so the spills happen as they would when served.
- A segment is `procs` servers sharing one FIFO queue. A request that finds `limit` requests in
  flight (queued or executing) at the segment is rejected (HTTP 503 when served). When a server is
  free and a request waits, the server opens a batch; the batch closes when `batch` requests are
  queued or `wait_s` after it opened, whichever comes first, and takes up to `batch` requests.
- Service time of a batch of k requests: the profiled per-batch latency of the segment's
  (size, procs) point, linearly interpolated in batch size between profiled batch sizes and pinned
  to the plan's latency at the segment's own batch. Without profiles every batch takes the full
  batch's latency (an upper bound: latency grows with batch size).

Not modelled: per-replica queues (Ray routes each request to one replica; here the servers of a
segment share one queue), and transport overhead (add it with `overhead_ms`).
"""

from __future__ import annotations

import heapq
import math
import time
from bisect import bisect_right
from collections import deque
from heapq import heappop, heappush, heapreplace
from dataclasses import dataclass, field

from parvagpu.core.model import DeploymentMap, Profile
from parvagpu.core.errors import ParvaError
from parvagpu.serving.policy import ModelSpec, SegmentSpec, serving_spec
from parvagpu.serving.router import WeightedRouter
from parvagpu.serving.stats import ModelStats, summarize

MAX_DURATION_S = 86_400.0  # one simulated day
MAX_REQUESTS = 5_000_000  # arrivals held in memory at once (about 40 bytes each, per array)


def service_times(seg: SegmentSpec, profile: Profile | None = None) -> list[float]:
    """Seconds per batch for batch sizes 1..seg.batch (index k-1)."""
    full = seg.latency_ms / 1000.0
    if not full > 0:
        raise ParvaError(f"segment {seg.name}: the plan gives no latency for it; pass --profiles")
    if profile is None:
        return [full] * seg.batch
    pts = sorted(
        (p.batch, p.latency_s)
        for p in profile.points
        if p.size == seg.size and p.procs == seg.procs and p.runnable and p.batch < seg.batch
    )
    pts.append((seg.batch, full))
    out = []
    for k in range(1, seg.batch + 1):
        if k <= pts[0][0]:
            out.append(pts[0][1])
            continue
        for (b0, l0), (b1, l1) in zip(pts, pts[1:]):
            if b0 <= k <= b1:
                out.append(l0 + (l1 - l0) * (k - b0) / (b1 - b0))
                break
    return out


def _service_times(seg: SegmentSpec, profile: Profile | None) -> tuple[float, ...]:
    """`service_times`, kept per (profile, size, procs, batch, latency): the trace replay's serving
    model simulates the same segment configurations at many loads. The entry holds its profile,
    so a matching id is that same (frozen) profile."""
    key = (id(profile), seg.size, seg.procs, seg.batch, seg.latency_ms)
    hit = _SERVICE_TIMES.get(key)
    if hit is None or hit[0] is not profile:
        if len(_SERVICE_TIMES) >= 4096:
            _SERVICE_TIMES.clear()
        hit = _SERVICE_TIMES[key] = (profile, tuple(service_times(seg, profile)))
    return hit[1]


_SERVICE_TIMES: dict[tuple, tuple] = {}


@dataclass
class SegmentResult:
    latencies_s: "object"  # numpy array, NaN for a rejected request
    batches: dict[int, int] = field(default_factory=dict)  # batch size -> count


def simulate_segment(
    arrivals,
    procs: int,
    batch: int,
    wait_s: float,
    service_s: list[float],
    limit: int | None = None,
    stop_at_reject: bool = False,
) -> SegmentResult | None:
    """Simulate one segment on sorted arrival times (seconds). Returns per-request latency (NaN if
    rejected) and the batch-size histogram. `limit` None = unbounded queue. With `stop_at_reject`,
    None at the first rejection (the caller then simulates the model with spill-over instead).

    The segment: a FIFO queue of admitted arrivals, a heap of server free times, and a heap of
    (completion time, requests) that releases the in-flight count. An arrival is admitted when
    fewer than `limit` requests are in flight as it stands then (batches finished by then have
    released theirs). One loop over local variables, the admission written out where it happens:
    the trace replay runs this for every serving-model state, so it is kept tight."""
    import numpy as np

    if procs < 1 or batch < 1 or len(service_s) < batch:
        raise ParvaError(f"bad segment: procs={procs} batch={batch} service times={len(service_s)}")
    arr = arrivals.tolist() if hasattr(arrivals, "tolist") else list(arrivals)
    n = len(arr)
    cap = limit if limit is not None else n + 1
    lat = [math.nan] * n
    batches: dict[int, int] = {}
    free = [0.0] * procs
    done: list[tuple[float, int]] = []
    q: deque[int] = deque()
    pop, push, replace_top = heapq.heappop, heapq.heappush, heapq.heapreplace
    inflight = i = 0
    while i < n or q:
        if not q:  # nothing queued: admit the next arrival
            t = arr[i]
            while done and done[0][0] <= t:
                inflight -= pop(done)[1]
            if inflight < cap:
                inflight += 1
                q.append(i)
            elif stop_at_reject:
                return None
            i += 1
            continue
        opened = free[0]  # the first free server takes the oldest request
        if arr[q[0]] > opened:
            opened = arr[q[0]]
        while i < n and arr[i] <= opened:  # every arrival up to then is admitted or rejected first
            t = arr[i]
            while done and done[0][0] <= t:
                inflight -= pop(done)[1]
            if inflight < cap:
                inflight += 1
                q.append(i)
            elif stop_at_reject:
                return None
            i += 1
        if len(q) >= batch or wait_s <= 0:  # the batch closes when `batch` are queued or wait_s later
            close = opened
        else:
            close = deadline = opened + wait_s
            while i < n and arr[i] <= deadline:
                t = arr[i]
                i += 1
                while done and done[0][0] <= t:
                    inflight -= pop(done)[1]
                if inflight < cap:
                    inflight += 1
                    q.append(i - 1)
                    if len(q) >= batch:
                        close = t
                        break
                elif stop_at_reject:
                    return None
        k = batch if len(q) > batch else len(q)
        finish = close + service_s[k - 1]
        replace_top(free, finish)
        push(done, (finish, k))
        batches[k] = batches.get(k, 0) + 1
        for _ in range(k):
            j = q.popleft()
            lat[j] = finish - arr[j]
    return SegmentResult(np.asarray(lat, dtype=float), batches)


class _Tie(Exception):
    """A request arrived exactly when a batch closed: only the step-by-step order decides whether
    it joins that batch, so the lazy pass hands over to the eager one."""


class _LiveSegment:
    """One segment simulated arrival by arrival, for the spill-over path: the batching of
    `simulate_segment`, but a batch is formed only once the next arrival is past its close time
    (an arrival before it may still join), so the in-flight count is right when the ingress asks.
    The queue holds arrival times; requests leave it in arrival order, so latencies are appended.

    `lazy`: the caller asks `has_room` only once `inflight` (not yet net of finished batches)
    reaches `ask` (the limit), since releasing can only lower it and forming batches leaves it
    unchanged; batches are then formed later, in one go, to the same closes. They take the same
    requests unless one arrived exactly at a close (`_Tie`). Not lazy, `ask` is 0: always asked."""

    __slots__ = ("batch", "wait_s", "svc", "limit", "lat", "queue", "free", "done", "inflight", "batches",
                 "lazy", "ask", "until", "fastest")

    def __init__(self, procs: int, batch: int, wait_s: float, service_s: list[float], limit: int,
                 lazy: bool = False) -> None:
        self.batch, self.wait_s, self.svc, self.limit, self.lazy = batch, wait_s, service_s, limit, lazy
        self.ask = limit if lazy else 0
        self.until = -math.inf  # a lazy segment found full is not asked again before this time
        self.fastest = min(service_s[:batch])
        self.lat: list[float] = []
        self.queue: deque[float] = deque()
        self.free = [0.0] * procs
        self.done: list[tuple[float, int]] = []
        self.inflight = 0
        self.batches: dict[int, int] = {}

    def has_room(self, t: float) -> bool:
        """Start every batch whose close is known by time t, release the finished ones, and say
        whether a request arriving at t is admitted."""
        q = self.queue
        if q:
            free, batch, wait_s, svc, lat = self.free, self.batch, self.wait_s, self.svc, self.lat
            while q:
                opened = free[0]
                if q[0] > opened:
                    opened = q[0]
                if opened > t:
                    break
                full = q[batch - 1] if len(q) >= batch else None  # when the batch-th queued arrived
                if wait_s <= 0 or (full is not None and full <= opened):
                    close = edge = opened
                elif full is not None and full <= opened + wait_s:
                    close, edge = full, opened + wait_s  # a full batch, unless filled at the deadline
                elif opened + wait_s <= t:
                    close = edge = opened + wait_s
                else:
                    break  # not known yet: an arrival before the deadline may still join
                k = bisect_right(q, close, 0, batch if len(q) > batch else len(q))  # queued by the close
                if k > 1 and q[k - 1] == edge and self.lazy:
                    raise _Tie  # it may have come after this batch formed: decided step by step
                finish = close + svc[k - 1]
                heapreplace(free, finish)
                heappush(self.done, (finish, k))
                self.batches[k] = self.batches.get(k, 0) + 1
                for _ in range(k):
                    lat.append(finish - q.popleft())
        done = self.done
        while done and done[0][0] <= t:
            self.inflight -= heappop(done)[1]
        if self.inflight < self.limit:
            return True
        if self.lazy:  # full until a batch ends: one running, or one yet to start on the first free server
            end = done[0][0] if done else math.inf
            if q:
                start = self.free[0] if self.free[0] > q[0] else q[0]
                end = min(end, start + self.fastest)
            self.until = end
        return False

    def add(self, t: float) -> None:
        self.queue.append(t)
        self.inflight += 1


def simulate_spilling(arrivals, segments: list[tuple[int, int, float, list[float], int]],
                      shares: list[float]) -> tuple[list, list[int]]:
    """One model's segments together: (procs, batch, wait_s, service_s, limit) each, routed by the
    ingress's router with spill-over (see the module doc). Per segment its requests' latencies (s)
    and batch histogram, and per segment the rejections of requests scheduled to it.

    Run with lazy segments (the trace replay's serving model runs this thousands of times); when a
    request arrives exactly at a batch's close, again step by step, which decides that order."""
    out = spilling_lazily(arrivals, segments, shares)
    return _spilling_eagerly(arrivals, segments, shares) if out is None else out


def _spilling_eagerly(arrivals, segments: list[tuple[int, int, float, list[float], int]],
                      shares: list[float]) -> tuple[list, list[int]]:
    """The spill-over loop with every segment asked at every arrival (decides ties)."""
    import numpy as np

    times = arrivals.tolist() if hasattr(arrivals, "tolist") else list(arrivals)
    segs, rejected = _spill(times, [_LiveSegment(*s) for s in segments], shares)
    return [SegmentResult(np.asarray(s.lat, dtype=float), s.batches) for s in segs], rejected


def spilling_lazily(arrivals, segments: list[tuple[int, int, float, list[float], int]],
                    shares: list[float]) -> tuple[list, list[int]] | None:
    """`simulate_spilling` with lazy segments, or None when a request arrived exactly at a batch's
    close. Without a tie, a run that neither spilled nor rejected is also what the segments give
    simulated apart on the router's sequence (`simulate_segment`): same batches, same latencies."""
    import numpy as np

    times = arrivals.tolist() if hasattr(arrivals, "tolist") else list(arrivals)
    try:
        segs, rejected = _spill(times, [_LiveSegment(*s, lazy=True) for s in segments], shares)
    except _Tie:
        return None
    return [SegmentResult(np.asarray(s.lat, dtype=float), s.batches) for s in segs], rejected


def _spill(times: list[float], segs: list[_LiveSegment], shares: list[float]) -> tuple[list, list[int]]:
    """The spill-over loop, routed as `WeightedRouter.pick` with an eligibility test routes: same
    credits, same ties (the lowest index), same undo (a rejection changes no credit).

    After m accepted requests, c[i] of them by segment i, its credit is m w_i - total c[i]. While
    the counts are those of a router that never spilled, the next pick is that router's, read from
    its cached sequence (`plain`) instead of crediting every segment per request (most of this
    loop's time when it did); after a spill the credits are computed until the counts meet again
    (`cp`: the plain router's counts meanwhile). A lazy segment below its limit is not asked."""
    router = WeightedRouter(shares)
    weights, total, order = router.weights, router.total, range(len(segs))
    plain = router.sequence(len(times))
    c = [0] * len(segs)
    cp: list[int] | None = None
    m = 0
    rejected = [0] * len(segs)
    for t in times:
        if cp is None:
            best = plain[m]
            s = segs[best]
            if s.inflight < s.ask or (t >= s.until and s.has_room(t)):  # the plain router's pick, with room
                s.queue.append(t)
                s.inflight += 1
                c[best] += 1
                m += 1
                continue
            room = False
        else:
            best, top, m1 = 0, weights[0] * (m + 1) - total * c[0], m + 1
            for i in order:  # the first of the highest credits is scheduled
                x = m1 * weights[i] - total * c[i]
                if x > top:
                    best, top = i, x
            s = segs[best]
            room = s.inflight < s.ask or (t >= s.until and s.has_room(t))
        if not room:  # spill over to the best-credited one with room
            ok = [i for i in order if segs[i].inflight < segs[i].ask or (t >= segs[i].until and segs[i].has_room(t))]
            if not ok:
                rejected[best] += 1
                continue
            best = max(ok, key=lambda i: ((m + 1) * weights[i] - total * c[i], -i))
            s = segs[best]
        s.add(t)
        c[best] += 1
        if cp is not None:
            cp[plain[m]] += 1
            if cp == c:
                cp = None
        elif best != plain[m]:
            cp = c[:]
            cp[best] -= 1
            cp[plain[m]] += 1
        m += 1
    for s in segs:
        s.has_room(math.inf)
    return segs, rejected


def poisson_arrivals(rng, rate: float, duration_s: float):
    """Arrival times of a Poisson process of `rate` on [0, duration): cumulated exponential gaps."""
    import numpy as np

    if rate <= 0 or duration_s <= 0:
        return np.empty(0)
    mean = rate * duration_s
    n = int(mean + 8 * math.sqrt(mean) + 16)
    t = np.cumsum(rng.exponential(1.0 / rate, n))
    while t[-1] < duration_s:  # practically never: 8 sigma
        t = np.concatenate([t, t[-1] + np.cumsum(rng.exponential(1.0 / rate, n))])
    return t[t < duration_s]


@dataclass(frozen=True)
class SimResult:
    stats: tuple[ModelStats, ...]
    rule: tuple[dict, ...]  # per model: the 0.45 L rule against the predicted p99
    segments: tuple[dict, ...]  # per segment: rate, utilisation, mean batch, rejections
    duration_s: float
    seed: int
    rate_scale: float
    elapsed_s: float  # wall time of the simulation
    requests: int
    latencies_ms: dict = field(default_factory=dict, compare=False)  # model -> ok latencies (numpy)

    def to_dict(self) -> dict:
        return {
            "kind": "simulation",
            "duration_s": self.duration_s,
            "seed": self.seed,
            "rate_scale": self.rate_scale,
            "elapsed_s": self.elapsed_s,
            "requests": self.requests,
            "models": [s.to_dict() for s in self.stats],
            "rule": list(self.rule),
            "segments": list(self.segments),
        }


def simulate(
    plan: DeploymentMap,
    duration_s: float = 30.0,
    seed: int = 0,
    rate_scale: float = 1.0,
    profiles: dict[str, Profile] | None = None,
    depth: int | None = None,
    wait_s: float | None = None,
    overhead_ms: float = 0.0,
    unbounded: bool = False,
    service_scale: float = 1.0,
) -> SimResult:
    """Simulate `duration_s` of Poisson traffic against the plan as served (see module doc).

    `unbounded` switches admission off (every request queues), to see what the limit protects;
    `service_scale` multiplies every service time (hardware slower or faster than profiled) while
    admission keeps the limits computed from the profile, as a server without feedback would."""

    if not 0 < duration_s <= MAX_DURATION_S:
        raise ParvaError(f"duration must be in (0, {MAX_DURATION_S:g}] s, got {duration_s}")
    if not 0 <= overhead_ms < math.inf:
        raise ParvaError(f"overhead must be >= 0 ms, got {overhead_ms}")
    if not 0 < service_scale < math.inf:
        raise ParvaError(f"service time scale must be positive and finite, got {service_scale}")
    started = time.perf_counter()
    spec: dict[str, ModelSpec] = serving_spec(plan, rate_scale, depth, wait_s)
    how = _How(duration_s, overhead_ms, unbounded, service_scale)
    runs = [_simulate_model(ms, arrivals, (profiles or {}).get(model), how)
            for model, ms, arrivals in _arrivals(spec, duration_s, seed)]
    return SimResult(
        stats=tuple(r.stats for r in runs), rule=tuple(_rule_row(ms, r.stats) for ms, r in zip(spec.values(), runs)),
        segments=tuple(row for r in runs for row in r.segments), duration_s=duration_s, seed=seed,
        rate_scale=rate_scale, elapsed_s=time.perf_counter() - started, requests=sum(r.requests for r in runs),
        latencies_ms={r.stats.model: r.latencies_ms for r in runs},
    )


def within_slo(plan: DeploymentMap, duration_s: float, seed: int = 0,
               profiles: dict[str, Profile] | None = None) -> tuple[int, int]:
    """(requests answered within the SLO, requests sent) of a plan serving one model: the counts of
    `simulate(plan, duration_s, seed, profiles=profiles)`'s stats, from the same arrivals and the
    same segment runs, without the percentiles and report rows it builds around them (the trace
    replay's serving model asks for thousands of these)."""
    import numpy as np

    spec = serving_spec(plan)
    ((model, ms, arrivals),) = _arrivals(spec, duration_s, seed)
    _, runs, _, _ = _segment_runs(ms, arrivals, (profiles or {}).get(model), _How(duration_s, 0.0, False, 1.0))
    slo = ms.latency_ms
    return sum(int(np.count_nonzero(r.latencies_s * 1000.0 + 0.0 <= slo)) for r in runs), int(arrivals.size)


def _arrivals(spec: dict[str, ModelSpec], duration_s: float, seed: int):
    """Each model's Poisson arrivals, (model, spec, times), one seeded stream per model in the
    spec's order, made as they are taken; shared by `simulate` and `within_slo`, whose counts must
    be the same. At most MAX_REQUESTS in all."""
    import numpy as np

    expected = sum(ms.rate for ms in spec.values()) * duration_s
    if not expected <= MAX_REQUESTS:
        raise ParvaError(
            f"the rates x duration make {expected:.3g} requests to simulate, more than {MAX_REQUESTS:,}; "
            "lower the duration or the rate scale"
        )
    streams = np.random.SeedSequence(seed).spawn(len(spec))
    return ((model, ms, poisson_arrivals(np.random.default_rng(ss), ms.rate, duration_s))
            for (model, ms), ss in zip(spec.items(), streams))


@dataclass(frozen=True)
class _How:
    """The simulation's knobs that every segment run needs."""

    duration_s: float
    overhead_ms: float
    unbounded: bool
    service_scale: float


@dataclass(frozen=True)
class _ModelRun:
    stats: ModelStats
    segments: tuple[dict, ...]  # one report row per segment
    latencies_ms: "object"  # numpy array of ok latencies
    requests: int


def _simulate_model(ms: ModelSpec, arrivals, profile: Profile | None, how: _How) -> _ModelRun:
    """Route one model's arrivals over its segments, simulate each, and summarise the model."""
    return _model_run(ms, *_segment_runs(ms, arrivals, profile, how), arrivals, how)


def _segment_runs(ms: ModelSpec, arrivals, profile: Profile | None,
                  how: _How) -> tuple[list[list[float]], list[SegmentResult], list[int], list[int]]:
    """One model's arrivals routed over its segments and simulated: per segment its service times,
    its run, the requests routed to it and those it rejected."""
    import numpy as np

    svcs = [[t * how.service_scale for t in _service_times(seg, profile)] for seg in ms.segments]
    limits = [None if how.unbounded else seg.limit for seg in ms.segments]
    several = len(ms.segments) > 1  # then one rejection means spills: stop there
    if several and None not in limits:  # spills likely (the replay measures loads up to 4x): at once
        spilled = spilling_lazily(arrivals, [(seg.procs, seg.batch, seg.wait_s, svc, lim)
                                             for seg, svc, lim in zip(ms.segments, svcs, limits)],
                                  [s.throughput for s in ms.segments])
        if spilled is not None:
            runs, lost = spilled
            return svcs, runs, [r.latencies_s.size + n for r, n in zip(runs, lost)], lost
    picks = np.asarray(WeightedRouter([s.throughput for s in ms.segments]).sequence(arrivals.size), dtype=int)
    runs = []
    for i, (seg, svc, lim) in enumerate(zip(ms.segments, svcs, limits)):
        run = simulate_segment(arrivals[picks == i], seg.procs, seg.batch, seg.wait_s, svc, lim, several)
        if run is None:
            break
        runs.append(run)
    routed = [int(np.count_nonzero(picks == i)) for i in range(len(ms.segments))]
    lost = [int(np.isnan(r.latencies_s).sum()) for r in runs]
    if len(runs) < len(ms.segments):  # a full segment would have spilled over: serve's way, step by
        # step (only limited segments reject, and the lazy loop above already declined: a tie)
        runs, lost = _spilling_eagerly(
            arrivals, [(seg.procs, seg.batch, seg.wait_s, svc, lim) for seg, svc, lim in zip(ms.segments, svcs, limits)],
            [s.throughput for s in ms.segments])
        routed = [r.latencies_s.size + n for r, n in zip(runs, lost)]
    return svcs, runs, routed, lost


def _model_run(ms: ModelSpec, svcs: list[list[float]], runs: list[SegmentResult], routed: list[int],
               lost: list[int], arrivals, how: _How) -> _ModelRun:
    """One model's segment rows and summary from its segments' runs (requests routed to each, and
    rejected)."""
    import numpy as np

    rows, served = [], []
    for seg, svc, res, n, rej in zip(ms.segments, svcs, runs, routed, lost):
        row, ok = _segment_row(seg, svc, res, n, rej, how)
        rows.append(row)
        served.append(ok)
    lat_ms = np.concatenate(served) * 1000.0 + how.overhead_ms if served else np.empty(0)
    rejected = sum(r["rejected"] for r in rows)
    st = summarize(ms.model, ms.rate, ms.latency_ms, lat_ms, int(arrivals.size), rejected=rejected,
                   duration_s=how.duration_s)
    return _ModelRun(st, tuple(rows), lat_ms, int(arrivals.size))


def _segment_row(seg: SegmentSpec, svc: list[float], res: SegmentResult, routed: int, rejected: int,
                 how: _How) -> tuple[dict, "object"]:
    """One segment's report row (requests scheduled to it, those it rejected) and its served
    latencies (s)."""
    import numpy as np

    served = res.latencies_s[~np.isnan(res.latencies_s)]
    nb = sum(res.batches.values())
    busy = sum(c * svc[k - 1] for k, c in res.batches.items())
    row = {
        "segment": seg.name, "model": seg.model, "size": seg.size, "batch": seg.batch,
        "procs": seg.procs, "rate": routed / how.duration_s, "capacity": seg.throughput,
        "wait_ms": 1000 * seg.wait_s, "limit": seg.limit,
        "utilisation": busy / (seg.procs * how.duration_s),
        "mean_batch": (served.size / nb) if nb else 0.0, "rejected": rejected,
    }
    return row, served


def _rule_row(ms: ModelSpec, st: ModelStats) -> dict:
    """The 0.45 L rule for one model: its slowest segment's batch latency and its predicted p99."""
    worst = max(s.latency_ms for s in ms.segments)
    return {
        "model": ms.model, "slo_ms": ms.latency_ms, "rule_ms": 0.45 * ms.latency_ms,
        "max_batch_latency_ms": worst, "batch_latency_over_slo": worst / ms.latency_ms,
        "p99_ms": st.p99_ms if st.ok else None,
        "p99_over_slo": (st.p99_ms / ms.latency_ms) if st.ok else None,
        "verdict": st.verdict,
    }
