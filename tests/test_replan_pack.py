"""Re-planning as packing with few moves (`planning.replan_pack`): slice-minimal covers, the
knapsack over the changed models, and placement into holes with whole segments moved."""

from __future__ import annotations

from dataclasses import replace
from fractions import Fraction

from helpers import profile
from hypothesis import given, settings
from hypothesis import strategies as st

from parvagpu.core.model import DeploymentMap, PlacedSegment, Segment, Service, Triplet
from parvagpu.planning.replan import _candidate, admissible_segments, per_size_table, repair
from parvagpu.planning.replan_pack import (
    WEIGHTINGS, Cover, HoleWeighting, Packing, Weighting, _indexed, _place, by_cost, choose, covers, covers_by_large,
    pack,
)
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
    assert len(plans) == len(WEIGHTINGS)  # one per weighting
    for segs in plans:
        assert verify(DeploymentMap(a100.name, "auto", 3, 8, segs, request.services), profiles) == []
        assert _candidate("packed", segs, request).gpus == 3
    found = _candidate("packed", plans[0], request)
    # a drops its 2g and 1g, x adds a 3g at slots 4-7, two 1g or a 2g and a 1g move as they are
    assert found.changes == 7
    assert pack(request, kept, {"a", "x"}, 2, {0, 1, 2}, per_size_table(request), float("inf")) == []


def _swap_many(a100):
    """Three full GPUs: model a serves 440 req/s on nine 1g (50 each) at slots 4-6 of each GPU,
    beside a 4g@0 on GPU 0 and 1 and a 2g@0 and two 1g on GPU 2 (12 slices of others). a's rate
    rises to 590: more 1g need a fourth GPU; within three, a takes at most 9 slices, which only
    three 3g (200 each, superlinear) give: nine 1g removed and three 3g added, 12 changes, more
    than the narrow limits enumerate."""
    profiles = {"a": profile("a", [(1, 1, 1, 50.0, 0.001), (3, 1, 1, 200.0, 0.001)]),
                "b": profile("b", [(4, 1, 1, 250.0, 0.001)]), "d": profile("d", [(4, 1, 1, 250.0, 0.001)]),
                "c": profile("c", [(2, 1, 1, 100.0, 0.001)]), "e": profile("e", [(1, 1, 1, 50.0, 0.001)]),
                "f": profile("f", [(1, 1, 1, 50.0, 0.001)])}
    one = _t(1, 50.0)
    running = tuple(PlacedSegment(Segment("a", one), g, st) for g in range(3) for st in (4, 5, 6)) + (
        PlacedSegment(Segment("b", _t(4, 250.0)), 0, 0), PlacedSegment(Segment("d", _t(4, 250.0)), 1, 0),
        PlacedSegment(Segment("c", _t(2, 100.0)), 2, 0), PlacedSegment(Segment("e", one), 2, 2),
        PlacedSegment(Segment("f", one), 2, 3))
    rates = {"a": 440.0, "b": 240.0, "d": 240.0, "c": 90.0, "e": 40.0, "f": 40.0}
    old = tuple(Service(m, r, 100.0) for m, r in rates.items())
    current = DeploymentMap(a100.name, "auto", 3, 8, running, old)
    new = tuple(replace(s, rate=590.0) if s.model == "a" else s for s in old)
    return profiles, PlanRequest(new, profiles, a100, 3, current=current)


def test_packing_finds_a_cover_that_changes_more_than_ten_segments(a100):
    profiles, request = _swap_many(a100)
    kept, _ = admissible_segments(request)
    assert len({s.gpu for s in repair(request, kept, {0, 1, 2})}) == 4
    plans = pack(request, kept, {"a"}, 3, {0, 1, 2}, per_size_table(request), float("inf"))
    assert len(plans) == len(WEIGHTINGS)  # one per weighting
    for segs in plans:
        assert verify(DeploymentMap(a100.name, "auto", 3, 8, segs, request.services), profiles) == []
        found = _candidate("packed", segs, request)
        assert found.gpus == 3 and found.others == 0
        assert sorted(s.size for s in segs if s.model == "a") == [3, 3, 3]
        assert found.changes == 12


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


