"""Apply: run decided steps against a `MigBackend` and an `MpsControl`, with an undo log.

Exists apart from the decision so that acting on the node, and undoing it, live in one place:
the `Executor` does each step, records how to undo it, and on any failure (or interrupt) replays
the undo log newest first, leaving the node in the layout it was found in. It decides nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar, Union

from parvagpu.core.errors import EXIT_INVALID_PLAN, ParvaError, SystemFailure
from parvagpu.hardware.mig.base import ComputeInstance, MigBackend
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
    """A step failed and the rollback restored the node; the message says which step. Exit 1."""

    exit_code = EXIT_INVALID_PLAN


class RollbackIncomplete(ApplyFailed):
    """A step failed and undoing it failed too: the node is in neither layout. Exit 4."""

    exit_code = SystemFailure.exit_code


Key = tuple[int, int]  # (GPU, start slot): how the agent names an instance


# The undo log: one record per kind of undo, each holding what it needs to reverse one step.
@dataclass(frozen=True)
class DestroyGi:
    """Undo a created GPU instance."""

    action: ClassVar[str] = "destroy_gi"
    key: Key


@dataclass(frozen=True)
class DestroyCi:
    """Undo a created compute instance (the newest of its GPU instance)."""

    action: ClassVar[str] = "destroy_ci"
    key: Key


@dataclass(frozen=True)
class StopMps:
    """Undo a started daemon."""

    action: ClassVar[str] = "stop_mps"
    key: Key


@dataclass(frozen=True)
class StartMps:
    """Undo a stopped daemon: start it again on its instance's device (`uuid` if the instance
    has none by then)."""

    action: ClassVar[str] = "start_mps"
    key: Key
    uuid: str | None


@dataclass(frozen=True)
class CreateCi:
    """Undo a destroyed compute instance."""

    action: ClassVar[str] = "create_ci"
    key: Key
    slices: int


@dataclass(frozen=True)
class CreateGi:
    """Undo a destroyed GPU instance: re-create it at the same slot."""

    action: ClassVar[str] = "create_gi"
    key: Key
    profile_id: int


Undo = Union[DestroyGi, DestroyCi, StopMps, StartMps, CreateCi, CreateGi]


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
        self.live: dict[Key, Live] = {
            (g.index, i.start): Live(i.profile_id, i.gi_id, list(i.cis)) for g in view.gpus for i in g.instances
        }
        self.undo: list[Undo] = []
        self.killed: list[int] = []
        self.done = 0

    def run(self, steps: list[Step], checkpoint: Callable[[int], None] | None = None) -> None:
        """Each step in order; `checkpoint(i)`, when given, runs before step i (steps[:i] done),
        and its failure is a failure of step i: rolled back the same way."""
        for i, step in enumerate(steps):
            try:
                if checkpoint is not None:
                    checkpoint(i)
                self._do(step)
            except BaseException as exc:
                errors = self.rollback()
                if not isinstance(exc, Exception):
                    raise
                raise self._failure(i, steps, exc, errors) from None
            self.done += 1

    def _failure(self, i: int, steps: list[Step], exc: Exception, errors: list[str]) -> ApplyFailed:
        msg = f"step {i + 1}/{len(steps)} failed ({steps[i].describe()}): {exc}"
        if errors:
            msg += f"; rollback incomplete ({'; '.join(errors)}): check with `parvagpu status`"
        else:
            msg += f"; rolled back {i} step(s), the node is as it was"
        if self.killed:
            msg += f" (terminated processes {', '.join(map(str, self.killed))} stay stopped)"
        return RollbackIncomplete(msg) if errors else ApplyFailed(msg)

    def _pipe(self, gpu: int, start: int) -> tuple[str, str]:
        return self.dirs.pipe_dir(gpu, start), self.dirs.log_dir(gpu, start)

    def _do(self, s: Step) -> None:
        key = (s.gpu, s.start)
        b = self.backend
        if s.op is Op.CREATE_GI:
            gi = b.create_gpu_instance(s.gpu, s.profile_id, s.start)
            self.live[key] = Live(s.profile_id, gi, [])
            self.undo.append(DestroyGi(key))
        elif s.op is Op.CREATE_CI:
            self._create_ci(key, s.slices, record=True)
        elif s.op is Op.START_MPS:
            self._start_mps(key, s)
        elif s.op is Op.STOP_MPS:
            inst = self.live.get(key)
            self.mps.stop(*self._pipe(*key))
            if inst is not None:  # a stale daemon (its instance gone) is not restarted
                self.undo.append(StartMps(key, inst.uuid))
        elif s.op is Op.KILL:
            if self.kill is None:
                raise ParvaError("this backend cannot terminate processes")
            self.kill(s.pids)
            self.killed += list(s.pids)
        elif s.op is Op.DESTROY_CI:
            inst = self.live[key]
            ci_id = s.ci_id if s.ci_id is not None else inst.cis[-1].ci_id  # a bridge's: made by this run
            b.destroy_compute_instance(s.gpu, inst.gi_id, ci_id)
            ci = next(c for c in inst.cis if c.ci_id == ci_id)
            inst.cis.remove(ci)
            self.undo.append(CreateCi(key, ci.slices))
        elif s.op is Op.DESTROY_GI:
            inst = self.live[key]
            b.destroy_gpu_instance(s.gpu, inst.gi_id)
            del self.live[key]
            self.undo.append(CreateGi(key, inst.profile_id))
        # Op.BIND changes only the state file.

    def _start_mps(self, key: Key, s: Step) -> None:
        uuid = self.live[key].uuid
        if uuid is None:
            raise ParvaError(f"gpu {s.gpu} {s.profile}@{s.start} has no MIG device to start MPS on")
        try:
            self.mps.start(*self._pipe(*key), uuid)
        except BaseException:
            if self.mps.is_running(self._pipe(*key)[0]):
                self.mps.stop(*self._pipe(*key))
            raise
        self.undo.append(StopMps(key))

    def _create_ci(self, key: Key, slices: int | None, record: bool = False) -> None:
        inst = self.live[key]
        ci = self.backend.create_compute_instance(key[0], inst.gi_id, slices)
        inst.cis.append(ComputeInstance(ci, slices or 0, None))
        if record:  # before asking for the UUID, so a failure there still undoes the CI
            self.undo.append(DestroyCi(key))
        uuid = self.backend.mig_uuid(key[0], inst.gi_id, ci)
        inst.cis[-1] = ComputeInstance(ci, slices or 0, uuid)

    def rollback(self) -> list[str]:
        """Undo every step done so far, newest first; best effort, returns what failed."""
        errors = []
        while self.undo:
            entry = self.undo.pop()
            try:
                self._undo(entry)
            except Exception as exc:  # keep undoing the rest
                errors.append(f"undo {entry.action} gpu {entry.key[0]} start {entry.key[1]}: {exc}")
        return errors

    def _undo(self, entry: Undo) -> None:
        key = entry.key
        if isinstance(entry, DestroyGi):
            self.backend.destroy_gpu_instance(key[0], self.live[key].gi_id)
            del self.live[key]
        elif isinstance(entry, DestroyCi):
            inst = self.live[key]
            self.backend.destroy_compute_instance(key[0], inst.gi_id, inst.cis[-1].ci_id)
            inst.cis.pop()
        elif isinstance(entry, StopMps):
            self.mps.stop(*self._pipe(*key))
        elif isinstance(entry, StartMps):
            inst = self.live.get(key)
            uuid = inst.uuid if inst is not None and inst.uuid else entry.uuid
            self.mps.start(*self._pipe(*key), uuid)
        elif isinstance(entry, CreateCi):
            self._create_ci(key, entry.slices)
        elif isinstance(entry, CreateGi):
            gi = self.backend.create_gpu_instance(key[0], entry.profile_id, key[1])
            self.live[key] = Live(entry.profile_id, gi, [])
