"""Optimal triplet decision and demand matching: the exact rules of algorithm.md §2."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from parvagpu.planning.configurator import configure
from parvagpu.core.errors import ParvaError
from parvagpu.planning.index import TripletIndex

from helpers import profile, service


def test_admission_is_strict_at_045_of_slo(a100):
    # SLO 200 ms -> threshold exactly 90 ms; a 90 ms point must not be admitted.
    p = profile("m", [(1, 1, 1, 10.0, 0.090), (1, 2, 1, 5.0, 0.089)])
    cfg = configure(service("m", 4, 200), p, a100, 3)
    assert cfg.optimal.batch == 2
    with pytest.raises(ParvaError, match="tightest SLO"):
        configure(service("m", 4, 197.7), p, a100, 3)  # 0.45 * 197.7 = 88.965 < 89


def test_decimal_slo_kept(a100):
    # 0.45 * 418.5 = 188.325: a 188 ms point passes, truncation to 418 (188.1) would too,
    # but 0.45 * 417.9 = 188.055 also passes and 0.45*417.7=187.965 does not.
    p = profile("m", [(1, 1, 1, 10.0, 0.188)])
    configure(service("m", 1, 417.8), p, a100, 3)
    with pytest.raises(ParvaError):
        configure(service("m", 1, 417.7), p, a100, 3)


def test_efficiency_and_first_maximum_wins(a100):
    # 2g at 200/s has the same efficiency (100/GPC) as 1g at 100/s: the smaller size wins;
    # within a size, the smaller batch wins, then fewer processes.
    p = profile(
        "m",
        [
            (2, 1, 1, 200.0, 0.010),
            (1, 4, 1, 100.0, 0.010),
            (1, 2, 2, 50.0, 0.010),
            (1, 2, 1, 100.0, 0.010),
        ],
    )
    cfg = configure(service("m", 50, 1000), p, a100, 3)
    assert (cfg.optimal.size, cfg.optimal.batch, cfg.optimal.procs) == (1, 2, 1)


def test_segment_throughput_is_procs_times_per_process(a100):
    p = profile("m", [(1, 8, 3, 40.0, 0.010), (1, 8, 1, 100.0, 0.010)])
    cfg = configure(service("m", 50, 1000), p, a100, 3)
    assert (cfg.optimal.procs, cfg.optimal.throughput) == (3, 120.0)
    assert configure(service("m", 50, 1000), p, a100, 2).optimal.procs == 1  # max_procs filters


def test_exact_multiple_uses_one_less_optimal_segment(a100):
    p = profile("m", [(1, 1, 1, 100.0, 0.010), (2, 1, 1, 150.0, 0.010)])
    cfg = configure(service("m", 300, 1000), p, a100, 3)
    assert cfg.optimal.size == 1 and cfg.n_optimal == 2 and cfg.last.size == 1
    cfg = configure(service("m", 301, 1000), p, a100, 3)
    assert cfg.n_optimal == 3 and cfg.last.size == 1
    assert sum(s.throughput for s in cfg.segments()) >= 301


def test_last_segment_is_smallest_size_covering_residual(a100):
    # optimal: 3g at 600/s (200/GPC); residual 250 -> 1g (100) no, 2g (300) yes.
    p = profile(
        "m",
        [(1, 1, 1, 100.0, 0.010), (2, 1, 1, 300.0, 0.010), (3, 1, 1, 600.0, 0.010)],
    )
    cfg = configure(service("m", 850, 1000), p, a100, 3)
    assert (cfg.optimal.size, cfg.n_optimal, cfg.last.size) == (3, 1, 2)


def test_zero_points_never_selected(a100):
    p = profile("m", [(1, 1, 1, 0.0, 0.0), (2, 1, 1, 10.0, 0.5)])
    cfg = configure(service("m", 5, 10_000), p, a100, 3)
    assert cfg.optimal.size == 2


def test_sizes_the_gpu_lacks_are_ignored():
    from parvagpu.core.gpus import gpu_type

    p = profile("m", [(3, 1, 1, 1000.0, 0.010), (4, 1, 1, 100.0, 0.010)])
    cfg = configure(service("m", 50, 1000), p, gpu_type("A30"), 3)
    assert cfg.optimal.size == 4


def test_infeasible_names_model_and_tightest_slo(a100):
    p = profile("slowmodel", [(1, 1, 1, 10.0, 0.090), (7, 1, 1, 20.0, 0.045)])
    with pytest.raises(ParvaError) as e:
        configure(service("slowmodel", 1, 50), p, a100, 3)
    msg = str(e.value)
    assert "slowmodel" in msg and "45 ms" in msg and "100 ms" in msg


def _brute_best(profile, latency_ms, gpu, max_procs):
    """The rule as written: per size, the admissible point with the highest segment throughput,
    then the smallest batch, then the fewest processes, then the fastest (exact arithmetic)."""
    from fractions import Fraction

    thr = Fraction(9, 20) * Fraction(repr(float(latency_ms)))
    out = {}
    for size in gpu.sizes:
        pts = [p for p in profile.points if p.size == size and p.runnable and p.procs <= max_procs
               and p.exact_latency_ms < thr]
        if pts:
            b = min(pts, key=lambda p: (-p.segment_throughput, p.batch, p.procs, p.latency_s))
            out[size] = (b.size, b.batch, b.procs, b.segment_throughput, b.latency_ms)
    return out


@settings(max_examples=80, deadline=None)
@given(
    rows=st.lists(
        st.tuples(st.sampled_from([1, 2, 3, 4, 7]), st.integers(1, 4), st.integers(1, 3),
                  st.sampled_from([0.0, 50.0, 100.0, 100.0, 150.5]),
                  st.sampled_from([0.009, 0.0135, 0.018, 0.045, 0.09, 0.0899999999999, 0.1])),
        min_size=1, max_size=30, unique_by=lambda r: r[:3],
    ),
    slos=st.lists(st.sampled_from([20.0, 30.0, 40.0, 100.0, 200.0, 222.3]), min_size=1, max_size=4),
    max_procs=st.integers(1, 3),
)
def test_index_matches_the_rule_by_brute_force(a100, rows, slos, max_procs):
    """Latencies sit exactly on thresholds (0.45 x 20 ms = 9 ms, 0.45 x 200 ms = 90 ms, ...), so
    the exact comparison near a threshold is exercised."""
    rows = [(s, b, p, t, lat if t > 0 else 0.0) for s, b, p, t, lat in rows]
    prof = profile("m", rows)
    copy = profile("n", rows)  # same content: one index entry
    index = TripletIndex.build([prof, copy], a100, max_procs)
    assert len(index.profile_of) == 1
    services = [service("m", 10, slo) for slo in slos]
    got = index.best_by_size([prof] * len(slos), services)
    for slo, per_size in zip(slos, got):
        want = _brute_best(prof, slo, a100, max_procs)
        assert {k: (t.size, t.batch, t.procs, t.throughput, t.latency_ms) for k, t in per_size.items()} == want


@settings(max_examples=40, deadline=None)
@given(
    picks=st.lists(st.lists(st.tuples(st.integers(0, 3), st.sampled_from([20.0, 40.0, 90.0, 200.0, 222.3]),
                                      st.sampled_from([1.0, 55.5, 400.0])),
                            min_size=1, max_size=6, unique_by=lambda p: p[0]),
                   min_size=1, max_size=4),
    max_procs=st.integers(1, 3),
)
def test_best_by_size_shared_between_requests_equals_its_own_index(a100, picks, max_procs):
    """Requests share each service's best triplets (`request._BEST`, filled by earlier requests of
    other services, rates and orders): each request's answer equals an index built for it alone."""
    from parvagpu.planning import request as rq

    shapes = [[(1, 1, 1, 100.0, 0.009), (2, 2, 2, 150.5, 0.018), (3, 4, 1, 50.0, 0.0899999999999)],
              [(1, 2, 1, 100.0, 0.0135), (4, 4, 3, 100.0, 0.045), (7, 4, 3, 150.5, 0.09)],
              [(1, 1, 1, 50.0, 0.045), (7, 2, 2, 100.0, 0.1)],
              [(2, 1, 1, 0.0, 0.0), (3, 2, 2, 100.0, 0.009)]]
    profiles = {f"m{i}": profile(f"m{i}", rows) for i, rows in enumerate(shapes)}
    profiles["copy"] = profile("copy", shapes[1])  # another name for the same content
    rq._BEST.clear()
    for pick in picks:
        services = tuple(service(f"m{i}" if i != 3 else "copy", rate, slo) for i, slo, rate in pick)
        req = rq.PlanRequest(services, profiles, a100, max_procs)
        used = [profiles[s.model] for s in services]
        assert req.best_by_size == tuple(TripletIndex.build(used, a100, max_procs).best_by_size(used, services))
    assert rq._BEST  # the later requests were answered from it
