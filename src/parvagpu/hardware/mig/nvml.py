"""The real backend: MIG through NVML (`nvidia-ml-py`, module `pynvml`).

`pynvml` is imported when the backend is opened, so the package works without it. Exact
placement follows the HAMi-style sequence: profile info, possible placements, create with
placement (the placement struct passed by reference), GPU-instance info, compute-instance
profile info, create compute instance, then the MIG device's UUID. Every NVML call goes through
`_nvml`, which counts it in `nvml_calls` and turns NVML errors into the classes of `mig.base`.
"""

from __future__ import annotations

import ctypes
from collections import Counter
from pathlib import Path
from typing import Any

from parvagpu.core.gpus import GPU_TYPES
from parvagpu.core.errors import ParvaError, SystemFailure
from parvagpu.core.extras import install_hint
from parvagpu.hardware.mig.base import (
    ComputeInstance,
    GpuInstance,
    GpuProcess,
    InsufficientResources,
    InUse,
    InvalidArgument,
    MigError,
    NoPermission,
    NotFound,
    NotSupported,
)

# Compute slices of a whole-GI compute instance -> NVML_COMPUTE_INSTANCE_PROFILE_* enum.
_CI_PROFILE_BY_SLICES = {1: 0, 2: 1, 3: 2, 4: 3, 7: 4, 8: 5, 6: 6}
# Every compute-instance profile enum and its compute slices (REV1 and NVL variants included),
# so listing asks only for profiles that fit in the GPU instance.
_CI_SLICES_BY_ENUM = {0: 1, 1: 2, 2: 3, 3: 4, 4: 7, 5: 8, 6: 6, 7: 1, 8: 7}


def _name_to_type(name: str) -> str | None:
    """Fallback when the PCI id is not in the table: match the marketing name."""
    n = name.upper()
    if "A100" in n or "A800" in n:
        return "A100-80GB" if "80GB" in n else "A100-40GB"
    if "H200" in n:
        return "H200"
    if "H100" in n or "H800" in n:
        return "H100-80GB"
    if "A30" in n:
        return "A30"
    return None


