"""Node agent: make one node's GPUs hold its part of a plan, touching only what differs.

Decide, then act. `read_node` asks the hardware what it holds; `diff` (pure) turns that and the
plan's wants into ordered steps; `Executor` runs the steps through a `MigBackend` and an
`MpsControl`, keeping an undo log so that any failure rolls the node back to the layout it found.
On success the node state file maps every segment to its MIG UUID and MPS directories, which the
serving layer reads. Instances are identified by (GPU, start slot, profile): one that both the
node and the plan have is kept, with its compute instance, daemon and workers.

One module per stage: `views` (what the plan wants, what the node holds), `steps` (decide: the
pure diff), `executor` (apply, with the undo log), `state` (the node's directories and state
file, with its own record types), `agent` (the entry points that put them together under the
node lock). This package re-exports the names callers need (entry points, records, errors), so they
import from `parvagpu.node`;
the submodules import each other directly, never this package.
"""

from __future__ import annotations

from parvagpu.node.agent import ApplyResult, NodeBusy, NodeStatus, apply_plan, node_lock, node_status, teardown
from parvagpu.node.executor import ApplyFailed, RollbackIncomplete
from parvagpu.node.state import (
    DEFAULT_STATE_ROOT,
    STATE_ENV,
    STATE_VERSION,
    NodeDirs,
    NodeState,
    StateEntry,
    default_state_root,
    read_state,
    state_from_dict,
)
from parvagpu.node.steps import Op, Refused, Step, diff, profile_names
from parvagpu.node.views import GpuView, NodeView, Want, node_wants, plan_nodes

__all__ = [
    "DEFAULT_STATE_ROOT", "STATE_ENV", "STATE_VERSION", "ApplyFailed", "ApplyResult", "GpuView", "NodeBusy",
    "NodeDirs", "NodeState", "NodeStatus", "NodeView", "Op", "Refused", "RollbackIncomplete", "StateEntry", "Step",
    "Want", "apply_plan", "default_state_root", "diff", "node_lock", "node_status", "node_wants", "plan_nodes",
    "profile_names", "read_state", "state_from_dict", "teardown",
]
