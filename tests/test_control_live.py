"""The live controller's sequence with a fake clock, the node agent on fake MIG nodes, fake
deployments and an in-process ingress: decide -> plan (from the running plan) -> check ->
transition (nodes, deployments, routing switch) and the decision log."""

from __future__ import annotations

from dataclasses import replace

import pytest

from fake_handles import GatedHandle
from parvagpu.control.live import Controller, LiveConfig, check_replan, segment_name
from parvagpu.control.nodes import FakeNodes
from parvagpu.control.policy import PolicyConfig
from parvagpu.control.replay import Costs
from parvagpu.core.gpus import gpu_type
from parvagpu.core.model import Service
from parvagpu.inputs.profiles import load_profiles
from parvagpu.planning.request import PlanRequest
from parvagpu.planning.strategies import plan as make_plan
from parvagpu.serving.ingress import Ingress
from parvagpu.verify import verify

PROFILES = None


def profiles():
    global PROFILES
    if PROFILES is None:
        from parvagpu.cli.common import example_dir

        PROFILES = load_profiles(example_dir() / "profiles")
    return PROFILES


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def now(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.t += s


class Events:
    def __init__(self) -> None:
        self.seq: list[tuple] = []


class Nodes(FakeNodes):
    def __init__(self, root, ev: Events) -> None:
        super().__init__(root)
        self.ev = ev

    def apply(self, plan) -> None:
        super().apply(plan)
        self.ev.seq.append(("nodes", frozenset(segment_name(plan, s) for s in plan.segments)))


class Deployments:
    """Starts a handle per segment (answering at once); the port finds it by name."""

    def __init__(self, ev: Events) -> None:
        self.ev, self.handles = ev, {}

    def start(self, segments) -> None:
        for spec, _doc in segments:
            assert spec.name not in self.handles
            h = self.handles[spec.name] = GatedHandle(spec.name)
            h.open()
        self.ev.seq.append(("start", tuple(s.name for s, _ in segments)))

    def stop(self, names) -> None:
        for n in names:
            del self.handles[n]
        self.ev.seq.append(("stop", tuple(names)))


class Port:
    """The controller's view of an in-process `Ingress`, every switch step recorded; `busy`
    keeps a draining segment's in-flight count above 0 for that many polls."""

    def __init__(self, deps: Deployments, ev: Events, busy: int = 0) -> None:
        self.ing = Ingress({}, {})
        self.deps, self.ev, self.busy = deps, ev, busy

    def counts(self):
        return self.ing.counts()

    def set_model(self, model, rate, latency_ms):
        self.ing.set_model(model, rate, latency_ms)

    def add_segment(self, model, seg):
        self.ing.add_segment(model, seg, self.deps.handles[seg["name"]])
        self.ev.seq.append(("add", seg["name"]))

    def activate(self, model, name):
        self.ing.activate(model, name)
        self.ev.seq.append(("activate", name))

    def drain(self, model, name):
        self.ing.drain(model, name)
        self.ev.seq.append(("drain", name))

    def inflight(self, model, name):
        if self.busy:
            self.busy -= 1
            return 1
        return self.ing.inflight(model, name)

    def remove_segment(self, model, name):
        self.ing.remove_segment(model, name)
        self.ev.seq.append(("remove", name))

    def drop_model(self, model):
        self.ing.drop_model(model)
        self.ev.seq.append(("drop", model))

    def down_segments(self):
        return self.ing.down_segments()


RATES = {"resnet50": 300.0, "bert": 150.0}
SLOS = {"resnet50": 100.0, "bert": 300.0}
POLICY = PolicyConfig(dwell_s=60.0, cooldown_s=30.0)
CFG = LiveConfig(tick_s=5.0, window_s=20.0, attainment_window_s=60.0)


def _plan(rates, current=None):
    services = tuple(Service(m, r, SLOS.get(m, 200.0)) for m, r in sorted(rates.items()))
    return make_plan(PlanRequest(services, profiles(), gpu_type("A100-80GB"), 3, current=current))


def _controller(tmp_path, busy=0):
    ev = Events()
    deps = Deployments(ev)
    port = Port(deps, ev, busy)
    log: list[dict] = []
    nodes = Nodes(tmp_path, ev)
    ctl = Controller(_plan(RATES), profiles(), POLICY, CFG, Clock(), nodes, deps, port, log.append)
    ctl.start()
    return ctl, ev, port, nodes, log


def _offer(ctl, port, rates, seconds):
    """Offered load, as the ingress counts it: every request admitted and answered within the SLO."""
    t_end = ctl.clock.t + seconds
    while ctl.clock.t < t_end:
        for m, r in rates.items():
            c = port.ing.models[m].counts
            n = int(r * CFG.tick_s)
            c["admitted"] += n
            c["ok"] += n
            c["within_slo"] += n
        ctl.clock.t += CFG.tick_s
        ctl.tick()


def _order_holds(seq, created, removed):
    """Make-before-break at every level: a created segment's instance exists before its deployment
    starts, it is ready before it is added and given weight; a removed one is drained, removed from
    the router, its deployment stopped, and only then its instance destroyed."""
    pos = {}
    for i, e in enumerate(seq):
        if e[0] in ("add", "activate", "drain", "remove"):
            pos[(e[0], e[1])] = i
        elif e[0] in ("start", "stop"):
            for n in e[1]:
                pos[(e[0], n)] = i
    for n in created:
        node_first = min(i for i, e in enumerate(seq) if e[0] == "nodes" and n in e[1])
        assert node_first < pos[("start", n)] < pos[("add", n)] < pos[("activate", n)], n
    for n in removed:
        assert pos[("drain", n)] < pos[("remove", n)] < pos[("stop", n)], n
        gone = min(i for i, e in enumerate(seq) if e[0] == "nodes" and i > pos[("stop", n)])
        assert n not in seq[gone][1], n


def test_rate_step_replans_and_switches_make_before_break(tmp_path):
    ctl, ev, port, nodes, log = _controller(tmp_path)
    first = ctl.plan
    assert {k for k, st in port.ing.models["resnet50"].segments().items() if st == "live"} == {
        segment_name(first, s) for s in first.segments if s.model == "resnet50"}
    _offer(ctl, port, {"resnet50": 240.0, "bert": 120.0}, 60)  # inside the band: nothing moves
    assert ctl.plan is first and not [r for r in log if r["kind"] == "transition"]
    ev.seq.clear()
    _offer(ctl, port, {"resnet50": 480.0, "bert": 120.0}, 40)  # x2 on resnet50
    assert ctl.plan is not first
    new = ctl.plan
    assert new.capacity("resnet50") >= 480.0 * (1 + POLICY.min_headroom)
    assert verify(new, profiles()) == []
    kinds = [r["kind"] for r in log]
    i = kinds.index("transition")
    assert log[i - 1]["kind"] == "decision" and log[i - 1]["replan"] and "resnet50" in log[i - 1]["reason"]
    done = log[kinds.index("transition done")]
    old_names = {segment_name(first, s) for s in first.segments}
    new_names = {segment_name(new, s) for s in new.segments}
    created = {s["segment"] for s in done["steps"] if s["action"] == "create"}
    removed = {s["segment"] for s in done["steps"] if s["action"] == "remove"}
    assert created == new_names - old_names | (created & old_names) and created
    assert (old_names - new_names) <= removed
    _order_holds(ev.seq, created, removed)
    for s in done["steps"]:  # every step has its timings
        assert {"instance_s", "segment", "model"} <= set(s)
    # the nodes and the router hold exactly the new plan
    assert nodes.segments(0) == len(new.segments)
    routed = {n for m in port.ing.models.values() for n, st in m.segments().items()}
    assert routed == new_names and all(st == "live" for m in port.ing.models.values() for st in m.segments().values())
    assert ctl.snapshot()["plan"]["gpus_used"] == new.gpus_used


def test_drain_waits_for_inflight_before_removal(tmp_path):
    ctl, ev, port, nodes, log = _controller(tmp_path)
    ev.seq.clear()
    port.busy = 5  # the first draining segment reports requests in flight for five polls
    ctl.submit_services((Service("resnet50", 300.0, 100.0),))  # bert's segments go
    _offer(ctl, port, {"resnet50": 300.0, "bert": 120.0}, 5)
    done = [r for r in log if r["kind"] == "transition done"]
    assert done, [r.get("reason") for r in log]
    rem = [s for s in done[0]["steps"] if s["action"] == "remove"]
    assert rem and rem[0]["drain_s"] == pytest.approx(3 * CFG.poll_s)  # 5 busy answers over 2 segments: 3 polls
    _order_holds(ev.seq, set(), {s["segment"] for s in rem})


def test_services_switch_adds_and_drops_models(tmp_path):
    ctl, ev, port, nodes, log = _controller(tmp_path)
    ctl.submit_services((Service("resnet50", 300.0, 100.0), Service("vgg16", 100.0, 400.0)))
    _offer(ctl, port, {"resnet50": 300.0, "bert": 150.0}, 5)
    assert {s.model for s in ctl.plan.services} == {"resnet50", "vgg16"}
    assert set(port.ing.models) == {"resnet50", "vgg16"}
    assert ("drop", "bert") in ev.seq
    assert port.ing.models["vgg16"].capacity() >= 100.0
    assert any(r["kind"] == "decision" and r["reason"] == "services file switched" for r in log)


def test_refused_plan_changes_nothing(tmp_path, monkeypatch):
    ctl, ev, port, nodes, log = _controller(tmp_path)
    first = ctl.plan
    broken = replace(first, segments=first.segments + (first.segments[0],))
    monkeypatch.setattr("parvagpu.control.live.make_plan", lambda req, strategy: broken)
    ev.seq.clear()
    _offer(ctl, port, {"resnet50": 480.0, "bert": 120.0}, 30)
    assert ctl.plan is first and ev.seq == []
    refused = [r for r in log if r["kind"] == "refused"]
    assert refused and refused[0]["problems"]
    sched, problems = check_replan(first, broken, profiles())
    assert sched is None and problems


def test_replan_needing_no_step_keeps_the_plan_and_adopts_the_rates(tmp_path, monkeypatch):
    ctl, ev, port, nodes, log = _controller(tmp_path)
    first = ctl.plan
    monkeypatch.setattr("parvagpu.control.live.make_plan", lambda req, strategy: first)
    ev.seq.clear()
    _offer(ctl, port, {"resnet50": 480.0, "bert": 120.0}, 30)
    kept = [r for r in log if r["kind"] == "plan kept"]
    assert kept and "resnet50" in kept[0]["reason"] and kept[0]["planned"]["resnet50"] > 300.0
    assert ctl.planned["resnet50"] == kept[-1]["planned"]["resnet50"]
    assert ev.seq == [] and not [r for r in log if r["kind"].startswith("transition")]


def _first_target_on_a_ramp(tmp_path, policy):
    """resnet50 ramps up 3 req/s every second; the first re-plan's target for it, and its rate."""
    ev = Events()
    deps = Deployments(ev)
    port = Port(deps, ev)
    log: list[dict] = []
    cfg = LiveConfig(tick_s=5.0, window_s=20.0, attainment_window_s=60.0, trend_window_s=40.0)
    ctl = Controller(_plan(RATES), profiles(), policy, cfg, Clock(), Nodes(tmp_path, ev), deps, port, log.append)
    ctl.start()
    for k in range(60):
        _offer(ctl, port, {"resnet50": 200.0 + 15.0 * k, "bert": 150.0}, CFG.tick_s)
        done = [r for r in log if r["kind"] == "decision" and r["replan"]]
        if done:
            return done[0]["targets"]["resnet50"], done[0]["observation"]["resnet50"]["rate"]
    raise AssertionError("no re-plan on the ramp")


def test_live_controller_feeds_the_trend_rules_the_replay_uses(tmp_path):
    flat, r0 = _first_target_on_a_ramp(tmp_path / "a", POLICY)
    rising, r1 = _first_target_on_a_ramp(tmp_path / "b", replace(POLICY, trend_horizon_s=60.0))
    assert flat == pytest.approx(r0 * (1 + POLICY.headroom), rel=1e-3)  # no trend: r (1 + h)
    assert r1 == pytest.approx(r0)  # the same observation, but planned for the rate 60 s ahead (+180 req/s)
    assert rising == pytest.approx((r1 + 180.0) * (1 + POLICY.headroom), rel=0.05)


def test_api_plan_services_and_bad_input(tmp_path):
    from parvagpu.control.api import route

    ctl, ev, port, nodes, log = _controller(tmp_path)
    status, ctype, body = route(ctl, "GET", "/v1/plan", b"", profiles(), {"resnet50", "bert", "vgg16"})
    doc = __import__("json").loads(body)
    assert status == 200 and doc["plan"]["gpus_used"] == ctl.plan.gpus_used and doc["decisions"][0]["kind"] == "start"
    for bad, why in ((b"services: [{model: nope, rate: 1, latency_ms: 5}]", "no profile"),
                     (b"services: [{model: vgg19, rate: 1, latency_ms: 50}]", "models config"),
                     (b"{not yaml: [", "invalid YAML"), (b"\xff\xfe", "UTF-8"),
                     (b"services: [{model: bert, rate: -1, latency_ms: 5}]", "rate")):
        status, _, body = route(ctl, "POST", "/v1/services", bad, profiles(), {"resnet50", "bert", "vgg16"})
        msg = __import__("json").loads(body)["error"]
        assert status == 400 and why in msg and "\n" not in msg, msg
    assert ctl._pending is None  # nothing changed
    ok = b'{"services": [{"model": "bert", "rate": 50, "latency_ms": 300}]}'
    assert route(ctl, "POST", "/v1/services", ok, profiles(), None)[0] == 202
    assert ctl._pending == (Service("bert", 50.0, 300.0),)
    assert route(ctl, "GET", "/nope", b"", profiles(), None)[0] == 404


def test_settings_file(tmp_path):
    from parvagpu.control.live import read_live_settings
    from parvagpu.core.errors import ParvaError

    p = tmp_path / "s.yaml"
    p.write_text("policy: {dwell_s: 20}\ncontrol: {tick_s: 1, strategy: parva, max_procs: 2, node_loss_s: 3}\n"
                 "costs: {create_s: 1}\n")
    pol, cfg = read_live_settings(p)
    assert pol.dwell_s == 20 and cfg.tick_s == 1 and cfg.max_procs == 2 and cfg.node_loss_s == 3.0
    p.write_text("control: {node_loss_s: -1}\n")
    with pytest.raises(ParvaError, match="node_loss_s must be positive"):
        read_live_settings(p)
    p.write_text("control: {tick: 1}\n")
    with pytest.raises(ParvaError, match="unknown control keys: tick"):
        read_live_settings(p)
    p.write_text("control: {tick_s: 0}\n")
    with pytest.raises(ParvaError, match="tick_s must be positive"):
        read_live_settings(p)


def test_one_settings_file_sets_the_dip_policy_of_the_controller_and_the_replay(tmp_path):
    from parvagpu.control.live import read_live_settings
    from parvagpu.control.replay import read_settings
    from parvagpu.core.errors import ParvaError

    p = tmp_path / "s.yaml"
    p.write_text("policy: {dips: refuse, band: 0.1}\ncontrol: {tick_s: 1}\nreplay: {tick_s: 30}\n")
    assert read_live_settings(p)[0] == read_settings(p)[0] == PolicyConfig(dips="refuse", band=0.1)
    assert PolicyConfig().dips == "run"
    for bad, why in (("maybe", "dips must be run or refuse, got 'maybe'"), ("1", "policy.dips must be run or refuse")):
        p.write_text(f"policy: {{dips: {bad}}}\n")
        for read in (read_live_settings, read_settings):
            with pytest.raises(ParvaError, match=why) as exc:
                read(p)
            assert str(exc.value).startswith(str(p)) and "\n" not in str(exc.value)


def test_counts_after_a_long_transition_are_spread_not_a_burst(tmp_path):
    ctl, ev, port, nodes, log = _controller(tmp_path)
    _offer(ctl, port, {"resnet50": 200.0, "bert": 100.0}, 30)
    c = port.ing.models["resnet50"].counts
    c["admitted"] += 200 * 30  # 30 s of arrivals (longer than the window) seen in one look after a transition
    ctl.clock.t += 30
    views = {v.model: v for v in ctl.observe(ctl.clock.t)}
    assert views["resnet50"].observed_rate == pytest.approx(200.0, rel=0.01)


def test_control_verb_checks_its_inputs_before_starting_anything(tmp_path):
    """Bad input to `parvagpu control` is one line and exit 2, found before Ray starts: a models
    config without the plan's model, a settings key it does not know, a decisions path in a
    missing directory. Nothing is written."""
    from pathlib import Path

    from typer.testing import CliRunner

    from parvagpu.cli import app

    live = Path(__file__).resolve().parents[1] / "bench" / "live"
    plan = tmp_path / "plan.json"
    runner = CliRunner()
    r = runner.invoke(app, ["plan", "-f", str(live / "services.yaml"), "--profiles", str(live / "profiles"),
                            "-o", str(plan)])
    assert r.exit_code == 0, r.output
    (tmp_path / "models.yaml").write_text("nap: {factory: 'parvagpu.serving.workers:sleep_model', shape: [4]}\n")
    (tmp_path / "bad.yaml").write_text("control: {tick: 1}\n")
    base = ["control", str(plan), "--profiles", str(live / "profiles"), "--state-dir", str(tmp_path / "state")]
    for extra, why in (
        (["--models", str(tmp_path / "models.yaml"), "--decisions", str(tmp_path / "d.jsonl")], "sleepy"),
        (["--models", str(live / "models.yaml"), "--settings", str(tmp_path / "bad.yaml"),
          "--decisions", str(tmp_path / "d.jsonl")], "unknown control keys"),
        (["--models", str(live / "models.yaml"), "--decisions", str(tmp_path / "no" / "d.jsonl")], "does not exist"),
        (["--models", str(live / "models.yaml"), "--decisions", str(tmp_path / "d.jsonl"), "--watch"],
         "--watch needs --services"),
        (["--models", str(live / "models.yaml"), "--decisions", str(tmp_path / "d.jsonl"), "--services",
          str(tmp_path / "bad.yaml")], "bad.yaml: unknown top-level keys"),
    ):
        r = runner.invoke(app, base + extra)
        assert r.exit_code == 2, r.output
        assert why in r.output and len(r.output.strip().splitlines()) == 1, r.output
    assert not (tmp_path / "state").exists() and not (tmp_path / "d.jsonl").exists()
    from parvagpu.cli.live import _prepare

    ctx = _prepare(plan, live / "profiles", live / "models.yaml", live / "settings.yaml", tmp_path / "state",
                   tmp_path / "d.jsonl", False)  # good input: everything checked, nothing started
    assert set(ctx["models"]) == {"sleepy", "nap"} and ctx["cfg"].window_s == 6


def test_local_nodes_drive_a_real_backend_interface_and_pin_segments(tmp_path):
    """`--backend nvml`'s node side (`LocalNodes`: this machine's GPUs as node 0, through the MIG
    backend interface and MPS control) run against the strict fake in their place: the
    controller's bring-up and a re-plan leave the hardware holding exactly the plan, and each
    segment is pinned to the MIG instance and MPS daemon the node state names."""
    from dataclasses import replace

    from parvagpu.control.nodes import LocalNodes
    from parvagpu.core.errors import ParvaError
    from parvagpu.hardware.mig import FakeBackend
    from parvagpu.hardware.mps import FakeMps
    from parvagpu.serving.policy import serving_spec

    ev = Events()
    deps = Deployments(ev)
    port = Port(deps, ev)
    log: list[dict] = []
    fake = FakeBackend("A100-80GB", 8)
    nodes = LocalNodes(fake, FakeMps(fake), fake.kill_processes, tmp_path)
    ctl = Controller(_plan(RATES), profiles(), POLICY, CFG, Clock(), nodes, deps, port, log.append)
    ctl.start()
    _offer(ctl, port, {"resnet50": 480.0, "bert": 120.0}, 40)  # x2 on resnet50: a transition
    assert any(r["kind"] == "transition done" for r in log)
    new = ctl.plan
    held = sum(len(fake.list_instances(g)) for g in range(fake.gpu_count()))
    assert held == len(new.segments) and nodes.applied
    uuids = {ci.uuid for g in range(fake.gpu_count()) for gi in fake.list_instances(g) for ci in gi.cis}
    for ms in serving_spec(new).values():
        for seg in ms.segments:
            env = dict(nodes.pin(seg).env)
            assert env["CUDA_VISIBLE_DEVICES"] in uuids and str(tmp_path) in env["CUDA_MPS_PIPE_DIRECTORY"]
    two = replace(new, segments=(*new.segments, replace(new.segments[0], gpu=new.gpus_per_node)))
    with pytest.raises(ParvaError, match=r"node\(s\) 1: with a real backend"):
        nodes.apply(two)
    assert sum(len(fake.list_instances(g)) for g in range(fake.gpu_count())) == held  # refused: nothing changed


def test_control_backend_nvml_without_nvml_is_one_line_and_exit_4(tmp_path):
    """Where NVML is absent, `control --backend nvml` stops before Ray starts: one line, exit 4
    (the hardware or driver refused), nothing written."""
    from pathlib import Path

    from typer.testing import CliRunner

    from parvagpu.cli import app
    from parvagpu.core.errors import ParvaError
    from parvagpu.hardware.mig import open_nvml

    try:
        open_nvml().close()
        pytest.skip("NVML is present here")
    except ParvaError:
        pass
    live = Path(__file__).resolve().parents[1] / "bench" / "live"
    plan = tmp_path / "plan.json"
    runner = CliRunner()
    assert runner.invoke(app, ["plan", "-f", str(live / "services.yaml"), "--profiles", str(live / "profiles"),
                               "-o", str(plan)]).exit_code == 0
    r = runner.invoke(app, ["control", str(plan), "--profiles", str(live / "profiles"), "--models",
                            str(live / "models.yaml"), "--state-dir", str(tmp_path / "state"), "--decisions",
                            str(tmp_path / "d.jsonl"), "--backend", "nvml"])
    assert r.exit_code == 4, r.output
    assert "NVML" in r.output and len(r.output.strip().splitlines()) == 1, r.output
    assert not (tmp_path / "state").exists() and not (tmp_path / "d.jsonl").exists()


def test_watched_services_file_switches_and_a_bad_version_changes_nothing(tmp_path):
    """`--services FILE --watch`: a changed good file is re-planned for at the next tick; a bad
    version (unknown model, broken YAML, file gone) is logged as refused with one line, and the
    running plan and services stay."""
    import os

    from parvagpu.control.live import ServicesWatch

    ctl, ev, port, nodes, log = _controller(tmp_path)
    f = tmp_path / "services.yaml"
    f.write_text("services: [{model: resnet50, rate: 240, latency_ms: 100}, {model: bert, rate: 120, latency_ms: 300}]\n")
    w = ServicesWatch(f, ctl, profiles(), None)
    assert not w.poll() and ctl._pending is None  # unchanged since the start: nothing to do
    bump = [10**9]

    def write(text: str) -> None:
        f.write_text(text)
        bump[0] += 10**9
        os.utime(f, ns=(bump[0], bump[0]))  # a new modification time even within one clock tick

    write("services: [{model: bert, rate: 50, latency_ms: 300}]\n")
    assert w.poll() and ctl._pending == (Service("bert", 50.0, 300.0),)
    ctl.clock.t += CFG.tick_s
    ctl.tick()
    assert {s.model for s in ctl.plan.services} == {"bert"}
    assert any(r.get("reason") == "services file switched" for r in log if r["kind"] == "transition")
    kept = ctl.plan
    for bad, why in (("services: [{model: nope, rate: 1, latency_ms: 5}]\n", "nope"),
                     ("services: [{model: bert, rate: 1\n", str(f)), (None, "No such file")):
        if bad is None:
            f.unlink()
        else:
            write(bad)
        assert not w.poll() and ctl._pending is None
        r = log[-1]
        assert r["kind"] == "services file refused" and why in r["error"] and "\n" not in r["error"], r
        ctl.clock.t += CFG.tick_s
        ctl.tick()
        assert ctl.plan is kept
    assert not w.poll()  # still gone: refused once, not at every look


def _swapped(first):
    """resnet50's one segment and one of bert's trade slots on a full GPU: without a free slot
    either model would dip below its floor while the other's segment is replaced."""
    seg = {(s.model, s.start): s for s in first.segments}
    r, b = seg[("resnet50", 5)], seg[("bert", 4)]
    moved = (replace(r, start=4), replace(b, start=5), seg[("bert", 6)])
    return replace(first, segments=moved, transition=None)


@pytest.mark.parametrize("dips", ["run", "refuse"])
def test_a_dipping_transition_runs_or_is_refused_as_the_setting_says(tmp_path, monkeypatch, dips):
    """No spare GPU: the swap must dip. `dips: run` carries it out with each dip in the log;
    `dips: refuse` keeps the running plan, logs why, and tries again only after the cool-down."""
    ev = Events()
    deps, log = Deployments(ev), []
    port = Port(deps, ev)
    first = _plan(RATES)
    new = _swapped(first)
    ctl = Controller(first, profiles(), replace(POLICY, dips=dips), CFG, Clock(), Nodes(tmp_path, ev), deps,
                     port, log.append)
    ctl.start()
    monkeypatch.setattr("parvagpu.control.live.make_plan", lambda req, strategy: new)
    ev.seq.clear()
    _offer(ctl, port, {"resnet50": 480.0, "bert": 120.0}, 60)
    refused = [r for r in log if r["kind"] == "refused"]
    if dips == "refuse":
        assert ctl.plan is first and ev.seq == [] and not [r for r in log if r["kind"].startswith("transition")]
        assert refused[0]["refused"] == "dips refused" and refused[0]["dips"]
        assert all("below min(old rate, new rate)" in p for p in refused[0]["problems"])
        assert ctl.planned == RATES  # nothing adopted
        gaps = [b["time_s"] - a["time_s"] for a, b in zip(refused, refused[1:])]
        assert len(refused) >= 2 and min(gaps) >= POLICY.cooldown_s  # retried after the cool-down only
        return
    assert not refused and ctl.plan is new
    start = next(r for r in log if r["kind"] == "transition")
    assert start["dips"] and {d["model"] for d in start["dips"]} <= {"resnet50", "bert"}
    assert all(d["shortfall"] > 0 and d["steps"] >= 1 for d in start["dips"])
    done = next(r for r in log if r["kind"] == "transition done")
    assert done["created"] == done["removed"] == 2
    routed = {n for m in port.ing.models.values() for n in m.segments()}
    assert routed == {segment_name(new, s) for s in new.segments}


@pytest.mark.parametrize("dips", ["run", "refuse"])
def test_the_replay_makes_the_live_controllers_choice_on_a_dipping_transition(tmp_path, monkeypatch, dips):
    """The replay's re-plan of the same swap: run with its dip counted, or refused with the plan,
    the planned rates and the counts unchanged and the cool-down started, as live does."""
    from parvagpu.control.replay import Inputs, Options, _Controller
    from parvagpu.control.trace import Trace

    first = _plan(RATES)
    new = _swapped(first)
    monkeypatch.setattr("parvagpu.control.replay.plan_for",
                        lambda inp, opts, rates, current=None: first if current is None else new)
    trace = Trace(("bert", "resnet50"), (0.0,), ((150.0, 300.0),), 3600.0)
    inp = Inputs(trace, {"bert": 200.0, "resnet50": 100.0}, profiles(), gpu_type("A100-80GB"))
    ctl = _Controller(inp, Options(), replace(POLICY, dips=dips), Costs(), None)
    planned = dict(ctl.planned)
    ctl._replan(100.0, {"resnet50": 600.0})
    assert ctl.last_replan == 100.0  # run or refused: the next re-plan waits for the cool-down
    if dips == "refuse":
        assert ctl.plan is first and ctl.planned == planned and not ctl.runs and ctl.changed["resnet50"] == []
        assert (ctl.replans, ctl.created, ctl.removed, ctl.dipped, dict(ctl.refused)) == (0, 0, 0, 0, {"dips refused": 1})
    else:
        assert ctl.plan is new and ctl.planned["resnet50"] == 600.0 and ctl.runs and ctl.changed["resnet50"] == [100.0]
        assert (ctl.replans, ctl.created, ctl.removed, ctl.dipped, dict(ctl.refused)) == (1, 2, 2, 1, {})
    r = ctl.result()
    assert (r.dipped, r.refused_dips, r.refused_checks) == ((dips == "run") * 1, (dips == "refuse") * 1, 0)


@pytest.mark.parametrize("dips", ["run", "refuse"])
def test_a_failed_check_refuses_whatever_the_dip_setting(tmp_path, monkeypatch, dips):
    ctl, ev, port, nodes, log = _controller(tmp_path)
    ctl.policy = replace(POLICY, dips=dips)
    first = ctl.plan
    broken = replace(first, segments=first.segments + (first.segments[0],))
    monkeypatch.setattr("parvagpu.control.live.make_plan", lambda req, strategy: broken)
    ev.seq.clear()
    _offer(ctl, port, {"resnet50": 480.0, "bert": 120.0}, 30)
    refused = [r for r in log if r["kind"] == "refused"]
    assert ctl.plan is first and ev.seq == [] and refused and refused[0]["refused"] == "check failed"


def test_a_spare_gpu_bridges_a_transition_the_slots_would_dip(tmp_path, monkeypatch):
    ev = Events()
    deps, log = Deployments(ev), []
    port = Port(deps, ev)
    first = _plan(RATES)
    assert sorted((s.model, s.gpu, s.start) for s in first.segments) == [
        ("bert", 0, 4), ("bert", 0, 6), ("resnet50", 0, 5)]
    new = _swapped(first)
    ctl = Controller(first, profiles(), replace(POLICY, dips="refuse"), replace(CFG, spare_gpus=1), Clock(),
                     Nodes(tmp_path, ev), deps, port, log.append)
    ctl.start()
    monkeypatch.setattr("parvagpu.control.live.make_plan", lambda req, strategy: new)
    _offer(ctl, port, {"resnet50": 480.0, "bert": 120.0}, 30)
    assert ctl.plan is new and not [r for r in log if r["kind"] == "refused"]
    start = next(r for r in log if r["kind"] == "transition")
    assert start["dips"] == []
    steps = next(r for r in log if r["kind"] == "transition done")["steps"]
    on_spare = [(s["action"], s["segment"]) for s in steps if "-g1-" in s["segment"]]  # GPU 1: the spare
    assert [a for a, _ in on_spare] == ["create", "remove"] and on_spare[0][1] == on_spare[1][1]
    routed = {n for m in port.ing.models.values() for n in m.segments()}
    assert routed == {segment_name(new, s) for s in new.segments}
    fake, _ = ctl.nodes.held[0]
    assert ctl.nodes.segments(0) == len(new.segments) and not fake.list_instances(1)  # the spare is free again
