"""The narrow interface the node agent needs from MIG hardware, and NVML's error classes.

The agent decides from what `list_instances` reports and acts only through these methods, so a
strict in-memory fake can stand in for the hardware in tests. Each method maps to one NVML
operation (the `nvml` backend documents the exact calls); `calls` counts them per method name,
which is what the apply benchmark reports.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from parvagpu.core.errors import SystemFailure

# Methods that change the GPUs' state. A re-apply that changes nothing calls none of them.
MUTATING = frozenset(
    {"create_gpu_instance", "create_compute_instance", "destroy_compute_instance", "destroy_gpu_instance"}
)

# The process name of an MPS server: it holds the instance while its control daemon runs, but
# it is not a workload, so it does not block a reconfiguration (the daemon is stopped first).
MPS_SERVER = "nvidia-cuda-mps-server"


class MigError(SystemFailure):
    """A backend call failed (exit 4). Subclasses mirror the NVML return codes the agent must handle."""

    nvml_code = "NVML_ERROR_UNKNOWN"


class InvalidArgument(MigError):
    nvml_code = "NVML_ERROR_INVALID_ARGUMENT"


class NotSupported(MigError):
    nvml_code = "NVML_ERROR_NOT_SUPPORTED"


class NoPermission(MigError):
    nvml_code = "NVML_ERROR_NO_PERMISSION"


class NotFound(MigError):
    nvml_code = "NVML_ERROR_NOT_FOUND"


class InUse(MigError):
    nvml_code = "NVML_ERROR_IN_USE"


class InsufficientResources(MigError):
    nvml_code = "NVML_ERROR_INSUFFICIENT_RESOURCES"


@dataclass(frozen=True)
class ComputeInstance:
    """A compute instance inside a GPU instance; `uuid` names its MIG device (`MIG-...`)."""

    ci_id: int
    slices: int  # compute slices
    uuid: str | None = None


@dataclass(frozen=True)
class GpuInstance:
    """A GPU instance as the hardware reports it. `start`/`width` are memory slices (NVML placement)."""

    gpu: int
    gi_id: int
    profile_id: int
    start: int
    width: int
    slices: int  # compute slices of the whole GI
    cis: tuple[ComputeInstance, ...] = ()

    @property
    def uuid(self) -> str | None:
        """The MIG UUID of the instance's (first) compute instance, for CUDA_VISIBLE_DEVICES."""
        return self.cis[0].uuid if self.cis else None

    @property
    def whole_ci(self) -> bool:
        """One compute instance spanning the whole GI: the only shape the agent deploys."""
        return len(self.cis) == 1 and self.cis[0].slices == self.slices


@dataclass(frozen=True)
class GpuProcess:
    pid: int
    name: str = ""

    @property
    def is_mps_server(self) -> bool:
        return self.name.rsplit("/", 1)[-1] == MPS_SERVER


@runtime_checkable
class MigBackend(Protocol):
    """What the agent needs from one node's GPUs. GPU indices are local to the node."""

    calls: Counter

    def gpu_count(self) -> int: ...

    def gpu_type(self, gpu: int) -> str:
        """The name of the GPU's type in `parvagpu.core.gpus.GPU_TYPES`."""
        ...

    def mig_mode(self, gpu: int) -> tuple[bool, bool]:
        """(current, pending) MIG mode; they differ until the GPU is reset."""
        ...

    def possible_placements(self, gpu: int, profile_id: int) -> tuple[tuple[int, int], ...]:
        """Every (start, width) the profile may take on this GPU, occupied or not."""
        ...

    def list_instances(self, gpu: int) -> tuple[GpuInstance, ...]: ...

    def create_gpu_instance(self, gpu: int, profile_id: int, start: int) -> int:
        """Create a GI at exactly `start`; returns its GI id."""
        ...

    def create_compute_instance(self, gpu: int, gi_id: int, slices: int | None = None) -> int:
        """Create a CI of `slices` compute slices (default: the whole GI); returns its CI id."""
        ...

    def mig_uuid(self, gpu: int, gi_id: int, ci_id: int) -> str: ...

    def running_processes(self, gpu: int, gi_id: int) -> tuple[GpuProcess, ...]: ...

    def destroy_compute_instance(self, gpu: int, gi_id: int, ci_id: int) -> None: ...

    def destroy_gpu_instance(self, gpu: int, gi_id: int) -> None: ...

    def close(self) -> None: ...


def mutating_calls(calls: Counter) -> int:
    return sum(n for name, n in calls.items() if name in MUTATING)
