"""The serving-model table's per-state records answer exactly as a table keyed by (model,
configurations, grid point) with its lossless points kept per (model, configurations): random
look-ups, curves and segment tuples (equal configurations in other orders, new tuples of the same
segments) against that reference, with a measurement that depends on the segments' order."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from parvagpu.control.fluid import MAX_RHO, MIN_RHO, AttainmentTable, configs_of
from parvagpu.core.model import PlacedSegment, Segment, Triplet

TRIPLETS = [Triplet(1, 1, 1, 10.0, 1.0), Triplet(2, 4, 2, 35.0, 3.0), Triplet(3, 8, 1, 60.0, 5.0)]


def _measure(model: str, segments: tuple[PlacedSegment, ...], rate: float) -> float:
    """A stand-in for the simulator: deterministic, order-dependent, 1.0 at low loads."""
    order = sum((i + 1) * s.segment.triplet.size for i, s in enumerate(segments))
    load = rate / sum(s.segment.throughput for s in segments)
    return 1.0 if load < 0.5 + 0.1 * (order % 3) else round(1.0 - 0.01 * order * load, 12)


class Reference:
    """The table as it was written first: one dict of (model, configs, k), lossless per state."""

    def __init__(self, step: float = 0.1) -> None:
        self.step, self.table, self.lossless, self.requests = step, {}, {}, 0

    def attained(self, model, segments, rate):
        if rate <= 0:
            return 1.0
        if not segments:
            return 0.0
        capacity, configs = sum(s.segment.throughput for s in segments), configs_of(segments)
        rho = rate / capacity
        x = min(MAX_RHO, max(MIN_RHO, rho)) / self.step
        lo = math.floor(x + 1e-9)
        if x - lo < 1e-9:
            a = self.at(model, segments, configs, lo, capacity)
        else:
            a1 = self.at(model, segments, configs, lo + 1, capacity)
            a0 = self.at(model, segments, configs, lo, capacity)
            a = a0 + (x - lo) * (a1 - a0)
        return a * (MAX_RHO / rho) if rho > MAX_RHO else a

    def at(self, model, segments, configs, k, capacity):
        key = (model, configs, k)
        a = self.table.get(key)
        if a is None:
            if k <= self.lossless.get((model, configs), -1):
                return 1.0
            a = self.table[key] = _measure(model, segments, k * self.step * capacity)
            self.requests += 1
            if a == 1.0:
                self.lossless[(model, configs)] = max(k, self.lossless.get((model, configs), -1))
        return a


class Counting(AttainmentTable):
    def _measure(self, model, segments, rate):
        self.simulated_requests += 1
        return _measure(model, segments, rate)


asks = st.lists(st.tuples(st.sampled_from(["a", "b"]), st.lists(st.integers(0, 2), min_size=0, max_size=3),
                          st.booleans(), st.floats(0.0, 300.0), st.booleans()), min_size=1, max_size=60)


@settings(max_examples=200, deadline=None)
@given(asks)
def test_the_table_answers_as_the_reference(asks):
    table, ref = Counting(None, {}, {}), Reference()
    kept: dict[tuple, tuple] = {}
    for model, picks, fresh, rate, curve in asks:
        segs = tuple(PlacedSegment(Segment(model, TRIPLETS[i]), j, 0) for j, i in enumerate(picks))
        # the same tuple object again (the replay's case) or a new equal one
        segs = kept.setdefault((model, tuple(picks)), segs) if not fresh else segs
        if curve and segs:
            got = table.curve(model, segs, 0.99)
            capacity, configs = sum(s.segment.throughput for s in segs), configs_of(segs)
            want = []
            for k in range(10, 5, -1):
                a = ref.at(model, segs, configs, k, capacity)
                want.append((k * 0.1, a))
                if a >= 0.99:
                    break
            assert got == tuple(want)
        else:
            assert table.attained(model, segs, rate) == ref.attained(model, segs, rate)
    assert table.entries == len(ref.table) and table.simulated_requests == ref.requests


def test_static_and_oracle_tallies_are_those_of_one_add_per_look_up(tmp_path):
    """`_served` keeps each model's sums in a list: the same floats as `Tally.add` per look-up."""
    from typer.testing import CliRunner

    from parvagpu.cli import app
    from parvagpu.control.replay import Inputs, Options, Tally, _by_model, _step_ends, plan_for, run_static
    from parvagpu.control.trace import read_trace
    from parvagpu.core.gpus import gpu_type
    from parvagpu.inputs.profiles import load_profiles
    from parvagpu.inputs.services import load_services

    r = CliRunner().invoke(app, ["trace-gen", "--out", str(tmp_path), "--models", "4", "--hours", "2", "--step",
                                 "300", "--seed", "3"])
    assert r.exit_code == 0, r.output
    slos = {s.model: s.latency_ms for s in load_services(tmp_path / "services.yaml")}
    inp = Inputs(read_trace(tmp_path / "trace.csv"), slos, load_profiles(tmp_path / "profiles"), gpu_type("A100-80GB"))
    opts = Options(samples=200)
    table = AttainmentTable(plan_for(inp, opts, {m: 1.0 for m in inp.trace.models}), slos, inp.profiles, 200)
    got = run_static(inp, opts, table, 0.1)
    segs = _by_model(plan_for(inp, opts, {m: r * 1.1 for m, r in inp.trace.peak().items()}))
    tally = Tally()
    for a, b, rates in _step_ends(inp.trace):
        for m, r in zip(inp.trace.models, rates):
            tally.add(m, r * (b - a), r * (b - a) * table.attained(m, segs.get(m, ()), r))
    assert got.per_model == tally.per_model() and got.attainment == tally.overall()
    assert len(got.per_model) == 4
