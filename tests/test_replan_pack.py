"""Re-planning as packing with few moves (`planning.replan_pack`): slice-minimal covers, the
knapsack over the changed models, and placement into holes with whole segments moved."""

from __future__ import annotations

from fractions import Fraction

from helpers import profile

from parvagpu.core.model import DeploymentMap, PlacedSegment, Segment, Service, Triplet
from parvagpu.planning.replan import _candidate, admissible_segments, per_size_table, repair
from parvagpu.planning.replan_pack import Cover, Weighting, by_cost, choose, covers, pack
from parvagpu.planning.request import PlanRequest
from parvagpu.planning.strategies import plan
from parvagpu.verify import verify


def _t(size: int, thr: float) -> Triplet:
    return Triplet(size, 1, 1, thr, 1.0)


def test_more_changes_buy_fewer_slices():
    """Two 2g (220 in all) for a rate of 300: one change adds a 2g (6 slices); three replace
    both by one 4g (4 slices), which two changes cannot do."""
    two = _t(2, 110.0)
    own = [PlacedSegment(Segment("a", two), 0, 0), PlacedSegment(Segment("a", two), 0, 2)]
    per_size = {1: _t(1, 50.0), 2: two, 3: _t(3, 170.0), 4: _t(4, 330.0)}
    out = covers(Fraction(300), own, per_size)
    assert out[0] is None
    assert [c.slices for c in out[1:5]] == [6, 6, 4, 4]
    assert out[1].add == (two,) and out[3].keep == ((two, 0),) and out[3].add == (per_size[4],)
    assert [c.slices for c in covers(Fraction(100), own, per_size)[:2]] == [4, 2]  # a lower rate: drop one 2g


def test_the_knapsack_takes_the_fewest_changes_that_fit_the_slices():
    a = [Cover(6, 0, (), ()), Cover(6, 0, (), ()), Cover(4, 2, (), ())]
    b = [None, Cover(5, 1, (), ()), Cover(3, 2, (), ())]
    assert [c.changes for c in choose([a, b], 11)] == [0, 1]
    assert [c.changes for c in choose([a, b], 9)] == [0, 2]  # b's 2 changes beat a's 2 (9 slices)
    assert [c.changes for c in choose([a, b], 7)] == [2, 2]
    assert choose([a, b], 6) is None


def test_a_weighting_charges_the_moves_an_added_3g_forces():
    """A 2g running (110) for a rate of 250: adding a 3g (one change) or a 1g and a 2g (two)
    both take 5 slices. By slices alone the 3g is the cover at cost 1; charged one change for
    the move it is expected to force, nothing covers at cost 1. A 3g the model drops itself
    makes room for the one it adds (no charge); with `net`, the charge is kept + added, the
    same offset for every cover of the model, so the other models' drops count."""
    two = _t(2, 110.0)
    own = [PlacedSegment(Segment("a", two), 0, 0)]
    per_size = {1: _t(1, 60.0), 2: two, 3: _t(3, 170.0)}
    plain = covers(Fraction(250), own, per_size)
    no3 = covers(Fraction(250), own, per_size, frozenset({3}))
    assert plain[1].add == (per_size[3],) and plain[1].slices == 5
    assert no3[1] is None and sorted(t.size for t in no3[2].add) == [1, 2] and no3[2].slices == 5
    assert by_cost(plain + no3, own, Weighting(()))[1] is plain[1]
    w = Weighting(((3, 1),))
    by = by_cost(plain + no3, own, w)
    assert w.cost(plain[1], own) == 2 and by[1] is None and by[2].slices == 5
    three = _t(3, 170.0)
    own3 = [PlacedSegment(Segment("b", three), 0, 4)]
    swap = Cover(3, 2, ((three, 0),), (_t(3, 180.0),))
    assert w.cost(swap, own3) == 2
    net = Weighting(((3, 1),), net=True)
    assert net.cost(swap, own3) == 3 and net.cost(Cover(3, 0, ((three, 1),), ()), own3) == 1


