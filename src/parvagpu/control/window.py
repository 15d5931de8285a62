"""Observation windows: a sliding-window arrival rate and SLO attainment. Times are passed in
(no clock here), so the same code serves the live ingress and the trace replay."""

from __future__ import annotations

from collections import deque

from parvagpu.core.errors import ParvaError


class RateWindow:
    """Arrivals counted over the last `window_s` seconds.

    `add(t, n)` records n arrivals at time t (non-decreasing t); `rate(now)` is the count in
    (now - window, now] divided by the window, or by the time observed so far when that is shorter
    (a new model is not under-estimated during its first window)."""

    def __init__(self, window_s: float, start_s: float = 0.0) -> None:
        if not window_s > 0:
            raise ParvaError(f"window must be positive, got {window_s}")
        self.window_s = window_s
        self.start_s = start_s
        self._events: deque[tuple[float, float]] = deque()
        self._total = 0.0

    def add(self, t: float, n: float = 1.0) -> None:
        if self._events and t < self._events[-1][0]:
            raise ParvaError(f"observations must not go back in time ({t} < {self._events[-1][0]})")
        self._events.append((t, n))
        self._total += n

    def _expire(self, now: float) -> None:
        ev = self._events
        while ev and ev[0][0] <= now - self.window_s:
            self._total -= ev.popleft()[1]

    def count(self, now: float) -> float:
        self._expire(now)
        return max(0.0, self._total)

    def rate(self, now: float) -> float:
        span = min(self.window_s, now - self.start_s)
        return self.count(now) / span if span > 0 else 0.0


class AttainmentWindow:
    """Requests and those answered within the SLO over the last `window_s` seconds; `attainment`
    is None below `min_requests` (too few to judge)."""

    def __init__(self, window_s: float, min_requests: float = 100.0) -> None:
        self.sent = RateWindow(window_s)
        self.good = RateWindow(window_s)
        self.min_requests = min_requests

    def add(self, t: float, sent: float, within_slo: float) -> None:
        if within_slo > sent or within_slo < 0:
            raise ParvaError(f"within-SLO count {within_slo} not in [0, {sent}]")
        self.sent.add(t, sent)
        self.good.add(t, within_slo)

    def attainment(self, now: float) -> float | None:
        n = self.sent.count(now)
        if n < self.min_requests:
            return None
        return min(1.0, self.good.count(now) / n)


class TrendWindow:
    """The slope of the arrival rate over the last `window_s` seconds (req/s per s): the rate of its
    later half minus that of its earlier half, over the half's length. Kept as two running sums, so
    a look is O(1) amortised; None until a whole window has been observed."""

    def __init__(self, window_s: float, start_s: float = 0.0) -> None:
        if not window_s > 0:
            raise ParvaError(f"window must be positive, got {window_s}")
        self.window_s = window_s
        self.start_s = start_s
        self._late: deque[tuple[float, float]] = deque()
        self._early: deque[tuple[float, float]] = deque()
        self._sums = [0.0, 0.0]  # early, late
        self._last = -float("inf")

    def add(self, t: float, n: float = 1.0) -> None:
        if t < self._last:
            raise ParvaError(f"observations must not go back in time ({t} < {self._last})")
        self._last = t
        self._late.append((t, n))
        self._sums[1] += n

    def slope(self, now: float) -> float | None:
        if now - self.start_s < self.window_s:
            return None
        half = self.window_s / 2
        while self._late and self._late[0][0] <= now - half:
            ev = self._late.popleft()
            self._sums[1] -= ev[1]
            self._early.append(ev)
            self._sums[0] += ev[1]
        while self._early and self._early[0][0] <= now - self.window_s:
            self._sums[0] -= self._early.popleft()[1]
        return (self._sums[1] - self._sums[0]) / (half * half)
