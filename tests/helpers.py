"""Small builders for hand-made profiles and services."""

from __future__ import annotations

from parvagpu.core.model import Profile, ProfilePoint, Service


def profile(model: str, rows: list[tuple[int, int, int, float, float]]) -> Profile:
    """rows: (size, batch, procs, per-process throughput, latency in seconds)."""
    return Profile(model, tuple(ProfilePoint(*r) for r in rows))


def service(model: str, rate: float, latency_ms: float) -> Service:
    return Service(model, rate, latency_ms)
