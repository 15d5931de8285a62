"""The re-plan policy as pure functions: band, attainment, dwell, cool-down; and the windows."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from parvagpu.control.policy import (ModelView, PolicyConfig, decide, down_band, forecast, judge, model_headroom,
                                     queueing_headroom, target_rate, trend_of)
from parvagpu.control.window import AttainmentWindow, RateWindow, TrendWindow
from parvagpu.core.errors import ParvaError

CFG = PolicyConfig(headroom=0.25, min_headroom=0.08, band=0.3, attainment_target=0.999, dwell_s=600, cooldown_s=120)


def view(rate, planned=100.0, capacity=110.0, attainment=None, last=-math.inf, model="m", headroom=None, trend=None):
    return ModelView(model, rate, attainment, planned, capacity, last, headroom, trend)


def test_inside_the_band_nothing_moves():
    # planned 100 (capacity 110): r (1.08) <= 110 and r (1.25) >= 70 for r in [56, 101.85]
    for r in (56.0, 80.0, 101.8):
        assert judge(CFG, view(r)).rate is None
    assert not decide(CFG, 1000.0, (view(80.0),)).replan


def test_leaving_the_band_up_and_down():
    up = judge(CFG, view(102.0))
    assert up.rate == pytest.approx(127.5) and up.reason.startswith("up")
    down = judge(CFG, view(55.0))
    assert down.rate == pytest.approx(68.75) and down.reason.startswith("down")


def test_attainment_below_target_replans_up_inside_the_band():
    w = judge(CFG, view(90.0, attainment=0.99))
    assert w.rate == pytest.approx(125.0)  # max(observed, planned) x (1 + h)
    assert "attainment" in w.reason
    assert judge(CFG, view(90.0, attainment=0.9995)).rate is None


def test_attainment_raises_the_plan_at_most_to_the_max_headroom():
    # observed 70: at most 70 x 1.6 = 112; planned 100 -> 112, then no further
    assert judge(CFG, view(70.0, attainment=0.99)).rate == pytest.approx(112.0)
    assert judge(CFG, view(70.0, planned=112.0, capacity=120.0, attainment=0.99)).rate is None


def test_attainment_does_not_replan_a_model_whose_capacity_is_already_ample():
    """Capacity above r x (1 + h_max) with attainment still missed: the shortfall is not capacity
    (a queue that loses requests at any load), so no re-plan, whatever the planned rate says."""
    # observed 70, h_max 0.6: 112. Planned 90 (a re-plan would want 112) but capacity 115 >= 112
    assert judge(CFG, view(70.0, planned=90.0, capacity=115.0, attainment=0.95)).rate is None
    assert judge(CFG, view(70.0, planned=90.0, capacity=111.0, attainment=0.95)).rate == pytest.approx(112.0)


@settings(max_examples=100, deadline=None)
@given(
    planned=st.floats(1, 5000), rate=st.floats(0, 10000), cap_over=st.floats(1.0, 3.0),
    attainment=st.floats(0, 0.9989),
)
def test_attainment_rule_property(planned, rate, cap_over, attainment):
    """A missed attainment target re-plans up only when that adds capacity: the wanted rate is above
    the planned one, never above r x (1 + h_max) (or the floor), and the capacity is below that."""
    cap = planned * cap_over
    w = judge(CFG, view(rate, planned, cap, attainment=attainment))
    if w.rate is not None and "attainment" in w.reason:
        most = max(1.0, rate * 1.6)
        assert planned < w.rate <= most + 1e-9 and cap < most


@settings(max_examples=100, deadline=None)
@given(
    planned=st.floats(1, 5000), over=st.floats(1.0, 1.5), rate=st.floats(0, 10000),
)
def test_band_property(planned, over, rate):
    """A model is left alone exactly when r (1 + h_min) <= C and r (1 + h) >= p (1 - b); a wanted
    rate always restores headroom h (or the floor)."""
    cap = planned * over
    w = judge(CFG, view(rate, planned, cap))
    inside = rate * 1.08 <= cap and max(1.0, rate * 1.25) >= planned * 0.7
    assert (w.rate is None) == inside
    if w.rate is not None:
        assert w.rate == pytest.approx(target_rate(CFG, rate))
        assert w.rate >= rate * 1.25 - 1e-9


@settings(max_examples=100, deadline=None)
@given(now=st.floats(0, 1e6), last=st.floats(0, 1e6))
def test_dwell_property(now, last):
    """A model that wants a change is re-planned iff its dwell has passed."""
    d = decide(CFG, now, (view(500.0, last=last),))
    assert d.replan == (now - last >= CFG.dwell_s)
    if not d.replan:
        assert "dwell" in dict(d.held)["m"]


@settings(max_examples=100, deadline=None)
@given(now=st.floats(0, 1e6), last=st.floats(0, 1e6))
def test_cooldown_property(now, last):
    d = decide(CFG, now, (view(500.0),), last_replan_s=last)
    assert d.replan == (now - last >= CFG.cooldown_s)
    if not d.replan:
        assert d.reason.startswith("cool-down")


def test_an_attainment_miss_raises_the_models_headroom_and_band_replans_keep_it():
    # observed 80, planned 100 (h 0.25): a miss wants 100 x 1.25 = 125, i.e. headroom 125/80 - 1
    w = judge(CFG, view(80.0, attainment=0.99))
    assert w.rate == pytest.approx(125.0) and w.headroom == pytest.approx(125 / 80 - 1)
    d = decide(CFG, 1000.0, (view(80.0, attainment=0.99), view(500.0, model="b")))
    assert dict(d.headrooms) == {"m": pytest.approx(125 / 80 - 1)}  # b re-planned by the band: none
    assert d.to_dict()["headrooms"] == {"m": pytest.approx(125 / 80 - 1, abs=1e-6)}
    # with headroom 0.5 the band's re-plans plan for r x 1.5, up and down
    assert judge(CFG, view(120.0, headroom=0.5)).rate == pytest.approx(180.0)
    assert judge(CFG, view(40.0, planned=200.0, capacity=210.0, headroom=0.5)).rate == pytest.approx(60.0)
    assert judge(CFG, view(100.0, planned=140.0, capacity=150.0, headroom=0.5)).rate is None  # in its band
    # a second miss raises it one more step of (1 + h), up to h_max
    w2 = judge(CFG, view(80.0, planned=100.0, capacity=101.0, attainment=0.99, headroom=0.3))
    assert w2.rate == pytest.approx(125.0) and w2.headroom == pytest.approx(125 / 80 - 1)
    w3 = judge(CFG, view(80.0, planned=125.0, capacity=126.0, attainment=0.99, headroom=125 / 80 - 1))
    assert w3.rate == pytest.approx(80 * 1.6) and w3.headroom == pytest.approx(0.6)


def test_a_models_headroom_stays_within_h_and_h_max():
    assert model_headroom(CFG, None) == 0.25
    assert model_headroom(CFG, 0.1) == 0.25 and model_headroom(CFG, 5.0) == 0.6
    assert target_rate(CFG, 100.0, 0.4) == pytest.approx(140.0) and target_rate(CFG, 0.1) == 1.0


def test_one_replan_carries_every_ready_model_and_holds_the_rest():
    views = (view(500.0, model="a"), view(500.0, model="b", last=900.0), view(80.0, model="c"))
    d = decide(CFG, 1000.0, views, last_replan_s=0.0)
    assert d.replan and dict(d.targets) == {"a": pytest.approx(625.0)}
    assert set(dict(d.held)) == {"b"}
    doc = d.to_dict()
    assert doc["targets"] == {"a": 625.0} and set(doc["observation"]) == {"a", "b", "c"}


def test_no_replan_while_a_transition_runs():
    d = decide(CFG, 1000.0, (view(500.0),), transition_running=True)
    assert not d.replan and d.reason == "a transition is running"


def test_config_is_checked():
    with pytest.raises(ParvaError):
        PolicyConfig(headroom=0.1, min_headroom=0.2)
    with pytest.raises(ParvaError):
        PolicyConfig(band=1.0)
    with pytest.raises(ParvaError):
        PolicyConfig(falling_band=1.0)
    with pytest.raises(ParvaError):
        PolicyConfig(trend_horizon_s=-1)


TREND = PolicyConfig(headroom=0.1, min_headroom=0.03, band=0.2, trend_horizon_s=600, trend_min=0.02, falling_band=0.05)


def test_a_trend_counts_only_when_clear_and_known():
    # r 100, T 600 s: a clear trend moves the rate by >= 2 req/s within 600 s, i.e. |slope| >= 1/300
    assert trend_of(TREND, view(100.0, trend=0.004)) == "rising"
    assert trend_of(TREND, view(100.0, trend=-0.004)) == "falling"
    assert trend_of(TREND, view(100.0, trend=0.003)) == "flat"  # 1.8 req/s in 600 s: noise
    assert trend_of(TREND, view(100.0)) == "flat"  # no slope known (the live controller today)
    assert trend_of(CFG, view(100.0, trend=1.0)) == "flat"  # T = 0: trends off, the rule before


def test_a_rising_trend_plans_for_the_forecast_at_the_end_of_the_dwell():
    # rising 0.01 req/s per s: in 600 s +6 -> planned for 106 x 1.1
    assert forecast(TREND, view(100.0, trend=0.01)) == pytest.approx(106.0)
    up = judge(TREND, view(100.0, planned=90.0, capacity=95.0, trend=0.01))
    assert up.rate == pytest.approx(106.0 * 1.1) and "forecast 106.0" in up.reason
    # a falling trend is not subtracted: the plan is for the rate seen now
    assert forecast(TREND, view(100.0, trend=-0.01)) == 100.0
    # a rising model is not planned down while its forecast still needs its plan
    assert judge(TREND, view(100.0, planned=140.0, capacity=145.0, trend=0.05)).rate is None  # 130 x 1.1 = 143


def test_a_clearly_falling_trend_narrows_the_down_band():
    # planned 120, r 100: wants 110, 91.7 % of the plan: inside b = 0.2, outside b_f = 0.05
    assert down_band(TREND, view(100.0, planned=120.0, trend=-0.01)) == 0.05
    assert down_band(TREND, view(100.0, planned=120.0, trend=-0.001)) == 0.2
    w = judge(TREND, view(100.0, planned=120.0, capacity=125.0, trend=-0.01))
    assert w.rate == pytest.approx(110.0) and w.reason.endswith("(falling)")
    assert judge(TREND, view(100.0, planned=120.0, capacity=125.0, trend=-0.001)).rate is None
    assert judge(TREND, view(100.0, planned=120.0, capacity=125.0)).rate is None
    # no falling band configured: b throughout
    assert down_band(PolicyConfig(trend_horizon_s=600), view(100.0, trend=-1.0)) == 0.3


@settings(max_examples=100, deadline=None)
@given(planned=st.floats(1, 5000), over=st.floats(1.0, 1.5), rate=st.floats(0, 10000),
       slope=st.floats(-10, 10), last=st.floats(0, 2000))
def test_trend_rules_keep_the_band_dwell_and_floor(planned, over, rate, slope, last):
    """With trends on: a wanted rate is never below r x (1 + h) nor the floor; a model inside
    [p (1 - b), C / (1 + h_min)] with a flat trend is left alone; the dwell still holds every change."""
    cap = planned * over
    v = view(rate, planned, cap, trend=slope, last=last)
    w = judge(TREND, v)
    if w.rate is not None:
        assert w.rate >= max(1.0, rate * 1.1) - 1e-9
    if trend_of(TREND, v) == "flat" and rate * 1.03 <= cap and max(1.0, rate * 1.1) >= planned * 0.8:
        assert w.rate is None
    d = decide(TREND, 1000.0, (v,))
    if last + TREND.dwell_s > 1000.0:
        assert not d.replan


def test_queueing_headroom_keeps_the_load_where_the_segments_meet_the_target():
    cfg = PolicyConfig(headroom=0.05, min_headroom=0.02, max_headroom=0.6, attainment_target=0.999)
    # meets 99.9 % up to load 0.8: (1.05 / 0.8) - 1 = 0.3125
    curve = ((1.0, 0.98), (0.9, 0.997), (0.8, 0.9995), (0.7, 1.0))
    assert queueing_headroom(cfg, curve) == pytest.approx(1.05 / 0.8 - 1)
    assert queueing_headroom(cfg, curve[::-1]) == pytest.approx(1.05 / 0.8 - 1)  # order does not matter
    # lossless at full load: just h
    assert queueing_headroom(cfg, ((1.0, 1.0),)) == pytest.approx(0.05)
    # never meets the target: the highest load within 0.1 % of the best it reaches, not h_max
    flat = ((1.0, 0.95), (0.9, 0.984), (0.8, 0.9855), (0.7, 0.986), (0.6, 0.986))
    assert queueing_headroom(cfg, flat) == pytest.approx(1.05 / 0.8 - 1)
    # a lucky high point above a miss does not count: the first miss from below ends the search
    assert queueing_headroom(cfg, ((0.7, 1.0), (0.8, 0.99), (0.9, 1.0))) == pytest.approx(1.05 / 0.7 - 1)
    # capped at h_max; no curve, no estimate
    assert queueing_headroom(cfg, ((0.5, 1.0), (0.6, 0.9))) == pytest.approx(0.6)
    assert queueing_headroom(cfg, ()) is None


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.floats(0.1, 1.0), st.floats(0.0, 1.0)), min_size=1, max_size=12))
def test_queueing_headroom_property(curve):
    """Within [h, h_max]; the load it allows is one of the curve's loads, and every load of the
    curve up to it meets the goal (the target, or the best attainment less 0.1 %)."""
    cfg = PolicyConfig(headroom=0.05, min_headroom=0.02, max_headroom=0.6, attainment_target=0.999)
    h = queueing_headroom(cfg, tuple(curve))
    assert 0.05 - 1e-12 <= h <= 0.6 + 1e-12
    goal = min(0.999, max(a for _, a in curve) - 0.001)
    rho = 1.05 / (1 + h)
    if 0.05 + 1e-9 < h < 0.6 - 1e-9:
        assert any(abs(load - rho) < 1e-9 for load, _ in curve)
        assert all(a >= goal for load, a in curve if load <= rho + 1e-12) or min(curve)[0] >= rho - 1e-9


def test_trend_window_is_the_slope_of_the_rate():
    w = TrendWindow(600.0, start_s=0.0)
    for t in range(1, 1201):  # a rate of 10 + 0.01 t, one look a second
        w.add(float(t), 10 + 0.01 * t)
        if t < 600:
            assert w.slope(float(t)) is None  # not a whole window yet
    assert w.slope(1200.0) == pytest.approx(0.01, rel=0.01)
    flat = TrendWindow(60.0)
    for t in range(1, 200):
        flat.add(float(t), 5.0)
    assert flat.slope(199.0) == pytest.approx(0.0)
    with pytest.raises(ParvaError):
        flat.add(3.0)


def test_rate_window_slides():
    w = RateWindow(10.0)
    for t in range(20):
        w.add(float(t), 5.0)
    assert w.rate(19.0) == pytest.approx(5.0)  # t in (9, 19]: 10 events of 5 over 10 s
    assert w.rate(25.0) == pytest.approx(2.0)  # t in (15, 25]: 4 events
    early = RateWindow(10.0)
    early.add(1.0, 4.0)
    assert early.rate(2.0) == pytest.approx(2.0)  # 4 over the 2 s seen so far
    with pytest.raises(ParvaError):
        w.add(3.0)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 5), st.integers(0, 50)), min_size=1, max_size=50), st.floats(1, 30))
def test_rate_window_counts_exactly_the_window(gaps, window):
    w = RateWindow(window)
    t, seen = 0.0, []
    for gap, n in gaps:
        t += gap
        w.add(t, n)
        seen.append((t, n))
    assert w.count(t) == pytest.approx(sum(n for s, n in seen if s > t - window))


def test_attainment_window():
    a = AttainmentWindow(60.0, min_requests=100)
    a.add(1.0, 50, 50)
    assert a.attainment(1.0) is None
    a.add(2.0, 1000, 990)
    assert a.attainment(2.0) == pytest.approx(1040 / 1050)
    assert a.attainment(61.5) == pytest.approx(0.99)
    with pytest.raises(ParvaError):
        a.add(3.0, 1, 2)


def _dipping_check():
    """A real dipping schedule (two models trade slots on a full GPU) and what the independent
    check finds in it: the verdict reads verify_schedule's own findings."""
    from helpers import swap_pair

    from parvagpu.planning.transition import schedule
    from parvagpu.verify import verify_schedule

    old, new = swap_pair()
    sched = schedule(old, new)
    return sched, verify_schedule(old, new, sched.steps)


