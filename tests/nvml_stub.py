"""A pynvml-shaped stand-in that drives a FakeBackend, so the real `nvml` backend's code
(ctypes arrays, placements passed by reference, handle lookups, error mapping) runs in tests
without a GPU. It uses nvidia-ml-py's own ctypes structures and error classes; it accepts only
what the C API accepts (e.g. a placement must come by reference, counts through pointers)."""

from __future__ import annotations

import ctypes
from types import SimpleNamespace

import pynvml as real

from parvagpu.hardware.mig import FakeBackend
from parvagpu.hardware.mig import base as mb

_GI_ENUM_SIZE = {0: 1, 1: 2, 2: 3, 3: 4, 4: 7}  # NVML_GPU_INSTANCE_PROFILE_{1,2,3,4,7}_SLICE
_CI_ENUM_SLICES = {0: 1, 1: 2, 2: 3, 3: 4, 4: 7, 5: 8, 6: 6}
_PCI = {"A100-80GB": 0x20B210DE, "A100-40GB": 0x20B010DE, "H100-80GB": 0x233010DE, "H200": 0x233510DE, "A30": 0x20B710DE}
_NAME = {"A100-80GB": "NVIDIA A100-SXM4-80GB", "A100-40GB": "NVIDIA A100-SXM4-40GB", "H100-80GB": "NVIDIA H100 80GB HBM3",
         "H200": "NVIDIA H200", "A30": "NVIDIA A30"}
_CODES = [
    (mb.InsufficientResources, real.NVML_ERROR_INSUFFICIENT_RESOURCES),
    (mb.InUse, real.NVML_ERROR_IN_USE),
    (mb.NotSupported, real.NVML_ERROR_NOT_SUPPORTED),
    (mb.NotFound, real.NVML_ERROR_NOT_FOUND),
    (mb.InvalidArgument, real.NVML_ERROR_INVALID_ARGUMENT),
    (mb.MigError, real.NVML_ERROR_UNKNOWN),
]


def _nvml_error(exc: Exception) -> Exception:
    for cls, code in _CODES:
        if isinstance(exc, cls):
            return real.NVMLError(code)
    return exc


