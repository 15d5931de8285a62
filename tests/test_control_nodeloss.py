"""The live controller loses a node: every segment of node 1 held down at the ingress for
`node_loss_s` -> those segments drained, unrouted and stopped, then every service re-planned onto
the remaining node, checked by verify and switched make-before-break."""

from __future__ import annotations

from dataclasses import replace

from test_control_live import CFG, POLICY, Clock, Deployments, Events, Nodes, Port, profiles

from parvagpu.control.live import Controller, segment_name
from parvagpu.core.gpus import gpu_type
from parvagpu.core.model import Service
from parvagpu.planning.request import PlanRequest
from parvagpu.planning.strategies import plan as make_plan
from parvagpu.verify import verify

RATES = {"resnet50": 3000.0, "bert": 1500.0}
SLOS = {"resnet50": 100.0, "bert": 300.0}


def _two_node_plan():
    """A fresh plan whose second GPU is moved to node 1 (8 GPUs per node)."""
    services = tuple(Service(m, r, SLOS[m]) for m, r in sorted(RATES.items()))
    fresh = make_plan(PlanRequest(services, profiles(), gpu_type("A100-80GB"), 3, 8, time_limit=5.0), "parva")
    gpus = sorted({s.gpu for s in fresh.segments})
    assert len(gpus) >= 2
    to = {g: (8 if k == 1 else k if k < 1 else k - 1) for k, g in enumerate(gpus)}
    plan = replace(fresh, segments=tuple(replace(s, gpu=to[s.gpu]) for s in fresh.segments))
    assert {plan.node_of(s.gpu) for s in plan.segments} == {0, 1} and verify(plan, profiles()) == []
    return plan


def _started(tmp_path):
    """A controller started on the two-node plan, with its fakes and decision log."""
    ev = Events()
    deps = Deployments(ev)
    port = Port(deps, ev)
    log: list[dict] = []
    ctl = Controller(_two_node_plan(), profiles(), POLICY, CFG, Clock(), Nodes(tmp_path, ev), deps, port, log.append)
    ctl.start()
    return ctl, ev, deps, port, log


def _node1_down(ctl, port) -> set[str]:
    """Node 1's segments, marked down at the ingress (as when their calls fail)."""
    on1 = {segment_name(ctl.plan, s) for s in ctl.plan.segments if ctl.plan.node_of(s.gpu) == 1}
    for route in port.ing.models.values():
        for i, name in enumerate(route.names):
            if name in on1:
                route.mark_down(i)
    return on1


def test_lost_node_is_forgotten_and_its_services_replanned_onto_the_rest(tmp_path):
    ctl, ev, deps, port, log = _started(tmp_path)
    on1 = _node1_down(ctl, port)
    ctl.clock.t += CFG.tick_s
    ctl.tick()
    assert not any(r["kind"] == "nodes lost" for r in log)  # not yet: a replica may be restarting
    ctl.clock.t += CFG.node_loss_s
    ctl.tick()
    kinds = [r["kind"] for r in log]
    assert "nodes lost" in kinds and "transition done" in kinds, log[-3:]
    lost = next(r for r in log if r["kind"] == "nodes lost")
    assert lost["nodes"] == [1] and set(lost["segments"]) == on1
    new = ctl.plan
    assert verify(new, profiles()) == []
    assert {new.node_of(s.gpu) for s in new.segments} == {0}
    for m, r in RATES.items():
        assert sum(s.segment.throughput for s in new.segments if s.model == m) >= r
    routed = {n for route in port.ing.models.values() for n in route.segments()}
    assert routed == {segment_name(new, s) for s in new.segments} and not routed & on1
    assert set(deps.handles) == routed  # node 1's deployments stopped, the new ones started
    assert port.ing.down_segments() == {}
    for n in on1:  # drained and unrouted before their deployments stopped
        seq = [e for e in ev.seq if e[0] in ("drain", "remove") and e[1] == n or e[0] == "stop" and n in e[1]]
        assert [e[0] for e in seq] == ["drain", "remove", "stop"], seq


def test_a_refused_node_loss_replan_starts_the_cool_down(tmp_path, monkeypatch):
    """The re-plan after a node loss is refused (here: the planner fails): the plan stays the
    surviving one and, as after any refused re-plan, the next try waits for the cool-down instead
    of coming at the next tick."""
    from test_control_live import _offer

    from parvagpu.core.errors import ParvaError

    ctl, _, _, port, log = _started(tmp_path)
    _offer(ctl, port, RATES, CFG.window_s + CFG.tick_s)  # every model judged from here on
    on1 = _node1_down(ctl, port)
    assert on1

    def no_room(*a, **k):
        raise ParvaError("no room on the remaining nodes")

    monkeypatch.setattr("parvagpu.control.live.replan_without_nodes", no_room)
    _offer(ctl, port, RATES, CFG.node_loss_s + CFG.tick_s)
    refused = [r for r in log if r["kind"] == "refused"]
    assert len(refused) == 1 and refused[0]["reason"] == "nodes [1] lost", log[-3:]
    at = refused[0]["time_s"]
    assert ctl.last_replan == at
    assert {ctl.plan.node_of(s.gpu) for s in ctl.plan.segments} == {0}  # the surviving segments serve
    _offer(ctl, port, RATES, POLICY.cooldown_s - CFG.tick_s - (ctl.clock.t - at))
    assert ctl.clock.t < at + POLICY.cooldown_s
    after = [r for r in log if r["time_s"] > at and r["kind"] in ("refused", "transition", "plan kept")]
    assert after == []  # held by the cool-down, though the surviving plan is short of the rates
    _offer(ctl, port, RATES, POLICY.dwell_s + CFG.tick_s)  # then the models short of their rates get it back
    again = [r for r in log if r["time_s"] > at and r["kind"] == "transition"]
    assert again and again[0]["time_s"] >= at + POLICY.cooldown_s
