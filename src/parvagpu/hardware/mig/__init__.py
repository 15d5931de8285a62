"""MIG hardware behind one small interface: `nvml` for real GPUs, `fake` for tests and dry runs."""

from __future__ import annotations

from parvagpu.hardware.mig.base import (
    MPS_SERVER,
    MUTATING,
    ComputeInstance,
    GpuInstance,
    GpuProcess,
    InsufficientResources,
    InUse,
    InvalidArgument,
    MigBackend,
    MigError,
    NoPermission,
    NotFound,
    NotSupported,
    mutating_calls,
)
from parvagpu.hardware.mig.fake import FakeBackend, InjectedFailure

def open_nvml() -> MigBackend:
    """The real backend. One line when it cannot open: `ParvaError` (exit 2) without nvidia-ml-py,
    `SystemFailure` (exit 4) when NVML or the driver refuses."""
    from parvagpu.hardware.mig.nvml import NvmlBackend

    return NvmlBackend()


__all__ = [
    "MPS_SERVER", "MUTATING", "ComputeInstance", "FakeBackend", "GpuInstance", "GpuProcess",
    "InjectedFailure", "InsufficientResources", "InUse", "InvalidArgument", "MigBackend", "MigError",
    "NoPermission", "NotFound", "NotSupported", "mutating_calls", "open_nvml",
]
