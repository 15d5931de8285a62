"""Fleet plans: mixed GPU types, fixed inventory, reservations, prices and tiers."""

from __future__ import annotations

import pytest

from parvagpu.core.errors import ParvaError
from parvagpu.core.fleet import Fleet, FleetNode, Reservation
from parvagpu.core.model import DeploymentMap, PlacedSegment, Profile, ProfilePoint, Segment, Service, Triplet
from parvagpu.verify import verify


def _fleet() -> Fleet:
    return Fleet((
        FleetNode("a", "A100-80GB", 2, 2.5, (Reservation(0, 0, 3), Reservation(1))),
        FleetNode("h", "H100-80GB", 1, 4.0),
    ))


def test_fleet_numbers_gpus_in_node_order_and_checks_reservations():
    f = _fleet()
    assert f.total_gpus == 3 and (f.node_of(2), f.local_gpu(2)) == (1, 0) and f.gpu_index(0, 1) == 1
    with pytest.raises(ParvaError, match="cannot start at 2"):
        Fleet((FleetNode("a", "A100-80GB", 1, 1.0, (Reservation(0, 2, 3),)),))
    with pytest.raises(ParvaError, match="overlaps"):
        Fleet((FleetNode("a", "A100-80GB", 1, 1.0, (Reservation(0, 0, 3), Reservation(0, 2, 1))),))
    with pytest.raises(ParvaError, match="listed twice"):
        Fleet((FleetNode("a", "A30", 1), FleetNode("a", "A30", 1)))


def _plan(segments, served=()) -> DeploymentMap:
    return DeploymentMap("mixed", "fleet", 3, 8, tuple(segments), (Service("m", 10.0, 100.0),),
                         fleet=_fleet(), served=served)


def test_verify_checks_each_gpu_against_its_type_and_the_reservations():
    profiles = {"m": Profile("m", (ProfilePoint(1, 1, 1, 5.0, 0.01), ProfilePoint(4, 1, 1, 20.0, 0.01)))}
    one, four = Triplet(1, 1, 1, 5.0, 10.0), Triplet(4, 1, 1, 20.0, 10.0)
    ok = _plan([PlacedSegment(Segment("m", one), 0, 4), PlacedSegment(Segment("m", one), 2, 0)])
    assert verify(ok, profiles) == []
    on_reserved = _plan([PlacedSegment(Segment("m", four), 0, 0)])
    assert any("reserved slot" in p for p in verify(on_reserved, profiles))
    whole = _plan([PlacedSegment(Segment("m", four), 1, 0)])
    assert any("reserved slot" in p for p in verify(whole, profiles))
    short = _plan([PlacedSegment(Segment("m", one), 2, 0)], served=(("m", 5.0),))
    assert verify(short, profiles) == []  # served at 5 req/s, as the plan says
    assert any("below its served rate 6" in p for p in verify(_plan(short.segments, (("m", 6.0),)), profiles))