def _tight(a100):
    """Three full GPUs (21 slices). Model a's rate 400 -> 250 frees its 2g@0 on GPU 1 and its
    1g@4 on GPU 2 (3 slices, in two holes); new model x needs a 3g, which only fits at slots 4-7
    beside a full half: two small segments must move out of a GPU to make that room."""
    profiles = {m: profile(m, [(1, 1, 1, 50.0, 0.001), (2, 1, 1, 100.0, 0.001), (4, 1, 1, 250.0, 0.001)])
                for m in "abcdfgh"}
    profiles["e"] = profiles["x"] = profile("e", [(3, 1, 1, 150.0, 0.001)])
    layout = [("a", 4, 0, 0), ("b", 2, 0, 4), ("c", 1, 0, 6),
              ("a", 2, 1, 0), ("d", 2, 1, 2), ("e", 3, 1, 4),
              ("f", 4, 2, 0), ("a", 1, 2, 4), ("g", 1, 2, 5), ("h", 1, 2, 6)]
    thr = {1: 50.0, 2: 100.0, 3: 150.0, 4: 250.0}
    running = tuple(PlacedSegment(Segment(m, _t(size, thr[size])), g, st) for m, size, g, st in layout)
    rates = {"a": 400.0, "b": 90.0, "c": 40.0, "d": 90.0, "e": 140.0, "f": 240.0, "g": 40.0, "h": 40.0}
    old = tuple(Service(m, r, 100.0) for m, r in rates.items())
    current = DeploymentMap(a100.name, "auto", 3, 8, running, old)
    new = tuple(Service(m, 250.0 if m == "a" else r, 100.0) for m, r in rates.items()) + (Service("x", 140.0, 100.0),)
    return profiles, PlanRequest(new, profiles, a100, 3, current=current)


def test_packing_moves_two_segments_to_make_room_where_repair_needs_a_gpu(a100):
    profiles, request = _tight(a100)
    kept, dropped = admissible_segments(request)
    assert dropped == 0
    assert len({s.gpu for s in repair(request, kept, {0, 1, 2})}) == 4
    plans = pack(request, kept, {"a", "x"}, 3, {0, 1, 2}, per_size_table(request), float("inf"))
    assert len(plans) == 3  # one per weighting
    for segs in plans:
        assert verify(DeploymentMap(a100.name, "auto", 3, 8, segs, request.services), profiles) == []
        assert _candidate("packed", segs, request).gpus == 3
    found = _candidate("packed", plans[0], request)
    # a drops its 2g and 1g, x adds a 3g at slots 4-7, two 1g or a 2g and a 1g move as they are
    assert found.changes == 7
    assert pack(request, kept, {"a", "x"}, 2, {0, 1, 2}, per_size_table(request), float("inf")) == []


def test_plan_current_reaches_the_bound_by_packing(a100):
    profiles, request = _tight(a100)
    new = plan(request, "auto")
    assert verify(new, profiles) == []
    assert new.gpus_used == new.lower_bound == 3
    assert "fresh_gpus" not in dict(new.stats)  # packing met the proven bound: no fresh plan
    assert new.transition.changed == 7


def test_an_instance_strands_a_slice_only_when_it_takes_more_than_its_size(a100):
    from parvagpu.planning.replan_pack import _strands

    assert _strands(a100, 0, 3, 0)  # 3g at slot 0: slots 4-7 then hold 3 slices at most
    assert not _strands(a100, 0, 3, 4) and not _strands(a100, a100.mask(4, 0), 3, 4)
    assert not _strands(a100, 0, 1, 6)  # 1g at 6: 2g@4 and 4g@0 still fit
    # a GPU already holding 3g@0, 1g@5 and 1g@6 has lost its slice: 1g@4 loses nothing more
    held = a100.mask(3, 0) | a100.mask(1, 5) | a100.mask(1, 6)
    assert not _strands(a100, held, 1, 4)
