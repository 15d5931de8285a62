"""A strict in-memory GPU node that rejects what real hardware rejects.

go-nvml's mock accepts any placement; this fake does not. It checks every call against the GPU
table in `parvagpu.core.gpus` (legal starts, memory-slice overlap, compute slices), refuses work while
MIG mode is off, refuses to destroy a GPU instance that still has compute instances or a compute
instance that still has processes, and raises the NVML error classes of `mig.base`. A failure can
be injected at any call, so tests can check that the agent rolls back from every step. Its state
round-trips through JSON so a CLI `--fake-state FILE` behaves like one node across invocations.
"""

from __future__ import annotations

import uuid as uuidlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from parvagpu.core.gpus import GpuType, gpu_type
from parvagpu.core.errors import ParvaError
from parvagpu.hardware.mig.base import (
    ComputeInstance,
    GpuInstance,
    GpuProcess,
    InsufficientResources,
    InUse,
    InvalidArgument,
    MigError,
    NotFound,
    NotSupported,
)

MAX_FAKE_GPUS = 1024
FAKE_STATE_VERSION = 1  # of the `--fake-state` file that holds a fake node between commands


class InjectedFailure(MigError):
    """The failure a test asked for (reported as NVML_ERROR_UNKNOWN, as a driver hiccup would be)."""


@dataclass
class _Ci:
    ci_id: int
    slices: int
    uuid: str


@dataclass
class _Gi:
    gi_id: int
    profile_id: int
    start: int
    cis: dict[int, _Ci] = field(default_factory=dict)
    procs: dict[int, str] = field(default_factory=dict)  # pid -> process name


@dataclass
class _Gpu:
    type_name: str
    mig: bool = True
    mig_pending: bool = True
    gis: dict[int, _Gi] = field(default_factory=dict)


