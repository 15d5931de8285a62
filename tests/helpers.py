"""Small builders for hand-made profiles, services and plans, and the CLI run in process."""

from __future__ import annotations

from parvagpu.core.model import DeploymentMap, PlacedSegment, Profile, ProfilePoint, Segment, Service, Triplet


def profile(model: str, rows: list[tuple[int, int, int, float, float]]) -> Profile:
    """rows: (size, batch, procs, per-process throughput, latency in seconds)."""
    return Profile(model, tuple(ProfilePoint(*r) for r in rows))


def service(model: str, rate: float, latency_ms: float) -> Service:
    return Service(model, rate, latency_ms)


def run_cli(*args):
    """`parvagpu ARGS...` in process (Typer's runner); paths and numbers may be passed as they are."""
    from typer.testing import CliRunner

    from parvagpu.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def swap_pair() -> tuple[DeploymentMap, DeploymentMap]:
    """One full GPU whose two models trade places: no slot is free, so a transition without a
    spare GPU must dip."""
    a4, b3 = Triplet(4, 8, 1, 100.0, 1.0), Triplet(3, 8, 1, 80.0, 1.0)
    a3, b4 = Triplet(3, 8, 1, 100.0, 1.0), Triplet(4, 8, 1, 80.0, 1.0)
    svc = (Service("a", 100.0, 10.0), Service("b", 80.0, 10.0))
    old = DeploymentMap("A100-80GB", "parva", 3, 8, (
        PlacedSegment(Segment("a", a4), 0, 0), PlacedSegment(Segment("b", b3), 0, 4)), svc)
    new = DeploymentMap("A100-80GB", "parva", 3, 8, (
        PlacedSegment(Segment("b", b4), 0, 0), PlacedSegment(Segment("a", a3), 0, 4)), svc)
    return old, new
