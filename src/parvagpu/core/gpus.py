"""GPU types as data: MIG instance profiles, their sizes, memory and legal start slots.

Placement is expressed on the memory-slice axis, as NVML's `nvmlGpuInstancePlacement_t` does:
an instance of profile P started at slot `s` covers memory slices `s .. s + P.memory_slices - 1`.
Nothing else in the package hard-codes a GPU's geometry; every planner, checker and backend reads
it from here. Source: the NVIDIA MIG User Guide's "Supported MIG Profiles" and "Supported GPUs"
tables (A100, A30, H100 80/94/96 GB, H20, H200, B200) and `nvidia-smi mig -lgipp`.

Each type has one *planning* profile per instance size (`profiles`: what the planners choose from)
and its *extra* profiles (`extra_profiles`): the media-extension `+me` ones and the 1-slice profile
with twice the memory. The extras are listed by `parvagpu gpus`, accepted by the fake backend and by
apply/export when a plan names them, and never chosen by a planner (a segment is planned by size).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from itertools import combinations

from parvagpu.core.errors import ParvaError


@dataclass(frozen=True)
class MigProfile:
    """A GPU-instance profile. `size` is the number of compute slices (GPCs), the unit of planning."""

    name: str  # e.g. "3g.40gb"
    profile_id: int  # `nvidia-smi mig -lgip` ID
    size: int  # compute slices
    memory_slices: int  # width on the placement axis
    starts: tuple[int, ...]  # legal start slots (NVIDIA's -lgipp)
    memory_mib: int
    sms: int
    # The parva allocator's start-slot preference; a permutation of a subset of `starts`.
    preferred_starts: tuple[int, ...] = ()
    max_count: int = 0  # most instances of this profile per GPU; 0: only the geometry limits it

    @property
    def media(self) -> bool:
        """A media-extension profile (decoders, JPEG, OFA attached): at most one per GPU."""
        return self.name.endswith("+me")

    def covers(self, start: int) -> range:
        return range(start, start + self.memory_slices)

    @property
    def slot_order(self) -> tuple[int, ...]:
        return self.preferred_starts or self.starts


@dataclass(frozen=True)
class GpuType:
    name: str
    compute_slices: int
    memory_slices: int
    profiles: tuple[MigProfile, ...]  # planning profiles only: one per size
    pci_device_ids: tuple[str, ...] = ()
    extra_profiles: tuple[MigProfile, ...] = ()  # +me and double-memory 1-slice: never planned
    memory_gb: int = 0  # the product's memory, as NVIDIA names it

    @property
    def all_profiles(self) -> tuple[MigProfile, ...]:
        """Every MIG profile of the type, planning ones first."""
        return self.profiles + self.extra_profiles

    def profile_by_id(self, profile_id: int) -> MigProfile | None:
        return next((p for p in self.all_profiles if p.profile_id == profile_id), None)

    def profile_mask(self, profile: MigProfile, start: int) -> int:
        """Bitmask of the memory slices `profile` started at `start` covers (any profile)."""
        return ((1 << profile.memory_slices) - 1) << start

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(sorted(p.size for p in self.profiles))

    def profile(self, size: int) -> MigProfile:
        for p in self.profiles:
            if p.size == size:
                return p
        raise ParvaError(f"GPU type {self.name} has no {size}g instance (sizes: {self.sizes})")

    def has_size(self, size: int) -> bool:
        return any(p.size == size for p in self.profiles)

    def mask(self, size: int, start: int) -> int:
        """Bitmask of the memory slices an instance of `size` at `start` covers."""
        width = self.profile(size).memory_slices
        return ((1 << width) - 1) << start

    def legal(self, size: int, start: int) -> bool:
        return self.has_size(size) and start in self.profile(size).starts

    def realizable(self, sizes: tuple[int, ...]) -> bool:
        """Whether a multiset of instance sizes fits on one GPU with legal, non-overlapping placements."""
        return _pack(self, tuple(sorted(sizes, reverse=True))) is not None

    def pack(self, sizes: tuple[int, ...]) -> tuple[tuple[int, int], ...] | None:
        """A legal placement (size, start) for a multiset of sizes, or None. Deterministic."""
        return _pack(self, tuple(sorted(sizes, reverse=True)))

    def best_start(self, size: int, used: int) -> int | None:
        """The free legal start for an instance of `size` on a GPU whose memory slices `used`
        (a bitmask) are taken that keeps the most room for later instances, or None.

        Starts are ranked by what stays placeable: the number of free legal placements of the
        largest size first, then the next size, and so on; ties go to the `slot_order`
        preference. On an empty 7-slice GPU, 1g instances go to 6, 5, 4, so 4g@0 (and 3g@0)
        stay free, where 0, 4, 6 would leave room for nothing larger than 2g."""
        key = (self.name, size, used)
        if key not in _BEST_START:  # by name: hashing the whole frozen GpuType costs more than the search
            _BEST_START[key] = _best_start(self, size, used)
        return _BEST_START[key]

    def layouts(self) -> tuple[tuple[tuple[int, int], ...], ...]:
        """Every set of legal non-overlapping placements (as (size, start) tuples), enumerated
        from the placement table. Used by exact planners and checkers."""
        return _layouts(self)


@lru_cache(maxsize=None)
def _pack(gpu: GpuType, sizes: tuple[int, ...]) -> tuple[tuple[int, int], ...] | None:
    """Backtracking over starts in preference order; sizes largest first."""
    if sum(sizes) > gpu.compute_slices:
        return None

    def rec(i: int, used: int) -> list[tuple[int, int]] | None:
        if i == len(sizes):
            return []
        size = sizes[i]
        if not gpu.has_size(size):
            return None
        for start in gpu.profile(size).slot_order + gpu.profile(size).starts:
            m = gpu.mask(size, start)
            if used & m:
                continue
            rest = rec(i + 1, used | m)
            if rest is not None:
                return [(size, start)] + rest
        return None

    found = rec(0, 0)
    return tuple(found) if found is not None else None


_BEST_START: dict[tuple[str, int, int], int | None] = {}


def _best_start(gpu: GpuType, size: int, used: int) -> int | None:
    prof = gpu.profile(size)
    free = [st for st in prof.slot_order + prof.starts if not used & gpu.mask(size, st)]
    if not free:
        return None

    def room(st: int) -> tuple[int, ...]:
        after = used | gpu.mask(size, st)
        return tuple(
            sum(1 for x in p.starts if not after & gpu.mask(p.size, x))
            for p in sorted(gpu.profiles, key=lambda p: -p.size)
        )

    return max(free, key=lambda st: (room(st), -free.index(st)))


@lru_cache(maxsize=None)
def _layouts(gpu: GpuType) -> tuple[tuple[tuple[int, int], ...], ...]:
    placements = [(p.size, s) for p in gpu.profiles for s in p.starts]
    out = []
    for k in range(1, gpu.compute_slices + 1):
        for combo in combinations(placements, k):
            if sum(sz for sz, _ in combo) > gpu.compute_slices:
                continue
            used = 0
            ok = True
            for sz, st in combo:
                m = gpu.mask(sz, st)
                if used & m:
                    ok = False
                    break
                used |= m
            if ok:
                out.append(tuple(sorted(combo)))
    return tuple(out)


def _seven_slice(
    name: str, mem: tuple[str, str, str, str, str], mib: tuple[int, ...], sms: tuple[int, ...],
    pci: tuple[str, ...], extra: tuple[str, int, int] = ("", 0, 0), memory_gb: int = 0,
) -> GpuType:
    """The 7-compute/8-memory-slice geometry shared by A100, H100, H20, H200 and B200 (same
    -lgipp). `extra` names the double-memory 1-slice profile (name suffix, MiB, SMs); the `+me`
    1-slice profile takes the 1g profile's memory and SMs."""
    ids = (19, 14, 9, 5, 0)
    sizes = (1, 2, 3, 4, 7)
    widths = (1, 2, 4, 4, 8)
    starts = ((0, 1, 2, 3, 4, 5, 6), (0, 2, 4), (0, 4), (0,), (0,))
    # ParvaGPU's slot preferences: 1g fills around a future 3g@4, 3g always at 4 first.
    prefs = ((0, 6, 4, 1, 2, 3, 5), (0, 4, 2), (4, 0), (0,), (0,))
    profiles = tuple(
        MigProfile(f"{s}g.{m}", i, s, w, st, mb, sm, pr)
        for s, m, i, w, st, mb, sm, pr in zip(sizes, mem, ids, widths, starts, mib, sms, prefs)
    )
    extras = (
        MigProfile(f"1g.{mem[0]}+me", 20, 1, 1, starts[0], mib[0], sms[0], max_count=1),
        MigProfile(f"1g.{extra[0]}", 15, 1, 2, (0, 2, 4, 6), extra[1], extra[2], max_count=4),
    )
    return GpuType(name, 7, 8, profiles, pci, extras, memory_gb)


