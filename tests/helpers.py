"""Small builders for hand-made profiles and services, and the CLI run in process."""

from __future__ import annotations

from parvagpu.core.model import Profile, ProfilePoint, Service


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
