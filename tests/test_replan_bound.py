"""The benchmark's exact check of whether a single-model change could keep every other model in
place (`bench/replan_bound.others_can_stay`): the re-plan table counts other models' segments
moved as avoidable only where it says so."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

from test_replan_pack import _tight

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from replan_bound import others_can_stay  # noqa: E402


def test_a_new_model_on_full_gpus_moves_others_unless_a_gpu_is_added(a100):
    """Every slot of the three GPUs is held by a running segment of another model: x's 3g fits
    only on a fourth GPU."""
    _, request = _tight(a100)
    assert not others_can_stay(request, "x", 3)
    assert others_can_stay(request, "x", 4)


def test_a_model_may_recover_in_its_own_slots(a100):
    """Without the new model x: a's own slots (4g@0, 2g@0, 1g@4) hold 400 req/s as it is
    profiled, so its new rate of 250 fits there, but not 401; b's one 2g slot holds 100 at most.
    With x, which no running segment serves, some other model must change."""
    _, with_x = _tight(a100)
    assert not others_can_stay(with_x, "a", 3)
    request = replace(with_x, services=tuple(s for s in with_x.services if s.model != "x"))
    assert others_can_stay(request, "a", 3)
    more = replace(request, services=tuple(replace(s, rate=401.0) if s.model == "a" else s
                                           for s in request.services))
    assert not others_can_stay(more, "a", 3)
    assert others_can_stay(request, "b", 3)  # b's rate 90 fits its 2g
    less = replace(request, services=tuple(replace(s, rate=101.0) if s.model == "b" else s
                                           for s in request.services))
    assert not others_can_stay(less, "b", 3)