_A100_80_PCI = ("0x20B210DE", "0x20B510DE", "0x20F310DE", "0x20F510DE")
_H100_PCI = ("0x233010DE", "0x233110DE", "0x232210DE", "0x232410DE")
_HOPPER_SMS = (16, 32, 60, 64, 132)
# Types whose per-profile MiB NVIDIA's tables do not give: the profile's nominal size in MiB.
# SM counts NVIDIA does not document for a type are 0 ("not documented").


def _nominal(gbs: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(g * 1024 for g in gbs)


GPU_TYPES: dict[str, GpuType] = {
    t.name: t
    for t in (
        _seven_slice(
            "A100-80GB", ("10gb", "20gb", "40gb", "40gb", "80gb"),
            (9856, 19968, 40192, 40192, 80384), (14, 28, 42, 56, 98), _A100_80_PCI,
            ("20gb", 19968, 14), 80,
        ),
        _seven_slice(
            "A100-40GB", ("5gb", "10gb", "20gb", "20gb", "40gb"),
            (4864, 9856, 19968, 19968, 40192), (14, 28, 42, 56, 98),
            ("0x20B010DE", "0x20B110DE", "0x20F110DE", "0x20F610DE"), ("10gb", 9856, 14), 40,
        ),
        _seven_slice(
            "H100-80GB", ("10gb", "20gb", "40gb", "40gb", "80gb"),
            (9856, 19968, 40192, 40192, 80384), _HOPPER_SMS, _H100_PCI, ("20gb", 19968, 26), 80,
        ),
        # H100 NVL (and the 94 GB SXM5/PCIe parts): the guide's -lgipp, profile names of 94 GB.
        _seven_slice(
            "H100-94GB", ("12gb", "24gb", "47gb", "47gb", "94gb"), _nominal((12, 24, 47, 47, 94)),
            _HOPPER_SMS, ("0x232110DE",), ("24gb", 24 * 1024, 26), 94,
        ),
        # H100 on GH200 (96 GB).
        _seven_slice(
            "H100-96GB", ("12gb", "24gb", "48gb", "48gb", "96gb"), _nominal((12, 24, 48, 48, 96)),
            _HOPPER_SMS, ("0x234210DE",), ("24gb", 24 * 1024, 26), 96,
        ),
        # H20 (96 GB, fewer SMs than H100; per-profile SMs not documented).
        _seven_slice(
            "H20", ("12gb", "24gb", "48gb", "48gb", "96gb"), _nominal((12, 24, 48, 48, 96)),
            (0, 0, 0, 0, 0), ("0x232910DE",), ("24gb", 24 * 1024, 0), 96,
        ),
        _seven_slice(
            "H200", ("18gb", "35gb", "71gb", "71gb", "141gb"),
            (18432, 35840, 72704, 72704, 144384), _HOPPER_SMS,
            ("0x233510DE", "0x233B10DE"), ("35gb", 35840, 26), 141,
        ),
        # B200 (180 GB usable): the same 7/8-slice geometry; per-profile SMs not documented.
        _seven_slice(
            "B200", ("23gb", "45gb", "90gb", "90gb", "180gb"), _nominal((23, 45, 90, 90, 180)),
            (0, 0, 0, 0, 0), ("0x290110DE",), ("45gb", 45 * 1024, 0), 180,
        ),
        GpuType(
            "A30",
            4,
            4,
            (
                MigProfile("1g.6gb", 14, 1, 1, (0, 1, 2, 3), 5836, 14),
                MigProfile("2g.12gb", 5, 2, 2, (0, 2), 11672, 28),
                MigProfile("4g.24gb", 0, 4, 4, (0,), 23344, 56),
            ),
            ("0x20B710DE",),
            (
                MigProfile("1g.6gb+me", 21, 1, 1, (0, 1, 2, 3), 5836, 14, max_count=1),
                MigProfile("2g.12gb+me", 6, 2, 2, (0, 2), 11672, 28, max_count=1),
            ),
            24,
        ),
    )
}

DEFAULT_GPU = "A100-80GB"


def gpu_type(name: str) -> GpuType:
    """Look a GPU type up by name, case-insensitively."""
    for key, t in GPU_TYPES.items():
        if key.lower() == name.lower():
            return t
    raise ParvaError(f"unknown GPU type {name!r}; known: {', '.join(GPU_TYPES)}")


# NVML device names (`nvidia-smi -L`, the profiler's metadata) to catalog types; first match wins,
# so the more specific names come first ("GH200" before "H200" before "H20", "NVL" before H100).
_DEVICE_PATTERNS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("A100", "80GB"), "A100-80GB"),
    (("A100",), "A100-40GB"),
    (("GH200",), "H100-96GB"),
    (("H200",), "H200"),
    (("H100", "96GB"), "H100-96GB"),
    (("H100", "NVL"), "H100-94GB"),
    (("H100", "94GB"), "H100-94GB"),
    (("H100",), "H100-80GB"),
    (("H20",), "H20"),
    (("B200",), "B200"),
    (("A30",), "A30"),
)


def type_of_device(name: str) -> str | None:
    """The catalog type of a GPU named as NVML names it (e.g. "NVIDIA A100-SXM4-80GB"), a catalog
    name itself, or None when the name matches no type."""
    for key in GPU_TYPES:
        if key.lower() == name.strip().lower():
            return key
    upper = name.upper().replace(" ", "-")
    for words, kind in _DEVICE_PATTERNS:
        if all(w in upper for w in words):
            return kind
    return None
