"""Apply: run decided steps against a `MigBackend` and an `MpsControl`, with an undo log.

Exists apart from the decision so that acting on the node, and undoing it, live in one place:
the `Executor` does each step, records how to undo it, and on any failure (or interrupt) replays
the undo log newest first, leaving the node in the layout it was found in. It decides nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from parvagpu.hardware.mig.base import ComputeInstance, MigBackend
from parvagpu.core.errors import ParvaError
from parvagpu.hardware.mps import MpsControl
from parvagpu.node.state import NodeDirs
from parvagpu.node.steps import Op, Step
from parvagpu.node.views import NodeView


@dataclass
class Live:
    """An instance as the executor knows it while it runs: profile, GPU instance id, its compute
    instances (the first one's MIG UUID is the instance's)."""

    profile_id: int
    gi_id: int
    cis: list[ComputeInstance]

    @property
    def uuid(self) -> str | None:
        return self.cis[0].uuid if self.cis else None


class ApplyFailed(ParvaError):
    """A step failed; the message says which, and what the rollback did."""


class Executor:
    """Runs steps against the node and undoes them in reverse order if one fails."""

    def __init__(
        self, backend: MigBackend, mps: MpsControl, dirs: NodeDirs, view: NodeView,
        kill: Callable[[tuple[int, ...]], None] | None = None,
    ) -> None:
        self.backend = backend
        self.mps = mps
        self.dirs = dirs
        self.kill = kill
        self.live: dict[tuple[int, int], Live] = {
            (g.index, i.start): Live(i.profile_id, i.gi_id, list(i.cis)) for g in view.gpus for i in g.instances
        }
        self.undo: list[tuple] = []
        self.killed: list[int] = []
        self.done = 0

    def run(self, steps: list[Step]) -> None:
        for i, step in enumerate(steps):
            try:
                self._do(step)
            except BaseException as exc:
                errors = self.rollback()
                if not isinstance(exc, Exception):
                    raise
                msg = f"step {i + 1}/{len(steps)} failed ({step.describe()}): {exc}"
                if errors:
                    msg += f"; rollback incomplete ({'; '.join(errors)}): check with `parvagpu status`"
                else:
                    msg += f"; rolled back {i} step(s), the node is as it was"
                if self.killed:
                    msg += f" (terminated processes {', '.join(map(str, self.killed))} stay stopped)"
                raise ApplyFailed(msg) from None
            self.done += 1

    def _pipe(self, gpu: int, start: int) -> tuple[str, str]:
        return self.dirs.pipe_dir(gpu, start), self.dirs.log_dir(gpu, start)

    def _do(self, s: Step) -> None:
        key = (s.gpu, s.start)
        b = self.backend
        if s.op is Op.CREATE_GI:
            gi = b.create_gpu_instance(s.gpu, s.profile_id, s.start)
            self.live[key] = Live(s.profile_id, gi, [])
            self.undo.append(("destroy_gi", key))
        elif s.op is Op.CREATE_CI:
            self._create_ci(key, s.slices, record=True)
        elif s.op is Op.START_MPS:
            uuid = self.live[key].uuid
            if uuid is None:
                raise ParvaError(f"gpu {s.gpu} {s.profile}@{s.start} has no MIG device to start MPS on")
            try:
                self.mps.start(*self._pipe(*key), uuid)
            except BaseException:
                if self.mps.is_running(self._pipe(*key)[0]):
                    self.mps.stop(*self._pipe(*key))
                raise
            self.undo.append(("stop_mps", key))
        elif s.op is Op.STOP_MPS:
            inst = self.live.get(key)
            self.mps.stop(*self._pipe(*key))
            if inst is not None:  # a stale daemon (its instance gone) is not restarted
                self.undo.append(("start_mps", key, inst.uuid))
        elif s.op is Op.KILL:
            if self.kill is None:
                raise ParvaError("this backend cannot terminate processes")
            self.kill(s.pids)
            self.killed += list(s.pids)
        elif s.op is Op.DESTROY_CI:
            inst = self.live[key]
            b.destroy_compute_instance(s.gpu, inst.gi_id, s.ci_id)
            ci = next(c for c in inst.cis if c.ci_id == s.ci_id)
            inst.cis.remove(ci)
            self.undo.append(("create_ci", key, ci.slices))
        elif s.op is Op.DESTROY_GI:
            inst = self.live[key]
            b.destroy_gpu_instance(s.gpu, inst.gi_id)
            del self.live[key]
            self.undo.append(("create_gi", key, inst.profile_id))
        # Op.BIND changes only the state file.

    def _create_ci(self, key: tuple[int, int], slices: int | None, record: bool = False) -> None:
        inst = self.live[key]
        ci = self.backend.create_compute_instance(key[0], inst.gi_id, slices)
        inst.cis.append(ComputeInstance(ci, slices or 0, None))
        if record:  # before asking for the UUID, so a failure there still undoes the CI
            self.undo.append(("destroy_ci", key))
        uuid = self.backend.mig_uuid(key[0], inst.gi_id, ci)
        inst.cis[-1] = ComputeInstance(ci, slices or 0, uuid)

    def rollback(self) -> list[str]:
        """Undo every step done so far, newest first; best effort, returns what failed."""
        errors = []
        while self.undo:
            entry = self.undo.pop()
            op, key = entry[0], entry[1]
            try:
                if op == "destroy_gi":
                    self.backend.destroy_gpu_instance(key[0], self.live[key].gi_id)
                    del self.live[key]
                elif op == "destroy_ci":
                    inst = self.live[key]
                    ci = inst.cis[-1]
                    self.backend.destroy_compute_instance(key[0], inst.gi_id, ci.ci_id)
                    inst.cis.pop()
                elif op == "stop_mps":
                    self.mps.stop(*self._pipe(*key))
                elif op == "start_mps":
                    inst = self.live.get(key)
                    uuid = inst.uuid if inst is not None and inst.uuid else entry[2]
                    self.mps.start(*self._pipe(*key), uuid)
                elif op == "create_ci":
                    self._create_ci(key, entry[2])
                elif op == "create_gi":
                    gi = self.backend.create_gpu_instance(key[0], entry[2], key[1])
                    self.live[key] = Live(entry[2], gi, [])
            except Exception as exc:  # keep undoing the rest
                errors.append(f"undo {op} gpu {key[0]} start {key[1]}: {exc}")
        return errors
