"""The controller's node side: the node agent (`parvagpu.node`) applied to every node of a plan,
one group of a transition at a time. With the fake backend each node is kept in a JSON file under
the state directory, so `parvagpu status --backend fake --fake-state DIR/fake-node<k>.json` shows
what the controller left."""

from __future__ import annotations

import json
from pathlib import Path

from parvagpu.core.model import DeploymentMap
from parvagpu.fileio.writer import atomic_write
from parvagpu.hardware.mig import FakeBackend
from parvagpu.hardware.mig.fake import FAKE_STATE_VERSION
from parvagpu.hardware.mps import FakeMps
from parvagpu.node import NodeDirs, apply_plan, plan_nodes, teardown


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