def _small_holes(a100):
    """Three GPUs, each a 4g@0 and a 1g@6 with slots 4-5 free (two slices: a 2g's hole, not a
    3g's). New model x needs 140 req/s: a 3g (150, one change) or two 2g (160, two changes);
    its 2g and 1g together (110) cannot stand in for the 3g."""
    big = {m: profile(m, [(4, 1, 1, 250.0, 0.001)]) for m in "bdf"}
    small = {m: profile(m, [(1, 1, 1, 50.0, 0.001)]) for m in "ceg"}
    profiles = big | small | {"x": profile("x", [(1, 1, 1, 30.0, 0.001), (2, 1, 1, 80.0, 0.001),
                                                (3, 1, 1, 150.0, 0.001)])}
    running = tuple(PlacedSegment(Segment(m, _t(4, 250.0)), g, 0) for g, m in enumerate("bdf")) + tuple(
        PlacedSegment(Segment(m, _t(1, 50.0)), g, 6) for g, m in enumerate("ceg"))
    old = tuple(Service(m, 240.0 if m in "bdf" else 40.0, 100.0) for m in "bdfceg")
    current = DeploymentMap(a100.name, "auto", 3, 8, running, old)
    return profiles, PlanRequest(old + (Service("x", 140.0, 100.0),), profiles, a100, 3, current=current)


def test_hole_aware_covers_avoid_the_move_that_slices_alone_force(a100):
    """By slices alone x takes the 3g (one change, the fewest), which no hole holds: placement
    moves a 1g of another model out of the way (two changes more). Charged 2.5 changes per hole
    of 3+ slices, the two 2g (two changes) win and go into the 2-slice holes: nothing moves."""
    profiles, request = _small_holes(a100)
    kept, _ = admissible_segments(request)
    table = per_size_table(request)
    packing = Packing(request, kept, {"x"}, {0, 1, 2}, table)
    outcomes = []
    for weighting in (Weighting(()), HoleWeighting(5, 2)):
        chosen = choose(packing.options(weighting), 3 * a100.compute_slices - packing.fixed)
        segs = _place(request, kept, dict(zip(packing.order, chosen)), packing.own, 3, {0, 1, 2}, table, packing.rate)
        assert verify(DeploymentMap(a100.name, "auto", 3, 8, segs, request.services), profiles) == []
        found = _candidate("packed", segs, request)
        assert found.gpus == 3
        outcomes.append(([t.size for t in chosen[0].add], found.changes, found.others))
    assert outcomes == [([3], 3, 2), ([2, 2], 2, 0)]


def test_covers_by_large_counts_holes_and_offers_the_cheaper_mix():
    """x of `_small_holes`: the 3g (one change, one hole) and the two 2g (two changes, none)
    are both offered, each with the holes its instances need; a 7g needs two."""
    per_size = {1: _t(1, 30.0), 2: _t(2, 80.0), 3: _t(3, 150.0)}
    out = {(c.changes, h): c for h, c in covers_by_large(Fraction(140), [], per_size)}
    assert [t.size for t in out[(1, 1)].add] == [3] and out[(1, 1)].slices == 3
    assert [t.size for t in out[(2, 0)].add] == [2, 2] and out[(2, 0)].slices == 4
    seven = _t(7, 500.0)
    own = [PlacedSegment(Segment("y", seven), 0, 0)]
    kept = {(c.changes, h): c for h, c in covers_by_large(Fraction(400), own, {7: seven, 2: _t(2, 110.0)})}
    assert kept[(0, 2)].keep == ((seven, 1),) and kept[(5, 0)].add == (_t(2, 110.0),) * 4


