"""The controller's node side: the node agent (`parvagpu.node`) applied to every node of a plan,
one group of a transition at a time. With the fake backend each node is kept in a JSON file under
the state directory, so `parvagpu status --backend fake --fake-state DIR/fake-node<k>.json` shows
what the controller left. With a real backend (`LocalNodes`: NVML) the controller drives this
machine's GPUs as one plan node, and each new segment's replicas are pinned to the MIG instance and
MPS daemon the node state file names."""

from __future__ import annotations

import json
from pathlib import Path

from parvagpu.core.errors import ParvaError
from parvagpu.core.model import DeploymentMap
from parvagpu.fileio.writer import atomic_write
from parvagpu.hardware.mig import FakeBackend
from parvagpu.hardware.mig.fake import FAKE_STATE_VERSION
from parvagpu.hardware.mps import FakeMps
from parvagpu.node import NodeDirs, apply_plan, plan_nodes, teardown
from parvagpu.node.state import read_state


class FakeNodes:
    """Every node of the plan on the strict fake MIG backend; node k's fake hardware in
    `root/fake-node<k>.json`, its node state in `root/node<k>/`."""

    def __init__(self, root: Path, gpus_per_node: int = 8) -> None:
        self.root, self.gpus_per_node = Path(root), gpus_per_node
        self.held: dict[int, tuple[FakeBackend, FakeMps]] = {}
        self.applied: list[tuple[int, int]] = []  # (node, steps) per apply, for tests and the log

    def _node(self, node: int, type_name: str) -> tuple[FakeBackend, FakeMps]:
        if node not in self.held:
            fake = FakeBackend(type_name, self.gpus_per_node)
            self.held[node] = (fake, FakeMps(fake))
        return self.held[node]

    def apply(self, plan: DeploymentMap) -> None:
        """Make every node hold its part of `plan` (a node with nothing left is torn down)."""
        wanted = plan_nodes(plan)
        for node in sorted(set(wanted) | set(self.held)):
            fake, mps = self._node(node, plan.node_gpu_type(node) if node in wanted else plan.gpu_type)
            dirs = NodeDirs(self.root, node)
            if node in wanted:
                res = apply_plan(plan, node, fake, mps, dirs, kill=fake.kill_processes)
            else:
                res = teardown(node, fake, mps, dirs, kill=fake.kill_processes)
            self.applied.append((node, len(res.steps)))
            self._save(node)

    def _save(self, node: int) -> None:
        fake, mps = self.held[node]
        doc = {"version": FAKE_STATE_VERSION, "mig": fake.to_dict(), "mps": mps.to_dict()}
        atomic_write(self.root / f"fake-node{node}.json", json.dumps(doc, indent=1) + "\n")

    def segments(self, node: int) -> int:
        """Instances node k's fake hardware holds."""
        fake, _ = self.held[node]
        return sum(len(fake.list_instances(g)) for g in range(fake.gpu_count()))


class LocalNodes:
    """This machine's GPUs as plan node `node`, through a MIG backend behind its interface (NVML
    on a GPU machine; the strict fake in tests) and its MPS control; its node state in
    `root/node<k>/`. A plan with a segment on any other node is refused before any effect: one
    machine's controller drives one node's hardware."""

    def __init__(self, backend, mps, kill, root: Path, node: int = 0) -> None:
        self.backend, self.mps, self.kill = backend, mps, kill
        self.node, self.dirs = node, NodeDirs(Path(root), node)
        self.applied: list[tuple[int, int]] = []

    def check(self, plan: DeploymentMap) -> None:
        others = sorted(set(plan_nodes(plan)) - {self.node})
        if others:
            raise ParvaError(f"the plan has segments on node(s) {', '.join(map(str, others))}: with a real "
                             f"backend the controller drives this machine only (node {self.node})")

    def apply(self, plan: DeploymentMap) -> None:
        self.check(plan)
        if self.node in plan_nodes(plan):
            res = apply_plan(plan, self.node, self.backend, self.mps, self.dirs, kill=self.kill)
        else:
            res = teardown(self.node, self.backend, self.mps, self.dirs, kill=self.kill)
        self.applied.append((self.node, len(res.steps)))

    def pin(self, seg):
        """Where segment `seg` (a `serving.policy.SegmentSpec`) runs: its MIG instance and MPS
        daemon from the node state the last apply wrote (`serving.pinning.Pin`)."""
        from parvagpu.serving.pinning import pins
        from parvagpu.serving.policy import ModelSpec

        state = read_state(self.dirs.state_file)
        if state is None:
            raise ParvaError(f"segment {seg.name}: no node state at {self.dirs.state_file}; apply first")
        return pins({seg.model: ModelSpec(seg.model, 0.0, 0.0, (seg,))}, [state])[seg.name]
