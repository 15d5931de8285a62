"""Traces (generated, written, read back, rejected) and the trace replay: the controller against a
static peak plan and an oracle, through `trace-gen` and `simulate --trace`."""

from __future__ import annotations

import json

import pytest
from helpers import swap_pair
from typer.testing import CliRunner

from parvagpu.cli import app
from parvagpu.control.replay import Costs, Options, _Cluster, _runs, read_settings
from parvagpu.control.trace import Shape, generate, read_trace, trace_csv
from parvagpu.core.errors import ParvaError
from parvagpu.core.model import PlacedSegment, Schedule, Segment, Step, Triplet
from parvagpu.planning.transition import schedule

runner = CliRunner()


def _run(*args: str):
    return runner.invoke(app, list(args))


def test_generated_trace_round_trips_and_is_seeded(tmp_path):
    shape = Shape(hours=2, step_s=300, noise=0.1, bursts_per_day=20, ramp_share=0.5)
    a = generate({"x": 100.0, "y": 2000.0}, shape, seed=3)
    assert a == generate({"x": 100.0, "y": 2000.0}, shape, seed=3)
    assert a != generate({"x": 100.0, "y": 2000.0}, shape, seed=4)
    assert len(a.times) == 24 and a.end_s == 7200 and a.models == ("x", "y")
    p = tmp_path / "t.csv"
    p.write_text(trace_csv(a))
    assert read_trace(p) == a


def test_diurnal_shape_has_its_trough_and_peak():
    t = generate({"m": 1000.0}, Shape(hours=24, step_s=600, noise=0.0, spread_h=0.0), seed=0)
    rates = [r[0] for r in t.rates]
    assert max(rates) == pytest.approx(1000.0, rel=0.01) and min(rates) == pytest.approx(300.0, rel=0.01)
    assert t.times[rates.index(max(rates))] == pytest.approx(14 * 3600, abs=600)
    assert t.mean()["m"] == pytest.approx(650.0, rel=0.01)