class FakeBackend:
    """`count` GPUs of one type, MIG mode on by default."""

    def __init__(self, gpu_type_name: str = "A100-80GB", count: int = 8, mig: bool = True) -> None:
        if not 1 <= count <= MAX_FAKE_GPUS:
            raise ParvaError(f"a fake node has 1..{MAX_FAKE_GPUS} GPUs, got {count}")
        self._type = gpu_type(gpu_type_name)
        self._gpus = [_Gpu(self._type.name, mig, mig) for _ in range(count)]
        self._serial = 0  # makes every created MIG UUID unique, as on hardware
        self._next_pid = 40000
        self.calls: Counter = Counter()
        self._fail: tuple[str | None, int, Exception] | None = None

    # -- test controls (not part of MigBackend) -------------------------------------------------

    def fail_at(self, index: int, method: str | None = None, error: Exception | None = None) -> None:
        """Make the `index`-th call from now (0-based; counting only `method` if given) raise."""
        self._fail = (method, index, error or InjectedFailure(f"injected failure (call {index})"))

    def set_mig_mode(self, gpu: int, enabled: bool, pending: bool | None = None) -> None:
        g = self._gpu(gpu)
        if g.gis and not enabled:
            raise InUse(f"gpu {gpu}: cannot disable MIG mode while GPU instances exist")
        g.mig = enabled
        g.mig_pending = enabled if pending is None else pending

    def add_process(self, gpu: int, gi_id: int, name: str = "python3", pid: int | None = None) -> int:
        """Pretend a process runs on the instance (it must have a compute instance)."""
        gi = self._gi(gpu, gi_id)
        if not gi.cis:
            raise InvalidArgument(f"gpu {gpu} GI {gi_id} has no compute instance to run on")
        if pid is None:
            self._next_pid += 1
            pid = self._next_pid
        gi.procs[pid] = name
        return pid

    def remove_process(self, pid: int) -> None:
        for g in self._gpus:
            for gi in g.gis.values():
                gi.procs.pop(pid, None)

    def kill_processes(self, pids: tuple[int, ...]) -> None:
        """The fake's stand-in for terminating processes (`apply --force`)."""
        for pid in pids:
            self.remove_process(pid)

    def find_uuid(self, mig_uuid: str) -> tuple[int, int] | None:
        for i, g in enumerate(self._gpus):
            for gi in g.gis.values():
                if any(ci.uuid == mig_uuid for ci in gi.cis.values()):
                    return i, gi.gi_id
        return None

    # -- MigBackend -----------------------------------------------------------------------------

    def _call(self, name: str) -> None:
        self.calls[name] += 1
        if self._fail is not None:
            method, left, error = self._fail
            if method is None or method == name:
                if left == 0:
                    self._fail = None
                    raise error
                self._fail = (method, left - 1, error)

    def _gpu(self, gpu: int) -> _Gpu:
        if isinstance(gpu, bool) or not isinstance(gpu, int) or not 0 <= gpu < len(self._gpus):
            raise InvalidArgument(f"gpu index {gpu!r} out of range (the node has {len(self._gpus)} GPU{'' if len(self._gpus) == 1 else 's'})")
        return self._gpus[gpu]

    def _mig_gpu(self, gpu: int) -> _Gpu:
        g = self._gpu(gpu)
        if not g.mig:
            raise NotSupported(f"gpu {gpu}: MIG mode is disabled")
        return g

    def _gi(self, gpu: int, gi_id: int) -> _Gi:
        g = self._mig_gpu(gpu)
        gi = g.gis.get(gi_id)
        if gi is None:
            raise NotFound(f"gpu {gpu}: no GPU instance {gi_id}")
        return gi

    def _profile(self, profile_id: int):
        p = self._type.profile_by_id(profile_id)  # planning and extra (+me, double-memory) profiles
        if p is not None:
            return p
        raise NotSupported(f"GPU instance profile {profile_id!r} is not supported on {self._type.name}")

    @property
    def type(self) -> GpuType:
        return self._type

    def gpu_count(self) -> int:
        self._call("gpu_count")
        return len(self._gpus)

    def gpu_type(self, gpu: int) -> str:
        self._call("gpu_type")
        return self._gpu(gpu).type_name

    def mig_mode(self, gpu: int) -> tuple[bool, bool]:
        self._call("mig_mode")
        g = self._gpu(gpu)
        return g.mig, g.mig_pending

    def possible_placements(self, gpu: int, profile_id: int) -> tuple[tuple[int, int], ...]:
        self._call("possible_placements")
        self._gpu(gpu)
        p = self._profile(profile_id)
        return tuple((s, p.memory_slices) for s in p.starts)

    def list_instances(self, gpu: int) -> tuple[GpuInstance, ...]:
        self._call("list_instances")
        g = self._mig_gpu(gpu)
        out = []
        for gi in sorted(g.gis.values(), key=lambda gi: gi.start):
            p = self._profile(gi.profile_id)
            cis = tuple(ComputeInstance(c.ci_id, c.slices, c.uuid) for c in sorted(gi.cis.values(), key=lambda c: c.ci_id))
            out.append(GpuInstance(gpu, gi.gi_id, gi.profile_id, gi.start, p.memory_slices, p.size, cis))
        return tuple(out)

    def create_gpu_instance(self, gpu: int, profile_id: int, start: int) -> int:
        self._call("create_gpu_instance")
        g = self._mig_gpu(gpu)
        p = self._profile(profile_id)
        if isinstance(start, bool) or not isinstance(start, int) or start not in p.starts:
            raise InvalidArgument(f"gpu {gpu}: {p.name} cannot start at {start!r} (legal starts {list(p.starts)})")
        want = self._type.profile_mask(p, start)
        used = 0
        compute = 0
        for gi in g.gis.values():
            q = self._profile(gi.profile_id)
            used |= self._type.profile_mask(q, gi.start)
            compute += q.size
        if p.max_count and sum(gi.profile_id == profile_id for gi in g.gis.values()) >= p.max_count:
            raise InsufficientResources(f"gpu {gpu}: at most {p.max_count} {p.name} per GPU")
        if used & want:
            raise InsufficientResources(f"gpu {gpu}: {p.name}@{start} overlaps an existing GPU instance")
        if compute + p.size > self._type.compute_slices:
            raise InsufficientResources(f"gpu {gpu}: not enough compute slices left for {p.name}")
        gi_id = next(i for i in range(1, 64) if i not in g.gis)
        g.gis[gi_id] = _Gi(gi_id, profile_id, start)
        return gi_id

    def create_compute_instance(self, gpu: int, gi_id: int, slices: int | None = None) -> int:
        self._call("create_compute_instance")
        gi = self._gi(gpu, gi_id)
        size = self._profile(gi.profile_id).size
        slices = size if slices is None else slices
        if isinstance(slices, bool) or not isinstance(slices, int) or not 1 <= slices <= size:
            raise NotSupported(f"gpu {gpu} GI {gi_id}: no {slices!r}-slice compute instance profile")
        if sum(c.slices for c in gi.cis.values()) + slices > size:
            raise InsufficientResources(f"gpu {gpu} GI {gi_id}: not enough compute slices left")
        ci_id = next(i for i in range(0, 16) if i not in gi.cis)
        self._serial += 1
        mig = "MIG-" + str(uuidlib.uuid5(uuidlib.NAMESPACE_OID, f"parvagpu-fake/{gpu}/{gi_id}/{ci_id}/{self._serial}"))
        gi.cis[ci_id] = _Ci(ci_id, slices, mig)
        return ci_id

    def mig_uuid(self, gpu: int, gi_id: int, ci_id: int) -> str:
        self._call("mig_uuid")
        ci = self._gi(gpu, gi_id).cis.get(ci_id)
        if ci is None:
            raise NotFound(f"gpu {gpu} GI {gi_id}: no compute instance {ci_id}")
        return ci.uuid

    def running_processes(self, gpu: int, gi_id: int) -> tuple[GpuProcess, ...]:
        self._call("running_processes")
        gi = self._gi(gpu, gi_id)
        return tuple(GpuProcess(pid, name) for pid, name in sorted(gi.procs.items()))

    def destroy_compute_instance(self, gpu: int, gi_id: int, ci_id: int) -> None:
        self._call("destroy_compute_instance")
        gi = self._gi(gpu, gi_id)
        if ci_id not in gi.cis:
            raise NotFound(f"gpu {gpu} GI {gi_id}: no compute instance {ci_id}")
        if gi.procs:
            raise InUse(f"gpu {gpu} GI {gi_id}: processes {sorted(gi.procs)} still run on it")
        del gi.cis[ci_id]

    def destroy_gpu_instance(self, gpu: int, gi_id: int) -> None:
        self._call("destroy_gpu_instance")
        gi = self._gi(gpu, gi_id)
        if gi.cis:
            raise InUse(f"gpu {gpu} GI {gi_id}: compute instances {sorted(gi.cis)} still exist")
        if gi.procs:
            raise InUse(f"gpu {gpu} GI {gi_id}: processes {sorted(gi.procs)} still run on it")
        del self._gpus[gpu].gis[gi_id]

    def close(self) -> None:
        pass

    # -- persistence ----------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "gpu_type": self._type.name,
            "serial": self._serial,
            "next_pid": self._next_pid,
            "gpus": [
                {
                    "mig": g.mig,
                    "mig_pending": g.mig_pending,
                    "instances": [
                        {
                            "gi_id": gi.gi_id,
                            "profile_id": gi.profile_id,
                            "start": gi.start,
                            "cis": [{"ci_id": c.ci_id, "slices": c.slices, "uuid": c.uuid} for c in gi.cis.values()],
                            "processes": [{"pid": pid, "name": name} for pid, name in gi.procs.items()],
                        }
                        for gi in g.gis.values()
                    ],
                }
                for g in self._gpus
            ],
        }

    @classmethod
    def from_dict(cls, data: Any, source: str = "fake state") -> "FakeBackend":
        """Rebuild a node and re-check every instance, so a hand-edited file cannot smuggle in
        a layout the hardware would refuse."""
        try:
            gpus = data["gpus"]
            fake = cls(_json_str(data["gpu_type"]), len(gpus))
            fake._serial = _json_int(data.get("serial", 0))
            fake._next_pid = _json_int(data.get("next_pid", 40000))
            for i, g in enumerate(gpus):
                fake._gpus[i].mig = _json_bool(g["mig"])
                fake._gpus[i].mig_pending = _json_bool(g.get("mig_pending", g["mig"]))
                for inst in sorted(g["instances"], key=lambda x: -fake._profile(_json_int(x["profile_id"])).size):
                    fake._check_free(i, _json_int(inst["profile_id"]), _json_int(inst["start"]))
                    gi = _Gi(_json_int(inst["gi_id"]), _json_int(inst["profile_id"]), _json_int(inst["start"]))
                    if gi.gi_id in fake._gpus[i].gis:
                        raise ValueError(f"gpu {i}: duplicate GI id {gi.gi_id}")
                    for c in inst["cis"]:
                        gi.cis[_json_int(c["ci_id"])] = _Ci(_json_int(c["ci_id"]), _json_int(c["slices"]), _json_str(c["uuid"]))
                    for p in inst.get("processes", []):
                        gi.procs[_json_int(p["pid"])] = str(p.get("name", ""))
                    fake._gpus[i].gis[gi.gi_id] = gi
        except ParvaError as exc:  # the hardware's rules, or the fake's size limit
            raise ParvaError(f"{source}: {exc}") from None
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ParvaError(f"{source}: not a fake node state ({type(exc).__name__}: {exc})") from None
        fake.calls.clear()
        return fake

    def _check_free(self, gpu: int, profile_id: int, start: int) -> None:
        g = self._gpu(gpu)
        if not g.mig:
            raise NotSupported(f"gpu {gpu}: MIG mode is disabled but instances are listed")
        p = self._profile(profile_id)
        if start not in p.starts:
            raise InvalidArgument(f"gpu {gpu}: {p.name} cannot start at {start}")
        used = 0
        for gi in g.gis.values():
            used |= self._type.profile_mask(self._profile(gi.profile_id), gi.start)
        if used & self._type.profile_mask(p, start):
            raise InsufficientResources(f"gpu {gpu}: {p.name}@{start} overlaps another instance")


def _json_int(v: Any) -> int:
    """A JSON integer as written by `to_dict`; anything else makes the file not a fake state."""
    if isinstance(v, int) and not isinstance(v, bool):
        return v
    raise TypeError(f"expected an integer, got {v!r}")


def _json_bool(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    raise TypeError(f"expected true or false, got {v!r}")


def _json_str(v: Any) -> str:
    if isinstance(v, str):
        return v
    raise TypeError(f"expected a string, got {v!r}")
