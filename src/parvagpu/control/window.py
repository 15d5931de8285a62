"""Observation windows: a sliding-window arrival rate and SLO attainment. Times are passed in
(no clock here), so the same code serves the live ingress and the trace replay.

A window's counts may also be numpy arrays, one element per stream (the trace replay observes every
model at once in one window): each element then goes through the same additions and subtractions a
window of its own would, so its counts, rates and slopes are the same to the last bit."""

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

    def count(self, now: float):
        self._expire(now)
        total = self._total
        return max(0.0, total) if isinstance(total, float) else total.clip(0.0)

    def rate(self, now: float):
        span = min(self.window_s, now - self.start_s)
        count = self.count(now)
        return count / span if span > 0 else count * 0.0


class AttainmentWindow:
    """Requests and those answered within the SLO over the last `window_s` seconds; `attainment`
    is None below `min_requests` (too few to judge)."""

    def __init__(self, window_s: float, min_requests: float = 100.0) -> None:
        self.sent = RateWindow(window_s)
        self.good = RateWindow(window_s)
        self.min_requests = min_requests

    def add(self, t: float, sent, within_slo) -> None:
        bad = (within_slo > sent) | (within_slo < 0)
        if bad if isinstance(bad, bool) else bad.any():
            raise ParvaError(f"within-SLO count {within_slo} not in [0, {sent}]")
        self.sent.add(t, sent)
        self.good.add(t, within_slo)

    def attainment(self, now: float):
        """The window's attainment; with array counts, a list of them (None where too few)."""
        n = self.sent.count(now)
        if isinstance(n, float):
            if n < self.min_requests:
                return None
            return min(1.0, self.good.count(now) / n)
        good = self.good.count(now)
        return [None if x < self.min_requests else min(1.0, g / x) for x, g in zip(n.tolist(), good.tolist())]


class TrendWindow:
    """The slope of the arrival rate over the last `window_s` seconds (req/s per s): the rate of its
    later half minus that of its earlier half, over the half's length. Two rate windows (the whole
    window and its later half), so a look is O(1) amortised; None until a whole window has been
    observed."""

    def __init__(self, window_s: float, start_s: float = 0.0) -> None:
        self.whole = RateWindow(window_s, start_s)
        self.late = RateWindow(window_s / 2, start_s)

    def add(self, t: float, n: float = 1.0) -> None:
        self.whole.add(t, n)
        self.late.add(t, n)

    def slope(self, now: float):
        if now - self.whole.start_s < self.whole.window_s:
            return None
        late, half = self.late.count(now), self.late.window_s
        return (late - (self.whole.count(now) - late)) / (half * half)