class StubNvml:
    """Install with monkeypatch.setitem(sys.modules, "pynvml", StubNvml(fake))."""

    def __init__(self, fake: FakeBackend, driver: bool = True) -> None:
        self.fake = fake
        self.driver = driver
        self.type = fake.type
        for name in dir(real):
            if name.startswith(("NVML_", "NVMLError", "c_nvml")):
                setattr(self, name, getattr(real, name))
        self.NVMLError = real.NVMLError

    # handles: devices are tuples; GPU and compute instances are C pointers encoding their ids
    @staticmethod
    def _gi_handle(gpu: int, gi: int):
        return ctypes.cast(ctypes.c_void_p((gpu + 1) << 20 | gi << 8), real.c_nvmlGpuInstance_t)

    @staticmethod
    def _ci_handle(gpu: int, gi: int, ci: int):
        return ctypes.cast(ctypes.c_void_p((gpu + 1) << 20 | gi << 8 | (ci + 1)), real.c_nvmlComputeInstance_t)

    @staticmethod
    def _decode(h) -> tuple[int, int, int]:
        v = ctypes.cast(h, ctypes.c_void_p).value
        return (v >> 20) - 1, (v >> 8) & 0xFFF, (v & 0xFF) - 1

    def _wrap(self, fn, *args):
        try:
            return fn(*args)
        except mb.MigError as exc:
            raise _nvml_error(exc) from None

    def _gpu(self, dev) -> int:
        assert isinstance(dev, tuple) and dev[0] == "dev", "not a device handle"
        return dev[1]

    def _inst(self, gpu: int, gi: int) -> mb.GpuInstance:
        for inst in self.fake.list_instances(gpu):
            if inst.gi_id == gi:
                return inst
        raise real.NVMLError(real.NVML_ERROR_NOT_FOUND)

    def _profile_by_id(self, pid: int):
        return next((p for p in self.type.profiles if p.profile_id == pid), None)

    # -- library --------------------------------------------------------------------------------
    def nvmlInit(self):
        if not self.driver:
            raise real.NVMLError(real.NVML_ERROR_DRIVER_NOT_LOADED)

    def nvmlShutdown(self):
        pass

    def nvmlDeviceGetCount(self):
        return self.fake.gpu_count()

    def nvmlDeviceGetHandleByIndex(self, i):
        if not 0 <= i < self.fake.gpu_count():
            raise real.NVMLError(real.NVML_ERROR_INVALID_ARGUMENT)
        return ("dev", i)

    def nvmlDeviceGetPciInfo(self, dev):
        return SimpleNamespace(pciDeviceId=_PCI[self.fake.gpu_type(self._gpu(dev))])

    def nvmlDeviceGetName(self, dev):
        return _NAME[self.fake.gpu_type(self._gpu(dev))]

    def nvmlDeviceGetMigMode(self, dev):
        cur, pending = self.fake.mig_mode(self._gpu(dev))
        return [int(cur), int(pending)]

    def nvmlDeviceGetGpuInstanceProfileInfo(self, dev, enum, version=2):
        self._gpu(dev)
        size = _GI_ENUM_SIZE.get(enum)
        if size is None or not self.type.has_size(size):
            raise real.NVMLError(real.NVML_ERROR_NOT_SUPPORTED)
        p = self.type.profile(size)
        info = real.c_nvmlGpuInstanceProfileInfo_v2_t()
        info.id, info.sliceCount, info.memorySizeMB = p.profile_id, p.size, p.memory_mib
        info.instanceCount = len(p.starts)
        return info

    def nvmlDeviceGetGpuInstancePossiblePlacements(self, dev, pid, arr, count_ref):
        places = self._wrap(self.fake.possible_placements, self._gpu(dev), pid)
        count = count_ref._obj  # must be a pointer to c_uint, as in C
        if count.value < len(places):
            raise real.NVMLError(real.NVML_ERROR_INSUFFICIENT_SIZE)
        for i, (s, w) in enumerate(places):
            arr[i].start, arr[i].size = s, w
        count.value = len(places)
        return real.NVML_SUCCESS

    def nvmlDeviceCreateGpuInstanceWithPlacement(self, dev, pid, placement_ref):
        placement = placement_ref._obj  # by reference, or this fails like a by-value call would
        assert isinstance(placement, real.c_nvmlGpuInstancePlacement_t)
        prof = self._profile_by_id(pid)
        if prof is not None and placement.size != prof.memory_slices:
            raise real.NVMLError(real.NVML_ERROR_INVALID_ARGUMENT)
        gpu = self._gpu(dev)
        gi = self._wrap(self.fake.create_gpu_instance, gpu, pid, placement.start)
        return self._gi_handle(gpu, gi)

    def nvmlDeviceGetGpuInstanceById(self, dev, gi):
        gpu = self._gpu(dev)
        self._wrap(self._inst, gpu, gi)
        return self._gi_handle(gpu, gi)

    def nvmlGpuInstanceGetInfo(self, h):
        gpu, gi, _ = self._decode(h)
        inst = self._inst(gpu, gi)
        info = real.c_nvmlGpuInstanceInfo_t()
        info.id, info.profileId = inst.gi_id, inst.profile_id
        info.placement.start, info.placement.size = inst.start, inst.width
        return info

    def nvmlDeviceGetGpuInstances(self, dev, pid, arr, count_ref):
        gpu = self._gpu(dev)
        insts = [i for i in self._wrap(self.fake.list_instances, gpu) if i.profile_id == pid]
        count = count_ref._obj
        if count.value < len(insts):
            raise real.NVMLError(real.NVML_ERROR_INSUFFICIENT_SIZE)
        for k, inst in enumerate(insts):
            arr[k] = self._gi_handle(gpu, inst.gi_id)
        count.value = len(insts)
        return real.NVML_SUCCESS

    def nvmlGpuInstanceGetComputeInstanceProfileInfo(self, h, enum, eng, version=2):
        gpu, gi, _ = self._decode(h)
        inst = self._inst(gpu, gi)
        slices = _CI_ENUM_SLICES.get(enum)
        if slices is None or slices > inst.slices or eng != real.NVML_COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED:
            raise real.NVMLError(real.NVML_ERROR_NOT_SUPPORTED)
        info = real.c_nvmlComputeInstanceProfileInfo_v2_t()
        info.id, info.sliceCount, info.instanceCount = enum, slices, inst.slices // slices
        return info

    def nvmlGpuInstanceCreateComputeInstance(self, h, ci_profile_id):
        gpu, gi, _ = self._decode(h)
        ci = self._wrap(self.fake.create_compute_instance, gpu, gi, _CI_ENUM_SLICES[ci_profile_id])
        return self._ci_handle(gpu, gi, ci)

    def nvmlGpuInstanceGetComputeInstances(self, h, ci_profile_id, arr, count_ref):
        gpu, gi, _ = self._decode(h)
        cis = [c for c in self._inst(gpu, gi).cis if c.slices == _CI_ENUM_SLICES[ci_profile_id]]
        count = count_ref._obj
        for k, c in enumerate(cis):
            arr[k] = self._ci_handle(gpu, gi, c.ci_id)
        count.value = len(cis)
        return real.NVML_SUCCESS

    def nvmlComputeInstanceGetInfo(self, h):
        _gpu, _gi, ci = self._decode(h)
        return SimpleNamespace(id=ci)

    def nvmlGpuInstanceGetComputeInstanceById(self, h, ci):
        gpu, gi, _ = self._decode(h)
        if not any(c.ci_id == ci for c in self._inst(gpu, gi).cis):
            raise real.NVMLError(real.NVML_ERROR_NOT_FOUND)
        return self._ci_handle(gpu, gi, ci)

    def nvmlComputeInstanceDestroy(self, h):
        gpu, gi, ci = self._decode(h)
        self._wrap(self.fake.destroy_compute_instance, gpu, gi, ci)
        return real.NVML_SUCCESS

    def nvmlGpuInstanceDestroy(self, h):
        gpu, gi, _ = self._decode(h)
        self._wrap(self.fake.destroy_gpu_instance, gpu, gi)
        return real.NVML_SUCCESS

    def _migs(self, gpu: int) -> list[tuple[int, int, str]]:
        if not self.fake.mig_mode(gpu)[0]:
            return []
        return [(i.gi_id, c.ci_id, c.uuid) for i in self.fake.list_instances(gpu) for c in i.cis]

    def nvmlDeviceGetMaxMigDeviceCount(self, dev):
        self._gpu(dev)
        return self.type.compute_slices

    def nvmlDeviceGetMigDeviceHandleByIndex(self, dev, k):
        gpu = self._gpu(dev)
        migs = self._migs(gpu)
        if k >= len(migs):
            raise real.NVMLError(real.NVML_ERROR_NOT_FOUND)
        return ("mig", gpu, *migs[k])

    def nvmlDeviceGetGpuInstanceId(self, mig):
        return mig[2]

    def nvmlDeviceGetComputeInstanceId(self, mig):
        return mig[3]

    def nvmlDeviceGetUUID(self, mig):
        return mig[4]

    def nvmlDeviceGetComputeRunningProcesses(self, mig):
        return [SimpleNamespace(pid=p.pid) for p in self.fake.running_processes(mig[1], mig[2])]

    def nvmlSystemGetProcessName(self, pid):
        for g in range(self.fake.gpu_count()):
            if not self.fake.mig_mode(g)[0]:
                continue
            for inst in self.fake.list_instances(g):
                for p in self.fake.running_processes(g, inst.gi_id):
                    if p.pid == pid:
                        return p.name.encode()
        raise real.NVMLError(real.NVML_ERROR_NOT_FOUND)