def test_a_sparse_trace_holds_each_rate_until_the_model_changes(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text("time_s,model,rate\n0,a,10\n0,b,5\n60,a,20\n120,b,7\n")
    t = read_trace(p)
    assert t.times == (0.0, 60.0, 120.0) and t.end_s == 180.0
    assert t.rates == ((10.0, 5.0), (20.0, 5.0), (20.0, 7.0))


@pytest.mark.parametrize("text, message", [
    ("time,model,rate\n0,a,1\n", "expected the header"),
    ("time_s,model,rate\n0,a,x\n", "rate is not a number"),
    ("time_s,model,rate\n0,a,-1\n", "must be a finite number >= 0"),
    ("time_s,model,rate\n0,a,1\n0,a,2\n", "two rows at time 0"),
    ("time_s,model,rate\n0,,1\n", "empty model name"),
    ("time_s,model,rate\n", "no rows"),
])
def test_bad_traces_are_one_line_errors(tmp_path, text, message):
    p = tmp_path / "t.csv"
    p.write_text(text)
    with pytest.raises(ParvaError, match=message):
        read_trace(p)


def _seg(gpu: int, start: int, size: int = 1) -> PlacedSegment:
    return PlacedSegment(Segment("m", Triplet(size, 1, 1, 10.0, 1.0)), gpu, start)


def test_transition_runs_are_parallel_across_gpus_and_serial_on_one():
    steps = [Step("create", _seg(0, 0)), Step("create", _seg(1, 0)), Step("create", _seg(1, 1)),
             Step("remove", _seg(0, 4)), Step("create", _seg(0, 4))]
    runs = _runs(Schedule(tuple(steps), ()), 100.0, Costs(create_s=4, destroy_s=2, load_s=10))
    assert [(r.action, len(r.segments), r.start, r.end) for r in runs] == [
        ("create", 3, 100.0, 128.0),  # two creations on GPU 1 one after the other: 2 x 14 s
        ("remove", 1, 128.0, 130.0),
        ("create", 1, 130.0, 144.0),
    ]


def _capacity_over_time(old, sched):
    """(time, GPUs present, spare GPUs present, per-model serving capacity) at every run start of the
    replay's timing."""
    cluster, out, spares = _Cluster(old), [], frozenset(sched.spare_gpus)
    for run in _runs(sched, 0.0, Costs(create_s=4, destroy_s=2, load_s=10)):
        cluster.begin(run)
        cap = {m: sum(s.segment.throughput for s in cluster.segments(m)) for m in ("a", "b")}
        out.append((run.start, cluster.gpus(), cluster.gpus(spares), cap))
        cluster.finish(run)
    return out, cluster


def test_a_transition_on_a_spare_gpu_keeps_every_model_serving_and_counts_the_gpu():
    """Two models trade slots on a full GPU. Without a spare, one of them serves nothing until its
    new segment is loaded; with one spare GPU a bridge copy serves meanwhile, and the spare GPU is
    counted while the bridge is on it."""
    old, new = swap_pair()
    dipped, _ = _capacity_over_time(old, schedule(old, new))
    assert min(c["b"] for *_, c in dipped) == 0.0 and max(g for _, g, _, _ in dipped) == 1
    bridged, end = _capacity_over_time(old, schedule(old, new, spare_gpus=1))
    assert all(c["a"] >= 100.0 and c["b"] >= 80.0 for *_, c in bridged)
    # the spare GPU is held from the bridge's creation to its removal (the last run), then free
    assert [(g, sp) for _, g, sp, _ in bridged] == [(2, 1)] * len(bridged) and end.gpus(frozenset({1})) == 0
    assert end.gpus() == 1 and {k[0] for k in end.present} == {"a", "b"} and len(end.present) == 2


def test_settings_file(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text("policy: {headroom: 0.3, dwell_s: 900}\ncosts: {load_s: 20}\nreplay: {tick_s: 60}\n")
    cfg, costs, extra = read_settings(p)
    assert cfg.headroom == 0.3 and cfg.dwell_s == 900 and costs.load_s == 20 and extra == {"tick_s": 60}
    p.write_text("replay: {spare_gpus: 1.5}\n")
    with pytest.raises(ParvaError, match="spare GPUs must be a whole number"):
        Options(**read_settings(p)[2])
    assert Options(spare_gpus=2.0).spare_gpus == 2
    p.write_text("policy: {hedroom: 0.3}\n")
    with pytest.raises(ParvaError, match="unknown policy keys: hedroom"):
        read_settings(p)


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    out = tmp_path_factory.mktemp("trace")
    r = _run("trace-gen", "--out", str(out), "--models", "4", "--hours", "3", "--step", "300", "--seed", "2")
    assert r.exit_code == 0, r.output
    return out


def test_trace_gen_writes_a_replayable_workload(generated):
    t = read_trace(generated / "trace.csv")
    assert t.models == ("bert-0", "densenet121-1", "densenet169-2", "densenet201-3")
    assert len(t.times) == 36 and t.duration_s == 3 * 3600
    assert sorted(p.name for p in (generated / "profiles").iterdir()) == [f"{m}.csv" for m in t.models]
    assert "bert-0" in (generated / "services.yaml").read_text()


def test_simulate_trace_compares_controller_static_and_oracle(generated, tmp_path):
    out, settings = tmp_path / "r.json", tmp_path / "s.yaml"
    settings.write_text("policy: {dwell_s: 600, cooldown_s: 120}\nreplay: {samples: 1000, oracle_interval_s: 900}\n")
    r = _run("simulate", "--trace", str(generated / "trace.csv"), "--services", str(generated / "services.yaml"),
             "--profiles", str(generated / "profiles"), "--settings", str(settings), "--json", str(out))
    assert r.exit_code == 0, r.output
    doc = json.loads(out.read_text())
    ctl, static, static_h, oracle = doc["runs"]
    assert [x["run"] for x in doc["runs"]][:3] == ["controller", "static (peak)", "static (peak x 1.25)"]
    assert static["replans"] == 1 and static["gpu_hours"] == pytest.approx(3 * static["peak_gpus"])
    assert static["gpu_hours"] <= static_h["gpu_hours"] == pytest.approx(3 * static_h["peak_gpus"])
    assert oracle["replans"] == 12  # every 900 s of 3 h
    assert oracle["gpu_hours"] <= static["gpu_hours"]
    assert ctl["min_model_gap_s"] is None or ctl["min_model_gap_s"] >= 600  # the dwell holds
    assert ctl["max_model_replans_per_10_min"] <= 1
    assert all(0 < x["attainment"] <= 1 for x in doc["runs"])
    assert len(doc["decisions"]) == ctl["replans"] + ctl["replans_refused_for_dips"] + ctl["replans_refused_by_checks"]
    assert ctl["replans_refused_for_dips"] == 0  # `dips: run`, the default


def test_simulate_trace_needs_services(generated):
    r = _run("simulate", "--trace", str(generated / "trace.csv"))
    assert r.exit_code == 2 and "needs --services" in r.output
    r = _run("simulate", "--scenario", "1", "--services", str(generated / "services.yaml"))
    assert r.exit_code == 2 and "go with --trace" in r.output


def test_controller_with_trends_and_estimated_headrooms(generated):
    """Trend rules and per-model headrooms from the serving model's load curve: every estimate is
    `queueing_headroom` over that model's planned segments (within [h, h_max]), the views carry
    the rate's slope once a trend window has passed, and the dwell still holds."""
    from parvagpu.control.fluid import AttainmentTable
    from parvagpu.control.policy import PolicyConfig, queueing_headroom
    from parvagpu.control.replay import Inputs, Options, _by_model, _Controller, plan_for, run_controller
    from parvagpu.core.gpus import gpu_type
    from parvagpu.inputs.profiles import load_profiles
    from parvagpu.inputs.services import load_services

    trace = read_trace(generated / "trace.csv")
    slos = {s.model: s.latency_ms for s in load_services(generated / "services.yaml")}
    inp = Inputs(trace, slos, load_profiles(generated / "profiles"), gpu_type("A100-80GB"))
    opts = Options(samples=300, estimate_headroom=1, trend_window_s=1200)
    cfg = PolicyConfig(headroom=0.05, min_headroom=0.02, max_headroom=0.6, trend_horizon_s=600, falling_band=0.1)
    table = AttainmentTable(plan_for(inp, opts, {m: 1.0 for m in trace.models}), slos, inp.profiles, 300)
    ctl = _Controller(inp, opts, cfg, Costs(), table)
    segs = _by_model(ctl.plan)
    assert set(ctl.estimated) == set(segs)
    for m, h in ctl.estimated.items():
        curve = table.curve(m, segs[m], cfg.attainment_target)
        assert curve[0][0] == pytest.approx(1.0) and len(curve) <= 5
        assert all(a < cfg.attainment_target for _, a in curve[:-1])  # it stops at the first load that meets it
        assert h == queueing_headroom(cfg, curve) and 0.05 <= h <= 0.6
    res, decisions = run_controller(inp, opts, cfg, Costs(), table)
    assert decisions and res.row()["max_model_replans_per_10_min"] <= 1
    assert all(v.trend is not None for d in decisions if d.time_s >= 1200 for v in d.observation)
    assert all(v.trend is None for d in decisions if d.time_s < 1200 for v in d.observation)
