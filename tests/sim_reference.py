"""The serving simulator's segment and spill-over loops as first written: one small method per step
(admit, fill, start a batch; the router's `pick` with an eligibility test). The simulator now runs
fused loops over local variables for speed; tests/test_simulator_fast.py checks that they give
exactly these results."""

from __future__ import annotations

import heapq
import math
from collections import deque

from parvagpu.core.errors import ParvaError
from parvagpu.serving.router import WeightedRouter
from parvagpu.serving.simulator import SegmentResult


class _SegmentQueue:
    """One segment's FIFO queue and in-flight count over sorted arrival times `arr`.

    `admit(j)` applies the in-flight limit as it stands at arrival j (batches finished by then have
    released their requests); `start_batch` takes up to `batch` queued requests into a batch that
    ends at `finish` and records each one's latency."""

    __slots__ = ("arr", "cap", "queue", "inflight", "done", "lat", "batches")

    def __init__(self, arr: list[float], cap: int) -> None:
        self.arr = arr
        self.cap = cap
        self.queue: deque[int] = deque()
        self.inflight = 0
        self.done: list[tuple[float, int]] = []  # heap of (completion time, requests completed)
        self.lat = [math.nan] * len(arr)
        self.batches: dict[int, int] = {}

    def admit(self, j: int) -> bool:
        t, done = self.arr[j], self.done
        while done and done[0][0] <= t:
            self.inflight -= heapq.heappop(done)[1]
        if self.inflight < self.cap:
            self.inflight += 1
            self.queue.append(j)
            return True
        return False

    def admit_until(self, i: int, t: float) -> int:
        """Admit or reject every arrival from i up to time t; the index of the next one."""
        arr, n = self.arr, len(self.arr)
        while i < n and arr[i] <= t:
            self.admit(i)
            i += 1
        return i

    def fill(self, i: int, opened: float, batch: int, wait_s: float) -> tuple[float, int]:
        """A batch opened at `opened` closes when `batch` requests are queued or `wait_s` later:
        (close time, index of the next arrival)."""
        q, arr, n = self.queue, self.arr, len(self.arr)
        if len(q) >= batch or wait_s <= 0:
            return opened, i
        deadline = opened + wait_s
        while len(q) < batch and i < n and arr[i] <= deadline:
            if self.admit(i) and len(q) >= batch:
                return arr[i], i + 1
            i += 1
        return deadline, i  # not filled in time

    def start_batch(self, finish: float, k: int) -> None:
        heapq.heappush(self.done, (finish, k))
        self.batches[k] = self.batches.get(k, 0) + 1
        q, arr, lat = self.queue, self.arr, self.lat
        for _ in range(k):
            j = q.popleft()
            lat[j] = finish - arr[j]


def simulate_segment(
    arrivals,
    procs: int,
    batch: int,
    wait_s: float,
    service_s: list[float],
    limit: int | None = None,
) -> SegmentResult:
    """Simulate one segment on sorted arrival times (seconds). Returns per-request latency (NaN if
    rejected) and the batch-size histogram. `limit` None = unbounded queue."""
    import numpy as np

    if procs < 1 or batch < 1 or len(service_s) < batch:
        raise ParvaError(f"bad segment: procs={procs} batch={batch} service times={len(service_s)}")
    arr = arrivals.tolist() if hasattr(arrivals, "tolist") else list(arrivals)
    n = len(arr)
    seg = _SegmentQueue(arr, limit if limit is not None else n + 1)
    free = [0.0] * procs  # heap of server free times
    i = 0
    while i < n or seg.queue:
        if not seg.queue:
            seg.admit(i)
            i += 1
            continue
        opened = max(free[0], arr[seg.queue[0]])  # the first free server takes the oldest request
        i = seg.admit_until(i, opened)  # every arrival up to then is admitted or rejected first
        close, i = seg.fill(i, opened, batch, wait_s)
        k = min(batch, len(seg.queue))
        finish = close + service_s[k - 1]
        heapq.heapreplace(free, finish)
        seg.start_batch(finish, k)
    return SegmentResult(np.asarray(seg.lat, dtype=float), seg.batches)


class _LiveSegment:
    """One segment simulated arrival by arrival, for the spill-over path: the batching of
    `simulate_segment`, but a batch is formed only once the next arrival is past its close time
    (an arrival before it may still join), so the in-flight count is right when the ingress asks."""

    __slots__ = ("batch", "wait_s", "svc", "limit", "arr", "lat", "queue", "free", "done", "inflight", "batches")

    def __init__(self, procs: int, batch: int, wait_s: float, service_s: list[float], limit: int) -> None:
        self.batch, self.wait_s, self.svc, self.limit = batch, wait_s, service_s, limit
        self.arr: list[float] = []
        self.lat: list[float] = []
        self.queue: deque[int] = deque()
        self.free = [0.0] * procs
        self.done: list[tuple[float, int]] = []
        self.inflight = 0
        self.batches: dict[int, int] = {}

    def _close(self, t: float) -> float | None:
        """When the next batch closes, if that is known by time t (None: not yet)."""
        q, arr, batch = self.queue, self.arr, self.batch
        opened = max(self.free[0], arr[q[0]])
        if opened > t:
            return None
        full = arr[q[batch - 1]] if len(q) >= batch else None  # when the batch-th queued arrived
        if self.wait_s <= 0 or (full is not None and full <= opened):
            return opened
        deadline = opened + self.wait_s
        if full is not None and full <= deadline:
            return full
        return deadline if deadline <= t else None

    def advance(self, t: float) -> None:
        """Start every batch that closes by time t."""
        q, arr = self.queue, self.arr
        while q:
            close = self._close(t)
            if close is None:
                return
            k = 0
            while k < self.batch and k < len(q) and arr[q[k]] <= close:
                k += 1
            finish = close + self.svc[k - 1]
            heapq.heapreplace(self.free, finish)
            heapq.heappush(self.done, (finish, k))
            self.batches[k] = self.batches.get(k, 0) + 1
            for _ in range(k):
                j = q.popleft()
                self.lat[j] = finish - arr[j]

    def has_room(self, t: float) -> bool:
        self.advance(t)
        done = self.done
        while done and done[0][0] <= t:
            self.inflight -= heapq.heappop(done)[1]
        return self.inflight < self.limit

    def add(self, t: float) -> None:
        self.queue.append(len(self.arr))
        self.arr.append(t)
        self.lat.append(math.nan)
        self.inflight += 1


def simulate_spilling(arrivals, segments: list[tuple[int, int, float, list[float], int]],
                      shares: list[float]) -> tuple[list, list[int]]:
    """One model's segments together: (procs, batch, wait_s, service_s, limit) each, routed by the
    ingress's router with spill-over (see the module doc). Per segment its requests' latencies (s)
    and batch histogram, and per segment the rejections of requests scheduled to it."""
    import numpy as np

    router = WeightedRouter(shares)
    segs = [_LiveSegment(*s) for s in segments]
    rejected = [0] * len(segs)
    for t in (arrivals.tolist() if hasattr(arrivals, "tolist") else arrivals):
        i = router.pick(lambda j: segs[j].has_room(t))
        if i is None:
            cur, w = router._current, router.weights
            rejected[max(range(len(w)), key=lambda j: (cur[j] + w[j], -j))] += 1  # the scheduled one
            continue
        segs[i].add(t)
    for s in segs:
        s.advance(math.inf)
    return [SegmentResult(np.asarray(s.lat, dtype=float), s.batches) for s in segs], rejected