@settings(max_examples=40, deadline=None)
@given(st.dictionaries(st.sampled_from([1, 2, 3, 4, 7]), st.integers(10, 400), min_size=1))
def test_large_tables_hold_each_suffix_minimum_per_hole_count(sizes):
    """`_large_tables`, every row at once, against the definition column by column: for each
    count of added segments and of large holes, the fewest slices of any multiset at least as
    fast as column i that needs that many holes (its first index where several tie), inf where none."""
    import math

    from parvagpu.planning.replan_pack import _LARGE_MAX, NARROW, _add_tables, _large_tables, large

    per_size = tuple(_t(z, float(thr)) for z, thr in sorted(sizes.items()))
    for a, ((_, _, _, combos), (_, least, where)) in enumerate(zip(_add_tables(per_size, NARROW.adds),
                                                                      _large_tables(per_size, NARROW.adds))):
        slices = [sum(per_size[j].size for j in row) for row in combos]
        holes = [sum(large(per_size[j].size) for j in row) for row in combos]
        assert least.shape == where.shape == (_LARGE_MAX * a + 1, len(combos) + 1)
        for L in range(_LARGE_MAX * a + 1):
            assert math.isinf(least[L, len(combos)])
            for i in range(len(combos)):
                fit = [(slices[j], j) for j in range(i, len(combos)) if holes[j] == L]
                if fit:
                    assert (least[L, i], where[L, i]) == min(fit)
                else:
                    assert math.isinf(least[L, i]) and where[L, i] == 0


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([1, 2, 3, 4, 7]), st.integers(10, 400)), max_size=4),
       st.dictionaries(st.sampled_from([1, 2, 3, 4, 7]), st.integers(10, 400), min_size=1),
       st.integers(1, 1200), st.integers(0, 40))
def test_hole_aware_choices_cover_each_rate_within_the_slices(own_rows, sizes, rate, budget):
    """Every cover `covers_by_large` offers meets the rate exactly and has the slices, changes
    and holes it claims; no cover found by brute force beats all of them at once; and what the
    knapsack picks under `HoleWeighting` fits the slice budget."""
    from itertools import combinations_with_replacement, product

    from parvagpu.planning.replan_pack import large

    per_size = {z: _t(z, float(thr)) for z, thr in sizes.items()}
    own = [PlacedSegment(Segment("m", _t(z, float(thr))), 0, 0) for z, thr in own_rows]
    offered = covers_by_large(Fraction(rate), own, per_size)
    for h, cov in offered:
        kept = [t for t, n in cov.keep for _ in range(n)]
        assert sum(t.throughput for t in kept + list(cov.add)) >= rate
        assert cov.slices == sum(t.size for t in kept + list(cov.add))
        assert cov.changes == len(own) - len(kept) + len(cov.add)
        assert h == sum(large(t.size) for t in kept + list(cov.add))
    for keep in product(*((0, 1) for _ in own)):  # brute force: some offered cover is no worse
        held = [s.segment.triplet for s, k in zip(own, keep) if k]
        for a in range(4):
            for add in combinations_with_replacement(sorted(per_size), a):
                ts = held + [per_size[z] for z in add]
                if sum(t.throughput for t in ts) < rate:
                    continue
                c, sl, h = len(own) - len(held) + a, sum(t.size for t in ts), sum(large(t.size) for t in ts)
                assert any(cv.changes <= c and hh <= h and cv.slices <= sl for hh, cv in offered), (c, sl, h)
    for weighting in (HoleWeighting(2), HoleWeighting(5, 2)):  # two models with these covers
        options = [_indexed([(weighting.cost(h, cov), cov) for h, cov in offered])] * 2
        chosen = choose(options, budget) if offered else None
        if chosen is not None:
            assert sum(c.slices for c in chosen) <= budget
            assert all(c in [cov for _, cov in offered] for c in chosen)
        elif offered:
            assert 2 * min(cov.slices for _, cov in offered) > budget