class NvmlBackend:
    """One node's GPUs through NVML. Needs root for creating and destroying instances."""

    def __init__(self) -> None:
        try:
            import pynvml
        except ImportError:
            raise ParvaError(
                f"the nvml backend needs nvidia-ml-py: {install_hint('nvml')}"
            ) from None
        self._n: Any = pynvml
        self.calls: Counter = Counter()
        self.nvml_calls: Counter = Counter()
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as exc:
            raise SystemFailure(f"cannot initialise NVML ({exc}); is an NVIDIA driver installed and loaded?") from None
        self._handles: dict[int, Any] = {}
        self._gi_profiles: dict[int, dict[int, Any]] = {}

    # -- plumbing -------------------------------------------------------------------------------

    def _nvml(self, fn: str, *args: Any) -> Any:
        self.nvml_calls[fn] += 1
        n = self._n
        try:
            return getattr(n, fn)(*args)
        except n.NVMLError as exc:
            cls = {
                n.NVML_ERROR_INVALID_ARGUMENT: InvalidArgument,
                n.NVML_ERROR_NOT_SUPPORTED: NotSupported,
                n.NVML_ERROR_NO_PERMISSION: NoPermission,
                n.NVML_ERROR_NOT_FOUND: NotFound,
                n.NVML_ERROR_IN_USE: InUse,
                n.NVML_ERROR_INSUFFICIENT_RESOURCES: InsufficientResources,
            }.get(getattr(exc, "value", None), MigError)
            raise cls(f"{fn}: {exc}") from None

    def _dev(self, gpu: int) -> Any:
        if gpu not in self._handles:
            self._handles[gpu] = self._nvml("nvmlDeviceGetHandleByIndex", gpu)
        return self._handles[gpu]

    def _profiles(self, gpu: int) -> dict[int, Any]:
        """GPU-instance profile infos this GPU supports, keyed by profile id (cached)."""
        if gpu not in self._gi_profiles:
            out = {}
            for enum in range(self._n.NVML_GPU_INSTANCE_PROFILE_COUNT):
                try:
                    info = self._nvml("nvmlDeviceGetGpuInstanceProfileInfo", self._dev(gpu), enum)
                except (NotSupported, InvalidArgument, NotFound):
                    continue
                out[int(info.id)] = info
            self._gi_profiles[gpu] = out
        return self._gi_profiles[gpu]

    def _profile(self, gpu: int, profile_id: int) -> Any:
        info = self._profiles(gpu).get(profile_id)
        if info is None:
            raise NotSupported(f"gpu {gpu}: GPU instance profile {profile_id} is not supported")
        return info

    def _gi(self, gpu: int, gi_id: int) -> Any:
        return self._nvml("nvmlDeviceGetGpuInstanceById", self._dev(gpu), gi_id)

    def _mig_devices(
        self, gpu: int, gi_id: int | None = None, ci_id: int | None = None, uuids: bool = True,
    ) -> dict[tuple[int, int], tuple[Any, str | None]]:
        """(GI id, CI id) -> (MIG device handle, UUID) for the GPU's MIG devices, optionally only
        those of one GI (and CI); UUIDs are fetched only for the devices returned."""
        dev = self._dev(gpu)
        out: dict[tuple[int, int], tuple[Any, str | None]] = {}
        for k in range(self._nvml("nvmlDeviceGetMaxMigDeviceCount", dev)):
            try:
                mig = self._nvml("nvmlDeviceGetMigDeviceHandleByIndex", dev, k)
            except (NotFound, InvalidArgument):
                continue
            gi = int(self._nvml("nvmlDeviceGetGpuInstanceId", mig))
            if gi_id is not None and gi != gi_id:
                continue
            ci = int(self._nvml("nvmlDeviceGetComputeInstanceId", mig))
            if ci_id is not None and ci != ci_id:
                continue
            uuid = self._nvml("nvmlDeviceGetUUID", mig) if uuids else None
            out[(gi, ci)] = (mig, uuid.decode() if isinstance(uuid, bytes) else uuid)
            if ci_id is not None:
                break
        return out

    # -- MigBackend -----------------------------------------------------------------------------

    def gpu_count(self) -> int:
        self.calls["gpu_count"] += 1
        return int(self._nvml("nvmlDeviceGetCount"))

    def gpu_type(self, gpu: int) -> str:
        """Match the PCI device id against the GPU table, then the name."""
        self.calls["gpu_type"] += 1
        dev = self._dev(gpu)
        pci = f"0x{int(self._nvml('nvmlDeviceGetPciInfo', dev).pciDeviceId):08X}"
        for t in GPU_TYPES.values():
            if pci in t.pci_device_ids:
                return t.name
        name = self._nvml("nvmlDeviceGetName", dev)
        name = name.decode() if isinstance(name, bytes) else str(name)
        found = _name_to_type(name)
        if found is None:
            raise SystemFailure(f"gpu {gpu}: {name} (PCI {pci}) is not a known MIG GPU type ({', '.join(GPU_TYPES)})")
        return found

    def mig_mode(self, gpu: int) -> tuple[bool, bool]:
        self.calls["mig_mode"] += 1
        try:
            current, pending = self._nvml("nvmlDeviceGetMigMode", self._dev(gpu))
        except NotSupported:
            return False, False
        on = self._n.NVML_DEVICE_MIG_ENABLE
        return current == on, pending == on

    def possible_placements(self, gpu: int, profile_id: int) -> tuple[tuple[int, int], ...]:
        self.calls["possible_placements"] += 1
        return self._placements(gpu, profile_id)

    def _placements(self, gpu: int, profile_id: int) -> tuple[tuple[int, int], ...]:
        info = self._profile(gpu, profile_id)
        n = max(int(info.instanceCount), 8)
        arr = (self._n.c_nvmlGpuInstancePlacement_t * n)()
        count = ctypes.c_uint(n)
        self._nvml("nvmlDeviceGetGpuInstancePossiblePlacements", self._dev(gpu), profile_id, arr, ctypes.byref(count))
        return tuple((int(arr[i].start), int(arr[i].size)) for i in range(count.value))

    def list_instances(self, gpu: int) -> tuple[GpuInstance, ...]:
        self.calls["list_instances"] += 1
        n = self._n
        dev = self._dev(gpu)
        uuids = self._mig_devices(gpu)
        out = []
        for pid, info in self._profiles(gpu).items():
            cap = max(int(info.instanceCount), 1)
            arr = (n.c_nvmlGpuInstance_t * cap)()
            count = ctypes.c_uint(cap)
            self._nvml("nvmlDeviceGetGpuInstances", dev, pid, arr, ctypes.byref(count))
            for k in range(count.value):
                gi = arr[k]
                ginfo = self._nvml("nvmlGpuInstanceGetInfo", gi)
                cis = []
                for enum in range(n.NVML_COMPUTE_INSTANCE_PROFILE_COUNT):
                    if _CI_SLICES_BY_ENUM.get(enum, 0) > int(info.sliceCount):
                        continue
                    try:
                        cinfo = self._nvml(
                            "nvmlGpuInstanceGetComputeInstanceProfileInfo", gi, enum,
                            n.NVML_COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED,
                        )
                    except (NotSupported, InvalidArgument, NotFound):
                        continue
                    ccap = max(int(cinfo.instanceCount), 1)
                    carr = (n.c_nvmlComputeInstance_t * ccap)()
                    ccount = ctypes.c_uint(ccap)
                    self._nvml("nvmlGpuInstanceGetComputeInstances", gi, cinfo.id, carr, ctypes.byref(ccount))
                    for j in range(ccount.value):
                        ci_id = int(self._nvml("nvmlComputeInstanceGetInfo", carr[j]).id)
                        uuid = uuids.get((int(ginfo.id), ci_id), (None, None))[1]
                        cis.append(ComputeInstance(ci_id, int(cinfo.sliceCount), uuid))
                out.append(
                    GpuInstance(
                        gpu, int(ginfo.id), int(ginfo.profileId), int(ginfo.placement.start),
                        int(ginfo.placement.size), int(info.sliceCount), tuple(sorted(cis, key=lambda c: c.ci_id)),
                    )
                )
        return tuple(sorted(out, key=lambda g: g.start))

    def create_gpu_instance(self, gpu: int, profile_id: int, start: int) -> int:
        self.calls["create_gpu_instance"] += 1
        widths = dict(self._placements(gpu, profile_id))
        if start not in widths:
            raise InvalidArgument(f"gpu {gpu}: profile {profile_id} cannot start at {start} (possible: {sorted(widths)})")
        placement = self._n.c_nvmlGpuInstancePlacement_t(start, widths[start])
        gi = self._nvml(
            "nvmlDeviceCreateGpuInstanceWithPlacement", self._dev(gpu), profile_id, ctypes.byref(placement)
        )
        return int(self._nvml("nvmlGpuInstanceGetInfo", gi).id)

    def create_compute_instance(self, gpu: int, gi_id: int, slices: int | None = None) -> int:
        self.calls["create_compute_instance"] += 1
        gi = self._gi(gpu, gi_id)
        if slices is None:
            ginfo = self._nvml("nvmlGpuInstanceGetInfo", gi)
            slices = int(self._profile(gpu, int(ginfo.profileId)).sliceCount)
        enum = _CI_PROFILE_BY_SLICES.get(slices)
        if enum is None:
            raise NotSupported(f"gpu {gpu} GI {gi_id}: no {slices}-slice compute instance profile")
        cinfo = self._nvml(
            "nvmlGpuInstanceGetComputeInstanceProfileInfo", gi, enum, self._n.NVML_COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED
        )
        ci = self._nvml("nvmlGpuInstanceCreateComputeInstance", gi, cinfo.id)
        return int(self._nvml("nvmlComputeInstanceGetInfo", ci).id)

    def mig_uuid(self, gpu: int, gi_id: int, ci_id: int) -> str:
        self.calls["mig_uuid"] += 1
        found = self._mig_devices(gpu, gi_id, ci_id).get((gi_id, ci_id))
        if found is None:
            raise NotFound(f"gpu {gpu}: no MIG device for GI {gi_id} CI {ci_id}")
        return found[1]

    def running_processes(self, gpu: int, gi_id: int) -> tuple[GpuProcess, ...]:
        self.calls["running_processes"] += 1
        out: dict[int, str] = {}
        for mig, _uuid in self._mig_devices(gpu, gi_id, uuids=False).values():
            for p in self._nvml("nvmlDeviceGetComputeRunningProcesses", mig):
                out[int(p.pid)] = self._process_name(int(p.pid))
        return tuple(GpuProcess(pid, name) for pid, name in sorted(out.items()))

    def _process_name(self, pid: int) -> str:
        """NVML's name for the process; /proc as a fallback; empty when neither knows it."""
        try:
            name = self._nvml("nvmlSystemGetProcessName", pid)
            return name.decode() if isinstance(name, bytes) else str(name)
        except MigError:
            pass
        try:
            return Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            return ""

    def destroy_compute_instance(self, gpu: int, gi_id: int, ci_id: int) -> None:
        self.calls["destroy_compute_instance"] += 1
        gi = self._gi(gpu, gi_id)
        ci = self._nvml("nvmlGpuInstanceGetComputeInstanceById", gi, ci_id)
        self._nvml("nvmlComputeInstanceDestroy", ci)

    def destroy_gpu_instance(self, gpu: int, gi_id: int) -> None:
        self.calls["destroy_gpu_instance"] += 1
        self._nvml("nvmlGpuInstanceDestroy", self._gi(gpu, gi_id))

    def close(self) -> None:
        try:
            self._n.nvmlShutdown()
        except self._n.NVMLError:
            pass

