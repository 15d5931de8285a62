"""Builders shared by the node-agent, fake-backend, export and apply-CLI tests."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from parvagpu.node import NodeDirs, apply_plan, node_wants
from parvagpu.cli.common import load_inputs
from parvagpu.contract.plan_json import plan_to_json
from parvagpu.core.gpus import gpu_type
from parvagpu.hardware.mig import FakeBackend
from parvagpu.hardware.mig.base import MPS_SERVER
from parvagpu.core.model import DeploymentMap
from parvagpu.hardware.mps import FakeMps
from parvagpu.planning.request import PlanRequest
from parvagpu.planning.strategies import plan as make_plan


@lru_cache(maxsize=None)
def scenario_plan(k: int, max_procs: int = 3) -> DeploymentMap:
    """The planner's plan for scenario k of the embedded example (what `parvagpu plan -s k` writes)."""
    profiles, services = load_inputs(None, None, k, None, False)
    return make_plan(PlanRequest(services, profiles, gpu_type("A100-80GB"), max_procs, 8), "parva")


def write_plan(plan: DeploymentMap, path: Path) -> Path:
    path.write_text(plan_to_json(plan))
    return path


def fresh_node(plan: DeploymentMap, gpus: int = 8) -> tuple[FakeBackend, FakeMps]:
    fake = FakeBackend(plan.gpu_type, gpus)
    return fake, FakeMps(fake)


def clone(fake: FakeBackend, mps: FakeMps) -> tuple[FakeBackend, FakeMps]:
    """An independent copy of a fake node (through its JSON form, as the CLI stores it)."""
    f2 = FakeBackend.from_dict(json.loads(json.dumps(fake.to_dict())))
    return f2, FakeMps.from_dict(json.loads(json.dumps(mps.to_dict())), f2)


def applied(plan: DeploymentMap, node: int, root: Path, gpus: int = 8):
    fake, mps = fresh_node(plan, gpus)
    dirs = NodeDirs(root, node)
    apply_plan(plan, node, fake, mps, dirs)
    return fake, mps, dirs


def layout(fake: FakeBackend) -> set[tuple[int, int, int]]:
    """(gpu, start, profile id) of every GPU instance, read through the backend interface."""
    out = set()
    for g in range(len(fake.to_dict()["gpus"])):
        for inst in fake.list_instances(g):
            out.add((g, inst.start, inst.profile_id))
    return out


def wanted(plan: DeploymentMap, node: int) -> set[tuple[int, int, int]]:
    return {(w.gpu, w.start, w.profile.profile_id) for w in node_wants(plan, node)}


def node_picture(fake: FakeBackend, mps: FakeMps) -> tuple:
    """Everything a rollback must restore, without ids, UUIDs and MPS server pids."""
    d = fake.to_dict()
    gpus = []
    for g in d["gpus"]:
        insts = sorted(
            (
                i["profile_id"], i["start"], tuple(sorted(c["slices"] for c in i["cis"])),
                tuple(sorted(p["pid"] for p in i["processes"] if p["name"] != MPS_SERVER)),
                sum(p["name"] == MPS_SERVER for p in i["processes"]),
            )
            for i in g["instances"]
        )
        gpus.append((g["mig"], tuple(insts)))
    return tuple(gpus), tuple(sorted(mps.daemons))