@pytest.mark.parametrize("dips", ["run", "refuse"])
def test_a_dip_runs_or_is_refused_as_the_setting_says(dips):
    from parvagpu.control.policy import Verdict, transition_verdict

    sched, problems = _dipping_check()
    declared = {d.model for d in sched.dips}
    assert problems and declared
    v = transition_verdict(PolicyConfig(dips=dips), problems, declared)
    assert v.run is (dips == "run") and v.dipped and v.problems == tuple(problems)
    assert v.reason == ("runs with dips" if dips == "run" else "dips refused")
    assert transition_verdict(PolicyConfig(dips=dips), [], declared) == Verdict(True, "runs")  # nothing found


@pytest.mark.parametrize("dips", ["run", "refuse"])
def test_any_other_problem_refuses_whatever_the_dip_setting(dips):
    from parvagpu.control.policy import transition_verdict

    sched, problems = _dipping_check()
    declared = {d.model for d in sched.dips}
    cfg = PolicyConfig(dips=dips)
    wrong = "step 2 (create a 3g at gpu 0 start 4): the place is occupied"
    for found, models in (([wrong], declared), (problems + [wrong], declared),
                          (["the steps end with 1 segments that are not the new plan's 2"], declared),
                          (problems, set()),  # a dip the schedule did not declare: the two disagree
                          (["gpu 3: no such GPU"], set())):
        v = transition_verdict(cfg, found, models)
        assert not v.run and v.reason == "check failed" and set(v.problems) == set(found), found


def test_the_dip_setting_is_checked():
    with pytest.raises(ParvaError, match="dips must be run or refuse"):
        PolicyConfig(dips="sometimes")
