"""Shared benchmark workload: services made by cycling the eleven embedded profiles under
random SLOs from a seeded generator (rates 50-3000 req/s, latency SLOs 1.2-4x the tightest the
model can meet), so every service is feasible and runs are repeatable."""

from __future__ import annotations

import random
from pathlib import Path

from parvagpu.cli.common import example_dir
from parvagpu.core.model import Profile, Service
from parvagpu.inputs.profiles import load_profiles


def base_profiles() -> dict[str, Profile]:
    return load_profiles(example_dir() / "profiles")


def tightest_slo_ms(profile: Profile, max_procs: int) -> float:
    fastest = min(p.latency_ms for p in profile.points if p.runnable and p.procs <= max_procs)
    return fastest / 0.45


def random_services(
    n: int, seed: int = 0, max_procs: int = 3, base: dict[str, Profile] | None = None
) -> tuple[dict[str, Profile], tuple[Service, ...]]:
    """`n` services named `<model>-<i>`; profiles share the base profile's points object."""
    base = base or base_profiles()
    names = sorted(base)
    rng = random.Random(seed)
    profiles: dict[str, Profile] = {}
    services = []
    for i in range(n):
        src = base[names[i % len(names)]]
        name = f"{src.model}-{i}"
        profiles[name] = Profile(name, src.points, src.source)
        slo = round(tightest_slo_ms(src, max_procs) * rng.uniform(1.2, 4.0), 1)
        services.append(Service(name, round(rng.uniform(50, 3000), 1), slo))
    return profiles, tuple(services)


ROOT = Path(__file__).resolve().parents[1]
